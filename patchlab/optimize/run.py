"""Run folders around :class:`~patchlab.optimize.PatchAttack`: split, record, checkpoints, resume.

:func:`prepare_run` splits the data (seeded, stratified; the held-out part judges the
patch later), binds a :class:`PatchAttack` to the training part and builds the run
record; :func:`run_optimization` steps it into a run folder (see
:mod:`patchlab.runs`): ``run.json`` at the start and every checkpoint, the patch and
``checkpoint.pt`` at every checkpoint and at the end, ``--resume`` to the identical
patch, a diverging loss stopped with the last good patch kept, Ctrl-C saved.
"""

from __future__ import annotations

import contextlib

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..data import ImageSet, class_index, paths_digest, split_indices
from ..errors import ConfigError, DataError, PatchlabError
from ..models.wrapper import WrappedModel
from ..locks import folder_is_empty
from ..runs import CHECKPOINT, RUN_JSON, write_patch, writing_folder
from ..utils import atomic_torch_save, atomic_write_json, now_iso, read_json_object, versions
from .attack import PatchAttack, PatchResult, PreparedAttack
from .config import RESUMABLE_FIELDS, OptimizeConfig
from .loop import LoopState, OptimizationDiverged, StepInfo


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_optimization` produced."""

    run_dir: str
    status: str
    steps: int
    final_tsuc: float  # mean white-box tSuc over the last history entry
    seconds: float
    result: PatchResult | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["result"] = self.result.to_dict() if self.result is not None else None
        return d


@dataclass
class PreparedRun:
    """A run's data, models and bound attack, ready to step (see :func:`prepare_run`)."""

    config: OptimizeConfig
    sources: list[WrappedModel]
    attack: PreparedAttack
    data: ImageSet
    split: Any
    record: dict[str, Any]

    @property
    def optimizer(self):  # the loop, for callers that step it themselves
        return self.attack.optimizer


def prepare_run(
    config: OptimizeConfig,
    sources: Sequence[WrappedModel],
    data: ImageSet,
    *,
    device: torch.device | str = "cpu",
    cache: bool = True,
    color: nn.Module | None = None,
    palette: torch.Tensor | None = None,
) -> PreparedRun:
    """Split the data, bind :class:`PatchAttack` to the training part, build the run record.

    Args:
        config: the options (``config.target`` names the target class).
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
        raise DataError(
            f"{data.root} has no class sub-folders: the optimiser needs an ImageFolder tree with the target class in it"
        )
    if config.target is None:
        raise ConfigError("a run folder needs a target class (--target)")
    if config.calib and color is None:
        raise ConfigError("config.calib is set but no colour transform was passed in")
    if config.nps > 0 and palette is None:
        raise ConfigError("an NPS weight needs the palette colours")
    split = split_indices(data.labels, holdout_frac=config.holdout_frac, seed=config.seed)
    train = data.subset(split.train)
    target_name = data.classes[class_index(config.target, data.classes)]
    if not bool((train.labels == data.classes.index(target_name)).any()) and config.loss != "ce":
        raise DataError(
            f"no images of the target class {target_name!r} in the training part of {data.root}: "
            "the feature losses need some (lower --holdout-frac or add images)"
        )
    attack = PatchAttack.from_config(config, palette=palette, color=color, device=device, cache=cache)
    prepared = attack.prepare(list(sources), train, target_name)
    H, W = data.images.shape[-2:]
    record = {
        "target_class": prepared.target_class,
        "target_index": prepared.target_index,
        "seed": config.seed,
        "attack": repr(attack),
        "config": prepared.config.to_dict(),
        "sources": [m.info.to_dict() for m in sources],
        "defense": _defense_record(prepared.config),
        "layers": prepared.layers,
        "patch": prepared.patch_info,
        "data": {
            "root": str(Path(data.root).resolve()),
            "n_images": len(data),
            "image_size": [int(H), int(W)],
            "classes": list(data.classes),
            "paths_digest": paths_digest(data.paths, data.root),
            "n_attack": prepared.n_attack,
            "n_target_images": prepared.n_target_images,
        },
        "split": split.to_dict(),
    }
    return PreparedRun(
        config=prepared.config, sources=list(sources), attack=prepared, data=data, split=split, record=record
    )


def prepare_stream_run(
    config: OptimizeConfig,
    sources: Sequence[WrappedModel],
    root: str | Path,
    *,
    workers: int = 0,
    limit_per_class: int | None = None,
    device: torch.device | str = "cpu",
    cache: bool = True,
    color: nn.Module | None = None,
    palette: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> PreparedRun:
    """:func:`prepare_run` for a folder streamed from disk: the data set is never held in memory.

    The split is made on the file list (the same seeded split as :func:`prepare_run`);
    the attack images of the training part stream through a DataLoader decoding in
    ``workers`` processes (pinned memory on CUDA, prefetch, a ``DistributedSampler``
    shard per rank under torchrun); only the target class's training images (at most
    ``config.target_images``) are read, once, for the target features.
    """
    from ..data import read_image, scan_folder
    from ..distributed import current
    from ..inputs import folder_loader

    if config.target is None:
        raise ConfigError("a run folder needs a target class (--target)")
    if config.calib and color is None:
        raise ConfigError("config.calib is set but no colour transform was passed in")
    if config.nps > 0 and palette is None:
        raise ConfigError("an NPS weight needs the palette colours")
    items, classes = scan_folder(root)
    from ..data import limit_items

    items = limit_items(items, limit_per_class)
    if not classes or not items:
        raise DataError(
            f"{root} has no class sub-folders with images: the optimiser needs an ImageFolder tree "
            "with the target class in it"
        )
    labels = torch.tensor([c for _p, c in items], dtype=torch.long)
    split = split_indices(labels, holdout_frac=config.holdout_frac, seed=config.seed)
    t = classes.index(classes[class_index(config.target, classes)])
    train = [items[int(i)] for i in split.train]
    attack_items = [it for it in train if it[1] != t]
    target_items = [it for it in train if it[1] == t]
    if not attack_items:
        raise DataError(f"no attack images in the training part of {root}")
    timgs = None
    if config.loss != "ce":
        if not target_items:
            raise DataError(f"no images of the target class {classes[t]!r} in the training part of {root}")
        if config.target_images is not None:
            target_items = target_items[: config.target_images]
        timgs = torch.stack([read_image(p) for p, _c in target_items])
        if progress is not None:
            progress(len(target_items))
    dist = current()
    loader = folder_loader(
        attack_items,
        classes=classes,
        batch_size=config.batch_size,
        workers=workers,
        seed=config.seed,
        device=device,
        rows=dist.rows(config.batch_size),
    )
    attack = PatchAttack.from_config(config, palette=palette, color=color, device=device, cache=cache)
    prepared = attack.prepare(list(sources), loader, classes[t], target_images=timgs)
    H, W = prepared.optimizer.source.image_hw
    record = {
        "target_class": prepared.target_class,
        "target_index": prepared.target_index,
        "seed": config.seed,
        "attack": repr(attack),
        "config": prepared.config.to_dict(),
        "sources": [m.info.to_dict() for m in sources],
        "defense": _defense_record(prepared.config),
        "layers": prepared.layers,
        "patch": prepared.patch_info,
        "data": {
            "root": str(Path(root).resolve()),
            "n_images": len(items),
            "image_size": [int(H), int(W)],
            "classes": list(classes),
            "paths_digest": paths_digest([str(p) for p, _c in items], str(root)),
            "n_attack": len(attack_items),
            "n_target_images": prepared.n_target_images,
            "streamed": {"workers": workers},
        },
        "split": split.to_dict(),
    }
    return PreparedRun(
        config=prepared.config,
        sources=list(sources),
        attack=prepared,
        data=None,  # type: ignore
        split=split,
        record=record,
    )


def _defense_record(config: OptimizeConfig) -> dict[str, Any]:
    """The run record's ``defense``: the defence in front of the sources (every parameter) and
    how the attack differentiated it (``bpda``: straight-through)."""
    from ..defenses import get_defense

    return get_defense(config.defense).to_dict()


def with_missing_fields(old: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the fields its patchlab version did not have yet, as they were then
    (:meth:`OptimizeConfig.from_dict`: ``defense`` none, ``projection_bank`` 0); the stored values stay."""
    try:
        return {**OptimizeConfig.from_dict(old).to_dict(), **old}
    except (PatchlabError, TypeError, ValueError):  # not a config we can read: compared as stored
        return old


def _check_resume(ckpt: dict[str, Any], config: OptimizeConfig, path: Path) -> None:
    old = with_missing_fields(dict(ckpt.get("config", {})))
    new = config.to_dict()
    free = set(RESUMABLE_FIELDS) - ({"steps"} if config.lr_schedule != "constant" else set())
    diff = sorted(k for k in set(old) | set(new) if k not in free and old.get(k) != new.get(k))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        raise ConfigError(
            f"cannot resume {path}: options differ from the stopped run ({shown}); "
            "resume with the same options (only --steps may grow) or start a new --out"
        )
    if int(ckpt["step"]) > config.steps:
        raise ConfigError(f"cannot resume {path}: it is already at step {ckpt['step']} > --steps {config.steps}")


def run_optimization(
    prepared: PreparedRun,
    out: str | Path,
    *,
    resume: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    command: Sequence[str] | None = None,
) -> RunResult:
    """Run (or resume) the optimisation into the run folder ``out``.

    Writes ``run.json`` at the start and at every checkpoint, ``patch.png`` /
    ``patch.npy`` and ``checkpoint.pt`` at every checkpoint and at the end. A NaN
    stops the run with status ``diverged`` and the last good patch written, then
    raises :class:`OptimizationDiverged`; Ctrl-C saves the state reached (status
    ``interrupted``) and re-raises ``KeyboardInterrupt``. A prepared run is run once:
    its feature hooks are removed from the source models on return.

    Under torchrun every rank calls this with the same arguments; every rank steps
    (and, on ``resume``, reads the checkpoint), rank 0 alone writes the folder.
    """
    try:
        # one writer per run folder (FolderInUse names the other's process), and a run that
        # fails for any reason (a full disk) is recorded as failed, never left 'running';
        # under torchrun that writer is rank 0 (the other ranks would meet its lock)
        main = prepared.attack.optimizer.dist.is_main
        with writing_folder(out, record=RUN_JSON, what="run folder") if main else contextlib.nullcontext():
            return _run(prepared, Path(out), resume=resume, on_step=on_step, command=command)
    finally:
        prepared.attack.close()  # the source models leave without hooks, whatever happened


def _start_state(prepared: PreparedRun, out: Path, resume: bool) -> tuple[LoopState, str, float]:
    """The loop state to start from (new, or the checkpoint's), the start time and the seconds already run."""
    cfg = prepared.config
    ck_path = out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if not resume:
        if not folder_is_empty(out):
            raise ConfigError(f"--out {out} exists and is not empty: choose a new folder, or --resume a stopped run")
        return prepared.attack.new_state(), now_iso(), 0.0
    if not ck_path.is_file():
        raise ConfigError(f"nothing to resume in {out}: no {CHECKPOINT} (start without --resume)")
    try:
        ckpt = torch.load(ck_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot read {ck_path}: {exc}") from exc
    _check_resume(ckpt, cfg, ck_path)
    state = prepared.attack.optimizer.load_state(ckpt)
    try:
        old = read_json_object(out / RUN_JSON, "run record")
    except ConfigError:
        old = {}
    return state, str(old.get("started") or now_iso()), float(old.get("seconds", 0.0))


def _run(
    prepared: PreparedRun,
    out: Path,
    *,
    resume: bool,
    on_step: Callable[[StepInfo], None] | None,
    command: Sequence[str] | None,
) -> RunResult:
    cfg = prepared.config
    dist = prepared.attack.optimizer.dist
    state, started, seconds_before = _start_state(prepared, out, resume)
    dist.barrier()  # every rank has checked --out before rank 0 writes into it
    writes = dist.is_main
    if writes:
        out.mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": out.resolve().name,
        "status": "running",
        "message": "",
        **prepared.record,
        "command": list(command) if command is not None else list(sys.argv),
        "versions": versions(),
        "started": started,
        "finished": None,
        "seconds": seconds_before,
        "history": state.history,
        "step": state.step,
    }
    t0 = time.perf_counter()

    def save(status: str, message: str = "", with_checkpoint: bool = True) -> None:
        record.update(
            status=status,
            message=message,
            history=state.history,
            step=state.step,
            seconds=round(seconds_before + time.perf_counter() - t0, 3),
        )
        if status != "running":
            record["finished"] = now_iso()
        if not writes:
            return
        write_patch(out, state.patch)
        if with_checkpoint:
            atomic_torch_save(state.checkpoint(cfg), out / CHECKPOINT)
        atomic_write_json(out / RUN_JSON, record)

    if dist.active:
        record["world_size"] = dist.world
    if writes:
        atomic_write_json(out / RUN_JSON, record)
    clean = {"at": state.step}

    def checkpoint(s: LoopState) -> None:
        clean["at"] = s.step
        save("running")

    try:
        prepared.attack.optimizer.run(state, cfg.steps, on_step=on_step, on_checkpoint=checkpoint)
    except OptimizationDiverged as exc:
        msg = (
            f"{exc}; stopped and kept the last good patch (step {state.step}) in {out}. "
            "Lower --lr, or check the models and data."
        )
        save("diverged", msg, with_checkpoint=False)
        raise OptimizationDiverged(msg) from None
    except KeyboardInterrupt:
        # between steps the state is whole and is checkpointed; a step cut short may
        # leave the optimiser half-updated, so the last checkpoint stays the resume point
        whole = not state.busy
        at = state.step if whole else clean["at"]
        save(
            "interrupted",
            f"interrupted at step {state.step}; continue with --resume (from step {at})",
            with_checkpoint=whole,
        )
        raise
    save("finished")
    result = prepared.attack.result(state, record["seconds"])
    return RunResult(
        run_dir=str(out),
        status="finished",
        steps=state.step,
        final_tsuc=result.final_tsuc,
        seconds=record["seconds"],
        result=result,
    )


__all__ = ["PreparedRun", "RunResult", "prepare_run", "prepare_stream_run", "run_optimization"]
