"""Measure printed patches on a page image: a flatbed scan of the print, or the PDF rendered.

Given the page image, its resolution and the layout, each patch copy is found by
its four markers, then its edges are located *in the image* (profiles across each
edge, sub-pixel crossing of the white-to-ink transition), so the measured size
depends only on the image and its dpi, not on where the layout says the patch is.
The cells are then read off the measured rectangle and compared with the patch
image (PSNR). A scan at known dpi thus tells whether the printer kept the scale
and how far its colours are from the file.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from patchlab.errors import ConfigError, DataError
from patchlab.layout import Layout, PatchSpec
from patchlab.markers import Detection, detect_markers

#: Where along an edge to take profiles (fractions of the edge), and how many.
_EDGE_SPAN, _EDGE_PROFILES = (0.08, 0.92), 41
#: Profile step (px) and the least ink (0-255, inside minus outside) a usable profile needs.
_PROFILE_STEP_PX, _MIN_INK_STEP = 0.25, 40.0
#: Fraction of each patch cell (centred) averaged when reading cells off the image.
_CELL_CORE = 0.5


@dataclass(frozen=True)
class PatchMeasurement:
    """One patch copy measured on a page image (all lengths in mm)."""

    copy: int
    width_mm: float
    height_mm: float
    width_error_mm: float
    height_error_mm: float
    #: Measured patch centre minus where the markers and layout put it.
    offset_mm: float
    #: Mean measured marker side and its error against the layout.
    marker_side_mm: float
    marker_error_mm: float
    #: Cells read off the image against the patch image (None without one; 100 = identical).
    psnr_db: float | None
    markers_found: int

    def to_dict(self) -> dict:
        return asdict(self)


def _ink(rgb: np.ndarray) -> np.ndarray:
    """How far each pixel is from paper white, 0 (white) .. 255 (any full ink)."""
    return 255.0 - rgb.min(axis=2).astype(np.float32)


def _sample(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear samples of a float image at pixel-centre coordinates ``pts (..., 2)``."""
    shp = pts.shape[:-1]
    flat = pts.reshape(-1, 2).astype(np.float32)
    n = flat.shape[0]
    cols = 1024  # remap maps must stay under 32767 on each side
    m = np.zeros((-(-n // cols) * cols, 2), np.float32)
    m[:n] = flat
    m = m.reshape(-1, cols, 2)
    out = cv2.remap(img, m[..., 0], m[..., 1], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, *img.shape[2:])[:n].reshape(*shp, *img.shape[2:])


def _edge_offset(ink: np.ndarray, a: np.ndarray, b: np.ndarray, normal: np.ndarray, reach: float) -> float | None:
    """Median outward offset (px) of the real edge from the predicted edge ``a -> b``.

    ``normal`` points out of the patch; profiles run from ``reach`` px inside to
    ``reach`` px outside, and the edge is where the ink crosses half-way between
    the cell's ink and the paper's.
    """
    s = np.arange(-reach, reach + 1e-9, _PROFILE_STEP_PX)
    t = np.linspace(*_EDGE_SPAN, _EDGE_PROFILES)
    base = a[None] + t[:, None] * (b - a)[None]  # (P, 2) points on the predicted edge
    pts = base[:, None, :] + s[None, :, None] * normal[None, None, :]  # (P, S, 2), edge coords
    prof = _sample(ink, pts - 0.5)  # pixel-centre convention
    inner = np.median(prof[:, s < -reach * 0.5], axis=1)
    outer = np.median(prof[:, s > reach * 0.5], axis=1)
    offs = []
    for p, lo, hi in zip(prof, outer, inner):
        if hi - lo < _MIN_INK_STEP:
            continue  # a cell about as light as the paper: no edge to see here
        above = p >= (hi + lo) / 2
        ks = np.flatnonzero(above[:-1] & ~above[1:])  # ink -> paper transitions going outward
        if ks.size == 0:
            continue
        k = int(ks[np.argmin(np.abs(s[ks]))])
        f = (p[k] - (hi + lo) / 2) / (p[k] - p[k + 1])
        offs.append(s[k] + f * _PROFILE_STEP_PX)
    return float(np.median(offs)) if len(offs) >= 5 else None


def _line_intersection(p1, d1, p2, d2) -> np.ndarray:
    A = np.array([d1, -d2]).T
    t = np.linalg.solve(A, p2 - p1)
    return p1 + t[0] * d1


def measure_patch(
    image: np.ndarray,
    layout: Layout,
    px_per_mm: float,
    copy: int = 0,
    *,
    patch: np.ndarray | None = None,
    detections: list[Detection] | None = None,
) -> PatchMeasurement:
    """Measure one patch copy on an RGB page image of known resolution.

    Args:
        image: ``(H, W, 3)`` RGB uint8 page image (scan or rendered PDF).
        layout: the sheet's layout (kind ``patch``).
        px_per_mm: image resolution (e.g. ``600 / 25.4``).
        copy: which copy.
        patch: the patch image ``(h, w, 3)`` uint8, to score the printed cells (PSNR).
        detections: markers already found in ``image`` (found here otherwise).

    Raises:
        DataError: the copy's markers or edges cannot be found.
    """
    spec: PatchSpec | None = next((p for p in layout.patches if p.copy == copy), None)
    if spec is None:
        raise ConfigError(f"the layout has no patch copy {copy}")
    marks = {m.id: m for m in layout.markers_of(copy)}
    if not marks:
        raise ConfigError(f"patch copy {copy} was printed without markers (--no-markers): nothing to locate it by")
    dets = [
        d
        for d in (
            detections
            if detections is not None
            else detect_markers(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), layout.aruco_dict)
        )
        if d.id in marks
    ]
    if len(dets) < 2:
        raise DataError(
            f"found {len(dets)} of the 4 markers of patch copy {copy} (ids {sorted(marks)}): "
            "is the whole copy in the image and in focus?"
        )
    src = np.concatenate([np.asarray(marks[d.id].corners_mm, np.float64) for d in dets])
    dst = np.concatenate([d.corners + 0.5 for d in dets])  # edge coordinates
    Hm, _ = cv2.findHomography(src, dst, 0)
    if Hm is None:
        raise DataError(f"the markers of patch copy {copy} do not give a usable homography")
    corners = cv2.perspectiveTransform(np.asarray(spec.corners_mm, np.float64)[None], Hm)[0]  # TL TR BR BL
    marker_side = float(np.mean([d.side_px for d in dets])) / px_per_mm
    layout_side = float(np.mean([marks[d.id].size_mm for d in dets]))

    ink = _ink(image)
    quiet_mm = (layout.meta.get("frame") or {}).get("quiet_mm") or 1.0
    reach = max(2.0, 0.7 * quiet_mm * px_per_mm)
    lines = []
    for i in range(4):  # top, right, bottom, left edges, corners in clockwise order
        a, b = corners[i], corners[(i + 1) % 4]
        d = (b - a) / np.linalg.norm(b - a)
        normal = np.array([d[1], -d[0]])  # outward for clockwise corners in a y-down image
        off = _edge_offset(ink, a, b, normal, reach)
        if off is None:
            raise DataError(f"cannot find edge {i} of patch copy {copy}: too little contrast with the paper")
        lines.append((a + off * normal, d))
    meas = np.array([_line_intersection(*lines[(i - 1) % 4], *lines[i]) for i in range(4)])  # TL TR BR BL
    width_px = (np.linalg.norm(meas[1] - meas[0]) + np.linalg.norm(meas[2] - meas[3])) / 2
    height_px = (np.linalg.norm(meas[3] - meas[0]) + np.linalg.norm(meas[2] - meas[1])) / 2
    w_mm, h_mm = width_px / px_per_mm, height_px / px_per_mm
    offset = float(np.linalg.norm(meas.mean(0) - corners.mean(0))) / px_per_mm

    psnr = None
    if patch is not None:
        h, w = patch.shape[:2]
        if (w, h) != tuple(spec.pixels):
            raise ConfigError(f"patch image is {w}x{h} px but the layout printed {spec.pixels[0]}x{spec.pixels[1]}")
        cells = read_cells(image, meas, (w, h))
        psnr = psnr_db(cells, patch)
    return PatchMeasurement(
        copy=copy,
        width_mm=float(w_mm),
        height_mm=float(h_mm),
        width_error_mm=float(w_mm - spec.width_mm),
        height_error_mm=float(h_mm - spec.height_mm),
        offset_mm=offset,
        marker_side_mm=marker_side,
        marker_error_mm=marker_side - layout_side,
        psnr_db=psnr,
        markers_found=len(dets),
    )


def read_cells(
    image: np.ndarray, corners_px: np.ndarray, grid: tuple[int, int], *, core: float = _CELL_CORE, sub: int = 4
) -> np.ndarray:
    """Resample the quadrilateral ``corners_px`` (edge coords, TL TR BR BL) to a ``grid``
    ``(w, h)`` of cells, each the mean of ``sub x sub`` samples over its central ``core``."""
    w, h = grid
    Hc = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]), np.float32(corners_px))
    o = (np.arange(sub) + 0.5) / sub * core + (1 - core) / 2
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    u = (jj[..., None, None] + o[None, None, None, :]).repeat(sub, axis=2)
    v = (ii[..., None, None] + o[None, None, :, None]).repeat(sub, axis=3)
    uv = np.stack([u, v], -1).reshape(-1, 1, 2)
    xy = cv2.perspectiveTransform(uv, Hc).reshape(h, w, sub, sub, 2)
    vals = _sample(image.astype(np.float32), xy - 0.5)
    return vals.mean(axis=(2, 3))


#: PSNR reported for identical images (keeps results finite and JSON-safe).
PSNR_IDENTICAL_DB = 100.0


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) between two 0-255 images, at most ``PSNR_IDENTICAL_DB``."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return PSNR_IDENTICAL_DB if mse == 0 else min(PSNR_IDENTICAL_DB, 10 * math.log10(255.0**2 / mse))


def render_pdf(pdf: str | Path, dpi: float, *, crop_mm: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Render page 1 of a PDF with poppler's ``pdftoppm`` as RGB uint8 (optionally a crop).

    ``crop_mm`` is ``(x, y, w, h)`` on the page; the crop is
    snapped outward to whole pixels and the returned image starts at pixel
    ``floor(x * px_per_mm)``, so page coordinates stay ``mm * px_per_mm - offset``.

    Raises:
        ConfigError: ``pdftoppm`` is not installed (Debian/Ubuntu: poppler-utils).
    """
    exe = shutil.which("pdftoppm")
    if exe is None:
        raise ConfigError("pdftoppm not found: install poppler-utils (apt-get install poppler-utils)")
    args = [exe, "-r", f"{dpi:g}", "-f", "1", "-l", "1", "-singlefile", "-png"]
    if crop_mm is not None:
        ppm = dpi / 25.4
        x0, y0 = math.floor(crop_mm[0] * ppm), math.floor(crop_mm[1] * ppm)
        x1, y1 = math.ceil((crop_mm[0] + crop_mm[2]) * ppm), math.ceil((crop_mm[1] + crop_mm[3]) * ppm)
        args += ["-x", str(x0), "-y", str(y0), "-W", str(x1 - x0), "-H", str(y1 - y0)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "page"
        res = subprocess.run(args + [str(pdf), str(out)], capture_output=True, text=True)
        if res.returncode != 0:
            raise DataError(f"pdftoppm could not render {pdf}: {res.stderr.strip()}")
        img = cv2.imread(str(out) + ".png", cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"pdftoppm produced no image for {pdf}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
