"""``patchlab world``: the embedded procedural traffic-sign world and its small models."""

from __future__ import annotations

import typer

app = typer.Typer(help="The embedded default: a procedural traffic-sign data set and three small models.",
                  no_args_is_help=True)
