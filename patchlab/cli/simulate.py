"""``patchlab simulate``: print-and-camera simulation (a patch turned into a recorded video)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Simulate printing and filming a patch, for tests and demos without a camera.",
                  no_args_is_help=True)
