"""``patchlab calib``: camera intrinsics and printer-to-camera colour."""

from __future__ import annotations

import typer

app = typer.Typer(help="Measure the world: camera intrinsics from a ChArUco board, printer-to-camera colour "
                       "from a photographed chart.", no_args_is_help=True)
