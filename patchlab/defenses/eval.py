"""How much a defence removes from an attack, and how much an adaptive attacker wins back."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from ..models.wrapper import WrappedModel
from .filters import Defense, adaptive, get_defense
from .model import defend
from .train import RobustAccuracy, robust_accuracy


@dataclass(frozen=True)
class DefenseRow:
    """Accuracy of ``judged`` under FGSM/PGD whose gradients come from ``attacked``."""

    judged: str
    attacked: str
    acc: RobustAccuracy

    def to_dict(self) -> dict[str, Any]:
        return {"judged": self.judged, "attacked": self.attacked, **self.acc.to_dict()}


@dataclass(frozen=True)
class DefenseTable:
    """Three rows: the bare model attacked; the defended model under the same (non-adaptive)
    attack; the defended model attacked through the defence (adaptive, BPDA where needed)."""

    defense: str
    rows: list[DefenseRow]

    @property
    def lost(self) -> float:
        """PGD success (1 - accuracy) the plain attack loses to the defence, in points of accuracy."""
        return self.rows[1].acc.pgd - self.rows[0].acc.pgd

    @property
    def recovered(self) -> float:
        """Share of the lost success the adaptive attack wins back (1 = all of it)."""
        lost = self.lost
        return (self.rows[1].acc.pgd - self.rows[2].acc.pgd) / lost if lost > 0 else float("nan")

    def summary(self) -> str:
        return (
            f"PGD success lost to {self.defense}: {self.lost:.1%} (accuracy {self.rows[0].acc.pgd:.1%} -> "
            f"{self.rows[1].acc.pgd:.1%}); the adaptive attack brings accuracy to {self.rows[2].acc.pgd:.1%}, "
            f"recovering {self.recovered:.0%} of it"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "defense": self.defense,
            "rows": [r.to_dict() for r in self.rows],
            "lost": self.lost,
            "recovered": self.recovered,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DefenseTable":
        keys = ("clean", "fgsm", "pgd", "n", "eps", "pgd_steps", "pgd_alpha")
        return cls(
            defense=str(d["defense"]),
            rows=[
                DefenseRow(r["judged"], r["attacked"], RobustAccuracy.from_dict({k: r[k] for k in keys}))
                for r in d["rows"]
            ],
        )


def replace_bpda(defense: Defense, bpda: bool) -> Defense:
    """``defense`` with the BPDA flag set to ``bpda`` (the same forward pass)."""
    if defense.bpda == bpda or defense.is_identity:
        return defense
    return adaptive(defense) if bpda else type(defense)(**defense.params())


def defense_table(
    model: WrappedModel,
    defense: "Defense | str",
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 8 / 255,
    pgd_steps: int = 10,
    pgd_alpha: float = 2 / 255,
    batch_size: int = 100,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> DefenseTable:
    """Judge ``defense`` on ``model`` against FGSM and PGD, plain and adaptive (see :class:`DefenseTable`).

    ``x``: ``(N, 3, H, W)`` uint8 or float in ``[0, 1]``; ``y``: labels in the model's output order.
    """
    d = get_defense(defense)
    plain_d = replace_bpda(d, False)
    judged = defend(model, plain_d)
    through = defend(model, adaptive(plain_d))
    kw = dict(eps=eps, pgd_steps=pgd_steps, pgd_alpha=pgd_alpha, batch_size=batch_size, seed=seed)
    rows = [
        DefenseRow(model.name, model.name, robust_accuracy(model, x, y, progress=progress, **kw)),
        DefenseRow(judged.name, model.name, robust_accuracy(judged, x, y, attack_f=model, progress=progress, **kw)),
        DefenseRow(judged.name, through.name, robust_accuracy(judged, x, y, attack_f=through, progress=progress, **kw)),
    ]
    return DefenseTable(plain_d.spec, rows)


__all__ = ["DefenseRow", "DefenseTable", "adaptive", "defense_table", "replace"]
