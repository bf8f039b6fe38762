"""Acceptance: every shared card reproduces its recorded accuracy on the full JPEG test set."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import CIFAR_MODELS, CIFAR_TEST
from patchlab.cli import app


@pytest.mark.slow
def test_models_check_reproduces_every_card_within_0_3_points(tmp_path):
    cards = sorted(CIFAR_MODELS.glob("*.json"))
    out = tmp_path / "acc.json"
    res = CliRunner().invoke(
        app, ["models", "check", *map(str, cards), "--data", str(CIFAR_TEST), "--device", "cpu", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    got = {m["name"]: m for m in json.loads(out.read_text())["models"]}
    for c in cards:
        meta = json.loads(c.read_text())
        m = got[meta["name"]]
        assert m["n"] == 10_000
        assert abs(m["accuracy"] - meta["test_accuracy_jpeg"]) <= 0.003, (meta["name"], m["accuracy"])
