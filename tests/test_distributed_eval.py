"""Sharded judging: eval transfer / eval matrix / attack under torchrun equal one process, field by field.

Whole batches go to the ranks (batch b -> rank b % world); the results are gathered in
batch order. In-process tests play both ranks of a 2-process group with a stand-in for
the gather; the CLI tests run 2 gloo processes through torchrun's elastic launcher.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import CIFAR_TEST, card
from patchlab.cli import app
from patchlab.distributed import DistContext

R20, R32 = card("resnet20"), card("resnet32")


class _Gathered(Exception):
    """Carries the batches a stand-in rank ran out of the library call."""

    def __init__(self, mine: dict) -> None:
        super().__init__("gathered")
        self.mine = mine


@dataclass(frozen=True)
class _Rank(DistContext):
    """Rank ``rank`` of a group whose other ranks' batches (``given``) were run beforehand in this process.

    Without ``given`` the gather hands this rank's batches back to the test instead.
    """

    given: dict | None = None

    def gather_batches(self, mine, n_batches):
        if self.given is None:
            raise _Gathered(dict(mine))
        assert not set(mine) & set(self.given)
        merged = {**self.given, **mine}
        assert sorted(merged) == list(range(n_batches))
        return [merged[b] for b in range(n_batches)]


def _play_two_ranks(call):
    """``call(ctx)`` as rank 1 (its batches captured), then as rank 0 with them: rank 0's result and both shares."""
    with pytest.raises(_Gathered) as got:
        call(_Rank(rank=1, world=2))
    done: list[int] = []
    out = call(_Rank(rank=0, world=2, given=got.value.mine), done)
    return out, sorted(got.value.mine), done


def test_batches_go_round_the_ranks_and_progress_counts_each_round_once():
    a, b = DistContext(rank=0, world=2), DistContext(rank=1, world=2)
    assert [x for x in range(5) if a.owns(x)] == [0, 2, 4] and [x for x in range(5) if b.owns(x)] == [1, 3]
    # 38 rows in batches of 8: rounds of 16, 16 and the last 6; rank 0 owns each round's first batch
    assert [a.round_rows(x, 38, 8) for x in (0, 2, 4)] == [16, 16, 6]
    assert [DistContext().round_rows(x, 38, 8) for x in range(5)] == [8, 8, 8, 8, 6]
    assert [a.round_batches(x, 5) for x in (0, 2, 4)] == [2, 2, 1]
    assert DistContext().gather_batches({1: "b", 0: "a"}, 2) == ["a", "b"]


def test_judge_patch_shards_batches_and_gathers_the_single_process_outcomes(cifar_small, resnet20):
    from patchlab.eot import load_eot
    from patchlab.transfer import judge_patch

    images = cifar_small.subset(list(range(0, 500, 13)))  # 39 images, all classes
    patch = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(1))
    kw = dict(frac=0.1, placement="random", eot=load_eot("physical"), seed=5, batch_size=8)
    single = judge_patch(patch, images, "frog", [resnet20], **kw)

    def call(ctx, done=None):
        return judge_patch(
            patch, images, "frog", [resnet20], dist=ctx, progress=None if done is None else done.append, **kw
        )

    sharded, rank1, done = _play_two_ranks(call)
    assert rank1 == [1, 3]  # rank 1 ran only its batches
    assert sum(done) == len(images)  # rank 0's bar counts every rank's images once
    for f in ("hit", "wrong", "clean_ok", "non_target"):
        assert torch.equal(getattr(single, f), getattr(sharded, f)), f
    assert bool(single.hit.any()) and not bool(single.hit.all())  # the comparison can fail


def test_attack_in_batches_shards_batches_and_keeps_one_generator_per_batch(cifar_small, resnet20):
    from patchlab.attacks import pgd
    from patchlab.attacks.record import attack_in_batches, batch_seed

    x = cifar_small.float(torch.arange(0, 500, 50))  # 10 images
    y = resnet20(x).argmax(1)
    kw = dict(labels=y, batch_size=3, seed=4, hyperparameters=dict(steps=2))
    single = attack_in_batches(pgd, [resnet20], x, "random", **kw)
    sharded, rank1, _ = _play_two_ranks(
        lambda ctx, done=None: attack_in_batches(pgd, [resnet20], x, "random", dist=ctx, **kw)
    )
    assert rank1 == [1, 3]
    for f in fields(single):
        a, b = getattr(single, f.name), getattr(sharded, f.name)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, f.name
    assert len(set(single.target.tolist())) > 1  # random targets and starts drawn per batch
    # a run of one batch draws what one generator seeded with the seed draws
    one = attack_in_batches(
        pgd, [resnet20], x[:3], "random", labels=y[:3], batch_size=8, seed=4, hyperparameters=dict(steps=2)
    )
    ref = pgd(resnet20, x[:3], "random", labels=y[:3], steps=2, generator=torch.Generator().manual_seed(4))
    assert batch_seed(4, 0) == 4 and len({batch_seed(4, b) for b in range(1, 50)}) == 49
    assert torch.equal(one.adversarial, ref.adversarial) and torch.equal(one.target, ref.target)


def test_predict_sharded_equals_predict(cifar_small, resnet20):
    from patchlab.attacks.gradient import predict
    from patchlab.attacks.record import predict_sharded

    x = cifar_small.float(torch.arange(0, 500, 37))  # 14 images, chunks of 4: rank 0 has 0 and 2
    sharded, rank1, _ = _play_two_ranks(lambda ctx, done=None: predict_sharded([resnet20], x, batch_size=4, dist=ctx))
    assert rank1 == [1, 3]
    assert torch.equal(sharded, predict([resnet20], x, batch_size=4))
    assert torch.equal(predict_sharded([resnet20], x, batch_size=4), sharded)


# -- the commands under torchrun ---------------------------------------------------------------


def _torchrun(*args: str) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node 2 -m -- patchlab ARGS`` (2 CPU ranks, gloo), started now.

    The ``--`` keeps torchrun's parser from reading ``--n`` as an abbreviation of its own options.
    """
    env = dict(os.environ, PATCHLAB_THREADS="1", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")  # stacks if a rank aborts
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "--", "patchlab", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    return log


OPTIMIZE = ["optimize", "--source", R20, "--data", str(CIFAR_TEST), "--target", "frog", "--limit-per-class", "20"]
OPTIMIZE += ["--batch-size", "8", "--device", "cpu", "--seed", "3", "--steps", "2", "--no-cache"]


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A 2-step optimiser run on 200 images (40 held out)."""
    out = tmp_path_factory.mktemp("dist") / "run2"
    res = CliRunner().invoke(app, [*OPTIMIZE, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_optimize_command_under_torchrun_writes_the_one_process_run(run2, tmp_path):
    """Rank 0 alone takes the run folder's lock and writes it; the patch is one process's."""
    import numpy as np

    log = _finish(_torchrun(*OPTIMIZE, "--out", str(tmp_path / "two")))
    rec = json.loads((tmp_path / "two" / "run.json").read_text())
    assert rec["status"] == "finished" and rec["world_size"] == 2, log[-2000:]
    assert np.abs(np.load(tmp_path / "two" / "patch.npy") - np.load(run2 / "patch.npy")).max() <= 1e-5


def test_eval_transfer_under_torchrun_equals_one_process(run2, tmp_path):
    common = [
        "--models",
        R20,
        R32,
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--eot",
        "physical",
        "--placement",
        "random",
    ]
    proc = _torchrun("eval", "transfer", str(run2), *common, "--json", str(tmp_path / "two.json"))
    res = CliRunner().invoke(app, ["eval", "transfer", str(run2), *common, "--json", str(tmp_path / "one.json")])
    assert res.exit_code == 0, res.output
    log = _finish(proc)
    one, two = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    assert two.pop("command") != one.pop("command")  # each records its own argv (--json differs)
    assert two == one, log[-2000:]
    written = json.loads((run2 / "transfer.json").read_text())
    assert written.pop("command")[:3] == ["patchlab", "eval", "transfer"]
    assert written == one  # rank 0 wrote the run's transfer.json
    assert one["n_images"] == 40 and 0 < one["models"][0]["successes"] < one["models"][0]["n"]
    assert log.count("wrote ") == 2  # rank 0 alone printed (transfer.json and --json)


def test_eval_matrix_under_torchrun_equals_one_process(run2, tmp_path):
    import shutil

    again = tmp_path / "again"  # a second row on the same images: its clean predictions come from the cache
    shutil.copytree(run2, again)
    common = [str(run2), str(again), "--models", R20, R32, "--device", "cpu", "--batch-size", "8", "--eot", "physical"]
    proc = _torchrun("eval", "matrix", *common, "--out", str(tmp_path / "two"))
    res = CliRunner().invoke(app, ["eval", "matrix", *common, "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    _finish(proc)
    one, two = (json.loads((tmp_path / k / "matrix.json").read_text()) for k in ("one", "two"))
    assert two == one and len(one["runs"]) == 2
    assert (tmp_path / "two" / "matrix.md").read_text() == (tmp_path / "one" / "matrix.md").read_text()


def test_attack_under_torchrun_equals_one_process(tmp_path):
    tiny = tmp_path / "tiny"  # 3 real photos per class (links)
    for cls in sorted(p.name for p in CIFAR_TEST.iterdir() if p.is_dir()):
        (tiny / cls).mkdir(parents=True)
        for f in sorted((CIFAR_TEST / cls).iterdir())[:3]:
            (tiny / cls / f.name).symlink_to(f)

    def args(name: str) -> list[str]:
        return (
            ["attack", "pgd", "--model", R20, "--transfer", R32, "--data", str(tiny), "--n", "10"]
            + ["--batch-size", "3", "--target", "random", "--steps", "3", "--seed", "2", "--device", "cpu"]
            + ["--out", str(tmp_path / name), "--json", str(tmp_path / f"{name}.json")]
        )

    proc = _torchrun(*args("two"))
    res = CliRunner().invoke(app, args("one"))
    assert res.exit_code == 0, res.output
    _finish(proc)
    one, two = (json.loads((tmp_path / k / "attack.json").read_text()) for k in ("one", "two"))
    assert set(one) == set(two)
    for k in one:
        if k == "seconds":  # the only timing field
            continue
        if k == "command":  # the same command, another --out and --json
            assert [c.replace("two", "one") for c in two[k]] == one[k]
            continue
        assert two[k] == one[k], k
    assert one["summary"]["n"] == 10 and len(one["transfer"]) == 1 and one["result"]["target"] is not None
    s1, s2 = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    assert {**s2, "run": s1["run"]} == s1
    for rec in one["images"]:  # the PNGs and the grid, byte for byte
        assert (tmp_path / "two" / rec["adversarial"]).read_bytes() == (
            tmp_path / "one" / rec["adversarial"]
        ).read_bytes()
    assert (tmp_path / "two" / "grid.png").read_bytes() == (tmp_path / "one" / "grid.png").read_bytes()
    assert sorted(p.name for p in (tmp_path / "two" / "adversarial").iterdir()) == sorted(
        Path(r["adversarial"]).name for r in one["images"]
    )


def test_eval_compare_under_torchrun_equals_one_process(run2, tmp_path):
    """Two patches on the same 40 held-out images (the same seed): the paired comparison of 2 ranks is one
    process's, bit for bit (intervals, McNemar counts, per-pair tSuc)."""
    other = tmp_path / "ce"
    res = CliRunner().invoke(app, [*OPTIMIZE, "--loss", "ce", "--out", str(other)])
    assert res.exit_code == 0, res.output
    common = [str(run2), str(other), "--models", R20, R32, "--device", "cpu", "--batch-size", "8"]
    proc = _torchrun("eval", "compare", *common, "--eot", "physical", "--json", str(tmp_path / "two.json"))
    res = CliRunner().invoke(
        app, ["eval", "compare", *common, "--eot", "physical", "--json", str(tmp_path / "one.json")]
    )
    assert res.exit_code == 0, res.output
    log = _finish(proc)
    one, two = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    assert two == one, log[-2000:]
    assert one["pairs"][0]["n"] > 0
    assert sum(m["a_only"] + m["b_only"] for m in one["models"]) > 0  # the patches differ on some images
    assert log.count("wrote ") == 1  # rank 0 alone printed
