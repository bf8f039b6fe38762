"""patchlab.captures (the capture folder's one home), --on-lost policies, the simulator's new effects."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from conftest import CIFAR_TEST, card
from patchlab.capture.loop import CaptureConfig, run_capture
from patchlab.capture.simulate import SimConfig, simulate_capture
from patchlab.capture.sources import open_source
from patchlab.captures import (
    CaptureError,
    CaptureSummary,
    is_scored,
    load_capture,
    pose_source,
    read_truth,
    sim_path_for,
)
from patchlab.errors import ConfigError
from patchlab.eval.physical import PhysicalResult, evaluate_capture, pose_rate_by
from test_capture_helpers import _TMP, TARGET, printed, video


@pytest.fixture(scope="module")
def model():
    from patchlab.models import load_model

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(card("resnet20"))
    torch.set_num_threads(old)


def _hidden_video():
    """The short test video with the patch's card covered on frames 8-15 (lost there)."""
    out = _TMP / "hidden.avi"
    if out.exists():
        return out
    res = video()
    truth = read_truth(res.truth)
    cap = cv2.VideoCapture(str(res.video))
    w = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    i = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        if 8 <= i < 16:
            q = np.asarray(truth[i]["quad_px"], np.float32)
            c = q.mean(0)
            cv2.fillConvexPoly(img, np.round((q - c) * 1.9 + c).astype(np.int32), (90, 90, 90))
        w.write(img)
        i += 1
    w.release()
    return out


@pytest.mark.parametrize("policy", ["skip", "center", "last"])
def test_on_lost_policies_are_honest_and_recorded(tmp_path, model, policy):
    layout = printed()[0]
    s = run_capture(
        open_source(str(_hidden_video())),
        [model],
        tmp_path / policy,
        CaptureConfig(target=TARGET, crop="roi", on_lost=policy, batch_size=4),
        layout=layout,
    )
    summ, frames = load_capture(tmp_path / policy)
    assert summ["config"]["on_lost"] == policy
    lost = [f for f in frames if pose_source(f) == "lost"]
    assert len(lost) >= 5 and s.pose_sources["lost"] == len(lost)
    assert all(f["pose"] is None and f["markers"] == [] for f in lost)
    if policy == "skip":
        assert all(not is_scored(f) and f["models"] is None and f["crop"] == "skipped (lost)" for f in lost)
        assert s.frames_scored == s.frames - len(lost)
    elif policy == "center":
        assert all(is_scored(f) and f["crop"] == "center (lost)" for f in lost)
    else:
        assert all(is_scored(f) and f["crop"] == "roi (last pose)" for f in lost)
    m = model.name
    hits_all = sum(
        bool((f.get("models") or {}).get(m, {}).get("hit"))
        for f in frames
        if (f.get("truth") or {}).get("object_class") != TARGET
    )
    assert s.tsuc[m]["successes"] == hits_all
    res = evaluate_capture(tmp_path / policy, bins=("size",))
    assert res.pose_sources == s.pose_sources and res.on_lost == policy
    assert res.models[0].tsuc_with_pose["n"] == sum(
        pose_source(f) != "lost" for f in frames if (f.get("truth") or {}).get("object_class") != TARGET
    )
    back = PhysicalResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.to_dict() == res.to_dict()
    sizes = res.pose_rates["size"]
    assert sum(r.n for r in sizes.rows) + sizes.unplaced == len(frames)
    assert sum(r.lost for r in sizes.rows) == len(lost)  # lost frames placed between poses
    assert CaptureSummary.from_dict(summ).to_dict() == summ


def test_summary_from_dict_reads_older_and_rejects_bad(tmp_path):
    old = {
        k: v
        for k, v in CaptureSummary(
            capture_dir="c",
            status="finished",
            end_reason="end of stream",
            frames=1,
            frames_with_pose=0,
            dropped=0,
            skipped=[],
            target_class="cat",
            tsuc={},
            mean_p_target={},
            fps=1.0,
            seconds=1.0,
            timing_ms={},
            source={},
            models=[],
            config={},
            layout=None,
            camera=None,
            truth=False,
            started="x",
            finished="y",
        )
        .to_dict()
        .items()
        if k not in ("pose_sources", "tsuc_with_pose", "stream")
    }
    s = CaptureSummary.from_dict(old | {"unknown_future_key": 1})
    assert s.pose_sources == {} and s.frames == 1
    with pytest.raises(CaptureError, match="not a capture summary"):
        CaptureSummary.from_dict({"frames": 1})
    with pytest.raises(CaptureError, match="not a capture folder"):
        load_capture(tmp_path)
    assert pose_source({"pose": {"size_px": 1}}) == "detected" and pose_source({"pose": None}) == "lost"
    assert pose_rate_by([{"index": 0, "pose_source": "lost", "pose": None}]).rows == []


def test_simulator_effects_and_truth(tmp_path):
    layout, _, img = printed()
    cfg = SimConfig(
        frames=12,
        seed=5,
        scene_frames=6,
        near_side_frac=0.13,
        far_side_frac=0.031,
        shake_px=2.0,
        rolling_shutter=0.5,
        glare=0.8,
        ae_swing=0.3,
        clutter=8,
        defocus_sigma=0.3,
        defocus_max=1.2,
        speed=2.0,
    )
    res = simulate_capture(img, layout, CIFAR_TEST, tmp_path / "fx.mp4", config=cfg, target_class=TARGET)
    truth = read_truth(res.truth)
    assert len(truth) == 12 and res.patch_in_view == sum(t["patch_in_view"] for t in truth)
    sizes = [t["size_px"] for t in truth]
    assert min(sizes) > 10 and max(sizes) < 70  # 15-60 px face on, tilts shrink it
    assert all(0.3 - 1e-6 <= t["defocus_sigma"] <= 1.2 + 1e-6 for t in truth)
    assert max(t["glare"] for t in truth) >= 0 and "exposure" in truth[0]
    sim = json.loads(sim_path_for(res.video).read_text())
    assert sim["config"]["rolling_shutter"] == 0.5 and sim["patch_in_view"] == res.patch_in_view
    # same seed, same frames; the clutter is drawn on the scenes
    again = simulate_capture(img, layout, CIFAR_TEST, tmp_path / "fx2.mp4", config=cfg, target_class=TARGET)
    assert read_truth(again.truth) == [t for t in truth]
    plain = simulate_capture(
        img,
        layout,
        CIFAR_TEST,
        tmp_path / "plain.mp4",
        config=SimConfig(frames=1, seed=5, scene_frames=6),
        target_class=TARGET,
    )
    a = cv2.VideoCapture(str(res.video)).read()[1].astype(int)
    b = cv2.VideoCapture(str(plain.video)).read()[1].astype(int)
    assert np.abs(a - b).mean() > 3
    with pytest.raises(ConfigError, match="must be >= 0"):
        SimConfig(glare=-1.0)
    with pytest.raises(ConfigError, match="speed"):
        SimConfig(speed=0)
