"""The capture loop: read frames, find the patch, classify, log every frame.

Pipeline (two threads). The reader thread decodes a frame and *prepares* it: grey
image, ArUco markers, patch pose, the classifier crop resized to the models' input.
The main thread takes whatever prepared frames are waiting (up to
``batch_size``), classifies them with every model in one batch per model, writes
one JSON line per frame and flushes, then draws the HUD / records the video.

The capture folder (``CAPTURE_DIR``) holds:

    frames.jsonl   one line per scored frame (below), flushed after every batch
    summary.json   the run: config, source, models, tSuc per model with Wilson 95 %
                   intervals, end reason, timing, versions; written atomically at the
                   start (status ``running``) and rewritten at the end
    samples/       a few annotated frames (JPEG) spread over the run, for reports

A ``frames.jsonl`` line::

    {"index", "timestamp", "name", "brightness", "crop": "center"|"full"|"roi"|"center (no markers)",
     "crop_box": [x0, y0, x1, y1],
     "markers": [ids], "pose": MarkerPose.to_dict() | null,
     "models": {NAME: {"top5": [[label, p], ...], "p_target", "hit"}},
     "truth": {"object_class", "has_patch"} (only when ground truth is known)}

``hit`` is top-1 == target. ``brightness`` is the mean grey level of the frame
(0-255), the lighting bin's measure. The loop ends at the end of the stream, after
``max_frames``, when the camera is lost, on Ctrl-C (SIGINT) or when ``stop`` is
set; every frame scored before that is in the log and the summary counts it.

Crops (``crop``): ``full`` is the whole frame squeezed to a square; ``center`` is
the largest centred square; ``roi`` is a square centred on the patch with side
``size_px / sqrt(roi_frac)``, so the patch covers ``roi_frac`` of the classifier
input at any distance (the digital optimiser's patch fraction), falling back to
``center`` on frames without markers.
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

from patchlab.data import class_index
from patchlab.errors import ConfigError
from patchlab.layout import DEFAULT_ARUCO_DICT
from patchlab.stats import Rate
from patchlab.utils import atomic_write_json, versions

from .defenses import Defense, get_defense
from .errors import CaptureError
from .hud import Window, draw_hud, has_display
from .pose import MarkerDetector, MarkerPose, PatchTarget, PoseEstimator
from .sources import INTERRUPTED, Frame, FrameSource, ThreadedReader

log = logging.getLogger(__name__)

FRAMES_JSONL = "frames.jsonl"
SUMMARY_JSON = "summary.json"
SAMPLES_DIR = "samples"
CROPS = ("full", "center", "roi")
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
    min_markers: int = 3
    input_size: int | None = None  # side of the crop handed to the models (default: largest model input)
    sample_every: int = 30
    max_samples: int = 48
    queue_size: int = 32

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ConfigError(f"--crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
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


@dataclass(frozen=True)
class CaptureSummary:
    """What a capture run measured (``summary.json``)."""

    capture_dir: str
    status: str  # finished | interrupted | camera lost | truncated | error
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def crop_box(shape: tuple[int, ...], mode: str, pose: MarkerPose | None, roi_frac: float) -> tuple[tuple[int, int, int, int], str]:
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
    """A frame made ready for the models (done in the reader thread)."""

    frame: Frame
    crop: np.ndarray  # (S, S, 3) uint8 RGB
    crop_box: tuple[int, int, int, int]
    crop_mode: str
    markers: list[int]
    pose: MarkerPose | None
    brightness: float
    seconds: float


class FramePreparer:
    """Markers, pose and crop for one frame; thread-safe to call from the reader."""

    def __init__(self, estimator: PoseEstimator, detector: MarkerDetector, *, crop: str, roi_frac: float,
                 input_size: int) -> None:
        self.estimator, self.detector = estimator, detector
        self.crop, self.roi_frac, self.input_size = crop, roi_frac, input_size

    def __call__(self, frame: Frame) -> Prepared:
        t0 = time.perf_counter()
        img = frame.image
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        dets = self.detector.detect(gray)
        pose = self.estimator.estimate(dets)
        (x0, y0, x1, y1), mode = crop_box(img.shape, self.crop, pose, self.roi_frac)
        s = self.input_size
        region = img[y0:y1, x0:x1]
        interp = cv2.INTER_AREA if region.shape[0] >= s else cv2.INTER_LINEAR
        crop = cv2.cvtColor(cv2.resize(region, (s, s), interpolation=interp), cv2.COLOR_BGR2RGB)
        bright = float(cv2.mean(cv2.resize(gray, (gray.shape[1] // 4 or 1, gray.shape[0] // 4 or 1),
                                           interpolation=cv2.INTER_AREA))[0])
        return Prepared(frame, crop, (x0, y0, x1, y1), mode, [d.id for d in dets], pose, bright,
                        time.perf_counter() - t0)


class FrameScorer:
    """Every model on a batch of crops: top-k, target probability, hit.

    Args:
        models: wrapped models (``(B, 3, H, W)`` in [0, 1] in, logits out).
        target: target class, matched to each model's labels by name.
        defense: applied to the uint8 crops first.
        device: where the models run; the crops follow it.
    """

    def __init__(self, models: Sequence[Any], target: str, *, defense: Defense | None = None,
                 device: torch.device | str | None = None) -> None:
        if not models:
            raise ConfigError("capture needs at least one model (--models)")
        self.models = list(models)
        self.names = _unique_names([m.name for m in self.models])
        self.target = target
        self.target_idx = [class_index(target, m.labels) for m in self.models]
        self.defense = defense or Defense()
        self.device = torch.device(device) if device is not None else next(
            (p.device for p in self.models[0].parameters()), torch.device("cpu"))

    def score(self, crops: np.ndarray) -> list[dict[str, dict[str, Any]]]:
        """``crops`` ``(N, S, S, 3)`` uint8 RGB -> one ``{model: {top5, p_target, hit}}`` per crop."""
        crops = self.defense.apply(crops)
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        out: list[dict[str, dict[str, Any]]] = [{} for _ in range(len(crops))]
        with torch.inference_mode():
            for name, m, ti in zip(self.names, self.models, self.target_idx):
                p = torch.softmax(m(x).float(), 1)
                k = min(TOP_K, p.shape[1])
                pv, pi = p.topk(k, 1)
                pt = p[:, ti].tolist()
                pv, pi = pv.tolist(), pi.tolist()
                labels = m.labels
                for j in range(len(crops)):
                    out[j][name] = {"top5": [[labels[c], round(v, 5)] for c, v in zip(pi[j], pv[j])],
                                    "p_target": round(pt[j], 5), "hit": pi[j][0] == ti}
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
            raise ConfigError(f"{out} already holds a capture ({FRAMES_JSONL}); choose another --out or pass --overwrite")
        for name in (FRAMES_JSONL, SUMMARY_JSON):
            (out / name).unlink(missing_ok=True)
        for p in (out / SAMPLES_DIR).glob("*.jpg"):
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_capture(source: FrameSource, models: Sequence[Any], out_dir: str | Path, config: CaptureConfig, *,
                layout: Any = None, layout_path: str | None = None,
                camera: tuple[np.ndarray, np.ndarray] | None = None, camera_path: str | None = None,
                truth: Sequence[dict[str, Any]] | None = None, stop: threading.Event | None = None,
                on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
                overwrite: bool = False, command: Sequence[str] | None = None) -> CaptureSummary:
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

    Returns:
        The :class:`CaptureSummary`, also written to ``summary.json``.
    """
    out = prepare_capture_dir(out_dir, overwrite=overwrite)
    cfg = config
    stop = stop or threading.Event()
    defense = get_defense(cfg.defense)
    scorer = FrameScorer(models, cfg.target, defense=defense)
    size = cfg.input_size or max(max(m.input_hw) for m in models)
    dictionary = layout.aruco_dict if layout is not None else DEFAULT_ARUCO_DICT
    targets = PatchTarget.from_layout(layout) if layout is not None else PatchTarget.nominal(dictionary=dictionary)
    estimator = PoseEstimator(targets, camera, min_markers=cfg.min_markers)
    detector = MarkerDetector(dictionary, ids=estimator.marker_ids)
    prepare = FramePreparer(estimator, detector, crop=cfg.crop, roi_frac=cfg.roi_frac, input_size=size)
    truth_by_index = {int(t["index"]): t for t in truth} if truth else {}
    hits = {n: 0 for n in scorer.names}
    psum = {n: 0.0 for n in scorer.names}
    counted = {n: 0 for n in scorer.names}
    started = _now()
    model_info = [{"name": n, "info": m.info.to_dict(), "target_index": ti, "input_size": list(m.input_hw)}
                  for n, m, ti in zip(scorer.names, scorer.models, scorer.target_idx)]
    state: dict[str, Any] = {"frames": 0, "with_pose": 0, "t_first": None, "t_last": None, "status": "running",
                             "end_reason": "", "error": None}
    timing = {"prepare": 0.0, "score": 0.0, "write": 0.0, "hud": 0.0, "wait": 0.0}
    lib_versions = versions(CAPTURE_VERSION_MODULES)

    def loop_fps() -> float:
        n = state["frames"]
        span = (state["t_last"] - state["t_first"]) if (state["t_first"] is not None and n > 0) else 0.0
        return n / span if span > 0 else 0.0

    def summary(final: bool, reader: ThreadedReader | None) -> CaptureSummary:
        n = state["frames"]
        t_span = (state["t_last"] - state["t_first"]) if (state["t_first"] is not None and n > 0) else 0.0
        fps = loop_fps()
        exclude_target = bool(truth_by_index)
        tsuc = {name: Rate(hits[name], counted[name]).to_dict() | {"excludes_target_class_frames": exclude_target}
                for name in scorer.names}
        return CaptureSummary(
            capture_dir=str(out), status=state["status"], end_reason=state["end_reason"], frames=n,
            frames_with_pose=state["with_pose"], dropped=reader.dropped if reader else 0,
            skipped=list(source.skipped), target_class=cfg.target, tsuc=tsuc,
            mean_p_target={k: (psum[k] / n if n else float("nan")) for k in scorer.names},
            fps=round(fps, 3), seconds=round(t_span, 3),
            timing_ms={k: round(1000 * v / max(n, 1), 3) for k, v in timing.items()},
            source=source.to_dict(), models=model_info, config=cfg.to_dict() | {"input_size": size,
                                                                                 "defense": defense.to_dict()},
            layout=layout_path, camera=camera_path, truth=bool(truth_by_index), started=started,
            finished=_now() if final else None, error=state["error"], command=list(command or sys.argv),
            versions=lib_versions)

    atomic_write_json(out / SUMMARY_JSON, summary(False, None))
    window = None
    if cfg.hud is None and has_display():
        window = Window()
    elif cfg.hud:
        if has_display():
            window = Window()
        else:
            warnings.warn("no display here: --hud shows nothing (use --record FILE to keep the annotated video)",
                          stacklevel=2)
    writer = tmp_record = None
    samples = _Samples(out / SAMPLES_DIR, cfg.sample_every, cfg.max_samples)
    reader = ThreadedReader(source, max_frames=cfg.max_frames, queue_size=cfg.queue_size, prepare=prepare)
    fh = open(out / FRAMES_JSONL, "w", encoding="utf-8")
    try:
        with _SigintStop(stop):
            while not stop.is_set():
                t0 = time.perf_counter()
                batch = reader.take(cfg.batch_size, timeout=0.1)
                timing["wait"] += time.perf_counter() - t0
                if not batch:
                    if reader.finished:
                        break
                    continue
                t1 = time.perf_counter()
                if state["t_first"] is None:  # the clock starts when the first frame is in hand
                    state["t_first"] = t1
                scores = scorer.score(np.stack([b.crop for b in batch]))
                t2 = time.perf_counter()
                records = []
                for b, sc in zip(batch, scores):
                    rec: dict[str, Any] = {"index": b.frame.index, "timestamp": round(b.frame.timestamp, 4)}
                    if b.frame.name:
                        rec["name"] = b.frame.name
                    rec.update(brightness=round(b.brightness, 2), crop=b.crop_mode, crop_box=list(b.crop_box),
                               markers=b.markers, pose=b.pose.to_dict() if b.pose else None, models=sc)
                    tr = truth_by_index.get(b.frame.index)
                    if tr is not None:
                        rec["truth"] = {"object_class": tr.get("object_class"), "has_patch": tr.get("has_patch")}
                    records.append(rec)
                fh.write("".join(json.dumps(r) + "\n" for r in records))
                fh.flush()
                t3 = time.perf_counter()
                now = time.perf_counter()
                for b, rec in zip(batch, records):
                    state["frames"] += 1
                    state["with_pose"] += int(b.pose is not None)
                    oc = (rec.get("truth") or {}).get("object_class")
                    skip = oc is not None and str(oc).lower() == cfg.target.lower()
                    for name in scorer.names:
                        m = rec["models"][name]
                        psum[name] += m["p_target"]
                        if not skip:
                            counted[name] += 1
                            hits[name] += int(m["hit"])
                state["t_last"] = now
                timing["prepare"] += sum(b.seconds for b in batch)
                timing["score"] += t2 - t1
                timing["write"] += t3 - t2
                if window is not None or writer is not None or cfg.record or samples.cap:
                    fps_now = loop_fps() or None
                    running = {n: (hits[n], counted[n]) for n in scorer.names}
                    for b, rec in zip(batch, records):
                        want_sample = samples.wants(b.frame.index)
                        if window is None and not cfg.record and not want_sample:
                            continue
                        img = draw_hud(b.frame.image, rec, scorer.names, cfg.target, fps=fps_now, running=running)
                        if cfg.record:
                            if writer is None:
                                h, w = img.shape[:2]
                                writer, tmp_record = _open_writer(Path(cfg.record), source.fps or 30.0, (w, h))
                            writer.write(img)
                        if want_sample:
                            samples.add(b.frame.index, img)
                        if window is not None and not window.show(img):
                            stop.set()
                timing["hud"] += time.perf_counter() - t3
                if on_batch is not None:
                    on_batch(records)
        if reader.error is not None:
            raise CaptureError(f"reading {source.description} failed: {reader.error}") from reader.error
        if stop.is_set():
            state["end_reason"] = INTERRUPTED
        else:
            state["end_reason"] = source.end_reason or "end of stream"
        state["status"] = {"end of stream": "finished", "max frames": "finished"}.get(state["end_reason"],
                                                                                      state["end_reason"])
    except KeyboardInterrupt:
        state["status"] = state["end_reason"] = INTERRUPTED
    except BaseException as exc:
        state["status"], state["end_reason"], state["error"] = "error", "error", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        reader.stop()
        source.close()
        fh.flush()
        try:
            os.fsync(fh.fileno())
        except OSError:  # pragma: no cover - e.g. a pipe
            pass
        fh.close()
        if writer is not None:
            writer.release()
            os.replace(tmp_record, cfg.record)
        if window is not None:
            window.close()
        result = summary(True, reader)
        atomic_write_json(out / SUMMARY_JSON, result)
    return result


def load_capture(capture_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(summary, frames)`` of a capture folder. A last line cut short by a crash is
    ignored (every complete line is a scored frame)."""
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
    frames = []
    lines = fj.read_text(encoding="utf-8").splitlines()
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            frames.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if k == len(lines) - 1:
                log.warning("%s: last line is incomplete (the capture was killed while writing); ignoring it", fj)
                continue
            raise CaptureError(f"{fj}:{k + 1} is not JSON: {exc}") from exc
    return summ, frames
