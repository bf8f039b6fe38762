"""Shared test data for the capture/simulate/eval-physical/report tests, made once per session.

A real short optimiser run (:func:`conftest.short_run`), its 64x64 patch printed (as
``patchlab print patch`` writes it), and short simulated videos of it in front of real
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

from conftest import CIFAR_TEST, short_run

_TMP = Path(tempfile.mkdtemp(prefix="patchlab-capture-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
TARGET = "cat"


def run_dir() -> Path:
    """The session's real short optimiser run (:func:`conftest.short_run`: target ``cat``,
    a 64x64 patch, with its ``transfer.json``)."""
    return short_run()


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
    from patchlab.runs import RunRecord, load_run, read_patch
    from patchlab.transfer import TransferResult

    run = load_run(run_dir())
    assert run.target_class == TARGET and run.status == "finished" and len(run.history) == run.steps == 3
    assert read_patch(run_dir()).shape == (3, 64, 64)
    for cls, name in ((RunRecord, "run.json"), (TransferResult, "transfer.json")):  # objects read back what was written
        d = json.loads((run_dir() / name).read_text())
        assert cls.from_dict(d).to_dict() == d
    t = TransferResult.from_dict(json.loads((run_dir() / "transfer.json").read_text()))
    assert t.command[:3] == ["patchlab", "eval", "transfer"] and [m.is_source for m in t.models] == [True, False]
    res = video()
    assert res.video.is_file() and res.frames == 30
