"""Frame sources: a live camera, a recorded video, a stream or a folder of images.

Every source yields :class:`Frame` objects (BGR uint8, an index counted from 0 and
a timestamp) until it ends, and then says *why* it ended (:attr:`FrameSource.end_reason`):

* ``end of stream`` -- a file or folder was read to its end;
* ``truncated`` -- a video stopped decoding before the frame count in its header;
* ``camera lost`` -- a live camera or stream stopped returning frames (unplugged,
  network gone) for :data:`LOST_AFTER_S` seconds or :data:`LOST_AFTER_READS` reads;
* ``max frames`` -- the caller asked for no more.

Sources are opened by :func:`open_source` from the ``--source`` text; tests build
them directly (e.g. :class:`VideoSource` around any object with OpenCV's
``read()``/``get()``/``release()``, so a camera that stops answering is easy to fake).
:class:`ThreadedReader` decodes in a background thread so decoding overlaps scoring.
"""

from __future__ import annotations

import logging
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import cv2
import numpy as np

from patchlab.data import IMAGE_EXTENSIONS

from .errors import CaptureError

log = logging.getLogger(__name__)

#: A live source that returns no frame for this long is declared lost.
LOST_AFTER_S = 2.0
#: ... or after this many failed reads in a row, whichever comes first.
LOST_AFTER_READS = 50

END_OF_STREAM = "end of stream"
TRUNCATED = "truncated"
CAMERA_LOST = "camera lost"
MAX_FRAMES = "max frames"
INTERRUPTED = "interrupted"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class Frame:
    """One frame: ``image`` is ``(H, W, 3)`` BGR uint8 (OpenCV's order).

    ``timestamp`` is seconds from the start of the source: the video's own clock
    for files, the wall clock since opening for cameras and folders. ``name`` is the
    file name for image folders, empty otherwise.
    """

    index: int
    timestamp: float
    image: np.ndarray
    name: str = ""


class _Capture(Protocol):  # what VideoSource needs of cv2.VideoCapture
    def read(self) -> tuple[bool, Any]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


class FrameSource:
    """Base class: iterate to get frames; :attr:`end_reason` says why it stopped."""

    kind: str = "source"
    live: bool = False

    def __init__(self, description: str) -> None:
        self.description = description
        self.end_reason: str | None = None
        self.skipped: list[str] = []  # files of a folder that were not readable images
        self.fps: float | None = None
        self.frame_count: int | None = None  # declared by the container, if any

    def read(self) -> Frame | None:
        """The next frame, or None at the end (then :attr:`end_reason` is set)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call twice."""

    def __iter__(self) -> Iterator[Frame]:
        while True:
            f = self.read()
            if f is None:
                return
            yield f

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "description": self.description,
            "live": self.live,
            "fps": self.fps,
            "frame_count": self.frame_count,
            "end_reason": self.end_reason,
            "skipped": list(self.skipped),
        }


class VideoSource(FrameSource):
    """Frames from an OpenCV ``VideoCapture`` (camera, file or stream).

    Args:
        cap: an opened ``cv2.VideoCapture`` or anything with its ``read``/``get``/``release``.
        description: what it is, for logs and errors.
        live: a camera or stream (wall-clock timestamps; a run of failed reads
            means the camera is lost) rather than a file (video clock; the first
            failed read is the end, ``truncated`` if before the declared count).
        lost_after_s, lost_after_reads: when a live source counts as lost.
        realtime: pace a file at its frame rate, as a camera would deliver it
            (replaying a recording for a demo; frames are still never dropped).
    """

    def __init__(
        self,
        cap: _Capture,
        description: str,
        *,
        live: bool,
        lost_after_s: float = LOST_AFTER_S,
        lost_after_reads: int = LOST_AFTER_READS,
        realtime: bool = False,
    ) -> None:
        super().__init__(description)
        self.kind = "camera" if live else "video"
        self.live = live
        self._cap = cap
        self._index = 0
        self._t0 = time.monotonic()
        self._lost_after_s = lost_after_s
        self._lost_after_reads = lost_after_reads
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if fps > 0 else None
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = n if (n > 0 and not live) else None
        self.realtime = realtime and not live

    def read(self) -> Frame | None:
        if self.end_reason is not None:
            return None
        fails, t_fail = 0, None
        while True:
            try:
                ok, img = self._cap.read()
            except cv2.error as exc:  # a decoder error mid-file is the same as running out
                log.warning("%s: read failed: %s", self.description, exc)
                ok, img = False, None
            if ok and img is not None and getattr(img, "size", 0) > 0:
                break
            if not self.live:
                self.end_reason = TRUNCATED if (self.frame_count and self._index < self.frame_count) else END_OF_STREAM
                return None
            fails += 1
            t_fail = t_fail or time.monotonic()
            if fails >= self._lost_after_reads or time.monotonic() - t_fail >= self._lost_after_s:
                self.end_reason = CAMERA_LOST
                return None
            time.sleep(0.005)
        if self.live:
            ts = time.monotonic() - self._t0
        else:
            ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
            ts = ms / 1000.0 if ms > 0 or self._index == 0 else self._index / (self.fps or 30.0)
        if self.realtime:
            lag = ts - (time.monotonic() - self._t0)
            if lag > 0:
                time.sleep(lag)
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        f = Frame(self._index, ts, img)
        self._index += 1
        return f

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None  # type: ignore[assignment]


class ImageDirSource(FrameSource):
    """Images of a folder in sorted name order; other files are skipped and listed.

    A file with an image extension that cannot be decoded is skipped too (and
    listed), so one bad file never ends a run.
    """

    kind = "images"

    def __init__(self, folder: str | Path) -> None:
        root = Path(folder)
        super().__init__(str(root))
        if not root.is_dir():
            raise CaptureError(f"image folder not found: {root}")
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
        self._files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        self.skipped = [p.name for p in entries if p not in self._files]
        if not self._files:
            raise CaptureError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
        self.frame_count = len(self._files)
        self._pos = 0
        self._index = 0
        self._t0 = time.monotonic()

    def read(self) -> Frame | None:
        while self._pos < len(self._files):
            p = self._files[self._pos]
            self._pos += 1
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                self.skipped.append(p.name)
                log.warning("skipping %s: not a readable image", p)
                continue
            f = Frame(self._index, time.monotonic() - self._t0, img, name=p.name)
            self._index += 1
            return f
        self.end_reason = END_OF_STREAM
        return None


def _camera_index(spec: str) -> int | None:
    if spec.isdigit():
        return int(spec)
    m = re.fullmatch(r"/dev/video(\d+)", spec)
    return int(m.group(1)) if m else None


def open_source(
    spec: str | int,
    *,
    lost_after_s: float = LOST_AFTER_S,
    realtime: bool = False,
    stall_timeout_s: float = 2.0,
    stream_lost_after_s: float = 20.0,
) -> FrameSource:
    """Open ``--source``: a camera index (``0``), ``/dev/videoN``, a video file, a
    folder of images or a stream URL (``http://`` MJPEG or snapshot camera,
    ``rtsp://``; see :mod:`patchlab.capture.netsources`: stalls longer than
    ``stall_timeout_s`` reconnect, ``stream_lost_after_s`` without a frame ends it).

    Raises:
        CaptureError: the camera, file or stream cannot be opened.
    """
    from .netsources import StreamSource, quiet_opencv

    text = str(spec).strip()
    cam = _camera_index(text)
    if cam is not None:
        target: int | str = text if text.startswith("/dev/") else cam
        if sys.platform.startswith("linux"):
            dev = Path(text if text.startswith("/dev/") else f"/dev/video{cam}")
            if not dev.exists():
                have = sorted(p.name for p in Path("/dev").glob("video*"))
                raise CaptureError(
                    f"cannot open camera {text}: no such device ({dev} does not exist; "
                    + (f"this machine has {', '.join(have)}" if have else "this machine has no camera")
                    + "); pass a video file, a folder of images or a stream URL as --source"
                )
        with quiet_opencv():  # OpenCV prints several lines while probing backends
            cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(
                f"cannot open camera {text}: no such device, or it is busy or not permitted "
                "(list cameras with `v4l2-ctl --list-devices` on Linux; try another --source index)"
            )
        return VideoSource(cap, f"camera {text}", live=True, lost_after_s=lost_after_s)
    if _URL.match(text):
        if text.split(":", 1)[0].lower() in ("http", "https", "rtsp", "rtsps"):
            return StreamSource(
                text, stall_timeout_s=stall_timeout_s, lost_after_s=max(lost_after_s, stream_lost_after_s)
            )
        with quiet_opencv():
            cap = cv2.VideoCapture(text)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(f"cannot open stream {text}: check the URL and that the stream is up")
        return VideoSource(cap, text, live=True, lost_after_s=lost_after_s)
    p = Path(text)
    if p.is_dir():
        return ImageDirSource(p)
    if not p.exists():
        raise CaptureError(
            f"source not found: {p} (pass a camera index, /dev/videoN, a video file, "
            "a folder of images or a stream URL)"
        )
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        cap.release()
        hint = (
            " (an MP4 cut short loses its index at the end of the file and cannot be read at all)"
            if p.suffix.lower() in (".mp4", ".mov", ".m4v")
            else ""
        )
        raise CaptureError(f"cannot open video {p}: not a video OpenCV can decode{hint}")
    return VideoSource(cap, str(p), live=False, realtime=realtime)


class ThreadedReader:
    """Decode a source in a background thread; :meth:`take` gets what is ready.

    Files are read losslessly: the thread waits when the queue is full. A live
    source never waits (a camera keeps producing): when the scorer falls behind
    the oldest waiting frame is dropped and counted in :attr:`dropped`.

    Args:
        source: the frames.
        max_frames: stop after this many frames (``end_reason`` = ``max frames``).
        queue_size: frames decoded ahead.
        prepare: run on each frame in the reader thread (e.g. marker detection and
            cropping, which release the GIL and so overlap the models); its result
            is what :meth:`take` returns.
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        max_frames: int | None = None,
        queue_size: int = 32,
        prepare: Callable[[Frame], Any] | None = None,
    ) -> None:
        self.source = source
        self.prepare = prepare
        self.max_frames = max_frames
        self.dropped = 0
        self.dropped_frames: list[dict[str, Any]] = []  # index, timestamp of each (the first 1000)
        self.error: BaseException | None = None
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="patchlab-capture-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return
            except queue.Full:
                if self.source.live and item is not None:
                    try:
                        old = self._q.get_nowait()
                        self.dropped += 1
                        f = getattr(old, "frame", old)
                        if len(self.dropped_frames) < 1000 and isinstance(f, Frame):
                            self.dropped_frames.append(
                                {"index": f.index, "timestamp": round(f.timestamp, 4), "reason": "scoring fell behind"}
                            )
                    except queue.Empty:
                        pass

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and n >= self.max_frames:
                    self.source.end_reason = MAX_FRAMES
                    break
                f = self.source.read()
                if f is None:
                    break
                self._put(f if self.prepare is None else self.prepare(f))
                n += 1
        except BaseException as exc:  # surfaced to the consumer by take()
            self.error = exc
        finally:
            self._put(None)

    def take(self, n: int, *, timeout: float | None = None) -> list[Any]:
        """Up to ``n`` frames; ``[]`` means nothing came within ``timeout`` s (check
        :attr:`finished` to tell that from the end of the source).

        It blocks for the first frame. A file source then fills the batch (waiting
        costs nothing and full batches score fastest); a live source adds only what
        is already waiting, so latency stays one frame.
        """
        out: list[Any] = []
        if self._done:
            return out
        try:
            first = self._q.get(timeout=timeout)
        except queue.Empty:
            return out
        if first is None:
            self._done = True
            return out
        out.append(first)
        fill = not self.source.live
        while len(out) < n:
            try:
                f = self._q.get() if fill else self._q.get_nowait()
            except queue.Empty:
                break
            if f is None:
                self._done = True
                break
            out.append(f)
        return out

    @property
    def finished(self) -> bool:
        return self._done

    def stop(self) -> None:
        """Ask the thread to stop and wait for it (frames still queued are discarded)."""
        self._stop.set()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> "ThreadedReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
