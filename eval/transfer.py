"""Digital transfer: how often a patch makes each model see the target class.

tSuc (targeted success rate, the OT patch paper's metric) is the share of images
*not* of the target class that a model classifies as the target once the patch is
pasted, with a Wilson 95% interval. Every model sees exactly the same patched images
(the placements are drawn once per batch from a seeded generator), so the numbers of
different models are comparable image for image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from patchlab.data import ImageSet, load_folder, paths_digest
from patchlab.distributed import DistContext
from patchlab.eot import PRESETS, EOTConfig
from patchlab.errors import ConfigError, DataError
from patchlab.models.wrapper import WrappedModel
from patchlab.runs import RunRecord, load_run, read_patch
from patchlab.transfer import (
    CleanCache,
    ModelTransfer,
    PatchOutcomes,
    TransferResult,
    evaluate_patch,
    judge_patch,
    summarise_outcomes,
)


def holdout_images(
    record: RunRecord | dict[str, Any], *, run_dir: str | Path = "run", cache: dict[str, ImageSet] | None = None
) -> ImageSet:
    """The held-out images a run was judged on: its data folder, checked, and the split's holdout part."""
    rec = record if isinstance(record, RunRecord) else RunRecord.from_dict(record)
    d = rec.data
    root = rec.data_root
    if not root or not Path(root).is_dir():
        raise DataError(
            f"{run_dir}: its data folder {root!r} is not here; judge the patch with "
            "--patch PNG --data DIR --target CLASS instead"
        )
    limit = rec.limit_per_class
    key = f"{root}:{limit}"
    full = cache.get(key) if cache is not None else None
    if full is None:
        full = load_folder(root, limit_per_class=limit)
        if cache is not None:
            cache[key] = full
    if len(full) != int(d.get("n_images", -1)) or paths_digest(full.paths, full.root) != d.get("paths_digest"):
        raise DataError(
            f"{run_dir}: the data in {root} changed since the run ({len(full)} images now, "
            f"{d.get('n_images')} then): the held-out split no longer applies"
        )
    if not rec.holdout:
        raise DataError(
            f"{run_dir}: the run held out no images (--holdout-frac 0); judge it on other data with "
            "--patch PNG --data DIR --target CLASS"
        )
    return full.subset(rec.holdout)


def judge_run(
    run_dir: str | Path,
    models: Sequence[WrappedModel],
    *,
    placement: str | None = None,
    eot: EOTConfig = PRESETS["none"],
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    clean_cache: CleanCache | None = None,
    data_cache: dict[str, ImageSet] | None = None,
    progress: Callable[[int], None] | None = None,
    dist: DistContext | None = None,
    max_images: int | None = None,
    subset_seed: int = 12345,
) -> tuple[RunRecord, ImageSet, str, PatchOutcomes]:
    """A run's patch on its held-out images, per image (placement from the run unless given).

    ``dist``: shard the images over a torchrun group (:func:`patchlab.transfer.judge_patch`);
    every rank gets the same outcomes as one process.
    ``max_images``: judge at most this many of the held-out images, the first of one shuffle
    seeded by ``subset_seed`` (kept in folder order): runs made on the same data with the
    same split seed are judged on the same images.

    Returns the record, the images, the placement used and the outcomes.
    """
    rec = load_run(run_dir)
    cfg = rec.config
    if rec.target_class is None:
        raise ConfigError(f"{run_dir}: an untargeted patch has no tSuc; judge its untargeted error instead")
    patch = torch.from_numpy(read_patch(run_dir))
    images = holdout_images(rec, run_dir=run_dir, cache=data_cache)
    if max_images is not None:
        if max_images < 1:
            raise ConfigError(f"max_images must be >= 1, got {max_images}")
        g = torch.Generator().manual_seed(subset_seed)
        images = images.subset(torch.randperm(len(images), generator=g)[:max_images].sort().values)
    pl = placement or cfg.get("placement", "side")
    pos = cfg.get("position")
    if pl == "fixed" and pos is None:
        raise ConfigError("placement 'fixed' needs the run's --position; pick another --placement")
    out = judge_patch(
        patch,
        images,
        rec.target_class,
        models,
        frac=rec.frac,
        shape=cfg.get("shape", "square"),
        placement=pl,
        position=tuple(pos) if pos else None,
        eot=eot,
        seed=seed,
        frame=bool(cfg.get("frame_markers", False)),
        batch_size=batch_size,
        device=device,
        clean_cache=clean_cache,
        progress=progress,
        dist=dist,
    )
    return rec, images, pl, out


def evaluate_run(
    run_dir: str | Path,
    models: Sequence[WrappedModel],
    *,
    placement: str | None = None,
    eot: EOTConfig = PRESETS["none"],
    eot_name: str = "none",
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    clean_cache: CleanCache | None = None,
    data_cache: dict[str, ImageSet] | None = None,
    progress: Callable[[int], None] | None = None,
    dist: DistContext | None = None,
) -> TransferResult:
    """Judge a run's patch on its held-out images (placement from the run unless given).

    ``dist`` shards the images over a torchrun group; every rank returns the single-process result.
    """
    rec, images, pl, out = judge_run(
        run_dir,
        models,
        placement=placement,
        eot=eot,
        seed=seed,
        batch_size=batch_size,
        device=device,
        clean_cache=clean_cache,
        data_cache=data_cache,
        progress=progress,
        dist=dist,
    )
    if not bool(out.non_target.any()):
        raise DataError(f"{run_dir}: no held-out image is of another class than the target {rec.target_class!r}")
    return TransferResult(
        run_id=rec.run_id or Path(run_dir).name,
        target_class=str(rec.target_class),
        placement=pl,
        eot={"name": eot_name, **eot.to_dict()},
        seed=seed,
        n_images=len(images),
        models=summarise_outcomes(out, source_names=rec.source_names),
    )


__all__ = [
    "CleanCache",
    "ModelTransfer",
    "TransferResult",
    "evaluate_patch",
    "evaluate_run",
    "holdout_images",
    "judge_run",
]
