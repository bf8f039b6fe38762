"""The world's drawing jobs: what a worker process runs (numpy and OpenCV only, no torch,
so spawned workers start fast)."""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

from . import signs

#: Stream codes of the three kinds of picture (part of every picture's seed).
SPLIT_CODE = {"train": 0, "val": 1, "scenes": 2}


def picture_rng(seed: int, split: str, cls: str, i: int) -> np.random.Generator:
    """The generator of picture ``i`` of class ``cls`` in ``split``: seeded by
    ``(seed, split code, crc32(cls), i)`` only."""
    return np.random.default_rng([seed, SPLIT_CODE[split], zlib.crc32(cls.encode()), i])


def crop_name(cls: str, i: int) -> str:
    return f"{cls}-{i:05d}.png"


def scene_name(cls: str, i: int) -> str:
    return f"{cls}-{i:03d}.png"


def write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:  # pragma: no cover - encoding a uint8 array does not fail
        raise OSError(f"cannot encode {path}")
    path.write_bytes(buf.tobytes())


def draw_chunk(task: tuple) -> list[dict]:
    """Draw and write pictures ``start..stop`` of one class in one split (one job).

    ``task`` is ``(root, split, cls, start, stop, seed, size, scene_size)``; returns
    the scene records (empty for train/val).
    """
    cv2.setNumThreads(1)  # one process per core already
    root, split, cls, start, stop, seed, size, scene_size = task
    folder = Path(root) / split / cls
    folder.mkdir(parents=True, exist_ok=True)
    meta = []
    for i in range(start, stop):
        rng = picture_rng(seed, split, cls, i)
        if split == "scenes":
            sc = signs.road_scene(cls, rng, *scene_size)
            write_png(folder / scene_name(cls, i), sc.image)
            meta.append({"file": f"{cls}/{scene_name(cls, i)}", "class": cls, **sc.to_dict()})
        else:
            write_png(folder / crop_name(cls, i), signs.sign_crop(cls, size, rng))
    return meta
