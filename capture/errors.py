"""Errors of the capture stage (the class lives in core with the capture-folder format)."""

from __future__ import annotations

from patchlab.captures import CaptureError

__all__ = ["CaptureError"]
