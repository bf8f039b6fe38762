"""patchlab.print: PDFs rendered back with poppler's pdftoppm and measured.

The acceptance round trip: print a patch at 50 mm, render the PDF at 600 dpi, find
the markers with OpenCV, measure the patch edges in the image: size within 0.2 mm,
cells equal to the patch image (PSNR >= 40 dB on the patch grid).
"""

from __future__ import annotations


import cv2
import numpy as np
import pytest
from PIL import Image

from patchlab.errors import ConfigError
from patchlab.layout import load_layout
from patchlab.markers import charuco_board, detect_markers, marker_bits, marker_frame
from patchlab.print.sheets import (
    black_squares,
    layout_path_for,
    load_patch_source,
    make_board_pdf,
    make_chart_pdf,
    make_patch_pdf,
)
from patchlab.print.verify import measure_patch, read_cells, render_pdf

DPI = 600
PPM = DPI / 25.4


@pytest.fixture(scope="module")
def printed(tmp_path_factory, short_run_dir):
    """Two 50 mm copies of a real short run's 64x64 patch with a chart strip, written as a user would."""
    tmp = tmp_path_factory.mktemp("print")
    src = load_patch_source(short_run_dir)
    img = src.image
    res = make_patch_pdf(src, size_mm=50, copies=2, chart=True, date="2025-01-02")
    pdf, lay = res.write(tmp / "patch.pdf")
    return pdf, load_layout(lay), img


def _render_copy(pdf, layout, copy, dpi=DPI):
    """Only the copy's cut-out, at ``dpi`` (keeps the test quick)."""
    cut = next(c for c in layout.meta["copies"] if c["copy"] == copy)["cut_rect_mm"]
    x, y, w, h = cut
    return render_pdf(pdf, dpi, crop_mm=(x - 2, y - 2, w + 4, h + 4))


def test_round_trip_size_and_pixels_at_600_dpi(printed):
    pdf, layout, img = printed
    assert layout_path_for(pdf).exists() and layout.kind == "patch"
    for copy in (0, 1):
        page = _render_copy(pdf, layout, copy)
        m = measure_patch(page, layout, PPM, copy, patch=img)
        assert m.markers_found == 4
        assert abs(m.width_error_mm) < 0.2 and abs(m.height_error_mm) < 0.2, m
        assert abs(m.marker_error_mm) < 0.1 and m.offset_mm < 0.1, m
        assert m.psnr_db >= 40, m


def test_measurement_sees_a_wrong_scale_and_a_different_patch(printed):
    """The round trip can fail: a 1 % scale error and another patch are both caught."""
    pdf, layout, img = printed
    page = _render_copy(pdf, layout, 0, dpi=DPI * 1.01)  # as if the printer enlarged by 1 %
    m = measure_patch(page, layout, PPM, 0, patch=img)
    assert m.width_error_mm == pytest.approx(0.5, abs=0.05)
    other = np.random.default_rng(99).integers(0, 256, img.shape, dtype=np.uint8)
    assert measure_patch(_render_copy(pdf, layout, 0), layout, PPM, 0, patch=other).psnr_db < 15


def test_layout_matches_the_drawn_page(printed):
    pdf, layout, _ = printed
    page = render_pdf(pdf, 100)
    ppm = 100 / 25.4
    found = {d.id: d for d in detect_markers(cv2.cvtColor(page, cv2.COLOR_RGB2BGR), layout.aruco_dict)}
    # every marker: two copies x 4, plus the chart strip's 4 (ids at the end of the dictionary)
    assert sorted(found) == [0, 1, 2, 3, 4, 5, 6, 7, 46, 47, 48, 49]
    for m in layout.markers:
        want = np.asarray(m.corners_mm) * ppm - 0.5
        assert np.abs(found[m.id].corners - want).max() < 1.0, m.id
    assert {m.copy for m in layout.markers} == {-1, 0, 1}
    for s in layout.swatches:  # swatch centres print their exact sRGB
        x, y, w, h = s.rect_mm
        c = page[int((y + h / 2) * ppm), int((x + w / 2) * ppm)]
        assert tuple(int(v) for v in c) == s.srgb, s.name
    assert len(layout.swatches) >= 24
    meta = layout.meta
    assert meta["target_class"] == "cat" and meta["run_id"] == "run-0001" and meta["size_mm"] == 50
    assert meta["patch_px"] == [64, 64] and len(meta["copies"]) == 2 and meta["chart_marker_ids"] == [46, 47, 48, 49]


def test_pdf_frame_is_the_core_marker_frame(printed):
    """What the optimiser composites (markers.marker_frame) is what the PDF prints:
    same band, same marker cells at the same places."""
    pdf, layout, img = printed
    mm_px = layout.meta["mm_per_px"]
    scale = 4  # rendered so that one patch pixel is 4 image pixels
    dpi = scale / mm_px * 25.4
    ppm = dpi / 25.4
    x, y, w, h = layout.meta["copies"][0]["cut_rect_mm"]
    page = render_pdf(pdf, dpi, crop_mm=(x, y, w, h))
    f = marker_frame(64, scale=scale, marker_ratio=layout.meta["marker_ratio"])
    g = f.geometry
    assert w == pytest.approx(g.size_px[0] * mm_px) and h == pytest.approx(g.size_px[1] * mm_px)
    off = np.array([x * ppm - np.floor(x * ppm), y * ppm - np.floor(y * ppm)])  # crop starts at floor(x * ppm)
    found = detect_markers(cv2.cvtColor(page, cv2.COLOR_RGB2BGR))
    assert [d.id for d in found] == list(g.marker_ids)
    for d, c in zip(found, g.marker_corners()):
        assert np.abs(d.corners - (c * scale + off - 0.5)).max() < 0.75  # < 0.2 patch px
    for mid, (mx, my) in zip(g.marker_ids, g.marker_origins()):
        bits = marker_bits(mid)
        n = bits.shape[0]
        centres = (np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1) + 0.5) * g.marker_px / n + (mx, my)
        pi = np.floor(centres * scale + off).astype(int)  # page pixel under each cell centre
        fi = np.floor(centres * scale).astype(int)
        assert np.array_equal(page[pi[..., 1], pi[..., 0], 0] > 127, bits.astype(bool)), mid
        assert np.array_equal(f.image[fi[..., 1], fi[..., 0], 0] > 127, bits.astype(bool)), mid
    # the band outside the markers is paper white in both
    band = f.mask.copy()
    for c in g.marker_corners():
        (a0, b0), (a1, b1) = np.floor(c.min(0) * scale) - 2, np.ceil(c.max(0) * scale) + 2
        band[int(b0) : int(b1), int(a0) : int(a1)] = False
    band[:2], band[-2:], band[:, :2], band[:, -2:] = False, False, False, False  # crop edge
    band[f.inner_box[1] - 2 : f.inner_box[3] + 2, f.inner_box[0] - 2 : f.inner_box[2] + 2] = False
    assert f.image[band].min() == 255 and page[: band.shape[0], : band.shape[1]][band].min() >= 250


def test_chart_pdf_swatches_and_markers():
    res = make_chart_pdf(paper="letter", date="2025-01-02")
    lay = res.layout
    assert lay.kind == "chart" and len(lay.swatches) == 150 and lay.page_mm == (215.9, 279.4)
    names = [s.name for s in lay.swatches]
    assert sum(n.startswith("grey") for n in names) == 16 and sum(n.startswith("skin") for n in names) == 12
    assert len({s.srgb for s in lay.swatches}) == 150
    rects = np.array([s.rect_mm for s in lay.swatches])
    assert rects[:, 0].min() >= 8 and (rects[:, 0] + rects[:, 2]).max() <= 215.9 - 8
    assert (rects[:, 1] + rects[:, 3]).max() <= 279.4 - 8
    assert res.pdf.startswith(b"%PDF") and b"ICCBased" not in res.pdf  # no colour management


def test_board_pdf_is_opencvs_charuco_board(tmp_path):
    res = make_board_pdf(date="2025-01-02")
    pdf, _ = res.write(tmp_path / "board.pdf")
    spec = res.layout.board
    assert spec["squares"] == [7, 10] and spec["dictionary"] == "DICT_5X5_100"
    dpi = 254  # 10 px per mm
    ox, oy = spec["origin_mm"]
    sx, sy = spec["squares"]
    sq = spec["square_mm"]
    page = cv2.cvtColor(render_pdf(pdf, dpi, crop_mm=(ox, oy, sx * sq, sy * sq)), cv2.COLOR_RGB2GRAY)
    board = charuco_board(spec)
    ref = board.generateImage((int(sx * sq * 10), int(sy * sq * 10)), marginSize=0, borderBits=1)
    page = page[: ref.shape[0], : ref.shape[1]]
    agree = np.mean((page > 127) == (ref > 127))
    assert agree > 0.995, agree
    det = cv2.aruco.CharucoDetector(board)
    corners, ids, _, _ = det.detectBoard(page)
    assert ids is not None and len(ids) == (sx - 1) * (sy - 1)
    assert black_squares(board)[0, 0]  # OpenCV 5 pattern: top-left square black


def test_patch_source_variants_and_errors(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "patch.png")  # a patch image from elsewhere: no run folder
    src = load_patch_source(tmp_path / "patch.png")
    assert src.run_id == "patch" and src.target_class is None and src.image.shape == (32, 48, 3)
    res = make_patch_pdf(src, size_mm=60, date="2025-01-02")
    p = res.layout.patches[0]
    assert (p.width_mm, p.height_mm) == pytest.approx((60.0, 40.0)) and p.pixels == (48, 32)
    with pytest.raises(ConfigError, match="patch not found"):
        load_patch_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="without patch.png"):
        load_patch_source(tmp_path / "empty")


def test_fit_errors_name_the_limit():
    from patchlab.print.sheets import PatchSource

    s = PatchSource(image=np.zeros((64, 64, 3), np.uint8), path="x.png", run_id="x")
    with pytest.raises(ConfigError, match=r"does not fit on A4.*largest size that fits is 1\d\d mm"):
        make_patch_pdf(s, size_mm=300)
    with pytest.raises(ConfigError, match="at most 4 do"):
        make_patch_pdf(s, size_mm=60, copies=5)
    res = make_patch_pdf(s, size_mm=40, copies=6)  # several copies tile when they fit
    assert len(res.layout.patches) == 6 and len(res.layout.markers) == 24
    with pytest.raises(ConfigError, match="unknown paper"):
        make_patch_pdf(s, size_mm=50, paper="a0")


def test_no_markers_prints_bare_patch_with_cut_marks():
    from patchlab.print.sheets import PatchSource

    s = PatchSource(image=np.zeros((8, 8, 3), np.uint8), path="x.png", run_id="x")
    res = make_patch_pdf(s, size_mm=50, markers=False)
    assert res.layout.markers == [] and res.layout.meta["frame"] is None
    assert res.layout.meta["copies"][0]["cut_rect_mm"][2] == pytest.approx(50.0)


def test_read_cells_recovers_a_grid():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    big = cv2.resize(img, (70, 50), interpolation=cv2.INTER_NEAREST)
    cells = read_cells(big, np.array([[0, 0], [70, 0], [70, 50], [0, 50]], np.float64), (7, 5))
    assert np.abs(cells - img).max() < 1e-3


def test_core_render_sheet_draws_what_the_pdf_prints(printed):
    """The capture simulator rasterises layouts with patchlab.sheet.render_sheet: same page."""
    from patchlab.sheet import render_sheet

    pdf, layout, img = printed
    ppm = 10.0
    sim = render_sheet(layout, ppm, patches={0: img, 1: img})
    page = render_pdf(pdf, ppm * 25.4)
    assert abs(sim.shape[0] - page.shape[0]) <= 1 and abs(sim.shape[1] - page.shape[1]) <= 1  # poppler rounds up
    page = page[: sim.shape[0], : sim.shape[1]]
    for p in layout.patches:  # patch cells, read at cell centres, agree exactly
        box = np.array(p.corners_mm) * ppm
        assert np.array_equal(np.round(read_cells(sim, box, p.pixels)), np.round(read_cells(page, box, p.pixels)))
    for m in layout.markers:  # marker cells too
        x0, y0 = np.floor(np.min(m.corners_mm, 0) * ppm).astype(int) + 1
        x1, y1 = np.ceil(np.max(m.corners_mm, 0) * ppm).astype(int) - 1
        agree = np.mean((sim[y0:y1, x0:x1, 0] > 127) == (page[y0:y1, x0:x1, 0] > 127))
        assert agree > 0.95, (m.id, agree)
