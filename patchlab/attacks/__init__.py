"""Image attacks on wrapped models: one contract (:mod:`patchlab.attacks.base`), one result.

Each attack registers itself in :data:`ATTACKS` (name -> function), so the
``patchlab attack NAME`` command and the evaluation code find it by name.
"""

from __future__ import annotations

from typing import Callable

from .base import AttackResult, as_float_images, as_model_list, lp_norms, resolve_target
from .stadv import stadv as _stadv

#: name -> attack function ``fn(models, images, target, *, labels=None, generator=None, **kw) -> AttackResult``
ATTACKS: dict[str, Callable[..., AttackResult]] = {}
ATTACKS["stadv"] = _stadv

# -- gradient attacks and regional masks (issue 12) --
from .gradient import bim, fgsm, fgvm, pgd, smoothness_loss, total_variation  # noqa: E402
from .regional import PAPER_SIZES, build_mask, parse_mask_spec, regional  # noqa: E402

ATTACKS.update(fgsm=fgsm, bim=bim, pgd=pgd, regional=regional, fgvm=fgvm)

__all__ = [
    "ATTACKS",
    "AttackResult",
    "PAPER_SIZES",
    "as_float_images",
    "as_model_list",
    "bim",
    "build_mask",
    "fgsm",
    "fgvm",
    "lp_norms",
    "parse_mask_spec",
    "pgd",
    "regional",
    "resolve_target",
    "smoothness_loss",
    "total_variation",
]
