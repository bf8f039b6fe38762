"""Digital transfer: how often a patch makes each model see the target class.

tSuc (targeted success rate, the OT patch paper's metric) is the share of images
*not* of the target class that a model classifies as the target once the patch is
pasted, with a Wilson 95% interval. Every model sees exactly the same patched images
(the placements are drawn once per batch from a seeded generator), so the numbers of
different models — and of different patches judged with the same seed — are
comparable image for image (:func:`judge_patch` keeps the per-image outcomes a
paired comparison needs).

This is core: ``patchlab.evaluate`` and ``patchlab eval transfer`` both return the
:class:`TransferResult` defined here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from .data import ImageSet, class_index, match_labels, paths_digest
from .distributed import DistContext
from .eot import PRESETS, EOTConfig, PatchRenderer
from .errors import DataError
from .inputs import to_float
from .models.wrapper import WrappedModel
from .stats import wilson_interval


@dataclass(frozen=True)
class ModelTransfer:
    """One model's result on one patch."""

    name: str
    tsuc: float
    ci95: tuple[float, float]
    successes: int
    n: int  # non-target images judged
    clean_accuracy: float
    n_clean: int  # all images, clean
    untargeted_error: float  # share of non-target images misclassified once patched
    is_source: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelTransfer":
        return cls(
            name=str(d["name"]),
            tsuc=float(d["tsuc"]),
            ci95=(float(d["ci95"][0]), float(d["ci95"][1])),
            successes=int(d["successes"]),
            n=int(d["n"]),
            clean_accuracy=float(d["clean_accuracy"]),
            n_clean=int(d["n_clean"]),
            untargeted_error=float(d["untargeted_error"]),
            is_source=bool(d.get("is_source", False)),
        )


@dataclass(frozen=True)
class TransferResult:
    """A patch judged on a set of models."""

    run_id: str
    target_class: str
    placement: str
    eot: dict[str, Any]
    seed: int
    n_images: int
    models: list[ModelTransfer] = field(default_factory=list)
    command: list[str] = field(default_factory=list)  # the argv that judged it (empty: a library call)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "target_class": self.target_class,
            "placement": self.placement,
            "eot": self.eot,
            "seed": self.seed,
            "n_images": self.n_images,
            "models": [m.to_dict() for m in self.models],
            "command": list(self.command),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransferResult":
        return cls(
            run_id=str(d["run_id"]),
            target_class=str(d["target_class"]),
            placement=str(d["placement"]),
            eot=dict(d.get("eot", {})),
            seed=int(d.get("seed", 0)),
            n_images=int(d["n_images"]),
            models=[ModelTransfer.from_dict(m) for m in d.get("models", [])],
            command=[str(a) for a in d.get("command") or []],
        )

    def by_name(self) -> dict[str, ModelTransfer]:
        return {m.name: m for m in self.models}

    @property
    def defense(self) -> str | None:
        """The input defence the models were judged behind (``eval transfer --defense``), or None."""
        d = self.eot.get("defense")
        return None if d is None else str(d)

    @property
    def sources(self) -> list[ModelTransfer]:
        """The models the patch was optimised on (white-box)."""
        return [m for m in self.models if m.is_source]

    @property
    def others(self) -> list[ModelTransfer]:
        """The models it was not optimised on (transfer)."""
        return [m for m in self.models if not m.is_source]


#: clean predictions per (model name, image-set identity), reused across patches
CleanCache = dict[tuple[str, str], torch.Tensor]


@dataclass(frozen=True)
class PatchOutcomes:
    """Per-image outcomes of one patch on several models (rows: models, columns: images).

    Attributes:
        models: model names, in row order.
        hit: ``(k, N)`` bool, the patched image is classified as the target.
        wrong: ``(k, N)`` bool, the patched image is misclassified.
        clean_ok: ``(k, N)`` bool, the clean image is classified correctly.
        non_target: ``(N,)`` bool, the image is not of the target class (tSuc's denominator).
    """

    models: list[str]
    hit: torch.Tensor
    wrong: torch.Tensor
    clean_ok: torch.Tensor
    non_target: torch.Tensor


def render_patch(
    images: torch.Tensor,
    patch: torch.Tensor,
    *,
    frac: float | None = None,
    shape: str = "square",
    placement: str = "side",
    position: tuple[float, float] | None = None,
    eot: EOTConfig | str | None = None,
    frame: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Paste ``patch`` into every image (one draw of placement and EOT per image).

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1] (uint8 is divided by 255).
        patch: ``(3, h, w)`` in [0, 1].
        frac: patch area over image area (default: one patch pixel per image pixel).
        shape, placement, position, eot, frame: as in :class:`~patchlab.eot.PatchRenderer`
            (``eot`` may be a preset name).
        generator: seeds the draws (replayable).

    Returns the patched images, float ``(B, 3, H, W)`` on the images' device.
    """
    from .eot import load_eot

    x = images.float().div(255.0) if images.dtype == torch.uint8 else images
    H, W = int(x.shape[-2]), int(x.shape[-1])
    if frac is None:
        frac = float(patch.shape[1] * patch.shape[2]) / float(H * W)
    e = PRESETS["none"] if eot is None else (load_eot(eot) if isinstance(eot, str) else eot)
    r = PatchRenderer(
        (H, W),
        (int(patch.shape[1]), int(patch.shape[2])),
        frac=frac,
        shape=shape,
        placement=placement,  # type: ignore[arg-type]
        position=position,
        eot=e,
        frame=frame,
    ).to(x.device)
    return r.paste(x, patch.to(x.device, x.dtype), generator)[0]


@torch.no_grad()
def judge_patch(
    patch: torch.Tensor,
    images: ImageSet,
    target_class: str,
    models: Sequence[WrappedModel],
    *,
    frac: float,
    shape: str = "square",
    placement: str = "side",
    position: tuple[float, float] | None = None,
    eot: EOTConfig = PRESETS["none"],
    seed: int = 0,
    frame: bool = False,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    clean_cache: CleanCache | None = None,
    progress: Callable[[int], None] | None = None,
    dist: DistContext | None = None,
) -> PatchOutcomes:
    """Paste ``patch`` into every image and record each model's per-image outcome.

    Args:
        patch: ``(3, h, w)`` in [0, 1].
        images: a labelled image set (its classes must match every model's labels by name).
        target_class: the class the patch aims at.
        models: the judged models.
        frac, shape, placement, position, eot: how the patch is rendered (as in the optimiser).
        seed: seeds the placements (the same for every model, and for every patch judged
            with the same seed on the same images: outcomes pair up image for image).
        frame: paste the printed marker frame with the patch.
        clean_cache: reuse clean predictions across calls on the same images.
        progress: called with the number of images done (under torchrun: on rank 0, for all ranks).
        dist: shard the batches over a torchrun group (:meth:`~patchlab.distributed.DistContext.owns`)
            and gather the outcomes on every rank: the same outcomes, bit for bit, as one process.
            ``None`` (default): this process judges every image. Every rank of the group must call.
    """
    if not images.classes:
        raise DataError(f"{images.root} has no class sub-folders: tSuc needs labelled images")
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    t_data = class_index(target_class, images.classes)
    maps = [match_labels(images.classes, m.labels, model_name=m.name) for m in models]
    t_model = [int(mp[t_data]) for mp in maps]
    H, W = images.images.shape[-2:]
    renderer = PatchRenderer(
        (int(H), int(W)),
        (int(patch.shape[1]), int(patch.shape[2])),
        frac=frac,
        shape=shape,
        placement=placement,
        position=position,
        eot=eot,
        frame=frame,
    ).to(device)
    patch = patch.to(device).float()
    g = torch.Generator().manual_seed(seed)
    ctx = dist or DistContext()
    ident = f"{images.root}:{len(images)}:{paths_digest(images.paths, images.root) if images.paths else ''}"
    cached = [clean_cache.get((m.name, ident)) if clean_cache is not None else None for m in models]
    n_all = len(images)
    starts = range(0, n_all, batch_size)
    mine: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for b, s in enumerate(starts):
        # every rank draws every batch's placements, in order: the draws of one process
        params = renderer.sample(min(batch_size, n_all - s), g)
        if not ctx.owns(b):
            continue
        x = to_float(images.images[s : s + batch_size], device)
        y = images.labels[s : s + batch_size].to(device)
        xp = renderer(x, patch, params)
        hit, wrong, clean = [], [], []
        for i, m in enumerate(models):
            truth = maps[i].to(device)[y]
            c = cached[i]
            pc = c[s : s + batch_size].to(device) if c is not None else m(x).argmax(1)
            clean.append(pc.cpu())
            pp = m(xp).argmax(1)
            hit.append((pp == t_model[i]).cpu())
            wrong.append((pp != truth).cpu())
        mine[b] = (torch.stack(hit), torch.stack(wrong), torch.stack(clean))
        if progress is not None and ctx.is_main:
            progress(ctx.round_rows(b, n_all, batch_size))  # rank 0 counts the round of every rank
    parts = ctx.gather_batches(mine, len(starts))
    hit_all = torch.cat([p[0] for p in parts], 1)
    wrong_all = torch.cat([p[1] for p in parts], 1)
    clean_preds = torch.cat([p[2] for p in parts], 1)
    if clean_cache is not None:
        for i, m in enumerate(models):
            clean_cache.setdefault((m.name, ident), clean_preds[i])
    truth_all = [maps[i][images.labels] for i in range(len(models))]
    clean_ok = torch.stack([clean_preds[i] == truth_all[i] for i in range(len(models))])
    return PatchOutcomes(
        models=[m.name for m in models],
        hit=hit_all,
        wrong=wrong_all,
        clean_ok=clean_ok,
        non_target=images.labels != t_data,
    )


def summarise_outcomes(o: PatchOutcomes, *, source_names: Sequence[str] = ()) -> list[ModelTransfer]:
    """tSuc (with Wilson intervals), clean accuracy and untargeted error per model."""
    non = o.non_target
    n_non = int(non.sum())
    if n_non == 0:
        raise DataError("no judged image is of another class than the target")
    n = int(non.shape[0])
    out = []
    for i, name in enumerate(o.models):
        hits = int((o.hit[i] & non).sum())
        out.append(
            ModelTransfer(
                name=name,
                tsuc=hits / n_non,
                ci95=wilson_interval(hits, n_non),
                successes=hits,
                n=n_non,
                clean_accuracy=float(o.clean_ok[i].sum()) / n,
                n_clean=n,
                untargeted_error=float((o.wrong[i] & non).sum()) / n_non,
                is_source=name in set(source_names),
            )
        )
    return out


def evaluate_patch(
    patch: torch.Tensor,
    images: ImageSet,
    target_class: str,
    models: Sequence[WrappedModel],
    *,
    frac: float,
    shape: str = "square",
    placement: str = "side",
    position: tuple[float, float] | None = None,
    eot: EOTConfig = PRESETS["none"],
    seed: int = 0,
    frame: bool = False,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    source_names: Sequence[str] = (),
    clean_cache: CleanCache | None = None,
    progress: Callable[[int], None] | None = None,
    dist: DistContext | None = None,
) -> list[ModelTransfer]:
    """:func:`judge_patch`, summarised per model (``source_names`` are flagged ``is_source``)."""
    o = judge_patch(
        patch,
        images,
        target_class,
        models,
        frac=frac,
        shape=shape,
        placement=placement,
        position=position,
        eot=eot,
        seed=seed,
        frame=frame,
        batch_size=batch_size,
        device=device,
        clean_cache=clean_cache,
        progress=progress,
        dist=dist,
    )
    if not bool(o.non_target.any()):
        raise DataError(f"no image in {images.root} is of another class than the target {target_class!r}")
    return summarise_outcomes(o, source_names=source_names)


__all__ = [
    "CleanCache",
    "ModelTransfer",
    "PatchOutcomes",
    "TransferResult",
    "evaluate_patch",
    "judge_patch",
    "render_patch",
    "summarise_outcomes",
]
