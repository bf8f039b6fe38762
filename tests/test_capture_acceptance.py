"""Issue 5 acceptance on a simulated 640x480 video of 300 frames with three shared CIFAR-10 models.

Every frame is logged; the marker pose matches the simulator's ground truth
(apparent size within 5 %, in-plane angle within 3 degrees) on every frame where
the markers give a pose. The speed bar (keeping up with a 30 fps camera) is measured by
``benchmarks/capture_loop.py`` (the same loop against the bare decode rate), not asserted here:
a timed unit test fails whenever the test machine is busy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import CIFAR_TEST, card
from patchlab.capture.loop import CaptureConfig, load_capture, run_capture
from patchlab.capture.simulate import SimConfig, read_truth, simulate_capture
from patchlab.capture.sources import open_source
from patchlab.utils import default_threads
from test_capture_helpers import TARGET, printed

MODELS = ("resnet20", "mobilenetv2_100", "vit_tiny_p4")


@pytest.mark.slow
def test_300_frames_three_models_pose_and_rate(tmp_path):
    from patchlab.models import load_model

    layout, _, img = printed()
    sim = simulate_capture(
        img, layout, CIFAR_TEST, tmp_path / "clip.mp4", config=SimConfig(frames=300, seed=3), target_class=TARGET
    )
    assert sim.frames == 300
    truth = read_truth(sim.truth)
    old = torch.get_num_threads()
    torch.set_num_threads(default_threads())
    try:
        models = [load_model(card(m)) for m in MODELS]
        summ = run_capture(
            open_source(str(sim.video)),
            models,
            tmp_path / "cap",
            CaptureConfig(target=TARGET),
            layout=layout,
            truth=truth,
        )
    finally:
        torch.set_num_threads(old)
    _, frames = load_capture(tmp_path / "cap")
    assert summ.frames == len(frames) == 300 and [f["index"] for f in frames] == list(range(300))
    assert all(set(f["models"]) == {m.name for m in models} for f in frames)
    size_err, angle_err = [], []
    for f in frames:
        if f["pose"]:
            t = truth[f["index"]]
            size_err.append(abs(f["pose"]["size_px"] / t["size_px"] - 1))
            angle_err.append(abs((f["pose"]["angle_deg"] - t["angle_deg"] + 180) % 360 - 180))
    visible = sum(t["markers_in_frame"] for t in truth)
    assert len(size_err) >= 0.7 * visible  # the markers give a pose on most frames where they are in view
    assert max(size_err) < 0.05 and max(angle_err) < 3.0, (max(size_err), max(angle_err))
    assert np.mean(size_err) < 0.01
    assert summ.fps > 0  # recorded in the summary; the 30 fps bar lives in benchmarks/capture_loop.py
