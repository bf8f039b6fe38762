"""Data-parallel patch optimisation: 2 gloo processes through torchrun's launcher equal one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dist_patch_worker as W
from patchlab.distributed import DistContext
from patchlab.errors import ConfigError

HERE = Path(__file__).resolve().parent


def test_rows_split_a_global_batch_and_refuse_an_uneven_one():
    assert DistContext().rows(16) is None
    assert [DistContext(rank=r, world=2).rows(16) for r in (0, 1)] == [slice(0, 8), slice(8, 16)]
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        DistContext(rank=0, world=3).rows(16)


def test_renderer_rows_render_exactly_as_the_whole_batch():
    from patchlab.eot import PatchRenderer, load_eot

    r = PatchRenderer((32, 32), (10, 10), frac=0.1, placement="random", eot=load_eot("physical"))
    g = torch.Generator().manual_seed(0)
    imgs, patch = torch.rand(8, 3, 32, 32, generator=g), torch.rand(3, 10, 10, generator=g)
    params = r.sample(8, g)
    whole = r(imgs, patch, params)
    parts = torch.cat([r(imgs[s], patch, params, rows=s) for s in (slice(0, 4), slice(4, 8))])
    assert float(params.blur_sigma.max()) > 0 and float(params.noise_sigma.max()) > 0  # both paths exercised
    assert torch.equal(whole, parts)


def test_two_gloo_processes_equal_one_process(tmp_path):
    """torchrun (torch.distributed.run, elastic launcher), 2 CPU ranks, gloo; patch checksum checked every step."""
    # PYTHONFAULTHANDLER: a rank that aborts (gloo's rare "terminate called without an active exception"
    # at exit, seen in about 1 of 30 runs under load) prints every thread's stack into the log shown below
    env = dict(os.environ, PATCHLAB_DIST_CHECK="1", PATCHLAB_THREADS="1", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE / "dist_patch_worker.py"),
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    model, data = W.load_inputs()  # the single-process reference, computed while the ranks run
    single, _ = W.run_specs(model, data)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    dist = np.load(tmp_path / "patches.npz")
    assert int(dist["world"]) == 2
    for name, steps, _kw, _ck in W.SPECS:
        a, b = single[name], dist[name]
        assert a.shape == b.shape and a.shape[0] == steps
        assert np.abs(a - b).max() <= 1e-5, (name, [float(np.abs(a[i] - b[i]).max()) for i in range(steps)])
        assert np.abs(a[-1] - a[0]).max() > 1e-3  # the patch moved: the comparison can fail
    # resume on another world size: the 2-rank checkpoint continues in one process (in memory and
    # streamed from disk: the stream jumps to the checkpoint's step)
    ckpts = torch.load(tmp_path / "checkpoints.pt", weights_only=True)
    for spec in W.SPECS:
        name, steps, _kw, ck_at = spec
        if ck_at is None:
            continue
        ckpt = ckpts[name]
        assert ckpt["world_size"] == 2 and ckpt["step"] == ck_at
        prep = W.prepare(spec, model, data)
        state = prep.optimizer.load_state(ckpt)
        prep.optimizer.run(state, steps)
        prep.close()
        assert np.abs(state.patch.detach().numpy() - single[name][-1]).max() <= 1e-5, name
