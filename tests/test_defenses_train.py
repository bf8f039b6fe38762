"""Adversarial fine-tuning: the step functions against torchattacks, catastrophic-overfitting
detection, resume, and ``patchlab defend train`` writing a loadable card."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import CIFAR_TEST, card
from patchlab.defenses import train as T
from patchlab.models import load_model


@pytest.fixture(scope="module")
def resnet20():
    return load_model(card("resnet20"))


@pytest.fixture(scope="module")
def batch(cifar_small, resnet20):
    from patchlab.data import match_labels

    idx = torch.arange(0, 500, 25)  # 20 images, two per class
    y = match_labels(cifar_small.classes, resnet20.labels)[cifar_small.labels[idx]]
    return cifar_small.float(idx), y


def test_fgsm_matches_torchattacks(resnet20, batch):
    ta = pytest.importorskip("torchattacks")
    x, y = batch
    ref = ta.FGSM(resnet20, eps=8 / 255)(x, y)
    assert torch.allclose(T.fgsm(resnet20, x, y, eps=8 / 255), ref, atol=1e-6)


def test_pgd_matches_torchattacks(resnet20, batch):
    ta = pytest.importorskip("torchattacks")
    x, y = batch
    ref = ta.PGD(resnet20, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)(x, y)
    assert torch.allclose(
        T.pgd(resnet20, x, y, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False), ref, atol=1e-6
    )
    # random start from the global generator: the same uniform draws as torchattacks' uniform_
    torch.manual_seed(11)
    ref = ta.PGD(resnet20, eps=8 / 255, alpha=2 / 255, steps=3, random_start=True)(x, y)
    torch.manual_seed(11)
    out = T.pgd(resnet20, x, y, eps=8 / 255, alpha=2 / 255, steps=3)
    assert (out - ref).abs().max() < 1e-5


def test_fgsm_rs_is_wong_et_al(resnet20, batch):
    """FGSM with a random start and step 10/255 (Wong et al. 2020) = torchattacks' PGD with one step
    of alpha 10/255 from a uniform start (its FFGSM draws the start with randn_like first)."""
    ta = pytest.importorskip("torchattacks")
    x, y = batch
    torch.manual_seed(5)
    ref = ta.PGD(resnet20, eps=8 / 255, alpha=10 / 255, steps=1, random_start=True)(x, y)
    torch.manual_seed(5)
    out = T.fgsm(resnet20, x, y, eps=8 / 255, alpha=10 / 255, random_start=True)
    assert (out - ref).abs().max() < 1e-5
    assert (out - x).abs().max() <= 8 / 255 + 1e-6


def test_attacks_lower_accuracy_on_a_real_model(resnet20, batch):
    x, y = batch
    r = T.robust_accuracy(resnet20, x, y, pgd_steps=5, batch_size=10)
    assert r.n == 20 and r.pgd <= r.fgsm < r.clean
    assert T.RobustAccuracy.from_dict(r.to_dict()) == r
    xp = T.patch_attack(resnet20, x, y, frac=0.1, steps=5, generator=torch.Generator().manual_seed(0))
    changed = (xp != x).any(1)
    assert changed.flatten(1).sum(1).max() <= round(0.1**0.5 * 32) ** 2
    assert (resnet20(xp).argmax(1) == y).float().mean() < r.clean


def test_overfit_rule():
    cfg = T.TrainConfig()
    rec = lambda f, p: T.EpochRecord(1, 0.0, 0.0, 0.8, f, p, 0.0, 0.0)  # noqa: E731
    assert T.overfit_reason(rec(0.85, 0.01), 0.05, cfg).startswith("FGSM accuracy 85.0% but PGD accuracy 1.0%")
    assert "fell from 40.0% to 10.0%" in T.overfit_reason(rec(0.45, 0.10), 0.40, cfg)
    assert T.overfit_reason(rec(0.45, 0.35), 0.40, cfg) == ""
    assert T.overfit_reason(rec(0.10, 0.00), 0.00, cfg) == ""  # an undefended model is not overfitting


def test_overfit_persistence_rule_on_the_check_histories_of_two_real_runs():
    """The check-batch (FGSM, PGD) accuracies per epoch of real resnet20 runs (half the CIFAR-10 test
    set, benchmarks/README.md): plain ``fgsm`` overfits (FGSM climbs, PGD stays at 0; its largest gap,
    39 points, never reached the gap rule's 40) and is caught at epoch 2; ``fgsm-rs`` (6 and 15
    epochs) starts lopsided but its PGD accuracy follows while FGSM does not climb: never flagged."""
    cfg = T.TrainConfig()

    def first_flag(checks):
        hist = [T.EpochRecord(e, 0.0, 0.0, 0.8, f, p, 0.0, 0.0) for e, (f, p) in enumerate(checks)]
        best = 0.0
        for e, r in enumerate(hist):
            if T.overfit_reason(r, best, cfg, hist[e - 1] if e else None):
                return e
            best = max(best, r.check_pgd)
        return None

    fgsm = [(0.0625, 0.0), (0.2031, 0.0), (0.2539, 0.0), (0.3359, 0.0), (0.3242, 0.0156), (0.3633, 0.0), (0.3906, 0.0)]
    fgsm_rs = [(0.0625, 0.0), (0.3242, 0.0313), (0.3047, 0.1055), (0.2617, 0.1445), (0.3008, 0.1680), (0.2969, 0.1602)]
    fgsm_rs_15 = [(0.0625, 0.0), (0.3203, 0.0), (0.3125, 0.0156)]  # a 15-epoch schedule: slower warm-up
    assert first_flag(fgsm) == 2
    assert first_flag(fgsm_rs) is None and first_flag(fgsm_rs_15) is None
    r1, r2 = (T.EpochRecord(e, 0.0, 0.0, 0.8, f, p, 0.0, 0.0) for e, (f, p) in ((1, fgsm[1]), (2, fgsm[2])))
    assert "two epochs in a row" in T.overfit_reason(r2, 0.0, cfg, r1)
    assert T.overfit_reason(r2, 0.0, cfg) == ""  # one lopsided epoch alone is not enough


def test_catastrophic_overfitting_is_detected_and_the_best_epoch_kept(resnet20, batch, monkeypatch):
    """A forced collapse (FGSM high, PGD near 0 at epoch 3) stops training and keeps epoch 2."""
    x, y = batch
    x8 = (x * 255).round().to(torch.uint8)
    checks = iter([(0.8, 0.05, 0.0), (0.7, 0.3, 0.2), (0.7, 0.4, 0.3), (0.8, 0.9, 0.01), (0.8, 0.9, 0.0)])
    monkeypatch.setattr(T, "_check", lambda *a, **k: next(checks))
    snaps = []
    cfg = T.TrainConfig(attack="fgsm", epochs=4, batch_size=10, check_n=4, augment=False)
    res = T.adversarial_finetune(resnet20, x8, y, config=cfg, save_state=lambda s: snaps.append(s))
    assert res.overfit_epoch == 3 and res.best_epoch == 2 and len(res.history) == 4
    assert "FGSM accuracy 90.0% but PGD accuracy 1.0%" in res.overfit_reason
    assert "fell from 30.0% to 1.0%" in res.overfit_reason
    assert res.history[-1].overfit
    assert all(torch.equal(res.state_dict[k], snaps[1]["net"][k]) for k in res.state_dict)


def test_training_changes_a_copy_and_resumes_exactly(resnet20, batch):
    x, y = batch
    x8 = (x * 255).round().to(torch.uint8)
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    cfg = T.TrainConfig(attack="fgsm-rs", epochs=2, batch_size=10, check_n=4, check_pgd_steps=2, lr=0.01)
    states = []
    full = T.adversarial_finetune(resnet20, x8, y, config=cfg, save_state=states.append)
    assert all(torch.equal(before[k], resnet20.state_dict()[k]) for k in before)
    assert all(not p.requires_grad for p in resnet20.parameters())
    assert any(not torch.equal(states[-1]["net"][k], before["net." + k]) for k in states[-1]["net"])
    resumed = T.adversarial_finetune(resnet20, x8, y, config=cfg, state=states[0])
    assert [h.epoch for h in resumed.history] == [0, 1, 2]
    last = states[-1]["net"]
    resumed_states = []
    T.adversarial_finetune(resnet20, x8, y, config=cfg, state=states[0], save_state=resumed_states.append)
    assert all(torch.allclose(resumed_states[-1]["net"][k].float(), last[k].float()) for k in last)
    assert full.best_epoch == resumed.best_epoch
    with pytest.raises(Exception, match="other settings"):
        T.adversarial_finetune(resnet20, x8, y, config=T.TrainConfig(epochs=3), state=states[0])


@pytest.mark.parametrize("kw,match", [(dict(attack="fgm"), "unknown training attack"), (dict(eps=8), "eps")])
def test_bad_config(kw, match):
    from patchlab.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        T.TrainConfig(**kw)


def test_cli_defend_train_writes_a_loadable_card(tmp_path, resnet20):
    from typer.testing import CliRunner

    from patchlab.cli import app

    out = tmp_path / "r20_adv.json"
    args = [
        "defend",
        "train",
        "--model",
        card("resnet20"),
        "--data",
        str(CIFAR_TEST),
        "--attack",
        "fgsm-rs",
        "--limit-per-class",
        "2",
        "--epochs",
        "1",
        "--eval-n",
        "4",
        "--eval-steps",
        "2",
        "--check-n",
        "4",
        "--batch-size",
        "5",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    c = json.loads(out.read_text())
    orig = json.loads(open(card("resnet20")).read())
    for k in ("framework", "arch", "input_size", "mean", "std", "labels"):
        assert c[k] == orig[k]
    at = c["adversarial_training"]
    assert at["heldout_before"]["n"] == 4 and at["heldout_after"]["n"] == 4 and at["config"]["attack"] == "fgsm-rs"
    m = load_model(str(out))
    assert m.preprocess == resnet20.preprocess and all(not p.requires_grad for p in m.parameters())
    assert not out.with_suffix(".train.pt").exists()
    r = CliRunner().invoke(app, args[:-4] + ["--attack", "nope", "--out", str(out)])
    assert r.exit_code == 1 and "unknown training attack" in r.output
