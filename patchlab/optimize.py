"""The patch optimiser: one loop with hooks, an ensemble of source models, resumable runs.

:class:`PatchOptimizer` is the loop (foolbox's gradient-descent base, made for
patches): each step draws a batch of non-target images, renders the patch into them
(:class:`patchlab.eot.PatchRenderer`, EOT), computes each source model's loss,
normalises each model's gradient, adds the regulariser gradients and takes an
optimiser step. Its hooks — :meth:`~PatchOptimizer.init_patch`,
:meth:`~PatchOptimizer.render`, :meth:`~PatchOptimizer.loss`,
:meth:`~PatchOptimizer.step`, :meth:`~PatchOptimizer.project` — are what a new
attack overrides; it never copies the loop.

The loss of source model ``m`` (OT patch paper, eq. 3)::

    L_m = mean over layers l of  D(features_l(patched batch), features_l(target images)) / scale_l

with ``D`` one of :data:`patchlab.losses.DISTRIBUTION_LOSSES` (``sw``, ``w2``,
``quantile``, ``l2``), or the targeted cross-entropy of the logits for ``ce``.
``scale_l`` is the target cloud's spread (:func:`patchlab.losses.cloud_scale`) so
layers of different magnitudes weigh alike.

:func:`run_optimization` wraps the loop into a run folder (see :mod:`patchlab.runs`):
data split, cached target features, checkpoints every N steps, ``--resume``, a
diverging loss stopped with the last good patch kept, Ctrl-C saved.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import losses as L
from .data import ImageSet, class_index, match_labels, split_indices
from .eot import PRESETS, EOTConfig, PatchRenderer, footprint
from .errors import ConfigError, DataError, PatchlabError
from .features import FeatureExtractor, target_features
from .models.wrapper import WrappedModel
from .runs import CHECKPOINT, PATCH_FLOAT, PATCH_PNG, RUN_JSON
from .utils import atomic_torch_save, atomic_write_bytes, atomic_write_json, versions

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
INITS = ("random", "gray")
LR_SCHEDULES = ("constant", "cosine")
#: the cosine schedule ends at this fraction of the initial learning rate
COSINE_FLOOR = 0.01
CHECKPOINT_VERSION = 1
#: Config fields that may change when a run is resumed (they do not change the patch's path).
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "log_every")


class OptimizationDiverged(PatchlabError):
    """The loss or the patch became NaN/inf; the last good patch was kept."""


@dataclass(frozen=True)
class OptimizeConfig:
    """Every option of a patch optimisation; stored in ``run.json`` as ``config``.

    Attributes:
        target: target class name (as in the data folder and the models' labels).
        loss: one of :data:`patchlab.losses.LOSS_NAMES`.
        steps, batch_size, lr, optimizer: the descent (Adam or SGD with momentum 0.9).
        lr_schedule: ``constant``, or ``cosine`` from ``lr`` down to ``COSINE_FLOOR * lr``
            at ``steps`` (then ``steps`` is part of the path and cannot change on resume).
        frac, shape, patch_px: patch area fraction of the image, square/circle, and
            its resolution in patch pixels (``None``: one patch pixel per image pixel).
        placement, position, eot, eot_name: where and how the patch is rendered.
        layers: feature layer spec (``auto``, ``depth:F``, names; see :mod:`patchlab.features`).
        projections: random directions per step for ``sw``.
        tv, nps: weights of total variation and non-printability; ``palette`` the NPS colours.
        calib: printer-to-camera colour transform (``color.json``) applied in rendering.
        frame_markers: render the printed marker frame around the patch.
        seed: the run's one seed (split, batches, EOT draws, projections, init).
        holdout_frac: share of the data held out to judge the patch.
        target_images: at most this many target-class images for the target features.
        grad_norm: normalise each source model's gradient to unit norm before averaging.
        init: ``random`` (uniform) or ``gray`` (0.5) initial patch.
        checkpoint_every, log_every: checkpoint / history period in steps.
    """

    target: str
    loss: str = "sw"
    steps: int = 500
    batch_size: int = 64
    lr: float = 0.03
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    frac: float = 0.1
    shape: str = "square"
    patch_px: int | None = None
    placement: str = "side"
    position: tuple[float, float] | None = None
    eot: EOTConfig = PRESETS["none"]
    eot_name: str = "none"
    layers: str = "auto"
    projections: int = L.DEFAULT_PROJECTIONS
    tv: float = 0.0
    nps: float = 0.0
    palette: str | None = None
    calib: str | None = None
    frame_markers: bool = False
    seed: int = 0
    holdout_frac: float = 0.2
    target_images: int | None = None
    grad_norm: bool = True
    init: str = "random"
    checkpoint_every: int = 50
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.loss not in L.LOSS_NAMES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(L.LOSS_NAMES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose {' or '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr schedule {self.lr_schedule!r}; choose {' or '.join(LR_SCHEDULES)}")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose {' or '.join(INITS)}")
        for name in ("steps", "batch_size", "projections", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.tv < 0 or self.nps < 0:
            raise ConfigError(f"tv and nps weights must be >= 0, got {self.tv}, {self.nps}")
        if self.nps > 0 and not self.palette:
            raise ConfigError("an NPS weight needs --nps PALETTE (a palette file from `patchlab calib color`)")
        if self.patch_px is not None and self.patch_px < 1:
            raise ConfigError(f"patch-px must be >= 1, got {self.patch_px}")
        if self.target_images is not None and self.target_images < 1:
            raise ConfigError(f"target-images must be >= 1, got {self.target_images}")
        if not 0.0 < self.frac < 1.0:
            raise ConfigError(f"patch-frac must be in (0, 1), got {self.frac}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eot"] = self.eot.to_dict()
        d["position"] = list(self.position) if self.position is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OptimizeConfig":
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["eot"] = EOTConfig.from_dict(dict(d.get("eot", {})), source="run config")
        if kw.get("position") is not None:
            kw["position"] = tuple(kw["position"])
        return cls(**kw)


# --------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------

@dataclass
class LoopState:
    """Everything the loop carries from step to step; a checkpoint is this, saved."""

    step: int
    patch: torch.Tensor  # (3, h, w) leaf, requires grad
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    history: list[dict[str, Any]] = field(default_factory=list)
    window: dict[str, float] = field(default_factory=dict)  # sums since the last history entry
    busy: bool = False  # inside a step: the state may be half-updated

    def checkpoint(self, config: OptimizeConfig) -> dict[str, Any]:
        return {"version": CHECKPOINT_VERSION, "step": self.step, "patch": self.patch.detach().cpu().clone(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "history": self.history, "window": dict(self.window), "config": config.to_dict()}


@dataclass(frozen=True)
class StepInfo:
    """What one step reports to the progress display."""

    step: int
    loss: float
    terms: dict[str, float]
    tsuc: float  # white-box tSuc on this step's batch, mean over sources


class PatchOptimizer:
    """Optimise one universal patch against an ensemble of source models.

    Args:
        sources: wrapped source models (frozen; never mutated).
        images: the attack set, uint8 ``(N, 3, H, W)``: non-target training images.
        target_idx: the target class's output index in each source model.
        target_feats: per source, ``{layer key: (n, d)}`` target-class features
            (``None`` for ``ce``).
        extractors: per source, the :class:`FeatureExtractor` giving those features.
        renderer: the EOT renderer.
        config: the run's options.
        device: where the batch and the patch live.
        palette: ``(N, 3)`` printable colours for NPS.
    """

    def __init__(self, sources: Sequence[WrappedModel], images: torch.Tensor, target_idx: Sequence[int], *,
                 renderer: PatchRenderer, config: OptimizeConfig,
                 extractors: Sequence[FeatureExtractor] | None = None,
                 target_feats: Sequence[dict[str, torch.Tensor]] | None = None,
                 device: torch.device | str = "cpu", palette: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected attack images as uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] < 1:
            raise DataError("no attack images: the training part holds no image of another class than the target")
        self.sources = list(sources)
        self.images = images
        self.target_idx = [int(t) for t in target_idx]
        self.renderer = renderer.to(device)
        self.config = config
        self.device = torch.device(device)
        self.extractors = list(extractors or [])
        self.target_feats = [{k: v.to(self.device) for k, v in tf.items()} for tf in (target_feats or [])]
        if config.loss != "ce" and len(self.target_feats) != len(self.sources):
            raise ValueError("feature losses need target features and an extractor per source model")
        self.scales = [{k: self._scale(v) for k, v in tf.items()} for tf in self.target_feats]
        self.tv = L.TotalVariation()
        self.nps = L.NonPrintability(palette).to(self.device) if palette is not None else None

    def close(self) -> None:
        """Remove the feature hooks from the source models (they are shared, never mutated)."""
        for e in self.extractors:
            e.close()

    def _scale(self, y: torch.Tensor) -> torch.Tensor:
        s = L.cloud_scale(y)
        return s / y.shape[1] if self.config.loss in ("sw", "quantile") else s

    # -------------------------------------------------------------------- hooks
    def init_patch(self, generator: torch.Generator) -> torch.Tensor:
        """The starting patch ``(3, h, w)``: uniform noise or mid-grey."""
        h, w = self.renderer.patch_hw
        if self.config.init == "gray":
            return torch.full((3, h, w), 0.5)
        return torch.rand(3, h, w, generator=generator)

    def make_optimizer(self, patch: torch.Tensor) -> torch.optim.Optimizer:
        if self.config.optimizer == "sgd":
            return torch.optim.SGD([patch], lr=self.config.lr, momentum=0.9)
        return torch.optim.Adam([patch], lr=self.config.lr)

    def batch(self, generator: torch.Generator) -> torch.Tensor:
        """This step's images, float ``(B, 3, H, W)`` on the device."""
        idx = torch.randint(0, self.images.shape[0], (self.config.batch_size,), generator=generator)
        return self.images[idx].to(self.device).float().div_(255.0)

    def render(self, patch: torch.Tensor, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Paste the patch into the batch with freshly drawn EOT parameters."""
        params = self.renderer.sample(images.shape[0], generator)
        return self.renderer(images, patch, params)

    def loss(self, i: int, patched: torch.Tensor, generator: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Source model ``i``'s loss on the patched batch: ``(scalar, named terms, logits)``."""
        cfg = self.config
        model = self.sources[i]
        if cfg.loss == "ce":
            logits = model(patched)
            value = L.targeted_cross_entropy(logits, self.target_idx[i])
            return value, {f"ce[{model.name}]": float(value.detach())}, logits
        logits, feats = self.extractors[i](patched)
        terms: dict[str, float] = {}
        parts = []
        for key, x in feats.items():
            y = self.target_feats[i][key]
            if cfg.loss == "sw":
                d = L.sliced_wasserstein(x, y, cfg.projections, generator=generator)
            else:
                d = L.DISTRIBUTION_LOSSES[cfg.loss](x, y)
            d = d / self.scales[i][key]
            parts.append(d)
            terms[f"{cfg.loss}[{model.name}:{key.split(':')[0]}]"] = float(d.detach())
        return torch.stack(parts).mean(), terms, logits

    def regularizer(self, patch: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Weighted TV + NPS of the patch (``None`` when both weights are 0)."""
        total = None
        terms: dict[str, float] = {}
        if self.config.tv > 0:
            t = self.tv(patch)
            terms["tv"] = float(t.detach())
            total = self.config.tv * t
        if self.nps is not None and self.config.nps > 0:
            n = self.nps(patch)
            terms["nps"] = float(n.detach())
            total = self.config.nps * n if total is None else total + self.config.nps * n
        return total, terms

    def learning_rate(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): a pure function of the step, so resuming replays it."""
        cfg = self.config
        if cfg.lr_schedule == "cosine":
            t = min(1.0, step / max(1, cfg.steps - 1))
            return cfg.lr * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * t)))
        return cfg.lr

    def step(self, state: LoopState, grad: torch.Tensor) -> None:
        """Apply the combined gradient with the optimiser."""
        for group in state.optimizer.param_groups:
            group["lr"] = self.learning_rate(state.step)
        state.optimizer.zero_grad(set_to_none=True)
        state.patch.grad = grad
        state.optimizer.step()

    def project(self, patch: torch.Tensor) -> None:
        """Keep the patch a valid image: clamp to [0, 1] in place."""
        with torch.no_grad():
            patch.clamp_(0.0, 1.0)

    # --------------------------------------------------------------------- loop
    def new_state(self, generator: torch.Generator) -> LoopState:
        patch = self.init_patch(generator).to(self.device).requires_grad_(True)
        return LoopState(step=0, patch=patch, optimizer=self.make_optimizer(patch), generator=generator)

    def load_state(self, ckpt: dict[str, Any]) -> LoopState:
        g = torch.Generator()
        g.set_state(ckpt["generator"])
        patch = ckpt["patch"].to(self.device).requires_grad_(True)
        opt = self.make_optimizer(patch)
        opt.load_state_dict(ckpt["optimizer"])
        return LoopState(step=int(ckpt["step"]), patch=patch, optimizer=opt, generator=g,
                         history=list(ckpt["history"]), window=dict(ckpt["window"]))

    def one_step(self, state: LoopState) -> StepInfo:
        """One descent step; raises :class:`OptimizationDiverged` before touching the patch if anything is NaN."""
        g = state.generator
        images = self.batch(g)
        patched = self.render(state.patch, images, g)
        grads, terms, values, hits = [], {}, [], []
        for i in range(len(self.sources)):
            value, t, logits = self.loss(i, patched, g)
            if not bool(torch.isfinite(value.detach())):
                raise OptimizationDiverged(f"the {self.config.loss} loss of {self.sources[i].name} became "
                                           f"{float(value.detach())} at step {state.step + 1}")
            (gi,) = torch.autograd.grad(value, state.patch, retain_graph=i < len(self.sources) - 1)
            if not torch.isfinite(gi).all():
                raise OptimizationDiverged(f"the gradient of {self.sources[i].name} became non-finite at "
                                           f"step {state.step + 1}")
            if self.config.grad_norm:
                gi = gi / gi.norm().clamp_min(torch.finfo(gi.dtype).tiny)
            grads.append(gi)
            values.append(float(value.detach()))
            terms.update(t)
            hits.append(float((logits.argmax(1) == self.target_idx[i]).float().mean()))
        grad = torch.stack(grads).mean(0)
        reg, rterms = self.regularizer(state.patch)
        if reg is not None:
            (rg,) = torch.autograd.grad(reg, state.patch)
            grad = grad + rg
            terms.update(rterms)
        before = state.patch.detach().clone()
        self.step(state, grad)
        self.project(state.patch)
        if not torch.isfinite(state.patch).all():
            with torch.no_grad():
                state.patch.copy_(before)
            raise OptimizationDiverged(f"the patch became non-finite at step {state.step + 1} (lr {self.config.lr})")
        state.step += 1
        loss = float(np.mean(values)) + sum(self._weighted(rterms).values())
        return StepInfo(step=state.step, loss=loss, terms=terms, tsuc=float(np.mean(hits)))

    def _weighted(self, rterms: dict[str, float]) -> dict[str, float]:
        w = {"tv": self.config.tv, "nps": self.config.nps}
        return {k: w[k] * v for k, v in rterms.items()}

    def run(self, state: LoopState, until: int, *, on_step: Callable[[StepInfo], None] | None = None,
            on_checkpoint: Callable[[LoopState], None] | None = None) -> LoopState:
        """Step until ``state.step == until``, logging history and checkpointing on the way."""
        cfg = self.config
        while state.step < until:
            state.busy = True
            info = self.one_step(state)
            w = state.window
            w["n"] = w.get("n", 0.0) + 1
            w["loss"] = w.get("loss", 0.0) + info.loss
            w["tsuc"] = w.get("tsuc", 0.0) + info.tsuc
            for k, v in info.terms.items():
                w["t:" + k] = w.get("t:" + k, 0.0) + v
            if state.step % cfg.log_every == 0 or state.step == until:
                n = w["n"]
                state.history.append({"step": state.step, "loss": w["loss"] / n, "tsuc": w["tsuc"] / n,
                                      "terms": {k[2:]: v / n for k, v in w.items() if k.startswith("t:")}})
                state.window = {}
            if on_step is not None:
                on_step(info)
            if on_checkpoint is not None and (state.step % cfg.checkpoint_every == 0 or state.step == until):
                on_checkpoint(state)
            state.busy = False
        return state


# --------------------------------------------------------------------------------------
# run folders
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunResult:
    """What :func:`run_optimization` produced."""

    run_dir: str
    status: str
    steps: int
    final_tsuc: float  # mean white-box tSuc over the last history entry
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paths_digest(paths: Sequence[str], root: str) -> str:
    """A digest of the data set's file list (relative paths), to recognise it later."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(Path(p).relative_to(root)).encode() + b"\n")
    return h.hexdigest()[:16]


def patch_to_png(patch: np.ndarray) -> bytes:
    """``(3, h, w)`` float in [0, 1] -> lossless 8-bit PNG bytes."""
    from PIL import Image

    arr = np.clip(np.round(np.transpose(patch, (1, 2, 0)) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_patch(run_dir: Path, patch: torch.Tensor) -> None:
    """Write ``patch.png`` and ``patch.npy`` atomically."""
    arr = patch.detach().cpu().float().clamp(0, 1).numpy()
    atomic_write_bytes(run_dir / PATCH_PNG, patch_to_png(arr))
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float32), allow_pickle=False)
    atomic_write_bytes(run_dir / PATCH_FLOAT, buf.getvalue())


@dataclass
class PreparedRun:
    """A run's data, models and loop, ready to step (see :func:`prepare_run`)."""

    config: OptimizeConfig
    sources: list[WrappedModel]
    optimizer: PatchOptimizer
    data: ImageSet
    split: Any
    record: dict[str, Any]


def prepare_run(config: OptimizeConfig, sources: Sequence[WrappedModel], data: ImageSet, *,
                device: torch.device | str = "cpu", cache: bool = True, color: nn.Module | None = None,
                palette: torch.Tensor | None = None) -> PreparedRun:
    """Split the data, resolve the target, extract target features, build the loop.

    Args:
        config: the options.
        sources: the source models, on ``device``.
        data: the whole labelled data set (split here by ``config.seed``).
        device: where to compute.
        cache: cache target features on disk.
        color: the printer-to-camera transform of ``config.calib`` (the CLI loads it
            with ``patchlab.calib.ColorTransform.from_json``; the core does not import stages).
        palette: the ``(N, 3)`` colours of ``config.palette`` for NPS.

    Raises:
        DataError: the target class is unknown or has no training images, or the
            data classes do not match a model's labels.
        ConfigError: the patch does not fit the images, bad layers.
    """
    if not data.classes:
        raise DataError(f"{data.root} has no class sub-folders: the optimiser needs an ImageFolder tree "
                        "with the target class in it")
    t_data = class_index(config.target, data.classes)
    target_name = data.classes[t_data]
    target_idx = []
    for m in sources:
        match_labels(data.classes, m.labels, model_name=m.name)
        target_idx.append(class_index(target_name, m.labels))
    split = split_indices(data.labels, holdout_frac=config.holdout_frac, seed=config.seed)
    train = torch.tensor(split.train, dtype=torch.long)
    is_t = data.labels[train] == t_data
    attack_idx, tgt_idx = train[~is_t], train[is_t]
    if tgt_idx.numel() == 0:
        raise DataError(f"no images of the target class {target_name!r} in the training part of {data.root}: "
                        "the feature losses need some (lower --holdout-frac or add images)")
    if config.target_images is not None and tgt_idx.numel() > config.target_images:
        perm = np.random.default_rng(config.seed).permutation(tgt_idx.numel())[:config.target_images]
        tgt_idx = tgt_idx[torch.from_numpy(np.sort(perm))]
    H, W = data.images.shape[-2:]
    fh, fw = footprint((H, W), (1, 1), config.frac)
    side = config.patch_px or fw
    if config.calib and color is None:
        raise ConfigError("config.calib is set but no colour transform was passed in")
    if config.nps > 0 and palette is None:
        raise ConfigError("an NPS weight needs the palette colours")
    renderer = PatchRenderer((H, W), (side, side), frac=config.frac, shape=config.shape,
                             placement=config.placement, position=config.position, eot=config.eot,
                             color=color, frame=config.frame_markers)
    extractors, feats = None, None
    layers_used: dict[str, list[dict]] = {}
    if config.loss != "ce":
        extractors = [FeatureExtractor(m, config.layers) for m in sources]
        feats = [target_features(e, data.images[tgt_idx], device=device, cache=cache) for e in extractors]
        layers_used = {m.name: [r.to_dict() for r in e.layers] for m, e in zip(sources, extractors)}
    opt = PatchOptimizer(sources, data.images[attack_idx], target_idx, renderer=renderer, config=config,
                         extractors=extractors, target_feats=feats, device=device, palette=palette)
    record = {
        "target_class": target_name,
        "target_index": target_idx[0],
        "seed": config.seed,
        "config": config.to_dict(),
        "sources": [m.info.to_dict() for m in sources],
        "layers": layers_used,
        "patch": {"pixels": [side, side], "shape": config.shape, "frac": config.frac, "side_px": [fw, fh],
                  "frame_markers": config.frame_markers},
        "data": {"root": str(Path(data.root).resolve()), "n_images": len(data), "image_size": [int(H), int(W)],
                 "classes": list(data.classes), "paths_digest": paths_digest(data.paths, data.root),
                 "n_attack": int(attack_idx.numel()), "n_target_images": int(tgt_idx.numel())},
        "split": split.to_dict(),
    }
    return PreparedRun(config=config, sources=list(sources), optimizer=opt, data=data, split=split, record=record)


def _check_resume(ckpt: dict[str, Any], config: OptimizeConfig, path: Path) -> None:
    old = dict(ckpt.get("config", {}))
    new = config.to_dict()
    free = set(RESUMABLE_FIELDS) - ({"steps"} if config.lr_schedule != "constant" else set())
    diff = sorted(k for k in set(old) | set(new) if k not in free and old.get(k) != new.get(k))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        raise ConfigError(f"cannot resume {path}: options differ from the stopped run ({shown}); "
                          "resume with the same options (only --steps may grow) or start a new --out")
    if int(ckpt["step"]) > config.steps:
        raise ConfigError(f"cannot resume {path}: it is already at step {ckpt['step']} > --steps {config.steps}")


def run_optimization(prepared: PreparedRun, out: str | Path, *, resume: bool = False,
                     on_step: Callable[[StepInfo], None] | None = None,
                     command: Sequence[str] | None = None) -> RunResult:
    """Run (or resume) the optimisation into the run folder ``out``.

    Writes ``run.json`` at the start and at every checkpoint, ``patch.png`` /
    ``patch.npy`` and ``checkpoint.pt`` at every checkpoint and at the end. A NaN
    stops the run with status ``diverged`` and the last good patch written, then
    raises :class:`OptimizationDiverged`; Ctrl-C saves the state reached (status
    ``interrupted``) and re-raises ``KeyboardInterrupt``. A prepared run is run once:
    its feature hooks are removed from the source models on return.
    """
    try:
        return _run(prepared, Path(out), resume=resume, on_step=on_step, command=command)
    finally:
        prepared.optimizer.close()  # the source models leave without hooks, whatever happened


def _run(prepared: PreparedRun, out: Path, *, resume: bool, on_step: Callable[[StepInfo], None] | None,
         command: Sequence[str] | None) -> RunResult:
    cfg = prepared.config
    opt = prepared.optimizer
    ck_path = out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if resume:
        if not ck_path.is_file():
            raise ConfigError(f"nothing to resume in {out}: no {CHECKPOINT} (start without --resume)")
        try:
            ckpt = torch.load(ck_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"cannot read {ck_path}: {exc}") from exc
        _check_resume(ckpt, cfg, ck_path)
        state = opt.load_state(ckpt)
        try:
            old_record = __import__("json").loads((out / RUN_JSON).read_text())
        except (OSError, ValueError):
            old_record = {}
        started = old_record.get("started", _now())
        seconds_before = float(old_record.get("seconds", 0.0))
    else:
        if out.is_dir() and any(out.iterdir()):
            raise ConfigError(f"--out {out} exists and is not empty: choose a new folder, or --resume a stopped run")
        g = torch.Generator().manual_seed(cfg.seed)
        state = opt.new_state(g)
        started, seconds_before = _now(), 0.0
    out.mkdir(parents=True, exist_ok=True)
    record = {"run_id": out.resolve().name, "status": "running", "message": "", **prepared.record,
              "command": list(command) if command is not None else list(sys.argv), "versions": versions(),
              "started": started, "finished": None, "seconds": seconds_before, "history": state.history,
              "step": state.step}
    t0 = time.perf_counter()

    def save(status: str, message: str = "", with_checkpoint: bool = True) -> None:
        record.update(status=status, message=message, history=state.history, step=state.step,
                      seconds=round(seconds_before + time.perf_counter() - t0, 3))
        if status != "running":
            record["finished"] = _now()
        write_patch(out, state.patch)
        if with_checkpoint:
            atomic_torch_save(state.checkpoint(cfg), ck_path)
        atomic_write_json(out / RUN_JSON, record)

    atomic_write_json(out / RUN_JSON, record)
    clean = {"at": state.step}

    def checkpoint(s: LoopState) -> None:
        clean["at"] = s.step
        save("running")

    try:
        opt.run(state, cfg.steps, on_step=on_step, on_checkpoint=checkpoint)
    except OptimizationDiverged as exc:
        msg = (f"{exc}; stopped and kept the last good patch (step {state.step}) in {out}. "
               "Lower --lr, or check the models and data.")
        save("diverged", msg, with_checkpoint=False)
        raise OptimizationDiverged(msg) from None
    except KeyboardInterrupt:
        # between steps the state is whole and is checkpointed; a step cut short may
        # leave the optimiser half-updated, so the last checkpoint stays the resume point
        whole = not state.busy
        at = state.step if whole else clean["at"]
        save("interrupted", f"interrupted at step {state.step}; continue with --resume (from step {at})",
             with_checkpoint=whole)
        raise
    save("finished")
    last = state.history[-1]["tsuc"] if state.history else float("nan")
    return RunResult(run_dir=str(out), status="finished", steps=state.step, final_tsuc=float(last),
                     seconds=record["seconds"])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["OptimizationDiverged", "OptimizeConfig", "PatchOptimizer", "LoopState", "StepInfo", "RunResult",
           "PreparedRun", "prepare_run", "run_optimization", "write_patch", "patch_to_png", "paths_digest"]
