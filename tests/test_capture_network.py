"""Network cameras: an MJPEG stream served on 127.0.0.1, scored live through a stall and a reconnect."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import pytest
import torch
from typer.testing import CliRunner

from conftest import card
from patchlab.capture.errors import CaptureError
from patchlab.capture.loop import CaptureConfig, run_capture
from patchlab.capture.netsources import StreamSource, _redact
from patchlab.capture.sources import open_source
from patchlab.captures import load_capture
from patchlab.cli import app
from test_capture_helpers import TARGET, printed, video

BOUNDARY = "patchlabframe"


class MjpegServer:
    """A camera on 127.0.0.1: sends ``frames`` JPEGs at ``fps`` to its newest connection (an
    older one is dropped, as a camera serving one client does); after ``stall_at`` frames it
    goes silent for ``stall_s``; frame ``cut_at`` is cut off halfway and the connection
    closed; after the last frame the server shuts down. Counts what it sent."""

    def __init__(
        self,
        jpegs: list[bytes],
        *,
        fps: float = 30.0,
        stall_at: int | None = None,
        stall_s: float = 3.0,
        cut_at: int | None = None,
        with_length: bool = True,
    ) -> None:
        self.jpegs, self.fps = jpegs, fps
        self.stall_at, self.stall_s, self.cut_at = stall_at, stall_s, cut_at
        self.with_length = with_length
        self.next = 0
        self.sent = 0  # whole frames written
        self.partial = 0  # frames cut off inside
        self.connections = 0
        self.lock = threading.Lock()
        self.stall_until = 0.0
        self.done = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                with owner.lock:
                    owner.connections += 1
                    gen = owner.connections
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                owner.serve(self, gen)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/video.mjpg"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, h, gen: int) -> None:
        while not self.done.is_set():
            with self.lock:
                if gen != self.connections:  # a newer client connection took over
                    return
                if self.stall_at is not None and self.next == self.stall_at and not self.stall_until:
                    self.stall_until = time.monotonic() + self.stall_s
                wait = self.stall_until - time.monotonic()
            if wait > 0:  # the camera hangs: nothing on any connection
                time.sleep(min(wait, 0.05))
                continue
            with self.lock:
                if gen != self.connections:
                    return
                k = self.next
                if k >= len(self.jpegs):
                    self.done.set()
                    break
                self.next += 1
            data = self.jpegs[k]
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
            head += f"Content-Length: {len(data)}\r\n\r\n" if self.with_length else "\r\n"
            try:
                if k == self.cut_at:
                    h.wfile.write(head.encode() + data[: len(data) // 2])
                    h.wfile.flush()
                    with self.lock:
                        self.partial += 1
                    h.close_connection = True
                    h.connection.shutdown(socket.SHUT_RDWR)
                    return
                h.wfile.write(head.encode() + data + b"\r\n")
                h.wfile.flush()
            except OSError:  # the client went away before this frame: it was never sent
                with self.lock:
                    self.next = min(self.next, k)
                return
            with self.lock:
                self.sent += 1
            time.sleep(1.0 / self.fps)
        if self.done.is_set():
            threading.Thread(target=self.httpd.shutdown, daemon=True).start()

    def __enter__(self) -> "MjpegServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _jpegs(n: int) -> list[bytes]:
    cap = cv2.VideoCapture(str(video().video))
    out = []
    while len(out) < n:
        ok, img = cap.read()
        if not ok:
            cap.release()
            cap = cv2.VideoCapture(str(video().video))
            continue
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    cap.release()
    return out


@pytest.fixture(scope="module")
def model():
    from patchlab.models import load_model

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(card("resnet20"))
    torch.set_num_threads(old)


def test_mjpeg_live_stall_and_reconnect_every_frame_accounted(tmp_path, model):
    from patchlab.capture.loop import CAPTURE_VERSION_MODULES
    from patchlab.utils import versions

    layout, _, _ = printed()
    versions(CAPTURE_VERSION_MODULES)  # imported once here, so the capture starts reading at once
    jpegs = _jpegs(70)
    with MjpegServer(jpegs, stall_at=25, stall_s=3.0, cut_at=45) as srv:
        src = StreamSource(srv.url, stall_timeout_s=0.8, lost_after_s=4.5)
        t0 = time.monotonic()
        summ = run_capture(
            src, [model], tmp_path / "c", CaptureConfig(target=TARGET, crop="roi", batch_size=4), layout=layout
        )
        took = time.monotonic() - t0
    saved, frames = load_capture(tmp_path / "c")
    st = saved["stream"]
    assert srv.sent == 69 and srv.partial == 1  # the cut frame is never resent
    # every frame the server sent is logged or counted as dropped
    assert summ.frames + st["dropped"] + summ.dropped == srv.sent + srv.partial, (summ.frames, st, summ.dropped)
    assert summ.frames == len(frames) >= 60
    assert any("cut short" in d["reason"] for d in st["dropped_frames"])
    # the 3 s stall and the broken connection did not end the capture: it ran to the end
    assert st["stalls"] >= 2 and st["reconnects"] >= 2 and srv.connections >= 3
    assert max(f["index"] for f in frames) >= 65 and summ.end_reason == "camera lost"
    assert took > 3.0 + 4.5 - 0.5
    assert summ.pose_sources["detected"] + summ.pose_sources["tracked"] > 0
    assert saved["source"]["kind"] == "stream"


def test_mjpeg_without_content_length(tmp_path):
    jp = _jpegs(6)
    with MjpegServer(jp, with_length=False) as srv:
        src = StreamSource(srv.url, stall_timeout_s=0.5, lost_after_s=1.0)
        got = list(src)
    assert len(got) == 6 and got[0].image.shape == (480, 640, 3)
    assert src.end_reason == "camera lost" and src.net.dropped == 0


def test_stream_errors_are_one_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CaptureError, match="cannot open stream http://127.0.0.1"):
        open_source(f"http://127.0.0.1:{port}/x.mjpg", stall_timeout_s=0.3)
    assert _redact("http://user:secret@cam.local:8080/v") == "http://user:***@cam.local:8080/v"


def test_source_0_without_a_camera_is_one_clear_line(tmp_path):
    import sys
    from pathlib import Path

    if not sys.platform.startswith("linux") or Path("/dev/video0").exists():
        pytest.skip("this machine has a camera 0")
    r = CliRunner().invoke(
        app,
        [
            "capture",
            "run",
            "--source",
            "0",
            "--target",
            TARGET,
            "--out",
            str(tmp_path / "c"),
            "--models",
            card("resnet20"),
        ],
    )
    assert r.exit_code == 1
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    text = " ".join(ln.strip() for ln in lines)
    assert text.startswith("error: cannot open camera 0: no such device") and "Traceback" not in r.output
