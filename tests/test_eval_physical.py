"""patchlab.eval.physical: tSuc per model and by condition, with intervals, against a control."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from patchlab.capture.loop import load_capture
from patchlab.cli import app
from patchlab.errors import ConfigError, PatchlabError
from patchlab.eval.physical import NO_POSE, bin_frames, evaluate_capture, newcombe_interval
from patchlab.eval.plots import bin_curve
from patchlab.stats import wilson_interval
from test_capture_helpers import TARGET, capture


def _fake_frames(n, rng):
    frames = []
    for i in range(n):
        pose = (
            None
            if i % 5 == 0
            else {
                "size_px": float(50 + i),
                "distance_mm": float(100 + 2 * i),
                "view_angle_deg": float(i % 40),
                "angle_deg": float(i % 30 - 15),
            }
        )
        hit = bool(rng.random() < (0.2 if pose is None else min(1.0, i / n)))
        frames.append(
            {
                "index": i,
                "brightness": float(80 + i % 50),
                "pose": pose,
                "models": {"m": {"top5": [["cat" if hit else "dog", 0.9]], "p_target": 0.5, "hit": hit}},
            }
        )
    return frames


def test_bins_count_every_frame_once_and_match_wilson():
    frames = _fake_frames(200, np.random.default_rng(0))
    t = bin_frames(frames, ["m"], "distance", 4)
    assert t.measured and len(t.rows) == 4
    assert sum(r.n for r in t.rows) + t.unbinned.n == 200 and t.unbinned.label == NO_POSE and t.unbinned.n == 40
    for r in t.rows:
        d = r.rates["m"]
        assert tuple(d["ci95"]) == pytest.approx(wilson_interval(d["successes"], d["n"]))
        assert r.lo <= r.centre <= r.hi
    assert abs(t.rows[0].n - t.rows[-1].n) <= 1  # equal-count bins
    assert t.rows[-1].rates["m"]["rate"] > t.rows[0].rates["m"]["rate"]  # hits rise with i here
    light = bin_frames(frames, ["m"], "lighting", 5)
    assert light.unbinned is None and sum(r.n for r in light.rows) == 200
    none = bin_frames([dict(f, pose=None) for f in frames], ["m"], "angle")
    assert not none.measured and "camera" in none.note
    with pytest.raises(ConfigError, match="unknown bin"):
        bin_frames(frames, ["m"], "colour")


def test_newcombe_reference_values():
    # Newcombe (1998), Table II example (56/70 vs 48/80): 0.1750, method 10 interval 0.0303 to 0.3066
    lo, hi = newcombe_interval(56, 70, 48, 80)
    assert lo == pytest.approx(0.0524, abs=5e-4) and hi == pytest.approx(0.3339, abs=5e-4)
    lo, hi = newcombe_interval(9, 10, 3, 10)
    assert lo == pytest.approx(0.1705, abs=5e-4) and hi == pytest.approx(0.8090, abs=5e-4)
    assert newcombe_interval(0, 0, 1, 2) == (-1.0, 1.0)


def test_capture_with_camera_has_every_bin_and_the_control_comparison():
    res = evaluate_capture(capture(), control=capture(control="blank"))
    summ, frames = load_capture(capture())
    assert res.frames == 30 and res.truth and res.target_class == TARGET
    m = res.models[0]
    hits = sum(f["models"][m.model]["hit"] for f in frames if f["truth"]["object_class"] != TARGET)
    assert m.tsuc["successes"] == hits and m.tsuc["n"] == res.counted
    assert m.accuracy is not None and m.untargeted_error is not None
    for q in ("distance", "angle", "size", "lighting"):
        t = res.bins[q]
        assert t.measured and t.rows, q
        assert sum(r.n for r in t.rows) + (t.unbinned.n if t.unbinned else 0) == res.counted
    d = res.bins["distance"]
    assert 100 < d.rows[0].lo < d.rows[-1].hi < 600  # mm, the simulator's range
    c = res.control[0]
    assert c.model == m.model and c.ci95[0] <= c.difference <= c.ci95[1]
    assert c.control["n"] == res.counted
    assert res.control_bins["size"].rows[0].label == res.bins["size"].rows[0].label  # shared bins
    json.dumps(res.to_dict())


def test_bin_curve_plots_every_point():
    res = evaluate_capture(capture(), control=capture(control="blank"))
    for q, t in res.bins.items():
        p = bin_curve(t, control=res.control_bins[q])
        assert p is not None and p.png[:8] == b"\x89PNG\r\n\x1a\n"
        name = res.models[0].model
        expected = sum(r.rates[name]["n"] > 0 for r in t.rows) + sum(
            r.rates[name]["n"] > 0 for r in res.control_bins[q].rows
        )
        assert p.n_points == expected and p.n_series == 2
    assert bin_curve(bin_frames([], ["m"], "size")) is None


def test_without_camera_distance_and_angle_are_not_measured():
    res = evaluate_capture(capture(camera=False))
    assert not res.bins["distance"].measured and not res.bins["angle"].measured
    assert res.bins["size"].measured


def test_mismatched_control_is_an_error(tmp_path):
    src = capture()
    bad = tmp_path / "c"
    bad.mkdir()
    summ, frames = load_capture(capture(control="blank"))
    (bad / "summary.json").write_text(json.dumps(dict(summ, target_class="dog")))
    (bad / "frames.jsonl").write_text("".join(json.dumps(f) + "\n" for f in frames))
    with pytest.raises(ConfigError, match="control capture's target"):
        evaluate_capture(src, control=bad)
    with pytest.raises(PatchlabError, match="not a capture folder"):
        evaluate_capture(tmp_path)


def test_a_half_written_last_line_is_ignored(tmp_path):
    summ, frames = load_capture(capture())
    d = tmp_path / "c"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps(summ))
    (d / "frames.jsonl").write_text("".join(json.dumps(f) + "\n" for f in frames) + '{"index": 30, "timest')
    assert evaluate_capture(d).frames == 30


def test_cli_eval_physical(tmp_path):
    out = tmp_path / "phys.json"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "physical",
            str(capture()),
            "--control",
            str(capture(control="blank")),
            "--bins",
            "distance",
            "--bins",
            "size",
            "--n-bins",
            "3",
            "--json",
            str(out),
            "--plots",
            str(tmp_path / "plots"),
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert set(d["bins"]) == {"distance", "size"} and len(d["bins"]["size"]["rows"]) == 3
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["bins-distance.png", "bins-size.png"]
    assert "patched vs control" in r.output
    bad = CliRunner().invoke(app, ["eval", "physical", str(capture()), "--bins", "colour"])
    assert bad.exit_code == 1 and "unknown --bins" in bad.output
