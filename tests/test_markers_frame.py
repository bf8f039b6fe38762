"""Core marker frame: the frame a cut-out patch carries, as the optimiser composites it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from patchlab.errors import ConfigError
from patchlab.markers import copy_marker_ids, detect_markers, frame_geometry, marker_frame


def test_geometry_scales_with_the_patch_and_keeps_a_quiet_zone():
    g = frame_geometry(64, marker_ratio=0.12)
    # band rounded to whole patch pixels; marker = 6/8 of the band, one cell of white each side
    assert g.band_px == 10 and g.marker_px == pytest.approx(7.5) and g.quiet_px == pytest.approx(1.25)
    assert g.size_px == (84, 84) and g.inner_box == (10, 10, 74, 74)
    corners = g.marker_corners()
    assert corners[0][0].tolist() == [1.25, 1.25]  # TL marker's TL corner
    assert corners[2][2].tolist() == [84 - 1.25, 84 - 1.25]  # BR marker's BR corner
    for c in corners:  # markers lie in the band, clear of the patch by one cell
        x0, y0 = c.min(0)
        x1, y1 = c.max(0)
        assert (x1 <= 10 - 1.25 + 1e-9 or x0 >= 74 + 1.25 - 1e-9) and (y1 <= 8.75 + 1e-9 or y0 >= 75.25 - 1e-9)
    # a 2x larger patch has a 2x larger frame
    assert frame_geometry(128, marker_ratio=0.12).band_px == 2 * g.band_px
    assert frame_geometry((40, 20)).patch_px == (40, 20)


def test_marker_frame_image_is_detectable_and_composites_around_a_patch():
    f = marker_frame(64, scale=4, copy=2)
    assert f.image.shape == (84 * 4, 84 * 4, 3) and f.image.dtype == np.uint8
    x0, y0, x1, y1 = f.inner_box
    assert (x0, y0, x1, y1) == (40, 40, 296, 296)
    assert not f.mask[y0:y1, x0:x1].any() and f.mask.sum() == 336 * 336 - 256 * 256
    patch = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    comp = f.image.copy()
    comp[y0:y1, x0:x1] = cv2.resize(patch, (256, 256), interpolation=cv2.INTER_NEAREST)
    found = detect_markers(cv2.cvtColor(comp, cv2.COLOR_RGB2BGR))
    assert [d.id for d in found] == [8, 9, 10, 11]  # copy 2's ids, TL TR BR BL
    # detected corners sit where the geometry says (pixel-centre convention: -0.5)
    for d, c in zip(found, f.geometry.marker_corners()):
        assert np.abs(d.corners - (c * 4 - 0.5)).max() < 1.0


def test_marker_frame_area_averages_edges_at_patch_resolution():
    f = marker_frame(64)  # marker 7.5 px: edges fall inside pixels and come out grey
    vals = np.unique(f.image)
    assert vals.min() == 0 and vals.max() == 255 and len(vals) > 2


def test_frame_rejects_bad_input():
    with pytest.raises(ConfigError, match="marker_ratio"):
        frame_geometry(64, marker_ratio=0)
    with pytest.raises(ConfigError, match="outside DICT_4X4_50"):
        copy_marker_ids(12)
    with pytest.raises(ConfigError, match=">= 1"):
        marker_frame(64, scale=0)
