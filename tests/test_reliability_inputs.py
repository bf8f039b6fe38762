"""Reliability, family 5: inputs that could hang or mislead.

Shared mechanisms under test: the CLI boundary refuses a pipe or socket given for any path
(:func:`patchlab.checks.check_input_path`; the readers refuse what is not a regular file:
:func:`patchlab.utils.read_json_object`, :func:`patchlab.models.load.read_state_dict`); the
output-file checks run before the work (:data:`patchlab.cli.FILE_WRITERS`); a camera
calibration from degenerate views is refused (:func:`patchlab.calib.camera.calibrate_camera`);
weights errors never pass on torch's advice to load with ``weights_only=False``; no message
suggests an option that no command has.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from conftest import CIFAR_TEST, REPO, card, copy_short_run
from patchlab.calib.camera import calibrate_camera
from patchlab.cli import app
from patchlab.errors import DataError, ModelLoadError
from patchlab.models import load_model
from patchlab.models.load import read_state_dict
from test_capture_helpers import TARGET, video

R20 = card("resnet20")
HANG_S = 10.0


def invoke_with_fifo(args, fifo: Path):
    """Run the command; if it is still waiting after HANG_S seconds (blocked opening the pipe),
    unblock it by opening the pipe's other end, and fail."""
    box = {}

    def target():
        box["res"] = CliRunner().invoke(app, [str(a) for a in args])

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(HANG_S)
    if t.is_alive():
        for _ in range(3):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(HANG_S)
        pytest.fail(f"{' '.join(map(str, args))} hung on a pipe")
    return box["res"]


@pytest.fixture
def fifo(tmp_path):
    p = tmp_path / "pipe.json"
    os.mkfifo(p)
    return p


def _fifo_cases(tmp: Path, fifo: Path) -> dict[str, list]:
    run = copy_short_run(tmp / "run")
    out = tmp / "out"
    return {
        "capture --source": ["capture", "run", "--source", fifo, "--models", R20, "--target", TARGET, "--out", out],
        "capture --layout": [
            "capture",
            "run",
            "--source",
            video().video,
            "--models",
            R20,
            "--target",
            TARGET,
            "--layout",
            fifo,
            "--out",
            out,
        ],
        "capture --camera": [
            "capture",
            "run",
            "--source",
            video().video,
            "--models",
            R20,
            "--target",
            TARGET,
            "--camera",
            fifo,
            "--out",
            out,
        ],
        "model card": ["models", "check", fifo, "--data", CIFAR_TEST],
        "models --data": ["models", "check", R20, "--data", fifo],
        "optimize --data": ["optimize", "--source", R20, "--data", fifo, "--target", "frog", "--out", out],
        "report RUN": ["report", fifo, "--out", tmp / "r.html"],
        "report --matrix": ["report", run, "--matrix", fifo, "--out", tmp / "r.html"],
        "print patch RUN": ["print", "patch", fifo, "--size-mm", "30", "--out", tmp / "p.pdf"],
        "eval transfer RUN": ["eval", "transfer", fifo, "--models", R20],
        "eval physical CAPTURE": ["eval", "physical", fifo],
        "simulate --patch": ["simulate", "capture", "--patch", fifo, "--scenes", CIFAR_TEST, "--out", tmp / "v.mp4"],
        "calib color --photo": ["calib", "color", "--photo", fifo, "--chart", fifo, "--out", tmp / "c.json"],
        "calib camera --board": ["calib", "camera", "--board", fifo, "--images", tmp, "--out", tmp / "k.json"],
        "world train --data": ["world", "train", "--data", fifo, "--out", out],
    }


CASES = [
    "capture --source",
    "capture --layout",
    "capture --camera",
    "model card",
    "models --data",
    "optimize --data",
    "report RUN",
    "report --matrix",
    "print patch RUN",
    "eval transfer RUN",
    "eval physical CAPTURE",
    "simulate --patch",
    "calib color --photo",
    "calib camera --board",
    "world train --data",
]


@pytest.mark.parametrize("case", CASES)
def test_a_pipe_given_for_any_path_is_refused_at_once(tmp_path, fifo, case):
    res = invoke_with_fifo(_fifo_cases(tmp_path, fifo)[case], fifo)
    assert res.exit_code == 1, res.output
    assert "pipe" in res.output and "Traceback" not in res.output, res.output


def test_a_pipe_inside_a_run_folder_or_card_is_refused(tmp_path):
    run = copy_short_run(tmp_path / "run")
    (run / "run.json").unlink()
    os.mkfifo(run / "run.json")
    res = invoke_with_fifo(["report", run, "--out", tmp_path / "r.html"], run / "run.json")
    assert res.exit_code == 1 and "not a regular file" in res.output, res.output
    d = json.loads(Path(R20).read_text())
    os.mkfifo(tmp_path / "w.th")
    d["weights"] = str(tmp_path / "w.th")
    (tmp_path / "c.json").write_text(json.dumps(d))
    with pytest.raises(ModelLoadError, match="not a regular file"):
        load_model(str(tmp_path / "c.json"))


# --------------------------------------------------------------------------------- weights
class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


@pytest.mark.parametrize("kind", ["random", "text", "zip-cut", "evil-zip", "evil-legacy", "empty"])
def test_bad_weights_never_relay_weights_only_false(tmp_path, kind):
    _Evil.marker = str(tmp_path / "PWNED")
    p = tmp_path / "w.pt"
    if kind == "random":
        p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text":
        p.write_text("these are not weights\n")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "zip-cut":
        torch.save({"w": torch.zeros(3)}, p)
        p.write_bytes(p.read_bytes()[:200])
    elif kind == "evil-zip":
        torch.save({"w": _Evil()}, p)
    else:
        with open(p, "wb") as fh:
            pickle.dump({"w": _Evil()}, fh, protocol=2)
    with pytest.raises(ModelLoadError) as ei:
        read_state_dict(p)
    msg = str(ei.value)
    assert "weights_only=False" not in msg and "set to `False`" not in msg and "\n" not in msg
    assert not Path(_Evil.marker).exists()  # its code never ran
    if kind.startswith("evil"):
        assert "refusing to load" in msg and "system" in msg
    else:
        assert "needs more than tensors" not in msg  # not called a pickle when it is none
    res = CliRunner().invoke(
        app,
        [
            "models",
            "check",
            "patchlab:cifar_resnet20",
            "--weights",
            str(p),
            "--data",
            str(CIFAR_TEST),
            "--limit-per-class",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 1 and "weights_only=False" not in res.output and "False" not in res.output
    assert "Traceback" not in res.output


# ------------------------------------------------------------------------------- options
def _all_options() -> set[str]:
    opts: set[str] = set()

    def walk(c):
        for s in getattr(c, "commands", {}).values():
            walk(s)
        for p in getattr(c, "params", []):
            opts.update(getattr(p, "opts", None) or [])
            opts.update(getattr(p, "secondary_opts", None) or [])

    walk(typer.main.get_command(app))
    return opts


#: options of other programs that patchlab's messages name
FOREIGN = {
    "--list-devices",  # v4l2-ctl
    "--nproc",
    "--nnodes",
    "--rdzv-endpoint",
    "--rdzv-backend",
    "--rdzv-id",
    "--node-rank",
}  # torchrun


def test_no_message_suggests_an_option_that_no_command_has():
    opts = _all_options() | FOREIGN
    unknown = {}
    for root in ("patchlab", "calib", "capture", "eval", "print"):
        for f in (REPO / root).rglob("*.py"):
            for m in re.finditer(r"(?<![\w-])--[a-z][a-z0-9-]*", f.read_text()):
                if m.group(0) not in opts:
                    unknown.setdefault(m.group(0), []).append(str(f.relative_to(REPO)))
    assert not unknown, unknown


def test_images_of_different_sizes_suggest_what_exists(tmp_path):
    from PIL import Image

    from patchlab.data import load_folder

    for k, size in enumerate([(32, 32), (40, 40)]):
        (tmp_path / "a").mkdir(exist_ok=True)
        Image.new("RGB", size).save(tmp_path / "a" / f"{k}.png")
    with pytest.raises(DataError) as ei:
        load_folder(tmp_path)
    assert "--image-size" not in str(ei.value)


def test_record_is_checked_before_any_frame_is_scored(tmp_path):
    out = tmp_path / "cap"
    res = CliRunner().invoke(
        app,
        [
            "capture",
            "run",
            "--source",
            str(video().video),
            "--models",
            R20,
            "--target",
            TARGET,
            "--record",
            str(tmp_path / "x.txt"),
            "--device",
            "cpu",
            "--no-hud",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 1 and "--record must name a .mp4" in res.output, res.output
    assert not (out / "frames.jsonl").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(
        app,
        [
            "capture",
            "run",
            "--source",
            str(video().video),
            "--models",
            R20,
            "--target",
            TARGET,
            "--record",
            str(blocker / "v.mp4"),
            "--device",
            "cpu",
            "--no-hud",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 1 and "is a file, not a folder" in res.output, res.output
    assert not (out / "frames.jsonl").exists()


# ------------------------------------------------------------------------ camera calibration
@pytest.fixture(scope="module")
def board_views(tmp_path_factory):
    from patchlab.calib.synth import look_at, photograph, render_plane_view
    from patchlab.print.sheets import make_board_pdf
    from patchlab.print.verify import render_pdf

    tmp = tmp_path_factory.mktemp("board")
    res = make_board_pdf(date="2025-01-02")
    res.write(tmp / "board.pdf")
    page = cv2.cvtColor(render_pdf(tmp / "board.pdf", 150), cv2.COLOR_RGB2GRAY)
    spec = res.layout.board
    centre = (
        spec["origin_mm"][0] + spec["squares"][0] * spec["square_mm"] / 2,
        spec["origin_mm"][1] + spec["squares"][1] * spec["square_mm"] / 2,
    )
    K = np.array([[800.0, 0, 320], [0, 800, 240], [0, 0, 1]])
    rng = np.random.default_rng(0)

    def view(tilt_x=0.0, tilt_y=0.0, dist=420.0, off=(0.0, 0.0)):
        pose = look_at((centre[0] + off[0], centre[1] + off[1]), dist, tilt_x_deg=tilt_x, tilt_y_deg=tilt_y)
        v = render_plane_view(page, 150 / 25.4, K, None, pose, (640, 480))
        return photograph(v, rng=rng, noise_sigma=1.0)

    return res.layout, tmp / "board.layout.json", view


def test_copies_of_one_view_are_refused(board_views, tmp_path):
    layout, lay_path, view = board_views
    one = view(20, 10)
    with pytest.raises(DataError, match="differ from one another"):
        calibrate_camera([(f"v{k}.png", one.copy()) for k in range(6)], layout)
    for k in range(6):
        cv2.imwrite(str(tmp_path / f"v{k}.png"), one)
    res = CliRunner().invoke(
        app,
        ["calib", "camera", "--board", str(lay_path), "--images", str(tmp_path), "--out", str(tmp_path / "cam.json")],
    )
    assert res.exit_code == 1 and "differ from one another" in res.output, res.output
    assert not (tmp_path / "cam.json").exists()


def test_a_board_only_moved_never_tilted_is_refused(board_views):
    layout, _, view = board_views
    frames = [
        (f"v{k}.png", view(0, 0, dist=d, off=o))
        for k, (d, o) in enumerate(
            [(380, (0, 0)), (420, (20, 0)), (460, (-20, 10)), (400, (0, -20)), (440, (15, 15)), (500, (-10, -10))]
        )
    ]
    with pytest.raises(DataError, match="degenerate views"):
        calibrate_camera(frames, layout)


def test_varied_views_still_calibrate(board_views):
    layout, _, view = board_views
    frames = [
        (f"v{k}.png", view(tx, ty))
        for k, (tx, ty) in enumerate([(0, 0), (25, 0), (-25, 0), (0, 25), (0, -25), (18, 18), (-18, -18)])
    ]
    cal = calibrate_camera(frames, layout)
    assert abs(cal.fx / 800 - 1) < 0.05 and cal.pose_spread_deg > 30 and cal.f_rel_std < 0.05
