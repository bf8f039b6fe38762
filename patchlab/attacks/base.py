"""What every image attack shares: model lists, targets, Lp norms and the result object.

The contract (the "library first" shape; ``patchlab.attacks`` builds on it):

* an attack is a function ``attack(models, images, target, *, labels=None,
  generator=None, **hyperparameters) -> AttackResult`` with keyword-only
  hyperparameters (foolbox, torchattacks' defaults);
* ``models`` is one wrapped model (:class:`patchlab.models.WrappedModel`, or
  ``patchlab.wrap(...)``) or a list of them (an ensemble: the losses are averaged);
* ``images`` are ``(N, 3, H, W)`` floats in ``[0, 1]`` (uint8 is accepted and
  divided by 255), at the data's resolution; each model resizes and normalises for
  itself;
* ``labels`` are the true classes as output indices of the first model (``None``:
  the first model's clean predictions stand in);
* ``target`` is ``None`` (untargeted), a class index, a class name, ``"random"``
  (a random class other than the true one, per image) or a ``(N,)`` tensor;
* everything stays on the models' device; the result's tensors come back on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import class_index
from ..errors import ConfigError
from ..stats import wilson_interval


def as_model_list(models: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """One model or a sequence of them, as a non-empty list whose labels agree."""
    ms = [models] if isinstance(models, nn.Module) else list(models)
    if not ms:
        raise ConfigError("no model given: pass a wrapped model or a list of them")
    for m in ms:
        if not isinstance(m, nn.Module):
            raise ConfigError(f"expected a wrapped model (patchlab.wrap / patchlab.load_model), got {type(m).__name__}")
    n = [len(getattr(m, "labels", [])) for m in ms]
    if len(set(n)) > 1:
        raise ConfigError(f"the models of an ensemble must share their classes; they have {n} labels")
    return ms


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 or float in [0, 1] -> float in [0, 1], with a clear error otherwise."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images of shape (N, 3, H, W) in [0, 1], got {got}")
    if images.dtype == torch.uint8:
        return images.float().div(255.0)
    if not images.is_floating_point():
        raise ValueError(f"expected images as float in [0, 1] or uint8, got dtype {images.dtype}")
    return images


def resolve_target(
    target: Any, labels: Sequence[str], true_labels: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """The target class per image, ``(N,)`` long, or ``None`` for an untargeted attack.

    Args:
        target: ``None``/``"none"`` (untargeted), an int, a class name, ``"random"``
            (uniform over the classes other than the true one, drawn from ``generator``)
            or a ``(N,)`` tensor of class indices.
        labels: the models' class names.
        true_labels: ``(N,)`` true classes (output indices).
        generator: the random source for ``"random"``.
    """
    n, k = int(true_labels.shape[0]), len(labels)
    if target is None or (isinstance(target, str) and target.lower() == "none"):
        return None
    if isinstance(target, torch.Tensor):
        t = target.to(torch.long).reshape(-1).cpu()
        if t.numel() == 1:
            t = t.expand(n).clone()
        if t.numel() != n or (t < 0).any() or (t >= k).any():
            raise ConfigError(f"target tensor must hold {n} class indices in [0, {k}), got {tuple(target.shape)}")
        return t
    if isinstance(target, str) and target.lower() == "random":
        if k < 2:
            raise ConfigError("target 'random' needs at least two classes")
        r = torch.randint(0, k - 1, (n,), generator=generator)
        return r + (r >= true_labels.cpu()).long()  # skip the true class
    if isinstance(target, bool) or not isinstance(target, (int, str)):
        raise ConfigError(f"target must be None, a class index, a class name or 'random', got {target!r}")
    if isinstance(target, int):
        if not 0 <= target < k:
            raise ConfigError(f"target class index {target} is out of range for {k} classes")
        idx = target
    else:
        try:
            idx = class_index(target, labels)
        except Exception as exc:  # DataError -> a config error of the attack
            raise ConfigError(str(exc)) from None
    return torch.full((n,), idx, dtype=torch.long)


def logit_margin(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per row of ``logits (N, K)``, the best logit other than ``classes`` minus the logit of
    ``classes`` (> 0: the top-1 is not that class). The C&W margin of PGD's ``loss="margin"``
    and of stAdv's eq. 3."""
    own = logits.gather(1, classes.view(-1, 1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(classes, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return others - own


def lp_norms(x: torch.Tensor, adv: torch.Tensor, *, tol: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-image perturbation sizes of ``adv - x`` (both ``(N, 3, H, W)`` in [0, 1]).

    ``l0`` is the fraction of pixel *locations* changed in any channel (Ozbulak et al.
    2020's code counts it this way), ``l2`` the Euclidean norm over all values and
    ``linf`` the largest absolute change.
    """
    d = (adv - x).flatten(2)  # (N, 3, HW)
    changed = (d.abs() > tol).any(dim=1).float()  # (N, HW)
    flat = d.flatten(1)
    return {"l0": changed.mean(1), "l2": flat.norm(dim=1), "linf": flat.abs().amax(1)}


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns (POT's result objects: frozen, ``to_dict``/``from_dict``).

    Attributes:
        attack: the attack's name (``pgd``, ``fgsm``, ``stadv``, ...).
        config: its resolved hyperparameters.
        adversarial: ``(N, 3, H, W)`` float in [0, 1], on the CPU; a failed image is
            returned as the attack left it (never zeros, never dropped).
        labels: ``(N,)`` true classes (output indices).
        target: ``(N,)`` target classes, or ``None`` when untargeted.
        predictions: ``(N,)`` the (first) model's prediction on ``adversarial``.
        success: ``(N,)`` bool: prediction == target (targeted) or != label (untargeted),
            judged on the ensemble's mean logits.
        l0, l2, linf: ``(N,)`` perturbation sizes (:func:`lp_norms`).
        class_names: the models' labels.
        extras: attack-specific per-image tensors (stAdv: ``flow``, ``flow_loss``).
    """

    attack: str
    config: dict[str, Any]
    adversarial: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor | None
    predictions: torch.Tensor
    success: torch.Tensor
    l0: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    class_names: list[str] = field(default_factory=list)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.success.shape[0])

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.n else float("nan")

    @property
    def success_ci95(self) -> tuple[float, float]:
        return wilson_interval(int(self.success.sum()), self.n)

    def to_dict(self, *, images: bool = False) -> dict[str, Any]:
        """JSON-ready record: config, summary and per-image results (images only if asked)."""
        d: dict[str, Any] = {
            "attack": self.attack,
            "config": dict(self.config),
            "class_names": list(self.class_names),
            "n": self.n,
            "success_rate": self.success_rate,
            "success_ci95": list(self.success_ci95),
            "labels": self.labels.tolist(),
            "target": None if self.target is None else self.target.tolist(),
            "predictions": self.predictions.tolist(),
            "success": self.success.tolist(),
            "l0": self.l0.tolist(),
            "l2": self.l2.tolist(),
            "linf": self.linf.tolist(),
            "extras": {k: v.tolist() for k, v in self.extras.items() if v.ndim <= 1},
        }
        if images:
            d["adversarial"] = self.adversarial.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], adversarial: torch.Tensor | None = None) -> "AttackResult":
        """Rebuild a result from :meth:`to_dict` (the images from ``d`` or passed in)."""
        adv = adversarial if adversarial is not None else torch.tensor(d.get("adversarial", []), dtype=torch.float32)
        t = d.get("target")
        return cls(
            attack=d["attack"],
            config=dict(d.get("config", {})),
            adversarial=adv,
            labels=torch.tensor(d["labels"], dtype=torch.long),
            target=None if t is None else torch.tensor(t, dtype=torch.long),
            predictions=torch.tensor(d["predictions"], dtype=torch.long),
            success=torch.tensor(d["success"], dtype=torch.bool),
            l0=torch.tensor(d["l0"]),
            l2=torch.tensor(d["l2"]),
            linf=torch.tensor(d["linf"]),
            class_names=list(d.get("class_names", [])),
            extras={k: torch.tensor(v) for k, v in d.get("extras", {}).items()},
        )


__all__ = ["AttackResult", "as_model_list", "as_float_images", "resolve_target", "logit_margin", "lp_norms"]
