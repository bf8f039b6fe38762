"""Reliability, family 3: no command replaces an existing output unless ``--overwrite`` is given.

The shared mechanism under test: :func:`patchlab.checks.check_overwrite`, called by the CLI
boundary before any file-writing command runs (``patchlab.cli.FILE_WRITERS``, which also gives
each of them an ``--overwrite`` flag, and names the files written beside the main one) and by
the commands that check their own outputs (report, calib, models check); folder writers
(optimize, capture run, world make) keep refusing a folder that holds a result.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CIFAR_TEST, card, copy_short_run, optimize_args
from patchlab.checks import check_overwrite
from patchlab.cli import FILE_WRITERS, app
from patchlab.errors import ConfigError
from test_capture_helpers import capture, video

R20 = card("resnet20")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def digest(paths) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_helper_refuses_any_existing_path_and_names_the_flag(tmp_path):
    a, b = tmp_path / "a.pdf", tmp_path / "a.layout.json"
    check_overwrite([a, b], False)  # nothing there yet
    b.write_text("{}")
    with pytest.raises(ConfigError, match=r"a.layout.json already exists: .* pass --overwrite"):
        check_overwrite([a, b], False)
    check_overwrite([a, b], True)


def _commands(tmp: Path) -> dict[str, tuple[list, list[str]]]:
    """command -> (argv without --out, files it writes for --out NAME)."""
    run = copy_short_run(tmp / "run")
    cap = capture()
    board = tmp / "board.pdf"
    assert invoke("print", "board", "--out", board).exit_code == 0
    return {
        "print patch": (["print", "patch", run, "--size-mm", "30", "--out"], ["p.pdf", "p.layout.json"]),
        "print chart": (["print", "chart", "--swatches", "12", "--out"], ["c.pdf", "c.layout.json"]),
        "print board": (["print", "board", "--out"], ["b.pdf", "b.layout.json"]),
        "print check": (["print", "check", board, "--json"], ["check.json"]),
        "simulate capture": (
            [
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
            ],
            ["v.mp4", "v.truth.jsonl", "v.sim.json", "v.camera.json", "v.layout.json"],
        ),
        "eval physical": (["eval", "physical", cap, "--json"], ["ph.json"]),
        "report": (["report", run, "--out"], ["r.html"]),
        "models check": (
            ["models", "check", R20, "--data", CIFAR_TEST, "--limit-per-class", "1", "--device", "cpu", "--json"],
            ["m.json"],
        ),
        "calib camera": (
            ["calib", "camera", "--board", tmp / "board.layout.json", "--images", tmp, "--out"],
            ["cam.json"],
        ),
        "calib color": (
            ["calib", "color", "--photo", tmp / "none.png", "--chart", tmp / "board.layout.json", "--out"],
            ["col.json"],
        ),
    }


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    return _commands(tmp_path_factory.mktemp("overwrite"))


def test_every_file_writer_without_its_own_flag_is_guarded():
    assert {"print patch", "print chart", "print board", "print check", "simulate capture", "eval physical"} <= set(
        FILE_WRITERS
    )


ALL = [
    "print patch",
    "print chart",
    "print board",
    "print check",
    "simulate capture",
    "eval physical",
    "report",
    "models check",
    "calib camera",
    "calib color",
]
WITH_COMPANIONS = ["print patch", "print chart", "print board", "simulate capture"]


@pytest.mark.parametrize("command,which", [(c, "main") for c in ALL] + [(c, "companion") for c in WITH_COMPANIONS])
def test_existing_output_is_kept_without_overwrite(commands, tmp_path, command, which):
    argv, files = commands[command]
    target = tmp_path / (files[0] if which == "main" else files[-1])
    target.write_bytes(b"precious")
    res = invoke(*argv, tmp_path / files[0])
    assert res.exit_code == 1, res.output
    assert "already exists" in res.output and "--overwrite" in res.output and "Traceback" not in res.output
    assert target.read_bytes() == b"precious"


@pytest.mark.parametrize(
    "command", ["print patch", "print board", "simulate capture", "eval physical", "report", "models check"]
)
def test_overwrite_replaces_it(commands, tmp_path, command):
    argv, files = commands[command]
    first = invoke(*argv, tmp_path / files[0])
    assert first.exit_code == 0, first.output
    assert all((tmp_path / f).is_file() for f in files)
    again = invoke(*argv, tmp_path / files[0], "--overwrite")
    assert again.exit_code == 0, again.output


def test_folder_writers_keep_refusing_a_folder_with_a_result(tmp_path):
    run = copy_short_run(tmp_path / "run")
    before = digest(sorted(run.iterdir()))
    res = invoke(*optimize_args(steps=1), "--out", run)
    assert res.exit_code == 1 and "not empty" in res.output, res.output
    assert digest(sorted(run.iterdir())) == before
    cap = capture()
    before = digest(sorted(p for p in cap.iterdir() if p.is_file()))
    res = invoke(
        "capture",
        "run",
        "--source",
        video().video,
        "--models",
        R20,
        "--target",
        "cat",
        "--max-frames",
        "2",
        "--device",
        "cpu",
        "--no-hud",
        "--out",
        cap,
    )
    assert res.exit_code == 1 and "--overwrite" in res.output, res.output
    assert digest(sorted(p for p in cap.iterdir() if p.is_file())) == before


def test_world_make_takes_the_same_flag(tmp_path):
    out = tmp_path / "w"
    args = [
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
    ]
    assert invoke(*args).exit_code == 0
    res = invoke(*args)
    assert res.exit_code == 1 and "pass --overwrite" in res.output
    assert invoke(*args, "--overwrite").exit_code == 0
