"""Acceptance (issue 6, parts 1-2): the real `world make` + `world train`, as a user runs them.

Each of the three models reaches >= 95 % validation accuracy, `patchlab models
check ZOO/*.json --data WORLD/val` reproduces it, and training takes under 3 minutes
on a 2-core CPU. The time bound is only asserted when the machine is not already
busy with other work (1-minute load below the core count), because a shared CI
machine can slow any run several-fold; the accuracy is asserted always.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import pytest
from typer.testing import CliRunner

from patchlab.cli import app
from patchlab.world import read_world, read_zoo, sign_classes

TRAIN_BUDGET_S = 180.0


@pytest.mark.slow
def test_world_make_then_train_meets_the_acceptance_figures(tmp_path):
    runner = CliRunner()
    world, zoo = tmp_path / "world", tmp_path / "zoo"
    res = runner.invoke(app, ["world", "make", "--out", str(world)])
    assert res.exit_code == 0, res.output
    info = read_world(world)
    assert info.counts == {
        "train": 400 * len(sign_classes()),
        "val": 100 * len(sign_classes()),
        "scenes": 4 * len(sign_classes()),
    }

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = runner.invoke(app, ["world", "train", "--data", str(world), "--out", str(zoo), "--device", "cpu"])
    seconds = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    z = read_zoo(zoo)
    assert len(z.models) == 3
    acc = {m.name: m.val_accuracy for m in z.models}
    assert all(a >= 0.95 for a in acc.values()), acc

    out = tmp_path / "check.json"
    res = runner.invoke(
        app,
        ["models", "check", *map(str, z.cards), "--data", str(world / "val"), "--device", "cpu", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    checked = {m["name"]: m["accuracy"] for m in json.loads(out.read_text())["models"]}
    assert checked == pytest.approx({f"world-{k}": v for k, v in acc.items()}, abs=1e-6)

    cores = os.cpu_count() or 1
    if load < cores:
        assert seconds < TRAIN_BUDGET_S, f"world train took {seconds:.0f} s at load {load:.1f}"
    else:
        warnings.warn(f"world train took {seconds:.0f} s; time bound not checked: load {load:.1f} >= {cores} cores")
