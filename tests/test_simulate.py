"""patchlab.capture.simulate: a printed patch filmed by a simulated camera, with ground truth."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CIFAR_TEST
from patchlab.capture.pose import MarkerDetector, PatchTarget, PoseEstimator, quad_metrics
from patchlab.capture.simulate import (
    Card,
    PrinterModel,
    SimConfig,
    _render_card,
    default_camera,
    make_card,
    read_truth,
    simulate_capture,
    sim_path_for,
    truth_path_for,
)
from patchlab.cli import app
from patchlab.errors import ConfigError
from test_capture_helpers import TARGET, printed, run_dir, tmp_root, video


def _frames(path):
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


def test_video_truth_and_config_are_written():
    res = video()
    frames = _frames(res.video)
    assert len(frames) == 30 and frames[0].shape == (480, 640, 3)
    truth = read_truth(res.truth)
    assert res.truth == truth_path_for(res.video) and len(truth) == 30
    assert [t["index"] for t in truth] == list(range(30))
    classes = {p.name for p in CIFAR_TEST.iterdir()}
    assert all(t["object_class"] in classes and t["object_class"] != TARGET for t in truth)
    assert len({t["object_class"] for t in truth[:15]}) == 1  # one scene per 15 frames here
    assert all(t["has_patch"] for t in truth)
    from patchlab.calib.camera import load_camera

    K, dist, size = load_camera(res.camera)
    assert np.allclose(K, default_camera((640, 480))) and size == (640, 480) and not np.any(dist)
    sim = json.loads(sim_path_for(res.video).read_text())
    assert sim["config"]["seed"] == 0 and sim["frames"] == 30 and len(sim["scenes"]) == 2
    assert sim["layout"]["kind"] == "patch" and "cv2" in sim["versions"]


def test_truth_pose_is_what_the_markers_show():
    """A quick version of the acceptance: detected pose vs ground truth on the short video."""
    res = video()
    layout, _, _ = printed()
    det, est = MarkerDetector(layout.aruco_dict), PoseEstimator(PatchTarget.from_layout(layout))
    truth = read_truth(res.truth)
    n = 0
    for f, t in zip(_frames(res.video), truth):
        p = est.estimate(det.detect(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)))
        if p is None:
            continue
        n += 1
        assert abs(p.size_px / t["size_px"] - 1) < 0.05
        assert abs((p.angle_deg - t["angle_deg"] + 180) % 360 - 180) < 3.0
        assert quad_metrics(np.asarray(t["quad_px"]))[0] == pytest.approx(t["size_px"], rel=1e-4)
    assert n >= 15


def test_sweeps_cover_distances_angles_and_light():
    truth = read_truth(video().truth)
    size = np.array([t["size_px"] for t in truth])
    assert size.max() / size.min() > 1.5
    assert np.ptp([t["tilt_x_deg"] for t in truth]) > 10 and np.ptp([t["exposure"] for t in truth]) > 0.04


def test_motion_blur_kernel_follows_the_velocity():
    from patchlab.capture.simulate import _motion_kernel

    assert _motion_kernel(0.3, 0.2) is None
    k = _motion_kernel(6.0, 0.0)
    assert k.sum() == pytest.approx(1.0) and k.shape == (7, 7)
    assert np.count_nonzero(k.sum(1)) == 1 and np.count_nonzero(k.sum(0)) == 7  # one horizontal line
    kd = _motion_kernel(4.0, 4.0)
    assert np.allclose(kd, kd.T) and np.trace(kd) == pytest.approx(1.0)  # along the diagonal only


def test_same_seed_same_video_and_control_shares_the_sweep():
    a, b = video(), video(control="blank")
    ta, tb = read_truth(a.truth), read_truth(b.truth)
    for x, y in zip(ta, tb):
        assert x["quad_px"] == y["quad_px"] and x["object_class"] == y["object_class"]
        assert x["exposure"] == y["exposure"]
    assert all(t["card"] and not t["has_patch"] for t in tb)
    none = read_truth(video(control="none").truth)
    assert not any(t["card"] for t in none)
    fa, fb, fn = _frames(a.video)[0], _frames(b.video)[0], _frames(video(control="none").video)[0]
    q = np.asarray(ta[0]["quad_px"])
    inner = np.zeros(fa.shape[:2], np.uint8)
    cv2.fillConvexPoly(inner, np.round(q.mean(0) + 0.6 * (q - q.mean(0))).astype(np.int32), 1)
    inner = inner.astype(bool)
    assert inner.sum() > 500
    assert fa[inner].std() > 3 * fb[inner].std()  # random patch vs blank paper
    # outside the card the three videos are the same scene
    assert np.abs(fa[:20, :20].astype(int) - fn[:20, :20].astype(int)).mean() < 3
    again = simulate_capture(
        printed()[2],
        printed()[0],
        CIFAR_TEST,
        tmp_root() / "again.mp4",
        config=SimConfig(frames=3, seed=0, scene_frames=15),
        target_class=TARGET,
    )
    assert [t["quad_px"] for t in read_truth(again.truth)] == [t["quad_px"] for t in ta[:3]]


def test_printer_model_compresses_the_gamut():
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [128, 128, 128]]], np.uint8)
    out = PrinterModel(blur_mm=0).apply(rgb, 10.0).astype(int)
    assert tuple(out[0, 0]) == PrinterModel().paper_rgb and tuple(out[0, 1]) == PrinterModel().ink_rgb
    assert out[0, 2, 0] - out[0, 2, 1] < 255 - 0 and out[0, 2, 0] > out[0, 2, 1]  # red, less saturated
    from patchlab.calib import ColorTransform

    ident = PrinterModel(blur_mm=0).apply(rgb, 10.0, ColorTransform.identity())
    assert np.abs(ident.astype(int) - rgb.astype(int)).max() <= 12  # piecewise-linear identity
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        PrinterModel().apply(rgb.astype(np.float32), 10.0)


def test_homography_renderer_matches_render_plane_view():
    """The fast warp path and the calibration stage's ray renderer draw the same card."""
    layout, _, img = printed()
    card: Card = make_card(layout, img, px_per_mm=10.0, printer=PrinterModel())
    K = default_camera((320, 240))
    from patchlab.calib.synth import look_at

    c = np.asarray(layout.patches[0].corners_mm).mean(0)
    pose = look_at(tuple(c), 180, tilt_x_deg=20, tilt_y_deg=-15, roll_deg=10)
    R = cv2.Rodrigues(pose.rvec)[0]
    a, alpha_a = _render_card(card, K, None, R, pose.tvec, (320, 240))
    b, alpha_b = _render_card(card, K, np.array([1e-12, 0, 0, 0, 0]), R, pose.tvec, (320, 240))
    assert alpha_a.sum() > 1000
    assert np.abs(alpha_a - alpha_b).mean() < 0.01 and np.abs(a - b).mean() < 1.0


def test_bad_options():
    layout, _, img = printed()
    with pytest.raises(ConfigError, match="--out must be a video"):
        simulate_capture(img, layout, CIFAR_TEST, tmp_root() / "x.gif")
    with pytest.raises(ConfigError, match="--control"):
        SimConfig(control="maybe")
    with pytest.raises(ConfigError, match="--frames"):
        SimConfig(frames=0)


def test_cli_simulate_capture(tmp_path):
    out = tmp_path / "clip.avi"
    res = CliRunner().invoke(
        app,
        [
            "simulate",
            "capture",
            "--patch",
            str(run_dir()),
            "--scenes",
            str(CIFAR_TEST / "dog"),
            "--out",
            str(out),
            "--frames",
            "6",
            "--seed",
            "3",
            "--size",
            "320x240",
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(_frames(out)) == 6 and _frames(out)[0].shape == (240, 320, 3)
    truth = read_truth(truth_path_for(out))
    # a plain class folder is an ImageFolder tree? No: its images sit directly in it -> class unknown
    assert all(t["object_class"] is None for t in truth)
    assert (tmp_path / "clip.layout.json").is_file()
    bad = CliRunner().invoke(
        app,
        [
            "simulate",
            "capture",
            "--patch",
            str(tmp_path / "nope"),
            "--scenes",
            str(CIFAR_TEST),
            "--out",
            str(out),
            "--overwrite",
        ],
    )
    assert bad.exit_code == 1 and "patch not found" in bad.output
