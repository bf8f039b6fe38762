"""Image data: ImageFolder trees and plain image folders, as ``[0, 1]`` RGB tensors.

Any image mode (grey, grey+alpha, RGBA, palette, 16-bit, 32-bit float) becomes
RGB float in ``[0, 1]``. Unreadable files are skipped with one warning that counts
them. Class names are matched to a model's labels by name. Splits are seeded and
stratified, so "optimise on one part, judge on another" is reproducible.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def pil_to_array(img: Image.Image) -> np.ndarray:
    """Any PIL image as an ``(H, W, 3)`` float32 array in ``[0, 1]``.

    16-bit and 32-bit integer greys are scaled by their range, float images are
    clipped, alpha is dropped (composited over white, as a printed sheet would be).
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
        a = np.repeat(a[..., None], 3, axis=2)
    elif mode == "I":
        a32 = np.asarray(img, dtype=np.int64)
        top = 65535.0 if a32.max(initial=0) > 255 else 255.0
        a = np.clip(a32.astype(np.float32) / top, 0.0, 1.0)
        a = np.repeat(a[..., None], 3, axis=2)
    elif mode == "F":
        a = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        a = np.repeat(a[..., None], 3, axis=2)
    else:
        if mode == "P":
            img = img.convert("RGBA")
        elif mode == "1":
            img = img.convert("L")
        if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(a)


def read_image(path: str | Path) -> torch.Tensor:
    """Read one image file as a ``(3, H, W)`` float32 tensor in ``[0, 1]``.

    Raises:
        DataError: the file cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img.load()
            arr = pil_to_array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _norm_name(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s.strip().lower())


@dataclass
class ImageSet:
    """Images in memory, uint8 ``(N, 3, H, W)``, with labels and provenance.

    ``labels[i]`` indexes ``classes`` (``-1`` for an unlabelled plain folder).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    paths: list[str]
    root: str
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def float(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Images (all, or ``idx``) as float in ``[0, 1]``."""
        x = self.images if idx is None else self.images[idx]
        return x.float().div_(255.0)

    def subset(self, idx: torch.Tensor | Sequence[int]) -> "ImageSet":
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        return ImageSet(
            self.images[idx_t],
            self.labels[idx_t],
            list(self.classes),
            [self.paths[i] for i in idx_t.tolist()],
            self.root,
            list(self.skipped),
        )

    def batches(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images float [0,1] on device, labels)`` in order."""
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        for s in range(0, len(self), batch_size):
            yield (
                self.images[s : s + batch_size].to(device).float().div_(255.0),
                self.labels[s : s + batch_size].to(device),
            )


def scan_folder(root: str | Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """List the images of a folder: an ImageFolder tree (one sub-folder per class)
    or a plain folder of images (label ``-1``, no classes)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs:
        classes = [d.name for d in subdirs]
        items = [(p, ci) for ci, d in enumerate(subdirs) for p in sorted(d.iterdir()) if is_image_file(p)]
    else:
        classes = []
        items = [(p, -1) for p in sorted(root.iterdir()) if is_image_file(p)]
    if not items:
        raise DataError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return items, classes


def limit_items(items: list[tuple[Path, int]], limit_per_class: int | None) -> list[tuple[Path, int]]:
    """Keep the first ``limit_per_class`` items of each class (sorted order: reproducible)."""
    if limit_per_class is None:
        return items
    if limit_per_class < 1:
        raise DataError(f"--limit-per-class must be >= 1, got {limit_per_class}")
    seen: dict[int, int] = {}
    kept = []
    for p, c in items:
        if seen.get(c, 0) < limit_per_class:
            kept.append((p, c))
            seen[c] = seen.get(c, 0) + 1
    return kept


def load_folder(
    root: str | Path,
    *,
    limit_per_class: int | None = None,
    size: int | tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImageSet:
    """Load an ImageFolder tree or plain image folder into memory.

    Args:
        root: the folder.
        limit_per_class: keep at most this many images per class (the first ones in
            sorted order, so the choice is reproducible).
        size: resize every image to this size (antialiased bilinear); when None all
            images must share one size.
        progress: called with the number of files handled since the last call.

    Unreadable files are skipped; one warning says how many.
    """
    items, classes = scan_folder(root)
    items = limit_items(items, limit_per_class)
    target = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
    imgs, labels, paths, skipped = [], [], [], []
    shape = None
    for i, (p, c) in enumerate(items):
        try:
            x = read_image(p)
        except DataError:
            skipped.append(str(p))
            x = None
        if x is not None:
            if target is not None and tuple(x.shape[-2:]) != target:
                x = F.interpolate(x[None], size=target, mode="bilinear", antialias=True, align_corners=False)[0].clamp_(
                    0, 1
                )
            if shape is None:
                shape = tuple(x.shape)
            elif tuple(x.shape) != shape:
                raise DataError(
                    f"images in {root} differ in size ({shape[1:]} vs {tuple(x.shape[1:])} at {p}); "
                    "resize them to one size first, or load them with load_folder(..., size=N)"
                )
            imgs.append((x * 255.0).round_().to(torch.uint8))
            labels.append(c)
            paths.append(str(p))
        if progress is not None and (i % 256 == 255 or i == len(items) - 1):
            progress(256 if i % 256 == 255 else (i % 256) + 1)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) in {root} (first: {skipped[0]})", stacklevel=2)
    if not imgs:
        raise DataError(f"none of the {len(items)} image files in {root} could be read")
    return ImageSet(torch.stack(imgs), torch.tensor(labels, dtype=torch.long), classes, paths, str(root), skipped)


def match_labels(classes: Sequence[str], model_labels: Sequence[str], *, model_name: str = "model") -> torch.Tensor:
    """Map data-set class indices to a model's output indices, by class name.

    Names match case-insensitively with spaces, ``_`` and ``-`` treated alike.
    Returns a ``LongTensor`` ``m`` with ``m[data_class] = model_index``.

    Raises:
        DataError: a data class has no label of that name in the model.
    """
    index = {_norm_name(l): i for i, l in enumerate(model_labels)}
    missing = [c for c in classes if _norm_name(c) not in index]
    if missing:
        shown = ", ".join(list(model_labels)[:12]) + (" ..." if len(model_labels) > 12 else "")
        raise DataError(
            f"data classes {missing[:6]}{' ...' if len(missing) > 6 else ''} are not labels of "
            f"{model_name} (its labels: {shown})"
        )
    return torch.tensor([index[_norm_name(c)] for c in classes], dtype=torch.long)


def class_index(name: str, labels: Sequence[str]) -> int:
    """Index of class ``name`` in ``labels`` (by name, as :func:`match_labels`), or a clear error."""
    norm = [_norm_name(l) for l in labels]
    key = _norm_name(name)
    if key in norm:
        return norm.index(key)
    if name.isdigit() and int(name) < len(labels):
        return int(name)
    raise DataError(f"unknown class {name!r}; classes: {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''}")


@dataclass(frozen=True)
class Split:
    """Indices of a seeded, stratified split."""

    train: list[int]
    holdout: list[int]
    seed: int
    holdout_frac: float

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "holdout_frac": self.holdout_frac,
            "n_train": len(self.train),
            "n_holdout": len(self.holdout),
            "train": self.train,
            "holdout": self.holdout,
        }


def split_indices(labels: torch.Tensor | Sequence[int], *, holdout_frac: float = 0.2, seed: int = 0) -> Split:
    """Seeded split, stratified by label: each class contributes ``holdout_frac`` of
    its images (rounded) to the holdout. Same labels + seed -> same split."""
    if not 0.0 <= holdout_frac < 1.0:
        raise DataError(f"holdout fraction must be in [0, 1), got {holdout_frac}")
    lab = torch.as_tensor(labels).tolist()
    rng = np.random.default_rng(seed)
    train: list[int] = []
    hold: list[int] = []
    for c in sorted(set(lab)):
        idx = np.array([i for i, l in enumerate(lab) if l == c])
        rng.shuffle(idx)
        k = int(round(holdout_frac * len(idx)))
        hold.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return Split(sorted(train), sorted(hold), seed, holdout_frac)


def paths_digest(paths: Sequence[str], root: str) -> str:
    """A digest of a data set's file list (paths relative to ``root``), to recognise it later."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(Path(p).relative_to(root)).encode() + b"\n")
    return h.hexdigest()[:16]
