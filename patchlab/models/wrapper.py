"""The model wrapper: every loaded classifier looks the same to the rest of patchlab.

Images go in as ``(B, 3, H, W)`` floats in ``[0, 1]`` at any size; the wrapper
resizes and normalises them for its network (from the model card or timm's data
config), keeps the network in eval mode with frozen parameters, exposes its named
layers for feature hooks and carries its class labels (foolbox's bounds +
preprocessing, timm's ``pretrained_cfg``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import check_images

_RESIZE_MODES = {"bilinear", "bicubic", "nearest", "area", "nearest-exact"}


@dataclass(frozen=True)
class Preprocess:
    """How a network wants its input: size, resize mode and normalisation."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "bilinear-antialias"

    def __post_init__(self) -> None:
        mode, antialias = self.mode_and_antialias
        if mode not in _RESIZE_MODES:
            raise ValueError(
                f"unknown resize {self.resize!r}: expected one of {sorted(_RESIZE_MODES)} "
                "optionally followed by '-antialias'"
            )
        from ..checks import COUNT, POSITIVE, Range, check_number, check_numbers

        size = tuple(self.input_size) if isinstance(self.input_size, (list, tuple)) else (self.input_size,)
        if len(size) != 3:
            raise ValueError(f"input_size must be [channels, height, width], got {self.input_size!r}")
        check_numbers(size, "input_size", COUNT, error=ValueError)
        if len(self.mean) != size[0] or len(self.std) != size[0]:
            raise ValueError(f"mean/std must have {size[0]} entries, got {self.mean} / {self.std}")
        check_numbers(self.mean, "mean", Range(), error=ValueError)
        # std 0 divides by zero: every input becomes inf/nan and one class wins on every image
        check_numbers(self.std, "std", POSITIVE, error=ValueError)
        check_number(float(size[1]) * float(size[2]), "input_size height x width", Range(1, 2**28), error=ValueError)

    @property
    def mode_and_antialias(self) -> tuple[str, bool]:
        r = self.resize.lower()
        antialias = r.endswith("-antialias")
        return (r[: -len("-antialias")] if antialias else r), antialias

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
        }


@dataclass
class ModelInfo:
    """Where a model came from; goes into every run record."""

    name: str
    ref: str
    framework: str
    arch: str
    weights: str | None = None
    card: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ref": self.ref,
            "framework": self.framework,
            "arch": self.arch,
            "weights": self.weights,
            "card": self.card,
        }


@contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    """Run ``net`` in eval mode and give every sub-module its own mode back afterwards."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class WrappedModel(nn.Module):
    """A frozen classifier in eval mode that takes ``[0, 1]`` images of any size.

    Args:
        net: the bare network (logits out, normalised input in).
        labels: class names in output order.
        preprocess: input size, resize mode and normalisation of ``net``.
        info: provenance (reference, card, weights path).
        owns_net: the wrapper owns ``net`` (a loaded model): it is put in eval mode and
            its parameters frozen once. A network the caller keeps (``patchlab.wrap``) is
            left as it is: each call runs it in eval mode and with detached parameters,
            then restores its modes, so the caller's module is never changed.

    ``forward(x)`` takes ``(B, 3, H, W)`` float in ``[0, 1]`` and returns logits
    ``(B, num_classes)``; gradients flow to ``x`` but never into parameters.
    """

    def __init__(
        self, net: nn.Module, *, labels: Sequence[str], preprocess: Preprocess, info: ModelInfo, owns_net: bool = True
    ):
        super().__init__()
        self.net = net
        self.owns_net = owns_net
        self.labels = list(labels)
        self.preprocess = preprocess
        self.info = info
        c = preprocess.input_size[0]
        self.register_buffer(
            "mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(preprocess.std, dtype=torch.float32).view(1, c, 1, 1), persistent=False
        )
        if owns_net:
            self.net.eval()
            for p in self.net.parameters():
                p.requires_grad_(False)

    # -- nn.Module API -------------------------------------------------------
    def train(self, mode: bool = True) -> "WrappedModel":
        """Always stays in eval mode: a wrapped model is a fixed function."""
        return super().train(False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.preprocess.input_size[1]), int(self.preprocess.input_size[2])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to the network's input size and normalise; ``x`` in ``[0, 1]``."""
        h, w = self.input_hw
        if x.shape[-2:] != (h, w):
            mode, antialias = self.preprocess.mode_and_antialias
            kwargs: dict[str, Any] = {}
            if mode in ("bilinear", "bicubic"):
                kwargs = {"align_corners": False, "antialias": antialias}
            x = F.interpolate(x, size=(h, w), mode=mode, **kwargs)
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return (x - mean.to(x.dtype)) / std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        if self.owns_net:
            return self.net(self.normalize(x))
        with _eval_mode(self.net):
            params = {k: v.detach() for k, v in self.net.named_parameters()}
            return torch.func.functional_call(self.net, params, (self.normalize(x),), strict=False)

    # -- layers for feature hooks --------------------------------------------
    def layer_names(self) -> list[str]:
        """Names of the network's sub-modules, as ``get_layer`` takes them."""
        return [n for n, _ in self.net.named_modules() if n]

    def get_layer(self, name: str) -> nn.Module:
        modules = dict(self.net.named_modules())
        if name not in modules:
            from ..errors import ConfigError

            close = [n for n in modules if name.split(".")[-1] in n][:8]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise ConfigError(f"model {self.name!r} has no layer {name!r}{hint} (see `patchlab models layers MODEL`)")
        return modules[name]

    def classifier(self) -> tuple[str, nn.Module]:
        """The module that produces the logits: the last ``nn.Linear`` (or 1x1 conv)
        whose output size is the number of classes, found by structure, not by name."""
        found: tuple[str, nn.Module] | None = None
        for n, m in self.net.named_modules():
            if isinstance(m, nn.Linear) and m.out_features == self.num_classes:
                found = (n, m)
            elif isinstance(m, nn.Conv2d) and m.out_channels == self.num_classes and m.kernel_size == (1, 1):
                found = (n, m)
        if found is None:
            from ..errors import ConfigError

            raise ConfigError(f"cannot find the classifier layer of {self.name!r}: name a layer explicitly")
        return found

    def extra_repr(self) -> str:
        return f"name={self.name!r}, classes={self.num_classes}, preprocess={self.preprocess}"
