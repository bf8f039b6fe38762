"""``patchlab report``: HTML/PDF reports of runs and captures."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the ``report`` command to the top-level app."""
