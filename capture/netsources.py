"""Network cameras: MJPEG over HTTP, single-JPEG snapshot URLs and RTSP (through OpenCV).

A network camera stalls, drops the connection and comes back. :class:`StreamSource`
turns that into numbers instead of an ended capture:

* a read that waits longer than ``stall_timeout_s`` is a **stall**: the connection
  is closed and opened again (a **reconnect**), as many times as needed until
  ``lost_after_s`` seconds pass without a frame -- only then does the source end
  with ``camera lost``;
* a frame that arrives cut short (the connection died inside it) or does not
  decode is **dropped**: counted, and logged with its index, time and reason.

:meth:`StreamSource.stats` gives the counts (``patchlab capture run`` writes them
to ``summary.json["stream"]``); frames the capture loop drops because scoring fell
behind are counted by :class:`patchlab.capture.sources.ThreadedReader`.

MJPEG (``multipart/x-mixed-replace``) is parsed here, with plain sockets and
timeouts (OpenCV's own HTTP reader blocks for minutes on a stalled camera); an
``image/jpeg`` URL is polled as a snapshot camera; anything else over HTTP, and
``rtsp://``, goes to :class:`cv2.VideoCapture` (FFmpeg) with open and read timeouts.
"""

from __future__ import annotations

import base64
import http.client
import logging
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from .errors import CaptureError
from .sources import CAMERA_LOST, Frame, FrameSource

log = logging.getLogger(__name__)

#: A read that waits this long is a stall (s); a source silent this long is lost (s).
STALL_TIMEOUT_S, LOST_AFTER_S = 2.0, 20.0
#: Pause between reconnection attempts (s).
RECONNECT_PAUSE_S = 0.25
#: Dropped frames kept in the log (the count goes on).
MAX_DROP_LOG = 1000
_CHUNK = 65536


class StreamStalled(Exception):
    """The stream sent nothing for the stall timeout, or the connection broke.

    ``partial`` is True when it happened inside a frame (that frame is dropped)."""

    partial = False


class _Connection(Protocol):
    def read(self) -> tuple[bytes | np.ndarray | None, str]: ...  # payload or None, and why not
    def close(self) -> None: ...


@dataclass
class StreamStats:
    """What happened on the wire."""

    frames: int = 0  # frames delivered
    stalls: int = 0
    reconnects: int = 0
    dropped: int = 0
    dropped_log: list[dict[str, Any]] = field(default_factory=list)
    connected_s: float = 0.0

    def drop(self, index: int, t: float, reason: str) -> None:
        self.dropped += 1
        if len(self.dropped_log) < MAX_DROP_LOG:
            self.dropped_log.append({"index": index, "timestamp": round(t, 4), "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "stalls": self.stalls,
            "reconnects": self.reconnects,
            "dropped": self.dropped,
            "dropped_frames": list(self.dropped_log),
        }


class _HttpConnection:
    """One HTTP connection: MJPEG parts, or one snapshot per request."""

    def __init__(self, url: str, timeout: float) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https"):
            raise CaptureError(f"not an HTTP URL: {url}")
        conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        self.url, self.timeout = url, timeout
        self._conn = conn_cls(u.hostname, u.port, timeout=timeout)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        headers = {"User-Agent": "patchlab-capture", "Accept": "multipart/x-mixed-replace, image/jpeg, */*"}
        if u.username:
            token = base64.b64encode(
                f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}".encode()
            ).decode()
            headers["Authorization"] = f"Basic {token}"
        self._path, self._headers = path, headers
        try:
            self._conn.request("GET", path, headers=headers)
            self._resp = self._conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise StreamStalled(f"cannot connect: {exc}") from exc
        if self._resp.status != 200:
            status = self._resp.status
            self._conn.close()
            raise CaptureError(
                f"{url} answered HTTP {status}"
                + (" (check the user and password in the URL)" if status in (401, 403) else "")
            )
        ctype = self._resp.getheader("Content-Type", "")
        self.kind = "mjpeg" if "multipart" in ctype.lower() else ("snapshot" if "image/" in ctype.lower() else "other")
        self._boundary = None
        if self.kind == "mjpeg":
            for part in ctype.split(";"):
                k, _, v = part.strip().partition("=")
                if k.lower() == "boundary":
                    self._boundary = v.strip().strip('"')
        self._buf = b""
        self._first_snapshot: bytes | None = None
        if self.kind == "snapshot":
            self._first_snapshot = self._read_all()

    def _recv(self) -> bytes:
        try:
            data = self._resp.read1(_CHUNK)
        except (socket.timeout, TimeoutError) as exc:
            raise StreamStalled("no data for the stall timeout") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise StreamStalled(f"connection broke: {exc}") from exc
        if not data:
            raise StreamStalled("the server closed the connection")
        return data

    def _read_all(self) -> bytes:
        try:
            return self._resp.read()
        except (socket.timeout, TimeoutError, OSError, http.client.HTTPException) as exc:
            raise StreamStalled(f"snapshot not received: {exc}") from exc

    def read(self) -> tuple[bytes | None, str]:
        """The next JPEG's bytes; ``(None, reason)`` for a part that is not a whole JPEG."""
        if self.kind == "snapshot":
            if self._first_snapshot is not None:
                data, self._first_snapshot = self._first_snapshot, None
                return data, ""
            self._conn.request("GET", self._path, headers=self._headers)
            self._resp = self._conn.getresponse()
            return self._read_all(), ""
        return self._next_part()

    def _next_part(self) -> tuple[bytes | None, str]:
        # headers of the next part: everything up to a blank line after the boundary
        while True:
            i = self._buf.find(b"\r\n\r\n")
            if i >= 0:
                head, self._buf = self._buf[:i], self._buf[i + 4 :]
                if b"content-type" in head.lower() or b"--" in head:
                    break
                continue
            self._buf += self._recv()
        length = None
        for line in head.split(b"\r\n"):
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                try:
                    length = int(v.strip())
                except ValueError:
                    length = None
        try:
            if length is not None:
                while len(self._buf) < length:
                    self._buf += self._recv()
                body, self._buf = self._buf[:length], self._buf[length:]
            else:  # no length: the body runs to the next boundary
                marker = b"--" + (self._boundary or "").encode()
                while True:
                    j = self._buf.find(marker)
                    if j >= 0:
                        body, self._buf = self._buf[:j].rstrip(b"\r\n"), self._buf[j:]
                        break
                    try:
                        self._buf += self._recv()
                    except StreamStalled:
                        whole = self._buf.rstrip(b"\r\n")
                        if whole.startswith(b"\xff\xd8") and whole.endswith(b"\xff\xd9"):
                            self._buf = b""  # the last part before the server closed: complete
                            return whole, ""
                        raise
        except StreamStalled as exc:
            exc.partial = True  # the frame's headers came, its data did not
            raise
        if not (body.startswith(b"\xff\xd8") and body.rstrip(b"\r\n").endswith(b"\xff\xd9")):
            return None, "incomplete JPEG"
        return body, ""

    def close(self) -> None:
        try:
            self._conn.close()
        except OSError:  # pragma: no cover
            pass


class _OpenCVConnection:
    """RTSP (and other URLs) through OpenCV's FFmpeg backend, with timeouts."""

    def __init__(self, url: str, timeout: float) -> None:
        ms = int(timeout * 1000)
        with quiet_opencv():
            self._cap = cv2.VideoCapture(
                url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            )
        if not self._cap.isOpened():
            self._cap.release()
            raise StreamStalled("cannot open the stream")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps < 240 else None

    def read(self) -> tuple[np.ndarray | None, str]:
        ok, img = self._cap.read()
        if not ok or img is None:
            raise StreamStalled("no frame within the read timeout")
        return img, ""

    def close(self) -> None:
        self._cap.release()


class quiet_opencv:
    """Silence OpenCV's own log lines (device probing prints several) inside a ``with``."""

    def __enter__(self) -> "quiet_opencv":
        self._old = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        return self

    def __exit__(self, *exc: object) -> None:
        cv2.utils.logging.setLogLevel(self._old)


class StreamSource(FrameSource):
    """A network camera that reconnects after stalls (see the module docstring).

    Args:
        url: ``http(s)://`` (MJPEG or snapshot JPEG; other content through OpenCV)
            or ``rtsp://`` (OpenCV / FFmpeg).
        stall_timeout_s: a read waiting this long is a stall (reconnect).
        lost_after_s: no frame for this long ends the source (``camera lost``).
    """

    kind = "stream"
    live = True

    def __init__(
        self,
        url: str,
        *,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        lost_after_s: float = LOST_AFTER_S,
        connect_first: bool = True,
    ) -> None:
        super().__init__(_redact(url))
        self.url = url
        self.stall_timeout_s, self.lost_after_s = float(stall_timeout_s), float(lost_after_s)
        self.net = StreamStats()
        self._conn: _Connection | None = None
        self._t0 = time.monotonic()
        self._last_frame = self._t0
        self._index = 0
        self._reading = False
        self.protocol = "rtsp" if url.lower().startswith("rtsp") else "http"
        if connect_first:
            try:
                self._connect()
            except StreamStalled as exc:
                raise CaptureError(
                    f"cannot open stream {self.description}: {exc} (check the URL and that the camera is up)"
                ) from exc

    def _connect(self) -> None:
        if self.protocol == "http":
            conn = _HttpConnection(self.url, self.stall_timeout_s)
            if conn.kind == "other":  # e.g. a video file served over HTTP
                conn.close()
                conn = _OpenCVConnection(self.url, self.stall_timeout_s)  # type: ignore[assignment]
            self.protocol_detail = getattr(conn, "kind", "opencv")
        else:
            conn = _OpenCVConnection(self.url, self.stall_timeout_s)  # type: ignore[assignment]
            self.protocol_detail = "opencv"
        if isinstance(conn, _OpenCVConnection) and conn.fps:
            self.fps = conn.fps
        self._conn = conn

    def _reconnect(self) -> bool:
        """Close and open again until it works or the source is lost; False when lost."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        while time.monotonic() - self._last_frame < self.lost_after_s:
            try:
                self._connect()
                self.net.reconnects += 1
                log.warning("%s: reconnected (%d so far)", self.description, self.net.reconnects)
                return True
            except StreamStalled:
                time.sleep(RECONNECT_PAUSE_S)
        return False

    def read(self) -> Frame | None:
        if self.end_reason is not None:
            return None
        if not self._reading:  # the silence clock starts with the first read, not at opening
            self._reading = True
            self._t0 = self._last_frame = time.monotonic()
        while True:
            if time.monotonic() - self._last_frame >= self.lost_after_s:
                self.end_reason = CAMERA_LOST
                return None
            if self._conn is None and not self._reconnect():
                self.end_reason = CAMERA_LOST
                return None
            try:
                payload, why = self._conn.read()  # type: ignore[union-attr]
            except StreamStalled as exc:
                self.net.stalls += 1
                log.warning("%s: stalled (%s); reconnecting", self.description, exc)
                if exc.partial:
                    self.net.drop(self._index, time.monotonic() - self._t0, f"cut short: {exc}")
                    self._index += 1
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                continue
            t = time.monotonic() - self._t0
            if isinstance(payload, np.ndarray):
                img = payload
            elif payload is None:
                img = None
            else:
                img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
                why = why or ("undecodable JPEG" if img is None else "")
            index = self._index
            self._index += 1
            if img is None:
                self.net.drop(index, t, why or "undecodable")
                log.warning("%s: frame %d dropped (%s)", self.description, index, why)
                continue
            self._last_frame = time.monotonic()
            self.net.frames += 1
            return Frame(index, t, img)

    def stats(self) -> dict[str, Any]:
        return self.net.to_dict() | {
            "protocol": self.protocol,
            "stall_timeout_s": self.stall_timeout_s,
            "lost_after_s": self.lost_after_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"stream": self.stats()}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _redact(url: str) -> str:
    """The URL without its password, for logs and summaries."""
    u = urllib.parse.urlsplit(url)
    if u.password:
        netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
        return urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
    return url
