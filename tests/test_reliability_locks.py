"""Reliability, family 2: one writer per run or capture folder.

The shared mechanism under test: :class:`patchlab.locks.FolderLock` (``fcntl.flock`` on a lock
file beside the folder, holding the writer's process id), taken by the CLI's error boundary as
soon as a folder-writing command's ``--out`` is parsed (``patchlab.cli.FOLDER_WRITERS``). A
second writer gets one line naming the holder's process; a lock left by a dead process
(``kill -9``) is stale and taken over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CIFAR_TEST, card, optimize_args
from patchlab.cli import FOLDER_WRITERS, app
from patchlab.errors import FolderInUse
from patchlab.locks import FolderLock, lock_holder, lock_path
from patchlab.models import load_model
from patchlab.runs import read_run, writing_folder
from test_capture_helpers import TARGET, video

R20 = card("resnet20")
OPTIMIZE = optimize_args(steps=1)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def hold_in_child(folder: Path) -> subprocess.Popen:
    """Another process that takes the folder's lock and waits."""
    code = (
        "import sys, time; from patchlab.locks import FolderLock; "
        f"FolderLock({str(folder)!r}, 'run folder').acquire(); print('held', flush=True); time.sleep(120)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_lock_names_the_holder_and_release_frees_it(tmp_path):
    folder = tmp_path / "run"
    with FolderLock(folder, "run folder"):
        assert lock_holder(folder) == os.getpid()
        with pytest.raises(FolderInUse, match=rf"run folder {folder} is in use by process {os.getpid()}"):
            FolderLock(folder, "run folder").acquire()
    assert lock_holder(folder) is None
    assert not lock_path(folder).exists()  # removed on release: the folder's parent stays clean
    with FolderLock(folder):  # free again
        pass


def test_a_live_process_holds_it_and_a_killed_ones_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    child = hold_in_child(folder)
    try:
        assert lock_holder(folder) == child.pid
        with pytest.raises(FolderInUse, match=f"in use by process {child.pid}"):
            FolderLock(folder).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert lock_path(folder).read_text().strip() == str(child.pid)  # the stale lock file is still there
    assert lock_holder(folder) is None  # ... and known to be stale
    lock = FolderLock(folder).acquire()
    try:
        assert lock.took_over_from == child.pid
        assert lock_path(folder).read_text().strip() == str(os.getpid())
    finally:
        lock.release()


def _folder_commands(tmp: Path) -> dict[str, list]:
    vid = video()
    return {
        "optimize": OPTIMIZE,
        "capture run": [
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
        ],
        "eval matrix": ["eval", "matrix", tmp / "nothing", "--models", R20, "--device", "cpu"],
        "world make": [
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
        ],
        "world train": ["world", "train", "--data", tmp / "no-world", "--device", "cpu"],
        "demo": ["demo", "--device", "cpu"],
        "attack": ["attack", "pgd", "--model", R20, "--data", CIFAR_TEST, "--n", "2", "--device", "cpu"],
    }


def test_every_folder_writer_is_in_the_table():
    assert set(FOLDER_WRITERS) == {
        "optimize",
        "capture run",
        "eval matrix",
        "world make",
        "world train",
        "demo",
        "attack",
    }


@pytest.mark.parametrize("command", sorted(FOLDER_WRITERS))
def test_second_writer_of_any_folder_command_gets_one_line_and_touches_nothing(tmp_path, command):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"status": "running"}))
    before = sorted(p.name for p in out.iterdir())
    child = hold_in_child(out)
    try:
        res = invoke(*_folder_commands(tmp_path)[command], "--out", out)
    finally:
        child.kill()
        child.wait()
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"is in use by process {child.pid}" in lines[0], res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in out.iterdir()) == before
    assert json.loads((out / "run.json").read_text()) == {"status": "running"}  # the live writer's record is left


def test_resume_of_a_run_still_running_is_refused(tmp_path):
    out = tmp_path / "run"
    assert invoke(*OPTIMIZE, "--out", out).exit_code == 0
    record = (out / "run.json").read_text()
    child = hold_in_child(out)
    try:
        res = invoke("optimize", "--out", out, "--resume", "--steps", "3", "--device", "cpu", "--no-cache")
    finally:
        child.kill()
        child.wait()
    assert res.exit_code == 1 and f"in use by process {child.pid}" in res.output, res.output
    assert (out / "run.json").read_text() == record
    # once the holder is gone (killed: a stale lock), the resume goes ahead
    res = invoke("optimize", "--out", out, "--resume", "--steps", "2", "--device", "cpu", "--no-cache")
    assert res.exit_code == 0, res.output
    assert read_run(out)["step"] == 2


def test_two_real_processes_one_run_folder(tmp_path):
    """Two `patchlab optimize` processes into one --out: the second says who holds it; the first,
    stopped with Ctrl-C, leaves a resumable run."""
    out = tmp_path / "run"
    env = {**os.environ, "PATCHLAB_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "patchlab",
        *optimize_args(steps=5000),
        "--checkpoint-every",
        "5",
        "--out",
        str(out),
    ]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[1]
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 1, second.stderr
        assert f"is in use by process {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert "Traceback" not in err
    rec = read_run(out, warn=False)
    assert rec["status"] == "interrupted" and (out / "checkpoint.pt").is_file()
    assert lock_holder(out) is None


def test_library_writers_lock_too_and_join_the_clis_lock(tmp_path):
    out = tmp_path / "cap"
    child = hold_in_child(out)
    try:
        with pytest.raises(FolderInUse, match=f"capture folder {out} is in use by process {child.pid}"):
            with writing_folder(out, record="summary.json", what="capture folder"):
                pass
    finally:
        child.kill()
        child.wait()
    with FolderLock(out, "capture folder"):  # what the CLI holds while the command runs
        with writing_folder(out, record="summary.json", what="capture folder") as lock:
            assert lock.held
        assert lock_holder(out) == os.getpid()  # the command's lock outlives the library writer's


def test_a_run_started_from_python_is_locked(tmp_path):
    """The library call (no CLI) takes the run folder's lock itself."""
    from patchlab.data import load_folder
    from patchlab.optimize import OptimizeConfig, prepare_run, run_optimization

    out = tmp_path / "run"
    m = load_model(R20)
    images = load_folder(CIFAR_TEST, limit_per_class=5)
    prepared = prepare_run(OptimizeConfig(target="frog", steps=1, batch_size=4), [m], images, cache=False)
    child = hold_in_child(out)
    try:
        with pytest.raises(FolderInUse, match=f"in use by process {child.pid}"):
            run_optimization(prepared, out)
    finally:
        child.kill()
        child.wait()
    assert not out.exists() or not any(out.iterdir())


def test_a_killed_runs_record_is_not_touched_by_a_refused_writer(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"status": "running", "message": ""}))
    (out / "checkpoint.pt").write_bytes(b"x")
    res = invoke(*OPTIMIZE, "--out", out)
    assert res.exit_code == 1 and "not empty" in res.output
    assert json.loads((out / "run.json").read_text()) == {"status": "running", "message": ""}


def test_a_failure_inside_a_library_writer_is_recorded(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(RuntimeError):
        with writing_folder(out):
            (out / "run.json").write_text(json.dumps({"status": "running", "message": ""}))
            raise RuntimeError("the GPU fell off")
    d = json.loads((out / "run.json").read_text())
    assert d["status"] == "error" and d["message"] == "the GPU fell off"
