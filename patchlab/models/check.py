"""Clean accuracy of a wrapped model on an image set."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..data import ImageSet, match_labels
from .wrapper import WrappedModel


@dataclass(frozen=True)
class AccuracyResult:
    name: str
    accuracy: float
    n: int
    correct: int
    per_class: dict[str, float]
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def predict(
    model: WrappedModel,
    images: ImageSet,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Top-1 predictions (model label indices) for every image, in order."""
    out = []
    for x, _ in images.batches(batch_size, device):
        out.append(model(x).argmax(1).cpu())
        if progress is not None:
            progress(int(x.shape[0]))
    return torch.cat(out)


def check_accuracy(
    model: WrappedModel,
    images: ImageSet,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> AccuracyResult:
    """Top-1 accuracy with classes matched by name (a clear error if they do not match)."""
    if not images.classes:
        from ..errors import DataError

        raise DataError(f"{images.root} has no class sub-folders: accuracy needs an ImageFolder tree")
    mapping = match_labels(images.classes, model.labels, model_name=model.name)
    t0 = time.perf_counter()
    pred = predict(model, images, batch_size=batch_size, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    truth = mapping[images.labels]
    hit = pred == truth
    per_class = {}
    for ci, cname in enumerate(images.classes):
        m = images.labels == ci
        if m.any():
            per_class[cname] = float(hit[m].float().mean())
    return AccuracyResult(
        name=model.name,
        accuracy=float(hit.float().mean()),
        n=int(hit.numel()),
        correct=int(hit.sum()),
        per_class=per_class,
        seconds=round(seconds, 3),
    )
