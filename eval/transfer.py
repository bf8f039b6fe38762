"""Digital transfer: how often a patch makes each model see the target class.

tSuc (targeted success rate, the OT patch paper's metric) is the share of images
*not* of the target class that a model classifies as the target once the patch is
pasted, with a Wilson 95% interval. Every model sees exactly the same patched images
(the placements are drawn once per batch from a seeded generator), so the numbers of
different models are comparable image for image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from patchlab.data import ImageSet, class_index, load_folder, match_labels
from patchlab.eot import PRESETS, EOTConfig, PatchRenderer
from patchlab.errors import ConfigError, DataError
from patchlab.models.wrapper import WrappedModel
from patchlab.data import paths_digest
from patchlab.runs import read_patch, read_run
from patchlab.stats import wilson_interval


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

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "target_class": self.target_class, "placement": self.placement,
                "eot": self.eot, "seed": self.seed, "n_images": self.n_images,
                "models": [m.to_dict() for m in self.models]}

    def by_name(self) -> dict[str, ModelTransfer]:
        return {m.name: m for m in self.models}


#: clean predictions per (model name, image-set identity), reused across patches
CleanCache = dict[tuple[str, str], torch.Tensor]


@torch.no_grad()
def evaluate_patch(patch: torch.Tensor, images: ImageSet, target_class: str, models: Sequence[WrappedModel], *,
                   frac: float, shape: str = "square", placement: str = "side",
                   position: tuple[float, float] | None = None, eot: EOTConfig = PRESETS["none"], seed: int = 0,
                   frame: bool = False, batch_size: int = 256, device: torch.device | str = "cpu",
                   source_names: Sequence[str] = (),
                   clean_cache: CleanCache | None = None,
                   progress: Callable[[int], None] | None = None) -> list[ModelTransfer]:
    """Paste ``patch`` into every image and judge each model.

    Args:
        patch: ``(3, h, w)`` in [0, 1].
        images: a labelled image set (its classes must match every model's labels by name).
        target_class: the class the patch aims at.
        models: the judged models.
        frac, shape, placement, position, eot: how the patch is rendered (as in the optimiser).
        seed: seeds the placements (the same for every model).
        frame: paste the printed marker frame with the patch (a run optimised with
            ``--frame-markers`` is judged as the cut-out it was made for).
        source_names: models that were optimised against (flagged ``is_source``).
        clean_cache: reuse clean predictions across calls on the same images.
        progress: called with the number of images done.
    """
    if not images.classes:
        raise DataError(f"{images.root} has no class sub-folders: tSuc needs labelled images")
    t_data = class_index(target_class, images.classes)
    maps = [match_labels(images.classes, m.labels, model_name=m.name) for m in models]
    t_model = [int(mp[t_data]) for mp in maps]
    H, W = images.images.shape[-2:]
    renderer = PatchRenderer((int(H), int(W)), tuple(patch.shape[1:]), frac=frac, shape=shape, placement=placement,
                             position=position, eot=eot, frame=frame).to(device)
    patch = patch.to(device).float()
    g = torch.Generator().manual_seed(seed)
    ident = f"{images.root}:{len(images)}:{paths_digest(images.paths, images.root) if images.paths else ''}"
    k = len(models)
    hits = np.zeros(k, np.int64)
    wrong = np.zeros(k, np.int64)
    clean_ok = np.zeros(k, np.int64)
    cached = [clean_cache.get((m.name, ident)) if clean_cache is not None else None for m in models]
    clean_preds: list[list[torch.Tensor]] = [[] for _ in models]
    n_non = 0
    for s in range(0, len(images), batch_size):
        x = images.images[s:s + batch_size].to(device).float().div_(255.0)
        y = images.labels[s:s + batch_size].to(device)
        params = renderer.sample(x.shape[0], g)
        xp = renderer(x, patch, params)
        non = y != t_data
        n_non += int(non.sum())
        for i, m in enumerate(models):
            truth = maps[i].to(device)[y]
            if cached[i] is not None:
                pc = cached[i][s:s + batch_size].to(device)
            else:
                pc = m(x).argmax(1)
                clean_preds[i].append(pc.cpu())
            clean_ok[i] += int((pc == truth).sum())
            pp = m(xp).argmax(1)
            hits[i] += int(((pp == t_model[i]) & non).sum())
            wrong[i] += int(((pp != truth) & non).sum())
        if progress is not None:
            progress(int(x.shape[0]))
    if clean_cache is not None:
        for i, m in enumerate(models):
            if cached[i] is None:
                clean_cache[(m.name, ident)] = torch.cat(clean_preds[i])
    if n_non == 0:
        raise DataError(f"no image in {images.root} is of another class than the target {target_class!r}")
    out = []
    for i, m in enumerate(models):
        out.append(ModelTransfer(name=m.name, tsuc=hits[i] / n_non, ci95=wilson_interval(int(hits[i]), n_non),
                                 successes=int(hits[i]), n=n_non, clean_accuracy=clean_ok[i] / len(images),
                                 n_clean=len(images), untargeted_error=wrong[i] / n_non,
                                 is_source=m.name in set(source_names)))
    return out


def holdout_images(record: dict[str, Any], *, run_dir: str | Path = "run",
                   cache: dict[str, ImageSet] | None = None) -> ImageSet:
    """The held-out images a run was judged on: its data folder, checked, and the split's holdout part."""
    d = record.get("data", {})
    root = d.get("root")
    if not root or not Path(root).is_dir():
        raise DataError(f"{run_dir}: its data folder {root!r} is not here; judge the patch with "
                        "--patch PNG --data DIR --target CLASS instead")
    limit = record.get("limit_per_class")
    key = f"{root}:{limit}"
    full = cache.get(key) if cache is not None else None
    if full is None:
        full = load_folder(root, limit_per_class=limit)
        if cache is not None:
            cache[key] = full
    if len(full) != int(d.get("n_images", -1)) or paths_digest(full.paths, full.root) != d.get("paths_digest"):
        raise DataError(f"{run_dir}: the data in {root} changed since the run ({len(full)} images now, "
                        f"{d.get('n_images')} then): the held-out split no longer applies")
    hold = record.get("split", {}).get("holdout", [])
    if not hold:
        raise DataError(f"{run_dir}: the run held out no images (--holdout-frac 0); judge it on other data with "
                        "--patch PNG --data DIR --target CLASS")
    return full.subset(hold)


def evaluate_run(run_dir: str | Path, models: Sequence[WrappedModel], *, placement: str | None = None,
                 eot: EOTConfig = PRESETS["none"], eot_name: str = "none", seed: int = 0, batch_size: int = 256,
                 device: torch.device | str = "cpu", clean_cache: CleanCache | None = None,
                 data_cache: dict[str, ImageSet] | None = None,
                 progress: Callable[[int], None] | None = None) -> TransferResult:
    """Judge a run's patch on its held-out images (placement from the run unless given)."""
    rec = read_run(run_dir)
    cfg = rec.get("config", {})
    patch = torch.from_numpy(read_patch(run_dir))
    images = holdout_images(rec, run_dir=run_dir, cache=data_cache)
    pl = placement or cfg.get("placement", "side")
    pos = cfg.get("position")
    if pl == "fixed" and pos is None:
        raise ConfigError("placement 'fixed' needs the run's --position; pick another --placement")
    res = evaluate_patch(patch, images, rec["target_class"], models, frac=float(cfg.get("frac", rec["patch"]["frac"])),
                         shape=cfg.get("shape", "square"), placement=pl, position=tuple(pos) if pos else None,
                         eot=eot, seed=seed, frame=bool(cfg.get("frame_markers", False)), batch_size=batch_size,
                         device=device, source_names=[s["name"] for s in rec.get("sources", [])], clean_cache=clean_cache,
                         progress=progress)
    return TransferResult(run_id=str(rec.get("run_id", Path(run_dir).name)), target_class=rec["target_class"],
                          placement=pl, eot={"name": eot_name, **eot.to_dict()}, seed=seed, n_images=len(images),
                          models=res)
