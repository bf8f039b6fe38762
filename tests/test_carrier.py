"""The carrier card: geometry, the printed PDF read back by a camera-like render, the optimiser's rendering."""

from __future__ import annotations

import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from patchlab.cli import app
from patchlab.errors import ConfigError
from patchlab.layout import load_layout
from patchlab.markers import (
    CARRIERS,
    MIN_PX_PER_CELL,
    CarrierGeometry,
    carrier_frame,
    carrier_geometry,
    default_focal_px,
    detect_markers,
    get_dictionary,
)
from test_capture_helpers import run_dir


def test_geometry_markers_fit_and_reach_the_distance():
    g = carrier_geometry("A5", 60.0, max_distance_m=2.0)
    assert g.card_mm == (148.0, 210.0)
    x0, y0, x1, y1 = g.patch_box
    assert (x0 + x1) / 2 == pytest.approx(74.0) and x1 - x0 == pytest.approx(60.0)
    for c in g.marker_corners():  # inside the card, a quiet zone from its edge and from the patch
        (mx0, my0), (mx1, my1) = c.min(0), c.max(0)
        assert mx0 >= g.quiet_mm - 1e-9 and my0 >= g.quiet_mm - 1e-9
        assert mx1 <= 148 - g.quiet_mm + 1e-9 and my1 <= 210 - g.quiet_mm + 1e-9
        assert (
            mx1 + g.quiet_mm <= x0 + 1e-9
            or mx0 - g.quiet_mm >= x1 - 1e-9
            or my1 + g.quiet_mm <= y0 + 1e-9
            or my0 - g.quiet_mm >= y1 - 1e-9
        )
    cells = get_dictionary(g.dictionary).markerSize + 2
    f = default_focal_px()
    assert f == pytest.approx(320 / np.tan(np.radians(30)))
    # sized for 2 m: at 2 m each cell is MIN_PX_PER_CELL pixels
    assert g.marker_mm / cells * f / 2000.0 == pytest.approx(MIN_PX_PER_CELL, rel=1e-6)
    assert g.reach_m == pytest.approx(2.0)
    near = carrier_geometry("A5", 60.0, max_distance_m=1.0)
    assert near.marker_mm == pytest.approx(g.marker_mm / 2)
    with pytest.warns(UserWarning, match="reaches farther|decode to"):
        far = carrier_geometry("A6", 60.0, max_distance_m=3.0)
    assert far.reach_m < 3.0 and far.marker_mm < carrier_geometry("A5", 60.0, max_distance_m=3.0).marker_mm + 1e-9
    assert CarrierGeometry.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    with pytest.raises(ConfigError, match="unknown carrier"):
        carrier_geometry("B7", 60.0)
    with pytest.raises(ConfigError, match="no room for markers"):
        carrier_geometry("CARD", 60.0)
    assert set(CARRIERS) == {"A6", "A5", "CARD"}


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs pdftoppm (poppler-utils; .ci/run installs it)")
@pytest.mark.parametrize("dictionary", ["aruco4x4", "apriltag36h11"])
def test_printed_carrier_is_found_where_the_layout_says(tmp_path, dictionary):
    out = tmp_path / "card.pdf"
    r = CliRunner().invoke(
        app,
        [
            "print",
            "patch",
            str(run_dir()),
            "--size-mm",
            "60",
            "--out",
            str(out),
            "--carrier",
            "A6",
            "--max-distance-m",
            "1.2",
            "--dictionary",
            dictionary,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "A6 carrier" in r.output and "decodable to" in r.output
    lay = load_layout(tmp_path / "card.layout.json")
    meta = lay.meta["carrier"]
    assert meta["name"] == "A6" and meta["reach_m"] == pytest.approx(1.2, rel=0.02)
    assert lay.aruco_dict == ("DICT_4X4_50" if dictionary == "aruco4x4" else "DICT_APRILTAG_36h11")
    dpi = 50
    subprocess.run(["pdftoppm", "-png", "-r", str(dpi), "-singlefile", str(out), str(tmp_path / "page")], check=True)
    page = cv2.imread(str(tmp_path / "page.png"))
    ppm = dpi / 25.4
    dets = {d.id: d for d in detect_markers(page, lay.aruco_dict)}
    assert sorted(dets) == [m.id for m in lay.markers_of(0)]
    for m in lay.markers_of(0):
        want = (np.asarray(m.corners_mm) * ppm) - 0.5
        assert np.abs(dets[m.id].corners - want).max() < 1.5
    p = lay.patches[0]
    cut = lay.meta["copies"][0]["cut_rect_mm"]
    assert cut[2:] == [105.0, 148.0]
    assert p.x_mm - cut[0] == pytest.approx((105 - 60) / 2) and p.width_mm == pytest.approx(60.0)


def test_carrier_frame_matches_the_geometry_and_the_optimiser_renders_it():
    from patchlab.eot import PatchRenderer

    g = carrier_geometry("A6", 50.0, max_distance_m=1.0)
    f = carrier_frame(g, 40, scale=4)
    ppm = 40 * 4 / 50.0
    H, W = f.image.shape[:2]
    assert (W, H) == (round(105 * 40 / 50) * 4, round(148 * 40 / 50) * 4)
    x0, y0, x1, y1 = f.inner_box
    assert x1 - x0 == y1 - y0 == 160 and not f.mask[y0:y1, x0:x1].any()
    dets = {d.id: d for d in detect_markers(f.image[..., ::-1].copy())}
    assert sorted(dets) == list(g.marker_ids)
    for mid, c in zip(g.marker_ids, g.marker_corners()):
        assert np.abs(dets[mid].corners - (c * ppm - 0.5)).max() < 2.0
    r = PatchRenderer((224, 224), (16, 16), frac=0.04, frame=g, placement="center")
    images = torch.full((1, 3, 224, 224), 0.5)
    out = r(images, torch.rand(3, 16, 16), r.sample(1, torch.Generator().manual_seed(0)))
    img = (out[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)[..., ::-1].copy()
    assert len(detect_markers(img)) == 4  # the card's markers, as printed, around the patch
