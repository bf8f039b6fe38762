"""Reliability, family 1: a write that fails is one line naming the path and the cause, never a
traceback, and the output folder stays valid-and-resumable or is marked failed with the reason.

The shared mechanisms under test: :func:`patchlab.utils.writing` / :func:`patchlab.utils.atomic_output`
(every ``OSError`` of a writer becomes a :class:`~patchlab.errors.WriteError`), the CLI error
boundary (an ``OSError`` that escaped anyway is one line too) and its ``OutputWatch`` (a
record a failed command wrote and left ``running`` is marked ``error`` with the reason, in
place if the disk is full). A full disk is a small tmpfs when this machine can mount one,
else a write that fails through monkeypatching.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CIFAR_TEST, card, copy_short_run, optimize_args
from patchlab import utils
from patchlab.cli import app
from patchlab.errors import WriteError
from patchlab.runs import mark_stopped
from test_capture_helpers import TARGET, capture, video

R20 = card("resnet20")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res, *needles: str) -> str:
    """The command failed with exit 1 and one ``error:`` line (no traceback) holding every needle."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.output
    for n in needles:
        assert n in errors[0], res.output
    return errors[0]


# --------------------------------------------------------------------------- a full disk
def _try_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or os.environ.get("PATCHLAB_TEST_NO_TMPFS"):  # the latter tests the fallback
        return False
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


class FullDisk:
    """A folder whose disk is full after ``free`` bytes: a tmpfs with a filler file, or (where
    mounting is not allowed) every file write under it failing with ENOSPC after ``free`` bytes."""

    def __init__(self, root: Path, monkeypatch, free: int = 0):
        self.root = root / f"full-{uuid.uuid4().hex[:6]}"
        self.mounted = _try_tmpfs(self.root, "96k")
        try:
            self._fill(monkeypatch, free)
        except BaseException:
            self.close()
            raise

    def _fill(self, monkeypatch, free: int) -> None:
        if self.mounted:
            filler = self.root / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill it up, then free ``free`` bytes (4 KiB pages)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)
            os.truncate(filler, max(0, filler.stat().st_size - free))
        else:
            self._patch(monkeypatch, free)

    def _patch(self, monkeypatch, free: int) -> None:
        import builtins

        budget = {"left": free}
        root = str(self.root)
        real_open = builtins.open

        def fake_open(file, mode="r", *a, **k):
            fh = real_open(file, mode, *a, **k)
            # "r+" rewrites bytes already allocated: a real full disk allows it, so this fake does too
            if (
                any(c in mode for c in "wax") and str(os.fspath(file)).startswith(root)
                if isinstance(file, (str, os.PathLike))
                else False
            ):
                write = fh.write

                def limited(data):
                    n = len(data)
                    if n > budget["left"]:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
                    budget["left"] -= n
                    return write(data)

                fh.write = limited
            return fh

        monkeypatch.setattr(builtins, "open", fake_open)
        self.root.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self.mounted and subprocess.run(["umount", str(self.root)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)
        self.mounted = False


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    d = FullDisk(tmp_path, monkeypatch)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def nearly_full_disk(tmp_path, monkeypatch):
    """Room for the first small record (8 KiB), not for the rest."""
    d = FullDisk(tmp_path, monkeypatch, free=8 * 1024)
    try:
        yield d
    finally:
        d.close()


# ----------------------------------------------------------------------- the helpers themselves
def test_atomic_writers_turn_oserror_into_one_line_and_keep_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    utils.atomic_write_json(target, {"v": 1})

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(utils, "_fsync_path", enospc)
    for write in (
        lambda: utils.atomic_write_json(target, {"v": 2}),
        lambda: utils.atomic_write_bytes(target, b"x"),
        lambda: utils.atomic_torch_save({"v": 2}, target),
    ):
        with pytest.raises(WriteError, match=rf"cannot write {target}: No space left on device"):
            write()
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left


@pytest.mark.parametrize("where", ["under_file", "proc", "is_dir"])
def test_atomic_writers_name_the_path_for_every_bad_place(tmp_path, where):
    f = tmp_path / "plain.txt"
    f.write_text("x")
    (tmp_path / "d.json").mkdir()
    path = {"under_file": f / "out.json", "proc": Path("/proc/patchlab-test/out.json"), "is_dir": tmp_path / "d.json"}[
        where
    ]
    with pytest.raises(WriteError, match="cannot write"):
        utils.atomic_write_json(path, {"v": 1})


def test_json_writer_never_writes_a_bare_nan(tmp_path):
    import numpy as np
    import torch

    p = utils.atomic_write_json(
        tmp_path / "n.json",
        {"a": float("nan"), "b": [float("inf"), 1.0], "c": np.float32("nan"), "d": torch.tensor([float("-inf")])},
    )
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.0], "c": None, "d": [None]}


def test_mark_stopped_records_the_status_in_place_when_nothing_new_can_be_written(tmp_path, monkeypatch):
    import patchlab.runs as runs

    rec = tmp_path / "run.json"
    rec.write_text(
        json.dumps(
            {"status": "running", "history": [{"step": i, "loss": 1.0} for i in range(50)], "message": ""}, indent=2
        )
    )

    def full(*a, **k):
        raise WriteError(f"cannot write {rec}: No space left on device")

    monkeypatch.setattr(runs, "atomic_write_json", full)
    size = rec.stat().st_size
    assert mark_stopped(rec, "cannot write checkpoint.pt: No space left on device")
    d = json.loads(rec.read_text())
    assert d["status"] == "error" and "No space left" in d["message"] and d["finished"]
    assert rec.stat().st_size == size  # over its own bytes: no new block was needed


# ------------------------------------------------------------------ every writing command, bad --out
#: the cheapest real optimiser run: resnet20, 5 images per class, 1 step
OPTIMIZE = optimize_args(steps=1)


def _writers(tmp: Path) -> dict[str, callable]:
    """Each command that writes, as ``out -> argv`` with cheap, valid inputs."""
    run = copy_short_run(tmp / "run")
    vid = video()
    cap = capture()
    real = copy_short_run(tmp / "real-run")
    return {
        "optimize": lambda out: [*OPTIMIZE, "--out", out],
        "eval transfer --json": lambda out: [
            "eval",
            "transfer",
            real,
            "--models",
            R20,
            "--device",
            "cpu",
            "--json",
            out,
        ],
        "eval matrix": lambda out: ["eval", "matrix", real, "--models", R20, "--device", "cpu", "--out", out],
        "eval physical --json": lambda out: ["eval", "physical", cap, "--json", out],
        "eval physical --plots": lambda out: ["eval", "physical", cap, "--plots", out],
        "print patch": lambda out: ["print", "patch", run, "--size-mm", "30", "--out", out],
        "print chart": lambda out: ["print", "chart", "--swatches", "12", "--out", out],
        "print board": lambda out: ["print", "board", "--out", out],
        "simulate capture": lambda out: [
            "simulate",
            "capture",
            "--patch",
            run,
            "--scenes",
            CIFAR_TEST / "dog",
            "--frames",
            "2",
            "--scene-frames",
            "1",
            "--size",
            "160x120",
            "--out",
            out,
        ],
        "capture run": lambda out: [
            "capture",
            "run",
            "--source",
            vid.video,
            "--models",
            R20,
            "--target",
            TARGET,
            "--max-frames",
            "2",
            "--device",
            "cpu",
            "--no-hud",
            "--out",
            out,
        ],
        "report": lambda out: ["report", run, "--out", out],
        "models check --json": lambda out: [
            "models",
            "check",
            R20,
            "--data",
            CIFAR_TEST,
            "--limit-per-class",
            "1",
            "--device",
            "cpu",
            "--json",
            out,
        ],
        "world make": lambda out: [
            "world",
            "make",
            "--n-per-class",
            "2",
            "--size",
            "16",
            "--scenes-per-class",
            "0",
            "--workers",
            "1",
            "--out",
            out,
        ],
    }


#: the file name each command's output is given (its suffix matters to some commands)
NAMES = {
    "print patch": "p.pdf",
    "print chart": "c.pdf",
    "print board": "b.pdf",
    "simulate capture": "v.mp4",
    "report": "r.html",
    "models check --json": "m.json",
    "eval transfer --json": "t.json",
    "eval physical --json": "ph.json",
}


@pytest.fixture(scope="module")
def writers(tmp_path_factory):
    return _writers(tmp_path_factory.mktemp("writers"))


COMMANDS = [
    "optimize",
    "eval transfer --json",
    "eval matrix",
    "eval physical --json",
    "eval physical --plots",
    "print patch",
    "print chart",
    "print board",
    "simulate capture",
    "capture run",
    "report",
    "models check --json",
    "world make",
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["under_file", "proc"])
def test_every_writing_command_reports_a_bad_out_in_one_line(writers, tmp_path, command, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    name = NAMES.get(command, "out")
    out = blocker / name if where == "under_file" else Path(f"/proc/patchlab-{uuid.uuid4().hex[:6]}") / name
    res = invoke(*writers[command](out))
    line = one_line_error(res)
    assert (str(blocker) if where == "under_file" else "/proc/patchlab-") in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    "command",
    [
        "print patch",
        "report",
        "models check --json",
        "eval physical --json",
        "simulate capture",
        "eval transfer --json",
    ],
)
def test_a_file_output_that_is_a_folder_is_one_line(writers, tmp_path, command):
    out = tmp_path / NAMES[command]
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = invoke(*writers[command](out), "--overwrite")
    one_line_error(res)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["optimize", "capture run", "eval matrix", "world make"])
def test_a_folder_output_that_is_a_file_is_one_line(writers, tmp_path, command):
    out = tmp_path / "taken"
    out.write_text("mine")
    one_line_error(invoke(*writers[command](out)))
    assert out.read_text() == "mine"


# ------------------------------------------------------------------------ a full disk, per command
@pytest.mark.parametrize(
    "command",
    ["print patch", "report", "models check --json", "eval physical --json", "print board", "eval transfer --json"],
)
def test_full_disk_is_one_line_and_leaves_no_half_file(writers, full_disk, command):
    out = full_disk.root / NAMES[command]
    res = invoke(*writers[command](out))
    line = one_line_error(res, "No space left on device")
    assert str(full_disk.root) in line
    left = sorted(p.name for p in full_disk.root.iterdir() if p.name != "filler")
    assert not [n for n in left if n.endswith(".tmp")], left  # no temporary file left behind
    for n in left:  # what is there is whole
        if n.endswith(".json"):
            json.loads((full_disk.root / n).read_text())


def test_full_disk_during_optimize_leaves_a_run_marked_failed_or_resumable(writers, nearly_full_disk):
    full_disk = nearly_full_disk
    out = full_disk.root / "run"
    res = invoke(*writers["optimize"](out)[:-2], "--steps", "4", "--checkpoint-every", "2", "--out", out)
    one_line_error(res, "No space left on device")
    rec = out / "run.json"
    if rec.is_file():
        d = json.loads(rec.read_text())
        assert d["status"] != "running" or (out / "checkpoint.pt").is_file(), d["status"]
        if d["status"] == "error":
            assert "No space left on device" in d["message"]


def test_full_disk_during_capture_leaves_a_capture_marked_failed(writers, nearly_full_disk):
    full_disk = nearly_full_disk
    out = full_disk.root / "cap"
    res = invoke(*writers["capture run"](out)[:-2], "--out", out)
    assert res.exit_code != 0 or (out / "summary.json").is_file()
    assert "Traceback" not in res.output
    if res.exit_code != 0:
        one_line_error(res)
    summ = out / "summary.json"
    if summ.is_file():
        d = json.loads(summ.read_text())
        assert d["status"] != "running", d
