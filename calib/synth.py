"""Synthetic photographs of a printed sheet (moved to :mod:`patchlab.synth`, shared with
the capture simulator; this name stays for existing imports)."""

from patchlab.synth import Pose, look_at, photograph, render_plane_view

__all__ = ["Pose", "look_at", "photograph", "render_plane_view"]
