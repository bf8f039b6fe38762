"""`patchlab optimize` and `patchlab eval transfer|matrix` from the command line, on the shared data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import CIFAR_TEST, card
from patchlab.cli import app

R20, R32 = card("resnet20"), card("resnet32")
BASE = [
    "optimize",
    "--source",
    R20,
    "--data",
    str(CIFAR_TEST),
    "--target",
    "frog",
    "--limit-per-class",
    "20",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--seed",
    "3",
    "--checkpoint-every",
    "2",
    "--log-every",
    "1",
    "--no-cache",
]


def invoke(*args):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def run4(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run4"
    res = invoke(*BASE, "--loss", "sw", "--projections", "16", "--steps", "4", "--out", str(out))
    assert res.exit_code == 0, res.output
    return out


def test_optimize_writes_a_complete_run_folder(run4):
    rec = json.loads((run4 / "run.json").read_text())
    assert rec["status"] == "finished" and rec["target_class"] == "frog" and rec["seed"] == 3
    assert rec["config"]["loss"] == "sw" and rec["config"]["projections"] == 16
    assert rec["sources"][0]["card"]["name"] == "cifar10-resnet20"
    assert rec["data"]["n_images"] == 200 and len(rec["split"]["holdout"]) == 40
    assert [h["step"] for h in rec["history"]] == [1, 2, 3, 4]
    assert rec["versions"]["torch"] and rec["command"][:2] == ["patchlab", "optimize"]
    png = np.asarray(Image.open(run4 / "patch.png"))
    flt = np.load(run4 / "patch.npy")
    assert png.shape == (10, 10, 3) and flt.shape == (3, 10, 10)
    assert np.array_equal(png, np.round(flt.transpose(1, 2, 0) * 255).astype(np.uint8))  # lossless PNG
    assert (run4 / "checkpoint.pt").is_file()


def test_resume_from_the_cli_matches_an_uninterrupted_run(run4, tmp_path):
    part = tmp_path / "part"
    assert invoke(*BASE, "--loss", "sw", "--projections", "16", "--steps", "2", "--out", str(part)).exit_code == 0
    # the stopped run's options are reused: only --steps is given again
    res = invoke("optimize", "--out", str(part), "--resume", "--steps", "4", "--device", "cpu", "--no-cache")
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.load(part / "patch.npy"), np.load(run4 / "patch.npy"))


def test_eval_transfer_judges_the_holdout_and_writes_transfer_json(run4, tmp_path):
    out = tmp_path / "t.json"
    res = invoke("eval", "transfer", str(run4), "--models", R20, R32, "--device", "cpu", "--json", str(out))
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert json.loads((run4 / "transfer.json").read_text()) == d
    assert [m["name"] for m in d["models"]] == ["cifar10-resnet20", "cifar10-resnet32"]
    assert [m["is_source"] for m in d["models"]] == [True, False]
    for m in d["models"]:
        assert m["n"] == 36  # 40 held out, minus the 4 frogs
        assert 0 <= m["ci95"][0] <= m["tsuc"] <= m["ci95"][1] <= 1
        assert 0.5 < m["clean_accuracy"] <= 1.0
    # an outside patch on other data
    res = invoke(
        "eval",
        "transfer",
        "--patch",
        str(run4 / "patch.png"),
        "--data",
        str(CIFAR_TEST),
        "--target",
        "frog",
        "--limit-per-class",
        "5",
        "--models",
        R20,
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    assert "cifar10-resnet20" in res.output


def test_eval_matrix_writes_json_markdown_and_heatmap(run4, tmp_path):
    res = invoke("eval", "matrix", str(run4), "--models", R20, R32, "--device", "cpu", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "matrix.json").read_text())
    assert m["models"] == ["cifar10-resnet20", "cifar10-resnet32"]
    (row,) = m["runs"]
    assert row["sources"] == ["cifar10-resnet20"] and row["loss"] == "sw"
    assert row["mean_transfer"] == row["tsuc"]["cifar10-resnet32"] == row["min_transfer"]
    assert row["white_box"] == row["tsuc"]["cifar10-resnet20"]
    md = (tmp_path / "matrix.md").read_text()
    assert md.count("\n|") >= 2 and "*" in md
    assert Image.open(tmp_path / "matrix.png").size[0] > 100


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--target", "froggy"], "unknown class 'froggy'"),
        (["--patch-frac", "1.5"], "patch-frac must be in"),
        (["--patch-frac", "0.9", "--frame-markers"], "larger than the 32x32 image"),
        (["--loss", "emd"], "unknown loss"),
        (["--eot", "wobbly"], "unknown EOT preset"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path, args, msg):
    res = invoke(*BASE, "--steps", "1", "--out", str(tmp_path / "o"), *args)
    assert res.exit_code == 1, res.output
    assert msg in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "patch.png").exists()


def test_eval_bad_input(run4, tmp_path):
    res = invoke("eval", "transfer", str(run4), "--device", "cpu")
    assert res.exit_code == 1 and "--models" in res.output
    res = invoke("eval", "transfer", str(tmp_path), "--models", R20, "--device", "cpu")
    assert res.exit_code == 1 and "not a run folder" in res.output


def test_models_layers_lists_blocks_depths_and_the_auto_layer():
    res = CliRunner().invoke(app, ["models", "layers", R20], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "9 feature blocks" in res.output
    assert "layer2.1" in res.output and "depth:0.50" in res.output
    assert "[1, 64] (input)" in res.output and "auto" in res.output


def test_optimize_through_a_colour_transform_with_nps_and_tv(tmp_path):
    from patchlab.calib import ColorTransform

    color = tmp_path / "color.json"
    # a printer that washes colours out: the renderer must apply it to the sticker
    ct = ColorTransform.identity()
    color.write_text(json.dumps({"transform": {**ct.to_dict(), "matrix": (0.5 * np.eye(3)).tolist()}}))
    pal = tmp_path / "palette.txt"
    pal.write_text("0 0 0\n255 255 255\n128 128 128\n")
    out = tmp_path / "calib"
    res = invoke(
        *BASE,
        "--loss",
        "ce",
        "--steps",
        "2",
        "--calib",
        str(color),
        "--nps",
        str(pal),
        "--nps-weight",
        "0.5",
        "--tv",
        "0.2",
        "--frame-markers",
        "--patch-frac",
        "0.2",
        "--eot",
        "physical",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "run.json").read_text())
    assert rec["config"]["calib"] == str(color.resolve()) and rec["config"]["palette"] == str(pal.resolve())
    assert {"nps", "tv"} <= set(rec["history"][-1]["terms"])
    assert rec["patch"]["frame_markers"] is True
    bad = invoke(*BASE, "--steps", "1", "--nps", str(tmp_path / "none.txt"), "--out", str(tmp_path / "x"))
    assert bad.exit_code == 1 and "palette file not found" in bad.output


def test_matrix_row_label_names_the_knobs_a_study_varies():
    """Runs that differ only in projections or target images must not share a matrix label."""
    from patchlab.eval.matrix import row_label
    from patchlab.optimize import OptimizeConfig

    rec = {
        "sources": [{"name": "cifar10-resnet20"}],
        "target_class": "frog",
        "config": OptimizeConfig(target="frog", loss="sw", frac=0.1).to_dict(),
    }
    assert row_label(rec) == "sw 10% resnet20->frog"
    assert (
        row_label({**rec, "config": {**rec["config"], "layers": "auto", "tv": 0.0}})
        == "sw 10% resnet20->frog [auto] tv=0.0"
    )
    rec["config"].update(projections=50, target_images=200)
    assert row_label(rec) == "sw 10% resnet20->frog proj=50 timg=200"
    rec["config"].update(loss="ce")  # neither knob means anything to CE
    assert row_label(rec) == "ce 10% resnet20->frog"
