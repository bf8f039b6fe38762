"""`optimize --workers N`: the images stream from disk through DataLoader workers; bf16 autocast and
channels_last run on the CPU; the data set is never loaded whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import CIFAR_TEST, card
from patchlab.cli import app
from patchlab.optimize import OptimizeConfig, prepare_stream_run, run_optimization


def test_streamed_run_reads_only_target_images_up_front(resnet20, tmp_path, monkeypatch):
    import patchlab.data as data_mod

    read = []
    orig = data_mod.read_image
    monkeypatch.setattr(data_mod, "read_image", lambda p: read.append(p) or orig(p))
    cfg = OptimizeConfig(
        target="frog",
        loss="sw",
        steps=3,
        batch_size=8,
        projections=16,
        seed=1,
        layers="auto",
        target_images=6,
        checkpoint_every=3,
        log_every=1,
    )
    prep = prepare_stream_run(cfg, [resnet20], CIFAR_TEST, workers=0, limit_per_class=20, cache=False)
    up_front = len(read)
    assert up_front <= 6 + 8  # the target images and the stream's first batch: not the 200-image set
    res = run_optimization(prep, tmp_path / "s", command=["test"])
    assert res.status == "finished" and res.steps == 3
    rec = json.loads((tmp_path / "s" / "run.json").read_text())
    assert rec["data"]["streamed"] == {"workers": 0} and rec["data"]["n_images"] == 200
    assert len(read) - up_front >= 2 * 8  # later batches were decoded as the steps needed them


def test_cli_workers_stream_in_worker_processes(tmp_path):
    out = tmp_path / "w"
    r = CliRunner().invoke(
        app,
        [
            "optimize",
            "--out",
            str(out),
            "--source",
            card("resnet20"),
            "--data",
            str(CIFAR_TEST),
            "--target",
            "frog",
            "--loss",
            "ce",
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--limit-per-class",
            "10",
            "--workers",
            "2",
            "--no-cache",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert np.isfinite(np.load(out / "patch.npy")).all()
    assert json.loads((out / "run.json").read_text())["data"]["streamed"] == {"workers": 2}


def test_bf16_autocast_and_channels_last_on_cpu(resnet20):
    """The models see bfloat16 channels-last batches; the patch stays a float32 master copy."""
    from patchlab.optimize import PatchAttack

    seen = []
    conv = next(m for m in resnet20.modules() if isinstance(m, torch.nn.Conv2d))
    h = conv.register_forward_hook(
        lambda m, i, o: seen.append((o.dtype, i[0].is_contiguous(memory_format=torch.channels_last)))
    )
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
        res = PatchAttack(loss="ce", steps=2, batch_size=8, precision="bf16", channels_last=True, cache=False)(
            resnet20, x, "frog"
        )
    finally:
        h.remove()
    assert seen and all(d == torch.bfloat16 for d, _ in seen) and all(cl for _, cl in seen)
    assert res.patch.dtype == torch.float32 and torch.isfinite(res.patch).all()
    assert res.config["precision"] == "bf16"


def test_step_batch_sampler_is_a_function_of_the_step_on_any_number_of_processes():
    """Global batch s is the same images on 1, 2 or 4 processes (their rows put together), every
    image comes once per epoch, and a sampler started at step s yields what the whole run yields there."""
    from itertools import islice

    from patchlab.inputs import StepBatchSampler

    one = list(islice(iter(StepBatchSampler(50, 8, seed=3)), 20))  # 160 positions: 3 epochs and a bit
    assert sorted(sum(one[:7], [])[:50]) == list(range(50))  # epoch 0 is a permutation
    assert sum(one, [])[:50] != sum(one, [])[50:100]  # epoch 1 is shuffled anew
    for world in (2, 4):
        k = 8 // world
        parts = [
            list(islice(iter(StepBatchSampler(50, 8, seed=3, rows=slice(r * k, (r + 1) * k))), 20))
            for r in range(world)
        ]
        assert [sum((p[s] for p in parts), []) for s in range(20)] == one
    assert list(islice(iter(StepBatchSampler(50, 8, seed=3, start_step=13)), 7)) == one[13:]
    assert one != list(islice(iter(StepBatchSampler(50, 8, seed=4)), 20))


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_resume_reaches_the_uninterrupted_patch(resnet20, tmp_path, workers):
    """A streamed run stopped at step 3 and resumed to 6 (the stream jumps to step 3) equals the
    6-step run bit for bit, with the images decoded in the main process or in workers."""
    from dataclasses import replace

    cfg = OptimizeConfig(
        target="frog",
        loss="ce",
        steps=6,
        batch_size=8,
        seed=2,
        checkpoint_every=3,
        log_every=1,
    )

    def run(name, steps, resume=False):
        prep = prepare_stream_run(
            replace(cfg, steps=steps), [resnet20], CIFAR_TEST, workers=workers, limit_per_class=10, cache=False
        )
        res = run_optimization(prep, tmp_path / name, resume=resume, command=["test"])
        assert res.status == "finished"
        return np.load(tmp_path / name / "patch.npy")

    whole = run("whole", 6)
    part = run("split", 3)
    resumed = run("split", 6, resume=True)
    assert np.array_equal(whole, resumed)
    assert not np.array_equal(part, whole)  # the resume did continue


def test_a_seeded_user_stream_is_replayed_to_the_asked_step():
    """Any other stream (a user's DataLoader with a seeded sampler, batches of 5 cut into draws of 4,
    several passes) is replayed: a fresh source asked for step 7 gives what the first gave there."""
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    from patchlab.inputs import StreamSource

    x = torch.arange(13 * 3 * 2 * 2, dtype=torch.float32).reshape(13, 3, 2, 2) / 156
    ds = TensorDataset(x, torch.arange(13) % 3)

    def source():
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(0))
        return StreamSource(DataLoader(ds, batch_size=5, sampler=sampler))

    g = torch.Generator()
    a = source()
    seq = [a.draw(4, g, "cpu", step=s)[0] for s in range(9)]
    b = source()
    assert torch.equal(b.draw(4, g, "cpu", step=7)[0], seq[7]) and torch.equal(b.draw(4, g, "cpu", step=8)[0], seq[8])
    assert not torch.equal(seq[7], seq[8])


def test_target_images_from_an_endless_folder_stream_take_one_pass(resnet20):
    """A feature loss without target_images= reads the target class from the stream itself: one epoch of
    an endless folder_loader, not forever."""
    from patchlab.data import limit_items, scan_folder
    from patchlab.inputs import collect, folder_loader
    from patchlab.optimize import PatchAttack

    items, classes = scan_folder(CIFAR_TEST)
    items = limit_items(items, 3)  # 30 files, 3 frogs
    loader = folder_loader(items, classes=classes, batch_size=8, seed=0)
    assert collect(loader).shape[0] == 32  # ceil(30 / 8) batches: one pass, the last one wrapping round
    prep = PatchAttack(loss="sw", steps=1, batch_size=8, projections=8, cache=False).prepare(resnet20, loader, "frog")
    try:
        assert prep.n_target_images == 3
    finally:
        prep.close()
