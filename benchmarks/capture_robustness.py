"""The capture loop's ends at acceptance scale: truncated video, folder with non-image
files, unplugged camera, Ctrl-C -- each must leave a complete log and summary.

    .venv/bin/python benchmarks/capture_robustness.py [--frames 300]

Simulates one 640x480 video, derives each case from it, runs ``patchlab capture``
on it with three shared CIFAR-10 models and prints, per case: frames in the
source, lines in ``frames.jsonl``, frames in ``summary.json``, its status, and
whether the log is complete (every line valid JSON, indices strictly increasing,
summary count = lines).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PATCHLAB_SHARED", REPO.parent / "shared"))
MODELS = [str(SHARED / "models" / "cifar10" / f"{n}.json") for n in ("resnet20", "mobilenetv2_100", "vit_tiny_p4")]


class Unplugged:
    """A 30 fps camera (replaying a video at its pace) that stops answering after ``n`` frames."""

    def __init__(self, path: Path, n: int, fps: float = 30.0):
        self.cap, self.n, self.k, self.fps = cv2.VideoCapture(str(path)), n, 0, fps
        self.t0 = time.monotonic()

    def read(self):
        self.k += 1
        if self.k > self.n:
            return False, None
        lag = self.k / self.fps - (time.monotonic() - self.t0)
        if lag > 0:
            time.sleep(lag)
        return self.cap.read()

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else -1.0

    def release(self):
        self.cap.release()


def check(out: Path) -> dict:
    lines = (out / "frames.jsonl").read_text().splitlines()
    recs = [json.loads(l) for l in lines]
    summ = json.loads((out / "summary.json").read_text())
    idx = [r["index"] for r in recs]
    ok = summ["frames"] == len(lines) and all(b > a for a, b in zip(idx, idx[1:])) and summ["finished"] is not None
    return {
        "lines": len(lines),
        "summary_frames": summ["frames"],
        "dropped": summ["dropped"],
        "status": summ["status"],
        "end_reason": summ["end_reason"],
        "skipped": summ["skipped"],
        "complete": ok,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args()
    import torch

    from patchlab.capture.loop import CaptureConfig, run_capture
    from patchlab.capture.simulate import SimConfig, simulate_capture
    from patchlab.capture.sources import VideoSource, open_source
    from patchlab.errors import PatchlabError
    from patchlab.models import load_model
    from patchlab.print.sheets import PatchSource, make_patch_pdf

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    work = Path(tempfile.mkdtemp(prefix="patchlab-robust-"))
    patch = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    layout = make_patch_pdf(
        PatchSource(image=patch, path="random.png", run_id="bench"), size_mm=50, date="2025-01-01"
    ).layout
    mp4 = work / "clip.mp4"
    simulate_capture(
        patch,
        layout,
        SHARED / "data" / "cifar10" / "test",
        mp4,
        config=SimConfig(frames=args.frames, seed=3),
        target_class="cat",
    )
    frames = []
    cap = cv2.VideoCapture(str(mp4))
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    models = [load_model(m) for m in MODELS]
    cfg = CaptureConfig(target="cat")
    print(
        f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {len(frames)} frames 640x480, {len(models)} models"
    )

    # 1. truncated AVI (MJPEG keeps the frames before the cut readable) and truncated MP4
    avi = work / "clip.avi"
    w = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    for f in frames:
        w.write(f)
    w.release()
    cut = work / "cut.avi"
    data = avi.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    run_capture(open_source(str(cut)), models, work / "c-truncated", cfg, layout=layout)
    print("truncated AVI (cut at 60 % of its bytes, header says", len(frames), "frames):", check(work / "c-truncated"))
    cut4 = work / "cut.mp4"
    d4 = mp4.read_bytes()
    cut4.write_bytes(d4[: len(d4) * 6 // 10])
    try:
        open_source(str(cut4))
        print("truncated MP4: opened (unexpected)")
    except PatchlabError as exc:
        print(f"truncated MP4: clear error before any output: {exc}")

    # 2. folder with a non-image file and a corrupt image
    d = work / "frames"
    d.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(d / f"{i:05d}.jpg"), f, [cv2.IMWRITE_JPEG_QUALITY, 90])
    (d / "notes.txt").write_text("camera notes")
    (d / "00150b.jpg").write_bytes(b"\xff\xd8 broken")
    run_capture(open_source(str(d)), models, work / "c-folder", cfg, layout=layout)
    print(f"folder ({len(frames)} images + notes.txt + a corrupt .jpg):", check(work / "c-folder"))

    # 3. unplugged camera: a live source that stops returning frames half way
    half = len(frames) // 2
    src = VideoSource(Unplugged(mp4, half), "camera (unplugged after %d frames)" % half, live=True)
    t0 = time.perf_counter()
    run_capture(src, models, work / "c-unplugged", cfg, layout=layout)
    print(
        f"unplugged 30 fps camera after {half} frames (run lasted {time.perf_counter() - t0:.1f} s):",
        check(work / "c-unplugged"),
    )

    # 4. Ctrl-C: SIGINT to `patchlab capture run` replaying the video live, after 100 logged frames
    out = work / "c-sigint"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "patchlab",
            "capture",
            "run",
            "--source",
            str(mp4),
            "--realtime",
            "--target",
            "cat",
            "--out",
            str(out),
            "--no-hud",
            "--models",
            *MODELS,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = out / "frames.jsonl"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300 and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 100:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    print(f"Ctrl-C after >= 100 frames (exit code {proc.returncode}):", check(out))
    print("  " + text.strip().splitlines()[-2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
