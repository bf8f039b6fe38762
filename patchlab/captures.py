"""The capture folder and the simulated-video sidecars: one home for both formats.

``patchlab capture run --out CAPTURE_DIR`` writes, and ``eval physical`` and
``report`` read (neither imports the capture stage to do so)::

    frames.jsonl   one JSON line per frame, flushed as the capture goes
    summary.json   :class:`CaptureSummary`: config, source, models, tSuc with Wilson
                   95 % intervals, detected / tracked / lost counts, end reason, timing,
                   versions; written atomically at the start and rewritten at the end
    samples/       a few annotated frames (JPEG) spread over the run

A ``frames.jsonl`` line::

    {"index", "timestamp", "name", "brightness", "crop", "crop_box": [x0, y0, x1, y1] | null,
     "markers": [ids], "pose_source": "detected" | "tracked" | "lost",
     "pose": {..., "source", "confidence"} | null,
     "scored": bool, "models": {NAME: {"top5", "p_target", "hit"}} | null,
     "truth": {"object_class", "has_patch"} (only when ground truth is known)}

``scored`` is false (and ``models`` null) for a frame the ``--on-lost skip``
policy did not classify: it still counts as a frame, never as a success.

``patchlab simulate capture --out clip.mp4`` writes beside the video
``clip.truth.jsonl`` (per-frame ground truth), ``clip.sim.json`` (configuration)
and ``clip.camera.json`` (the simulated camera, as ``patchlab calib camera`` writes one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, PatchlabError

log = logging.getLogger(__name__)

FRAMES_JSONL = "frames.jsonl"
SUMMARY_JSON = "summary.json"
SAMPLES_DIR = "samples"

#: Where a frame's pose came from.
DETECTED, TRACKED, LOST = "detected", "tracked", "lost"
POSE_SOURCES = (DETECTED, TRACKED, LOST)


class CaptureError(PatchlabError):
    """A frame source cannot be opened or read, or a capture folder cannot be used."""


@dataclass(frozen=True)
class CaptureSummary:
    """What a capture run measured (``summary.json``).

    ``pose_sources`` counts frames by where their pose came from (``detected``,
    ``tracked``, ``lost``); ``tsuc`` is over every counted frame (a frame the
    ``--on-lost skip`` policy did not score counts as a miss), ``tsuc_scored`` over
    the classified frames only and ``tsuc_with_pose`` over frames with a pose
    (detected or tracked).
    """

    capture_dir: str
    status: str  # running | finished | interrupted | camera lost | truncated | error
    end_reason: str
    frames: int
    frames_with_pose: int
    dropped: int
    skipped: list[str]
    target_class: str
    tsuc: dict[str, dict[str, Any]]  # model -> Rate.to_dict()
    mean_p_target: dict[str, float]
    fps: float
    seconds: float
    timing_ms: dict[str, float]
    source: dict[str, Any]
    models: list[dict[str, Any]]
    config: dict[str, Any]
    layout: str | None
    camera: str | None
    truth: bool
    started: str
    finished: str | None
    error: str | None = None
    command: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    pose_sources: dict[str, int] = field(default_factory=dict)
    frames_scored: int | None = None
    tsuc_scored: dict[str, dict[str, Any]] = field(default_factory=dict)
    tsuc_with_pose: dict[str, dict[str, Any]] = field(default_factory=dict)
    stream: dict[str, Any] = field(default_factory=dict)  # network sources: reconnects, stalls, dropped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "summary.json") -> "CaptureSummary":
        """Read a summary; keys this version does not know are ignored, and the keys
        added since the first version default to empty."""
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as exc:
            raise CaptureError(f"{source} is not a capture summary: {exc}") from exc


def read_jsonl(path: Path, *, what: str, tolerate_last: bool = False) -> list[dict[str, Any]]:
    """One dict per non-empty line; with ``tolerate_last`` a last line cut short is ignored."""
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if tolerate_last and k == len(lines) - 1:
                log.warning("%s: last line is incomplete (the capture was killed while writing); ignoring it", path)
                continue
            raise CaptureError(f"{path}:{k + 1} is not JSON ({what}): {exc}") from exc
    return out


def load_capture(capture_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(summary dict, frames)`` of a capture folder. A last line cut short by a crash
    is ignored (every complete line is a frame); a missing summary gives ``{}``."""
    p = Path(capture_dir)
    fj = p / FRAMES_JSONL
    if not fj.is_file():
        raise CaptureError(f"{p} is not a capture folder (no {FRAMES_JSONL}); make one with `patchlab capture run`")
    summ: dict[str, Any] = {}
    sj = p / SUMMARY_JSON
    if sj.is_file():
        try:
            summ = json.loads(sj.read_text())
        except json.JSONDecodeError as exc:
            raise CaptureError(f"{sj} is not valid JSON: {exc}") from exc
    return summ, read_jsonl(fj, what="a capture frame", tolerate_last=True)


def pose_source(frame: dict[str, Any]) -> str:
    """``detected`` / ``tracked`` / ``lost`` for a frame line (older logs: a pose is a detection)."""
    s = frame.get("pose_source")
    if s in POSE_SOURCES:
        return s
    return DETECTED if frame.get("pose") else LOST


def is_scored(frame: dict[str, Any]) -> bool:
    """Whether the models classified this frame (``--on-lost skip`` leaves lost frames out)."""
    return bool(frame.get("models")) and frame.get("scored", True) is not False


# --------------------------------------------------------------------------------------
# simulated videos: the files beside them
# --------------------------------------------------------------------------------------


def truth_path_for(video: str | Path) -> Path:
    """``clip.mp4`` -> ``clip.truth.jsonl``: per-frame ground truth beside a video."""
    p = Path(video)
    return p.with_name(p.stem + ".truth.jsonl")


def sim_path_for(video: str | Path) -> Path:
    """``clip.mp4`` -> ``clip.sim.json``: the simulator's configuration beside a video."""
    p = Path(video)
    return p.with_name(p.stem + ".sim.json")


def camera_path_for(video: str | Path) -> Path:
    """``clip.mp4`` -> ``clip.camera.json``: the simulated camera, as ``patchlab calib camera`` writes one."""
    p = Path(video)
    return p.with_name(p.stem + ".camera.json")


def read_truth(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``.truth.jsonl`` file (one dict per frame, in frame order)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ground truth not found: {p}")
    try:
        return read_jsonl(p, what="ground truth")
    except CaptureError as exc:
        raise ConfigError(str(exc)) from exc


__all__ = [
    "CaptureError",
    "CaptureSummary",
    "DETECTED",
    "FRAMES_JSONL",
    "LOST",
    "POSE_SOURCES",
    "SAMPLES_DIR",
    "SUMMARY_JSON",
    "TRACKED",
    "camera_path_for",
    "is_scored",
    "load_capture",
    "pose_source",
    "read_jsonl",
    "read_truth",
    "sim_path_for",
    "truth_path_for",
]
