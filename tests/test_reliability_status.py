"""Reliability, family 6: a run or capture that did not finish is never used without a word.

Shared mechanisms under test: :func:`patchlab.runs.status_note` (``running`` told apart by the
folder lock: still written by process N, or left by a process that died), said once as a
``warning:`` line by the CLI boundary for every run or capture folder given as input, and by
:func:`patchlab.runs.read_run` for library callers; the report marks it in the document; a
file of the wrong kind given to ``report --matrix`` is refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CIFAR_TEST, card, optimize_args
from patchlab.cli import app
from patchlab.runs import UnfinishedResultWarning, read_run, status_note
from test_capture_helpers import capture

R20 = card("resnet20")
OPTIMIZE = [*optimize_args(steps=2), "--checkpoint-every", "1"]


def invoke(*args):
    return (
        CliRunner(mix_stderr=False).invoke(app, [str(a) for a in args])
        if _mix_stderr_supported()
        else CliRunner().invoke(app, [str(a) for a in args])
    )


def _mix_stderr_supported() -> bool:
    import inspect

    return "mix_stderr" in inspect.signature(CliRunner.__init__).parameters


def warnings_of(res) -> list[str]:
    text = res.output + (getattr(res, "stderr", "") if _mix_stderr_supported() else "")
    return [ln for ln in text.splitlines() if ln.startswith("warning:")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("status") / "run"
    res = invoke(*OPTIMIZE, "--out", out)
    assert res.exit_code == 0, res.output
    return out


def with_status(run: Path, dest: Path, status: str, message: str = "") -> Path:
    shutil.copytree(run, dest)
    rec = json.loads((dest / "run.json").read_text())
    rec.update(status=status, message=message)
    (dest / "run.json").write_text(json.dumps(rec))
    return dest


STATUSES = [
    ("running", "", "no process is writing it"),
    ("error", "cannot write x: No space left", "failed"),
    ("interrupted", "interrupted at step 1", "was interrupted"),
    ("diverged", "NaN loss", "diverged"),
]


@pytest.mark.parametrize("status,message,said", STATUSES)
@pytest.mark.parametrize("command", ["eval transfer", "print patch", "report", "simulate capture"])
def test_a_run_that_did_not_finish_is_used_with_one_warning(finished_run, tmp_path, status, message, said, command):
    run = with_status(finished_run, tmp_path / "run", status, message)
    argv = {
        "eval transfer": ["eval", "transfer", run, "--models", R20, "--device", "cpu"],
        "print patch": ["print", "patch", run, "--size-mm", "30", "--out", tmp_path / "p.pdf"],
        "report": ["report", run, "--out", tmp_path / "r.html"],
        "simulate capture": [
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
            tmp_path / "v.mp4",
        ],
    }[command]
    res = invoke(*argv)
    assert res.exit_code == 0, res.output
    lines = warnings_of(res)
    assert len([ln for ln in lines if str(run) in ln]) == 1, lines
    assert said in next(ln for ln in lines if str(run) in ln)
    if command == "report":
        html = (tmp_path / "r.html").read_text()
        assert "Partial result" in html and said in html


def test_a_run_still_being_written_names_its_process(finished_run, tmp_path):
    run = with_status(finished_run, tmp_path / "run", "running")
    code = (
        "import time; from patchlab.locks import FolderLock; "
        f"FolderLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(120)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        note = status_note(json.loads((run / "run.json").read_text()), run)
        assert f"still being written by process {child.pid}" in note
    finally:
        child.kill()
        child.wait()
    note = status_note(json.loads((run / "run.json").read_text()), run)
    assert "no process is writing it" in note and "--resume" in note  # it has a checkpoint


def test_a_finished_run_says_nothing(finished_run, tmp_path):
    res = invoke("report", finished_run, "--out", tmp_path / "r.html")
    assert res.exit_code == 0 and not warnings_of(res)
    assert "Partial result" not in (tmp_path / "r.html").read_text()


def test_library_callers_are_warned_too(finished_run, tmp_path):
    run = with_status(finished_run, tmp_path / "run", "error", "boom")
    with pytest.warns(UnfinishedResultWarning, match="failed"):
        read_run(run)


@pytest.mark.parametrize(
    "status,warned", [("running", True), ("error", True), ("interrupted", False), ("finished", False)]
)
def test_a_capture_that_did_not_finish_is_used_with_one_warning(tmp_path, status, warned):
    cap = tmp_path / "cap"
    shutil.copytree(capture(), cap)
    summ = json.loads((cap / "summary.json").read_text())
    summ.update(status=status, error="OSError: disk full" if status == "error" else None)
    (cap / "summary.json").write_text(json.dumps(summ))
    for argv in (
        ["eval", "physical", cap],
        ["report", _run_for_capture(tmp_path), cap, "--out", tmp_path / "r.html", "--overwrite"],
    ):
        res = invoke(*argv)
        assert res.exit_code == 0, res.output
        lines = [ln for ln in warnings_of(res) if str(cap) in ln]
        assert len(lines) == (1 if warned else 0), warnings_of(res)
    html = (tmp_path / "r.html").read_text()
    assert ("Partial result" in html) == warned


def _run_for_capture(tmp_path: Path) -> Path:
    from test_capture_helpers import run_dir

    return run_dir()


@pytest.mark.parametrize("kind", ["run.json", "summary.json", "transfer.json", "list", "layout"])
def test_report_refuses_a_matrix_of_the_wrong_kind(finished_run, tmp_path, kind):
    if kind == "run.json":
        m = finished_run / "run.json"
    elif kind == "transfer.json":
        res = invoke("eval", "transfer", finished_run, "--models", R20, "--device", "cpu")
        assert res.exit_code == 0, res.output
        m = finished_run / "transfer.json"
    elif kind == "summary.json":
        m = capture() / "summary.json"
    elif kind == "list":
        m = tmp_path / "m.json"
        m.write_text("[1, 2]")
    else:
        m = tmp_path / "board.layout.json"
        assert invoke("print", "board", "--out", tmp_path / "board.pdf").exit_code == 0
    res = invoke("report", finished_run, "--matrix", m, "--out", tmp_path / "r.html")
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and not (tmp_path / "r.html").exists()
    if kind != "list":
        assert "is not a matrix.json" in res.output, res.output
