"""patchlab.calib camera: intrinsics recovered from synthetic views of the printed board.

The board PDF (``patchlab print board``) is rendered with pdftoppm and seen by a
known camera (focal length, off-centre principal point, radial and tangential
distortion) from varied poses, with blur, noise and JPEG.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from patchlab.calib.camera import board_from_layout, calibrate_camera, detect_board, iter_image_dir, load_camera
from patchlab.calib.synth import look_at, photograph, render_plane_view
from patchlab.errors import ConfigError, DataError
from patchlab.layout import Layout
from patchlab.print.sheets import make_board_pdf
from patchlab.print.verify import render_pdf

BOARD_DPI = 200
K_TRUE = np.array([[900.0, 0, 478.3], [0, 905.0, 351.7], [0, 0, 1]])
DIST_TRUE = np.array([-0.12, 0.06, 0.0005, -0.0003, 0.0])
SIZE = (960, 720)
# (tilt about x, tilt about y, roll, distance mm, target offset mm): varied, as a user films a board
POSES = [
    (0, 0, 0, 380, (0, 0)),
    (28, 0, 5, 420, (0, 20)),
    (-28, 0, -5, 420, (0, -20)),
    (0, 28, 10, 420, (25, 0)),
    (0, -28, -10, 420, (-25, 0)),
    (22, 22, 0, 450, (15, 15)),
    (-22, 22, 15, 450, (-15, 20)),
    (22, -22, -15, 450, (20, -15)),
    (-22, -22, 0, 450, (-20, -20)),
    (10, -32, 30, 480, (0, 0)),
    (35, 5, 0, 470, (0, 30)),
    (-10, 35, -20, 480, (-10, 0)),
    (0, 0, 90, 330, (30, -40)),
    (15, 10, -90, 340, (-30, 40)),
]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("board")
    res = make_board_pdf(date="2025-01-02")
    pdf, lay = res.write(tmp / "board.pdf")
    page = cv2.cvtColor(render_pdf(pdf, BOARD_DPI), cv2.COLOR_RGB2GRAY)
    return res.layout, lay, page


@pytest.fixture(scope="module")
def views(board):
    layout, _, page = board
    spec = layout.board
    centre = (
        spec["origin_mm"][0] + spec["squares"][0] * spec["square_mm"] / 2,
        spec["origin_mm"][1] + spec["squares"][1] * spec["square_mm"] / 2,
    )
    rng = np.random.default_rng(0)
    out = []
    for k, (tx, ty, roll, d, (ox, oy)) in enumerate(POSES):
        pose = look_at((centre[0] + ox, centre[1] + oy), d, tilt_x_deg=tx, tilt_y_deg=ty, roll_deg=roll)
        v = render_plane_view(page, BOARD_DPI / 25.4, K_TRUE, DIST_TRUE, pose, SIZE)
        out.append((f"view{k:02d}.jpg", photograph(v, rng=rng, blur_sigma=0.6, noise_sigma=2.0, jpeg_quality=90)))
    return out


def test_recovers_focal_length_and_principal_point(board, views):
    layout, _, _ = board
    cal = calibrate_camera(views, layout)
    f_err = max(abs(cal.fx / K_TRUE[0, 0] - 1), abs(cal.fy / K_TRUE[1, 1] - 1))
    c_err = max(abs(cal.cx - K_TRUE[0, 2]), abs(cal.cy - K_TRUE[1, 2]))
    print(
        f"fx {cal.fx:.2f} fy {cal.fy:.2f} (rel. err {100 * f_err:.3f} %), cx {cal.cx:.2f} cy {cal.cy:.2f} "
        f"(err {c_err:.2f} px), k1 {cal.dist_coeffs[0]:.4f}, RMS {cal.rms_px:.3f} px, "
        f"{cal.views_used}/{cal.views_total} views"
    )
    assert f_err < 0.01 and c_err < 2.0
    assert cal.rms_px < 0.5 and cal.views_used == len(POSES) and cal.image_size == SIZE
    assert abs(cal.dist_coeffs[0] - DIST_TRUE[0]) < 0.03  # barrel distortion seen
    d = cal.to_dict()
    assert d["fx"] == cal.fx and len(d["per_view_rms_px"]) == cal.views_used and len(d["fov_deg"]) == 2


def test_blurred_board_is_too_few_views(board, views):
    layout, _, _ = board
    blurred = [(n, cv2.GaussianBlur(v, (0, 0), 6)) for n, v in views[:6]]
    with pytest.raises(DataError, match=r"only 0 of 6 views show the ChArUco board usably"):
        calibrate_camera(blurred, layout)


def test_a_view_with_the_board_is_detected_and_one_without_is_not(board, views):
    layout, _, _ = board
    b = board_from_layout(layout)
    v = detect_board(views[0][1], b, "v0")
    assert v is not None and len(v.image_points) == 54 and v.object_points.shape == (54, 3)
    assert detect_board(np.full((480, 640), 128, np.uint8), b) is None


def test_wrong_layout_kind_and_mixed_sizes(board, views):
    with pytest.raises(ConfigError, match="not a ChArUco board"):
        board_from_layout(Layout(kind="chart", page_mm=(210, 297)))
    layout, _, _ = board
    mixed = [views[0], ("small.png", cv2.resize(views[1][1], (640, 480)))]
    with pytest.raises(DataError, match="calibrate one camera mode at a time"):
        calibrate_camera(mixed, layout)


def test_image_dir_and_camera_file(tmp_path, views):
    for name, img in views[:2]:
        cv2.imwrite(str(tmp_path / name), img)
    (tmp_path / "notes.txt").write_text("not an image")
    n, it = iter_image_dir(tmp_path)
    assert n == 2 and [name for name, _ in it] == ["view00.jpg", "view01.jpg"]
    with pytest.raises(DataError, match="image folder not found"):
        iter_image_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        iter_image_dir(tmp_path / "empty")
    with pytest.raises(ConfigError, match="camera file not found"):
        load_camera(tmp_path / "camera.json")
