"""The capture loop: read frames, find the patch, classify, log every frame.

Pipeline (two threads). The reader thread decodes a frame and *prepares* it
(:class:`FramePreparer`): grey image, markers, the patch's pose -- detected in this
frame, tracked from the last ones or lost (:class:`patchlab.capture.track.PatchTracker`)
-- and the classifier crop resized to the models' input. The main thread takes
whatever prepared frames are waiting (up to ``batch_size``), classifies them with
every model in one batch per model (:class:`FrameScorer`), writes one JSON line per
frame and flushes (:class:`_FrameLog`), keeps the running counts (:class:`Tally`),
then draws the HUD / records the video (:class:`_Display`).

The capture folder's files and the ``frames.jsonl`` line are described (and read)
in :mod:`patchlab.captures`. ``hit`` is top-1 == target. ``brightness`` is the mean
grey level of the frame (0-255), the lighting bin's measure. The loop ends at the
end of the stream, after ``max_frames``, when the camera is lost, on Ctrl-C
(SIGINT) or when ``stop`` is set; every frame read before that is in the log and
the summary counts it.

Crops (``crop``): ``full`` is the whole frame squeezed to a square; ``center`` is
the largest centred square; ``roi`` is a square centred on the patch with side
``size_px / sqrt(roi_frac)``, so the patch covers ``roi_frac`` of the classifier
input at any distance (the digital optimiser's patch fraction). A frame where the
patch is lost has no such square; ``on_lost`` says what then happens, and it is
recorded: ``skip`` (default) logs the frame unscored (``"scored": false``), ``center``
scores the centre square (crop ``"center (lost)"``), ``last`` the square of the last
pose (crop ``"roi (last pose)"``; skipped until there is one).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch

from patchlab.captures import (
    DETECTED,
    FRAMES_JSONL,
    LOST,
    POSE_SOURCES,
    SAMPLES_DIR,
    SUMMARY_JSON,
    TRACKED,
    CaptureSummary,
    load_capture,
)
from patchlab.data import class_index
from patchlab.errors import ConfigError
from patchlab.layout import DEFAULT_ARUCO_DICT
from patchlab.stats import Rate
from patchlab.utils import atomic_write_json, versions

from patchlab.defenses import Defense, get_defense
from .errors import CaptureError
from .hud import Window, draw_hud, has_display
from .pose import MarkerDetector, MarkerPose, PatchTarget, PoseEstimator
from .sources import INTERRUPTED, Frame, FrameSource, ThreadedReader
from .track import PatchTracker, TrackerConfig

log = logging.getLogger(__name__)

CROPS = ("full", "center", "roi")
#: What ``--crop roi`` does on a frame without a pose (see the module docstring).
ON_LOST = ("skip", "center", "last")
#: Libraries whose versions a capture records.
CAPTURE_VERSION_MODULES = ("torch", "timm", "cv2", "numpy")
#: Top-k classes logged per model.
TOP_K = 5
#: Width of the sample frames kept for reports (px).
SAMPLE_WIDTH = 480


@dataclass(frozen=True)
class CaptureConfig:
    """Options of one capture run (all recorded in ``summary.json``)."""

    target: str
    crop: str = "center"
    roi_frac: float = 0.1
    defense: str = "none"
    batch_size: int = 8
    max_frames: int | None = None
    hud: bool | None = False  # None: a window when a display exists
    record: str | None = None
    min_markers: int = 2
    input_size: int | None = None  # side of the crop handed to the models (default: largest model input)
    sample_every: int = 30
    max_samples: int = 48
    queue_size: int = 32
    on_lost: str = "skip"
    track: bool = True

    def __post_init__(self) -> None:
        get_defense(self.defense)  # a bad --defense fails here, before the source opens
        if self.crop not in CROPS:
            raise ConfigError(f"--crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.on_lost not in ON_LOST:
            raise ConfigError(f"--on-lost must be one of {', '.join(ON_LOST)}, got {self.on_lost!r}")
        if not 0 < self.roi_frac <= 1:
            raise ConfigError(f"--roi-frac must be in (0, 1], got {self.roi_frac}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.sample_every < 1 or self.max_samples < 0:
            raise ConfigError("sample_every must be >= 1 and max_samples >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def crop_box(
    shape: tuple[int, ...], mode: str, pose: MarkerPose | None, roi_frac: float
) -> tuple[tuple[int, int, int, int], str]:
    """The crop ``(x0, y0, x1, y1)`` (end-exclusive) for a frame of ``shape`` and what it is."""
    h, w = shape[:2]
    if mode == "full":
        return (0, 0, w, h), "full"
    side_max = min(h, w)
    if mode == "roi" and pose is not None:
        side = int(round(min(side_max, max(8.0, pose.size_px / math.sqrt(roi_frac)))))
        cx, cy = pose.center_px
        x0 = int(round(min(max(cx - side / 2, 0), w - side)))
        y0 = int(round(min(max(cy - side / 2, 0), h - side)))
        return (x0, y0, x0 + side, y0 + side), "roi"
    x0, y0 = (w - side_max) // 2, (h - side_max) // 2
    return (x0, y0, x0 + side_max, y0 + side_max), "center" if mode == "center" else "center (no markers)"


@dataclass
class Prepared:
    """A frame made ready for the models (done in the reader thread); ``crop`` is
    None when the frame is not to be scored (``on_lost="skip"``)."""

    frame: Frame
    crop: np.ndarray | None  # (S, S, 3) uint8 RGB
    crop_box: tuple[int, int, int, int] | None
    crop_mode: str
    markers: list[int]
    pose: MarkerPose | None
    pose_source: str
    brightness: float
    seconds: float


class FramePreparer:
    """Markers, pose (detected / tracked / lost) and crop for each frame, in order.

    Called from the reader thread only, one frame after the other: the tracker
    carries the patch from frame to frame.
    """

    def __init__(
        self, tracker: PatchTracker, *, crop: str, roi_frac: float, input_size: int, on_lost: str = "skip"
    ) -> None:
        self.tracker = tracker
        self.crop, self.roi_frac, self.input_size, self.on_lost = crop, roi_frac, input_size, on_lost
        self._last_pose: MarkerPose | None = None

    def _box(self, shape: tuple[int, ...], pose: MarkerPose | None) -> tuple[tuple[int, int, int, int] | None, str]:
        if self.crop != "roi" or pose is not None:
            return crop_box(shape, self.crop, pose, self.roi_frac)
        if self.on_lost == "center":
            return crop_box(shape, "center", None, self.roi_frac)[0], "center (lost)"
        if self.on_lost == "last" and self._last_pose is not None:
            return crop_box(shape, "roi", self._last_pose, self.roi_frac)[0], "roi (last pose)"
        return None, "skipped (lost)"

    def __call__(self, frame: Frame) -> Prepared:
        t0 = time.perf_counter()
        img = frame.image
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        step = self.tracker.step(gray)
        pose = step.pose
        markers = list(pose.marker_ids) if pose is not None else []
        box, mode = self._box(img.shape, pose)
        if pose is not None:
            self._last_pose = pose
        crop = None
        if box is not None:
            x0, y0, x1, y1 = box
            s = self.input_size
            region = img[y0:y1, x0:x1]
            interp = cv2.INTER_AREA if region.shape[0] >= s else cv2.INTER_LINEAR
            crop = cv2.cvtColor(cv2.resize(region, (s, s), interpolation=interp), cv2.COLOR_BGR2RGB)
        bright = float(
            cv2.mean(
                cv2.resize(gray, (gray.shape[1] // 4 or 1, gray.shape[0] // 4 or 1), interpolation=cv2.INTER_AREA)
            )[0]
        )
        return Prepared(frame, crop, box, mode, markers, pose, step.source, bright, time.perf_counter() - t0)


class FrameScorer:
    """Every model on a batch of crops: top-k, target probability, hit.

    Args:
        models: wrapped models (``(B, 3, H, W)`` in [0, 1] in, logits out).
        target: target class, matched to each model's labels by name.
        defense: an input defence (:func:`patchlab.defenses.get_defense` spec or module),
            applied once to each batch of crops (as ``[0, 1]`` floats on the models' device)
            before every model sees it; each model's name then carries it
            (``resnet20+blur:sigma=1.5``), as in ``eval transfer --defense``.
        device: where the models run; the crops follow it.
    """

    def __init__(
        self,
        models: Sequence[Any],
        target: str,
        *,
        defense: Defense | str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not models:
            raise ConfigError("capture needs at least one model (--models)")
        self.models = list(models)
        d = get_defense(defense)
        suffix = "" if d.is_identity else f"+{d.plain_spec}"
        self.names = _unique_names([m.name + suffix for m in self.models])
        self.target = target
        self.target_idx = [class_index(target, m.labels) for m in self.models]
        self.device = (
            torch.device(device)
            if device is not None
            else next((p.device for p in self.models[0].parameters()), torch.device("cpu"))
        )
        self.defense = d.to(self.device)

    def score(self, crops: np.ndarray) -> list[dict[str, dict[str, Any]]]:
        """``crops`` ``(N, S, S, 3)`` uint8 RGB -> one ``{model: {top5, p_target, hit}}`` per crop."""
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        out: list[dict[str, dict[str, Any]]] = [{} for _ in range(len(crops))]
        with torch.inference_mode():
            if not self.defense.is_identity:
                x = self.defense(x)
            for name, m, ti in zip(self.names, self.models, self.target_idx):
                p = torch.softmax(m(x).float(), 1)
                k = min(TOP_K, p.shape[1])
                pv, pi = p.topk(k, 1)
                pt = p[:, ti].tolist()
                pv, pi = pv.tolist(), pi.tolist()
                labels = m.labels
                for j in range(len(crops)):
                    out[j][name] = {
                        "top5": [[labels[c], round(v, 5)] for c, v in zip(pi[j], pv[j])],
                        "p_target": round(pt[j], 5),
                        "hit": pi[j][0] == ti,
                    }
        return out


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        out.append(n if k == 0 else f"{n}#{k + 1}")
        seen[n] = k + 1
    return out


class _Samples:
    """Annotated frames spread over the run: one every ``every`` frames; when there
    are ``cap`` of them, every other one goes and the spacing doubles."""

    def __init__(self, folder: Path, every: int, cap: int) -> None:
        self.folder, self.every, self.cap = folder, every, cap
        self.kept: list[tuple[int, Path]] = []

    def wants(self, index: int) -> bool:
        return self.cap > 0 and index % self.every == 0

    def add(self, index: int, img: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        h, w = img.shape[:2]
        if w > SAMPLE_WIDTH:
            img = cv2.resize(img, (SAMPLE_WIDTH, int(round(h * SAMPLE_WIDTH / w))), interpolation=cv2.INTER_AREA)
        p = self.folder / f"frame_{index:06d}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
        self.kept.append((index, p))
        if len(self.kept) >= self.cap:
            self.every *= 2
            keep = []
            for i, q in self.kept:
                if i % self.every == 0:
                    keep.append((i, q))
                else:
                    q.unlink(missing_ok=True)
            self.kept = keep


class _SigintStop:
    """While active (main thread only), the first Ctrl-C sets ``event`` so the loop
    stops at a clean point; a second one raises KeyboardInterrupt as usual."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self._old: Any = None

    def __enter__(self) -> "_SigintStop":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):  # noqa: ARG001
                if self.event.is_set():
                    raise KeyboardInterrupt
                self.event.set()

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _open_writer(path: Path, fps: float, size: tuple[int, int]) -> tuple[Any, Path]:
    codec = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}.get(path.suffix.lower())
    if codec is None:
        raise ConfigError(f"--record must name a .mp4 or .avi file, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    w = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps, size)
    if not w.isOpened():
        raise ConfigError(f"cannot write {path} with codec {codec}")
    return w, tmp


def prepare_capture_dir(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Create ``out_dir``; refuse one that already holds a capture unless ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if (out / FRAMES_JSONL).exists():
        if not overwrite:
            raise ConfigError(
                f"{out} already holds a capture ({FRAMES_JSONL}); choose another --out or pass --overwrite"
            )
        for name in (FRAMES_JSONL, SUMMARY_JSON):
            (out / name).unlink(missing_ok=True)
        for p in (out / SAMPLES_DIR).glob("*.jpg"):
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class Tally:
    """Running counts of a capture: frames, pose sources, and per model the hits over
    every counted frame, over scored frames and over frames with a pose.

    A frame whose object is the target class (known from ground truth) is not
    counted for tSuc, as digital tSuc leaves out target-class images.
    """

    names: list[str]
    target: str
    frames: int = 0
    scored: int = 0
    sources: dict[str, int] = field(default_factory=lambda: {k: 0 for k in POSE_SOURCES})
    hits: dict[str, int] = field(default_factory=dict)
    counted: int = 0
    hits_scored: dict[str, int] = field(default_factory=dict)
    counted_scored: int = 0
    hits_pose: dict[str, int] = field(default_factory=dict)
    counted_pose: int = 0
    psum: dict[str, float] = field(default_factory=dict)
    t_first: float | None = None
    t_last: float | None = None

    def __post_init__(self) -> None:
        for d in (self.hits, self.hits_scored, self.hits_pose):
            d.update({n: 0 for n in self.names})
        self.psum.update({n: 0.0 for n in self.names})

    def add(self, rec: dict[str, Any]) -> None:
        self.frames += 1
        src = rec["pose_source"]
        self.sources[src] += 1
        oc = (rec.get("truth") or {}).get("object_class")
        counts = not (oc is not None and str(oc).lower() == self.target.lower())
        models = rec.get("models")
        if models:
            self.scored += 1
            for n in self.names:
                self.psum[n] += models[n]["p_target"]
        if not counts:
            return
        self.counted += 1
        if models:
            self.counted_scored += 1
            if src != LOST:
                self.counted_pose += 1
            for n in self.names:
                h = int(models[n]["hit"])
                self.hits[n] += h
                self.hits_scored[n] += h
                if src != LOST:
                    self.hits_pose[n] += h

    @property
    def with_pose(self) -> int:
        return self.sources[DETECTED] + self.sources[TRACKED]

    def fps(self) -> float:
        span = self.seconds()
        return self.frames / span if span > 0 else 0.0

    def seconds(self) -> float:
        return (self.t_last - self.t_first) if (self.t_first is not None and self.t_last is not None) else 0.0

    def running(self) -> dict[str, tuple[int, int]]:
        return {n: (self.hits[n], self.counted) for n in self.names}

    def rates(self, truth: bool) -> dict[str, dict[str, dict[str, Any]]]:
        extra = {"excludes_target_class_frames": truth}
        return {
            "tsuc": {n: Rate(self.hits[n], self.counted).to_dict() | extra for n in self.names},
            "tsuc_scored": {n: Rate(self.hits_scored[n], self.counted_scored).to_dict() | extra for n in self.names},
            "tsuc_with_pose": {n: Rate(self.hits_pose[n], self.counted_pose).to_dict() | extra for n in self.names},
        }


class _FrameLog:
    """``frames.jsonl``: one line per frame, flushed after every batch, fsynced at the end."""

    def __init__(self, path: Path) -> None:
        self.fh = open(path, "w", encoding="utf-8")

    def write(self, records: list[dict[str, Any]]) -> None:
        self.fh.write("".join(json.dumps(r) + "\n" for r in records))
        self.fh.flush()

    def close(self) -> None:
        self.fh.flush()
        try:
            os.fsync(self.fh.fileno())
        except OSError:  # pragma: no cover - e.g. a pipe
            pass
        self.fh.close()


class _Display:
    """Where annotated frames go: the HUD window, the ``--record`` video, samples."""

    def __init__(self, cfg: CaptureConfig, out: Path, fps: float | None) -> None:
        self.cfg, self.fps = cfg, fps or 30.0
        self.window: Window | None = None
        if cfg.hud is None and has_display():
            self.window = Window()
        elif cfg.hud:
            if has_display():
                self.window = Window()
            else:
                warnings.warn(
                    "no display here: --hud shows nothing (use --record FILE to keep the annotated video)", stacklevel=3
                )
        self.writer: Any = None
        self.tmp_record: Path | None = None
        self.samples = _Samples(out / SAMPLES_DIR, cfg.sample_every, cfg.max_samples)

    @property
    def active(self) -> bool:
        return self.window is not None or bool(self.cfg.record) or self.samples.cap > 0

    def show(
        self,
        batch: list[Prepared],
        records: list[dict[str, Any]],
        names: list[str],
        fps: float | None,
        running: dict[str, tuple[int, int]],
    ) -> bool:
        """Draw what is wanted of a batch; False when the user closed the window (q / Esc)."""
        keep_going = True
        for b, rec in zip(batch, records):
            want_sample = self.samples.wants(b.frame.index)
            if self.window is None and not self.cfg.record and not want_sample:
                continue
            img = draw_hud(b.frame.image, rec, names, self.cfg.target, fps=fps, running=running)
            if self.cfg.record:
                if self.writer is None:
                    h, w = img.shape[:2]
                    self.writer, self.tmp_record = _open_writer(Path(self.cfg.record), self.fps, (w, h))
                self.writer.write(img)
            if want_sample:
                self.samples.add(b.frame.index, img)
            if self.window is not None and not self.window.show(img):
                keep_going = False
        return keep_going

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(self.tmp_record, self.cfg.record)  # type: ignore[arg-type]
        if self.window is not None:
            self.window.close()


def build_tracker(
    *,
    layout: Any = None,
    camera: tuple[np.ndarray, np.ndarray] | None = None,
    min_markers: int = 2,
    track: bool = True,
    tracker_config: TrackerConfig | None = None,
) -> PatchTracker:
    """Detector, pose estimator and tracker for a printed ``layout`` (None: the nominal frame)."""
    dictionary = layout.aruco_dict if layout is not None else DEFAULT_ARUCO_DICT
    targets = PatchTarget.from_layout(layout) if layout is not None else PatchTarget.nominal(dictionary=dictionary)
    estimator = PoseEstimator(targets, camera, min_markers=min_markers)
    detector = MarkerDetector(dictionary, ids=estimator.marker_ids)
    tc = tracker_config or TrackerConfig()
    if not track:
        tc = TrackerConfig(**(tc.to_dict() | {"enabled": False}))
    return PatchTracker(estimator, detector, tc)


def _record(b: Prepared, scores: dict[str, dict[str, Any]] | None, truth: dict[str, Any] | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"index": b.frame.index, "timestamp": round(b.frame.timestamp, 4)}
    if b.frame.name:
        rec["name"] = b.frame.name
    rec.update(
        brightness=round(b.brightness, 2),
        crop=b.crop_mode,
        crop_box=None if b.crop_box is None else list(b.crop_box),
        markers=b.markers,
        pose_source=b.pose_source,
        pose=b.pose.to_dict() if b.pose else None,
        scored=scores is not None,
        models=scores,
    )
    if truth is not None:
        rec["truth"] = {"object_class": truth.get("object_class"), "has_patch": truth.get("has_patch")}
    return rec


class CaptureRun:
    """One capture: the parts of :func:`run_capture`, with their state typed.

    Build it, call :meth:`run` once; :meth:`summary` is what ``summary.json`` holds.
    """

    def __init__(
        self,
        source: FrameSource,
        models: Sequence[Any],
        out_dir: str | Path,
        config: CaptureConfig,
        *,
        layout: Any = None,
        layout_path: str | None = None,
        camera: tuple[np.ndarray, np.ndarray] | None = None,
        camera_path: str | None = None,
        truth: Sequence[dict[str, Any]] | None = None,
        stop: threading.Event | None = None,
        on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
        overwrite: bool = False,
        command: Sequence[str] | None = None,
        tracker_config: TrackerConfig | None = None,
    ) -> None:
        self.out = prepare_capture_dir(out_dir, overwrite=overwrite)
        self.source, self.cfg = source, config
        self.stop = stop or threading.Event()
        self.on_batch = on_batch
        self.defense = get_defense(config.defense)
        self.scorer = FrameScorer(models, config.target, defense=self.defense)
        self.input_size = config.input_size or max(max(m.input_hw) for m in models)
        self.tracker = build_tracker(
            layout=layout,
            camera=camera,
            min_markers=config.min_markers,
            track=config.track,
            tracker_config=tracker_config,
        )
        self.prepare = FramePreparer(
            self.tracker, crop=config.crop, roi_frac=config.roi_frac, input_size=self.input_size, on_lost=config.on_lost
        )
        self.truth = {int(t["index"]): t for t in truth} if truth else {}
        self.tally = Tally(list(self.scorer.names), config.target)
        self.timing = {"prepare": 0.0, "score": 0.0, "write": 0.0, "hud": 0.0, "wait": 0.0}
        self.layout_path, self.camera_path = layout_path, camera_path
        self.command = list(command or sys.argv)
        self.started = _now()
        self.status, self.end_reason, self.error = "running", "", None
        self.reader: ThreadedReader | None = None
        self.versions = versions(CAPTURE_VERSION_MODULES)
        self.model_info = [
            {"name": n, "info": m.info.to_dict(), "target_index": ti, "input_size": list(m.input_hw)}
            for n, m, ti in zip(self.scorer.names, self.scorer.models, self.scorer.target_idx)
        ]

    def summary(self, final: bool) -> CaptureSummary:
        t, n = self.tally, self.tally.frames
        rates = t.rates(bool(self.truth))
        reader = self.reader
        stream = getattr(self.source, "stats", None)
        return CaptureSummary(
            capture_dir=str(self.out),
            status=self.status,
            end_reason=self.end_reason,
            frames=n,
            frames_with_pose=t.with_pose,
            dropped=(reader.dropped if reader else 0),
            skipped=list(self.source.skipped),
            target_class=self.cfg.target,
            tsuc=rates["tsuc"],
            mean_p_target={k: (t.psum[k] / t.scored if t.scored else float("nan")) for k in t.names},
            fps=round(t.fps(), 3),
            seconds=round(t.seconds(), 3),
            timing_ms={k: round(1000 * v / max(n, 1), 3) for k, v in self.timing.items()},
            source=self.source.to_dict(),
            models=self.model_info,
            config=self.cfg.to_dict()
            | {
                "input_size": self.input_size,
                "defense": self.defense.to_dict(),
                "tracker": self.tracker.config.to_dict(),
            },
            layout=self.layout_path,
            camera=self.camera_path,
            truth=bool(self.truth),
            started=self.started,
            finished=_now() if final else None,
            error=self.error,
            command=self.command,
            versions=self.versions,
            pose_sources=dict(t.sources),
            frames_scored=t.scored,
            tsuc_scored=rates["tsuc_scored"],
            tsuc_with_pose=rates["tsuc_with_pose"],
            stream=(stream() if callable(stream) else {})
            | ({"queue_dropped_frames": reader.dropped_frames} if reader is not None and reader.dropped_frames else {}),
        )

    def _batch(self, batch: list[Prepared], log_: _FrameLog, display: _Display) -> None:
        t1 = time.perf_counter()
        if self.tally.t_first is None:  # the clock starts when the first frame is in hand
            self.tally.t_first = t1
        todo = [k for k, b in enumerate(batch) if b.crop is not None]
        scores: list[dict[str, dict[str, Any]] | None] = [None] * len(batch)
        if todo:
            for k, sc in zip(todo, self.scorer.score(np.stack([batch[k].crop for k in todo]))):
                scores[k] = sc
        t2 = time.perf_counter()
        records = [_record(b, sc, self.truth.get(b.frame.index)) for b, sc in zip(batch, scores)]
        log_.write(records)
        t3 = time.perf_counter()
        for rec in records:
            self.tally.add(rec)
        self.tally.t_last = t3
        self.timing["prepare"] += sum(b.seconds for b in batch)
        self.timing["score"] += t2 - t1
        self.timing["write"] += t3 - t2
        if display.active and not display.show(
            batch, records, self.scorer.names, self.tally.fps() or None, self.tally.running()
        ):
            self.stop.set()
        self.timing["hud"] += time.perf_counter() - t3
        if self.on_batch is not None:
            self.on_batch(records)

    def _finish_reason(self) -> None:
        if self.reader is not None and self.reader.error is not None:
            raise CaptureError(f"reading {self.source.description} failed: {self.reader.error}") from self.reader.error
        self.end_reason = INTERRUPTED if self.stop.is_set() else (self.source.end_reason or "end of stream")
        self.status = {"end of stream": "finished", "max frames": "finished"}.get(self.end_reason, self.end_reason)

    def run(self) -> CaptureSummary:
        cfg = self.cfg
        atomic_write_json(self.out / SUMMARY_JSON, self.summary(False))
        display = _Display(cfg, self.out, self.source.fps)
        self.reader = ThreadedReader(
            self.source, max_frames=cfg.max_frames, queue_size=cfg.queue_size, prepare=self.prepare
        )
        log_ = _FrameLog(self.out / FRAMES_JSONL)
        try:
            with _SigintStop(self.stop):
                while not self.stop.is_set():
                    t0 = time.perf_counter()
                    batch = self.reader.take(cfg.batch_size, timeout=0.1)
                    self.timing["wait"] += time.perf_counter() - t0
                    if batch:
                        self._batch(batch, log_, display)
                    elif self.reader.finished:
                        break
            self._finish_reason()
        except KeyboardInterrupt:
            self.status = self.end_reason = INTERRUPTED
        except BaseException as exc:
            self.status, self.end_reason, self.error = "error", "error", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.reader.stop()
            self.source.close()
            log_.close()
            display.close()
            result = self.summary(True)
            atomic_write_json(self.out / SUMMARY_JSON, result)
        return result


def run_capture(
    source: FrameSource,
    models: Sequence[Any],
    out_dir: str | Path,
    config: CaptureConfig,
    *,
    layout: Any = None,
    layout_path: str | None = None,
    camera: tuple[np.ndarray, np.ndarray] | None = None,
    camera_path: str | None = None,
    truth: Sequence[dict[str, Any]] | None = None,
    stop: threading.Event | None = None,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
    tracker_config: TrackerConfig | None = None,
) -> CaptureSummary:
    """Score every frame of ``source`` with ``models``; see the module docstring.

    Args:
        source: frames (:func:`patchlab.capture.open_source`); closed on return.
        models: :class:`patchlab.models.WrappedModel` s, all on one device.
        out_dir: the capture folder.
        config: options (:class:`CaptureConfig`).
        layout: the printed sheet (:class:`patchlab.layout.Layout`) for exact marker
            geometry; None uses the nominal frame geometry.
        camera: ``(K, dist)`` for the 3-D pose (distance, tilts).
        truth: per-frame ground truth (simulated videos), indexed by frame index.
        stop: set it to end the loop after the current batch (the HUD's q key,
            SIGINT and SIGTERM handlers use it).
        on_batch: called with each batch's log records once they are written.
        layout_path, camera_path, command: recorded in the summary.
        tracker_config: tracking knobs (:class:`patchlab.capture.track.TrackerConfig`).

    Returns:
        The :class:`patchlab.captures.CaptureSummary`, also written to ``summary.json``.
    """
    return CaptureRun(
        source,
        models,
        out_dir,
        config,
        layout=layout,
        layout_path=layout_path,
        camera=camera,
        camera_path=camera_path,
        truth=truth,
        stop=stop,
        on_batch=on_batch,
        overwrite=overwrite,
        command=command,
        tracker_config=tracker_config,
    ).run()


__all__ = [
    "CROPS",
    "ON_LOST",
    "CaptureConfig",
    "CaptureRun",
    "CaptureSummary",
    "FramePreparer",
    "FrameScorer",
    "FRAMES_JSONL",
    "Prepared",
    "SAMPLES_DIR",
    "SUMMARY_JSON",
    "Tally",
    "build_tracker",
    "crop_box",
    "load_capture",
    "prepare_capture_dir",
    "run_capture",
]
