"""``patchlab optimize``: universal targeted patches (optimal-transport feature losses, EOT)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the ``optimize`` command to the top-level app."""
