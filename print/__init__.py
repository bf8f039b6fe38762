"""patchlab.print: turn a patch into paper (exact-size PDFs, cut marks, fiducials, charts).

``make_patch_pdf`` / ``make_chart_pdf`` / ``make_board_pdf`` return a PDF and its
layout (:class:`patchlab.layout.Layout`); ``measure_patch`` measures printed copies
on a scan or a rendered page.
"""

from .sheets import (
    PAPERS,
    PatchSource,
    PrintResult,
    layout_path_for,
    load_patch_source,
    make_board_pdf,
    make_chart_pdf,
    make_patch_pdf,
)
from .verify import PatchMeasurement, measure_patch, render_pdf

__all__ = [
    "PAPERS",
    "PatchSource",
    "PrintResult",
    "layout_path_for",
    "load_patch_source",
    "make_board_pdf",
    "make_chart_pdf",
    "make_patch_pdf",
    "PatchMeasurement",
    "measure_patch",
    "render_pdf",
]
