"""patchlab.capture.sources: every kind of source ends cleanly and says why."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from patchlab.capture.errors import CaptureError
from patchlab.capture.sources import (
    CAMERA_LOST,
    END_OF_STREAM,
    MAX_FRAMES,
    TRUNCATED,
    ImageDirSource,
    ThreadedReader,
    VideoSource,
    open_source,
)


class FakeCamera:
    """A camera that delivers ``n`` frames and then stops answering (unplugged)."""

    def __init__(self, n: int, size=(64, 48)):
        self.n, self.size, self.reads, self.released = n, size, 0, False

    def read(self):
        self.reads += 1
        if self.reads > self.n:
            return False, None
        img = np.full((self.size[1], self.size[0], 3), self.reads % 256, np.uint8)
        return True, img

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_COUNT: -1.0}.get(prop, 0.0)

    def release(self):
        self.released = True


def write_video(path, n, size=(96, 64), fourcc="MJPG"):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30.0, size)
    assert w.isOpened()
    for i in range(n):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        cv2.putText(img, str(i), (5, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
        img[:, :, 2] = i * 5
        w.write(img)
    w.release()
    return path


def test_unplugged_camera_ends_as_camera_lost():
    cam = FakeCamera(12)
    src = VideoSource(cam, "fake camera", live=True, lost_after_reads=5)
    frames = list(src)
    assert [f.index for f in frames] == list(range(12))
    assert src.end_reason == CAMERA_LOST and src.read() is None
    src.close()
    assert cam.released


def test_lost_camera_is_declared_after_the_timeout_too():
    src = VideoSource(FakeCamera(3), "fake camera", live=True, lost_after_s=0.1, lost_after_reads=10**6)
    t0 = time.monotonic()
    assert len(list(src)) == 3
    assert src.end_reason == CAMERA_LOST and time.monotonic() - t0 < 2.0


def test_video_file_frames_and_timestamps(tmp_path):
    p = write_video(tmp_path / "v.avi", 20)
    src = open_source(str(p))
    frames = list(src)
    assert len(frames) == 20 and src.end_reason == END_OF_STREAM and src.frame_count == 20
    assert frames[0].image.shape == (64, 96, 3) and frames[0].image.dtype == np.uint8
    assert np.allclose([f.timestamp for f in frames], np.arange(20) / 30.0, atol=1e-3)


def test_truncated_video_ends_as_truncated(tmp_path):
    p = write_video(tmp_path / "v.avi", 40)
    data = p.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    src = open_source(str(cut))
    n = len(list(src))
    assert 5 < n < 40
    assert src.end_reason == TRUNCATED


def test_truncated_mp4_is_a_clear_error(tmp_path):
    p = write_video(tmp_path / "v.mp4", 20, fourcc="mp4v")
    data = p.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(CaptureError, match="cannot open video .*MP4 cut short"):
        open_source(str(tmp_path / "cut.mp4"))


def test_image_folder_sorted_skipping_non_images(tmp_path):
    for i in (3, 1, 2):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((8, 8, 3), i * 50, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "sub").mkdir()
    src = open_source(str(tmp_path))
    assert isinstance(src, ImageDirSource)
    frames = list(src)
    assert [f.name for f in frames] == ["img1.png", "img2.png", "img3.png"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert int(frames[1].image[0, 0, 0]) == 100
    assert sorted(src.skipped) == ["broken.jpg", "notes.txt", "sub"]
    assert src.end_reason == END_OF_STREAM


def test_unopenable_sources_are_clear_errors(tmp_path):
    with pytest.raises(CaptureError, match="cannot open camera /dev/video97"):
        open_source("/dev/video97")
    with pytest.raises(CaptureError, match="source not found"):
        open_source(str(tmp_path / "missing.mp4"))
    (tmp_path / "x.mp4").write_text("not a video")
    with pytest.raises(CaptureError, match="cannot open video"):
        open_source(str(tmp_path / "x.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptureError, match="no images"):
        open_source(str(tmp_path / "empty"))


def test_threaded_reader_is_lossless_for_files_and_stops_at_max_frames(tmp_path):
    p = write_video(tmp_path / "v.avi", 25)
    with ThreadedReader(open_source(str(p)), queue_size=4) as r:
        got = []
        while not r.finished:
            got += r.take(3)
        assert [f.index for f in got] == list(range(25)) and r.dropped == 0
    src = open_source(str(p))
    with ThreadedReader(src, max_frames=7, prepare=lambda f: f.index * 10) as r:
        got = []
        while not r.finished:
            got += r.take(100)
    assert got == [i * 10 for i in range(7)] and src.end_reason == MAX_FRAMES


def test_threaded_reader_drops_the_oldest_live_frames_when_behind():
    src = VideoSource(FakeCamera(60), "fake camera", live=True, lost_after_reads=3)
    with ThreadedReader(src, queue_size=4) as r:
        time.sleep(0.3)  # the scorer is busy; the camera keeps going
        got = []
        while not r.finished:
            got += r.take(10)
    idx = [f.index for f in got]
    assert r.dropped > 0 and len(idx) + r.dropped == 60
    assert idx == sorted(idx) and idx[-1] == 59
    assert src.end_reason == CAMERA_LOST


def test_reader_errors_reach_the_consumer(tmp_path):
    p = write_video(tmp_path / "v.avi", 5)

    def boom(frame):
        raise RuntimeError("prepare failed")

    with ThreadedReader(open_source(str(p)), prepare=boom) as r:
        assert r.take(4) == [] and r.finished
        assert isinstance(r.error, RuntimeError)
