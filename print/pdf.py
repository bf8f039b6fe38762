"""A reportlab canvas in millimetres with the layout's axes (origin top-left, y down).

Everything is drawn as vector rectangles in DeviceRGB with no ICC profile, so a
PDF renderer or printer driver has nothing to interpolate or colour-convert:
patch pixels become exact cells of their sRGB value, markers become exact black
and white cells.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from reportlab.lib.units import mm
from reportlab.pdfgen import canvas as rl_canvas

from patchlab.layout import Layout
from patchlab.markers import marker_bits

RGB = tuple[int, int, int]
BLACK: RGB = (0, 0, 0)
WHITE: RGB = (255, 255, 255)
#: Line width of cut marks (mm) and their length and gap from the cut corner.
CUT_MARK_WIDTH_MM, CUT_MARK_LEN_MM, CUT_MARK_GAP_MM = 0.15, 4.0, 1.0
#: Cell overlap (as a fraction of a cell) when painting patch cells: each cell is
#: drawn a little into its right and lower neighbours, which are painted after it,
#: so an anti-aliasing renderer never shows paper through the seams.
_CELL_OVERLAP = 0.25


class MMCanvas:
    """reportlab canvas addressed in page millimetres, origin top-left, y down."""

    def __init__(self, page_mm: tuple[float, float], *, title: str = "patchlab sheet", subject: str = ""):
        self.page_mm = page_mm
        self._buf = io.BytesIO()
        # invariant: no timestamps or random ids, so equal inputs give equal bytes.
        self.c = rl_canvas.Canvas(
            self._buf, pagesize=(page_mm[0] * mm, page_mm[1] * mm), invariant=1, pageCompression=1
        )
        self.c.setTitle(title)
        self.c.setAuthor("patchlab")
        self.c.setCreator("patchlab print")
        if subject:
            self.c.setSubject(subject)

    def _y(self, y_mm: float) -> float:
        return (self.page_mm[1] - y_mm) * mm

    def fill(self, rgb: Sequence[int]) -> None:
        self.c.setFillColorRGB(*(int(v) / 255.0 for v in rgb))

    def rect(self, x: float, y: float, w: float, h: float, rgb: Sequence[int] = BLACK) -> None:
        """Filled rectangle with top-left corner ``(x, y)`` mm."""
        self.fill(rgb)
        self.c.rect(x * mm, self._y(y + h), w * mm, h * mm, stroke=0, fill=1)

    def rects(self, boxes: Sequence[tuple[float, float, float, float]], rgb: Sequence[int] = BLACK) -> None:
        """Several rectangles filled as ONE path (their union: no seams between them)."""
        if not boxes:
            return
        self.fill(rgb)
        p = self.c.beginPath()
        for x, y, w, h in boxes:
            p.rect(x * mm, self._y(y + h), w * mm, h * mm)
        self.c.drawPath(p, stroke=0, fill=1)

    def image_cells(self, img: np.ndarray, x: float, y: float, w: float, h: float) -> None:
        """Draw an ``(H, W, 3)`` uint8 image as exact cells filling the rectangle.

        Runs of equal colour along a row are merged; cells overlap their later
        neighbours by ``_CELL_OVERLAP`` so seams never show paper. The cells are
        written straight into the content stream (``rg``/``re``/``f`` operators,
        colours with 6 decimals so every 8-bit value survives exactly).
        """
        H, W = img.shape[:2]
        cw, ch = w / W * mm, h / H * mm
        x0, top = x * mm, self._y(y)
        ops = ["q"]
        for i in range(H):
            row = img[i]
            change = np.flatnonzero(np.any(row[1:] != row[:-1], axis=1)) + 1
            starts = np.concatenate([[0], change])
            ends = np.concatenate([change, [W]])
            ov_y = _CELL_OVERLAP * ch if i < H - 1 else 0.0
            y_low = top - (i + 1) * ch - ov_y  # PDF y of the cell's lower edge (y up)
            for j0, j1 in zip(starts.tolist(), ends.tolist()):
                ov_x = _CELL_OVERLAP * cw if j1 < W else 0.0
                r, g, b = (int(v) for v in row[j0])
                ops.append(
                    f"{r / 255:.6f} {g / 255:.6f} {b / 255:.6f} rg "
                    f"{x0 + j0 * cw:.4f} {y_low:.4f} {(j1 - j0) * cw + ov_x:.4f} {ch + ov_y:.4f} re f"
                )
        ops.append("Q")
        self.c.addLiteral("\n".join(ops))

    def marker(self, marker_id: int, corners_mm: Sequence[Sequence[float]], dictionary: str) -> None:
        """An axis-aligned ArUco marker given its TL, TR, BR, BL corners (mm)."""
        (x0, y0), (x1, _), _, (_, y3) = corners_mm
        side_x, side_y = x1 - x0, y3 - y0
        bits = marker_bits(marker_id, dictionary)
        n = bits.shape[0]
        self.rect(x0, y0, side_x, side_y, BLACK)
        white = [
            (x0 + j * side_x / n, y0 + i * side_y / n, side_x / n, side_y / n)
            for i in range(n)
            for j in range(n)
            if bits[i, j]
        ]
        self.rects(white, WHITE)

    def cut_marks(self, x: float, y: float, w: float, h: float) -> None:
        """Printer's crop marks just outside the four corners of a cut rectangle."""
        self.c.setStrokeColorRGB(0, 0, 0)
        self.c.setLineWidth(CUT_MARK_WIDTH_MM * mm)
        g, L = CUT_MARK_GAP_MM, CUT_MARK_LEN_MM
        for cx, cy, sx, sy in ((x, y, -1, -1), (x + w, y, 1, -1), (x + w, y + h, 1, 1), (x, y + h, -1, 1)):
            self.c.line(cx * mm, self._y(cy + sy * g), cx * mm, self._y(cy + sy * (g + L)))  # along the vertical edge
            self.c.line((cx + sx * g) * mm, self._y(cy), (cx + sx * (g + L)) * mm, self._y(cy))

    def text(
        self, x: float, y: float, s: str, *, size_pt: float = 7.0, anchor: str = "left", font: str = "Helvetica"
    ) -> None:
        """Text whose baseline starts (or centres, or ends) at ``(x, y)`` mm."""
        self.fill(BLACK)
        self.c.setFont(font, size_pt)
        draw = {"left": self.c.drawString, "centre": self.c.drawCentredString, "right": self.c.drawRightString}[anchor]
        draw(x * mm, self._y(y), s)

    def scale_bar(self, x: float, y: float, length_mm: float) -> None:
        """A ruler of ``length_mm`` with 10 mm ticks, to check the print scale by hand."""
        self.rect(x, y, length_mm, 0.5, BLACK)
        ticks = [(x + t - 0.15, y - 1.5, 0.3, 2.0) for t in np.arange(0, length_mm + 1e-9, 10.0)]
        self.rects(ticks, BLACK)

    def layout(self, layout: Layout, patches: dict[int, np.ndarray] | None = None) -> None:
        """Draw what a layout describes: swatches, patches (images by copy) and markers."""
        for s in layout.swatches:
            self.rect(*s.rect_mm, s.srgb)
        for p in layout.patches:
            img = (patches or {}).get(p.copy)
            if img is not None:
                self.image_cells(img, p.x_mm, p.y_mm, p.width_mm, p.height_mm)
        for m in layout.markers:
            self.marker(m.id, m.corners_mm, layout.aruco_dict)

    def finish(self) -> bytes:
        self.c.showPage()
        self.c.save()
        return self._buf.getvalue()
