"""The optimisation loop: one patch, an ensemble of source models, small hooks.

:class:`PatchOptimizer` is foolbox's gradient-descent base made for patches: each
step draws a batch, renders the patch into it (:class:`patchlab.eot.PatchRenderer`,
EOT), computes each source model's loss, normalises each model's gradient, adds the
normalised regulariser gradients and takes an optimiser step. Its hooks —
:meth:`~PatchOptimizer.init_patch`, :meth:`~PatchOptimizer.render`,
:meth:`~PatchOptimizer.loss`, :meth:`~PatchOptimizer.regularizers`,
:meth:`~PatchOptimizer.step`, :meth:`~PatchOptimizer.project` — are what a new attack
overrides; it never copies the loop.

The loss of source model ``m`` (OT patch paper, eq. 3)::

    L_m = sum over layers l of  D(features_l(patched batch), features_l(target images)) / scale_l

with ``D`` one of :data:`patchlab.losses.DISTRIBUTION_LOSSES` (``sw``, ``w2``,
``quantile``, ``l2``), or the cross-entropy of the logits for ``ce`` (towards the
target, or away from the true class when untargeted). ``scale_l`` is the target
cloud's spread (:func:`patchlab.losses.cloud_scale`) so layers of different
magnitudes weigh alike. The TV (and NPS) term of eq. 3 enters as a gradient
normalised the same way as each model's (:data:`~patchlab.optimize.config.REGULARIZER_UNIT`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import losses as L
from ..eot import PatchRenderer
from ..errors import PatchlabError
from ..features import FeatureExtractor
from ..inputs import ImageSource
from ..models.wrapper import WrappedModel
from .config import COSINE_FLOOR, REGULARIZER_UNIT, OptimizeConfig

CHECKPOINT_VERSION = 1


class OptimizationDiverged(PatchlabError):
    """The loss or the patch became NaN/inf; the last good patch was kept."""


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
    tsuc: float  # white-box success on this step's batch, mean over sources


class PatchOptimizer:
    """Optimise one universal patch against an ensemble of source models.

    Args:
        sources: wrapped source models (frozen; never mutated).
        source: where the attack images come from (:mod:`patchlab.inputs`): images of
            classes other than the target; labels (first model's indices) are needed
            only when untargeted.
        target_idx: the target class's output index in each source model (``None``:
            untargeted, away from each image's true class).
        renderer: the EOT renderer.
        config: the options.
        extractors: per source, the :class:`FeatureExtractor` of the feature losses.
        target_feats: per source, ``{layer key: (n, d)}`` target-class features.
        label_maps: per source, first-model label index -> this model's (untargeted ensembles).
        device: where the batch and the patch live.
        palette: ``(N, 3)`` printable colours for NPS.
    """

    def __init__(self, sources: Sequence[WrappedModel], source: ImageSource, target_idx: Sequence[int] | None, *,
                 renderer: PatchRenderer, config: OptimizeConfig,
                 extractors: Sequence[FeatureExtractor] | None = None,
                 target_feats: Sequence[dict[str, torch.Tensor]] | None = None,
                 label_maps: Sequence[torch.Tensor] | None = None,
                 device: torch.device | str = "cpu", palette: torch.Tensor | None = None):
        self.sources = list(sources)
        self.source = source
        self.target_idx = None if target_idx is None else [int(t) for t in target_idx]
        self.renderer = renderer.to(device)
        self.config = config
        self.device = torch.device(device)
        self.extractors = list(extractors or [])
        self.target_feats = [{k: v.to(self.device) for k, v in tf.items()} for tf in (target_feats or [])]
        if config.loss != "ce" and len(self.target_feats) != len(self.sources):
            raise ValueError("feature losses need target features and an extractor per source model")
        self.label_maps = [m.to(self.device) for m in label_maps] if label_maps is not None else None
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

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This step's images, float ``(B, 3, H, W)`` on the device, and their labels if known."""
        return self.source.draw(self.config.batch_size, generator, self.device)

    def render(self, patch: torch.Tensor, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Paste the patch into the batch with freshly drawn EOT parameters."""
        params = self.renderer.sample(images.shape[0], generator)
        return self.renderer(images, patch, params)

    def _true_labels(self, i: int, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:  # unlabelled data: the first model's clean prediction is the class to leave
            with torch.no_grad():
                labels = self.sources[0](images).argmax(1)
        return labels if self.label_maps is None else self.label_maps[i][labels]

    def loss(self, i: int, patched: torch.Tensor, generator: torch.Generator, truth: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Source model ``i``'s loss on the patched batch: ``(scalar, named terms, logits)``.

        ``truth`` (untargeted only) holds the true classes in model ``i``'s indices.
        """
        cfg = self.config
        model = self.sources[i]
        if cfg.loss == "ce":
            logits = model(patched)
            if self.target_idx is None:
                value = -nn.functional.cross_entropy(logits, truth)  # away from the true class
                return value, {f"-ce[{model.name}]": float(value.detach())}, logits
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
        return torch.stack(parts).sum(), terms, logits  # eq. 3: the sum over layers

    def regularizers(self, patch: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
        """The weighted regularisers of the patch: ``{name: (weight, value)}`` for the non-zero weights.

        NPS is measured on the colours the camera sees through the printer-to-camera
        transform when the renderer has one: the palette was measured in that space.
        """
        out: dict[str, tuple[float, torch.Tensor]] = {}
        if self.config.tv > 0:
            out["tv"] = (self.config.tv, self.tv(patch))
        if self.nps is not None and self.config.nps > 0:
            seen = self.renderer.color(patch[None])[0] if self.renderer.color is not None else patch
            out["nps"] = (self.config.nps, self.nps(seen))
        return out

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

    @staticmethod
    def _unit(g: torch.Tensor) -> torch.Tensor:
        return g / g.norm().clamp_min(torch.finfo(g.dtype).tiny)

    def one_step(self, state: LoopState) -> StepInfo:
        """One descent step; raises :class:`OptimizationDiverged` before touching the patch if anything is NaN."""
        g = state.generator
        images, labels = self.batch(g)
        patched = self.render(state.patch, images, g)
        untargeted = self.target_idx is None
        grads, terms, values, hits = [], {}, [], []
        losses = []
        n = len(self.sources)
        for i in range(n):
            truth = self._true_labels(i, images, labels) if untargeted else None
            value, t, logits = self.loss(i, patched, g, truth)
            if not bool(torch.isfinite(value.detach())):
                raise OptimizationDiverged(f"the {self.config.loss} loss of {self.sources[i].name} became "
                                           f"{float(value.detach())} at step {state.step + 1}")
            if self.config.grad_norm:
                (gi,) = torch.autograd.grad(value, state.patch, retain_graph=i < n - 1)
                if not torch.isfinite(gi).all():
                    raise OptimizationDiverged(f"the gradient of {self.sources[i].name} became non-finite at "
                                               f"step {state.step + 1}")
                grads.append(self._unit(gi))
            else:
                losses.append(value)
            values.append(float(value.detach()))
            terms.update(t)
            pred = logits.detach().argmax(1)
            hit = (pred != truth) if untargeted else (pred == self.target_idx[i])  # type: ignore[index]
            hits.append(float(hit.float().mean()))
        regs = self.regularizers(state.patch)
        if self.config.grad_norm:
            grad = torch.stack(grads).mean(0)
            for _name, (w, r) in regs.items():
                (rg,) = torch.autograd.grad(r, state.patch)
                grad = grad + (w * REGULARIZER_UNIT) * self._unit(rg)
        else:  # one gradient of the weighted sum of the terms
            total = torch.stack(losses).mean() + sum((w * r for w, r in regs.values()), torch.zeros(()))
            (grad,) = torch.autograd.grad(total, state.patch)
            if not torch.isfinite(grad).all():
                raise OptimizationDiverged(f"the gradient became non-finite at step {state.step + 1}")
        terms.update({name: float(r.detach()) for name, (_w, r) in regs.items()})
        before = state.patch.detach().clone()
        self.step(state, grad)
        self.project(state.patch)
        if not torch.isfinite(state.patch).all():
            with torch.no_grad():
                state.patch.copy_(before)
            raise OptimizationDiverged(f"the patch became non-finite at step {state.step + 1} (lr {self.config.lr})")
        state.step += 1
        loss = float(np.mean(values)) + sum(w * float(r.detach()) for w, r in regs.values())
        return StepInfo(step=state.step, loss=loss, terms=terms, tsuc=float(np.mean(hits)))

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


__all__ = ["CHECKPOINT_VERSION", "LoopState", "OptimizationDiverged", "PatchOptimizer", "StepInfo"]
