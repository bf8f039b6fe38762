"""Image folders, image modes, label matching and seeded splits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CIFAR_TEST
from patchlab.data import class_index, load_folder, match_labels, read_image, split_indices
from patchlab.errors import DataError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "1", "I;16", "I", "F", "CMYK"])
def test_any_image_mode_becomes_rgb_float01(tmp_path, mode):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (9, 7), dtype=np.uint16))
        assert img.mode == "I;16"
    elif mode == "F":
        img = Image.fromarray(rng.random((9, 7), dtype=np.float32), "F")
    else:
        img = base.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I;16", "I", "F", "CMYK") else "x.png")
    img.save(path)
    x = read_image(path)
    assert x.shape == (3, 9, 7) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    if mode == "I;16":  # 16-bit keeps its full range, not clipped at 255
        ref = np.asarray(Image.open(path), dtype=np.float64) / 65535.0
        assert np.allclose(x[0].numpy(), ref, atol=1e-6)
    if mode == "RGB":
        assert torch.allclose(x, torch.from_numpy(np.asarray(base, np.float32) / 255).permute(2, 0, 1))


def test_transparent_pixels_composite_over_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    assert torch.allclose(read_image(tmp_path / "t.png"), torch.ones(3, 4, 4))


def _tree(tmp_path, classes=("cat", "dog"), n=3, size=8):
    rng = np.random.default_rng(1)
    for c in classes:
        (tmp_path / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    return tmp_path


def test_corrupt_files_are_skipped_with_one_counting_warning(tmp_path):
    root = _tree(tmp_path)
    (root / "cat" / "bad1.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dog" / "bad2.png").write_bytes(b"garbage")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = load_folder(root)
    msgs = [str(x.message) for x in w]
    assert len(msgs) == 1 and "skipped 2 unreadable" in msgs[0]
    assert len(s) == 6 and s.classes == ["cat", "dog"] and s.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(s.skipped) == 2


def test_plain_folder_has_no_classes(tmp_path):
    root = _tree(tmp_path, classes=("x",))
    s = load_folder(root / "x")
    assert s.classes == [] and set(s.labels.tolist()) == {-1} and len(s) == 3


def test_mixed_sizes_need_a_size(tmp_path):
    root = _tree(tmp_path)
    Image.new("RGB", (5, 5)).save(root / "cat" / "small.png")
    with pytest.raises(DataError, match="differ in size"):
        load_folder(root)
    s = load_folder(root, size=8)
    assert s.images.shape == (7, 3, 8, 8)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_folder(tmp_path / "empty")


def test_real_cifar_limit_per_class_and_uint8_roundtrip():
    s = load_folder(CIFAR_TEST, limit_per_class=3)
    assert s.classes == CIFAR_CLASSES and len(s) == 30
    assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (3, 32, 32)
    ref = np.asarray(Image.open(CIFAR_TEST / "airplane" / "0000.jpg").convert("RGB"))
    assert np.array_equal(s.images[0].permute(1, 2, 0).numpy(), ref)


def test_match_labels_by_name():
    m = match_labels(["Dog", "air_plane"], ["cat", "dog", "air plane"])
    assert m.tolist() == [1, 2]
    with pytest.raises(DataError, match=r"data classes \['bird'\] are not labels of m"):
        match_labels(["bird"], ["cat", "dog"], model_name="m")
    assert class_index("Frog", CIFAR_CLASSES) == 6
    with pytest.raises(DataError, match="unknown class 'unicorn'"):
        class_index("unicorn", CIFAR_CLASSES)


def test_split_is_seeded_stratified_and_disjoint():
    labels = torch.arange(10).repeat_interleave(50)
    a = split_indices(labels, holdout_frac=0.2, seed=3)
    b = split_indices(labels, holdout_frac=0.2, seed=3)
    c = split_indices(labels, holdout_frac=0.2, seed=4)
    assert a == b and a.holdout != c.holdout
    assert not set(a.train) & set(a.holdout) and len(a.train) + len(a.holdout) == 500
    per_class = torch.bincount(labels[a.holdout], minlength=10)
    assert per_class.tolist() == [10] * 10
    with pytest.raises(DataError, match="holdout fraction"):
        split_indices(labels, holdout_frac=1.5)
