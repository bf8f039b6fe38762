"""Rasterise a printed sheet from its layout: what the page looks like, in pixels.

Used wherever a stage needs the printed sheet as an image without a PDF renderer:
the capture simulator films it, colour-calibration tests photograph it, the
optimiser's marker frame is cut from it. Pixels are sampled nearest-neighbour so a
patch keeps its exact cells, as the PDF draws them.
"""

from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np

from .errors import ConfigError
from .layout import Layout
from .markers import marker_image

PAPER_WHITE = (255, 255, 255)


def mm_to_px(v: float, px_per_mm: float) -> int:
    return int(round(v * px_per_mm))


def render_sheet(
    layout: Layout,
    px_per_mm: float,
    *,
    patches: Mapping[int, np.ndarray] | None = None,
    background: tuple[int, int, int] = PAPER_WHITE,
) -> np.ndarray:
    """Draw the sheet of ``layout`` as an RGB uint8 image.

    Args:
        layout: the sheet.
        px_per_mm: resolution (e.g. ``600 / 25.4`` for 600 dpi).
        patches: patch image per copy index, ``(h, w, 3)`` RGB uint8; copies without
            one are left white.
        background: paper colour.

    Returns:
        ``(H, W, 3)`` RGB uint8, ``H = page height * px_per_mm``. A point at
        ``(x_mm, y_mm)`` on the page is at pixel-centre coordinates
        ``(x_mm * px_per_mm - 0.5, y_mm * px_per_mm - 0.5)``, the convention of
        OpenCV's corner detectors.
    """
    if px_per_mm <= 0:
        raise ConfigError(f"px_per_mm must be > 0, got {px_per_mm}")
    w_px, h_px = mm_to_px(layout.page_mm[0], px_per_mm), mm_to_px(layout.page_mm[1], px_per_mm)
    page = np.empty((h_px, w_px, 3), np.uint8)
    page[:] = background
    for s in layout.swatches:
        x, y, w, h = s.rect_mm
        page[
            mm_to_px(y, px_per_mm) : mm_to_px(y + h, px_per_mm), mm_to_px(x, px_per_mm) : mm_to_px(x + w, px_per_mm)
        ] = s.srgb
    for p in layout.patches:
        img = (patches or {}).get(p.copy)
        if img is None:
            continue
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ConfigError(f"patch image for copy {p.copy} must be (h, w, 3) uint8, got {img.shape} {img.dtype}")
        x0, y0 = mm_to_px(p.x_mm, px_per_mm), mm_to_px(p.y_mm, px_per_mm)
        x1, y1 = mm_to_px(p.x_mm + p.width_mm, px_per_mm), mm_to_px(p.y_mm + p.height_mm, px_per_mm)
        tile = cv2.resize(img, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        if p.shape == "circle":
            mask = np.zeros(tile.shape[:2], np.uint8)
            cv2.ellipse(mask, ((tile.shape[1] / 2, tile.shape[0] / 2), (tile.shape[1], tile.shape[0]), 0), 255, -1)
            region = page[y0:y1, x0:x1]
            region[mask > 0] = tile[mask > 0]
        else:
            page[y0:y1, x0:x1] = tile
    for m in layout.markers:
        c = np.asarray(m.corners_mm, np.float64) * px_per_mm
        side = int(round(np.linalg.norm(c[1] - c[0])))
        if side < 4:
            raise ConfigError(f"marker {m.id} is {side} px at {px_per_mm:.2f} px/mm: raise the resolution")
        mk = cv2.cvtColor(marker_image(m.id, side, layout.aruco_dict), cv2.COLOR_GRAY2RGB)
        src = np.float32([[0, 0], [side, 0], [side, side], [0, side]])
        H = cv2.getPerspectiveTransform(src, c.astype(np.float32))
        warped = cv2.warpPerspective(mk, H, (w_px, h_px), flags=cv2.INTER_NEAREST, borderValue=(0, 0, 0))
        mask = cv2.warpPerspective(np.full((side, side), 255, np.uint8), H, (w_px, h_px), flags=cv2.INTER_NEAREST)
        page[mask > 0] = warped[mask > 0]
    return page
