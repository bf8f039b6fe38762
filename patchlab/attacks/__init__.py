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

__all__ = ["ATTACKS", "AttackResult", "as_float_images", "as_model_list", "lp_norms", "resolve_target"]
