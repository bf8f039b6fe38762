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

Speed: a step never waits for the device. The loss terms, the white-box success and
the NaN checks stay device tensors; :meth:`PatchOptimizer.run` reads them every
``log_every`` steps (and at checkpoints). A NaN found there rolls the patch back to the
last good one, kept on the device, and raises :class:`OptimizationDiverged` naming the
first bad step. The models may run under bfloat16 autocast (``precision``), with
channels-last batches, compiled; the patch stays a float32 master copy.

Scale: under ``torchrun`` (:mod:`patchlab.distributed`) each rank renders its share of
the global batch, the feature clouds are all-gathered and the patch gradient summed, so
every rank takes the same step as one process on the whole batch would.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .. import losses as L
from ..distributed import DistContext, current, debug_checks
from ..eot import PatchRenderer
from ..errors import PatchlabError
from ..features import FeatureExtractor
from ..inputs import ImageSource
from ..models.wrapper import WrappedModel
from .config import BANK_REUSE, COSINE_FLOOR, REGULARIZER_UNIT, OptimizeConfig

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
    window: dict[str, Any] = field(default_factory=dict)  # sums since the last history entry (device tensors)
    busy: bool = False  # inside a step: the state may be half-updated
    # device-side NaN watch, read at the check points only: all steps finite so far, the
    # patch after the last finite step, and what the first bad step saw
    ok: torch.Tensor | None = None
    good: torch.Tensor | None = None
    bad: dict[str, torch.Tensor] = field(default_factory=dict)
    world: int = 1

    def checkpoint(self, config: OptimizeConfig) -> dict[str, Any]:
        """The state to save (between steps, after a check: nothing pending on the device).

        Every rank holds the same generator state (each draws the global batch and keeps
        its rows), so the one state recorded resumes on any number of processes; the
        world size it ran on is recorded beside it.
        """
        return {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "patch": self.patch.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "history": self.history,
            "window": {k: float(v) for k, v in self.window.items()},
            "config": config.to_dict(),
            "world_size": self.world,
        }


@dataclass(frozen=True)
class StepInfo:
    """What one step reports to the progress display.

    ``loss``, ``terms`` and ``tsuc`` (white-box success on this step's batch, mean over
    sources; on this rank's share under torchrun) are read from the device when asked
    for, which waits for the step to finish: a display that wants to stay asynchronous
    reads ``logged`` instead, the history entry written at this step (``None`` between
    ``log_every`` steps).
    """

    step: int
    loss_t: torch.Tensor
    terms_t: dict[str, torch.Tensor]
    tsuc_t: torch.Tensor
    logged: dict[str, Any] | None = None

    @property
    def loss(self) -> float:
        return float(self.loss_t)

    @property
    def terms(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.terms_t.items()}

    @property
    def tsuc(self) -> float:
        return float(self.tsuc_t)


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
        dist: the data-parallel group (default: :func:`patchlab.distributed.current`,
            the initialised process group or a single process).
    """

    def __init__(
        self,
        sources: Sequence[WrappedModel],
        source: ImageSource,
        target_idx: Sequence[int] | None,
        *,
        renderer: PatchRenderer,
        config: OptimizeConfig,
        extractors: Sequence[FeatureExtractor] | None = None,
        target_feats: Sequence[dict[str, torch.Tensor]] | None = None,
        label_maps: Sequence[torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        palette: torch.Tensor | None = None,
        dist: DistContext | None = None,
    ):
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
        self._banks: dict[tuple[int, str], tuple[int, L.ProjectionBank]] = {}
        self._step = 0
        self.tv = L.TotalVariation()
        self.nps = L.NonPrintability(palette).to(self.device) if palette is not None else None
        self.dist = dist if dist is not None else current()
        self.rows = self.dist.rows(config.batch_size)  # this rank's rows of each global batch
        self.check_ranks = debug_checks()
        self.bf16 = resolve_precision(config.precision, self.device) == "bf16"
        cl = config.channels_last
        self.channels_last = self.device.type == "cuda" if cl is None else bool(cl)
        self._fwd: list[Callable] = [self._compiled(m) for m in self.sources] if config.compile else list(self.sources)
        self._fwd_feats: list[Callable] = (
            [self._compiled(e) for e in self.extractors] if config.compile else list(self.extractors)
        )

    @staticmethod
    def _compiled(module: nn.Module) -> Callable:
        return torch.compile(module, dynamic=False)

    def _prep_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

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
        return self.source.draw(self.config.batch_size, generator, self.device, rows=self.rows, step=self._step)

    def render(self, patch: torch.Tensor, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Paste the patch into the batch with freshly drawn EOT parameters (the global batch's, this rank's rows)."""
        if self.rows is None:
            return self.renderer(images, patch, self.renderer.sample(images.shape[0], generator))
        params = self.renderer.sample(self.config.batch_size, generator)
        return self.renderer(images, patch, params, rows=self.rows)

    def _true_labels(self, i: int, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:  # unlabelled data: the first model's clean prediction is the class to leave
            with torch.no_grad(), self._autocast():
                labels = self._fwd[0](self._prep_input(images)).argmax(1)
        return labels if self.label_maps is None else self.label_maps[i][labels]

    def loss(
        self, i: int, patched: torch.Tensor, generator: torch.Generator, truth: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Source model ``i``'s loss on the patched batch: ``(scalar, named terms, logits)``.

        ``truth`` (untargeted only) holds the true classes in model ``i``'s indices. The
        terms are detached device tensors (read at log time, never here), each this
        rank's share (they sum over ranks to the global batch's). Under torchrun the
        value's gradient is this rank's share of the global batch's: ``ce`` is scaled by
        the rank's share of the batch; feature losses see the all-gathered cloud.
        """
        cfg = self.config
        model = self.sources[i]
        share = 1.0 / self.dist.world
        x_in = self._prep_input(patched)
        if cfg.loss == "ce":
            with self._autocast():
                logits = self._fwd[i](x_in)
            logits = logits.float()
            if self.target_idx is None:
                value = -nn.functional.cross_entropy(logits, truth)  # away from the true class
            else:
                value = L.targeted_cross_entropy(logits, self.target_idx[i])
            if self.dist.active:
                value = value * share
            return value, {f"{'-' if self.target_idx is None else ''}ce[{model.name}]": value.detach()}, logits
        with self._autocast():
            logits, feats = self._fwd_feats[i](x_in)
        logits = logits.float()
        terms: dict[str, torch.Tensor] = {}
        parts = []
        for key, x in feats.items():
            x = self.dist.gather_rows(x.float())  # the global batch's cloud (the local rows keep their graph)
            y = self.target_feats[i][key]
            if cfg.loss == "sw" and cfg.projection_bank > 0:
                d = self._bank(i, key, y).distance(x, cfg.projections, generator=generator)
            elif cfg.loss == "sw":
                d = L.sliced_wasserstein(x, y, cfg.projections, generator=generator)
            else:
                d = L.DISTRIBUTION_LOSSES[cfg.loss](x, y)
            d = d / self.scales[i][key]
            parts.append(d)
            terms[f"{cfg.loss}[{model.name}:{key.split(':')[0]}]"] = (
                d.detach() * share if self.dist.active else d.detach()
            )
        # eq. 3: the sum over layers; each rank's backward gives its own rows' share of the gradient
        return torch.stack(parts).sum(), terms, logits

    def _bank(self, i: int, key: str, y: torch.Tensor) -> L.ProjectionBank:
        """Model ``i``'s projection bank for layer ``key`` at the current step: a pure function of
        the run's seed, the model, the layer and the bank's period (so resuming rebuilds it)."""
        cfg = self.config
        period = self._step // (BANK_REUSE * cfg.projection_bank)
        bank = self._banks.get((i, key))
        if bank is None or bank[0] != period:
            seed = zlib.crc32(f"{cfg.seed}:{i}:{key}:{period}".encode())
            bank = (period, L.ProjectionBank(y, cfg.projection_bank * cfg.projections, seed=seed))
            self._banks[(i, key)] = bank
        return bank[1]

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
        return LoopState(
            step=0, patch=patch, optimizer=self.make_optimizer(patch), generator=generator, world=self.dist.world
        )

    def load_state(self, ckpt: dict[str, Any]) -> LoopState:
        g = torch.Generator()
        g.set_state(ckpt["generator"])
        patch = ckpt["patch"].to(self.device).requires_grad_(True)
        opt = self.make_optimizer(patch)
        opt.load_state_dict(ckpt["optimizer"])
        window = {
            k: float(v) if k == "n" else torch.tensor(float(v), device=self.device) for k, v in ckpt["window"].items()
        }
        return LoopState(
            step=int(ckpt["step"]),
            patch=patch,
            optimizer=opt,
            generator=g,
            history=list(ckpt["history"]),
            window=window,
            world=self.dist.world,
        )

    @staticmethod
    def _unit(g: torch.Tensor) -> torch.Tensor:
        return g / g.norm().clamp_min(torch.finfo(g.dtype).tiny)

    def _watch_start(self, state: LoopState) -> None:
        if state.ok is None:  # a new or reloaded state: the patch as it stands is the last good one
            dev = self.device
            state.ok = torch.ones((), dtype=torch.bool, device=dev)
            state.good = state.patch.detach().clone()
            state.bad = {
                "step": torch.zeros((), dtype=torch.long, device=dev),
                "kind": torch.zeros((), dtype=torch.long, device=dev),
                "values": torch.zeros(len(self.sources), device=dev),
            }

    def one_step(self, state: LoopState) -> StepInfo:
        """One descent step; it never waits for the device.

        A NaN/inf in a loss, the gradient or the patch is recorded on the device (with
        the patch before it); :meth:`check` finds it, rolls the patch back and raises
        :class:`OptimizationDiverged`. :meth:`run` checks every ``log_every`` steps.
        """
        g = state.generator
        self._step = state.step
        self._watch_start(state)
        images, labels = self.batch(g)
        # The gradient is taken to a float64 copy of the patch: the renderer keeps that precision
        # until the batch is expanded, so the sum over the images (and over the ranks, in the
        # all-reduce) runs in float64 and rounds to float32 once. One process and N ranks then
        # round the same sums to the same patch update (to float32 rounding) instead of summing
        # float32 partial sums in another order, which a resampling EOT and Adam amplify from 1e-8
        # to 1e-3 within a few steps.
        leaf = state.patch.detach().to(torch.float64).requires_grad_(True)
        patched = self.render(leaf, images, g)
        untargeted = self.target_idx is None
        share = 1.0 / self.dist.world
        n = len(self.sources)
        grads: list[torch.Tensor] = []
        losses: list[torch.Tensor] = []
        values: list[torch.Tensor] = []  # each model's loss as computed (the NaN report)
        logged: list[torch.Tensor] = []  # each model's share of the loss (summed over ranks when logged)
        hits: list[torch.Tensor] = []
        terms: dict[str, torch.Tensor] = {}
        grad_ok = torch.ones((), dtype=torch.bool, device=self.device)
        for i in range(n):
            truth = self._true_labels(i, images, labels) if untargeted else None
            value, t, logits = self.loss(i, patched, g, truth)
            t = {k: torch.as_tensor(v, device=self.device) for k, v in t.items()}
            if self.config.grad_norm:
                (gi,) = torch.autograd.grad(value, leaf, retain_graph=i < n - 1)
                gi = self.dist.all_reduce(gi)  # the global batch's gradient of model i
                grad_ok = grad_ok & torch.isfinite(gi).all()
                grads.append(self._unit(gi))
            else:
                losses.append(value)
            values.append(value.detach().float())
            logged.append(torch.stack(list(t.values())).sum() if t else value.detach() * share)
            terms.update(t)
            pred = logits.detach().argmax(1)
            hit = (pred != truth) if untargeted else (pred == self.target_idx[i])  # type: ignore[index]
            # this rank's share of the global batch's rate (summed over ranks when logged)
            hits.append(hit.float().sum() / self.config.batch_size if self.dist.active else hit.float().mean())
        regs = self.regularizers(leaf.to(state.patch.dtype))
        if self.config.grad_norm:
            grad = torch.stack(grads).mean(0)
            for _name, (w, r) in regs.items():
                (rg,) = torch.autograd.grad(r, leaf)
                grad = grad + (w * REGULARIZER_UNIT) * self._unit(rg)
        elif not self.dist.active:  # one gradient of the weighted sum of the terms
            total = torch.stack(losses).mean() + sum((w * r for w, r in regs.values()), torch.zeros(()))
            (grad,) = torch.autograd.grad(total, leaf)
        else:  # the models' gradient summed over ranks, the regularisers' (the same on every rank) once
            (grad,) = torch.autograd.grad(torch.stack(losses).mean(), leaf, retain_graph=bool(regs))
            grad = self.dist.all_reduce(grad)
            if regs:
                (rg,) = torch.autograd.grad(sum(w * r for w, r in regs.values()), leaf)
                grad = grad + rg
        grad = grad.to(state.patch.dtype)
        grad_ok = grad_ok & torch.isfinite(grad).all()
        vals = torch.stack(values)
        loss_ok = torch.isfinite(vals).all()
        terms.update({name: r.detach() * share for name, (_w, r) in regs.items()})
        self.step(state, grad)
        self.project(state.patch)
        patch_ok = torch.isfinite(state.patch.detach()).all()
        # the NaN watch, all on the device: remember the first bad step and keep the last good patch
        step_ok = loss_ok & grad_ok & patch_ok
        new_bad = state.ok & ~step_ok
        kind = torch.where(~loss_ok, 1, torch.where(~grad_ok, 2, 3))
        state.bad["step"] = torch.where(new_bad, state.step + 1, state.bad["step"])
        state.bad["kind"] = torch.where(new_bad, kind, state.bad["kind"])
        state.bad["values"] = torch.where(new_bad, vals, state.bad["values"])
        state.ok = state.ok & step_ok
        state.good = torch.where(state.ok, state.patch.detach(), state.good)
        state.step += 1
        if self.check_ranks:
            self.dist.check_identical(state.patch)
        loss = torch.stack(logged).mean() + sum(
            (w * r.detach() * share for w, r in regs.values()), torch.zeros((), device=self.device)
        )
        return StepInfo(step=state.step, loss_t=loss, terms_t=terms, tsuc_t=torch.stack(hits).mean())

    def check(self, state: LoopState) -> None:
        """Read the NaN watch (one sync); on a bad step, restore the last good patch and raise.

        Raises:
            OptimizationDiverged: a loss, the gradient or the patch became NaN/inf; the
                state is left at the last good step with its patch.
        """
        if state.ok is None or bool(state.ok):
            return
        step = int(state.bad["step"])
        kind = int(state.bad["kind"])
        vals = state.bad["values"].tolist()
        with torch.no_grad():
            state.patch.copy_(state.good)
        state.step = step - 1
        state.ok = None
        if kind == 1:
            i = next(j for j, v in enumerate(vals) if not math.isfinite(v))
            raise OptimizationDiverged(
                f"the {self.config.loss} loss of {self.sources[i].name} became {vals[i]} at step {step}"
            )
        if kind == 2:
            raise OptimizationDiverged(f"the gradient became non-finite at step {step}")
        raise OptimizationDiverged(f"the patch became non-finite at step {step} (lr {self.config.lr})")

    def _log(self, state: LoopState) -> dict[str, Any]:
        """Turn the window's device sums into a history entry: one read (and one all-reduce) per log."""
        w = state.window
        n = float(w.get("n", 1.0))
        keys = [k for k in w if k != "n"]
        sums = [0.0] * len(keys)
        if keys:
            vec = torch.stack([torch.as_tensor(w[k], device=self.device, dtype=torch.float32) for k in keys])
            sums = self.dist.all_reduce(vec).tolist()
        got = dict(zip(keys, sums))
        entry = {
            "step": state.step,
            "loss": got.get("loss", 0.0) / n,
            "tsuc": got.get("tsuc", 0.0) / n,
            "terms": {k[2:]: v / n for k, v in got.items() if k.startswith("t:")},
        }
        state.history.append(entry)
        state.window = {}
        return entry

    def run(
        self,
        state: LoopState,
        until: int,
        *,
        on_step: Callable[[StepInfo], None] | None = None,
        on_checkpoint: Callable[[LoopState], None] | None = None,
    ) -> LoopState:
        """Step until ``state.step == until``, logging history and checkpointing on the way.

        The device is read only at log and checkpoint steps (and the last): there the
        NaN watch is checked and the window's sums become a history entry.
        """
        cfg = self.config
        while state.step < until:
            state.busy = True
            info = self.one_step(state)
            w = state.window
            w["n"] = float(w.get("n", 0.0)) + 1
            w["loss"] = w.get("loss", 0.0) + info.loss_t
            w["tsuc"] = w.get("tsuc", 0.0) + info.tsuc_t
            for k, v in info.terms_t.items():
                w["t:" + k] = w.get("t:" + k, 0.0) + v
            at_log = state.step % cfg.log_every == 0 or state.step == until
            at_ckpt = on_checkpoint is not None and (state.step % cfg.checkpoint_every == 0 or state.step == until)
            if at_log or at_ckpt:
                self.check(state)
            if at_log:
                info = replace(info, logged=self._log(state))
            if on_step is not None:
                on_step(info)
            if at_ckpt:
                on_checkpoint(state)  # type: ignore[misc]
            state.busy = False
        return state


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` on a CUDA device with bfloat16 support, else ``fp32``."""
    dev = torch.device(device)
    if precision != "auto":
        return precision
    if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


__all__ = ["CHECKPOINT_VERSION", "LoopState", "OptimizationDiverged", "PatchOptimizer", "StepInfo", "resolve_precision"]
