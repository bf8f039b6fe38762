"""Features of named layers of any wrapped model, through forward hooks.

A layer spec is a list of items, each one of

* ``auto`` — the input of the classifier (the last ``nn.Linear`` or 1x1 conv that
  outputs the classes, found by structure): the pooled pre-logit features of a CNN,
  the class / pooled token of a transformer. No name is special-cased.
* ``depth:F`` — the feature block at relative depth ``F`` in ``[0, 1]`` among the
  network's blocks (see :func:`feature_blocks`): ``depth:0.5`` is half-way through.
* a module name as :meth:`WrappedModel.layer_names` lists it (``patchlab models layers``).

Layer outputs are pooled to one vector per image: conv maps ``(B, C, H, W)`` are
averaged over space (channels-last maps of models whose ``output_fmt`` says
``NHWC`` likewise), token sequences ``(B, N, C)`` give their prefix (class) token
when the network has one (``num_prefix_tokens``), else their mean.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .models.wrapper import WrappedModel
from .utils import atomic_torch_save, user_cache_dir

log = logging.getLogger(__name__)

AUTO = "auto"
DEPTH_PREFIX = "depth:"
_CONTAINERS = (nn.Sequential, nn.ModuleList)


def parse_layers(spec: str | Sequence[str]) -> list[str]:
    """Split ``"auto,depth:0.5"`` (or a list) into items, checking ``depth:`` values."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if not items:
        raise ConfigError("no feature layers given: use auto, depth:F or layer names")
    for it in items:
        if it.startswith(DEPTH_PREFIX):
            try:
                f = float(it[len(DEPTH_PREFIX) :])
            except ValueError:
                raise ConfigError(f"bad layer item {it!r}: depth takes a number in [0, 1], e.g. depth:0.5") from None
            if not 0.0 <= f <= 1.0:
                raise ConfigError(f"bad layer item {it!r}: depth must be in [0, 1]")
    if len(set(items)) != len(items):
        raise ConfigError(f"feature layers repeat: {items}")
    return items


def _trace_outputs(model: WrappedModel, modules: dict[str, nn.Module]) -> list[tuple[str, tuple[int, ...]]]:
    """Run one dummy image through the network; (name, output shape) in the order outputs appear."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, m in modules.items():

        def hook(_m, _inp, out, name=name):
            if isinstance(out, torch.Tensor):
                seen.append((name, tuple(out.shape)))

        handles.append(m.register_forward_hook(hook))
    try:
        p = next(model.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
        c, h, w = model.preprocess.input_size
        with torch.no_grad():
            model(torch.zeros(1, c, h, w, device=dev))
    finally:
        for hd in handles:
            hd.remove()
    return seen


def feature_blocks(model: WrappedModel) -> list[str]:
    """The network's feature blocks, in forward order.

    A block is a module held in an ``nn.Sequential`` / ``nn.ModuleList`` that has
    sub-modules of its own and outputs a feature map or token sequence: the
    residual / inverted-residual / transformer blocks of timm, torchvision and the
    CIFAR ResNets alike. Networks built of plain layers only (a LeNet) fall back to
    the spatial layers held in their containers.
    """
    parents = {id(child) for _, m in model.net.named_modules() if isinstance(m, _CONTAINERS) for child in m.children()}
    held = {n: m for n, m in model.net.named_modules() if n and id(m) in parents and not isinstance(m, _CONTAINERS)}
    composite = {n: m for n, m in held.items() if any(True for _ in m.children())}
    for cand in (composite, held):
        order = [(n, s) for n, s in _trace_outputs(model, cand) if len(s) in (3, 4)]
        names = list(dict.fromkeys(n for n, _ in order))
        if names:
            return names
    return []


@dataclass(frozen=True)
class LayerRef:
    """A resolved feature layer: the spec item it came from and the module it hooks."""

    item: str  # "auto", "depth:0.5" or a name
    module: str  # module name in model.net
    where: str  # "input" (forward pre-hook) or "output"

    @property
    def key(self) -> str:
        return f"{self.module}:{self.where}"

    def to_dict(self) -> dict:
        return {"item": self.item, "module": self.module, "where": self.where}


def resolve_layers(model: WrappedModel, spec: str | Sequence[str]) -> list[LayerRef]:
    """Turn a layer spec into hook points on ``model`` (clear errors for unknown names)."""
    out: list[LayerRef] = []
    blocks: list[str] | None = None
    for it in parse_layers(spec):
        if it == AUTO:
            name, _ = model.classifier()
            out.append(LayerRef(it, name, "input"))
        elif it.startswith(DEPTH_PREFIX):
            if blocks is None:
                blocks = feature_blocks(model)
                if not blocks:
                    raise ConfigError(f"{model.name}: found no feature blocks for {it}; name layers explicitly")
            f = float(it[len(DEPTH_PREFIX) :])
            out.append(LayerRef(it, blocks[int(round(f * (len(blocks) - 1)))], "output"))
        else:
            model.get_layer(it)  # raises ConfigError naming similar layers
            out.append(LayerRef(it, it, "output"))
    keys = [r.key for r in out]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{model.name}: layer items {[r.item for r in out]} resolve to the same layer twice ({keys})")
    return out


def pool_features(t: torch.Tensor, *, prefix_tokens: int = 0, channels_last: bool = False) -> torch.Tensor:
    """One vector per image from a layer output (see the module docstring)."""
    if t.ndim == 2:
        return t
    if t.ndim == 4:
        return t.mean((1, 2)) if channels_last else t.mean((2, 3))
    if t.ndim == 3:
        return t[:, 0] if prefix_tokens > 0 else t.mean(1)
    return t.flatten(1)


class FeatureExtractor(nn.Module):
    """Logits and pooled features of chosen layers in one forward pass.

    Args:
        model: a wrapped model (never mutated: hooks are removed by :meth:`close`).
        layers: layer spec (``auto``, ``depth:F``, names) or resolved :class:`LayerRef` list.

    ``forward(x)`` takes ``(B, 3, H, W)`` in [0, 1] and returns ``(logits, {key: (B, D)})``
    with keys in the order of ``self.layers``.
    """

    def __init__(self, model: WrappedModel, layers: str | Sequence[str] | Sequence[LayerRef] = AUTO):
        super().__init__()
        self.model = model
        if isinstance(layers, (list, tuple)) and layers and isinstance(layers[0], LayerRef):
            self.layers = list(layers)
        else:
            self.layers = resolve_layers(model, layers)  # type: ignore[arg-type]
        self._prefix = int(getattr(model.net, "num_prefix_tokens", 0) or 0)
        self._nhwc = str(getattr(model.net, "output_fmt", "NCHW")).upper() == "NHWC"
        self._store: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.net.named_modules())
        for ref in self.layers:
            m = modules[ref.module]
            if ref.where == "input":
                self._handles.append(m.register_forward_pre_hook(self._pre_hook(ref.key)))
            else:
                self._handles.append(m.register_forward_hook(self._post_hook(ref.key)))

    def _pre_hook(self, key: str) -> Callable:
        def hook(_m, inputs):
            self._store[key] = inputs[0]

        return hook

    def _post_hook(self, key: str) -> Callable:
        def hook(_m, _inputs, out):
            self._store[key] = out[0] if isinstance(out, (tuple, list)) else out

        return hook

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.layers]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._store = {}
        logits = self.model(x)
        feats = {}
        for k in self.keys:
            if k not in self._store:
                raise ConfigError(f"layer {k} of {self.model.name} did not run in the forward pass")
            feats[k] = pool_features(self._store[k], prefix_tokens=self._prefix, channels_last=self._nhwc)
        self._store = {}
        return logits, feats

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "FeatureExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- target features
def model_fingerprint(model: WrappedModel) -> str:
    """What a model's features depend on: its architecture, its preprocessing (size, resize,
    mean, std), a digest of its weights' values and the input defences in front of it
    (:class:`patchlab.defenses.DefendedModel`, each by its every parameter but ``bpda``, which
    changes gradients only) — not a file's name, size or date, so an edited weights file, an
    in-memory network with other weights or the same network behind another defence never
    shares a key."""
    from .defenses.model import model_defenses

    h = hashlib.sha256()
    h.update(type(model.net).__name__.encode())
    h.update(repr(model.preprocess.to_dict()).encode())
    defenses = [d.forward_spec for d in model_defenses(model)]
    if defenses:  # an undefended model keeps the key it always had
        h.update(("defenses:" + "+".join(defenses)).encode())
    for k, v in model.net.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor, images: torch.Tensor, *, batch_size: int = 256, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Pooled features ``{key: (N, D)}`` (float32, on CPU) of uint8 or float images ``(N, 3, H, W)``."""
    chunks: dict[str, list[torch.Tensor]] = {k: [] for k in extractor.keys}
    for s in range(0, images.shape[0], batch_size):
        x = images[s : s + batch_size].to(device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        _, feats = extractor(x)
        for k, v in feats.items():
            chunks[k].append(v.float().cpu())
    return {k: torch.cat(v) for k, v in chunks.items()}


def target_features(
    extractor: FeatureExtractor,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    cache: bool = True,
    cache_dir: Path | None = None,
) -> dict[str, torch.Tensor]:
    """Features of the target-class images, extracted once and cached on disk.

    The cache key is :func:`model_fingerprint` (architecture, preprocessing, weight
    values), the layers and the image bytes, so a changed model, layer or image set
    never reuses stale features. Cached under
    ``user_cache_dir()/features`` (``$PATCHLAB_CACHE`` overrides it).
    """
    key = hashlib.sha256()
    key.update(model_fingerprint(extractor.model).encode())
    key.update(repr([r.to_dict() for r in extractor.layers]).encode())
    key.update(str(tuple(images.shape)).encode())
    key.update(images.contiguous().cpu().numpy().tobytes())
    path = (cache_dir or user_cache_dir() / "features") / f"{key.hexdigest()[:24]}.pt"
    if cache and path.is_file():
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(d, dict) and list(d) == extractor.keys:
                log.info("target features from cache %s", path)
                return d
        except Exception:  # a corrupt cache entry is rebuilt
            log.warning("ignoring unreadable feature cache %s", path)
    feats = extract_features(extractor, images, batch_size=batch_size, device=device)
    if cache:
        try:
            atomic_torch_save(feats, path)
        except OSError as exc:  # a read-only cache must not stop a run
            log.warning("could not write feature cache %s: %s", path, exc)
    return feats
