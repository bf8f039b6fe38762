"""``--compile``: the models run through ``torch.compile`` (inductor on the CPU) and the patch is
the eager one's. About a minute on a 2-core CPU (compilation), so marked slow; it still runs by
default."""

from __future__ import annotations

import shutil

import pytest
import torch

import patchlab
from patchlab.optimize import PatchAttack


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
@pytest.mark.parametrize("loss", ["ce", "sw"])
def test_compiled_models_make_the_eager_patch(loss):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )
    model = patchlab.wrap(
        net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 32, 32), labels=[f"c{i}" for i in range(10)]
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    from torch._dynamo.utils import counters

    counters.clear()
    patches = {}
    for compiled in (False, True):
        attack = PatchAttack(
            loss=loss, steps=3, batch_size=8, frac=0.1, projections=16, layers="auto", compile=compiled, cache=False
        )
        patches[compiled] = attack(model, (x, y), "c1", generator=torch.Generator().manual_seed(0)).patch
    assert attack.config.compile and counters["stats"]["unique_graphs"] >= 1  # dynamo compiled the model
    assert torch.allclose(patches[True], patches[False], atol=1e-5), float((patches[True] - patches[False]).abs().max())
