"""``patchlab attack NAME``: the run folder, the printed tables and one clear line per bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from patchlab.cli import app

from conftest import CIFAR_TEST, card

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared):
    """A 20-image ImageFolder of real CIFAR-10 test photos (links, nothing copied into the repo)."""
    root = tmp_path_factory.mktemp("tiny")
    for cls in sorted(p.name for p in CIFAR_TEST.iterdir() if p.is_dir()):
        (root / cls).mkdir()
        for f in sorted((CIFAR_TEST / cls).iterdir())[:2]:
            (root / cls / f.name).symlink_to(f)
    return root


def _base(tiny, out, *more):
    return [
        "attack",
        *more,
        "--model",
        card("resnet20"),
        "--data",
        str(tiny),
        "--out",
        str(out),
        "--n",
        "6",
        "--device",
        "cpu",
    ]


def test_pgd_run_folder_tables_and_json(tiny, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(
        app,
        [
            *_base(tiny, out, "pgd"),
            "--transfer",
            card("resnet32"),
            "--target",
            "random",
            "--set",
            "random_start=false",
            "--steps",
            "3",
            "--json",
            str(tmp_path / "s.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "that the source classifies correctly" in r.output
    assert "success" in r.output and "transfer" in r.output
    doc = json.loads((out / "attack.json").read_text())
    assert doc["kind"] == "attack" and doc["attack"] == "pgd" and doc["config"]["steps"] == 3
    assert doc["config"]["random_start"] is False and doc["summary"]["n"] == 6
    assert len(doc["images"]) == 6 and len(list((out / "adversarial").glob("*.png"))) == 6
    assert doc["versions"]["torch"] and doc["command"][:2] == ["patchlab", "attack"]
    assert doc["transfer"][0]["n"] == 6 and "untargeted" in doc["transfer"][0]
    assert all(im["target"] != im["label"] for im in doc["images"])
    assert (out / "grid.png").stat().st_size > 1000
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["summary"]["success_rate"] == doc["summary"]["success_rate"]
    # the PNGs are the adversarial images, 8-bit
    from patchlab.data import read_image

    png = read_image(out / doc["images"][0]["adversarial"])
    assert png.shape == (3, 32, 32)
    assert float((png - png.mul(255).round().div(255)).abs().max()) == 0.0


def test_regional_and_fgvm_through_the_generic_options(tiny, tmp_path):
    r = runner.invoke(app, [*_base(tiny, tmp_path / "reg", "regional"), "--mask", "center:m", "--steps", "2"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "reg" / "attack.json").read_text())
    assert doc["config"]["mask"] == "center:m" and max(im["l0"] for im in doc["images"]) <= 0.3
    r = runner.invoke(
        app, [*_base(tiny, tmp_path / "fg", "fgvm"), "--target", "frog", "--set", "steps=5", "--set", "lr=0.01"]
    )
    assert r.exit_code == 0, r.output
    assert "mean target_prob" in r.output and "mean tv" in r.output
    doc = json.loads((tmp_path / "fg" / "attack.json").read_text())
    assert all(im["label"] != "frog" for im in doc["images"])  # the target class is left out
    assert "leaving out the target class" in r.output


@pytest.mark.parametrize(
    "args, match",
    [
        (["pgd", "--eps", "2"], "eps must be in (0, 1]"),
        (["pgd", "--eps", "-0.1"], "eps must be in (0, 1]"),
        (["pgd", "--mask", "hexagon:0.2"], "unknown mask spec"),
        (["pgd", "--mask", "center:0px"], "covers no pixel"),
        (["pgd", "--mask", "random:0.0001"], "covers no pixel"),
        (["pgd", "--target", "giraffe"], "is not a class of model"),
        (["pgd", "--mask", "center:40px"], "does not fit"),
        (["pgd", "--mask", "frame:20px"], "does not fit"),
        (["stadvx"], "unknown attack"),
        (["fgsm", "--alpha", "0.1"], "takes no --alpha"),
        (["pgd", "--set", "tau=0.05"], "has no hyperparameter 'tau'"),
        (["pgd", "--set", "steps=many"], "takes a whole number"),
        (["pgd", "--set", "random_start=maybe"], "takes true or false"),
        (["pgd", "--steps", "3", "--set", "steps=4"], "given twice"),
        (["regional", "--set", "released=true"], "give --transfer"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args, match, tiny, tmp_path):
    r = runner.invoke(app, _base(tiny, tmp_path / "bad", *args))
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and match in " ".join(r.output.split()), r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_mask_image_of_another_size(tiny, tmp_path):
    from PIL import Image

    Image.fromarray(np.full((20, 20, 3), 255, np.uint8)).save(tmp_path / "m.png")
    r = runner.invoke(app, _base(tiny, tmp_path / "bad", "pgd", "--mask", f"file:{tmp_path / 'm.png'}"))
    assert r.exit_code == 1 and "draw the mask at the images' size" in " ".join(r.output.split())


def test_report_includes_an_attack_run(tiny, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, [*_base(tiny, out, "fgsm"), "--transfer", card("resnet32")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep.html")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "rep.html").read_text()
    assert "fgsm" in html and "Transfer" in html and "data:image/png;base64" in html
