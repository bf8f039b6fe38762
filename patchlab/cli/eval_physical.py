"""``patchlab eval`` commands (physical)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the ``eval`` sub-app."""
