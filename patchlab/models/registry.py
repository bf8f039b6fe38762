"""patchlab's own architectures: one small registry, no if-chains on names.

timm and torchvision have their own factories; this registry holds only what they
lack (the CIFAR ResNets of He et al.) and whatever later stages register (the
procedural sign world's small models).
"""

from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn

from .cifar_resnet import _depth_builder

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, builder: Callable[..., nn.Module] | None = None):
    """Register ``builder`` under ``name``; usable as a decorator."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS and _BUILDERS[name] is not fn:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn

    return deco(builder) if builder is not None else deco


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def get_builder(name: str) -> Callable[..., nn.Module] | None:
    return _BUILDERS.get(name)


for _depth in (20, 32, 44, 56, 110):
    register_model(f"cifar_resnet{_depth}", _depth_builder(_depth))
