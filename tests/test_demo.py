"""`patchlab demo --quick`: every stage, resumable, repeatable (the full demo's figures: see the README)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from patchlab.cli import app
from patchlab import pipeline

STAGES = [
    "OT patch (sw)",
    "CE patch",
    "transfer matrix",
    "print",
    "film (simulated)",
    "capture loop",
    "physical tSuc",
    "report",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def demo(out, cache):
    env = {"PATCHLAB_CACHE": str(cache), "COLUMNS": "200"}
    # no --device: the default (auto) is what the README's first command runs
    return CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)], env=env)


@pytest.fixture(scope="module")
def first(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("demo") / "a"
    res = demo(out, cache)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_quick_demo_runs_every_stage_and_names_the_files(first):
    out, output = first
    state = json.loads((out / "demo.json").read_text())
    assert [s for s in STAGES if state["stages"][s]["status"] == "done"] == STAGES
    for f in (
        "report.html",
        "report.pdf",
        "print/patch.pdf",
        "print/patch.layout.json",
        "capture/video.mp4",
        "capture/control.mp4",
        "capture/video/frames.jsonl",
        "matrix/matrix.json",
        "physical.json",
        "runs/sw/patch.png",
        "runs/ce/patch.png",
    ):
        assert (out / f).is_file(), f
    html = (out / "report.html").read_text()
    compare = html.split("Patches side by side", 1)[1]
    assert "sw (sw): white-box" in compare and "ce (ce): white-box" in compare  # both patches, side by side
    assert f"open {out / 'report.html'}" in output
    frames = (out / "capture" / "video" / "frames.jsonl").read_text().splitlines()
    assert len(frames) == 60


def test_second_run_skips_finished_stages_and_gives_the_same_numbers(first, cache, tmp_path):
    out, _ = first
    again = demo(out, cache)
    assert again.exit_code == 0, again.output
    assert again.output.count("finished before") >= len(STAGES)
    assert "$ patchlab optimize" not in again.output
    # a fresh folder, same seed: the same figures (world and zoo come from the same cache)
    other = tmp_path / "b"
    res = demo(other, cache)
    assert res.exit_code == 0, res.output
    for run in ("sw", "ce"):
        a = json.loads((out / "runs" / run / "transfer.json").read_text())["models"]
        b = json.loads((other / "runs" / run / "transfer.json").read_text())["models"]
        assert [m["tsuc"] for m in a] == [m["tsuc"] for m in b]
    pa = json.loads((out / "physical.json").read_text())["models"]
    pb = json.loads((other / "physical.json").read_text())["models"]
    assert [m["tsuc"] for m in pa] == [m["tsuc"] for m in pb]


def test_interrupted_demo_resumes_from_the_finished_stages(cache, tmp_path, monkeypatch):
    out = tmp_path / "cut"

    def ctrl_c(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.DemoPipeline, "stage_film", ctrl_c)
    cut = demo(out, cache)
    assert cut.exit_code == 130 and "resume" in cut.output
    state = json.loads((out / "demo.json").read_text())
    assert set(state["stages"]) == {"OT patch (sw)", "CE patch", "transfer matrix", "print"}
    monkeypatch.undo()
    res = demo(out, cache)
    assert res.exit_code == 0, res.output
    assert "$ patchlab optimize" not in res.output and "$ patchlab simulate capture" in res.output
    assert (out / "report.html").is_file()
