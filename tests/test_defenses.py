"""The defence registry: LGS against a NumPy transcription of the reference code, the
filters against OpenCV and the capture loop's registry, BPDA, defended models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patchlab.defenses import DefendedModel, Jpeg, LocalGradientsSmoothing, defend, get_defense, list_defenses
from patchlab.errors import ConfigError
from patchlab.models import WrappedModel, load_model

from conftest import CIFAR_TEST, card


# ----------------------------------------------------------------- LGS reference
def lgs_reference(img: np.ndarray, *, window: int, overlap: int, threshold: float, smoothing: float) -> np.ndarray:
    """Plain NumPy transcription of fabiobrau/local_gradients_smoothing (lgs/local_gradients_smoothing.py,
    lgs/gradient.py ``Gradient``) for one ``(3, H, W)`` image, returning ``img * (1 - mask)``.

    Grayscale as torchvision's ``Grayscale``; ``Gradient``: conv with [1, -1] along x (then a zero
    column on the right) and along y (a zero row at the bottom), magnitude; min-max normalised
    (+1e-7); ``unfold`` windows at stride window - overlap, window mean > threshold; ``fold`` the
    selection and keep pixels covered at least once; ``clamp(smoothing * grad, 0, 1)``.
    """
    img = img.astype(np.float64)
    gray = 0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    h, w = gray.shape
    gx = np.zeros_like(gray)
    gy = np.zeros_like(gray)
    for i in range(h):
        for j in range(w - 1):
            gx[i, j] = gray[i, j] * 1 + gray[i, j + 1] * -1
    for i in range(h - 1):
        for j in range(w):
            gy[i, j] = gray[i, j] * 1 + gray[i + 1, j] * -1
    grad = np.sqrt(gx**2 + gy**2)
    grad = (grad - grad.min()) / (grad.max() - grad.min() + 1e-7)
    stride = window - overlap
    cover = np.zeros_like(grad)
    for top in range(0, h - window + 1, stride):
        for left in range(0, w - window + 1, stride):
            if grad[top : top + window, left : left + window].mean() > threshold:
                cover[top : top + window, left : left + window] += 1
    grad = grad * (cover >= 1)
    mask = np.clip(smoothing * grad, 0, 1)
    return img * (1 - mask[None])


def _fixed_image(size: int) -> torch.Tensor:
    """A real CIFAR photograph (airplane 0000) with a high-contrast square pasted on it, at ``size`` px."""
    from patchlab.data import read_image

    x = read_image(sorted((CIFAR_TEST / "airplane").iterdir())[0])[None]
    x = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)
    g = torch.Generator().manual_seed(3)
    s = size // 4
    x[..., size // 8 : size // 8 + s, size // 2 : size // 2 + s] = torch.rand(3, s, s, generator=g)
    return x


@pytest.mark.parametrize(
    "size,params",
    [
        (96, dict(window=15, overlap=5, threshold=0.1, smoothing=2.3)),  # the paper's parameters, unscaled
        (64, dict(window=9, overlap=3, threshold=0.2, smoothing=1.5)),
        (32, dict(window=3, overlap=1, threshold=0.1, smoothing=2.3)),  # what ref=224 scaling gives at 32 px
    ],
)
def test_lgs_matches_numpy_reference(size, params):
    x = _fixed_image(size)
    d = LocalGradientsSmoothing(**params, ref=0)
    ref = lgs_reference(x[0].numpy(), **params)
    out = d(x)[0].numpy()
    assert np.abs(out - ref).max() < 1e-5
    assert (out != x[0].numpy()).any()  # the defence did something on this image


def test_lgs_window_scaling_documented():
    d = get_defense("lgs")
    assert d.window_for(224, 224) == (15, 5)
    assert d.window_for(32, 32) == (3, 1)
    x = _fixed_image(32)
    ref = lgs_reference(x[0].numpy(), window=3, overlap=1, threshold=0.1, smoothing=2.3)
    assert np.abs(d(x)[0].numpy() - ref).max() < 1e-5
    assert get_defense("lgs:ref=0").window_for(32, 32) == (15, 5)


def test_lgs_suppresses_the_patch_more_than_the_photo():
    x = _fixed_image(96)
    m = get_defense("lgs:ref=0").mask(x)[0, 0]
    s = 96 // 4
    patch = m[96 // 8 : 96 // 8 + s, 96 // 2 : 96 // 2 + s].mean()
    assert patch > 3 * m.mean() * 0.5 and patch > m[60:, :40].mean()


def test_lgs_gradcheck_and_no_nan_on_flat_images():
    d = LocalGradientsSmoothing(window=4, overlap=1, threshold=0.1, smoothing=2.3, ref=0)
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(d, (x,), eps=1e-6, atol=1e-4)
    flat = torch.full((2, 3, 16, 16), 0.5, requires_grad=True)
    get_defense("lgs")(flat).sum().backward()
    assert torch.isfinite(flat.grad).all()


# ------------------------------------------------------------- the other filters
def test_blur_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    x = _fixed_image(32)
    for sigma in (0.8, 1.5):
        d = get_defense(f"blur:{sigma}")
        k = int(round(sigma * 6 + 1)) | 1
        img = x[0].permute(1, 2, 0).numpy().astype(np.float32)
        ref = cv2.GaussianBlur(img, (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)
        assert np.abs(d(x)[0].permute(1, 2, 0).numpy() - ref).max() < 1e-5


def test_blur_gradcheck():
    d = get_defense("blur:0.7").double()
    x = torch.rand(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(d, (x,))


@pytest.mark.parametrize("k", [3, 5])
def test_median_matches_opencv(k):
    cv2 = pytest.importorskip("cv2")
    x = _fixed_image(32)
    u8 = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().copy()
    ref = cv2.medianBlur(u8, k)
    out = get_defense(f"median:{k}")(torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 255)
    assert np.array_equal((out[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), ref)


def test_bitdepth_levels():
    x = torch.rand(2, 3, 8, 8)
    y = get_defense("bitdepth:3")(x)
    assert torch.allclose(y * 7, (y * 7).round(), atol=1e-6) and (y - x).abs().max() <= 1 / 14 + 1e-6


def test_the_capture_loop_uses_the_core_registry():
    """capture/defenses.py is gone: the capture loop's specs (none, blur[:SIGMA], jpeg[:QUALITY])
    parse in the one core registry, which `patchlab.capture` re-exports, and mean what they meant
    there (OpenCV's blur of the uint8 crop up to rounding, the same JPEG codec exactly)."""
    import cv2

    import patchlab.capture as capture
    from patchlab.capture import loop

    assert capture.get_defense is get_defense and loop.get_defense is get_defense
    with pytest.raises(ImportError):
        import patchlab.capture.defenses  # noqa: F401
    x = _fixed_image(32)
    u8 = (x * 255).round().to(torch.uint8)
    crop = u8[0].permute(1, 2, 0).numpy().copy()
    xf = u8.float() / 255
    for spec, ref in (
        ("none", crop),
        ("blur", cv2.GaussianBlur(crop, (0, 0), 1.0)),
        ("blur:1.5", cv2.GaussianBlur(crop, (0, 0), 1.5)),
        ("jpeg", None),
        ("jpeg:50", None),
    ):
        if ref is None:
            q = int(spec.partition(":")[2] or 75)
            buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])[1]
            ref = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        out = (get_defense(spec)(xf) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        tol = 0 if spec.startswith(("jpeg", "none")) else 1
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= tol, spec


# ------------------------------------------------------------------------ BPDA
@pytest.mark.parametrize("spec", ["jpeg:60,bpda", "median:3,bpda", "bitdepth:4,bpda"])
def test_bpda_forward_is_the_defence_backward_is_identity(spec):
    d, plain = get_defense(spec), get_defense(spec.replace(",bpda", ""))
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    y = d(x)
    assert torch.allclose(y, plain(x.detach()), atol=1e-6)
    (y * torch.arange(16.0)).sum().backward()
    assert torch.allclose(x.grad, torch.arange(16.0).expand_as(x))


def test_without_bpda_jpeg_has_no_gradient_and_bitdepth_a_zero_one():
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    assert not get_defense("jpeg")(x).requires_grad
    get_defense("bitdepth")(x).sum().backward()
    assert (x.grad == 0).all()


# ------------------------------------------------------------------------ specs
def test_spec_parsing_and_round_trip():
    assert get_defense(None).spec == "none"
    assert get_defense("lgs").spec == "lgs"
    d = get_defense("lgs:window=9,overlap=3,threshold=0.2,smoothing=1.5")
    assert (d.window, d.overlap, d.threshold, d.smoothing) == (9, 3, 0.2, 1.5)
    assert get_defense("lgs:9,3,0.2,1.5").full_spec == d.full_spec
    for spec in ("jpeg:50,bpda", "median:5", "bitdepth:4", "blur:1.5", "lgs:threshold=0.3,ref=0"):
        assert get_defense(get_defense(spec).spec).full_spec == get_defense(spec).full_spec
    assert isinstance(get_defense("JPEG:40"), Jpeg)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("sharpen", "unknown defence 'sharpen'"),
        ("median:4", "odd"),
        ("jpeg:101", "1..100"),
        ("lgs:window=5,overlap=5", "overlap < window"),
        ("lgs:foo=1", "no parameter 'foo'"),
        ("blur:1,2", "at most 1 positional"),
        ("blur:x", "bad value for blur sigma"),
        ("lgs:bpda", "differentiable"),
        ("median:2.5", "bad value"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        get_defense(spec)


def test_bad_input_shape():
    with pytest.raises(ValueError, match="expected"):
        get_defense("lgs")(torch.rand(3, 32, 32))


def test_device_and_dtype_follow_input():
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    for spec in list_defenses():
        y = get_defense(spec)(x)
        assert y.dtype == x.dtype and y.device == x.device and y.shape == x.shape, spec


# --------------------------------------------------------------- defended model
@pytest.fixture(scope="module")
def resnet20():
    return load_model(card("resnet20"))


def test_defended_model_is_a_model_like_any_other(resnet20):
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    m = defend(resnet20, "lgs")
    assert isinstance(m, WrappedModel) and isinstance(m, DefendedModel)
    assert m.name == "cifar10-resnet20+lgs" and m.base_name == "cifar10-resnet20"
    assert m.labels == resnet20.labels and m.preprocess == resnet20.preprocess
    assert m.layer_names() == resnet20.layer_names() and m.get_layer("layer3") is resnet20.get_layer("layer3")
    x = _fixed_image(32).repeat(2, 1, 1, 1).requires_grad_(True)
    out = m(x)
    assert torch.allclose(out, resnet20(get_defense("lgs")(x)))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in m.parameters())
    m.train()
    assert not m.training
    after = resnet20.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert defend(resnet20, "none") is resnet20
    assert defend(defend(resnet20, "blur"), "jpeg").name == "cifar10-resnet20+blur+jpeg"


def test_defend_refuses_a_bare_net():
    with pytest.raises(TypeError, match="WrappedModel"):
        defend(torch.nn.Linear(3, 3), "lgs")


def test_defences_on_real_images_keep_most_clean_accuracy(resnet20, cifar_small):
    x, y = cifar_small.float()[::5], cifar_small.labels[::5]  # 100 images
    base = (resnet20(x).argmax(1) == y).float().mean().item()
    for spec in ("blur:0.5", "median", "jpeg", "bitdepth", "lgs"):
        acc = (defend(resnet20, spec)(x).argmax(1) == y).float().mean().item()
        assert acc > base - 0.35, (spec, acc, base)


# ------------------------------------------------------------ --defense in eval
def test_eval_transfer_with_a_defense_names_it(tmp_path):
    """`eval transfer --defense` judges patched and clean images behind the same defence and names it."""
    from PIL import Image
    from typer.testing import CliRunner

    from patchlab.cli import app
    from patchlab.transfer import TransferResult

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    out = tmp_path / "t.json"
    base = [
        "eval",
        "transfer",
        "--patch",
        str(tmp_path / "p.png"),
        "--data",
        str(CIFAR_TEST),
        "--target",
        "frog",
        "--limit-per-class",
        "2",
        "--patch-frac",
        "0.2",
        "--models",
        card("resnet20"),
        "--device",
        "cpu",
    ]
    r = CliRunner().invoke(app, base + ["--defense", "lgs", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = TransferResult.from_dict(json.loads(out.read_text()))
    assert [m.name for m in res.models] == ["cifar10-resnet20+lgs"]
    assert res.eot["defense"].startswith("lgs:window=15")
    plain = tmp_path / "plain.json"
    assert CliRunner().invoke(app, base + ["--json", str(plain)]).exit_code == 0
    p = TransferResult.from_dict(json.loads(plain.read_text()))
    assert "defense" not in p.eot and p.models[0].name == "cifar10-resnet20"
    assert p.models[0].n_clean == res.models[0].n_clean
    r = CliRunner().invoke(app, base + ["--defense", "sharpen"])
    assert r.exit_code == 1 and "unknown defence" in r.output


def test_eval_matrix_with_a_defense_counts_the_defended_source_as_white_box(tmp_path):
    from typer.testing import CliRunner

    from patchlab.cli import app
    from patchlab.eval.matrix import MatrixResult

    run = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        [
            "optimize",
            "--source",
            card("resnet20"),
            "--data",
            str(CIFAR_TEST),
            "--target",
            "frog",
            "--limit-per-class",
            "5",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--loss",
            "ce",
            "--steps",
            "2",
            "--no-cache",
            "--out",
            str(run),
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "matrix",
            str(run),
            "--models",
            card("resnet20"),
            card("resnet32"),
            "--defense",
            "jpeg:50",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert r.exit_code == 0, r.output
    m = MatrixResult.read(tmp_path / "m")
    assert m.models == ["cifar10-resnet20+jpeg:quality=50", "cifar10-resnet32+jpeg:quality=50"]
    assert m.eot["defense"] == "jpeg:quality=50"
    (row,) = m.rows
    assert "cifar10-resnet20+jpeg:quality=50" in row.sources
    assert row.white_box == row.tsuc["cifar10-resnet20+jpeg:quality=50"]
    assert row.mean_transfer == row.tsuc["cifar10-resnet32+jpeg:quality=50"]
    assert "*" in (tmp_path / "m" / "matrix.md").read_text()
