"""Train the embedded world's model zoo: three small classifiers of different families.

``patchlab world train --data WORLD --out ZOO`` writes, per model, a card in the
shared card format (``ZOO/<name>.json``) and its weights (``ZOO/<name>.safetensors``),
then ``ZOO/zoo.json`` last: a folder without it, or whose files no longer match
the hashes in it, is not a (complete) zoo. Cards load with
:func:`patchlab.models.load_model`, so ``patchlab models check ZOO/*.json --data
WORLD/val`` and ``patchlab optimize --source ZOO/lenet.json`` take them unchanged.

Each card also records ``val_accuracy`` (measured through the card itself, as
``models check`` does), ``train_seconds``, the ``train_config`` and the world's
fingerprint. Normalisation (``mean``/``std``) is the per-channel statistics of the
world's training pictures at the model's input size.

Training is seeded: one :class:`torch.Generator` per model drives the data order
and the augmentation, and the initial weights come from a forked global RNG
seeded the same way, so the same seed gives the same weights on a CPU (the caller's
RNG state is left alone). No augmentation flips images: ``keep_left`` is
``keep_right`` mirrored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError, ModelLoadError
from ..utils import atomic_write_bytes, atomic_write_json, read_json_object, resolve_device, user_cache_dir, versions
from .make import ProgressFactory, WorldInfo, ensure_world, read_world

log = logging.getLogger(__name__)

#: Bump when a training change alters the weights: part of the cache key.
ZOO_VERSION = 1
ZOO_JSON = "zoo.json"
ZOO_FORMAT = "patchlab-zoo"


@dataclass(frozen=True)
class ModelSpec:
    """How to build and train one zoo member.

    Args:
        name: file stem of the card and weights (``lenet`` -> ``lenet.json``).
        framework, arch, kwargs: the card's builder (``num_classes`` is added).
        input_size: side of the square network input; the world's pictures are
            resized to it (antialiased bilinear, as the model wrapper does).
        epochs, batch_size, lr, weight_decay, warmup: AdamW with a one-cycle
            schedule (linear warm-up over ``warmup`` of the steps, cosine decay).
        label_smoothing: of the cross-entropy.
        shift, scale, rotate: random affine augmentation (fraction of the side,
            relative scale, degrees); ``jitter``: brightness/contrast amplitude.
    """

    name: str
    framework: str
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 32
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup: float = 0.15
    label_smoothing: float = 0.0
    shift: float = 0.04
    scale: float = 0.05
    rotate: float = 4.0
    jitter: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The default zoo: three families, each >= 95 % on the default world's val split
#: (97-99 %) in under a minute of one CPU core. ``lenet`` is seed 004's LeNet-5
#: (RGB, 32 x 32); ``resnet`` a small ResNet at the world's full 64 x 64 (stride-2
#: stem); ``vit`` a tiny vision transformer from timm, the R+ViT-Ti hybrid (Steiner
#: et al. 2021, "How to train your ViT?") at 48 x 48: a 7x7 convolution + max-pool
#: stem (stride 4) feeding 2x2 patches, i.e. 36 tokens, to 4 transformer blocks of
#: width 64. A plain patchify ViT (``vit_tiny_patch16_224`` at patch 8 or 4) stalled
#: at 83-86 % here in twice the budget (it over-fits without augmentation and
#: under-fits with it); an early convolution is the known remedy (Xiao et al. 2021,
#: "Early Convolutions Help Transformers See Better"), and the blocks stay a ViT's.
DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("lenet", "patchlab", "lenet", {"input_size": 32}, input_size=32, epochs=12, lr=2e-3),
    ModelSpec(
        "resnet",
        "patchlab",
        "small_resnet",
        {"widths": [16, 32, 64], "blocks": [1, 1, 1], "stem_stride": 2},
        input_size=64,
        epochs=10,
        lr=3e-3,
    ),
    ModelSpec(
        "vit",
        "timm",
        "vit_tiny_r_s16_p8_224",
        {
            "img_size": 48,
            "patch_size": 2,
            "embed_dim": 64,
            "depth": 4,
            "num_heads": 4,
            "mlp_ratio": 2.0,
            "global_pool": "avg",
            "class_token": False,
        },
        input_size=48,
        epochs=10,
        lr=1.5e-3,
        weight_decay=0.05,
    ),
)


@dataclass(frozen=True)
class TrainConfig:
    """The whole zoo's training: which models, and the seed."""

    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    seed: int = 0
    version: int = ZOO_VERSION

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("a zoo needs at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"zoo model names must be unique, got {names}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"models": [m.to_dict() for m in self.models], "seed": self.seed, "version": self.version}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def scaled(self, epochs: float) -> "TrainConfig":
        """The same zoo with every model's epochs multiplied by ``epochs`` (at least 1): for quick runs."""
        return replace(
            self, models=tuple(replace(m, epochs=max(1, int(round(m.epochs * epochs)))) for m in self.models)
        )


@dataclass(frozen=True)
class ZooModel:
    """One trained model of a zoo."""

    name: str
    card: Path
    weights: Path
    val_accuracy: float
    val_n: int
    train_seconds: float
    weights_sha256: str
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "card": str(self.card),
            "weights": str(self.weights),
            "val_accuracy": self.val_accuracy,
            "val_n": self.val_n,
            "train_seconds": self.train_seconds,
            "weights_sha256": self.weights_sha256,
            "cached": self.cached,
        }


@dataclass(frozen=True)
class ZooInfo:
    """A zoo on disk (what :func:`train_zoo`, :func:`read_zoo` and :func:`ensure_zoo` return)."""

    root: Path
    models: tuple[ZooModel, ...]
    world: dict[str, Any]
    config: dict[str, Any]
    seconds: float = 0.0
    cached: bool = False

    @property
    def cards(self) -> list[Path]:
        return [m.card for m in self.models]

    def card(self, name: str) -> Path:
        for m in self.models:
            if m.name == name:
                return m.card
        raise ConfigError(f"zoo {self.root} has no model {name!r}; it has {', '.join(m.name for m in self.models)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "models": [m.to_dict() for m in self.models],
            "world": self.world,
            "config": self.config,
            "seconds": self.seconds,
            "cached": self.cached,
        }


# ------------------------------------------------------------------ training
def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def _model_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def augment(x: torch.Tensor, spec: ModelSpec, generator: torch.Generator) -> torch.Tensor:
    """Random affine (shift, scale, rotation; never a flip) and brightness/contrast
    jitter, per picture. ``x``: ``(B, 3, H, W)`` in [0, 1]; the same generator state
    gives the same output."""
    b = x.shape[0]
    r = torch.rand(b, 6, generator=generator, device=generator.device).to(x.device, x.dtype) * 2 - 1
    ang = r[:, 0] * math.radians(spec.rotate)
    s = 1.0 + r[:, 1] * spec.scale
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack(
        [torch.stack([cos, -sin, r[:, 2] * spec.shift * 2], 1), torch.stack([sin, cos, r[:, 3] * spec.shift * 2], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gain = (1.0 + r[:, 4] * spec.jitter).view(b, 1, 1, 1)
    contrast = (1.0 + r[:, 5] * spec.jitter).view(b, 1, 1, 1)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - m) * contrast + m * gain).clamp(0, 1)


@dataclass(frozen=True)
class TrainResult:
    """A network fresh from :func:`train_model`, with what its card needs."""

    net: torch.nn.Module
    kwargs: dict[str, Any]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    seconds: float
    history: tuple[dict[str, float], ...]


def train_model(
    spec: ModelSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train one model from scratch.

    Args:
        spec: what to build and how to train it.
        images: ``(N, 3, H, W)`` uint8 or float in [0, 1], any size (resized to the
            model's input).
        labels: ``(N,)`` class indices in ``[0, num_classes)``.
        num_classes: outputs.
        seed: the model's seed (data order, augmentation, initial weights).
        device: where to train; the result is moved back to the CPU.
        progress: called with 1 after each optimiser step.
    """
    from ..models.load import build_network

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"expected labels of shape ({images.shape[0]},), got {tuple(labels.shape)}")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    x = images.float().div_(255.0) if not images.is_floating_point() else images.float()
    x = _resize(x, spec.input_size).contiguous()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    kwargs = {**spec.kwargs, "num_classes": num_classes}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(spec.framework, spec.arch, kwargs)
    net = net.to(dev).train()
    x, y = x.to(dev), labels.to(dev)
    mean_d, std_d = mean.to(dev).view(1, 3, 1, 1), std.to(dev).view(1, 3, 1, 1)
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = x.shape[0]
    steps_per_epoch = max(1, n // spec.batch_size)
    total = steps_per_epoch * spec.epochs
    decay, no_decay = [], []
    for pname, p in net.named_parameters():
        (no_decay if p.ndim <= 1 or pname.endswith(("pos_embed", "cls_token")) else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr
    )
    warm = max(1, int(spec.warmup * total))

    def lr_at(step: int) -> float:
        if step < warm:
            return spec.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return spec.lr * 0.5 * (1.0 + math.cos(math.pi * t))

    history = []
    step = 0
    for epoch in range(spec.epochs):
        perm = torch.randperm(n, generator=g).to(dev)
        loss_sum, hits, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * spec.batch_size : (b + 1) * spec.batch_size]
            xb = augment(x[idx], spec, g)
            yb = y[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            logits = net((xb - mean_d) / std_d)
            loss = F.cross_entropy(logits, yb, label_smoothing=spec.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not torch.isfinite(loss.detach()):
                raise ConfigError(f"training {spec.name} diverged at step {step} (loss {float(loss)}): lower its lr")
            loss_sum += float(loss.detach()) * yb.numel()
            hits += int((logits.argmax(1) == yb).sum())
            seen += yb.numel()
            step += 1
            if progress is not None:
                progress(1)
        history.append({"epoch": epoch + 1, "loss": round(loss_sum / seen, 5), "train_acc": round(hits / seen, 5)})
        log.info("%s epoch %d: loss %.4f train acc %.3f", spec.name, epoch + 1, loss_sum / seen, hits / seen)
    net = net.eval().cpu()
    seconds = round(time.perf_counter() - t0, 3)
    return TrainResult(
        net=net,
        kwargs=kwargs,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        seconds=seconds,
        history=tuple(history),
    )


# ------------------------------------------------------------------ zoo on disk
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _world_record(world: WorldInfo) -> dict[str, Any]:
    return {"fingerprint": world.fingerprint, "config": world.config.to_dict(), "root": str(world.root)}


def _valid_card(out: Path, spec: ModelSpec, seed: int, world: WorldInfo) -> ZooModel | None:
    """The model already trained in ``out`` with this spec, seed and world, or None."""
    cp, wp = out / f"{spec.name}.json", out / f"{spec.name}.safetensors"
    if not (cp.is_file() and wp.is_file()):
        return None
    try:
        card = read_json_object(cp, "model card", error=ModelLoadError)
        ok = (
            card.get("train_config") == {**spec.to_dict(), "seed": seed}
            and card.get("world", {}).get("fingerprint") == world.fingerprint
            and card.get("weights_sha256") == _sha256(wp)
        )
    except (ModelLoadError, OSError, ValueError, AttributeError):
        return None
    if not ok:
        return None
    return ZooModel(
        name=spec.name,
        card=cp,
        weights=wp,
        val_accuracy=float(card["val_accuracy"]),
        val_n=int(card.get("val_n", 0)),
        train_seconds=float(card["train_seconds"]),
        weights_sha256=card["weights_sha256"],
        cached=True,
    )


def _write_model(
    out: Path,
    spec: ModelSpec,
    res: TrainResult,
    classes: list[str],
    world: WorldInfo,
    seed: int,
    val_set,
    device: torch.device,
) -> ZooModel:
    from safetensors.torch import save

    from ..models import load_model
    from ..models.check import check_accuracy

    cp, wp = out / f"{spec.name}.json", out / f"{spec.name}.safetensors"
    sd = {k: v.detach().contiguous().cpu() for k, v in res.net.state_dict().items()}
    atomic_write_bytes(wp, save(sd))
    card = {
        "name": f"world-{spec.name}",
        "framework": spec.framework,
        "arch": spec.arch,
        "kwargs": res.kwargs,
        "input_size": [3, spec.input_size, spec.input_size],
        "resize": "bilinear-antialias",
        "mean": [round(v, 6) for v in res.mean],
        "std": [round(v, 6) for v in res.std],
        "labels": list(classes),
        "weights": wp.name,
        "about": "trained by `patchlab world train` on the procedural sign world; mean/std are the world's "
        "training-picture statistics at input_size",
    }
    atomic_write_json(cp, card)
    # measured through the card, exactly as `patchlab models check CARD --data WORLD/val` does
    acc = check_accuracy(load_model(str(cp), device=device), val_set, device=device)
    card.update(
        {
            "val_accuracy": round(acc.accuracy, 6),
            "val_n": acc.n,
            "val_per_class": acc.per_class,
            "train_seconds": res.seconds,
            "train_config": {**spec.to_dict(), "seed": seed},
            "train_history": list(res.history),
            "world": _world_record(world),
            "weights_sha256": _sha256(wp),
            "versions": versions(("torch", "timm", "numpy")),
        }
    )
    atomic_write_json(cp, card)
    return ZooModel(
        name=spec.name,
        card=cp,
        weights=wp,
        val_accuracy=card["val_accuracy"],
        val_n=acc.n,
        train_seconds=res.seconds,
        weights_sha256=card["weights_sha256"],
    )


def train_zoo(
    data: str | os.PathLike | WorldInfo,
    out: str | os.PathLike,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: ProgressFactory | None = None,
    *,
    config: TrainConfig | None = None,
    resume: bool = True,
) -> ZooInfo:
    """Train the zoo on a world and write it to ``out`` (layout in the module docstring).

    Args:
        data: a world folder (``patchlab world make``) or its :class:`WorldInfo`.
        out: the zoo folder (created; other files in it are left alone).
        seed: the training seed (``config.seed`` is replaced by it).
        device: where to train.
        progress: ``progress(task, total) -> advance``, one task per model.
        config: which models and how (default :data:`DEFAULT_MODELS`).
        resume: keep models already in ``out`` that were trained with the same spec,
            seed and world (an interrupted run picks up where it stopped).

    Raises:
        DataError: ``data`` is not a complete world.
    """
    from ..data import load_folder

    world = data if isinstance(data, WorldInfo) else read_world(data)
    cfg = replace(config or TrainConfig(), seed=seed)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    todo = [s for s in cfg.models if not (resume and _valid_card(out, s, seed, world))]
    train_set = val_set = None
    if todo:
        train_set = load_folder(world.train)
        val_set = load_folder(world.val)
        if train_set.classes != list(world.classes) or val_set.classes != list(world.classes):
            raise DataError(f"world {world.root}: class folders {train_set.classes} differ from its manifest")
    models = []
    for spec in cfg.models:
        done = _valid_card(out, spec, seed, world) if resume else None
        if done is not None:
            log.info("%s: already trained in %s, kept", spec.name, out)
            models.append(done)
            continue
        steps = max(1, len(train_set) // spec.batch_size) * spec.epochs
        advance = progress(f"training {spec.name}", steps) if progress else None
        res = train_model(
            spec,
            train_set.images,
            train_set.labels,
            len(world.classes),
            seed=_model_seed(seed, spec.name),
            device=dev,
            progress=advance,
        )
        with torch.random.fork_rng(devices=[]):  # loading the card draws initial weights
            models.append(_write_model(out, spec, res, list(world.classes), world, seed, val_set, dev))
    seconds = round(time.perf_counter() - t0, 3)
    manifest = {
        "format": ZOO_FORMAT,
        "version": ZOO_VERSION,
        "world": _world_record(world),
        "config": cfg.to_dict(),
        "fingerprint": cfg.fingerprint(),
        "seconds": seconds,
        "device": str(dev),
        "models": [_manifest_entry(m, out) for m in models],
        "versions": versions(("torch", "timm", "numpy")),
    }
    atomic_write_json(out / ZOO_JSON, manifest)
    return ZooInfo(
        root=out,
        models=tuple(models),
        world=manifest["world"],
        config=manifest["config"],
        seconds=seconds,
        cached=bool(models) and all(m.cached for m in models),
    )


def _manifest_entry(m: ZooModel, out: Path) -> dict[str, Any]:
    return {
        "name": m.name,
        "card": m.card.name,
        "weights": m.weights.name,
        "val_accuracy": m.val_accuracy,
        "val_n": m.val_n,
        "train_seconds": m.train_seconds,
        "weights_sha256": m.weights_sha256,
    }


def read_zoo(root: str | os.PathLike, *, verify: bool = True) -> ZooInfo:
    """Open a zoo folder written by :func:`train_zoo`.

    Args:
        root: the folder.
        verify: check every card and weights file is there and the weights hash to
            what the manifest says.

    Raises:
        ModelLoadError: ``root`` is not a complete, intact zoo.
    """
    root = Path(root).expanduser()
    zj = root / ZOO_JSON
    if not zj.is_file():
        raise ModelLoadError(
            f"{root} is not a patchlab model zoo (no {ZOO_JSON}); train one with "
            "`patchlab world train --data WORLD --out DIR`"
        )
    try:
        meta = read_json_object(zj, "zoo manifest", error=ModelLoadError)
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"{zj} is not a valid zoo manifest ({str(exc).split(': ', 1)[-1]}); retrain the zoo"
        ) from exc
    try:
        entries = list(meta["models"])
        if meta.get("format") != ZOO_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        models = []
        for e in entries:
            cp, wp = root / e["card"], root / e["weights"]
            if verify:
                if not cp.is_file() or not wp.is_file():
                    raise ModelLoadError(f"zoo {root} is incomplete: {e['card']} or {e['weights']} is missing")
                if _sha256(wp) != e["weights_sha256"]:
                    raise ModelLoadError(f"zoo {root} is corrupt: {e['weights']} does not match its hash")
                read_json_object(cp, "model card", error=ModelLoadError)
            models.append(
                ZooModel(
                    name=e["name"],
                    card=cp,
                    weights=wp,
                    val_accuracy=float(e["val_accuracy"]),
                    val_n=int(e.get("val_n", 0)),
                    train_seconds=float(e["train_seconds"]),
                    weights_sha256=e["weights_sha256"],
                    cached=True,
                )
            )
    except ModelLoadError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{zj} is not a valid zoo manifest ({exc}); retrain the zoo") from exc
    return ZooInfo(
        root=root,
        models=tuple(models),
        world=dict(meta["world"]),
        config=dict(meta["config"]),
        seconds=float(meta.get("seconds", 0.0)),
        cached=True,
    )


def zoo_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`ensure_zoo` keeps zoos: ``<cache>/zoos`` (``$PATCHLAB_CACHE`` overrides the cache)."""
    return (Path(cache_dir).expanduser() if cache_dir else user_cache_dir()) / "zoos"


def zoo_key(world: WorldInfo, config: TrainConfig) -> str:
    """Cache key of a zoo: the world's fingerprint and the training config."""
    blob = json.dumps({"world": world.fingerprint, "train": config.fingerprint()}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def ensure_zoo(
    world: WorldInfo | str | os.PathLike | None = None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressFactory | None = None,
    config: TrainConfig | None = None,
    n_per_class: int = 500,
    size: int = 64,
    world_seed: int | None = None,
) -> ZooInfo:
    """The zoo for this world and training config from the cache, training what is missing.

    Args:
        world: a world (folder or :class:`WorldInfo`); default: the cached world of
            ``ensure_world(n_per_class, size, world_seed)`` in the same ``cache_dir``.
        seed: the training seed.
        device: where to train (only if something must be trained).
        cache_dir: the cache root (default :func:`patchlab.utils.user_cache_dir`:
            ``$PATCHLAB_CACHE`` or ``~/.cache/patchlab``).
        progress: as in :func:`train_zoo` (and :func:`ensure_world`).
        config: the training config (default zoo).
        n_per_class, size, world_seed: the default world's config (``world_seed``
            defaults to ``seed``); ignored when ``world`` is given.

    The entry is ``<cache>/zoos/zoo-<key>``, keyed by the world's fingerprint and the
    training config. A complete, intact entry returns at once (``cached=True``); a
    partial one (an interrupted run) keeps its finished models and trains the rest;
    one whose files no longer match their hashes is retrained.
    """
    if world is None:
        world = ensure_world(
            n_per_class, size, seed if world_seed is None else world_seed, cache_dir=cache_dir, progress=progress
        )
    elif not isinstance(world, WorldInfo):
        world = read_world(world)
    cfg = replace(config or TrainConfig(), seed=seed)
    root = zoo_cache_dir(cache_dir) / f"zoo-{zoo_key(world, cfg)}"
    if (root / ZOO_JSON).is_file():
        try:
            zoo = read_zoo(root)
            if zoo.config == cfg.to_dict() and zoo.world.get("fingerprint") == world.fingerprint:
                return zoo
        except ModelLoadError as exc:
            log.warning("retraining the cached zoo: %s", exc)
        (root / ZOO_JSON).unlink(missing_ok=True)
    if root.exists() and not root.is_dir():
        root.unlink()
    return train_zoo(world, root, seed=seed, device=device, progress=progress, config=cfg, resume=True)
