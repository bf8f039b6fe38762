"""`patchlab models` from the command line, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from conftest import CIFAR_TEST, card
from patchlab.cli import app

runner = CliRunner()


def test_models_list_filters_by_pattern():
    res = runner.invoke(app, ["models", "list", "cifar_resnet*", "--source", "patchlab"])
    assert res.exit_code == 0, res.output
    assert "patchlab:cifar_resnet20" in res.output and "patchlab:cifar_resnet110" in res.output
    res = runner.invoke(app, ["models", "list", "*mobilenetv2_1*", "--source", "timm"])
    assert "timm:mobilenetv2_100" in res.output and "cifar_resnet" not in res.output


def test_models_list_shows_cards_in_a_folder(shared):
    res = runner.invoke(
        app, ["models", "list", "*resnet*", "--cards", str(shared / "models" / "cifar10"), "--source", "patchlab"]
    )
    assert res.exit_code == 0 and "resnet20.json" in res.output


def test_models_check_writes_json(tmp_path):
    out = tmp_path / "acc.json"
    res = runner.invoke(
        app,
        [
            "models",
            "check",
            card("resnet20"),
            "--data",
            str(CIFAR_TEST),
            "--limit-per-class",
            "20",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    (m,) = d["models"]
    assert m["name"] == "cifar10-resnet20" and m["n"] == 200
    assert 0.7 <= m["accuracy"] <= 1.0
    assert set(m["per_class"]) == {p.name for p in CIFAR_TEST.iterdir()}
    assert "cifar10-resnet20" in res.output


def _tiny_tree(root, classes, n=4):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    return root


def test_missing_card_is_one_line_and_exit_1(tmp_path):
    res = runner.invoke(app, ["models", "check", str(tmp_path / "missing.json"), "--data", str(CIFAR_TEST)])
    assert res.exit_code == 1
    assert "error: model not found" in res.output and "Traceback" not in res.output


def test_weights_that_do_not_fit_say_which_keys(tmp_path):
    c = json.loads(open(card("resnet56")).read())
    c["weights"] = str(CIFAR_TEST.parent.parent.parent / "models" / "cifar10" / "resnet20.th")
    (tmp_path / "c.json").write_text(json.dumps(c))
    data = _tiny_tree(tmp_path / "d", ["cat", "dog"])
    res = runner.invoke(app, ["models", "check", str(tmp_path / "c.json"), "--data", str(data)])
    assert res.exit_code == 1 and "do not fit the architecture: missing" in res.output and "layer1.3" in res.output


def test_class_names_that_do_not_match_the_labels(tmp_path):
    data = _tiny_tree(tmp_path / "d", ["cat", "unicorn"])
    out = tmp_path / "acc.json"
    res = runner.invoke(app, ["models", "check", card("resnet20"), "--data", str(data), "--json", str(out)])
    assert res.exit_code == 1 and "['unicorn'] are not labels of cifar10-resnet20" in res.output
    assert not out.exists()


def test_corrupt_jpeg_among_good_ones_is_skipped_and_counted(tmp_path):
    data = _tiny_tree(tmp_path / "d", ["cat", "dog"])
    (data / "cat" / "broken.jpg").write_bytes(open(CIFAR_TEST / "cat" / "0000.jpg", "rb").read()[:40])
    out = tmp_path / "acc.json"
    res = runner.invoke(app, ["models", "check", card("resnet20"), "--data", str(data), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "skipped 1 unreadable image file(s)" in res.output
    assert json.loads(out.read_text())["models"][0]["n"] == 8


def test_bad_device_is_a_clear_error():
    res = runner.invoke(app, ["models", "check", card("resnet20"), "--data", str(CIFAR_TEST), "--device", "tpu"])
    assert res.exit_code == 1 and "unknown device 'tpu'" in res.output


def test_python_dash_m_entry_point():
    res = subprocess.run(
        [sys.executable, "-m", "patchlab", "models", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "check" in res.stdout
