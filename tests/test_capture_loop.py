"""patchlab.capture.loop: every frame scored and logged, whatever ends the stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import REPO, card
from patchlab.defenses import GaussianBlur, Jpeg, get_defense
from patchlab.capture.loop import (
    FRAMES_JSONL,
    SUMMARY_JSON,
    CaptureConfig,
    FrameScorer,
    crop_box,
    load_capture,
    run_capture,
)
from patchlab.capture.pose import MarkerPose
from patchlab.capture.simulate import read_truth
from patchlab.capture.sources import ImageDirSource, VideoSource, open_source
from patchlab.cli import app
from patchlab.errors import ConfigError
from test_capture_helpers import TARGET, printed, video
from test_capture_sources import FakeCamera, write_video


@pytest.fixture(scope="module")
def model():
    """resnet20, with one torch thread while these tests run: the reader thread
    takes the other core (as `patchlab capture run` sets it up)."""
    from patchlab.models import load_model

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(card("resnet20"))
    torch.set_num_threads(old)


def _check_log(out, n_expected=None):
    """The log is complete: one valid line per frame, indices in order, summary agrees."""
    summ, frames = load_capture(out)
    lines = (out / FRAMES_JSONL).read_text().splitlines()
    assert len(lines) == len(frames) == summ["frames"]
    if n_expected is not None:
        assert summ["frames"] == n_expected
    idx = [f["index"] for f in frames]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    assert summ["finished"] is not None
    return summ, frames


def test_video_every_frame_logged_with_truth_and_pose(tmp_path, model):
    res = video()
    layout, lay_path, _ = printed()
    s = run_capture(
        open_source(str(res.video)),
        [model],
        tmp_path / "c",
        CaptureConfig(target=TARGET, batch_size=4),
        layout=layout,
        layout_path=str(lay_path),
        truth=read_truth(res.truth),
    )
    summ, frames = _check_log(tmp_path / "c", 30)
    assert s.status == "finished" and s.end_reason == "end of stream" and s.truth
    f0 = frames[0]
    assert set(f0) >= {"index", "timestamp", "brightness", "crop", "crop_box", "markers", "pose", "models", "truth"}
    m = f0["models"][model.name]
    assert len(m["top5"]) == 5 and sum(p for _, p in m["top5"]) <= 1.0 + 1e-4
    assert m["p_target"] == pytest.approx(next((p for c, p in m["top5"] if c == TARGET), m["p_target"]))
    assert f0["truth"]["object_class"] == read_truth(res.truth)[0]["object_class"]
    truth = read_truth(res.truth)
    poses = [(f["pose"], truth[f["index"]]) for f in frames if f["pose"]]
    assert len(poses) >= 15 and s.frames_with_pose == len(poses)
    for p, t in poses:
        assert abs(p["size_px"] / t["size_px"] - 1) < 0.05
    hits = sum(f["models"][model.name]["hit"] for f in frames)
    assert summ["tsuc"][model.name]["successes"] == hits and summ["tsuc"][model.name]["n"] == 30
    lo, hi = summ["tsuc"][model.name]["ci95"]
    assert lo <= hits / 30 <= hi
    assert summ["layout"] == str(lay_path) and summ["models"][0]["info"]["card"] is not None
    assert sorted(p.name for p in (tmp_path / "c" / "samples").glob("*.jpg")) == ["frame_000000.jpg"]


def test_frames_of_the_target_class_do_not_count(tmp_path, model):
    res = video()
    truth = [dict(t, object_class=TARGET) if t["index"] < 10 else t for t in read_truth(res.truth)]
    s = run_capture(open_source(str(res.video)), [model], tmp_path / "c", CaptureConfig(target=TARGET), truth=truth)
    assert s.frames == 30 and s.tsuc[model.name]["n"] == 20


def test_record_writes_the_annotated_video(tmp_path, model):
    rec = tmp_path / "annotated.avi"
    run_capture(
        open_source(str(video().video)),
        [model],
        tmp_path / "c",
        CaptureConfig(target=TARGET, record=str(rec), max_frames=12),
        layout=printed()[0],
    )
    cap = cv2.VideoCapture(str(rec))
    n = 0
    first = None
    while True:
        ok, f = cap.read()
        if not ok:
            break
        first = f if first is None else first
        n += 1
    assert n == 12
    raw = cv2.VideoCapture(str(video().video)).read()[1]
    assert np.abs(first.astype(int) - raw.astype(int)).mean() > 2  # the HUD is drawn on it
    assert not list(tmp_path.glob(".*partial*"))


def test_unplugged_camera(tmp_path, model):
    src = VideoSource(FakeCamera(25, size=(160, 120)), "fake camera", live=True, lost_after_reads=5)
    s = run_capture(src, [model], tmp_path / "c", CaptureConfig(target=TARGET))
    summ, frames = _check_log(tmp_path / "c", 25)
    assert s.status == "camera lost" and summ["end_reason"] == "camera lost"
    assert all(f["pose"] is None and f["crop"] == "center" for f in frames)


def test_folder_with_a_non_image_file(tmp_path, model):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(7):
        cv2.imwrite(str(d / f"{i:03d}.jpg"), np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    (d / "README.txt").write_text("film notes")
    s = run_capture(ImageDirSource(d), [model], tmp_path / "c", CaptureConfig(target=TARGET))
    summ, frames = _check_log(tmp_path / "c", 7)
    assert summ["skipped"] == ["README.txt"] and s.status == "finished"
    assert [f["name"] for f in frames] == [f"{i:03d}.jpg" for i in range(7)]


def test_truncated_video(tmp_path, model):
    p = write_video(tmp_path / "v.avi", 40)
    data = p.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) * 6 // 10])
    s = run_capture(open_source(str(tmp_path / "cut.avi")), [model], tmp_path / "c", CaptureConfig(target=TARGET))
    summ, _ = _check_log(tmp_path / "c")
    assert s.status == "truncated" and 5 < s.frames < 40
    assert summ["source"]["frame_count"] == 40


def test_sigint_stops_cleanly_in_process(tmp_path, model):
    """Ctrl-C during a run: the batch in hand is logged, then the summary says interrupted."""
    calls = []

    def on_batch(records):
        calls.append(len(records))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    s = run_capture(
        open_source(str(video().video)),
        [model],
        tmp_path / "c",
        CaptureConfig(target=TARGET, batch_size=4),
        on_batch=on_batch,
    )
    summ, frames = _check_log(tmp_path / "c")
    assert s.status == "interrupted" and summ["end_reason"] == "interrupted"
    assert sum(calls) == s.frames < 30
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_stop_event_and_existing_capture(tmp_path, model):
    stop = threading.Event()
    s = run_capture(
        open_source(str(video().video)),
        [model],
        tmp_path / "c",
        CaptureConfig(target=TARGET, batch_size=2),
        stop=stop,
        on_batch=lambda r: stop.set(),
    )
    assert s.frames == 2 and s.status == "interrupted"
    with pytest.raises(ConfigError, match="already holds a capture"):
        run_capture(open_source(str(video().video)), [model], tmp_path / "c", CaptureConfig(target=TARGET))


def test_a_crash_keeps_what_was_scored(tmp_path, model):
    def boom(records):
        if records[0]["index"] >= 8:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        run_capture(
            open_source(str(video().video)),
            [model],
            tmp_path / "c",
            CaptureConfig(target=TARGET, batch_size=4),
            on_batch=boom,
        )
    summ, frames = _check_log(tmp_path / "c", 12)
    assert summ["status"] == "error" and "disk on fire" in summ["error"]


def _pose(size, cx, cy):
    q = np.array(
        [
            [cx - size / 2, cy - size / 2],
            [cx + size / 2, cy - size / 2],
            [cx + size / 2, cy + size / 2],
            [cx - size / 2, cy + size / 2],
        ]
    )
    return MarkerPose(copy=0, marker_ids=(0, 1, 2), quad_px=q, size_px=size, angle_deg=0.0, center_px=(cx, cy))


def test_crop_boxes():
    shape = (480, 640, 3)
    assert crop_box(shape, "full", None, 0.1) == ((0, 0, 640, 480), "full")
    assert crop_box(shape, "center", _pose(50, 10, 10), 0.1) == ((80, 0, 560, 480), "center")
    (x0, y0, x1, y1), mode = crop_box(shape, "roi", _pose(60, 300, 200), 0.09)
    assert mode == "roi" and x1 - x0 == y1 - y0 == 200 and (x0 + x1) / 2 == 300 and (y0 + y1) / 2 == 200
    (x0, y0, x1, y1), _ = crop_box(shape, "roi", _pose(60, 20, 470), 0.09)  # pushed inside the frame
    assert (x0, y1) == (0, 480) and x1 - x0 == 200
    assert crop_box(shape, "roi", None, 0.1) == ((80, 0, 560, 480), "center (no markers)")
    with pytest.raises(ConfigError, match="--crop"):
        CaptureConfig(target="cat", crop="middle")


def test_defenses_change_the_input_and_unknown_is_an_error():
    """The capture loop's specs (none, blur[:SIGMA], jpeg[:QUALITY]) through the core registry:
    the same filters the loop's own registry had (OpenCV on the uint8 crop), errors in one line."""
    crops = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    u8 = lambda t: (t * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # noqa: E731
    assert torch.equal(get_defense("none")(x), x)
    blur, jpeg = get_defense("blur:1.5"), get_defense("jpeg:30")
    assert isinstance(blur, GaussianBlur) and blur.sigma == 1.5 and isinstance(jpeg, Jpeg) and jpeg.quality == 30
    b, j = u8(blur(x)), u8(jpeg(x))
    assert b.shape == j.shape == crops.shape
    assert b.astype(float).std() < 0.6 * crops.astype(float).std()  # noise is smoothed away
    ref = cv2.GaussianBlur(crops[0], (0, 0), 1.5)
    assert np.abs(b[0].astype(int) - ref.astype(int)).max() <= 1  # float blur vs OpenCV's uint8 rounding
    codec = cv2.imdecode(
        cv2.imencode(".jpg", cv2.cvtColor(crops[0], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 30])[1],
        cv2.IMREAD_COLOR,
    )
    assert np.array_equal(j[0], cv2.cvtColor(codec, cv2.COLOR_BGR2RGB))
    assert 5 < np.abs(j.astype(int) - crops.astype(int)).mean() < 60
    with pytest.raises(ConfigError, match="unknown defence 'sharpen'"):
        get_defense("sharpen")
    with pytest.raises(ConfigError, match="bad value for jpeg quality"):
        get_defense("jpeg:high")
    with pytest.raises(ConfigError, match="quality"):
        get_defense("jpeg:0")
    with pytest.raises(ConfigError, match="unknown defence"):
        CaptureConfig(target="cat", defense="sharpen")


def test_scorer_applies_the_defense_once_and_names_it(model):
    crops = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    sc = FrameScorer([model], TARGET, defense="median:5")
    assert sc.names == [model.name + "+median:k=5"]
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    from patchlab.defenses import defend

    ref = torch.softmax(defend(model, "median:5")(x), 1)[:, model.labels.index(TARGET)]
    got = [r[sc.names[0]]["p_target"] for r in sc.score(crops)]
    assert got == pytest.approx(ref.tolist(), abs=1e-4)
    plain = [r[model.name]["p_target"] for r in FrameScorer([model], TARGET).score(crops)]
    assert got != pytest.approx(plain, abs=1e-4)  # the defence changed what the model saw


def test_scorer_batches_match_single_frames(model):
    crops = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    sc = FrameScorer([model, model], TARGET)
    assert sc.names == [model.name, model.name + "#2"]
    batch = sc.score(crops)
    one = [sc.score(crops[i : i + 1])[0] for i in range(5)]
    for a, b in zip(batch, one):
        assert a[model.name]["top5"][0][0] == b[model.name]["top5"][0][0]
        assert a[model.name]["p_target"] == pytest.approx(b[model.name]["p_target"], abs=1e-4)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    ref = torch.softmax(model(x), 1)[:, model.labels.index(TARGET)]
    assert [r[model.name]["p_target"] for r in batch] == pytest.approx(ref.tolist(), abs=1e-4)
    with pytest.raises(Exception, match="unknown class"):
        FrameScorer([model], "unicorn")


def test_cli_capture_run(tmp_path):
    res = video()
    out = tmp_path / "c"
    r = CliRunner().invoke(
        app,
        [
            "capture",
            "run",
            "--source",
            str(res.video),
            "--target",
            TARGET,
            "--out",
            str(out),
            "--models",
            card("resnet20"),
            "--layout",
            str(printed()[1]),
            "--crop",
            "roi",
            "--defense",
            "jpeg",
            "--max-frames",
            "10",
            "--no-hud",
        ],
    )
    assert r.exit_code == 0, r.output
    summ, frames = _check_log(out, 10)
    assert summ["truth"] and summ["config"]["defense"]["name"] == "jpeg"
    assert summ["config"]["defense"]["spec"] == "jpeg:quality=75" and list(summ["tsuc"]) == [
        "cifar10-resnet20+jpeg"
    ]  # the defence is named in the summary and in every model label
    assert {f["crop"] for f in frames} <= {"roi", "skipped (lost)"} and "roi" in {f["crop"] for f in frames}
    assert summ["config"]["on_lost"] == "skip" and all(f["scored"] == (f["pose"] is not None) for f in frames)
    bad = CliRunner().invoke(
        app,
        [
            "capture",
            "run",
            "--source",
            "/dev/video97",
            "--target",
            TARGET,
            "--out",
            str(tmp_path / "x"),
            "--models",
            card("resnet20"),
        ],
    )
    assert bad.exit_code == 1 and "cannot open camera /dev/video97" in bad.output
    bad = CliRunner().invoke(
        app,
        [
            "capture",
            "run",
            "--source",
            str(res.video),
            "--target",
            TARGET,
            "--out",
            str(tmp_path / "y"),
            "--models",
            card("resnet20"),
            "--defense",
            "sharpen",
        ],
    )
    assert bad.exit_code == 1 and "error: unknown defence 'sharpen'" in bad.output
    assert not (tmp_path / "y" / FRAMES_JSONL).exists()


def test_cli_ctrl_c_in_a_real_process(tmp_path):
    """SIGINT to `patchlab capture run` replaying a video live: exit 0, complete log and summary."""
    out = tmp_path / "c"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "patchlab",
            "capture",
            "run",
            "--source",
            str(video().video),
            "--realtime",
            "--batch-size",
            "1",
            "--target",
            TARGET,
            "--out",
            str(out),
            "--models",
            card("resnet20"),
            "--no-hud",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = out / FRAMES_JSONL
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        if log.exists() and len(log.read_text().splitlines()) >= 5:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    summ, frames = _check_log(out)
    assert summ["status"] == "interrupted" and 5 <= summ["frames"] < 30, output
    assert "ended: interrupted" in output
    json.loads((out / SUMMARY_JSON).read_text())
