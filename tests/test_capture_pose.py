"""patchlab.capture.pose: apparent size, in-plane angle and 3-D pose from the patch's markers.

Reference views come from the calibration stage's independent renderer
(:func:`patchlab.calib.synth.render_plane_view` of the sheet drawn by
:func:`patchlab.sheet.render_sheet`), not from the capture simulator.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from patchlab.calib.synth import look_at, photograph, render_plane_view
from patchlab.capture.pose import (
    MarkerDetector,
    PatchTarget,
    PoseEstimator,
    euler_from_rotation,
    quad_metrics,
    refine_marker_edges,
)
from patchlab.errors import ConfigError
from patchlab.sheet import render_sheet
from test_capture_helpers import printed

K = np.array([[620.0, 0, 321.5], [0, 618.0, 238.2], [0, 0, 1]])
DIST = np.array([-0.08, 0.03, 0.0004, -0.0002, 0.0])
SIZE = (640, 480)
PPM = 12.0


def test_quad_metrics_reference_values():
    sq = np.array([[10, 20], [110, 20], [110, 120], [10, 120]], float)
    size, angle, c = quad_metrics(sq)
    assert size == pytest.approx(100) and angle == pytest.approx(0) and c == pytest.approx((60, 70))
    th = math.radians(30)
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    size, angle, _ = quad_metrics((sq - 60) @ R.T)
    assert size == pytest.approx(100) and angle == pytest.approx(30)
    quad = np.array([[0, 0], [90, 10], [80, 70], [5, 60]], float)
    area = cv2.contourArea(quad.astype(np.float32))
    assert quad_metrics(quad)[0] == pytest.approx(math.sqrt(area))
    with pytest.raises(ValueError, match=r"expected a \(4, 2\)"):
        quad_metrics(np.zeros((3, 2)))


def test_euler_angles_invert_look_at():
    rng = np.random.default_rng(0)
    for _ in range(20):
        tx, ty, roll = rng.uniform(-60, 60, 3)
        R = cv2.Rodrigues(look_at((0, 0), 100, tilt_x_deg=tx, tilt_y_deg=ty, roll_deg=roll).rvec)[0]
        assert np.allclose(euler_from_rotation(R), (tx, ty, roll), atol=1e-6)


def _view(layout, img, pose, *, dist=None, blur=0.5, noise=1.5, seed=0):
    page = render_sheet(layout, PPM, patches={0: img})
    v = render_plane_view(page, PPM, K, dist, pose, SIZE)
    v = photograph(v, rng=np.random.default_rng(seed), noise_sigma=noise, blur_sigma=blur)
    return cv2.cvtColor(v, cv2.COLOR_RGB2GRAY)


def _truth_quad(layout, pose, dist=None):
    obj = np.column_stack([np.asarray(layout.patches[0].corners_mm), np.zeros(4)])
    return cv2.projectPoints(obj, pose.rvec, pose.tvec, K, np.zeros(5) if dist is None else dist)[0].reshape(4, 2)


@pytest.fixture(scope="module")
def sheet():
    return printed()


VIEWS = [(0, 0, 0, 200), (25, -10, 20, 220), (-35, 20, -30, 180), (10, 40, 75, 210), (0, 0, 170, 230)]


@pytest.mark.parametrize("tx,ty,roll,d", VIEWS)
def test_size_and_angle_without_a_camera(sheet, tx, ty, roll, d):
    layout, _, img = sheet
    centre = np.asarray(layout.patches[0].corners_mm).mean(0)
    pose = look_at(tuple(centre), d, tilt_x_deg=tx, tilt_y_deg=ty, roll_deg=roll)
    gray = _view(layout, img, pose)
    est = PoseEstimator(PatchTarget.from_layout(layout))
    p = est.estimate(MarkerDetector(layout.aruco_dict).detect(gray))
    assert p is not None and p.n_markers >= 3
    size, angle, _ = quad_metrics(_truth_quad(layout, pose))
    assert abs(p.size_px / size - 1) < 0.01
    assert abs((p.angle_deg - angle + 180) % 360 - 180) < 0.5
    assert p.distance_mm is None and p.tilt_x_deg is None


@pytest.mark.parametrize("tx,ty,roll,d", VIEWS[:4])
def test_distance_and_tilts_with_a_camera(sheet, tx, ty, roll, d):
    layout, _, img = sheet
    centre = np.asarray(layout.patches[0].corners_mm).mean(0)
    pose = look_at(tuple(centre), d, tilt_x_deg=tx, tilt_y_deg=ty, roll_deg=roll)
    gray = _view(layout, img, pose, dist=DIST)
    p = PoseEstimator(PatchTarget.from_layout(layout), camera=(K, DIST)).estimate(
        MarkerDetector(layout.aruco_dict).detect(gray)
    )
    assert p is not None
    assert p.distance_mm == pytest.approx(d, rel=0.02)
    ex = euler_from_rotation(cv2.Rodrigues(pose.rvec)[0])
    assert np.allclose([p.tilt_x_deg, p.tilt_y_deg, p.roll_deg], ex, atol=2.5), (p, ex)
    assert p.view_angle_deg == pytest.approx(
        math.degrees(math.acos(math.cos(math.radians(tx)) * math.cos(math.radians(ty)))), abs=2.5
    )
    size, angle, _ = quad_metrics(_truth_quad(layout, pose, DIST))
    assert abs(p.size_px / size - 1) < 0.01 and p.reproj_px < 0.5


def test_edge_refinement_removes_the_threshold_bias(sheet):
    """ArUco's corners sit inside the black square; the refined ones are on its edge."""
    layout, _, img = sheet
    centre = np.asarray(layout.patches[0].corners_mm).mean(0)
    pose = look_at(tuple(centre), 230, tilt_x_deg=15, tilt_y_deg=-10, roll_deg=20)
    gray = _view(layout, img, pose, blur=0.7)
    raw = MarkerDetector(layout.aruco_dict, refine_edges=False).detect(gray)
    ref = refine_marker_edges(gray.astype(np.float32), np.stack([d.corners for d in raw]), 6)
    errs_raw, errs_ref = [], []
    for d, c in zip(raw, ref):
        m = next(m for m in layout.markers if m.id == d.id)
        obj = np.column_stack([np.asarray(m.corners_mm), np.zeros(4)])
        truth = cv2.projectPoints(obj, pose.rvec, pose.tvec, K, np.zeros(5))[0].reshape(4, 2)
        errs_raw.append(np.abs(d.corners - truth).max())
        errs_ref.append(np.abs(c - truth).max())
    assert len(raw) == 4
    assert max(errs_ref) < 0.35 and np.mean(errs_ref) < 0.5 * np.mean(errs_raw)


def test_no_layout_uses_the_nominal_frame(sheet):
    layout, _, img = sheet
    centre = np.asarray(layout.patches[0].corners_mm).mean(0)
    pose = look_at(tuple(centre), 260, tilt_x_deg=20, roll_deg=-15)
    p = PoseEstimator(PatchTarget.nominal()).estimate(MarkerDetector().detect(_view(layout, img, pose)))
    size, angle, _ = quad_metrics(_truth_quad(layout, pose))
    # the printed band is rounded to whole patch pixels: a few percent from nominal
    assert abs(p.size_px / size - 1) < 0.05 and abs(p.angle_deg - angle) < 1.0


def test_too_few_markers_give_no_pose(sheet):
    layout, _, img = sheet
    est = PoseEstimator(PatchTarget.from_layout(layout), min_markers=3)
    centre = np.asarray(layout.patches[0].corners_mm).mean(0)
    gray = _view(layout, img, look_at(tuple(centre), 260))
    dets = MarkerDetector(layout.aruco_dict).detect(gray)
    assert est.estimate(dets) is not None
    assert est.estimate(dets[:2]) is None and est.estimate([]) is None
    with pytest.raises(ConfigError, match="min_markers"):
        PoseEstimator(PatchTarget.from_layout(layout), min_markers=5)
    with pytest.raises(ValueError, match=r"\(H, W\) uint8"):
        MarkerDetector().detect(np.zeros((4, 4, 3), np.uint8))
