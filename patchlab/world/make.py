"""Write the procedural sign world to disk: an ImageFolder tree plus road-side scenes.

A world folder (``patchlab world make --out WORLD``)::

    world.json                 what made it (config, fingerprint, classes, counts, versions);
                               written last: a folder without it is not a world
    train/<class>/<class>-NNNNN.png    classification pictures, size x size RGB
    val/<class>/<class>-NNNNN.png      held-out pictures (``patchlab models check --data WORLD/val``)
    scenes/<class>/<class>-NNN.png     640 x 480 road-side frames, one sign each
    scenes/scenes.json         per frame: file, class, sign quad, box, roi, patch_box (pixels)

Picture ``i`` of class ``c`` in split ``s`` is drawn from its own generator, seeded by
``(seed, s, crc32(c), i)``: the bytes depend only on those and the generator version,
not on how many pictures, workers or classes there are. The folder is built beside
``out`` and renamed into place at the end, so an interrupted run never leaves half a
world under ``out``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, DataError
from ..utils import atomic_write_json, read_json_object, user_cache_dir, versions

log = logging.getLogger(__name__)

#: Bump when a change to the drawing code changes any pixel: it is part of the
#: fingerprint, so caches keyed by it are rebuilt.
WORLD_VERSION = 1
WORLD_JSON = "world.json"
SCENES_JSON = "scenes.json"
WORLD_FORMAT = "patchlab-world"
SPLITS = ("train", "val")

#: ``progress(task, total)`` starts a task and returns ``advance(n)``.
ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True)
class WorldConfig:
    """Everything that decides a world's pixels.

    Args:
        n_per_class: pictures per class, train and val together.
        size: side of the classification pictures, pixels.
        seed: the world's seed.
        val_frac: fraction of each class held out in ``val/``.
        scenes_per_class: road-side frames per class.
        scene_size: ``(width, height)`` of the frames.
    """

    n_per_class: int = 500
    size: int = 64
    seed: int = 0
    val_frac: float = 0.2
    scenes_per_class: int = 4
    scene_size: tuple[int, int] = (640, 480)
    version: int = WORLD_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.n_per_class, int) or self.n_per_class < 2:
            raise ConfigError(
                f"--n-per-class must be an integer >= 2 (one train and one val picture), got {self.n_per_class!r}"
            )
        if not isinstance(self.size, int) or not 16 <= self.size <= 512:
            raise ConfigError(f"--size must be an integer between 16 and 512 pixels, got {self.size!r}")
        if not 0.0 < self.val_frac < 1.0:
            raise ConfigError(f"--val-frac must be in (0, 1), got {self.val_frac}")
        if not isinstance(self.scenes_per_class, int) or self.scenes_per_class < 0:
            raise ConfigError(f"--scenes-per-class must be an integer >= 0, got {self.scenes_per_class!r}")
        w, h = self.scene_size
        if w < 160 or h < 120:
            raise ConfigError(f"scene size must be at least 160 x 120, got {w} x {h}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed!r}")

    @property
    def n_val(self) -> int:
        return min(self.n_per_class - 1, max(1, int(round(self.val_frac * self.n_per_class))))

    @property
    def n_train(self) -> int:
        return self.n_per_class - self.n_val

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scene_size"] = list(self.scene_size)
        return d

    def fingerprint(self) -> str:
        """A short hash of the config: equal fingerprints, equal pixels."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class WorldInfo:
    """A world on disk (what :func:`make_world`, :func:`read_world` and :func:`ensure_world` return)."""

    root: Path
    config: WorldConfig
    classes: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def val(self) -> Path:
        return self.root / "val"

    @property
    def scenes(self) -> Path:
        return self.root / "scenes"

    @property
    def fingerprint(self) -> str:
        return self.config.fingerprint()

    @property
    def images_per_second(self) -> float:
        n = sum(self.counts.values())
        return n / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "config": self.config.to_dict(),
            "fingerprint": self.fingerprint,
            "classes": list(self.classes),
            "counts": dict(self.counts),
            "seconds": self.seconds,
            "images_per_second": round(self.images_per_second, 1),
            "cached": self.cached,
        }


# ------------------------------------------------------------------ workers
def _draw_chunk(task: tuple) -> list[dict]:
    from ._draw import draw_chunk

    return draw_chunk(task)


def _tasks(root: Path, cfg: WorldConfig, classes: list[str], chunk: int) -> list[tuple]:
    out = []
    plan = {"train": cfg.n_train, "val": cfg.n_val, "scenes": cfg.scenes_per_class}
    for split, n in plan.items():
        step = chunk if split != "scenes" else max(1, chunk // 16)
        for cls in classes:
            for s in range(0, n, step):
                out.append((str(root), split, cls, s, min(n, s + step), cfg.seed, cfg.size, tuple(cfg.scene_size)))
    return out


def _task_weight(task: tuple) -> int:
    return (task[4] - task[3]) * (16 if task[1] == "scenes" else 1)


# ------------------------------------------------------------------ folders
def _prepare_out(out: Path, force: bool) -> None:
    """Refuse to replace anything but an empty folder or (with ``force``) a world."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    entries = [p for p in out.iterdir()]
    if not entries:
        return
    if not (out / WORLD_JSON).is_file():
        raise ConfigError(
            f"--out {out} exists, is not empty and is not a patchlab world: refusing to replace "
            "it; choose a new or empty folder"
        )
    if not force:
        raise ConfigError(f"--out {out} already holds a world; pass --overwrite (or --force) to replace it")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process
        return True
    return True


def _clean_stale_partials(out: Path) -> None:
    """Remove half-built siblings of ``out`` left by runs that were killed."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ API
def make_world(
    out: str | os.PathLike,
    n_per_class: int = 500,
    size: int = 64,
    seed: int = 0,
    *,
    val_frac: float = 0.2,
    scenes_per_class: int = 4,
    scene_size: tuple[int, int] = (640, 480),
    force: bool = False,
    workers: int | None = None,
    progress: ProgressFactory | None = None,
) -> WorldInfo:
    """Draw a procedural traffic-sign world into ``out`` (layout in the module docstring).

    Args:
        out: the world folder; must not exist, be empty, or (with ``force``) hold a world.
        n_per_class: pictures per class, train + val.
        size: side of the classification pictures in pixels.
        seed: the seed; same seed and config give the same bytes.
        val_frac: fraction of each class in ``val/``.
        scenes_per_class: road-side frames per class (``scenes/``).
        scene_size: ``(width, height)`` of the frames.
        force: replace an existing world at ``out``.
        workers: processes drawing in parallel (default: one per CPU core, at most 8;
            1 draws in this process). The pixels do not depend on it.
        progress: ``progress(task, total) -> advance`` for a progress display.

    Raises:
        ConfigError: a bad option or an ``out`` that may not be replaced.
    """
    from . import signs

    cfg = WorldConfig(
        n_per_class=n_per_class,
        size=size,
        seed=seed,
        val_frac=val_frac,
        scenes_per_class=scenes_per_class,
        scene_size=tuple(scene_size),
    )
    out = Path(out).expanduser()
    _prepare_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_partials(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    classes = signs.sign_classes()
    n_workers = max(1, min(8, os.cpu_count() or 1) if workers is None else int(workers))
    t0 = time.perf_counter()
    try:
        tasks = _tasks(tmp, cfg, classes, chunk=64)
        total = sum(_task_weight(t) for t in tasks)
        advance = progress("drawing the world", total) if progress else None
        scenes: list[dict] = []
        if n_workers == 1:
            results = map(_draw_chunk, tasks)
            for task, meta in zip(tasks, results):
                scenes.extend(meta)
                if advance:
                    advance(_task_weight(task))
        else:
            import multiprocessing as mp

            from ._draw import draw_chunk

            # spawn, not fork: the parent may hold torch/OpenMP threads; the workers
            # import only numpy and OpenCV
            with ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn")) as pool:
                for task, meta in zip(tasks, pool.map(draw_chunk, tasks)):
                    scenes.extend(meta)
                    if advance:
                        advance(_task_weight(task))
        scenes.sort(key=lambda m: m["file"])
        counts = {
            "train": cfg.n_train * len(classes),
            "val": cfg.n_val * len(classes),
            "scenes": cfg.scenes_per_class * len(classes),
        }
        if cfg.scenes_per_class:
            atomic_write_json(
                tmp / "scenes" / SCENES_JSON,
                {
                    "size": list(cfg.scene_size),
                    "about": "pixel coordinates, origin top-left; quad = sign corners TL, TR, BR, BL; "
                    "box/roi/patch_box = [x0, y0, x1, y1]",
                    "frames": scenes,
                },
            )
        seconds = round(time.perf_counter() - t0, 3)
        atomic_write_json(
            tmp / WORLD_JSON,
            {
                "format": WORLD_FORMAT,
                "version": WORLD_VERSION,
                "fingerprint": cfg.fingerprint(),
                "config": cfg.to_dict(),
                "classes": classes,
                "splits": {"train": cfg.n_train, "val": cfg.n_val, "scenes": cfg.scenes_per_class},
                "counts": counts,
                "seconds": seconds,
                "versions": versions(("cv2", "numpy")),
            },
        )
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = WorldInfo(root=out, config=cfg, classes=tuple(classes), counts=counts, seconds=seconds)
    log.info("world %s: %d pictures in %.1f s (%.0f/s)", out, sum(counts.values()), seconds, info.images_per_second)
    return info


def read_world(root: str | os.PathLike, *, verify: bool = True) -> WorldInfo:
    """Open a world folder made by :func:`make_world`.

    Args:
        root: the folder.
        verify: also check every class folder holds the number of pictures the
            manifest promises (cheap: file names, not pixels).

    Raises:
        DataError: ``root`` is not a (complete) world.
    """
    root = Path(root).expanduser()
    wj = root / WORLD_JSON
    if not root.is_dir():
        raise DataError(f"world folder not found: {root} (make one with `patchlab world make --out {root}`)")
    if not wj.is_file():
        raise DataError(
            f"{root} is not a patchlab world (no {WORLD_JSON}); make one with `patchlab world make --out DIR`"
        )
    try:
        meta = read_json_object(wj, "world manifest", error=DataError)
    except DataError as exc:
        raise DataError(
            f"{wj} is not a valid world manifest ({str(exc).split(': ', 1)[-1]}); remake the world"
        ) from exc
    try:
        cfg_d = dict(meta["config"])
        cfg_d["scene_size"] = tuple(cfg_d["scene_size"])
        cfg = WorldConfig(**cfg_d)
        classes = list(meta["classes"])
        splits = dict(meta["splits"])
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise DataError(f"{wj} is not a valid world manifest ({exc}); remake the world") from exc
    if meta.get("format") != WORLD_FORMAT:
        raise DataError(f"{wj} is not a patchlab world manifest (format {meta.get('format')!r})")
    if verify:
        for split in (*SPLITS, "scenes"):
            want = int(splits.get(split, 0))
            if split == "scenes" and want == 0:
                continue
            for cls in classes:
                d = root / split / cls
                got = len(list(d.glob("*.png"))) if d.is_dir() else 0
                if got != want:
                    raise DataError(
                        f"world {root} is incomplete: {split}/{cls} holds {got} pictures, "
                        f"the manifest says {want}; remake it with --overwrite"
                    )
        if splits.get("scenes") and not (root / "scenes" / SCENES_JSON).is_file():
            raise DataError(f"world {root} is incomplete: scenes/{SCENES_JSON} is missing")
    return WorldInfo(
        root=root,
        config=cfg,
        classes=tuple(classes),
        counts=dict(meta.get("counts", {})),
        seconds=float(meta.get("seconds", 0.0)),
    )


def world_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`ensure_world` keeps worlds: ``<cache>/worlds`` (``$PATCHLAB_CACHE`` overrides the cache)."""
    return (Path(cache_dir).expanduser() if cache_dir else user_cache_dir()) / "worlds"


def ensure_world(
    n_per_class: int = 500,
    size: int = 64,
    seed: int = 0,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: ProgressFactory | None = None,
    **config: Any,
) -> WorldInfo:
    """The world of this config from the cache, drawing it first if it is missing or incomplete.

    The cache entry is ``<cache>/worlds/world-<fingerprint>``; ``config`` takes the
    other :class:`WorldConfig` fields. Returns ``cached=True`` when nothing was drawn.
    """
    cfg = WorldConfig(n_per_class=n_per_class, size=size, seed=seed, **config)
    root = world_cache_dir(cache_dir) / f"world-{cfg.fingerprint()}"
    if (root / WORLD_JSON).is_file():
        try:
            info = read_world(root)
            if info.config == cfg:
                return WorldInfo(
                    root=info.root,
                    config=info.config,
                    classes=info.classes,
                    counts=info.counts,
                    seconds=info.seconds,
                    cached=True,
                )
        except DataError as exc:
            log.warning("rebuilding the cached world: %s", exc)
    if root.exists():  # our own cache entry, incomplete or stale: rebuild it
        shutil.rmtree(root)
    return make_world(
        root,
        cfg.n_per_class,
        cfg.size,
        cfg.seed,
        val_frac=cfg.val_frac,
        scenes_per_class=cfg.scenes_per_class,
        scene_size=cfg.scene_size,
        force=True,
        workers=workers,
        progress=progress,
    )
