"""A step never reads the device: run on the meta device, where any host read of a tensor raises."""

from __future__ import annotations

import copy

import pytest
import torch

from patchlab.eot import PatchRenderer, load_eot
from patchlab.features import FeatureExtractor
from patchlab.inputs import TensorSource
from patchlab.optimize import OptimizationDiverged, OptimizeConfig, PatchOptimizer

META = torch.device("meta")


def _optimizer(model, loss, device, *, grad_norm=True, log_every=10, tv=1.0):
    cfg = OptimizeConfig(
        target="frog",
        loss=loss,
        batch_size=8,
        projections=16,
        layers="auto,depth:0.5",
        eot=load_eot("physical"),
        placement="random",
        grad_norm=grad_norm,
        log_every=log_every,
        tv=tv,
    )
    renderer = PatchRenderer((32, 32), (10, 10), frac=0.1, placement="random", eot=cfg.eot)
    g = torch.Generator().manual_seed(0)
    src = TensorSource(torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=g))
    ex = feats = None
    if loss != "ce":
        ex = [FeatureExtractor(model, cfg.layers)]
        with torch.no_grad():
            _, f = FeatureExtractor(model, cfg.layers)(torch.zeros(1, 3, 32, 32, device=device))
        feats = [{k: torch.rand(12, v.shape[1], device=device) for k, v in f.items()}]
    return PatchOptimizer(
        [model],
        src,
        [model.labels.index("frog")],
        renderer=renderer,
        config=cfg,
        extractors=ex,
        target_feats=feats,
        device=device,
    )


@pytest.mark.parametrize("loss,grad_norm", [("ce", True), ("sw", True), ("quantile", False), ("l2", True)])
def test_a_step_never_reads_the_device(resnet20, loss, grad_norm):
    model = copy.deepcopy(resnet20).to(META)  # shapes only: item(), bool(), float() of a meta tensor raise
    opt = _optimizer(model, loss, META, grad_norm=grad_norm)
    state = opt.new_state(torch.Generator().manual_seed(0))
    for _ in range(2):
        info = opt.one_step(state)
    assert info.loss_t.device == META and state.patch.device == META and state.step == 2
    with pytest.raises(RuntimeError, match="meta"):  # the check point is where the device is read; meta has no data
        opt.check(state)
    opt.close()


def test_the_loop_reads_the_device_only_every_log_every_steps(resnet20, monkeypatch):
    opt = _optimizer(resnet20, "sw", "cpu", log_every=4)
    reads = []
    orig = PatchOptimizer.check

    def counted(self, state):
        reads.append(state.step)
        return orig(self, state)

    monkeypatch.setattr(PatchOptimizer, "check", counted)
    state = opt.new_state(torch.Generator().manual_seed(0))
    opt.run(state, 10)
    assert reads == [4, 8, 10] and [h["step"] for h in state.history] == [4, 8, 10]
    opt.close()


def test_a_nan_found_late_rolls_back_to_the_last_good_patch(resnet20):
    """log_every 5, NaN at step 3: the check at step 5 restores the step-2 patch and names step 3."""
    opt = _optimizer(resnet20, "ce", "cpu", log_every=5)
    state = opt.new_state(torch.Generator().manual_seed(0))
    opt.run(state, 2)
    good = state.patch.detach().clone()
    orig = opt.loss

    def broken(i, patched, generator, truth=None):
        value, terms, logits = orig(i, patched, generator, truth)
        return (value * float("nan") if state.step == 2 else value), terms, logits

    opt.loss = broken
    with pytest.raises(OptimizationDiverged, match="became nan at step 3"):
        opt.run(state, 10)
    assert state.step == 2 and torch.equal(state.patch.detach(), good)
    opt.close()
