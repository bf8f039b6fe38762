"""The procedural sign world: drawing, layout on disk, determinism, caching, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from patchlab.cli import app
from patchlab.data import load_folder
from patchlab.errors import ConfigError, DataError
from patchlab.world import WorldConfig, ensure_world, make_world, read_world, sign_classes
from patchlab.world import make as make_mod
from patchlab.world import signs

runner = CliRunner()
N = 20  # pictures per class in these tests


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w") / "world"
    make_world(out, N, 64, 0, scenes_per_class=1, workers=1)
    return out


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "world.json"
    }


# ---------------------------------------------------------------- drawing
def test_at_least_ten_human_readable_classes():
    cls = sign_classes()
    assert len(cls) >= 10 and cls == sorted(cls)
    for name in (
        "stop",
        "yield",
        "no_entry",
        "speed_30",
        "speed_50",
        "speed_80",
        "priority_road",
        "roundabout",
        "pedestrian_crossing",
        "keep_right",
        "keep_left",
    ):
        assert name in cls


def test_keep_left_is_keep_right_mirrored():
    right, ar = signs.draw_sign("keep_right", 96, np.random.default_rng(5))
    left, al = signs.draw_sign("keep_left", 96, np.random.default_rng(5))
    assert np.array_equal(left, right[:, ::-1]) and np.array_equal(al, ar[:, ::-1])
    assert not np.allclose(left, right, atol=0.05)  # not symmetric: a flip changes the class


@pytest.mark.parametrize("name", sign_classes())
def test_canonical_sign_contract(name):
    rgb, alpha = signs.draw_sign(name, 80, np.random.default_rng(0))
    assert rgb.shape == (80, 80, 3) and alpha.shape == (80, 80)
    assert rgb.dtype == np.float32 and alpha.dtype == np.float32
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0 and 0.0 <= alpha.min() and alpha.max() <= 1.0
    assert 0.3 < alpha.mean() < 1.0  # a sign fills much, not all, of its canvas
    assert alpha[40, 40] == 1.0 and alpha[0, 0] == 0.0


def test_signs_are_told_apart_by_their_drawing_not_only_colour():
    """The three speed limits share every colour: only the numerals differ."""
    a = {n: signs.draw_sign(n, 96, np.random.default_rng(1))[0] for n in ("speed_30", "speed_50", "speed_80")}
    assert np.abs(a["speed_30"].mean((0, 1)) - a["speed_80"].mean((0, 1))).max() < 0.03
    assert np.abs(a["speed_30"] - a["speed_80"]).mean() > 0.02


def test_unknown_sign_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown sign 'give_way'; known: keep_left"):
        signs.draw_sign("give_way", 64, np.random.default_rng(0))


def test_pose_projects_a_face_on_square_exactly():
    q = signs.Pose(center=(50.0, 40.0), side=20.0).corners()
    assert np.allclose(q, [[40, 30], [60, 30], [60, 50], [40, 50]])
    turned = signs.Pose(center=(50.0, 40.0), side=20.0, yaw=40.0).corners()
    width = turned[:, 0].max() - turned[:, 0].min()
    assert width < 20 * np.cos(np.radians(40)) * 1.15  # foreshortened
    assert abs(turned[1, 1] - turned[2, 1]) != abs(turned[0, 1] - turned[3, 1])  # perspective, not affine


def test_crops_vary_in_pose_light_and_background():
    pics = np.stack([signs.sign_crop("stop", 64, np.random.default_rng(i)) for i in range(24)]).astype(np.float32)
    assert pics.shape == (24, 64, 64, 3) and pics.dtype == np.float32
    brightness = pics.mean((1, 2, 3))
    assert brightness.std() > 8  # lighting varies
    assert pics.std(0).mean() > 30  # backgrounds and poses vary pixel by pixel
    # yet a stop sign is red in the middle on average
    centre = pics[:, 24:40, 24:40].mean((0, 1, 2))
    assert centre[0] > centre[1] + 20 and centre[0] > centre[2] + 20


# ---------------------------------------------------------------- on disk
def test_world_layout_counts_and_manifest(world):
    info = read_world(world)
    cls = sign_classes()
    assert list(info.classes) == cls
    cfg = WorldConfig(n_per_class=N, scenes_per_class=1)
    assert info.config == cfg and cfg.n_train == 16 and cfg.n_val == 4
    assert info.counts == {"train": 16 * len(cls), "val": 4 * len(cls), "scenes": len(cls)}
    meta = json.loads((world / "world.json").read_text())
    assert meta["fingerprint"] == cfg.fingerprint() and meta["version"] == make_mod.WORLD_VERSION
    assert "cv2" in meta["versions"] and "numpy" in meta["versions"]
    val = load_folder(world / "val")
    assert val.classes == cls and len(val) == 4 * len(cls)
    assert tuple(val.images.shape[1:]) == (3, 64, 64)
    assert sorted(p.name for p in (world / "train" / "stop").iterdir())[0] == "stop-00000.png"


def test_scenes_record_where_the_sign_is(world):
    meta = json.loads((world / "scenes" / "scenes.json").read_text())
    w, h = meta["size"]
    assert (w, h) == (640, 480) and len(meta["frames"]) == len(sign_classes())
    from patchlab.data import read_image

    for fr in meta["frames"]:
        img = read_image(world / "scenes" / fr["file"])
        assert tuple(img.shape) == (3, h, w)
        x0, y0, x1, y1 = fr["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and (x1 - x0) >= 40
        rx0, ry0, rx1, ry1 = fr["roi"]
        assert 0 <= rx0 and 0 <= ry0 and rx1 <= w and ry1 <= h and rx1 - rx0 == ry1 - ry0
        cx, cy = np.mean(fr["quad"], 0)
        assert rx0 < cx < rx1 and ry0 < cy < ry1
        px0, py0, px1, py1 = fr["patch_box"]
        assert rx0 <= px0 < px1 <= rx1 and ry0 <= py0 < py1 <= ry1
        # the sign is where the box says: its pixels differ from the frame around it
        inside = img[:, y0:y1, x0:x1]
        assert inside.std() > 0.1


def test_same_seed_same_bytes_other_seed_other_bytes(world, tmp_path):
    again = make_world(tmp_path / "again", N, 64, 0, scenes_per_class=1, workers=2)  # workers do not matter
    assert again.counts == read_world(world).counts
    a, b = _digest(world), _digest(again.root)
    assert a == b and len(a) == 20 * len(sign_classes()) + len(sign_classes()) + 1
    other = make_world(tmp_path / "other", N, 64, 1, scenes_per_class=0, workers=1)
    c = _digest(other.root)
    same = [k for k in c if a.get(k) == c[k]]
    assert not same


def test_a_picture_does_not_depend_on_how_many_there_are(world, tmp_path):
    small = make_world(tmp_path / "small", 10, 64, 0, scenes_per_class=0, workers=1)
    for p in (small.root / "train" / "yield").iterdir():  # 8 train pictures, the first 8 of the big world
        assert p.read_bytes() == (world / "train" / "yield" / p.name).read_bytes()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_per_class": 1}, "n-per-class must be an integer >= 2"),
        ({"n_per_class": 5, "size": 8}, "size must be an integer between 16 and 512"),
        ({"n_per_class": 5, "val_frac": 1.0}, "val-frac must be in"),
        ({"n_per_class": 5, "seed": -3}, "seed must be a non-negative integer"),
    ],
)
def test_bad_options_are_config_errors(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_world(tmp_path / "w", **kwargs)
    assert not (tmp_path / "w").exists()


def test_out_folder_rules(world, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="is not empty and is not a patchlab world"):
        make_world(busy, 4, force=True)
    assert (busy / "thesis.tex").read_text() == "precious"
    with pytest.raises(ConfigError, match="already holds a world; pass --overwrite"):
        make_world(world, 4)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_world(empty, 2, scenes_per_class=0, workers=1).counts["train"] == len(sign_classes())
    again = make_world(empty, 4, scenes_per_class=0, workers=1, force=True)
    assert again.counts["train"] == 3 * len(sign_classes())
    assert len(list((empty / "train" / "stop").iterdir())) == 3


def test_an_interrupted_make_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = make_mod._draw_chunk

    def dying(task):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(make_mod, "_draw_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        make_world(tmp_path / "w", 4, scenes_per_class=0, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_read_world_refuses_what_is_not_a_complete_world(world, tmp_path):
    with pytest.raises(DataError, match="is not a patchlab world"):
        read_world(tmp_path)
    with pytest.raises(DataError, match="world folder not found"):
        read_world(tmp_path / "nope")
    broken = make_world(tmp_path / "b", 4, scenes_per_class=0, workers=1).root
    next((broken / "val" / "stop").iterdir()).unlink()
    with pytest.raises(DataError, match=r"incomplete: val/stop holds 0 pictures, the manifest says 1"):
        read_world(broken)
    (broken / "world.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid world manifest"):
        read_world(broken)


def test_ensure_world_caches_under_patchlab_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHLAB_CACHE", str(tmp_path / "cache"))
    first = ensure_world(4, 32, 7, scenes_per_class=0, workers=1)
    assert not first.cached and first.root.parent == tmp_path / "cache" / "worlds"
    assert first.root.name == f"world-{first.fingerprint}"
    second = ensure_world(4, 32, 7, scenes_per_class=0, workers=1)
    assert second.cached and second.root == first.root
    other = ensure_world(4, 32, 8, scenes_per_class=0, workers=1)
    assert not other.cached and other.root != first.root
    # a damaged entry is rebuilt, not trusted
    next((first.root / "train" / "stop").iterdir()).unlink()
    third = ensure_world(4, 32, 7, scenes_per_class=0, workers=1)
    assert not third.cached and read_world(third.root).counts == first.counts


# ---------------------------------------------------------------- CLI
def test_cli_make_reports_and_writes(tmp_path):
    out = tmp_path / "w"
    res = runner.invoke(
        app,
        [
            "world",
            "make",
            "--out",
            str(out),
            "--n-per-class",
            "3",
            "--size",
            "32",
            "--scenes-per-class",
            "0",
            "--workers",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "11 classes" in res.output and "images/s" in res.output
    assert read_world(out).config.size == 32


@pytest.mark.parametrize(
    "args, match",
    [
        (["--n-per-class", "0"], "n-per-class must be an integer >= 2"),
        (["--size", "4"], "size must be an integer between 16 and 512"),
    ],
)
def test_cli_make_bad_input_is_one_line_and_exit_1(tmp_path, args, match):
    res = runner.invoke(app, ["world", "make", "--out", str(tmp_path / "w"), *args])
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0]


def test_cli_make_refuses_a_world_without_force(world):
    res = runner.invoke(app, ["world", "make", "--out", str(world), "--n-per-class", "4"])
    assert res.exit_code == 1 and "pass --overwrite" in res.output
