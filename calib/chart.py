"""Find a printed colour chart in a photo and read its swatches.

The chart's markers (layout markers with ``copy == -1``) give a homography from
page millimetres to the photo; each swatch is read as the per-channel median of a
grid of samples over its inner area (so blur at its edges, noise and JPEG blocks
do not move it). Uneven light and lens vignetting are removed with the paper
itself: the white gaps between swatches are sampled, a smooth (quadratic) gain
field is fitted to them in linear light, and each swatch is divided by the gain
at its centre relative to the chart's mean (a flat field).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np

from patchlab.errors import ConfigError, DataError
from patchlab.layout import Layout
from patchlab.markers import detect_markers

#: Layout ``copy`` of markers that belong to no patch: a chart's.
CHART_COPY = -1
#: Fewest chart markers that pin down the chart's perspective.
MIN_CHART_MARKERS = 3
#: Marker-corner reprojection error (px, plus this fraction of the marker side) above
#: which the markers do not match the layout: wrong layout file, or a bent print.
MAX_MARKER_RMS_PX, MAX_MARKER_RMS_FRAC = 2.0, 0.08
#: Swatch core that is sampled (fraction of its side, centred).
SWATCH_CORE = 0.6
#: Paper samples keep this clearance (mm) from swatches and markers.
PAPER_CLEARANCE_MM = 0.6
#: Fewest paper samples for a flat field; residual cut-off (robust sigmas) for outliers.
MIN_PAPER_POINTS, PAPER_OUTLIER_SIGMAS = 12, 3.0


@dataclass(frozen=True)
class ChartReading:
    """What the photo shows of each swatch (colours are sRGB 0-255)."""

    names: list[str]
    intended: np.ndarray  # (N, 3) printed sRGB (the layout's)
    observed: np.ndarray  # (N, 3) photographed sRGB, flat-fielded if flat_field
    raw: np.ndarray  # (N, 3) photographed sRGB before the flat field
    spread: np.ndarray  # (N,) robust std. dev. (0-255) of the samples in each swatch
    markers_found: list[int]
    marker_rms_px: float
    px_per_mm: float
    flat_field: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "markers_found": self.markers_found,
            "marker_rms_px": self.marker_rms_px,
            "px_per_mm": self.px_per_mm,
            "flat_field": self.flat_field,
        }


def chart_markers(layout: Layout) -> dict[int, np.ndarray]:
    """The chart's marker corners (mm) by id."""
    return {m.id: np.asarray(m.corners_mm, np.float64) for m in layout.markers if m.copy == CHART_COPY}


def locate_chart(
    image_rgb: np.ndarray, layout: Layout, source: str = "photo"
) -> tuple[np.ndarray, list[int], float, float]:
    """Homography page-mm -> photo pixels (edge coordinates) from the chart's markers.

    Returns:
        ``(H, ids found, marker RMS reprojection error px, photo px per mm)``.

    Raises:
        ConfigError: the layout has no swatches or no chart markers.
        DataError: fewer than ``MIN_CHART_MARKERS`` markers found, or they disagree with the layout.
    """
    if not layout.swatches:
        raise ConfigError(
            "the layout has no colour swatches: pass a chart layout (`patchlab print chart`) or a "
            "patch layout printed with --chart"
        )
    marks = chart_markers(layout)
    if not marks:
        raise ConfigError("the layout's chart has no markers (copy -1) to find it by")
    dets = [d for d in detect_markers(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), layout.aruco_dict) if d.id in marks]
    if len(dets) < min(MIN_CHART_MARKERS, len(marks)):
        raise DataError(
            f"no colour chart found in {source}: {len(dets)} of its {len(marks)} markers "
            f"(ids {sorted(marks)}, {layout.aruco_dict}) are visible, {MIN_CHART_MARKERS} are needed; "
            "photograph the whole chart, sharp and well lit"
        )
    src = np.concatenate([marks[d.id] for d in dets])
    dst = np.concatenate([d.corners + 0.5 for d in dets])
    H, _ = cv2.findHomography(src, dst, 0)
    if H is None:
        raise DataError(f"the chart markers in {source} do not give a usable homography")
    proj = cv2.perspectiveTransform(src[None], H)[0]
    rms = float(np.sqrt(np.mean(np.sum((proj - dst) ** 2, axis=1))))
    side = float(np.mean([d.side_px for d in dets]))
    if rms > MAX_MARKER_RMS_PX + MAX_MARKER_RMS_FRAC * side:
        raise DataError(
            f"the chart markers in {source} do not sit where the layout says (RMS {rms:.1f} px): "
            "is this the layout of the printed chart, and is the print flat?"
        )
    mm_side = float(np.mean([np.linalg.norm(marks[d.id][1] - marks[d.id][0]) for d in dets]))
    return H, sorted(d.id for d in dets), rms, side / mm_side


def _sample_points(img: np.ndarray, pts_px: np.ndarray) -> np.ndarray:
    """Bilinear RGB samples (float) at edge-coordinate points ``(N, 2)``."""
    n = pts_px.shape[0]
    cols = 1024  # remap maps must stay under 32767 on each side
    m = np.zeros((-(-n // cols) * cols, 2), np.float32)
    m[:n] = pts_px - 0.5
    m = m.reshape(-1, cols, 2)
    out = cv2.remap(img.astype(np.float32), m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, 3)[:n]


def _to_px(H: np.ndarray, pts_mm: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(pts_mm.reshape(1, -1, 2).astype(np.float64), H)[0]


def _paper_points(layout: Layout, step_mm: float) -> np.ndarray:
    """Page points (mm) on white paper inside the chart's bounding box."""
    rects = [s.rect_mm for s in layout.swatches]
    for c in chart_markers(layout).values():
        x0, y0 = c.min(0)
        x1, y1 = c.max(0)
        rects.append((x0, y0, x1 - x0, y1 - y0))
    r = np.asarray(rects, np.float64)
    bx0, by0 = r[:, 0].min(), r[:, 1].min()
    bx1, by1 = (r[:, 0] + r[:, 2]).max(), (r[:, 1] + r[:, 3]).max()
    xs = np.arange(bx0 + step_mm / 2, bx1, step_mm)
    ys = np.arange(by0 + step_mm / 2, by1, step_mm)
    P = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    c = PAPER_CLEARANCE_MM
    inside = np.zeros(len(P), bool)
    for x, y, w, h in r:
        inside |= (P[:, 0] > x - c) & (P[:, 0] < x + w + c) & (P[:, 1] > y - c) & (P[:, 1] < y + h + c)
    return P[~inside]


def _srgb_to_lin(v: np.ndarray) -> np.ndarray:
    v = np.clip(v / 255.0, 0, 1)
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)


def _lin_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0, 1)
    return 255.0 * np.where(v > 0.0031308, 1.055 * np.power(v, 1 / 2.4) - 0.055, 12.92 * v)


def _quad_design(P: np.ndarray, centre: np.ndarray, scale: float) -> np.ndarray:
    x, y = ((P - centre) / scale).T
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], 1)


def read_chart(
    image_rgb: np.ndarray, layout: Layout, *, flat_field: bool = True, source: str = "photo"
) -> ChartReading:
    """Locate the chart and read every swatch (see the module docstring).

    Args:
        image_rgb: ``(H, W, 3)`` RGB uint8 photo.
        layout: the chart's layout (a chart sheet, or a patch sheet with a chart strip).
        flat_field: correct uneven light with the paper between the swatches.
        source: name of the photo for messages.
    """
    H, ids, rms, ppm = locate_chart(image_rgb, layout, source)
    names, intended, raw, spread, centres = [], [], [], [], []
    for s in layout.swatches:
        x, y, w, h = s.rect_mm
        n = int(np.clip(np.ceil(min(w, h) * SWATCH_CORE * ppm), 4, 40))
        g = (np.arange(n) + 0.5) / n * SWATCH_CORE + (1 - SWATCH_CORE) / 2
        pts = np.stack(np.meshgrid(x + g * w, y + g * h), -1).reshape(-1, 2)
        vals = _sample_points(image_rgb, _to_px(H, pts))
        med = np.median(vals, axis=0)
        names.append(s.name)
        intended.append(s.srgb)
        raw.append(med)
        spread.append(float(1.4826 * np.median(np.abs(vals - med))))
        centres.append((x + w / 2, y + h / 2))
    raw_a = np.asarray(raw)
    observed = raw_a.copy()
    ff: dict = {"used": False}
    if flat_field:
        step = max(0.5, 1.0 / max(ppm, 1e-6), PAPER_CLEARANCE_MM)
        P = _paper_points(layout, step)
        if len(P) >= MIN_PAPER_POINTS:
            paper = _srgb_to_lin(_sample_points(image_rgb, _to_px(H, P)))
            C = np.asarray(centres)
            centre, scale = C.mean(0), max(float(np.ptp(C[:, 0])), float(np.ptp(C[:, 1])), 1.0) / 2
            A = _quad_design(P, centre, scale)
            keep = np.ones(len(P), bool)
            coef = np.zeros((6, 3))
            for _ in range(3):  # robust refits: drop paper points hit by print defects, dust, glare
                coef, *_ = np.linalg.lstsq(A[keep], paper[keep], rcond=None)
                res = np.abs(paper - A @ coef).max(1)
                sig = 1.4826 * np.median(res[keep]) + 1e-6
                keep = res < PAPER_OUTLIER_SIGMAS * sig + 1e-4
            field_at = _quad_design(C, centre, scale) @ coef  # (N, 3) linear gain field at swatch centres
            gain = field_at / field_at.mean(0, keepdims=True)
            if np.all(gain > 0.2):
                observed = _lin_to_srgb(_srgb_to_lin(raw_a) / gain)
                ff = {
                    "used": True,
                    "points": int(keep.sum()),
                    "gain_min": float(gain.min()),
                    "gain_max": float(gain.max()),
                    "paper_srgb": _lin_to_srgb(field_at.mean(0)).tolist(),
                }
            else:
                warnings.warn(
                    "the paper between the swatches is too unevenly lit to flat-field; colours are read "
                    "as they are (retake the photo under even light, or pass --no-flat-field)",
                    stacklevel=2,
                )
        else:
            warnings.warn(
                f"only {len(P)} paper samples between the swatches: no flat field (use --no-flat-field "
                "to silence this)",
                stacklevel=2,
            )
    return ChartReading(
        names=names,
        intended=np.asarray(intended, np.float64),
        observed=observed,
        raw=raw_a,
        spread=np.asarray(spread),
        markers_found=ids,
        marker_rms_px=rms,
        px_per_mm=ppm,
        flat_field=ff,
    )
