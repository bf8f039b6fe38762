"""Shared test data for the capture/simulate/eval-physical/report tests, made once per session.

A printed layout of a random 64x64 patch (as ``patchlab print patch`` writes it), a
fake optimiser run folder, and short simulated videos of it in front of real
CIFAR-10 test photographs, each cached so every test module reuses them.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import CIFAR_TEST

_TMP = Path(tempfile.mkdtemp(prefix="patchlab-capture-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
TARGET = "cat"


def fake_run(root: Path, *, size: int = 64, seed: int = 0, target: str = TARGET, history: bool = True) -> Path:
    """An optimiser run folder as patchlab/runs.py describes it, with a transfer.json."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(img).save(root / "patch.png")
    np.save(root / "patch.npy", img.transpose(2, 0, 1).astype(np.float32) / 255.0)
    hist = (
        [
            {
                "step": s,
                "loss": 3.0 * np.exp(-s / 40) + 0.1,
                "terms": {"ot": 2.5 * np.exp(-s / 40), "tv": 0.1},
                "tsuc": min(1.0, s / 120),
            }
            for s in range(0, 200, 10)
        ]
        if history
        else []
    )
    run = {
        "run_id": root.name,
        "status": "finished",
        "target_class": target,
        "target_index": 3,
        "seed": seed,
        "config": {"loss": "ot", "steps": 200, "patch_size": size, "frac": 0.1, "placement": "side"},
        "command": ["patchlab", "optimize", "--source", "resnet20.json", "--target", target, "--out", str(root)],
        "sources": [{"name": "cifar10-resnet20", "ref": "resnet20.json"}],
        "layers": {},
        "patch": {"pixels": [size, size], "shape": "square", "frac": 0.1, "side_px": 10},
        "data": {"root": str(CIFAR_TEST), "n_images": 500, "image_size": [32, 32]},
        "history": hist,
        "versions": {"patchlab": "0.1.0", "torch": "2"},
        "started": "2025-01-01T00:00:00",
        "finished": "2025-01-01T00:10:00",
        "seconds": 600,
    }
    (root / "run.json").write_text(json.dumps(run))
    transfer = {
        "run_id": root.name,
        "target_class": target,
        "placement": "side",
        "models": [
            {
                "name": "cifar10-resnet20",
                "tsuc": 0.62,
                "ci95": [0.55, 0.69],
                "clean_accuracy": 0.81,
                "untargeted_error": 0.7,
                "n": 180,
                "is_source": True,
            },
            {
                "name": "cifar10-vit_tiny_p4",
                "tsuc": 0.21,
                "ci95": [0.16, 0.28],
                "clean_accuracy": 0.80,
                "untargeted_error": 0.4,
                "n": 180,
                "is_source": False,
            },
        ],
    }
    (root / "transfer.json").write_text(json.dumps(transfer))
    return root


@functools.lru_cache(maxsize=None)
def run_dir() -> Path:
    return fake_run(_TMP / "run-0001")


@functools.lru_cache(maxsize=None)
def printed():
    """``(layout, layout_path, patch image)`` of the run's patch printed at 50 mm."""
    from patchlab.layout import load_layout
    from patchlab.print.sheets import load_patch_source, make_patch_pdf

    src = load_patch_source(run_dir())
    res = make_patch_pdf(src, size_mm=50, date="2025-01-02")
    _, lay = res.write(_TMP / "patch.pdf")
    return load_layout(lay), lay, src.image


@functools.lru_cache(maxsize=None)
def video(frames: int = 30, seed: int = 0, control: str | None = None, ext: str = ".mp4"):
    """A simulated video of the printed patch; returns the :class:`SimResult`."""
    from patchlab.capture.simulate import SimConfig, simulate_capture

    layout, _, img = printed()
    name = f"sim-{frames}-{seed}-{control or 'patch'}{ext}"
    return simulate_capture(
        img,
        layout,
        CIFAR_TEST,
        _TMP / name,
        config=SimConfig(frames=frames, seed=seed, control=control, scene_frames=15),
        target_class=TARGET,
    )


@functools.lru_cache(maxsize=None)
def capture(control: str | None = None, camera: bool = True) -> Path:
    """The short video (or its control) scored by resnet20 with the layout (and the
    simulator's camera, so distances and angles are measured)."""
    import torch

    from patchlab.capture.loop import CaptureConfig, run_capture
    from patchlab.capture.simulate import default_camera, read_truth
    from patchlab.capture.sources import open_source
    from patchlab.models import load_model
    from conftest import card

    res = video(control=control)
    layout, lay_path, _ = printed()
    cam = (default_camera((640, 480)), np.zeros(5)) if camera else None
    out = _TMP / f"capture-{control or 'patch'}-{'cam' if camera else 'nocam'}"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_capture(
            open_source(str(res.video)),
            [load_model(card("resnet20"))],
            out,
            CaptureConfig(target=TARGET, batch_size=8, sample_every=5),
            layout=layout,
            layout_path=str(lay_path),
            camera=cam,
            camera_path="simulator camera" if camera else None,
            truth=read_truth(res.truth),
            command=["patchlab", "capture", "run", "--source", str(res.video)],
        )
    finally:
        torch.set_num_threads(old)
    return out


def tmp_root() -> Path:
    return _TMP


def test_helpers_make_a_run_folder_and_a_video():
    from patchlab.runs import read_patch, read_run

    run = read_run(run_dir())
    assert run["target_class"] == TARGET and len(run["history"]) == 20
    assert read_patch(run_dir()).shape == (3, 64, 64)
    res = video()
    assert res.video.is_file() and res.frames == 30
