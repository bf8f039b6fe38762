"""The notebook API: wrap a network, optimise a patch, paste it, judge it.

::

    import patchlab
    m = patchlab.wrap(net, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), input_size=(3, 32, 32),
                      labels=classes)
    res = patchlab.PatchAttack(loss="sw", steps=300)(m, loader, target="frog")
    x_adv = patchlab.apply_patch(x, res.patch, placement="random")
    patchlab.evaluate(res, [m, other], x, y, target="frog")   # a TransferResult

Everything here is a thin layer over :mod:`patchlab.optimize`, :mod:`patchlab.transfer`
and :mod:`patchlab.models`; the CLI and the run folders call the same functions.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .data import ImageSet
from .eot import PRESETS, EOTConfig, load_eot
from .errors import ConfigError, DataError
from .inputs import TensorSource
from .models.wrapper import ModelInfo, Preprocess, WrappedModel
from .optimize.attack import PatchResult, models_device
from .transfer import TransferResult, evaluate_patch, render_patch


def wrap(
    net: nn.Module,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: Sequence[int],
    labels: Sequence[str],
    name: str | None = None,
    resize: str = "bilinear-antialias",
) -> WrappedModel:
    """A patchlab model around any classifier that takes normalised images and returns logits.

    Args:
        net: the network (logits out); it is not changed: no ``eval()``, no ``requires_grad`` flip.
        mean, std: its input normalisation, one value per channel.
        input_size: ``(C, H, W)`` it expects; images of any size are resized to it.
        labels: class names in output order.
        name: the model's name in results (default: the network's class name).
        resize: ``bilinear-antialias`` (default), ``bilinear``, ``bicubic``, ``nearest``, ...

    The wrapped model takes ``(B, 3, H, W)`` floats in [0, 1].
    """
    if not isinstance(net, nn.Module):
        raise ConfigError(f"patchlab.wrap takes a torch.nn.Module, got {type(net).__name__}")
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or min(size) < 1:
        raise ConfigError(f"input_size must be (C, H, W) with positive sizes, got {tuple(input_size)}")
    if any(not np.isfinite(v) or v <= 0 for v in std):
        raise ConfigError(f"std must be positive numbers, got {tuple(std)}")
    labels = [str(v) for v in labels]
    if len(set(labels)) != len(labels) or not labels:
        raise ConfigError("labels must be distinct class names, one per output")
    try:
        pre = Preprocess(
            input_size=size, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), resize=resize
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    nm = name or type(net).__name__
    info = ModelInfo(name=nm, ref=f"python:{nm}", framework="python", arch=type(net).__name__)
    return WrappedModel(net, labels=labels, preprocess=pre, info=info, owns_net=False)


def _patch_of(patch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    if isinstance(patch, PatchResult):
        return patch.patch, patch.config
    t = torch.as_tensor(np.asarray(patch) if not isinstance(patch, torch.Tensor) else patch).float()
    if t.ndim != 3 or t.shape[0] != 3:
        raise ConfigError(f"expected a patch of shape (3, h, w) in [0, 1] (or a PatchResult), got {tuple(t.shape)}")
    return t, {}


def apply_patch(
    images: torch.Tensor,
    patch: Any,
    *,
    placement: str = "random",
    eot: str | EOTConfig | None = None,
    generator: torch.Generator | None = None,
    frac: float | None = None,
    shape: str = "square",
    position: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Paste a patch into a batch of images.

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1] or uint8.
        patch: ``(3, h, w)`` in [0, 1], or a :class:`~patchlab.optimize.PatchResult`
            (its area fraction is then kept).
        placement: ``side``, ``random``, ``center`` or ``fixed`` (with ``position``).
        eot: ``None``, a preset name or an :class:`~patchlab.eot.EOTConfig`.
        generator: seeds placement and EOT draws.
        frac: patch area over image area (default: the result's, else one patch pixel per image pixel).

    Returns float ``(B, 3, H, W)`` in [0, 1].
    """
    p, cfg = _patch_of(patch)
    return render_patch(
        images,
        p,
        frac=frac if frac is not None else cfg.get("frac"),
        shape=cfg.get("shape", shape),
        placement=placement,
        position=position,
        eot=eot,
        generator=generator,
    )


def evaluate(
    patch: Any,
    models: nn.Module | Sequence[nn.Module],
    images: Any,
    labels: Any = None,
    *,
    target: int | str,
    placement: str = "side",
    eot: str | EOTConfig | None = None,
    seed: int = 0,
    frac: float | None = None,
    shape: str = "square",
    position: tuple[float, float] | None = None,
    frame: bool = False,
    batch_size: int = 256,
    sources: Sequence[str] = (),
    name: str = "patch",
) -> TransferResult:
    """tSuc of a patch on each model (what ``patchlab eval transfer`` writes).

    Args:
        patch: ``(3, h, w)`` in [0, 1] or a :class:`~patchlab.optimize.PatchResult`.
        models: one wrapped model or a list (all must know the target by name).
        images: ``(N, 3, H, W)`` (float in [0, 1] or uint8) with ``labels`` (the first
            model's output indices), or a labelled :class:`~patchlab.data.ImageSet`.
        target: the target class, index or name.
        placement, eot, seed, frac, shape, position, frame: how the patch is pasted; every
            model sees the same patched images.
        sources: names of models the patch was optimised on (flagged in the result;
            default: a PatchResult's models).
    """
    given = [models] if isinstance(models, nn.Module) else list(models)
    ms = [m for m in given if isinstance(m, WrappedModel)]
    if not ms or len(ms) != len(given):
        raise ConfigError("evaluate takes wrapped models (patchlab.wrap / patchlab.load_model)")
    p, cfg = _patch_of(patch)
    labels0: list[str] = list(ms[0].labels)
    if isinstance(images, ImageSet):
        data = images
    else:
        if labels is None:
            raise DataError("tSuc needs the images' true labels: pass labels=(N,) class indices, or an ImageSet")
        src = TensorSource(images, torch.as_tensor(labels))
        assert src.labels is not None
        if int(src.labels.max()) >= len(labels0) or int(src.labels.min()) < 0:
            raise DataError(f"labels must be class indices in [0, {len(labels0)})")
        data = ImageSet(src.images, src.labels, labels0, [], "<tensor>")
    target_name = str(target)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not 0 <= int(target) < len(labels0):
            raise ConfigError(f"target class index {target} is out of range for {len(labels0)} classes")
        target_name = labels0[int(target)]
    H, W = data.images.shape[-2:]
    fr = frac if frac is not None else cfg.get("frac") or float(p.shape[1] * p.shape[2]) / float(H * W)
    e = PRESETS["none"] if eot is None else (load_eot(eot) if isinstance(eot, str) else eot)
    dev = models_device(ms)
    src_names = list(sources) or (list(patch.models) if isinstance(patch, PatchResult) else [])
    res = evaluate_patch(
        p,
        data,
        target_name,
        ms,
        frac=float(fr),
        shape=cfg.get("shape", shape),
        placement=placement,
        position=position,
        eot=e,
        seed=seed,
        frame=frame,
        batch_size=batch_size,
        device=dev,
        source_names=src_names,
    )
    return TransferResult(
        run_id=name,
        target_class=target_name,
        placement=placement,
        eot={"name": eot if isinstance(eot, str) else ("none" if eot is None else "custom"), **e.to_dict()},
        seed=seed,
        n_images=len(data),
        models=res,
    )


__all__ = ["apply_patch", "evaluate", "wrap"]
