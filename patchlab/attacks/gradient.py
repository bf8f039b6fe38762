"""Gradient attacks in pixel space: FGSM, BIM (I-FGSM), PGD (Linf and L2) and FGVM.

All of them are one loop (:func:`iterate`) with small hooks, as foolbox's
gradient-descent base: an *init* (the start point), a *loss* (cross-entropy to the
true class, ascended, or to the target class, descended; an ensemble averages its
models' losses), a *step* (the sign of the gradient for Linf, the gradient scaled
to unit L2 norm for L2, Adam or the gradient scaled by its largest value for FGVM)
and a *project* (back into the eps-ball and into [0, 1]). A regional attack
(:mod:`patchlab.attacks.regional`) multiplies every step by a mask.

The hyperparameters default to torchattacks' values (FGSM eps 8/255; BIM and PGD eps
8/255, alpha 2/255, 10 steps; PGD-L2 eps 1.0, alpha 0.2), and with random start off
the images match torchattacks' to float precision: the loss is the batch-mean
cross-entropy, as ``nn.CrossEntropyLoss()`` (the tests check this on real models).

References:
    Goodfellow, Shlens & Szegedy 2015, "Explaining and harnessing adversarial
    examples" (FGSM, eq. 3); Kurakin, Goodfellow & Bengio 2017, "Adversarial examples
    in the physical world" (BIM, eq. 1-2); Madry et al. 2018, "Towards deep learning
    models resistant to adversarial attacks" (PGD, eq. 2); Rozsa, Rudd & Boult 2016,
    "Adversarial diversity and hard positive generation" (the fast gradient value
    method); seed 004 (iterative targeted FGVM with Adam and a smoothness loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import AttackResult, as_float_images, as_model_list, logit_margin, lp_norms, resolve_target

#: torchattacks' defaults, per norm: (eps, alpha).
DEFAULTS = {"linf": (8 / 255, 2 / 255), "l2": (1.0, 0.2)}
#: Added to the gradient's L2 norm before dividing by it (torchattacks' ``eps_for_division``).
L2_DIVISION_EPS = 1e-10
#: The smoothness kernel of seed 004: a pixel against its right, lower and lower-right neighbours.
SMOOTHNESS_KERNEL = ((0.0, 0.0, 0.0), (0.0, -3.0, 1.0), (0.0, 1.0, 1.0))

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- shared plumbing ---------------------------------------------------------------


def model_device(model: nn.Module) -> torch.device:
    """Where a model's tensors live (its first parameter or buffer; CPU for an empty module)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@dataclass(frozen=True)
class Problem:
    """One attack's data, on the models' device: images, true and target classes."""

    models: list[nn.Module]
    x: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor | None

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def goal(self) -> torch.Tensor:
        """The class the loss is taken against: the target, or the true class."""
        return self.labels if self.target is None else self.target


def ensemble_logits(models: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The models' mean logits (one model: its logits)."""
    out = models[0](x)
    for m in models[1:]:
        out = out + m(x)
    return out / len(models) if len(models) > 1 else out


@torch.no_grad()
def predict(models: Sequence[nn.Module], x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Top-1 classes of the ensemble's mean logits, ``(N,)`` on ``x``'s device."""
    return (
        torch.cat([ensemble_logits(models, x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])
        if x.shape[0]
        else x.new_zeros(0, dtype=torch.long)
    )


def setup(
    models: Any,
    images: torch.Tensor,
    target: Any,
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Problem:
    """Check and move the inputs of an attack (the contract of :mod:`patchlab.attacks.base`)."""
    ms = as_model_list(models)
    dev = model_device(ms[0])
    x = as_float_images(images).detach().to(dev)
    if x.shape[0] and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(f"expected images in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    if labels is None:
        with torch.no_grad():
            y = ms[0](x).argmax(1) if x.shape[0] else torch.zeros(0, dtype=torch.long, device=dev)
    else:
        y = torch.as_tensor(labels, dtype=torch.long).reshape(-1).to(dev)
        if y.shape[0] != x.shape[0]:
            raise ConfigError(f"got {y.shape[0]} labels for {x.shape[0]} images")
    names = list(getattr(ms[0], "labels", [])) or [str(i) for i in range(int(ms[0](x[:1]).shape[1]))]
    t = resolve_target(target, names, y.cpu(), generator=generator)
    return Problem(ms, x, y, None if t is None else t.to(dev))


def cross_entropy_objective(problem: Problem) -> Loss:
    """The loss to *ascend*: CE to the true class, or minus CE to the target (torchattacks' sign).

    ``loss(adv, idx)`` takes the current images of the rows ``idx`` of the problem.
    Each model's CE is the batch mean (``nn.CrossEntropyLoss()``); an ensemble averages them.
    """

    def loss(adv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        goal = problem.goal[idx]
        ce = sum(F.cross_entropy(m(adv), goal) for m in problem.models) / len(problem.models)
        return -ce if problem.targeted else ce

    return loss


#: The losses the gradient attacks can ascend: torchattacks' cross-entropy (the default) and the
#: Carlini-Wagner margin on logits, which keeps a useful gradient where the softmax is flat.
LOSSES = ("ce", "margin")


def margin_objective(problem: Problem) -> Loss:
    """The loss to *ascend* on the C&W margin (Carlini & Wagner 2017, eq. f6 with kappa 0 unclipped):
    untargeted, ``max_{i != y} Z_i - Z_y``; targeted, ``Z_t - max_{i != t} Z_i``. Summed over the
    batch (the sign step only needs each row's direction); an ensemble averages its models' logits."""

    def loss(adv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        m = logit_margin(ensemble_logits(problem.models, adv), problem.goal[idx])
        return (-m if problem.targeted else m).sum()

    return loss


def objective(problem: Problem, name: str) -> Loss:
    """The loss called ``name`` (:data:`LOSSES`) for ``problem``."""
    return margin_objective(problem) if name == "margin" else cross_entropy_objective(problem)


def check_loss(name: str) -> str:
    n = str(name).lower().strip()
    if n not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}: use {' or '.join(LOSSES)}")
    return n


def finish(
    name: str,
    config: dict[str, Any],
    problem: Problem,
    adv: torch.Tensor,
    extras: dict[str, torch.Tensor] | None = None,
) -> AttackResult:
    """Judge the adversarial images and pack the result (tensors on the CPU)."""
    adv = adv.detach()
    with torch.no_grad():
        first = predict(problem.models[:1], adv)
        joint = first if len(problem.models) == 1 else predict(problem.models, adv)
    success = joint == problem.target if problem.targeted else joint != problem.labels
    norms = lp_norms(problem.x, adv)
    return AttackResult(
        attack=name,
        config=dict(config),
        adversarial=adv.cpu(),
        labels=problem.labels.cpu(),
        target=None if problem.target is None else problem.target.cpu(),
        predictions=first.cpu(),
        success=success.cpu(),
        l0=norms["l0"].cpu(),
        l2=norms["l2"].cpu(),
        linf=norms["linf"].cpu(),
        class_names=list(getattr(problem.models[0], "labels", [])),
        extras={k: v.detach().cpu() for k, v in (extras or {}).items()},
    )


def per_image_norm(t: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each image of ``t``, shaped ``(N, 1, 1, 1)`` to broadcast."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, 1, 1, 1)


# -- hooks ---------------------------------------------------------------------------


def sign_step(alpha: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Linf steepest ascent: ``adv + alpha * sign(grad)`` (FGSM, BIM, PGD)."""
    return lambda adv, grad: adv + alpha * grad.sign()


def l2_step(alpha: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """L2 steepest ascent: ``adv + alpha * grad / (||grad||_2 + 1e-10)`` per image."""
    return lambda adv, grad: adv + alpha * (grad / (per_image_norm(grad) + L2_DIVISION_EPS))


def project_linf(x: torch.Tensor, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Back into ``[x - eps, x + eps]`` and ``[0, 1]`` (torchattacks' PGD arithmetic)."""

    def project(adv: torch.Tensor) -> torch.Tensor:
        delta = torch.clamp(adv - x, min=-eps, max=eps)
        return torch.clamp(x + delta, min=0, max=1)

    return project


def project_linf_clip(x: torch.Tensor, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same set as :func:`project_linf`, written as Kurakin et al.'s Clip (torchattacks' BIM):
    every value is ``adv``, ``x +- eps``, 0 or 1 exactly, with no rounding of ``x + (adv - x)``."""

    def project(adv: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.minimum(torch.maximum(adv, x - eps), x + eps), min=0, max=1)

    return project


def project_l2(x: torch.Tensor, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Back into the L2 ball of radius ``eps`` around ``x`` and into ``[0, 1]`` (torchattacks' PGD-L2)."""

    def project(adv: torch.Tensor) -> torch.Tensor:
        delta = adv - x
        factor = torch.clamp(eps / delta.flatten(1).norm(p=2, dim=1), max=1.0)
        return torch.clamp(x + delta * factor.view(-1, 1, 1, 1), min=0, max=1)

    return project


def iterate(
    x0: torch.Tensor,
    loss: Loss,
    *,
    steps: int,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    project: Callable[[torch.Tensor], torch.Tensor],
    mask: torch.Tensor | None = None,
    stop: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The one attack loop: ``steps`` times ascend ``loss``, step, mask, project.

    Args:
        x0: ``(N, 3, H, W)`` start images.
        loss: ``loss(adv, idx)`` for the rows ``idx`` (to be *maximised*).
        steps: iterations.
        step: ``step(adv, grad) -> adv'``.
        project: ``project(adv) -> adv`` (whole batch; rows outside the running set are
            projected too but left unchanged).
        mask: ``(N or 1, 1 or 3, H, W)`` in {0, 1}: where the image may change; the
            gradient is multiplied by it before the step (Ozbulak et al. 2020, eq. 2).
        stop: ``stop(adv_rows, idx) -> (n,) bool``: rows that are done; they keep
            their images and leave the loop (the released code of Ozbulak et al.).
        progress: called with 1 after each step.
    """
    adv = x0.detach()
    idx = torch.arange(adv.shape[0], device=adv.device)
    for _ in range(steps):
        if idx.numel() == 0:
            break
        rows = adv if stop is None else adv[idx]
        rows = rows.detach().requires_grad_(True)
        grad = torch.autograd.grad(loss(rows, idx), rows)[0]
        if mask is not None:
            grad = grad * (mask if mask.shape[0] == 1 else mask[idx])
        new = step(rows.detach(), grad)
        if stop is None:
            adv = project(new).detach()
        else:
            full = adv.clone()
            full[idx] = new
            adv = torch.where(_rows(idx, adv.shape[0]), project(full), adv).detach()
            with torch.no_grad():
                done = stop(adv[idx], idx)
            idx = idx[~done]
        if progress is not None:
            progress(1)
    return adv


def _rows(idx: torch.Tensor, n: int) -> torch.Tensor:
    keep = torch.zeros(n, dtype=torch.bool, device=idx.device)
    keep[idx] = True
    return keep.view(-1, 1, 1, 1)


def leaves_class(models: Sequence[nn.Module], problem: Problem) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A stop test: every model's top-1 has left the true class (or, targeted, reached the target)."""

    def stop(rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        done = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
        for m in models:
            pred = m(rows).argmax(1)
            done &= (pred == problem.target[idx]) if problem.targeted else (pred != problem.labels[idx])
        return done

    return stop


def random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """A uniform point of the Linf ball, or torchattacks' L2 draw (a Gaussian direction, radius
    ``eps * U(0, 1)``), clipped to [0, 1]; drawn on the CPU from ``generator`` (replayable on any device)."""
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x) * eps
    else:
        d = torch.randn(x.shape, generator=generator).to(x)
        r = torch.rand((x.shape[0], 1, 1, 1), generator=generator).to(x)
        delta = d * (r / per_image_norm(d) * eps)
    if mask is not None:
        delta = delta * mask
    return torch.clamp(x + delta, min=0, max=1)


def resolve_mask(mask: Any, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
    """A mask spec (:func:`patchlab.attacks.regional.parse_mask_spec`) or tensor, as a tensor like ``x``."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        from .regional import build_mask

        mask = build_mask(mask, tuple(x.shape[-2:]), n=int(x.shape[0]), generator=generator)
    return mask.to(x)


def mask_name(mask: Any) -> str | None:
    """How a mask goes into a run record: its spec, ``"tensor"`` or ``None``."""
    return None if mask is None else ("tensor" if isinstance(mask, torch.Tensor) else str(mask))


# -- argument checks -----------------------------------------------------------------


def check_norm(norm: str) -> str:
    n = str(norm).lower().strip()
    n = {"inf": "linf", "l_inf": "linf", "2": "l2"}.get(n, n)
    if n not in DEFAULTS:
        raise ConfigError(f"unknown norm {norm!r}: use linf or l2")
    return n


def check_budget(eps: float | None, alpha: float | None, steps: int, norm: str) -> tuple[float, float]:
    """Resolve ``None`` to the norm's torchattacks default and check the ranges (one clear line each)."""
    e = DEFAULTS[norm][0] if eps is None else float(eps)
    a = DEFAULTS[norm][1] if alpha is None else float(alpha)
    if norm == "linf" and not 0.0 < e <= 1.0:
        raise ConfigError(f"eps must be in (0, 1] for the Linf norm (pixels are in [0, 1]), got {e:g}")
    if norm == "l2" and not (e > 0.0 and math.isfinite(e)):
        raise ConfigError(f"eps must be > 0 for the L2 norm, got {e:g}")
    if not (a > 0.0 and math.isfinite(a)):
        raise ConfigError(f"alpha (the step size) must be > 0, got {a:g}")
    if int(steps) != steps or steps < 1:
        raise ConfigError(f"steps must be a whole number >= 1, got {steps}")
    return e, a


# -- the attacks ---------------------------------------------------------------------


def _gradient_attack(
    name: str,
    models: Any,
    images: torch.Tensor,
    target: Any,
    *,
    labels,
    generator,
    eps: float,
    alpha: float,
    steps: int,
    norm: str,
    rand_init: bool,
    clip_projection: bool,
    mask: torch.Tensor | None,
    stop_models: Sequence[nn.Module] | None,
    config: dict[str, Any],
    progress,
    loss: str = "ce",
) -> AttackResult:
    p = setup(models, images, target, labels=labels, generator=generator)
    m = resolve_mask(mask, p.x, generator)
    if m is not None and (m.ndim != 4 or m.shape[-2:] != p.x.shape[-2:] or m.shape[0] not in (1, p.x.shape[0])):
        raise ConfigError(f"the mask's shape {tuple(m.shape)} does not fit images of shape {tuple(p.x.shape)}")
    x0 = random_start(p.x, eps, norm, generator, m) if rand_init else p.x
    if norm == "linf":
        step, project = sign_step(alpha), (project_linf_clip if clip_projection else project_linf)(p.x, eps)
    else:
        step, project = l2_step(alpha), project_l2(p.x, eps)
    stop = leaves_class(list(stop_models), p) if stop_models else None
    adv = (
        iterate(
            x0,
            objective(p, loss),
            steps=steps,
            step=step,
            project=project,
            mask=m,
            stop=stop,
            progress=progress,
        )
        if p.x.shape[0]
        else p.x
    )
    return finish(name, config, p, adv)


def fgsm(
    models: Any,
    images: torch.Tensor,
    target: Any = None,
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    eps: float | None = None,
    norm: str = "linf",
    mask: str | torch.Tensor | None = None,
    loss: str = "ce",
    progress: Callable[[int], None] | None = None,
) -> AttackResult:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size ``eps``.

    ``x' = clip(x + eps * sign(grad))``; with ``norm="l2"`` the step is the gradient
    scaled to L2 length ``eps`` (the fast gradient method).

    Args:
        models: a wrapped model or a list (ensemble: mean of the losses).
        images: ``(N, 3, H, W)`` in [0, 1].
        target: ``None`` (untargeted), a class index or name, ``"random"``, or ``(N,)``.
        labels: true classes (default: the first model's predictions).
        generator: random source (``target="random"``).
        eps: step size and budget (default 8/255 Linf, 1.0 L2, torchattacks').
        norm: ``linf`` or ``l2``.
        mask: a mask spec (``center:m``, ...: :func:`patchlab.attacks.regional.parse_mask_spec`) or an
            ``(N or 1, 1, H, W)`` tensor in {0, 1}: only these pixels change (regional attack).
        loss: ``ce`` (torchattacks' batch-mean cross-entropy) or ``margin`` (the C&W logit margin: it
            keeps a direction where the softmax is flat, e.g. on label-smoothed models).
        progress: called once per step.
    """
    lo = check_loss(loss)
    n = check_norm(norm)
    e, _ = check_budget(eps, None, 1, n)
    cfg = {"eps": e, "norm": n, "loss": lo, "mask": mask_name(mask)}
    return _gradient_attack(
        "fgsm",
        models,
        images,
        target,
        labels=labels,
        generator=generator,
        eps=e,
        alpha=e,
        steps=1,
        norm=n,
        rand_init=False,
        clip_projection=False,
        mask=mask,
        stop_models=None,
        config=cfg,
        progress=progress,
        loss=lo,
    )


def bim(
    models: Any,
    images: torch.Tensor,
    target: Any = None,
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    eps: float | None = None,
    alpha: float | None = None,
    steps: int = 10,
    norm: str = "linf",
    mask: str | torch.Tensor | None = None,
    loss: str = "ce",
    progress: Callable[[int], None] | None = None,
) -> AttackResult:
    """Basic iterative method / I-FGSM (Kurakin et al. 2017): ``steps`` FGSM steps of ``alpha``, each
    clipped to the eps-ball around the image and to [0, 1]; starts at the image.

    Arguments as :func:`pgd` (torchattacks' BIM: eps 8/255, alpha 2/255, 10 steps).
    """
    lo = check_loss(loss)
    n = check_norm(norm)
    e, a = check_budget(eps, alpha, steps, n)
    cfg = {"eps": e, "alpha": a, "steps": int(steps), "norm": n, "loss": lo, "mask": mask_name(mask)}
    return _gradient_attack(
        "bim",
        models,
        images,
        target,
        labels=labels,
        generator=generator,
        eps=e,
        alpha=a,
        steps=int(steps),
        norm=n,
        rand_init=False,
        clip_projection=True,
        mask=mask,
        stop_models=None,
        config=cfg,
        progress=progress,
        loss=lo,
    )


def pgd(
    models: Any,
    images: torch.Tensor,
    target: Any = None,
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    eps: float | None = None,
    alpha: float | None = None,
    steps: int = 10,
    norm: str = "linf",
    random_start: bool = True,
    mask: str | torch.Tensor | None = None,
    loss: str = "ce",
    progress: Callable[[int], None] | None = None,
) -> AttackResult:
    """Projected gradient descent (Madry et al. 2018), Linf or L2, with an optional random start.

    Args:
        models: a wrapped model or a list (ensemble: mean of the losses).
        images: ``(N, 3, H, W)`` in [0, 1].
        target: ``None`` (untargeted), a class index or name, ``"random"``, or ``(N,)``.
        labels: true classes (default: the first model's predictions).
        generator: random source of the start point and of ``target="random"``.
        eps: budget (default: 8/255 for Linf, 1.0 for L2).
        alpha: step size (default: 2/255 for Linf, 0.2 for L2).
        steps: iterations (10).
        norm: ``linf`` or ``l2``.
        random_start: start at a uniform point of the eps-ball (torchattacks' default: on).
        mask: a mask spec (``center:m``, ...: :func:`patchlab.attacks.regional.parse_mask_spec`) or an
            ``(N or 1, 1, H, W)`` tensor in {0, 1}: only these pixels change (regional attack).
        loss: ``ce`` (torchattacks' batch-mean cross-entropy) or ``margin`` (the C&W logit margin).
        progress: called once per step.

    Returns:
        :class:`AttackResult`; ``config`` holds the resolved eps and alpha.
    """
    lo = check_loss(loss)
    n = check_norm(norm)
    e, a = check_budget(eps, alpha, steps, n)
    cfg = {
        "eps": e,
        "alpha": a,
        "steps": int(steps),
        "norm": n,
        "random_start": bool(random_start),
        "loss": lo,
        "mask": mask_name(mask),
    }
    return _gradient_attack(
        "pgd",
        models,
        images,
        target,
        labels=labels,
        generator=generator,
        eps=e,
        alpha=a,
        steps=int(steps),
        norm=n,
        rand_init=bool(random_start),
        clip_projection=False,
        mask=mask,
        stop_models=None,
        config=cfg,
        progress=progress,
        loss=lo,
    )


# -- FGVM with the smoothness loss of seed 004 -----------------------------------------


def smoothness_loss(x: torch.Tensor) -> torch.Tensor:
    """Seed 004's smoothness penalty per image: the sum of squares of ``x`` convolved (per channel,
    reflect padding) with ``[[0,0,0],[0,-3,1],[0,1,1]]`` (a pixel against its right, lower and
    lower-right neighbours). ``(N, C, H, W) -> (N,)``."""
    c = x.shape[1]
    k = torch.tensor(SMOOTHNESS_KERNEL, dtype=x.dtype, device=x.device).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    r = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=c)
    return r.pow(2).flatten(1).sum(1)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image: the sum of absolute differences of horizontal and
    vertical neighbours, over channels. ``(N, C, H, W) -> (N,)``."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)
    return dh + dw


def fgvm(
    models: Any,
    images: torch.Tensor,
    target: Any = None,
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    steps: int = 1000,
    lr: float = 1e-3,
    optimizer: str = "adam",
    smoothness: float = 0.05,
    init: str = "image",
    eps: float | None = None,
    mask: str | torch.Tensor | None = None,
    stop_prob: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> AttackResult:
    """Iterative fast gradient *value* method with seed 004's smoothness loss (targeted or not).

    Minimises ``CE(f(x'), target) + smoothness * S(x')`` per image (untargeted: maximises the CE to
    the true class), where ``S`` is :func:`smoothness_loss`; after each step ``x'`` is clipped to
    [0, 1] (and to the Linf ball ``eps`` around the start image when given).

    Args:
        models: a wrapped model or a list (ensemble: mean of the CE losses).
        images: ``(N, 3, H, W)`` in [0, 1]; the start (``init="image"``) and the reference of
            the Lp norms.
        target: the class to reach (a name, an index, ``"random"`` or ``(N,)``), or ``None``.
        labels: true classes (default: the first model's predictions).
        generator: random source of the noise start and of ``target="random"``.
        steps: iterations (seed 004 runs 10,000 with Adam; 1,000 reach its figures on the
            embedded world's LeNet).
        lr: Adam's learning rate (seed 004: 1e-3), or, for ``optimizer="value"``, the largest
            change of a pixel per step.
        optimizer: ``adam`` (seed 004) or ``value`` (Rozsa et al.'s fast gradient value step:
            the raw gradient divided by its largest absolute value, per image).
        smoothness: weight of the smoothness loss (seed 004: 0.05; 0 turns it off).
        init: ``image`` (start from the images) or ``noise`` (uniform noise: seed 004's
            "adversarial sample from scratch"; the images then only set the shape).
        eps: optional Linf bound around the start point.
        mask: ``(N or 1, 1, H, W)`` in {0, 1}: only these pixels change.
        stop_prob: stop an image once the (first) model gives the target this probability.
        progress: called once per step.

    Returns:
        :class:`AttackResult` with extras ``target_prob`` (the first model's probability of
        the goal class), ``smoothness`` (``S`` of each image) and ``tv``
        (:func:`total_variation`).
    """
    opt = str(optimizer).lower()
    if opt not in ("adam", "value"):
        raise ConfigError(f"unknown optimizer {optimizer!r}: use adam or value")
    start = str(init).lower()
    if start not in ("image", "noise"):
        raise ConfigError(f"unknown init {init!r}: use image or noise")
    if int(steps) != steps or steps < 1:
        raise ConfigError(f"steps must be a whole number >= 1, got {steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"lr must be > 0, got {lr:g}")
    if smoothness < 0:
        raise ConfigError(f"smoothness must be >= 0, got {smoothness:g}")
    if eps is not None and not 0.0 < eps <= 1.0:
        raise ConfigError(f"eps must be in (0, 1] (pixels are in [0, 1]), got {eps:g}")
    if stop_prob is not None and not 0.0 < stop_prob <= 1.0:
        raise ConfigError(f"stop_prob must be in (0, 1], got {stop_prob:g}")
    p = setup(models, images, target, labels=labels, generator=generator)
    m = resolve_mask(mask, p.x, generator)
    x_ref = p.x
    if start == "noise":
        x0 = torch.rand(p.x.shape, generator=generator).to(p.x)
        if m is not None:
            x0 = torch.where(m > 0, x0, p.x)
        p = Problem(p.models, x0, p.labels, p.target)
    adv = p.x.clone().requires_grad_(True)
    adam = torch.optim.Adam([adv], lr=lr) if opt == "adam" else None
    sign = 1.0 if p.targeted else -1.0  # minimise CE to the target, maximise CE to the true class
    active = torch.ones(adv.shape[0], dtype=torch.bool, device=adv.device)
    for _ in range(int(steps) if adv.shape[0] else 0):
        logits = [mdl(adv) for mdl in p.models]
        ce = sum(F.cross_entropy(lg, p.goal, reduction="none") for lg in logits) / len(logits)
        per_image = sign * ce + (smoothness * smoothness_loss(adv) if smoothness else 0.0)
        total = (per_image * active).sum()  # a sum: each image's step is the one it would take alone
        if adam is not None:
            adam.zero_grad(set_to_none=True)
            total.backward()
            grad = adv.grad
        else:
            grad = torch.autograd.grad(total, adv)[0]
        if m is not None:
            grad.mul_(m)
        with torch.no_grad():
            if adam is not None:
                adam.step()
            else:
                scale = grad.flatten(1).abs().amax(1).clamp_min(torch.finfo(grad.dtype).tiny).view(-1, 1, 1, 1)
                adv.sub_(lr * grad / scale)
            if eps is not None:
                adv.copy_(torch.minimum(torch.maximum(adv, p.x - eps), p.x + eps))
            adv.clamp_(0, 1)
            if stop_prob is not None:
                prob = F.softmax(logits[0].detach(), 1).gather(1, p.goal.view(-1, 1)).squeeze(1)
                active &= ~(prob >= stop_prob if p.targeted else prob <= 1 - stop_prob)
        if progress is not None:
            progress(1)
        if not active.any():
            break
    adv = adv.detach()
    with torch.no_grad():
        prob = (
            torch.cat([F.softmax(p.models[0](adv[i : i + 256]), 1) for i in range(0, adv.shape[0], 256)])
            if adv.shape[0]
            else adv.new_zeros(0, 1)
        )
        goal_prob = prob.gather(1, p.goal.view(-1, 1)).squeeze(1) if adv.shape[0] else adv.new_zeros(0)
        extras = {
            "target_prob": goal_prob,
            "smoothness": smoothness_loss(adv) if adv.shape[0] else adv.new_zeros(0),
            "tv": total_variation(adv) if adv.shape[0] else adv.new_zeros(0),
        }
    cfg = {
        "steps": int(steps),
        "lr": float(lr),
        "optimizer": opt,
        "smoothness": float(smoothness),
        "init": start,
        "eps": None if eps is None else float(eps),
        "stop_prob": stop_prob,
        "mask": mask_name(mask),
    }
    # The Lp norms are measured against the given images (for init="noise": against them, not the noise).
    return finish("fgvm", cfg, Problem(p.models, x_ref, p.labels, p.target), adv, extras)


__all__ = [
    "DEFAULTS",
    "Problem",
    "bim",
    "check_budget",
    "check_norm",
    "cross_entropy_objective",
    "ensemble_logits",
    "fgsm",
    "fgvm",
    "finish",
    "iterate",
    "leaves_class",
    "model_device",
    "pgd",
    "predict",
    "project_l2",
    "project_linf",
    "project_linf_clip",
    "random_start",
    "setup",
    "smoothness_loss",
    "total_variation",
]
