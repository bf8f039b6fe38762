"""Input defences applied to the classifier crop before the models see it.

A small registry (``--defense NAME[:PARAM]``): ``none``, ``blur[:SIGMA]`` (Gaussian
blur, sigma in crop pixels, default 1.0) and ``jpeg[:QUALITY]`` (JPEG round trip,
default quality 75). They work on the uint8 RGB crop at the classifier input size,
as a camera-side filter would. Stronger defences (local gradient smoothing, ...)
belong to the defences library; :func:`register_defense` adds one here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from patchlab.errors import ConfigError


@dataclass(frozen=True)
class Defense:
    """Base: the identity. ``apply`` takes and returns ``(N, H, W, 3)`` uint8 RGB."""

    name: str = "none"

    def apply(self, crops: np.ndarray) -> np.ndarray:
        _check(crops)
        return crops

    def to_dict(self) -> dict:
        return {"name": self.name, "repr": repr(self)}


@dataclass(frozen=True)
class BlurDefense(Defense):
    """Gaussian blur of ``sigma`` crop pixels (the classic low-pass defence)."""

    name: str = "blur"
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ConfigError(f"blur sigma must be > 0, got {self.sigma}")

    def apply(self, crops: np.ndarray) -> np.ndarray:
        _check(crops)
        return np.stack([cv2.GaussianBlur(c, (0, 0), self.sigma) for c in crops])


@dataclass(frozen=True)
class JpegDefense(Defense):
    """JPEG compression round trip at ``quality`` (Dziugaite et al. 2016, "A study of
    the effect of JPG compression on adversarial images")."""

    name: str = "jpeg"
    quality: int = 75

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"jpeg quality must be in 1..100, got {self.quality}")

    def apply(self, crops: np.ndarray) -> np.ndarray:
        _check(crops)
        out = []
        for c in crops:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(c, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                raise ConfigError("JPEG encoding failed")
            out.append(cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
        return np.stack(out)


def _check(crops: np.ndarray) -> None:
    if not isinstance(crops, np.ndarray) or crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        got = (crops.shape, crops.dtype) if isinstance(crops, np.ndarray) else type(crops).__name__
        raise ValueError(f"expected crops as (N, H, W, 3) uint8 RGB, got {got}")


_REGISTRY: dict[str, Callable[[str | None], Defense]] = {
    "none": lambda arg: Defense(),
    "blur": lambda arg: BlurDefense(sigma=float(arg)) if arg else BlurDefense(),
    "jpeg": lambda arg: JpegDefense(quality=int(arg)) if arg else JpegDefense(),
}


def register_defense(name: str, factory: Callable[[str | None], Defense]) -> None:
    """Add a defence: ``factory(param_text_or_None) -> Defense``."""
    _REGISTRY[name.lower()] = factory


def list_defenses() -> list[str]:
    return sorted(_REGISTRY)


def get_defense(spec: str | None) -> Defense:
    """``"none"``, ``"blur"``, ``"blur:1.5"``, ``"jpeg:50"`` ... -> a :class:`Defense`.

    Raises:
        ConfigError: an unknown name or a bad parameter.
    """
    text = (spec or "none").strip()
    name, _, arg = text.partition(":")
    key = name.lower()
    if key not in _REGISTRY:
        raise ConfigError(
            f"unknown defence {name!r}; choose one of {', '.join(list_defenses())} "
            "(optionally NAME:PARAM, e.g. blur:1.5 or jpeg:50)"
        )
    try:
        return _REGISTRY[key](arg or None)
    except ValueError as exc:
        raise ConfigError(f"bad parameter for defence {name!r}: {arg!r} ({exc})") from exc
