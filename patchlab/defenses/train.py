"""Adversarial fine-tuning of a classifier (``patchlab defend train``).

The step functions here are small private-grade versions of the attacks used for
training and for robust accuracy (checked against torchattacks in the tests), kept
local so the training does not depend on ``patchlab.attacks`` yet:

* :func:`fgsm`: one signed-gradient step. ``random_start=False`` is Goodfellow et al.
  2015's FGSM (step = eps); ``random_start=True`` is Wong, Rice and Kolter 2020 ("Fast is
  better than free", alg. 3): uniform start in the eps-ball, step ``alpha`` (10/255 for
  eps 8/255), projected back to the ball.
* :func:`pgd`: Madry et al. 2018, ``steps`` signed steps of ``alpha`` from a uniform
  random start, projected to the L-inf ball and to ``[0, 1]``.
* :func:`patch_attack`: a square patch at a random place per image, optimised by
  signed gradient ascent on the loss (a defence against patches, Rao et al. 2020).

Training recipes (``attack``): ``fgsm`` trains on ``0.5 CE(x) + 0.5 CE(x_fgsm)``
(Goodfellow's mix, alpha 0.5); ``fgsm-rs``, ``pgd`` and ``patch`` train on the
adversarial images only. Each epoch checks PGD and FGSM accuracy on a fixed training
batch: a collapse of PGD accuracy (catastrophic overfitting, Wong et al. sec. 5.1) stops
training, and the best checkpoint by that PGD accuracy is kept.

The bare network is trained on a deep copy; the :class:`WrappedModel` given in stays
frozen, and the result is wrapped again (frozen) once training ends.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.wrapper import WrappedModel

log = logging.getLogger(__name__)

ATTACKS = ("fgsm", "fgsm-rs", "pgd", "patch")
Logits = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- step functions
def _grad(f: Logits, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(f(x), y)
    (g,) = torch.autograd.grad(loss, x)
    return g


def fgsm(
    f: Logits,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One-step L-inf attack; returns ``x_adv`` in ``[0, 1]`` with ``|x_adv - x| <= eps``.

    Args:
        f: images ``(B, 3, H, W)`` in ``[0, 1]`` -> logits.
        alpha: step size (default ``eps``; Wong et al. use ``1.25 eps`` with a random start).
        random_start: start from a uniform point in the eps-ball (Wong et al. 2020).
    """
    alpha = eps if alpha is None else alpha
    delta = torch.zeros_like(x)
    if random_start:
        delta = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
        delta = (x + delta).clamp(0, 1) - x
    g = _grad(f, x + delta, y)
    delta = (delta + alpha * g.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def pgd(
    f: Logits,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Madry et al. 2018 L-inf PGD (the torchattacks ``PGD`` iteration); returns ``x_adv``."""
    x = x.detach()
    xa = x.clone()
    if random_start:
        xa = (xa + (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        g = _grad(f, xa, y)
        xa = xa.detach() + alpha * g.sign()
        xa = (x + (xa - x).clamp(-eps, eps)).clamp(0, 1).detach()
    return xa


def patch_attack(
    f: Logits,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    frac: float = 0.05,
    steps: int = 10,
    alpha: float = 16 / 255,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A square patch covering ``frac`` of each image at a random place, its pixels optimised
    (untargeted, signed gradient ascent, ``steps`` of ``alpha``) from uniform noise."""
    b, _, h, w = x.shape
    s = max(1, int(round((frac * h * w) ** 0.5)))
    ys = torch.randint(0, h - s + 1, (b,), generator=generator).tolist()
    xs = torch.randint(0, w - s + 1, (b,), generator=generator).tolist()
    mask = torch.zeros(b, 1, h, w, device=x.device, dtype=x.dtype)
    for i in range(b):
        mask[i, :, ys[i] : ys[i] + s, xs[i] : xs[i] + s] = 1
    p = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    for _ in range(steps):
        g = _grad(f, x * (1 - mask) + p * mask, y)
        p = (p + alpha * g.sign()).clamp(0, 1)
    return (x * (1 - mask) + p * mask).detach()


# ------------------------------------------------------------ robust accuracy
@dataclass(frozen=True)
class RobustAccuracy:
    """Accuracy of a model on clean, FGSM and PGD images (fractions) over ``n`` images."""

    clean: float
    fgsm: float
    pgd: float
    n: int
    eps: float
    pgd_steps: int
    pgd_alpha: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RobustAccuracy":
        return cls(
            clean=float(d["clean"]),
            fgsm=float(d["fgsm"]),
            pgd=float(d["pgd"]),
            n=int(d["n"]),
            eps=float(d["eps"]),
            pgd_steps=int(d["pgd_steps"]),
            pgd_alpha=float(d["pgd_alpha"]),
        )


def robust_accuracy(
    f: Logits,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 8 / 255,
    pgd_steps: int = 10,
    pgd_alpha: float = 2 / 255,
    batch_size: int = 256,
    seed: int = 0,
    attack_f: Logits | None = None,
    progress: Callable[[int], None] | None = None,
) -> RobustAccuracy:
    """Clean, FGSM (Goodfellow, step eps) and PGD-``pgd_steps`` (random start) accuracy of ``f``.

    Args:
        f: the judged model (images in ``[0, 1]`` -> logits).
        x: uint8 or float ``(N, 3, H, W)`` images; ``y``: labels in ``f``'s output order.
        attack_f: the model the attacks take gradients of (default ``f``): e.g. the undefended
            model for a non-adaptive attack on a defended ``f``, or ``f`` behind a BPDA defence.
    """
    attack_f = attack_f or f
    gen = torch.Generator().manual_seed(seed)
    c = a1 = a2 = 0
    n = int(x.shape[0])
    for s in range(0, n, batch_size):
        xb = x[s : s + batch_size]
        xb = xb.float().div(255.0) if xb.dtype == torch.uint8 else xb.float()
        yb = y[s : s + batch_size].to(xb.device)
        with torch.no_grad():
            c += int((f(xb).argmax(1) == yb).sum())
        xf = fgsm(attack_f, xb, yb, eps=eps)
        xp = pgd(attack_f, xb, yb, eps=eps, alpha=pgd_alpha, steps=pgd_steps, generator=gen)
        with torch.no_grad():
            a1 += int((f(xf).argmax(1) == yb).sum())
            a2 += int((f(xp).argmax(1) == yb).sum())
        if progress is not None:
            progress(int(xb.shape[0]))
    return RobustAccuracy(clean=c / n, fgsm=a1 / n, pgd=a2 / n, n=n, eps=eps, pgd_steps=pgd_steps, pgd_alpha=pgd_alpha)


# ------------------------------------------------------------------ training
@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of adversarial fine-tuning (keyword-only).

    Attributes:
        attack: ``fgsm`` (Goodfellow mix), ``fgsm-rs`` (Wong et al.), ``pgd`` (Madry) or ``patch``.
        eps: L-inf radius (pixels in ``[0, 1]``).
        alpha: training step size (default: eps for fgsm, 1.25 eps for fgsm-rs, eps/4 for pgd,
            16/255 for patch).
        epochs, batch_size, lr (peak of a one-cycle schedule: linear up for the first 40 %
            of the steps, then down to 0), momentum, weight_decay.
        train_pgd_steps: PGD steps when ``attack="pgd"``; patch_frac / patch_steps for ``patch``.
        check_n: images of the fixed training batch checked each epoch with PGD-``check_pgd_steps``.
        overfit_drop: catastrophic overfitting when the check batch's PGD accuracy falls more than
            this (absolute) below its best (Wong et al. use 0.2) ...
        overfit_gap: ... or FGSM accuracy exceeds PGD accuracy by more than this while PGD
            accuracy is under ``overfit_floor`` ...
        overfit_ratio, overfit_min_fgsm, overfit_fgsm_rise: ... or, on two epochs in a row, PGD
            accuracy is under ``overfit_ratio`` of an FGSM accuracy of at least
            ``overfit_min_fgsm``, and between them FGSM accuracy rose by ``overfit_fgsm_rise`` or
            more while PGD accuracy did not rise (the model learns to beat the one-step attack
            only: FGSM climbing with PGD flat at zero, before the gap grows large). Early
            ``fgsm-rs`` epochs are lopsided too, but there PGD accuracy rises while FGSM does not.
        augment: random crop (pad H/8) and horizontal flip.
        seed: seeds the split's shuffling, augmentation and attack starts.
    """

    attack: str = "fgsm-rs"
    eps: float = 8 / 255
    alpha: float | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    train_pgd_steps: int = 7
    patch_frac: float = 0.05
    patch_steps: int = 10
    check_n: int = 256
    check_pgd_steps: int = 10
    overfit_drop: float = 0.2
    overfit_gap: float = 0.4
    overfit_floor: float = 0.1
    overfit_ratio: float = 0.25
    overfit_min_fgsm: float = 0.2
    overfit_fgsm_rise: float = 0.02
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ConfigError(f"unknown training attack {self.attack!r}; choose one of {', '.join(ATTACKS)}")
        if not 0 < self.eps <= 1:
            raise ConfigError(f"eps must be in (0, 1] (pixels in [0, 1]; 8/255 = {8 / 255:.4f}), got {self.eps}")
        if self.epochs < 1 or self.batch_size < 1 or self.check_n < 1:
            raise ConfigError("epochs, batch size and check batch must be >= 1")

    @property
    def step(self) -> float:
        if self.alpha is not None:
            return self.alpha
        return {"fgsm": self.eps, "fgsm-rs": 1.25 * self.eps, "pgd": self.eps / 4, "patch": 16 / 255}[self.attack]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "step": self.step}


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: training loss/accuracy and the fixed-batch check (epoch 0: before training)."""

    epoch: int
    loss: float
    train_acc: float
    check_clean: float
    check_fgsm: float
    check_pgd: float
    lr: float
    seconds: float
    overfit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpochRecord":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class TrainResult:
    """What :func:`adversarial_finetune` did."""

    config: TrainConfig
    history: list[EpochRecord]
    best_epoch: int
    overfit_epoch: int | None
    overfit_reason: str
    wall_s: float
    state_dict: dict[str, torch.Tensor] = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "history": [h.to_dict() for h in self.history],
            "best_epoch": self.best_epoch,
            "overfit_epoch": self.overfit_epoch,
            "overfit_reason": self.overfit_reason,
            "wall_s": self.wall_s,
        }


class _Net(nn.Module):
    """The trainable copy: normalisation of the wrapper in front of the bare network."""

    def __init__(self, model: WrappedModel):
        super().__init__()
        self.net = copy.deepcopy(model.net)
        self._norm = model.normalize  # resizes and normalises; holds no parameters
        for p in self.net.parameters():
            p.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._norm(x))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    flip = (torch.rand(b, generator=gen) < 0.5).tolist()
    out = torch.stack([xp[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    idx = [i for i in range(b) if flip[i]]
    if idx:
        out[idx] = out[idx].flip(-1)
    return out


def _check(f: Logits, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> tuple[float, float, float]:
    r = robust_accuracy(
        f,
        x,
        y,
        eps=cfg.eps,
        pgd_steps=cfg.check_pgd_steps,
        pgd_alpha=max(cfg.eps / 4, 0.5 / 255),
        batch_size=len(x),
        seed=cfg.seed + 1,
    )
    return r.clean, r.fgsm, r.pgd


def overfit_reason(rec: EpochRecord, best_pgd: float, cfg: TrainConfig, prev: EpochRecord | None = None) -> str:
    """Why ``rec`` is catastrophic overfitting (each rule that fired, joined by ``"; "``), or ``""``.

    ``prev`` is the epoch before (the persistence rule needs two epochs in a row)."""

    def lopsided(r: EpochRecord) -> bool:
        return r.check_fgsm >= cfg.overfit_min_fgsm and r.check_pgd < cfg.overfit_ratio * r.check_fgsm

    why = []
    if rec.check_pgd < best_pgd - cfg.overfit_drop:
        why.append(
            f"PGD accuracy on the check batch fell from {best_pgd:.1%} to {rec.check_pgd:.1%} "
            f"(more than {cfg.overfit_drop:.0%})"
        )
    if rec.check_pgd < cfg.overfit_floor and rec.check_fgsm - rec.check_pgd > cfg.overfit_gap:
        why.append(
            f"FGSM accuracy {rec.check_fgsm:.1%} but PGD accuracy {rec.check_pgd:.1%} on the check batch "
            "(the model learned to defeat FGSM only)"
        )
    elif (
        prev is not None
        and lopsided(prev)
        and lopsided(rec)
        and rec.check_fgsm - prev.check_fgsm >= cfg.overfit_fgsm_rise
        and rec.check_pgd <= prev.check_pgd
    ):
        why.append(
            f"PGD accuracy under {cfg.overfit_ratio:.0%} of FGSM accuracy two epochs in a row on the check batch, "
            "FGSM rising and PGD not "
            f"(FGSM {prev.check_fgsm:.1%} -> {rec.check_fgsm:.1%}, PGD {prev.check_pgd:.1%} -> {rec.check_pgd:.1%}: "
            "the model is learning to defeat FGSM only)"
        )
    return "; ".join(why)


def adversarial_finetune(
    model: WrappedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    config: TrainConfig,
    state: dict[str, Any] | None = None,
    save_state: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> TrainResult:
    """Fine-tune a copy of ``model``'s network adversarially on ``x, y`` (``model`` is not changed).

    Args:
        model: the wrapped classifier; its preprocessing is used as is.
        x: training images uint8 ``(N, 3, H, W)``; ``y``: labels in the model's output order.
        config: :class:`TrainConfig`.
        state: a dict from an earlier ``save_state`` call: training resumes after its epoch.
        save_state: called after every epoch with a resumable state (the CLI writes it atomically).
        progress: called with the number of training images done.

    Returns:
        A :class:`TrainResult` whose ``state_dict`` is the best checkpoint's weights.
    """
    cfg = config
    dev = model.mean.device
    net = _Net(model).to(dev)
    opt = torch.optim.SGD(net.net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n = int(x.shape[0])
    per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    total = per_epoch * cfg.epochs
    up = max(1, int(0.4 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(  # one cycle: linear up to lr, then linear down to 0
        opt, lambda t: (t + 1) / up if t < up else max(0.0, (total - t) / max(1, total - up))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    check_idx = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7))[: cfg.check_n]
    xc, yc = x[check_idx].to(dev).float() / 255.0, y[check_idx].to(dev)

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().cpu() for k, v in net.net.state_dict().items()}

    def evaluate_check() -> tuple[float, float, float]:
        net.eval()
        try:
            return _check(net, xc, yc, cfg)
        finally:
            net.train()

    t_start = time.perf_counter()
    wall0 = 0.0
    if state is not None:
        state = copy.deepcopy(state)  # the optimiser would otherwise share (and mutate) the caller's buffers
        if state.get("config") != cfg.to_dict():
            raise ConfigError("the saved training state was made with other settings; start again with --restart")
        net.net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        history = [EpochRecord.from_dict(h) for h in state["history"]]
        best_state, best_epoch, best_pgd = state["best"], int(state["best_epoch"]), float(state["best_pgd"])
        wall0 = float(state.get("wall_s", 0.0))
        if state.get("overfit_epoch") is not None:
            return TrainResult(
                cfg, history, best_epoch, state["overfit_epoch"], state["overfit_reason"], wall0, best_state
            )
    else:
        t0 = time.perf_counter()
        c0, f0, p0 = evaluate_check()
        history = [EpochRecord(0, float("nan"), float("nan"), c0, f0, p0, 0.0, time.perf_counter() - t0)]
        best_state, best_epoch, best_pgd = snapshot(), 0, p0
    overfit_epoch, reason = None, ""
    net.train()
    for epoch in range(len(history), cfg.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        tot_loss = tot_ok = 0.0
        for s in range(0, n, cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            xb = x[idx].to(dev).float() / 255.0
            yb = y[idx].to(dev)
            if cfg.augment:
                xb = _augment(xb, gen)
            if cfg.attack == "fgsm":
                xa = fgsm(net, xb, yb, eps=cfg.eps, alpha=cfg.step)
                out = net(torch.cat([xb, xa]))
                loss = 0.5 * F.cross_entropy(out[: len(xb)], yb) + 0.5 * F.cross_entropy(out[len(xb) :], yb)
                out = out[len(xb) :]
            else:
                if cfg.attack == "fgsm-rs":
                    xa = fgsm(net, xb, yb, eps=cfg.eps, alpha=cfg.step, random_start=True, generator=gen)
                elif cfg.attack == "pgd":
                    xa = pgd(net, xb, yb, eps=cfg.eps, alpha=cfg.step, steps=cfg.train_pgd_steps, generator=gen)
                else:
                    xa = patch_attack(
                        net, xb, yb, frac=cfg.patch_frac, steps=cfg.patch_steps, alpha=cfg.step, generator=gen
                    )
                out = net(xa)
                loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += float(loss.detach()) * len(xb)
            tot_ok += float((out.argmax(1) == yb).sum())
            if progress is not None:
                progress(len(xb))
        lr = float(opt.param_groups[0]["lr"])
        c, fa, pa = evaluate_check()
        rec = EpochRecord(epoch, tot_loss / n, tot_ok / n, c, fa, pa, lr, time.perf_counter() - t0)
        reason = overfit_reason(rec, best_pgd, cfg, history[-1] if history else None)
        if reason:
            rec = EpochRecord(**{**rec.to_dict(), "overfit": reason})
        history.append(rec)
        log.info(
            "epoch %d: loss %.3f train acc %.3f check clean %.3f fgsm %.3f pgd %.3f%s",
            epoch,
            rec.loss,
            rec.train_acc,
            c,
            fa,
            pa,
            f" OVERFIT: {reason}" if reason else "",
        )
        if not reason and pa > best_pgd:
            best_state, best_epoch, best_pgd = snapshot(), epoch, pa
        if reason:
            overfit_epoch = epoch
        wall = wall0 + time.perf_counter() - t_start
        if save_state is not None:
            save_state(
                {
                    "config": cfg.to_dict(),
                    "net": snapshot(),
                    "opt": copy.deepcopy(opt.state_dict()),
                    "sched": sched.state_dict(),
                    "gen": gen.get_state(),
                    "history": [h.to_dict() for h in history],
                    "best": best_state,
                    "best_epoch": best_epoch,
                    "best_pgd": best_pgd,
                    "wall_s": wall,
                    "overfit_epoch": overfit_epoch,
                    "overfit_reason": reason,
                }
            )
        if reason:
            break
    return TrainResult(
        cfg, history, best_epoch, overfit_epoch, reason, wall0 + time.perf_counter() - t_start, best_state
    )


def trained_card(
    card: dict[str, Any],
    *,
    name: str,
    weights: str,
    result: TrainResult,
    before: RobustAccuracy,
    after: RobustAccuracy,
    split: dict[str, Any],
    base_card_path: str,
) -> dict[str, Any]:
    """The card of the fine-tuned model: the original's build and preprocessing keys, new
    weights, and an ``adversarial_training`` record (before/after on the held-out split)."""
    keep = ("framework", "arch", "kwargs", "input_size", "resize", "mean", "std", "labels")
    out = {k: card[k] for k in keep if k in card}
    out.update(name=name, weights=weights, dtype="float32")
    out["adversarial_training"] = {
        "base_card": base_card_path,
        "base_name": card.get("name"),
        **result.to_dict(),
        "heldout_before": before.to_dict(),
        "heldout_after": after.to_dict(),
        "split": split,
    }
    out["test_accuracy_heldout"] = after.clean
    return out


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``state_dict`` as safetensors, atomically."""
    from safetensors.torch import save

    from ..utils import atomic_write_bytes

    sd = {k: v.contiguous() for k, v in state_dict.items()}
    return atomic_write_bytes(path, save(sd))


def class_labels_to_model(classes: Sequence[str], model: WrappedModel, labels: torch.Tensor) -> torch.Tensor:
    """Data-set labels -> the model's output indices (by class name)."""
    from ..data import match_labels

    return match_labels(classes, model.labels, model_name=model.name)[labels]
