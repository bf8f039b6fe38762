"""``PatchAttack``: the universal patch optimiser as a library call.

A notebook user writes::

    m = patchlab.wrap(net, mean=..., std=..., input_size=(3, 32, 32), labels=classes)
    res = patchlab.PatchAttack(loss="sw", steps=500)(m, loader, target="frog")
    res.patch            # (3, h, w) in [0, 1]

The attack holds keyword-only settings (an :class:`~patchlab.optimize.config.OptimizeConfig`,
its ``repr`` lists them); calling it with models, data and a target returns a frozen
:class:`PatchResult`. Run folders, checkpoints and ``--resume``
(:mod:`patchlab.optimize.run`) wrap :meth:`PatchAttack.prepare`; they hold no algorithm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..data import ImageSet, class_index, match_labels
from ..defenses import adaptive_model
from ..eot import EOTConfig, PatchRenderer, footprint, load_eot
from ..errors import ConfigError, DataError
from ..features import FeatureExtractor, target_features
from ..inputs import TensorSource, as_source, collect, data_classes
from ..models.wrapper import WrappedModel
from .config import OptimizeConfig
from .loop import LoopState, PatchOptimizer, StepInfo

#: Settings that describe the data or the run folder, not the attack (kept out of the repr's defaults).
_RUN_ONLY = ("target", "holdout_frac", "checkpoint_every")


@dataclass(frozen=True)
class PatchResult:
    """A finished patch optimisation (POT's result objects: frozen, ``to_dict``/``from_dict``).

    Attributes:
        patch: ``(3, h, w)`` float32 in [0, 1], on the CPU.
        history: one dict per logged step (``step``, ``loss``, ``terms``, ``tsuc``: the
            running white-box success on the training batches).
        config: the resolved settings (:meth:`OptimizeConfig.to_dict`), target included.
        target_class: the target's name (``None``: untargeted).
        models: the source models' names.
        layers: per source, the feature layers used.
        steps: steps taken; seconds: wall time.
    """

    patch: torch.Tensor
    history: list[dict[str, Any]]
    config: dict[str, Any]
    target_class: str | None = None
    models: list[str] = field(default_factory=list)
    layers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0

    @property
    def final_tsuc(self) -> float:
        """The last logged running white-box success (``nan`` before any step)."""
        return float(self.history[-1]["tsuc"]) if self.history else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "patch": self.patch.tolist(),
            "history": self.history,
            "config": self.config,
            "target_class": self.target_class,
            "models": list(self.models),
            "layers": self.layers,
            "steps": self.steps,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PatchResult":
        return cls(
            patch=torch.tensor(d["patch"], dtype=torch.float32),
            history=list(d.get("history", [])),
            config=dict(d.get("config", {})),
            target_class=d.get("target_class"),
            models=list(d.get("models", [])),
            layers=dict(d.get("layers", {})),
            steps=int(d.get("steps", 0)),
            seconds=float(d.get("seconds", 0.0)),
        )


@dataclass
class PreparedAttack:
    """An attack bound to its models, data and target, ready to step (what run folders drive)."""

    optimizer: PatchOptimizer
    config: OptimizeConfig
    generator: torch.Generator
    target_class: str | None
    target_index: int | None
    layers: dict[str, list[dict[str, Any]]]
    patch_info: dict[str, Any]
    n_attack: int | None  # None: streamed
    n_target_images: int

    def new_state(self) -> LoopState:
        return self.optimizer.new_state(self.generator)

    def result(self, state: LoopState, seconds: float = 0.0) -> PatchResult:
        return PatchResult(
            patch=state.patch.detach().cpu().clone(),
            history=list(state.history),
            config=self.config.to_dict(),
            target_class=self.target_class,
            models=[m.name for m in self.optimizer.sources],
            layers=self.layers,
            steps=state.step,
            seconds=round(seconds, 3),
        )

    def close(self) -> None:
        self.optimizer.close()


def _as_models(models: nn.Module | Sequence[nn.Module]) -> list[WrappedModel]:
    ms = [models] if isinstance(models, nn.Module) else list(models)
    if not ms:
        raise ConfigError("no source model given")
    for m in ms:
        if not isinstance(m, WrappedModel):
            raise ConfigError(
                f"expected a wrapped model, got {type(m).__name__}: wrap a network with "
                "patchlab.wrap(net, mean=..., std=..., input_size=..., labels=...) or load one with "
                "patchlab.load_model(ref)"
            )
    return ms  # type: ignore[return-value]


def models_device(models: Sequence[nn.Module]) -> torch.device:
    """Where the (first) model's parameters live (the CPU for a model without any)."""
    p = next(models[0].parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def resolve_patch_target(target: int | str | None, labels: Sequence[str]) -> tuple[str | None, int | None]:
    """The one class a universal patch aims at: a class index or name -> ``(name, index)`` in
    ``labels``; ``None`` stays untargeted. (Per-image targets of the image attacks, ``random``
    included, are :func:`patchlab.attacks.base.resolve_target`.)"""
    if target is None:
        return None, None
    if isinstance(target, bool) or not isinstance(target, (int, str, np.integer)):
        raise ConfigError(f"target must be a class index or a class name, got {target!r}")
    if isinstance(target, (int, np.integer)):
        if not 0 <= int(target) < len(labels):
            raise ConfigError(f"target class index {target} is out of range for {len(labels)} classes")
        return str(labels[int(target)]), int(target)
    i = class_index(target, labels)
    return str(labels[i]), i


class PatchAttack:
    """Optimise a universal (targeted or untargeted) adversarial patch.

    Every keyword is a field of :class:`~patchlab.optimize.config.OptimizeConfig`
    (``loss``, ``steps``, ``lr``, ``batch_size``, ``frac``, ``eot``, ``placement``,
    ``layers``, ``projections``, ``tv``, ``nps``, ``seed``, ...), plus:

    Args:
        eot: a preset name (``none``, ``digital``, ``physical``), a TOML path or an
            :class:`~patchlab.eot.EOTConfig`.
        palette: ``(N, 3)`` printable colours in [0, 1] for the NPS term
            (``patchlab.calib.load_palette``), needed when ``nps > 0``.
        color: a differentiable printer-to-camera colour transform
            (``patchlab.calib.ColorTransform``) applied when rendering (and to NPS).
        device: where to compute (default: the first model's device).
        cache: cache the target-class features on disk (keyed by weights, preprocessing,
            defences, layers and image bytes).
        defense: an input defence spec (``blur:1``, ``jpeg:50``, ``lgs``; see
            :func:`patchlab.defenses.get_defense`) in front of every source model. The
            attack is adaptive: it optimises through the defence, with BPDA where the defence
            has no gradient. A source that is already a defended model
            (:func:`patchlab.defend`) is attacked through its own defences the same way.

    Call it as ``attack(models, images, target, *, target_images=None, generator=None)``
    (see :meth:`__call__`).
    """

    def __init__(
        self,
        *,
        eot: str | EOTConfig = "none",
        palette: torch.Tensor | None = None,
        color: nn.Module | None = None,
        device: torch.device | str | None = None,
        cache: bool = True,
        _files: dict[str, str | None] | None = None,
        **settings: Any,
    ):
        known = {f.name for f in fields(OptimizeConfig)} - {"target", "eot", "palette", "calib"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"PatchAttack got unknown settings {unknown}; known: {sorted(known)}")
        if isinstance(eot, EOTConfig):
            eot_cfg, eot_name = eot, settings.pop("eot_name", "custom")
        else:
            eot_cfg, eot_name = load_eot(eot), str(eot)
        files = dict(_files or {})  # the palette / colour files a stored config names
        if palette is not None:
            palette = torch.as_tensor(palette, dtype=torch.float32)
            files.setdefault("palette", None)
            settings["palette"] = files["palette"] or f"<{palette.shape[0]} colours in memory>"
        if color is not None:
            files.setdefault("calib", None)
            settings["calib"] = files["calib"] or f"<{type(color).__name__} in memory>"
        if settings.get("nps", 0) > 0 and palette is None:
            raise ConfigError(
                "an NPS weight needs the printable palette: pass palette=patchlab.calib.load_palette(FILE)"
            )
        self.config = OptimizeConfig(target="<per call>", eot=eot_cfg, eot_name=eot_name, **settings)
        self.palette = palette
        self.color = color
        self.device = device
        self.cache = cache

    @classmethod
    def from_config(cls, config: OptimizeConfig, **objects: Any) -> "PatchAttack":
        """The attack of a stored config (a run record's), with its palette/colour objects."""
        skip = ("target", "eot", "palette", "calib")
        d = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in skip}
        return cls(eot=config.eot, _files={"palette": config.palette, "calib": config.calib}, **objects, **d)

    def __repr__(self) -> str:
        c = self.config
        shown = [f"{f.name}={getattr(c, f.name)!r}" for f in fields(c) if f.name not in _RUN_ONLY and f.name != "eot"]
        return f"PatchAttack({', '.join(shown)})"

    # ------------------------------------------------------------------ binding
    def prepare(
        self,
        models: nn.Module | Sequence[nn.Module],
        images: Any,
        target: int | str | None,
        *,
        target_images: Any = None,
        generator: torch.Generator | None = None,
    ) -> PreparedAttack:
        """Bind the attack to models, data and a target: the loop, ready to step.

        Raises:
            ConfigError: unknown target, bad settings, a patch larger than the images.
            DataError: no usable images, no target-class images for a feature loss.
        """
        config = self.config
        # a defended source means an adaptive attack through its defence: BPDA where it has no gradient
        ms = [adaptive_model(m, config.defense) for m in _as_models(models)]
        labels0 = ms[0].labels
        target_name, t0 = resolve_patch_target(target, labels0)
        config = replace(config, target=target_name)
        device = torch.device(self.device) if self.device is not None else models_device(ms)
        target_idx = None if target_name is None else [class_index(target_name, m.labels) for m in ms]
        label_maps = [match_labels(labels0, m.labels, model_name=m.name) for m in ms]

        keep = None if t0 is None else (lambda y: y != t0)  # the target class's own images teach nothing
        source, _classes = as_source(images, labels0, model_name=ms[0].name, keep=keep)
        n_attack = len(source) if isinstance(source, TensorSource) else None
        if n_attack == 0:
            raise DataError("no attack images: the data holds no image of another class than the target")

        H, W = source.image_hw
        fh, fw = footprint((H, W), (1, 1), config.frac)
        side = config.patch_px or fw
        renderer = PatchRenderer(
            (H, W),
            (side, side),
            frac=config.frac,
            shape=config.shape,
            placement=config.placement,
            position=config.position,
            eot=config.eot,
            color=self.color,
            frame=config.frame_markers,
        )
        extractors, feats, n_target = None, None, 0
        layers_used: dict[str, list[dict[str, Any]]] = {}
        if config.loss != "ce":
            timgs = self._target_images(images, target_images, t0, labels0, config)
            n_target = int(timgs.shape[0])
            extractors = [FeatureExtractor(m, config.layers) for m in ms]
            feats = [target_features(e, timgs, device=device, cache=self.cache) for e in extractors]
            layers_used = {m.name: [r.to_dict() for r in e.layers] for m, e in zip(ms, extractors)}
        opt = PatchOptimizer(
            ms,
            source,
            target_idx,
            renderer=renderer,
            config=config,
            extractors=extractors,
            target_feats=feats,
            label_maps=label_maps if len(ms) > 1 else None,
            device=device,
            palette=self.palette,
        )
        g = generator if generator is not None else torch.Generator().manual_seed(config.seed)
        info = {
            "pixels": [side, side],
            "shape": config.shape,
            "frac": config.frac,
            "side_px": [fw, fh],
            "frame_markers": config.frame_markers,
        }
        return PreparedAttack(
            optimizer=opt,
            config=config,
            generator=g,
            target_class=target_name,
            target_index=t0,
            layers=layers_used,
            patch_info=info,
            n_attack=n_attack,
            n_target_images=n_target,
        )

    @staticmethod
    def _target_images(
        data: Any, given: Any, t0: int | None, labels0: Sequence[str], config: OptimizeConfig
    ) -> torch.Tensor:
        """The target-class images whose features the patched images are pulled towards."""
        if given is not None:
            if isinstance(given, ImageSet):
                x = given.images
            elif isinstance(given, torch.Tensor):
                x = given
            else:
                x = collect(given, limit=config.target_images)
        else:
            if t0 is None:
                raise ConfigError("feature losses need a target class")
            if (
                isinstance(data, ImageSet)
                or isinstance(data, torch.Tensor)
                or (isinstance(data, tuple) and len(data) == 2)
            ):
                src, _ = as_source(data, labels0)
                assert isinstance(src, TensorSource)
                if src.labels is None:
                    raise DataError(
                        "the images carry no labels, so the target class's images cannot be found: "
                        "pass (images, labels), an ImageSet, or target_images="
                    )
                x = src.images[src.labels == t0]
            else:
                classes = data_classes(data)
                lm = match_labels(classes, labels0) if classes else None
                x = collect(data, keep=lambda y: y == t0, label_map=lm, limit=config.target_images)
        if x.ndim != 4 or x.shape[0] == 0:
            raise DataError(
                f"no images of the target class {labels0[t0] if t0 is not None else ''!r} to take "
                "features from: add some, or pass target_images="
            )
        if config.target_images is not None and x.shape[0] > config.target_images:
            keep = np.sort(np.random.default_rng(config.seed).permutation(x.shape[0])[: config.target_images])
            x = x[torch.from_numpy(keep)]
        return x

    # --------------------------------------------------------------------- run
    def __call__(
        self,
        models: nn.Module | Sequence[nn.Module],
        images: Any,
        target: int | str | None,
        *,
        target_images: Any = None,
        generator: torch.Generator | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
    ) -> PatchResult:
        """Optimise a patch.

        Args:
            models: one wrapped model or a list (an ensemble; each model's gradient is normalised).
            images: a tensor ``(N, 3, H, W)`` (float in [0, 1] or uint8), an ``(images, labels)``
                pair, an :class:`~patchlab.data.ImageSet` or an iterable of ``(images, labels)``
                batches (a ``DataLoader``: streamed, never held whole). Images of the target
                class are skipped where labels say so.
            target: a class index or name; ``None`` for an untargeted patch (``loss="ce"``:
                maximise the loss of the true class).
            target_images: the target class's images for the feature losses (default: the
                target-class images found in ``images``).
            generator: the run's randomness (default: seeded with ``seed``).
            on_step: called after every step with a :class:`StepInfo`.
        """
        prep = self.prepare(models, images, target, target_images=target_images, generator=generator)
        t0 = time.perf_counter()
        try:
            state = prep.new_state()
            prep.optimizer.run(state, prep.config.steps, on_step=on_step)
        finally:
            prep.close()
        return prep.result(state, time.perf_counter() - t0)


__all__ = ["PatchAttack", "PatchResult", "PreparedAttack", "resolve_patch_target"]
