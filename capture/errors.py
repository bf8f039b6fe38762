"""Errors of the capture stage."""

from __future__ import annotations

from patchlab.errors import PatchlabError


class CaptureError(PatchlabError):
    """A frame source cannot be opened or read, or a capture folder cannot be used."""
