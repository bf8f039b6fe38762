"""``patchlab capture``: score a live camera, a recorded video or an image sequence."""

from __future__ import annotations

import typer

app = typer.Typer(help="Score a live camera, a recorded video or an image sequence, frame by frame.",
                  no_args_is_help=True)
