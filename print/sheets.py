"""Plan and draw printable sheets: patch copies, colour charts, ChArUco boards.

Each ``make_*`` function returns a :class:`PrintResult`: the PDF bytes and the
:class:`~patchlab.layout.Layout` that says, in page millimetres, where every patch,
marker and swatch is. The PDF is drawn *from* the layout, so the two agree by
construction; :meth:`PrintResult.write` saves both atomically.

Page conventions: millimetres, origin top-left, y down (as the layout). Every
sheet keeps a :data:`PAGE_MARGIN_MM` margin that printers cannot reach, and a
header with printing instructions and a 100 mm scale bar to check by hand.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from reportlab.pdfbase.pdfmetrics import stringWidth

from patchlab.errors import ConfigError
from patchlab.layout import DEFAULT_ARUCO_DICT, Layout, MarkerSpec, PatchSpec, SwatchSpec
from patchlab.markers import (
    FRAME_MARKER_RATIO,
    MARKERS_PER_COPY,
    CarrierGeometry,
    carrier_geometry,
    charuco_board,
    dictionary_name,
    frame_geometry,
    get_dictionary,
)
from patchlab.runs import RUN_JSON, RunRecord, load_run
from patchlab.utils import atomic_write_bytes, versions

from .pdf import CUT_MARK_GAP_MM, CUT_MARK_LEN_MM, MMCanvas
from .swatches import chart_swatches, strip_swatches

#: Paper sizes (width, height) in mm, portrait.
PAPERS: dict[str, tuple[float, float]] = {"a4": (210.0, 297.0), "a3": (297.0, 420.0), "letter": (215.9, 279.4)}
#: Unprintable border most printers leave.
PAGE_MARGIN_MM = 8.0
#: Height of the instruction header (two text lines and the scale bar).
HEADER_MM = 14.0
#: Length of the scale bar in the header.
SCALE_BAR_MM = 100.0
#: Space around each patch copy for its crop marks, between copies, and for its caption.
TILE_MARGIN_MM = CUT_MARK_GAP_MM + CUT_MARK_LEN_MM
TILE_SPACING_MM = 2.0
CAPTION_MM = 6.0
CAPTION_PT, CAPTION_MIN_PT = 6.0, 4.0
#: The chart strip printed under patches with ``--chart``.
STRIP_SWATCH_MM, STRIP_GAP_MM, STRIP_ROWS = 8.0, 2.0, 2
#: The full chart (``patchlab print chart``).
CHART_SWATCH_MM, CHART_GAP_MM, CHART_MARKER_MM = 12.0, 3.0, 14.0
#: Layout ``copy`` index of markers that belong to no patch copy (chart, board).
SHEET_MARKER_COPY = -1
#: Libraries whose versions a sheet records.
PRINT_VERSION_MODULES = ("cv2", "numpy", "reportlab")
#: ChArUco board defaults: square side, marker side as a fraction of it, dictionary.
BOARD_SQUARE_MM, BOARD_MARKER_RATIO, BOARD_DICT = 25.0, 0.75, "DICT_5X5_100"

INSTRUCTIONS = "Print at 100 % / actual size (no 'fit to page'), colour management off, best quality, matte paper."


def layout_path_for(pdf_path: str | Path) -> Path:
    """The layout JSON written beside a PDF: ``patch.pdf`` -> ``patch.layout.json``."""
    p = Path(pdf_path)
    return p.with_name(p.stem + ".layout.json")


def check_pdf_path(out: str | Path) -> Path:
    p = Path(out)
    if p.suffix.lower() != ".pdf":
        raise ConfigError(f"--out must name a .pdf file, got {p}")
    if p.exists() and p.is_dir():
        raise ConfigError(f"--out {p} is a directory")
    return p


def paper_size(paper: str) -> tuple[float, float]:
    key = paper.strip().lower()
    if key not in PAPERS:
        raise ConfigError(f"unknown paper {paper!r}; choose one of {', '.join(PAPERS)}")
    return PAPERS[key]


def chart_marker_ids(dictionary: str = DEFAULT_ARUCO_DICT) -> tuple[int, int, int, int]:
    """Marker ids of a colour chart (TL, TR, BR, BL): the last four of the dictionary,
    so they never collide with patch copies (which count up from 0)."""
    n = get_dictionary(dictionary).bytesList.shape[0]
    return n - 4, n - 3, n - 2, n - 1


def max_copies(dictionary: str = DEFAULT_ARUCO_DICT) -> int:
    """How many patch copies have their own marker ids besides a chart's."""
    return (get_dictionary(dictionary).bytesList.shape[0] - 4) // MARKERS_PER_COPY


@dataclass(frozen=True)
class PrintResult:
    """A PDF and its layout, not yet written."""

    pdf: bytes
    layout: Layout

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """Write ``out`` (PDF) and its layout JSON beside it, each atomically."""
        pdf_path = check_pdf_path(out)
        lay_path = layout_path_for(pdf_path)
        atomic_write_bytes(pdf_path, self.pdf)
        self.layout.save(lay_path)
        return pdf_path, lay_path


@dataclass
class _Page:
    """Page geometry: usable box below the header."""

    paper: str
    size: tuple[float, float]
    x0: float = field(init=False)
    y0: float = field(init=False)
    x1: float = field(init=False)
    y1: float = field(init=False)

    def __post_init__(self) -> None:
        self.x0, self.y0 = PAGE_MARGIN_MM, PAGE_MARGIN_MM + HEADER_MM
        self.x1, self.y1 = self.size[0] - PAGE_MARGIN_MM, self.size[1] - PAGE_MARGIN_MM

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


def _header(c: MMCanvas, title: str) -> None:
    x, y = PAGE_MARGIN_MM, PAGE_MARGIN_MM
    c.text(x, y + 3.0, title, size_pt=8, font="Helvetica-Bold")
    c.text(x, y + 6.5, INSTRUCTIONS, size_pt=6)
    c.scale_bar(x, y + 10.5, SCALE_BAR_MM)
    c.text(x + SCALE_BAR_MM + 2, y + 11.2, f"scale check: this bar is {SCALE_BAR_MM:.0f} mm", size_pt=6)


def _square_marker(mid: int, x: float, y: float, side: float, copy: int) -> MarkerSpec:
    return MarkerSpec(id=int(mid), corners_mm=[(x, y), (x + side, y), (x + side, y + side), (x, y + side)], copy=copy)


def _chart_block(
    x: float,
    y: float,
    w: float,
    items: list[tuple[str, tuple[int, int, int]]],
    *,
    swatch: float,
    gap: float,
    marker: float,
    ids: tuple[int, int, int, int],
) -> tuple[list[SwatchSpec], list[MarkerSpec], float]:
    """Swatches in a grid between a column of markers on each side; returns swatches,
    the four corner markers and the block height."""
    inner_x0 = x + marker + gap
    inner_w = w - 2 * (marker + gap)
    cols = int((inner_w + gap) // (swatch + gap))
    if cols < 1:
        raise ConfigError(f"a colour chart needs at least {2 * (marker + gap) + swatch:.0f} mm of width")
    rows = -(-len(items) // cols)
    grid_w = cols * (swatch + gap) - gap
    ox = inner_x0 + (inner_w - grid_w) / 2
    height = max(rows * (swatch + gap) - gap, 2 * marker + gap)
    swatches = [
        SwatchSpec(
            name=name,
            rect_mm=(ox + (k % cols) * (swatch + gap), y + (k // cols) * (swatch + gap), swatch, swatch),
            srgb=tuple(int(v) for v in rgb),
        )
        for k, (name, rgb) in enumerate(items)
    ]
    tl, tr, br, bl = ids
    markers = [
        _square_marker(tl, x, y, marker, SHEET_MARKER_COPY),
        _square_marker(tr, x + w - marker, y, marker, SHEET_MARKER_COPY),
        _square_marker(br, x + w - marker, y + height - marker, marker, SHEET_MARKER_COPY),
        _square_marker(bl, x, y + height - marker, marker, SHEET_MARKER_COPY),
    ]
    return swatches, markers, height


def _strip_count(width: float) -> int:
    inner = width - 2 * (STRIP_SWATCH_MM + STRIP_GAP_MM)
    return int((inner + STRIP_GAP_MM) // (STRIP_SWATCH_MM + STRIP_GAP_MM)) * STRIP_ROWS


def _fit_caption(lines: list[str], width: float) -> tuple[list[str], float]:
    """Shrink the caption font (down to CAPTION_MIN_PT), then shorten lines, to fit ``width`` mm."""
    pt = CAPTION_PT
    w_mm = lambda s, p: stringWidth(s, "Helvetica", p) * 25.4 / 72  # noqa: E731
    while pt > CAPTION_MIN_PT and max(w_mm(s, pt) for s in lines) > width:
        pt -= 0.25
    out = []
    for s in lines:
        while w_mm(s, pt) > width and len(s) > 4:
            s = s[:-2] + "…"
        out.append(s)
    return out, pt


# --------------------------------------------------------------------------------------
# patch sheets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchSource:
    """A patch to print: pixels and what it is."""

    image: np.ndarray  # (h, w, 3) uint8 RGB
    path: str
    run_id: str
    target_class: str | None = None
    seed: int | None = None
    sha256: str = ""


def load_patch_source(src: str | Path) -> PatchSource:
    """Read a patch: an optimiser run folder (``patch.png`` + ``run.json``) or an image file.

    Raises:
        ConfigError: the path is missing, or a run folder has no ``patch.png``.
        DataError: the image cannot be decoded.
    """
    import warnings

    from PIL import Image

    from patchlab.data import pil_to_array
    from patchlab.errors import DataError

    p = Path(src)
    run: RunRecord | None = None
    if p.is_dir():
        png = p / "patch.png"
        if not png.is_file():
            raise ConfigError(f"{p} is a folder without patch.png: pass an optimiser run folder or a patch image")
        if (p / RUN_JSON).is_file():
            run = load_run(p, strict=False)  # the caption shows what the record holds
        else:
            warnings.warn(f"{p} has no run.json: the caption will not name the target class", stacklevel=2)
        run_id = (run and run.run_id) or p.resolve().name
    elif p.is_file():
        png, run_id = p, p.stem
        if p.suffix.lower() in (".jpg", ".jpeg"):
            warnings.warn(
                f"{p} is a JPEG: its compression artefacts will be printed; print the lossless patch.png", stacklevel=2
            )
    else:
        raise ConfigError(f"patch not found: {p} (pass an optimiser run folder or a patch image)")
    data = png.read_bytes()
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = pil_to_array(im)
    except Exception as exc:  # PIL raises many types for undecodable files
        raise DataError(f"cannot read patch image {png}: {exc}") from exc
    img = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    return PatchSource(
        image=img,
        path=str(png.resolve()),
        run_id=run_id,
        target_class=None if run is None else run.target_class,
        seed=None if run is None else run.seed,
        sha256=hashlib.sha256(data).hexdigest(),
    )


@dataclass(frozen=True)
class _Cutout:
    """What one copy's cut-out holds, relative to its cut corner (mm)."""

    size: tuple[float, float]
    patch_offset: tuple[float, float]
    markers: list[tuple[int, np.ndarray]]  # (id, (4, 2) corners)
    carrier: CarrierGeometry | None = None


def _cutouts(
    w_px: int,
    h_px: int,
    mm_px: float,
    copies: int,
    *,
    markers: bool,
    marker_ratio: float,
    dictionary: str,
    carrier: str | None,
    max_distance_m: float | None,
    focal_px: float | None,
) -> list[_Cutout]:
    out = []
    for c in range(copies):
        if carrier is not None:
            import warnings

            with warnings.catch_warnings():
                if c > 0:  # one warning per sheet
                    warnings.simplefilter("ignore")
                g = carrier_geometry(
                    carrier,
                    (w_px * mm_px, h_px * mm_px),
                    max_distance_m=max_distance_m,
                    focal_px=focal_px,
                    copy=c,
                    dictionary=dictionary,
                )
            x0, y0, _, _ = g.patch_box
            out.append(_Cutout(g.card_mm, (x0, y0), list(zip(g.marker_ids, g.marker_corners())), g))
            continue
        if not markers:
            out.append(_Cutout((w_px * mm_px, h_px * mm_px), (0.0, 0.0), []))
            continue
        fg = frame_geometry((w_px, h_px), marker_ratio=marker_ratio, copy=c, dictionary=dictionary)
        b = fg.band_px * mm_px
        out.append(
            _Cutout(
                ((w_px + 2 * fg.band_px) * mm_px, (h_px + 2 * fg.band_px) * mm_px),
                (b, b),
                [(mid, corners * mm_px) for mid, corners in zip(fg.marker_ids, fg.marker_corners())],
            )
        )
    return out


def make_patch_pdf(
    source: PatchSource,
    *,
    size_mm: float,
    paper: str = "a4",
    copies: int = 1,
    markers: bool = True,
    chart: bool = False,
    marker_ratio: float = FRAME_MARKER_RATIO,
    dictionary: str = DEFAULT_ARUCO_DICT,
    date: str | None = None,
    carrier: str | None = None,
    max_distance_m: float | None = None,
    focal_px: float | None = None,
) -> PrintResult:
    """Lay out ``copies`` copies of a patch at ``size_mm`` wide and draw the PDF.

    Each copy is the patch (exact cells, ``size_mm`` wide, height by aspect
    ratio) inside a thin marker frame (see :func:`patchlab.markers.frame_geometry`:
    the frame is ``band_px`` patch pixels wide, so it scales with the patch), with
    crop marks on the cut line and a caption below. Copies tile row by row.

    With ``carrier`` (``A6``, ``A5`` or ``CARD``) each copy is instead a rigid card of
    that size with the patch in the middle and four large corner markers sized for
    ``max_distance_m`` with a camera of focal length ``focal_px``
    (:func:`patchlab.markers.carrier_geometry`); the layout's ``meta["carrier"]``
    records the card, the marker side and the distance it reaches.

    Raises:
        ConfigError: the patch (with its frame) or the copies do not fit the paper,
            or too many copies for distinct marker ids.
    """
    page = _Page(paper.lower(), paper_size(paper))
    dictionary = dictionary_name(dictionary)
    img = source.image
    h_px, w_px = img.shape[:2]
    if size_mm <= 0:
        raise ConfigError(f"--size-mm must be > 0, got {size_mm}")
    if copies < 1:
        raise ConfigError(f"--copies must be >= 1, got {copies}")
    if markers and copies > max_copies(dictionary):
        raise ConfigError(
            f"{copies} copies need {4 * copies} marker ids; {dictionary} has room for "
            f"{max_copies(dictionary)} copies besides a chart"
        )
    mm_px = size_mm / w_px
    markers = markers or carrier is not None
    cutouts = _cutouts(
        w_px,
        h_px,
        mm_px,
        copies,
        markers=markers,
        marker_ratio=marker_ratio,
        dictionary=dictionary,
        carrier=carrier,
        max_distance_m=max_distance_m,
        focal_px=focal_px,
    )
    geos = [
        frame_geometry((w_px, h_px), marker_ratio=marker_ratio, copy=0, dictionary=dictionary)
        if markers and carrier is None
        else None
    ]
    band_px = geos[0].band_px if geos[0] is not None else 0
    cut_w, cut_h = cutouts[0].size
    tile_w = cut_w + 2 * TILE_MARGIN_MM
    tile_h = cut_h + 2 * TILE_MARGIN_MM + CAPTION_MM
    strip_h = STRIP_ROWS * (STRIP_SWATCH_MM + STRIP_GAP_MM) - STRIP_GAP_MM
    avail_h = page.height - ((strip_h + 2 * TILE_SPACING_MM + CAPTION_MM) if chart else 0.0)
    cols = int((page.width + TILE_SPACING_MM) // (tile_w + TILE_SPACING_MM))
    rows = int((avail_h + TILE_SPACING_MM) // (tile_h + TILE_SPACING_MM))
    if (cols < 1 or rows < 1) and carrier is not None:
        raise ConfigError(
            f"a {cutouts[0].carrier.name} carrier ({cut_w:g} x {cut_h:g} mm) does not fit on "
            f"{page.paper.upper()} ({page.width:.0f} x {avail_h:.0f} mm printable): choose a larger "
            "--paper" + (" or --no-chart" if chart else "")
        )
    if cols < 1 or rows < 1:
        fit = min(
            (page.width - 2 * TILE_MARGIN_MM) * w_px / (w_px + 2 * band_px),
            (avail_h - 2 * TILE_MARGIN_MM - CAPTION_MM) * w_px / (h_px + 2 * band_px),
        )
        frame = " with its marker frame" if markers else ""
        raise ConfigError(
            f"a {size_mm:g} mm patch does not fit on {page.paper.upper()}: its cut-out{frame} is "
            f"{cut_w:.1f} x {cut_h:.1f} mm, the printable area is {page.width:.0f} x {avail_h:.0f} mm; "
            f"the largest size that fits is {max(np.floor(fit), 0):.0f} mm (or choose a larger --paper"
            + (", --no-chart" if chart else "")
            + ")"
        )
    if copies > cols * rows:
        raise ConfigError(
            f"{copies} copies of a {size_mm:g} mm patch do not fit on {page.paper.upper()} "
            f"(at most {cols * rows} do): lower --copies or --size-mm"
        )
    used_cols = min(cols, copies)
    used_rows = -(-copies // used_cols)
    grid_w = used_cols * (tile_w + TILE_SPACING_MM) - TILE_SPACING_MM
    gx = page.x0 + (page.width - grid_w) / 2
    date = date or _dt.date.today().isoformat()

    layout = Layout(kind="patch", page_mm=page.size, aruco_dict=dictionary)
    captions: list[tuple[float, float, list[str], float]] = []
    cuts = []
    for c in range(copies):
        r, k = divmod(c, used_cols)
        tx, ty = gx + k * (tile_w + TILE_SPACING_MM), page.y0 + r * (tile_h + TILE_SPACING_MM)
        cx, cy = tx + TILE_MARGIN_MM, ty + TILE_MARGIN_MM  # cut rectangle's corner
        co = cutouts[c]
        px, py = cx + co.patch_offset[0], cy + co.patch_offset[1]  # patch corner
        layout.patches.append(
            PatchSpec(x_mm=px, y_mm=py, width_mm=w_px * mm_px, height_mm=h_px * mm_px, pixels=(w_px, h_px), copy=c)
        )
        for mid, corners in co.markers:
            layout.markers.append(
                MarkerSpec(id=int(mid), corners_mm=[(cx + u, cy + v) for u, v in corners.tolist()], copy=c)
            )
        cuts.append({"copy": c, "cut_rect_mm": [cx, cy, cut_w, cut_h], "marker_ids": [int(m) for m, _ in co.markers]})
        target = f" · target {source.target_class}" if source.target_class else ""
        lines = [
            f"patchlab · run {source.run_id}{target}",
            f"{size_mm:g} mm ({w_px}x{h_px} px) · copy {c + 1}/{copies} · {date}",
        ]
        lines, pt = _fit_caption(lines, tile_w)
        captions.append((tx + tile_w / 2, cy + cut_h + TILE_MARGIN_MM + 2.3, lines, pt))

    strip_ids: list[int] = []
    if chart:
        sy = page.y0 + used_rows * (tile_h + TILE_SPACING_MM) + TILE_SPACING_MM
        sy = max(sy, page.y0)
        ids = chart_marker_ids(dictionary)
        sw, mk, _ = _chart_block(
            page.x0,
            sy,
            page.width,
            strip_swatches(_strip_count(page.width)),
            swatch=STRIP_SWATCH_MM,
            gap=STRIP_GAP_MM,
            marker=STRIP_SWATCH_MM,
            ids=ids,
        )
        layout.swatches += sw
        layout.markers += mk
        strip_ids = list(ids)
        strip_caption_y = sy + strip_h + 3.5

    layout.meta = {
        "created_by": "patchlab print patch",
        "date": date,
        "paper": page.paper,
        "source": source.path,
        "source_sha256": source.sha256,
        "run_id": source.run_id,
        "target_class": source.target_class,
        "seed": source.seed,
        "size_mm": size_mm,
        "patch_px": [w_px, h_px],
        "mm_per_px": mm_px,
        "markers": markers,
        "marker_ratio": marker_ratio if markers else None,
        "frame": (
            {
                "band_px": band_px,
                "band_mm": band_px * mm_px,
                "marker_mm": geos[0].marker_px * mm_px,
                "quiet_mm": geos[0].quiet_px * mm_px,
            }
            if geos[0] is not None
            else None
        ),
        "carrier": None if carrier is None else cutouts[0].carrier.to_dict(),
        "copies": cuts,
        "chart_marker_ids": strip_ids,
        "versions": versions(PRINT_VERSION_MODULES),
    }

    cnv = MMCanvas(page.size, title=f"patchlab patch {source.run_id}", subject=f"{size_mm:g} mm adversarial patch")
    _header(
        cnv,
        f"patchlab patch · run {source.run_id}"
        + (f" · target {source.target_class}" if source.target_class else "")
        + f" · {size_mm:g} mm · {copies} cop{'y' if copies == 1 else 'ies'} · {date}",
    )
    cnv.layout(layout, {c: img for c in range(copies)})
    for cut in cuts:
        cnv.cut_marks(*cut["cut_rect_mm"])
    for x, y, lines, pt in captions:
        for i, s in enumerate(lines):
            cnv.text(x, y + i * pt * 0.42, s, size_pt=pt, anchor="centre")
    if chart:
        cnv.text(
            page.x0,
            strip_caption_y,
            "colour chart: photograph it beside the patch under the same light for `patchlab calib color`",
            size_pt=6,
        )
    return PrintResult(pdf=cnv.finish(), layout=layout)


# --------------------------------------------------------------------------------------
# colour chart
# --------------------------------------------------------------------------------------


def make_chart_pdf(
    *,
    paper: str = "a4",
    n_swatches: int = 150,
    seed: int = 0,
    swatch_mm: float = CHART_SWATCH_MM,
    dictionary: str = DEFAULT_ARUCO_DICT,
    date: str | None = None,
) -> PrintResult:
    """A colour chart page: grey ramp, saturated and skin-like swatches and an RGB-cube
    fill (see :func:`patchlab.print.swatches.chart_swatches`), four corner markers."""
    page = _Page(paper.lower(), paper_size(paper))
    if swatch_mm < 3:
        raise ConfigError(f"--swatch-mm must be >= 3 so a camera can sample each swatch, got {swatch_mm}")
    if n_swatches < 8:
        raise ConfigError(f"a chart needs at least 8 swatches to fit and score a colour transform, got {n_swatches}")
    gap = max(CHART_GAP_MM * swatch_mm / CHART_SWATCH_MM, 1.5)
    items = chart_swatches(n_swatches, seed=seed)
    ids = chart_marker_ids(dictionary)
    swatches, mk, height = _chart_block(
        page.x0, page.y0, page.width, items, swatch=swatch_mm, gap=gap, marker=CHART_MARKER_MM, ids=ids
    )
    if height > page.height - CAPTION_MM:
        raise ConfigError(
            f"{n_swatches} swatches of {swatch_mm:g} mm do not fit on {page.paper.upper()}: "
            f"lower --swatches or --swatch-mm, or use a larger --paper"
        )
    date = date or _dt.date.today().isoformat()
    layout = Layout(
        kind="chart",
        page_mm=page.size,
        aruco_dict=dictionary,
        markers=mk,
        swatches=swatches,
        meta={
            "created_by": "patchlab print chart",
            "date": date,
            "paper": page.paper,
            "seed": seed,
            "n_swatches": n_swatches,
            "swatch_mm": swatch_mm,
            "gap_mm": gap,
            "chart_marker_ids": list(ids),
            "versions": versions(PRINT_VERSION_MODULES),
        },
    )
    cnv = MMCanvas(page.size, title="patchlab colour chart", subject="printer-to-camera colour calibration")
    _header(
        cnv,
        f"patchlab colour chart · {n_swatches} swatches · seed {seed} · {date} · "
        "print with the same printer, paper and settings as the patch",
    )
    cnv.layout(layout)
    cnv.text(
        page.x0,
        page.y0 + height + 5,
        "photograph the whole chart, flat, evenly lit, filling the frame, then "
        "`patchlab calib color --photo PHOTO --chart THIS.layout.json`",
        size_pt=6,
    )
    return PrintResult(pdf=cnv.finish(), layout=layout)


# --------------------------------------------------------------------------------------
# ChArUco board
# --------------------------------------------------------------------------------------


def black_squares(board: "cv2.aruco.CharucoBoard") -> np.ndarray:
    """``(rows, cols)`` bool: which chessboard squares OpenCV draws black (read off its own render)."""
    sx, sy = board.getChessboardSize()
    cell = 40  # px per square: the white margin around a marker is several px wide
    img = board.generateImage((sx * cell, sy * cell), marginSize=0, borderBits=1)
    # a square's corner pixel is black for black squares and white (marker margin) for white ones
    return img[1::cell, 1::cell][:sy, :sx] < 128


def make_board_pdf(
    *,
    paper: str = "a4",
    squares: tuple[int, int] | None = None,
    square_mm: float = BOARD_SQUARE_MM,
    marker_ratio: float = BOARD_MARKER_RATIO,
    dictionary: str = BOARD_DICT,
    date: str | None = None,
) -> PrintResult:
    """A ChArUco board for camera calibration, as big as the paper allows by default."""
    page = _Page(paper.lower(), paper_size(paper))
    if square_mm <= 0 or not 0.3 <= marker_ratio <= 0.9:
        raise ConfigError(f"--square-mm must be > 0 and marker ratio in [0.3, 0.9], got {square_mm}, {marker_ratio}")
    if squares is None:
        squares = (int(page.width // square_mm), int((page.height - CAPTION_MM) // square_mm))
    sx, sy = squares
    if sx < 3 or sy < 3:
        raise ConfigError(
            f"a ChArUco board needs at least 3x3 squares; {square_mm:g} mm squares give {sx}x{sy} on "
            f"{page.paper.upper()}: lower --square-mm"
        )
    if sx * square_mm > page.width or sy * square_mm > page.height - CAPTION_MM:
        raise ConfigError(
            f"a {sx}x{sy} board of {square_mm:g} mm squares ({sx * square_mm:g} x {sy * square_mm:g} mm) "
            f"does not fit on {page.paper.upper()} ({page.width:.0f} x {page.height - CAPTION_MM:.0f} mm "
            f"printable)"
        )
    marker_mm = round(square_mm * marker_ratio, 3)
    n_markers = (sx * sy) // 2
    n_dict = get_dictionary(dictionary).bytesList.shape[0]
    if n_markers > n_dict:
        raise ConfigError(
            f"a {sx}x{sy} board needs {n_markers} markers, {dictionary} has {n_dict}: choose a larger "
            "dictionary or fewer squares"
        )
    ox = page.x0 + (page.width - sx * square_mm) / 2
    oy = page.y0
    spec = {
        "squares": [sx, sy],
        "square_mm": square_mm,
        "marker_mm": marker_mm,
        "dictionary": dictionary,
        "legacy_pattern": False,
        "origin_mm": [ox, oy],
    }
    board = charuco_board(spec)
    markers = []
    for mid, pts in zip(board.getIds().ravel().tolist(), board.getObjPoints()):
        pts = np.asarray(pts, np.float64).reshape(4, 3)[:, :2]
        markers.append(
            MarkerSpec(id=int(mid), corners_mm=[(ox + u, oy + v) for u, v in pts.tolist()], copy=SHEET_MARKER_COPY)
        )
    date = date or _dt.date.today().isoformat()
    layout = Layout(
        kind="board",
        page_mm=page.size,
        aruco_dict=dictionary,
        markers=markers,
        board=spec,
        meta={
            "created_by": "patchlab print board",
            "date": date,
            "paper": page.paper,
            "versions": versions(PRINT_VERSION_MODULES),
        },
    )
    cnv = MMCanvas(page.size, title="patchlab ChArUco board", subject="camera calibration")
    _header(
        cnv,
        f"patchlab ChArUco board · {sx}x{sy} squares of {square_mm:g} mm · markers {marker_mm:g} mm "
        f"{dictionary} · {date}",
    )
    blk = black_squares(board)
    cnv.rects(
        [
            (ox + j * square_mm, oy + i * square_mm, square_mm, square_mm)
            for i in range(sy)
            for j in range(sx)
            if blk[i, j]
        ]
    )
    cnv.layout(layout)
    cnv.text(
        page.x0,
        oy + sy * square_mm + 4.5,
        "mount it flat and rigid; film it from many angles and distances, "
        "then `patchlab calib camera --images DIR --board THIS.layout.json`",
        size_pt=6,
    )
    return PrintResult(pdf=cnv.finish(), layout=layout)
