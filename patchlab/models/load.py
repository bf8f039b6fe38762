"""Turn a model reference into a :class:`WrappedModel`.

A reference is one of

* a path to a model card (JSON; the format of ``shared/models/*/README``):
  ``name, framework (timm|torchvision|patchlab), arch, kwargs, input_size, resize,
  mean, std, labels, weights`` (weights relative to the card's folder);
* ``timm:NAME`` (timm's factory and data config; hub weights when cached);
* ``torchvision:NAME`` (torchvision's factory; hub weights when cached);
* ``patchlab:NAME`` (the built-in registry, e.g. ``cifar_resnet20``).

Each may take local weights (``weights=PATH``: safetensors, or a torch file loaded
with ``weights_only=True``). Failures are :class:`ModelLoadError` with a message that
says what to do.
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import ModelLoadError
from ..utils import read_json_object
from . import registry
from .wrapper import ModelInfo, Preprocess, WrappedModel

#: ImageNet normalisation (torchvision's documented defaults), used only when a
#: torchvision model comes without its own weights metadata.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CARD_REQUIRED = ("framework", "arch", "input_size", "mean", "std", "labels")
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "net")


# --------------------------------------------------------------------------- cards
def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a model card; returns the dict with ``_dir`` added."""
    p = Path(path)
    card = read_json_object(p, "model card", error=ModelLoadError)
    missing = [k for k in _CARD_REQUIRED if k not in card]
    if missing:
        raise ModelLoadError(f"model card {p} lacks required keys: {', '.join(missing)}")
    if card["framework"] not in _FRAMEWORKS:
        raise ModelLoadError(
            f"model card {p}: unknown framework {card['framework']!r} "
            f"(expected one of {', '.join(sorted(_FRAMEWORKS))})"
        )
    card.setdefault("name", p.stem)
    card.setdefault("kwargs", {})
    card.setdefault("resize", "bilinear-antialias")
    card["_dir"] = str(p.resolve().parent)
    card_preprocess(card, p)  # the numbers are checked before any weights are read
    if not isinstance(card["labels"], list) or not card["labels"]:
        raise ModelLoadError(f"model card {p}: labels must be a non-empty list of class names")
    return card


def card_preprocess(card: Mapping[str, Any], path: str | os.PathLike) -> Preprocess:
    """The card's :class:`Preprocess`, its numbers checked (input_size whole and >= 1,
    mean finite, std finite and > 0) with the card and field named in the error."""

    def seq(key: str):
        v = card[key]
        if not isinstance(v, (list, tuple)):
            raise ValueError(
                f"{key} must be a list of numbers, got {v!r}"
                + (" (input_size is [channels, height, width])" if key == "input_size" else "")
            )
        return tuple(v)

    try:
        return Preprocess(
            input_size=seq("input_size"),
            mean=seq("mean"),
            std=seq("std"),
            resize=str(card.get("resize", "bilinear-antialias")),
        )
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"model card {path}: {exc}") from exc


def find_cards(folder: str | os.PathLike) -> list[Path]:
    """Model cards in ``folder``: JSON files that carry ``framework`` and ``arch``."""
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            d = read_json_object(p, "model card", error=ModelLoadError)
        except ModelLoadError:
            continue
        if "framework" in d and "arch" in d:
            out.append(p)
    return out


# ------------------------------------------------------------------------- weights
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch file, safely.

    torch files are loaded with ``weights_only=True`` (no arbitrary code); a file
    that needs more is refused with an explanation. A wrapping dict (``state_dict``,
    ``model``, ...) is unwrapped and a DataParallel ``module.`` prefix removed.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"weights file not found: {p}")
    if not p.is_file():
        raise ModelLoadError(f"weights file {p} is not a regular file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"cannot read safetensors file {p}: {exc}") from exc
    else:
        kind = _torch_file_kind(p)
        if kind is None:
            raise ModelLoadError(
                f"{p} is not a weights file: neither safetensors nor a torch checkpoint "
                "(its first bytes are not a zip archive or a pickle)"
            )
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if not _unpickle_detail(exc):
                raise ModelLoadError(
                    f"cannot read weights file {p}: it is damaged or not a torch checkpoint ({_first_line(exc)})"
                ) from exc
            raise ModelLoadError(
                f"refusing to load {p}: it is a pickle that needs more than tensors to load (weights_only=True "
                "failed), and running its code could execute anything. Re-save only the state dict (torch.save(model.state_dict(), ...)) "
                f"or convert it to safetensors{_unpickle_detail(exc)}"
            ) from exc
        except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError... for a damaged file
            raise ModelLoadError(
                f"cannot read weights file {p}: it is damaged or cut short ({_first_line(exc)})"
            ) from exc
    if isinstance(sd, Mapping):
        for key in _STATE_DICT_KEYS:
            if key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"weights file {p} does not hold a state dict of tensors")
    return _strip_prefix(dict(sd), "module.")


#: Opening bytes of the torch file formats: a zip archive (torch >= 1.6) or a legacy pickle.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


def _torch_file_kind(p: Path) -> str | None:
    """``"zip"`` or ``"pickle"`` by the file's first bytes, or None for anything else (random bytes, text)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read weights file {p}: {exc.strerror or exc}") from exc
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head[:1] == _PICKLE_PROTO and len(head) >= 2 and 2 <= head[1] <= 5:
        return "pickle"
    return None


def _first_line(exc: BaseException) -> str:
    """The first line of torch's message, without its advice to load with ``weights_only=False``
    (that advice would run the file's code)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line and "weights_only" not in line and "torch.serialization" not in line:
            return line.rstrip(".")
    return type(exc).__name__


def _unpickle_detail(exc: BaseException) -> str:
    """What the pickle asked for (``Unsupported global: GLOBAL os.system``), never torch's advice."""
    import re

    m = re.search(r"unsupported GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return f" (it asks for {m.group(1) or m.group(2)})" if m else ""


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def load_weights_into(net: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` strictly, casting dtype; on mismatch say which keys and shapes."""
    own = net.state_dict()
    # BatchNorm's ``num_batches_tracked`` counter postdates many checkpoints and has no
    # effect in eval mode; a missing one keeps the model's own value.
    sd = dict(sd)
    for k in own:
        if k not in sd and k.endswith("num_batches_tracked"):
            sd[k] = own[k]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [
        f"{k} (weights {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_few(unexpected)}")
        if shape:
            parts.append(f"shape mismatch: {_few(shape)}")
        raise ModelLoadError(f"weights {source} do not fit the architecture: " + "; ".join(parts))
    cast = {k: (v.to(own[k].dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    net.load_state_dict(cast, strict=True)


def _few(items: list[str], n: int = 4) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# ---------------------------------------------------------------------- frameworks
def _timm_build(arch: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    import timm

    if not timm.is_model(arch):
        raise ModelLoadError(f"timm has no architecture {arch!r} (try `patchlab models list '*{arch}*'`)")
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    cached = _timm_cached_file(arch)
    if cached is not None:
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs)
    if not _online("huggingface.co"):
        raise ModelLoadError(
            f"pretrained weights for timm:{arch} are not in the local cache and the hub cannot be "
            "reached (offline). Pass local weights with --weights PATH (safetensors or a state-dict "
            "file), or use a model card."
        )
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as exc:  # hub errors come in many types
        raise ModelLoadError(
            f"could not fetch pretrained weights for timm:{arch}: {exc}. Pass local weights with --weights PATH."
        ) from exc


def _timm_cached_file(arch: str) -> str | None:
    """Path of the cached hub weights of a timm model, or None (never touches the network)."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(arch)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not hub_id:
            return None
        for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id, fname)
            if isinstance(hit, str) and os.path.exists(hit):
                return hit
    except Exception:
        return None
    return None


def _online(host: str, timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _torchvision_build(arch: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ModelLoadError(f"torchvision has no model {arch!r}")
    if not pretrained:
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    fname = os.path.basename(weights.url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if not cached.exists() and not _online("download.pytorch.org"):
        raise ModelLoadError(
            f"pretrained weights for torchvision:{arch} ({fname}) are not in the torch hub cache "
            f"({cached.parent}) and the internet cannot be reached. Pass local weights with "
            "--weights PATH, or place the file there."
        )
    try:
        return torchvision.models.get_model(arch, weights=weights, **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load pretrained torchvision:{arch}: {exc}. Pass local weights with --weights PATH."
        ) from exc


def _patchlab_build(arch: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    builder = registry.get_builder(arch)
    if builder is None:
        raise ModelLoadError(
            f"patchlab has no built-in architecture {arch!r}; built-in: {', '.join(registry.list_models())}"
        )
    if pretrained:
        raise ModelLoadError(f"patchlab:{arch} has no hub weights: pass --weights PATH or use a card")
    try:
        return builder(**kwargs)
    except TypeError as exc:
        raise ModelLoadError(f"cannot build patchlab:{arch} with {kwargs}: {exc}") from exc


_FRAMEWORKS: dict[str, Callable[[str, dict[str, Any], bool], nn.Module]] = {
    "timm": _timm_build,
    "torchvision": _torchvision_build,
    "patchlab": _patchlab_build,
}


def build_network(framework: str, arch: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """An untrained network from a card's ``framework``, ``arch`` and ``kwargs``: the
    same factory :func:`load_model` builds a card through, for code that trains one."""
    if framework not in _FRAMEWORKS:
        raise ModelLoadError(f"unknown framework {framework!r} (expected one of {', '.join(sorted(_FRAMEWORKS))})")
    try:
        return _FRAMEWORKS[framework](arch, dict(kwargs or {}), False)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot build {framework}:{arch} with kwargs {dict(kwargs or {})}: {exc}") from exc


def _timm_preprocess(net: nn.Module) -> Preprocess:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=net, use_test_size=True)
    interp = cfg.get("interpolation", "bilinear")
    return Preprocess(
        input_size=tuple(cfg["input_size"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        resize=f"{interp}-antialias",
    )


def _timm_labels(net: nn.Module, n: int) -> list[str]:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(net)
        if subset and n == 1000:
            info = ImageNetInfo(subset)
            return [info.index_to_description(i) for i in range(n)]
    except Exception:
        pass
    return [f"class_{i}" for i in range(n)]


def _num_outputs(net: nn.Module) -> int | None:
    last = None
    for m in net.modules():
        if isinstance(m, nn.Linear):
            last = m.out_features
    return last


def _classifier_classes(sd: Mapping[str, torch.Tensor]) -> int | None:
    """Output size of the last 2-D weight in a state dict (the classifier)."""
    last = None
    for k, v in sd.items():
        if k.endswith("weight") and v.ndim == 2:
            last = v.shape[0]
    return last


# ---------------------------------------------------------------------------- API
def load_model(
    ref: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    labels: list[str] | None = None,
    device: torch.device | str = "cpu",
) -> WrappedModel:
    """Load a model reference (card path, ``timm:NAME``, ``torchvision:NAME``,
    ``patchlab:NAME``) as a frozen :class:`WrappedModel` on ``device``.

    Args:
        ref: the reference (a card may be a ``pathlib.Path``).
        weights: local weights replacing the card's or the hub's.
        labels: class names, overriding those of the card or hub.
        device: where the model lives.
    """
    if not isinstance(ref, (str, os.PathLike)):
        raise TypeError(f"load_model takes a card path or a 'framework:NAME' string, got {type(ref).__name__}")
    ref = os.fspath(ref)
    scheme, _, name = ref.partition(":")
    if scheme in _FRAMEWORKS and name and not Path(ref).exists():
        wrapped = _load_scheme(scheme, name, ref, weights, labels)
    else:
        wrapped = _load_card(ref, weights, labels)
    return wrapped.to(device)


def _load_card(path: str, weights: str | os.PathLike | None, labels: list[str] | None) -> WrappedModel:
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(
            f"model not found: {path!r} is neither a card file nor a reference of the form "
            "timm:NAME, torchvision:NAME or patchlab:NAME"
        )
    card = read_card(p)
    build = _FRAMEWORKS[card["framework"]]
    kwargs = dict(card.get("kwargs") or {})
    wpath = Path(weights) if weights else (Path(card["_dir"]) / card["weights"] if card.get("weights") else None)
    try:
        net = build(card["arch"], kwargs, wpath is None)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot build {card['framework']}:{card['arch']} with kwargs {kwargs} from card {p}: {exc}"
        ) from exc
    if wpath is not None:
        load_weights_into(net, read_state_dict(wpath), str(wpath))
    pre = card_preprocess(card, p)
    lab = list(labels or card["labels"])
    n_out = _num_outputs(net)
    if n_out is not None and n_out != len(lab):
        raise ModelLoadError(f"model card {p} lists {len(lab)} labels but the network has {n_out} outputs")
    public_card = {k: v for k, v in card.items() if not k.startswith("_")}
    info = ModelInfo(
        name=str(card.get("name") or p.stem),
        ref=str(p),
        framework=card["framework"],
        arch=card["arch"],
        weights=str(wpath) if wpath else None,
        card=public_card,
    )
    return WrappedModel(net, labels=lab, preprocess=pre, info=info)


def _load_scheme(
    scheme: str, name: str, ref: str, weights: str | os.PathLike | None, labels: list[str] | None
) -> WrappedModel:
    build = _FRAMEWORKS[scheme]
    kwargs: dict[str, Any] = {}
    sd = None
    if weights is not None:
        sd = read_state_dict(weights)
        n = _classifier_classes(sd)
        if n is not None:
            kwargs["num_classes"] = n
    try:
        net = build(name, kwargs, weights is None)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot build {ref}: {exc}") from exc
    if sd is not None:
        load_weights_into(net, sd, str(weights))
    n_out = _num_outputs(net) or 0
    if scheme == "timm":
        pre = _timm_preprocess(net)
        default_labels = _timm_labels(net, n_out)
    elif scheme == "torchvision" and weights is None:
        import torchvision

        w = torchvision.models.get_model_weights(name).DEFAULT
        t = w.transforms()
        size = int(getattr(t, "crop_size", [224])[0])
        pre = Preprocess(input_size=(3, size, size), mean=tuple(t.mean), std=tuple(t.std), resize="bilinear-antialias")
        default_labels = list(w.meta.get("categories") or [])
    else:
        raise ModelLoadError(
            f"{ref} with local weights has no preprocessing metadata (input size, mean, std): "
            "write a model card for it (see shared/README.md for the format)"
        )
    lab = list(labels or default_labels)
    if n_out and len(lab) != n_out:
        lab = [f"class_{i}" for i in range(n_out)] if not labels else lab
    info = ModelInfo(name=name, ref=ref, framework=scheme, arch=name, weights=str(weights) if weights else "hub")
    return WrappedModel(net, labels=lab, preprocess=pre, info=info)
