"""The data an attack takes, whatever form it comes in: one interface to draw batches from.

An attack's ``images`` may be

* a float or uint8 tensor ``(N, 3, H, W)`` (unlabelled: the first model's clean
  predictions stand in for labels where labels are needed),
* a pair ``(images, labels)`` of tensors (labels are the models' output indices),
* a :class:`patchlab.data.ImageSet` (its class names are matched to the models' labels),
* any iterable of ``(images, labels)`` batches, such as a torch ``DataLoader``; when its
  dataset has ``classes`` (torchvision's ``ImageFolder``) they are matched by name.

In-memory data is drawn at random (seeded by the run's generator); an iterable is
streamed, cycled when it ends, and never held in memory as a whole, so folders of
ImageNet size work.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import torch
import torch.utils.data

from .data import ImageSet, match_labels
from .errors import DataError


def _check_batch(x: Any, what: str = "images") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"expected {what} as a (N, 3, H, W) tensor (float in [0, 1] or uint8), got {got}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise DataError(f"expected {what} as float in [0, 1] or uint8, got dtype {x.dtype}")
    return x


def _split_batch(item: Any, label_map: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A stream's item as ``(images, labels or None)``, the labels through ``label_map``."""
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        x, y = _check_batch(item[0]), torch.as_tensor(item[1], dtype=torch.long).reshape(-1)
        return x, (label_map[y] if label_map is not None else y)
    return _check_batch(item), None


def to_float(x: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 or float images -> float32 in [0, 1] on ``device``."""
    x = x.to(device) if device is not None else x
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


class ImageSource(Protocol):
    """Where an attack draws its batches from."""

    image_hw: tuple[int, int]

    def draw(
        self,
        n: int,
        generator: torch.Generator,
        device: torch.device | str,
        *,
        rows: slice | None = None,
        step: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` images as float ``(n, 3, H, W)`` on ``device`` and their labels (or ``None``).

        ``rows``: only those rows of the ``n`` drawn (a data-parallel rank's share); the
        generator advances as for all ``n``, so every rank stays in step.
        ``step``: the optimiser step this batch is for; a stream that is not at that
        step yet (a resumed run) moves there first, so a resume sees the same images.
        """
        ...


class TensorSource:
    """Images in memory (uint8 kept as uint8), drawn uniformly at random with replacement.

    Args:
        images: ``(N, 3, H, W)`` uint8 or float in [0, 1].
        labels: ``(N,)`` output indices of the first model, or ``None``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        self.images = _check_batch(images)
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            if labels.shape[0] != images.shape[0]:
                raise DataError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.labels = labels
        self.image_hw = (int(images.shape[-2]), int(images.shape[-1]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def where(self, keep: torch.Tensor) -> "TensorSource":
        """The images where the boolean mask ``keep`` holds."""
        return TensorSource(self.images[keep], None if self.labels is None else self.labels[keep])

    def draw(
        self,
        n: int,
        generator: torch.Generator,
        device: torch.device | str,
        *,
        rows: slice | None = None,
        step: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        del step  # the run's generator state is the position: a resume restores it
        if len(self) == 0:
            raise DataError("no images to draw from")
        idx = torch.randint(0, len(self), (n,), generator=generator)
        if rows is not None:  # a rank's share of the global draw: only these rows are decoded and moved
            idx = idx[rows]
        dev = torch.device(device)
        x = self.images[idx]
        if dev.type == "cuda":  # an asynchronous copy from pinned memory; the step does not wait for it
            x = x.pin_memory().to(dev, non_blocking=True)
        y = None if self.labels is None else self.labels[idx].to(dev, non_blocking=dev.type == "cuda")
        return to_float(x, dev), y


class StreamSource:
    """Batches streamed from an iterable (a ``DataLoader``), regrouped to the asked size.

    Args:
        batches: an iterable of ``(images, labels)`` (or bare images) batches; iterated
            again from the start when it ends.
        label_map: maps the iterable's labels to the first model's output indices.
        keep: ``labels -> bool mask`` of the images to use (e.g. not the target class).
    """

    def __init__(
        self,
        batches: Iterable[Any],
        *,
        label_map: torch.Tensor | None = None,
        keep: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.batches = batches
        self.label_map = label_map
        self.keep = keep
        self._it: Iterator[Any] | None = None
        self._buf: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._drawn = 0  # draws made: the step the stream stands at
        first = self._next_raw(first=True)
        self._buf.append(first)
        self.image_hw = (int(first[0].shape[-2]), int(first[0].shape[-1]))

    def _next_raw(self, first: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        for _attempt in range(2):
            if self._it is None:
                self._it = iter(self.batches)
            for item in self._it:
                x, y = _split_batch(item, self.label_map)
                if self.keep is not None and y is not None:
                    m = self.keep(y)
                    x, y = x[m], y[m]
                if x.shape[0]:
                    return x, y
            self._it = None  # ended: start again (cycle), once per call
            self._epoch = getattr(self, "_epoch", 0) + 1
            sampler: Any = getattr(self.batches, "sampler", None)
            if hasattr(sampler, "set_epoch"):  # a DistributedSampler: a new shuffle each pass
                sampler.set_epoch(self._epoch)
        raise DataError("the data stream yields no usable images" + (" (is it empty?)" if first else ""))

    def draw(
        self,
        n: int,
        generator: torch.Generator,
        device: torch.device | str,
        *,
        rows: slice | None = None,
        step: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        del generator  # the stream's own order (a DataLoader's shuffle) is the randomness
        if rows is not None:  # the stream yields this rank's rows only (a StepBatchSampler or a DistributedSampler)
            n = len(range(*rows.indices(n)))
        if step is not None and step != self._drawn:
            self.seek(step, n)
        self._drawn += 1
        xs, ys = self._take(n)
        dev = torch.device(device)
        x = xs[:n]
        nb = dev.type == "cuda"
        if nb and not x.is_pinned():
            x = x.pin_memory()  # an asynchronous copy: the step does not wait for it
        return to_float(x.to(dev, non_blocking=nb), dev), None if ys is None else ys[:n].to(dev)

    def seek(self, step: int, n: int) -> None:
        """Move the stream to where it stood before draw number ``step`` (of ``n`` images each).

        A :class:`StepBatchSampler` stream jumps there (its batch for ``step`` is a function
        of the step), on any number of processes. Any other stream is replayed from here:
        exact when the iterable repeats itself from a fresh start (a seeded sampler),
        and it decodes the skipped batches once. A stream never goes back: asked for an
        earlier step, it carries on from where it is.
        """
        bs = getattr(self.batches, "batch_sampler", None)
        if isinstance(bs, StepBatchSampler) and self._keeps_all():
            bs.start_step = step
            self._it, self._buf, self._drawn = None, [], step
            return
        if step < self._drawn:  # a stream cannot go back: it carries on (a new run on the same stream)
            self._drawn = step
        while self._drawn < step:
            self._take(n)
            self._drawn += 1

    def _keeps_all(self) -> bool:
        """Whether ``keep`` passes every item of the loader's dataset: then each draw is exactly
        one batch of the loader and a jump lands where the uninterrupted stream stands."""
        if self.keep is None:
            return True
        items = getattr(getattr(self.batches, "dataset", None), "items", None)
        if not items:
            return False
        y = torch.tensor([int(c) for _p, c in items], dtype=torch.long)
        return bool(self.keep(y if self.label_map is None else self.label_map[y]).all())

    def _take(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next ``n`` images (and labels) of the stream, on the CPU; the rest stays buffered."""
        have = sum(int(b[0].shape[0]) for b in self._buf)
        while have < n:
            self._buf.append(self._next_raw())
            have += int(self._buf[-1][0].shape[0])
        raw = [b[0] for b in self._buf]
        # uint8 batches stay uint8 until they are on the device (a quarter of the bytes to copy)
        xs = torch.cat(raw) if all(r.dtype == torch.uint8 for r in raw) else torch.cat([to_float(r) for r in raw])
        ys = None if any(b[1] is None for b in self._buf) else torch.cat([b[1] for b in self._buf])  # type: ignore[misc]
        self._buf = [(xs[n:], None if ys is None else ys[n:])] if xs.shape[0] > n else []
        return xs[:n], None if ys is None else ys[:n]


class FolderDataset(torch.utils.data.Dataset):
    """Image files decoded on demand (in DataLoader workers): ``(uint8 (3, H, W), label)`` items."""

    def __init__(self, items: Sequence[tuple[Any, int]], classes: Sequence[str] = ()):
        self.items = [(str(p), int(c)) for p, c in items]
        self.classes = list(classes)  # matched to the models' labels by name (as_source)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from .data import read_image

        path, label = self.items[i]
        return (read_image(path) * 255.0).round_().to(torch.uint8), label


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """An endless seeded shuffle cut into global batches; each process yields its rows of each.

    The stream is the concatenation of permutations of the ``n`` items, epoch ``e``
    shuffled by ``torch.randperm(n)`` seeded ``seed + e``; global batch ``s`` is positions
    ``[s * batch_size, (s + 1) * batch_size)`` of it, and this process yields the
    ``rows`` of that batch (all of them in one process). So the images of step ``s`` are
    a function of ``s`` alone, the same on one process or many: a resume sets
    ``start_step`` and the stream carries on exactly, on any number of processes.

    Args:
        n: number of items.
        batch_size: the global batch.
        seed: the shuffle's seed.
        rows: this process's rows of each global batch (``None``: all).
        start_step: the first global batch to yield.
    """

    def __init__(
        self, n: int, batch_size: int, *, seed: int = 0, rows: slice | None = None, start_step: int = 0
    ) -> None:
        if n < 1 or batch_size < 1:
            raise DataError(f"a batch sampler needs items and a batch size >= 1, got {n} items, batch {batch_size}")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.rows = range(*(rows or slice(None)).indices(self.batch_size))
        self.start_step = int(start_step)

    def permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self) -> Iterator[list[int]]:
        perms: dict[int, torch.Tensor] = {}
        step = self.start_step
        while True:
            batch = []
            for r in self.rows:
                epoch, i = divmod(step * self.batch_size + r, self.n)
                if epoch not in perms:
                    perms = {e: p for e, p in perms.items() if e >= epoch - 1}
                    perms[epoch] = self.permutation(epoch)
                batch.append(int(perms[epoch][i]))
            yield batch
            step += 1


def folder_loader(
    items: Sequence[tuple[Any, int]],
    *,
    classes: Sequence[str] = (),
    batch_size: int,
    workers: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    rows: slice | None = None,
    start_step: int = 0,
    prefetch: int = 4,
) -> torch.utils.data.DataLoader:
    """An endless, seeded, resumable DataLoader over image files, decoded in ``workers`` processes.

    ``batch_size`` is the global batch; under torchrun each process passes its ``rows``
    of it and decodes only those (:class:`StepBatchSampler`: the images of every step
    are the same on any number of processes, and a resume picks up at its step).
    Pinned memory on CUDA (asynchronous copies) and ``prefetch`` batches per worker
    ready ahead of the step. Only the batches in flight are ever in memory.
    """
    from torch.utils.data import DataLoader

    ds = FolderDataset(items, classes)
    sampler = StepBatchSampler(len(ds), batch_size, seed=seed, rows=rows, start_step=start_step)
    kw: dict[str, Any] = {}
    if workers > 0:
        kw = dict(prefetch_factor=prefetch, persistent_workers=True)
    return DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        **kw,
    )


def data_classes(data: Any) -> list[str] | None:
    """The class names a data object carries (an ImageSet's, a DataLoader's dataset's), if any."""
    if isinstance(data, ImageSet):
        return list(data.classes) or None
    ds = getattr(data, "dataset", None)
    classes = getattr(ds, "classes", None) if ds is not None else getattr(data, "classes", None)
    return list(classes) if classes else None


def as_source(
    data: Any,
    model_labels: Sequence[str],
    *,
    model_name: str = "model",
    keep: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[TensorSource | StreamSource, list[str] | None]:
    """Any accepted data form -> an image source with labels in the model's output indices.

    Args:
        data: see the module docstring.
        model_labels: the (first) model's class names.
        model_name: for messages.
        keep: ``labels -> bool mask`` of the images to use (where labels are known).

    Returns the source and the data's own class names (``None`` when it has none).
    """

    def kept(src: TensorSource) -> TensorSource:
        return src.where(keep(src.labels)) if keep is not None and src.labels is not None else src

    if isinstance(data, ImageSet):
        if len(data) == 0:
            raise DataError("the image set is empty")
        labels = None
        if data.classes:
            labels = match_labels(data.classes, model_labels, model_name=model_name)[data.labels]
        return kept(TensorSource(data.images, labels)), list(data.classes) or None
    if isinstance(data, torch.Tensor):
        return TensorSource(data), None
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return kept(TensorSource(data[0], data[1])), None
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise DataError(
            f"expected images as a tensor, an (images, labels) pair, an ImageSet or an iterable of "
            f"(images, labels) batches such as a DataLoader, got {type(data).__name__}"
        )
    classes = data_classes(data)
    label_map = match_labels(classes, model_labels, model_name=model_name) if classes else None
    return StreamSource(data, label_map=label_map, keep=keep), classes


def collect(
    data: Iterable[Any],
    *,
    keep: Callable[[torch.Tensor], torch.Tensor] | None = None,
    label_map: torch.Tensor | None = None,
    limit: int | None = None,
) -> torch.Tensor:
    """One pass over a stream, keeping the images whose labels pass ``keep`` (at most ``limit``).

    An endless :class:`StepBatchSampler` stream is read for one epoch's worth of batches."""
    out: list[torch.Tensor] = []
    n = 0
    bs = getattr(data, "batch_sampler", None)
    batches = -(-bs.n // len(bs.rows)) if isinstance(bs, StepBatchSampler) and len(bs.rows) else None
    for b, item in enumerate(data):
        if batches is not None and b >= batches:
            break
        x, y = _split_batch(item, label_map)
        if keep is not None and y is not None:
            x = x[keep(y)]
        if x.shape[0]:
            out.append(x if x.dtype == torch.uint8 else x.float())
            n += int(x.shape[0])
        if limit is not None and n >= limit:
            break
    if not out:
        raise DataError("the data stream holds no image of the asked class")
    # uint8 stays uint8 (a quarter of the memory); a stream that mixes kinds becomes float in [0, 1]
    x = torch.cat(out) if all(o.dtype == torch.uint8 for o in out) else torch.cat([to_float(o) for o in out])
    return x[:limit] if limit is not None else x


__all__ = [
    "FolderDataset",
    "ImageSource",
    "folder_loader",
    "StepBatchSampler",
    "StreamSource",
    "TensorSource",
    "as_source",
    "collect",
    "data_classes",
    "to_float",
]
