"""The optimiser loop on a real model: it learns, resumes exactly, stops on NaN, refuses bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import card
from patchlab.errors import ConfigError, DataError
from patchlab.eval.transfer import evaluate_patch
from patchlab.models import load_model
from patchlab.optimize import OptimizationDiverged, OptimizeConfig, PatchOptimizer, prepare_run, run_optimization
from patchlab.runs import read_patch


def cfg(**kw) -> OptimizeConfig:
    base = dict(
        target="frog",
        loss="ce",
        steps=6,
        batch_size=16,
        frac=0.1,
        placement="random",
        seed=1,
        checkpoint_every=3,
        log_every=1,
    )
    base.update(kw)
    return OptimizeConfig(**base)


def test_ce_patch_learns_on_a_real_model(resnet20, cifar_small, tmp_path):
    config = cfg(steps=60, batch_size=32, frac=0.2, lr=0.05)
    prep = prepare_run(config, [resnet20], cifar_small, cache=False)
    hold = cifar_small.subset(prep.split.holdout)
    start = prep.optimizer.init_patch(torch.Generator().manual_seed(1))
    before = evaluate_patch(start, hold, "frog", [resnet20], frac=0.2, placement="random")[0]
    run_optimization(prep, tmp_path / "run", command=["test"])
    after = evaluate_patch(
        torch.from_numpy(read_patch(tmp_path / "run")), hold, "frog", [resnet20], frac=0.2, placement="random"
    )[0]
    # an optimised 20% patch turns far more held-out images into frogs than its noise start
    assert after.tsuc > before.tsuc + 0.25, (before.tsuc, after.tsuc)
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["status"] == "finished" and rec["step"] == 60 and len(rec["history"]) == 60
    assert rec["history"][-1]["loss"] < rec["history"][0]["loss"]


@pytest.mark.parametrize("loss", ["sw", "w2", "quantile", "l2"])
def test_feature_losses_take_steps_on_several_layers(resnet20, cifar_small, tmp_path, loss):
    config = cfg(loss=loss, steps=2, layers="auto,depth:0.5", projections=32, checkpoint_every=2)
    prep = prepare_run(config, [resnet20], cifar_small, cache=False)
    res = run_optimization(prep, tmp_path / loss, command=["test"])
    rec = json.loads((tmp_path / loss / "run.json").read_text())
    assert res.status == "finished"
    assert set(rec["history"][-1]["terms"]) == {
        f"{loss}[cifar10-resnet20:linear]",
        f"{loss}[cifar10-resnet20:layer2.1]",
        "tv",
    }
    assert [r["module"] for r in rec["layers"]["cifar10-resnet20"]] == ["linear", "layer2.1"]


def _patch_after(tmp_path, name, resnet20, data, steps, resume=False, **kw):
    prep = prepare_run(cfg(steps=steps, loss="sw", projections=16, **kw), [resnet20], data, cache=False)
    run_optimization(prep, tmp_path / name, resume=resume, command=["test"])
    return read_patch(tmp_path / name), json.loads((tmp_path / name / "run.json").read_text())


def test_resume_reaches_the_same_patch_as_an_uninterrupted_run(resnet20, cifar_small, tmp_path):
    whole, rec_whole = _patch_after(tmp_path, "whole", resnet20, cifar_small, 6)
    _patch_after(tmp_path, "split", resnet20, cifar_small, 3)
    resumed, rec = _patch_after(tmp_path, "split", resnet20, cifar_small, 6, resume=True)
    assert np.array_equal(whole, resumed)
    assert rec["history"] == rec_whole["history"]
    part, _ = _patch_after(tmp_path, "three", resnet20, cifar_small, 3)
    assert not np.array_equal(part, whole)  # the test would notice a resume that did nothing


def test_ctrl_c_saves_and_resume_continues_exactly(resnet20, cifar_small, tmp_path):
    whole, _ = _patch_after(tmp_path, "whole", resnet20, cifar_small, 6)
    prep = prepare_run(cfg(steps=6, loss="sw", projections=16), [resnet20], cifar_small, cache=False)

    def interrupt(info):
        if info.step == 4:  # inside step 4's bookkeeping: resume must restart from the step-3 checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_optimization(prep, tmp_path / "cut", on_step=interrupt, command=["test"])
    rec = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert rec["status"] == "interrupted" and "--resume" in rec["message"]
    resumed, _ = _patch_after(tmp_path, "cut", resnet20, cifar_small, 6, resume=True)
    assert np.array_equal(whole, resumed)


class _NaNAt(PatchOptimizer):
    """A loss hook that breaks at a chosen step, as a diverging loss would."""

    bad_step = 3

    def loss(self, i, patched, generator, truth=None):
        value, terms, logits = super().loss(i, patched, generator, truth)
        if self._step_now == self.bad_step:
            value = value * float("nan")
        return value, terms, logits

    def one_step(self, state):
        self._step_now = state.step + 1
        return super().one_step(state)


def test_nan_stops_with_a_message_and_keeps_the_last_good_patch(resnet20, cifar_small, tmp_path):
    good, _ = _patch_after(tmp_path, "good", resnet20, cifar_small, 2, checkpoint_every=1)
    prep = prepare_run(
        cfg(steps=6, loss="sw", projections=16, checkpoint_every=1), [resnet20], cifar_small, cache=False
    )
    prep.optimizer.__class__ = _NaNAt
    with pytest.raises(OptimizationDiverged, match="became nan at step 3"):
        run_optimization(prep, tmp_path / "nan", command=["test"])
    rec = json.loads((tmp_path / "nan" / "run.json").read_text())
    assert rec["status"] == "diverged" and rec["step"] == 2 and "last good patch" in rec["message"]
    kept = read_patch(tmp_path / "nan")
    assert np.isfinite(kept).all() and np.array_equal(kept, good)


def _first_step_gradient(prep):
    """The combined gradient the loop hands to its optimiser at step 1 (spied, not recomputed)."""
    grads = []
    orig = prep.optimizer.step

    def spy(state, grad):
        grads.append(grad.clone())
        orig(state, grad)

    prep.optimizer.step = spy
    state = prep.attack.new_state()
    prep.optimizer.run(state, 1)
    prep.attack.close()
    return grads[0]


def _model_gradients(prep, seed):
    """Each source model's raw loss gradient at the initial patch, on the loop's first batch."""
    opt = prep.optimizer
    g = torch.Generator().manual_seed(seed)
    state = opt.new_state(g)
    images, _ = opt.batch(g)
    patched = opt.render(state.patch, images, g)
    values = [opt.loss(i, patched, g)[0] for i in range(len(opt.sources))]
    grads = [torch.autograd.grad(v, state.patch, retain_graph=True)[0] for v in values]
    mean_loss_grad = torch.autograd.grad(torch.stack(values).mean(), state.patch)[0]
    return grads, mean_loss_grad


def test_ensemble_normalises_each_models_gradient(resnet20, cifar_small):
    r32 = load_model(card("resnet32"))
    on = prepare_run(cfg(steps=1, loss="ce", tv=0), [resnet20, r32], cifar_small, cache=False)
    off = prepare_run(cfg(steps=1, loss="ce", tv=0, grad_norm=False), [resnet20, r32], cifar_small, cache=False)
    grads, raw = _model_gradients(on, seed=1)
    unit = torch.stack([gi / gi.norm() for gi in grads]).mean(0)
    # the two models' raw gradients differ in size, so normalising changes the direction
    assert abs(float(grads[0].norm() / grads[1].norm()) - 1) > 0.05
    g_on, g_off = _first_step_gradient(on), _first_step_gradient(off)
    assert torch.allclose(g_on, unit, atol=1e-6)
    assert torch.allclose(g_off, raw, atol=1e-7)
    cos = float(torch.nn.functional.cosine_similarity(g_on.flatten(), g_off.flatten(), dim=0))
    assert cos < 0.9999, cos


def test_regularizer_gradients_are_normalised_like_a_models(resnet20, cifar_small):
    """--tv w adds w * REGULARIZER_UNIT of a unit step, whatever the patch size."""
    from patchlab.optimize import REGULARIZER_UNIT
    from patchlab.losses import total_variation

    for frac in (0.05, 0.3):
        base = prepare_run(cfg(steps=1, loss="ce", tv=0, frac=frac), [resnet20], cifar_small, cache=False)
        reg = prepare_run(cfg(steps=1, loss="ce", tv=2.5, frac=frac), [resnet20], cifar_small, cache=False)
        g0, g1 = _first_step_gradient(base), _first_step_gradient(reg)
        p = reg.optimizer.init_patch(torch.Generator().manual_seed(1)).requires_grad_(True)
        tvg = torch.autograd.grad(total_variation(p), p)[0]
        step = g1 - g0
        assert float(step.norm()) == pytest.approx(2.5 * REGULARIZER_UNIT, rel=1e-4)
        assert torch.allclose(step, 2.5 * REGULARIZER_UNIT * tvg / tvg.norm(), atol=1e-6)


def test_bad_input(resnet20, cifar_small, tmp_path):
    with pytest.raises(DataError, match="unknown class 'froggy'"):
        prepare_run(cfg(target="froggy"), [resnet20], cifar_small, cache=False)
    with pytest.raises(ConfigError, match="larger than the 32x32 image"):
        prepare_run(cfg(frac=0.9, frame_markers=True), [resnet20], cifar_small, cache=False)
    # a target class whose only image is held out: nothing to take target features from
    keep = [i for i, l in enumerate(cifar_small.labels.tolist()) if l != 6] + [cifar_small.labels.tolist().index(6)]
    one_frog = cifar_small.subset(keep)
    with pytest.raises(DataError, match="no images of the target class 'frog'"):
        prepare_run(cfg(loss="sw", holdout_frac=0.6), [resnet20], one_frog, cache=False)
    with pytest.raises(ConfigError, match="unknown loss"):
        cfg(loss="emd")
    prep = prepare_run(cfg(), [resnet20], cifar_small, cache=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        run_optimization(prep, tmp_path / "full")
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_optimization(prepare_run(cfg(), [resnet20], cifar_small, cache=False), tmp_path / "none", resume=True)
    run_optimization(prepare_run(cfg(), [resnet20], cifar_small, cache=False), tmp_path / "a", command=["test"])
    other = prepare_run(cfg(lr=0.5), [resnet20], cifar_small, cache=False)
    with pytest.raises(ConfigError, match="options differ"):
        run_optimization(other, tmp_path / "a", resume=True)


def test_cosine_schedule_decays_and_fixes_the_step_count(resnet20, cifar_small, tmp_path):
    prep = prepare_run(cfg(steps=5, lr_schedule="cosine", lr=0.1), [resnet20], cifar_small, cache=False)
    lrs = [prep.optimizer.learning_rate(s) for s in range(5)]
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.001)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    run_optimization(prep, tmp_path / "c", command=["test"])
    longer = prepare_run(cfg(steps=9, lr_schedule="cosine", lr=0.1), [resnet20], cifar_small, cache=False)
    with pytest.raises(ConfigError, match="steps"):  # a longer cosine run is another path
        run_optimization(longer, tmp_path / "c", resume=True)
