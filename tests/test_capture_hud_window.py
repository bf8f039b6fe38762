"""The HUD drawn in a real window (OpenCV's Qt highgui) on an X server (Xvfb), screenshotted.

``.ci/run`` installs Xvfb (Debian: xvfb). The capture runs in a child process with
``DISPLAY`` pointing at a fresh Xvfb; the screenshot (PIL's X11 grab) must show the
window with the HUD's overlays: the patch outline (cyan, detected), the crop box
(yellow) and the text panels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import REPO


@pytest.fixture()
def xvfb():
    exe = shutil.which("Xvfb")
    assert exe, "Xvfb is not installed (Debian: apt-get install xvfb; .ci/run installs it)"
    r, w = os.pipe()
    proc = subprocess.Popen(
        [exe, "-displayfd", str(w), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    with os.fdopen(r) as fh:
        display = ":" + fh.readline().strip()
    try:
        yield display
    finally:
        proc.terminate()
        proc.wait(timeout=10)


SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from PIL import ImageGrab
    from conftest import card
    from test_capture_helpers import TARGET, printed, video
    from patchlab.capture.loop import CaptureConfig, run_capture
    from patchlab.capture.sources import open_source
    from patchlab.models import load_model

    model = load_model(card("resnet20"))
    layout = printed()[0]
    shots = []

    def on_batch(records):
        if not shots and records[-1]["index"] >= 10 and records[-1]["pose"]:
            for _ in range(20):  # let the window paint (a busy machine takes longer): up to ~6 s
                time.sleep(0.3)
                img = ImageGrab.grab(xdisplay={display!r})
                if (np.asarray(img.convert("L")) > 0).mean() > 0.1:
                    break
            shots.append((records[-1]["pose_source"], img))

    run_capture(open_source(str(video().video), realtime=True), [model], {out!r},
                CaptureConfig(target=TARGET, hud=True, batch_size=1, max_frames=24), layout=layout,
                on_batch=on_batch)
    src, img = shots[0]
    img.save({png!r})
    print("SOURCE", src)
""")


def _near(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(img.astype(int) - np.array(rgb)).max(-1) <= tol).sum())


def test_hud_window_under_xvfb_shows_the_overlays(tmp_path, xvfb):
    png = tmp_path / "hud.png"
    env = dict(os.environ, DISPLAY=xvfb, QT_QPA_PLATFORM="xcb")
    code = SCRIPT.format(tests=str(REPO / "tests"), display=xvfb, out=str(tmp_path / "cap"), png=str(png))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    shot = np.asarray(Image.open(png).convert("RGB"))
    assert shot.shape == (600, 800, 3)
    window = shot.max(-1) > 0
    assert window.mean() > 0.1  # a window is on the (otherwise black) screen
    source = r.stdout.split("SOURCE")[-1].strip()
    outline = (0, 200, 230) if source == "detected" else (255, 220, 0)  # hud.py: cyan detected, yellow tracked
    assert _near(shot, outline) > 50, "the patch outline is not in the screenshot"
    assert _near(shot, (255, 220, 0)) > 50, "the crop box is not in the screenshot"
    assert _near(shot, (255, 255, 255), tol=10) > 50  # the HUD's text
