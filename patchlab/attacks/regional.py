"""Regional perturbations (Ozbulak et al. 2020): any gradient attack restricted by a mask.

Ozbulak, Peck, De Neve, Goossens, Saeys & Van Messem, "Regional image perturbation
reduces Lp norms of adversarial examples while maintaining model-to-model
transferability" (ICML 2020 UDL workshop): ``X_{n+1} = X_n + P_n * L`` (eq. 2), where
``L`` is a binary localisation mask. The paper's masks, on 224x224 images:

* ``center``: a centred square of side 90, 120, 150 px (16.14, 28.70, 44.84 % of the pixels);
* ``frame``: the outside of a centred square 20, 34, 58 px shorter than the image, i.e. a
  frame 10, 17, 29 px wide (17.06, 28.05, 45.08 %);
* ``random``: 17, 28, 45 % of the pixel locations, drawn at random.

Mask specs (:func:`parse_mask`): ``center:F`` / ``frame:F`` / ``random:F`` with F the
covered fraction (0 < F <= 1, or a percentage such as ``17%``), ``center:Npx`` (side) and
``frame:Npx`` (width of each side), ``KIND:s|m|l`` for the paper's three sizes, and an image
file (``file:PATH`` or a path): its non-black pixels (grey > 0.5) are the region.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, DataError
from .base import AttackResult

#: The paper's sizes (fraction of pixel locations), small / medium / large.
PAPER_SIZES: dict[str, dict[str, float]] = {
    "center": {"s": 0.1614, "m": 0.2870, "l": 0.4484},
    "frame": {"s": 0.1706, "m": 0.2805, "l": 0.4508},
    "random": {"s": 0.17, "m": 0.28, "l": 0.45},
}
#: The released code's settings (``released=True``): step 1/255, at most 250 iterations, no eps
#: bound beyond [0, 1] (the paper's Linf reaches 0.2), and each image stops as soon as the
#: transfer models' top-1 leaves its class.
RELEASED = {"alpha": 1 / 255, "steps": 250, "eps": 1.0, "random_start": False}

_SPEC = re.compile(
    r"^(center|centre|frame|random):\s*([0-9.]+)\s*(px|%)?$|^(center|centre|frame|random):\s*([sml])$", re.IGNORECASE
)


@dataclass(frozen=True)
class MaskSpec:
    """A parsed mask spec: ``kind`` (center, frame, random, file) and its size."""

    kind: str
    fraction: float | None = None
    pixels: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.kind == "file":
            return f"file:{self.path}"
        return f"{self.kind}:{self.pixels}px" if self.pixels is not None else f"{self.kind}:{self.fraction:g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "fraction": self.fraction,
            "pixels": self.pixels,
            "path": self.path,
            "spec": str(self),
        }


def parse_mask_spec(spec: str) -> MaskSpec:
    """Parse ``center:0.17``, ``frame:17%``, ``random:m``, ``center:13px``, ``file:PATH`` or a path.

    Raises:
        ConfigError: the spec is not one of these forms, or a fraction is outside (0, 1].
    """
    s = str(spec).strip()
    if s.lower().startswith("file:") or (":" not in s and Path(s).suffix):
        path = s[5:] if s.lower().startswith("file:") else s
        if not Path(path).is_file():
            raise ConfigError(f"mask image not found: {path}")
        return MaskSpec("file", path=path)
    m = _SPEC.match(s)
    if not m:
        raise ConfigError(
            f"unknown mask spec {spec!r}: use center:F, frame:F or random:F (F a fraction or N%), "
            "center:Npx, frame:Npx, KIND:s|m|l (the paper's sizes) or file:PATH"
        )
    if m.group(4):
        kind = "center" if m.group(4).lower() == "centre" else m.group(4).lower()
        return MaskSpec(kind, fraction=PAPER_SIZES[kind][m.group(5).lower()])
    kind = "center" if m.group(1).lower() == "centre" else m.group(1).lower()
    value, unit = float(m.group(2)), (m.group(3) or "").lower()
    if unit == "px":
        if kind == "random":
            raise ConfigError(f"mask spec {spec!r}: a random mask takes a fraction (random:0.17), not pixels")
        if value != int(value):
            raise ConfigError(f"mask spec {spec!r}: pixels must be a whole number")
        return MaskSpec(kind, pixels=int(value))
    frac = value / 100.0 if unit == "%" else value
    if not 0.0 < frac <= 1.0:
        raise ConfigError(f"mask spec {spec!r}: the fraction must be in (0, 1] (or a percentage in (0, 100])")
    return MaskSpec(kind, fraction=frac)


def _side_for(fraction: float, n: int) -> int:
    return int(round(math.sqrt(fraction) * n))


def build_mask(
    spec: str | MaskSpec, size: tuple[int, int], *, n: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The ``(n or 1, 1, H, W)`` float mask (1 = may change) of a spec for images of ``size``.

    ``center``/``frame`` fractions are met as closely as whole pixels allow (a centred
    square of side ``round(sqrt(F) * H)``; a frame whose inner square is
    ``round(sqrt(1 - F) * H)``, with any odd pixel on the right/bottom). ``random`` draws
    ``round(F * H * W)`` locations per image from ``generator``. One mask serves all
    images except for ``random``.

    Raises:
        ConfigError: the mask covers no pixel, or does not fit images of ``size``.
    """
    ms = spec if isinstance(spec, MaskSpec) else parse_mask_spec(spec)
    h, w = int(size[0]), int(size[1])
    mask = torch.zeros(1, 1, h, w)
    if ms.kind == "file":
        from ..data import read_image

        try:
            img = read_image(ms.path)
        except DataError as exc:
            raise ConfigError(str(exc)) from None
        if tuple(img.shape[-2:]) != (h, w):
            raise ConfigError(
                f"the mask image {ms.path} is {img.shape[-1]}x{img.shape[-2]} px but the images are "
                f"{w}x{h} px: draw the mask at the images' size"
            )
        mask = (img.mean(0) > 0.5).float().view(1, 1, h, w)
    elif ms.kind == "center":
        sh, sw = (
            (ms.pixels, ms.pixels) if ms.pixels is not None else (_side_for(ms.fraction, h), _side_for(ms.fraction, w))
        )
        if sh > h or sw > w:
            raise ConfigError(f"mask {ms}: a {sh}x{sw} px centre square does not fit {w}x{h} px images")
        top, left = (h - sh) // 2, (w - sw) // 2
        mask[..., top : top + sh, left : left + sw] = 1.0
    elif ms.kind == "frame":
        if ms.pixels is not None:
            b = ms.pixels
            if 2 * b > min(h, w):
                raise ConfigError(f"mask {ms}: a {b} px frame (each side) does not fit {w}x{h} px images")
            ih, iw = h - 2 * b, w - 2 * b
        else:
            inner = math.sqrt(1.0 - ms.fraction)
            ih, iw = int(round(inner * h)), int(round(inner * w))
        mask.fill_(1.0)
        top, left = (h - ih) // 2, (w - iw) // 2
        mask[..., top : top + ih, left : left + iw] = 0.0
    elif ms.kind == "random":
        k = int(round(ms.fraction * h * w))
        if k > 0:
            scores = torch.rand(n, h * w, generator=generator)
            keep = scores.topk(k, dim=1).indices
            mask = torch.zeros(n, h * w).scatter_(1, keep, 1.0).view(n, 1, h, w)
    if mask.sum() == 0 or (mask.flatten(1).sum(1) == 0).any():
        raise ConfigError(f"mask {ms} covers no pixel of {w}x{h} px images: choose a larger region")
    return mask


def mask_fraction(mask: torch.Tensor) -> float:
    """The mean fraction of pixel locations a mask covers."""
    return float(mask.float().mean())


def regional(
    models: Any,
    images: torch.Tensor,
    target: Any = None,
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    mask: str | MaskSpec | torch.Tensor = "center:m",
    attack: str = "pgd",
    eps: float | None = None,
    alpha: float | None = None,
    steps: int | None = None,
    norm: str = "linf",
    random_start: bool | None = None,
    released: bool = False,
    stop_models: Sequence[nn.Module] | None = None,
    progress: Callable[[int], None] | None = None,
) -> AttackResult:
    """A gradient attack (``fgsm``, ``bim`` or ``pgd``) whose perturbation stays inside a mask.

    Args:
        models, images, target, labels, generator: as :func:`patchlab.attacks.pgd`.
        mask: a spec (:func:`parse_mask_spec`; ``random`` masks draw from ``generator``,
            one per image) or a ``(N or 1, 1, H, W)`` tensor in {0, 1}.
        attack: the base attack: ``pgd`` (default), ``bim`` or ``fgsm``.
        eps, alpha, steps, norm, random_start: the base attack's (``None``: its default).
        released: the released code's settings (:data:`RELEASED`: alpha 1/255, 250 steps,
            no eps bound, start at the image), each image stopping as soon as every model
            of ``stop_models`` has left its class (reached the target, when targeted).
            Explicit eps/alpha/steps override them.
        stop_models: the transfer models of the early stop (``released=True`` only; the
            CLI passes its ``--transfer`` models).
        progress: called once per step.

    Returns:
        The base attack's :class:`AttackResult`, named ``regional``, with the mask spec,
        its covered fraction and the base attack in ``config``.
    """
    from . import gradient as G

    base = str(attack).lower()
    if base not in ("pgd", "bim", "fgsm"):
        raise ConfigError(f"unknown base attack {attack!r} for a regional attack: use pgd, bim or fgsm")
    if stop_models and not released:
        raise ConfigError("stop_models are the early stop of the released settings: pass released=True too")
    if released and not stop_models:
        raise ConfigError(
            "released=True stops when the transfer models' top-1 leaves the class: give stop_models "
            "(on the command line: --transfer MODEL)"
        )
    x = images
    if isinstance(mask, torch.Tensor):
        m, spec_str = mask.float(), "tensor"
    else:
        m = build_mask(mask, tuple(x.shape[-2:]), n=int(x.shape[0]), generator=generator)
        spec_str = str(mask)
    n = G.check_norm(norm)
    if released:
        eps = RELEASED["eps"] if eps is None else eps
        alpha = RELEASED["alpha"] if alpha is None else alpha
        steps = RELEASED["steps"] if steps is None else steps
        random_start = RELEASED["random_start"] if random_start is None else random_start
    steps = 10 if steps is None else steps
    rs = True if random_start is None else bool(random_start)
    if base == "fgsm":
        e, a = G.check_budget(eps, eps, 1, n)
        steps, rs = 1, False
    else:
        e, a = G.check_budget(eps, alpha, steps, n)
        rs = rs and base == "pgd"
    cfg = {
        "mask": spec_str,
        "mask_fraction": mask_fraction(m),
        "attack": base,
        "eps": e,
        "alpha": a,
        "steps": int(steps),
        "norm": n,
        "random_start": rs,
        "released": bool(released),
    }
    return G._gradient_attack(
        "regional",
        models,
        x,
        target,
        labels=labels,
        generator=generator,
        eps=e,
        alpha=a,
        steps=int(steps),
        norm=n,
        rand_init=rs,
        clip_projection=base == "bim",
        mask=m,
        stop_models=stop_models if released else None,
        config=cfg,
        progress=progress,
    )


__all__ = ["PAPER_SIZES", "RELEASED", "MaskSpec", "build_mask", "mask_fraction", "parse_mask_spec", "regional"]
