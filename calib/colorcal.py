"""Colour calibration from one chart photo: read, split, fit, score (CIEDE2000), palette."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from patchlab.color import srgb_delta_e
from patchlab.errors import ConfigError
from patchlab.layout import Layout

from .chart import ChartReading, read_chart
from .color import DEFAULT_KNOTS, ColorTransform, fit_color_transform, predict

#: Default fraction of swatches held out to score the fit.
DEFAULT_HOLDOUT = 0.25
_CATEGORIES = ("grey", "skin", "cube", "rand")


def _category(name: str) -> str:
    head = name.split("_")[0]
    return head if head in _CATEGORIES else "saturated"


def holdout_split(
    names: list[str], intended: np.ndarray, *, frac: float = DEFAULT_HOLDOUT, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded held-out split, stratified by swatch kind (grey, saturated, skin, cube,
    random); the darkest and lightest greys always train (they anchor the tone range).

    Returns:
        ``(train indices, test indices)``.
    """
    if not 0.0 < frac < 1.0:
        raise ConfigError(f"--holdout must be in (0, 1), got {frac}")
    n = len(names)
    rng = np.random.default_rng(seed)
    lum = np.asarray(intended, np.float64).sum(1)
    anchors = {int(np.argmin(lum)), int(np.argmax(lum))}
    test: list[int] = []
    for cat in sorted({_category(s) for s in names}):
        idx = [i for i in range(n) if _category(names[i]) == cat and i not in anchors]
        rng.shuffle(idx)
        test += idx[: int(round(frac * len(idx)))]
    test_a = np.array(sorted(test), int)
    train_a = np.array(sorted(set(range(n)) - set(test)), int)
    if len(test_a) < 3 or len(train_a) < 8:
        raise ConfigError(
            f"{n} swatches leave {len(train_a)} to fit and {len(test_a)} to score: print the full chart "
            "(`patchlab print chart`) or change --holdout"
        )
    return train_a, test_a


def _de(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return srgb_delta_e(torch.as_tensor(a / 255.0), torch.as_tensor(b / 255.0), dim=-1).numpy()


def _stats(de: np.ndarray) -> dict:
    return {"n": int(de.size), "mean": float(de.mean()), "median": float(np.median(de)), "max": float(de.max())}


@dataclass(frozen=True)
class ColorCalibration:
    """A fitted printer-to-camera transform and how well it predicts held-out swatches."""

    transform: ColorTransform
    reading: ChartReading
    train: np.ndarray
    test: np.ndarray
    predicted: np.ndarray  # (N, 3) sRGB 0-255 the transform predicts for every swatch
    de_before: np.ndarray  # (N,) CIEDE2000 intended vs observed ("no calibration")
    de_after: np.ndarray  # (N,) CIEDE2000 predicted vs observed
    knots: int
    holdout: float
    seed: int

    @property
    def heldout_before(self) -> dict:
        return _stats(self.de_before[self.test])

    @property
    def heldout_after(self) -> dict:
        return _stats(self.de_after[self.test])

    @property
    def improvement(self) -> float:
        """Held-out mean CIEDE2000 without calibration over the mean with it."""
        return float(self.de_before[self.test].mean() / max(self.de_after[self.test].mean(), 1e-9))

    @property
    def palette(self) -> np.ndarray:
        """Observed colours of every swatch, ``(N, 3)`` integers 0-255."""
        return np.clip(np.round(self.reading.observed), 0, 255).astype(int)

    def to_dict(self) -> dict:
        r = self.reading
        split = np.full(len(r.names), "train", dtype=object)
        split[self.test] = "test"
        return {
            "format": "patchlab.color/1",
            "transform": self.transform.to_dict(),
            "metrics": {
                "heldout": {"before": self.heldout_before, "after": self.heldout_after},
                "train": {"before": _stats(self.de_before[self.train]), "after": _stats(self.de_after[self.train])},
                "improvement": self.improvement,
                "units": "CIEDE2000; 'before' = no calibration (printed sRGB taken as what the camera sees)",
            },
            "fit": {
                "knots": self.knots,
                "holdout": self.holdout,
                "seed": self.seed,
                "n_train": int(self.train.size),
                "n_test": int(self.test.size),
            },
            "chart": r.to_dict(),
            "palette": self.palette.tolist(),
            "swatches": [
                {
                    "name": n,
                    "split": str(split[i]),
                    "intended": [int(v) for v in r.intended[i]],
                    "observed": [round(float(v), 2) for v in r.observed[i]],
                    "predicted": [round(float(v), 2) for v in self.predicted[i]],
                    "de_before": round(float(self.de_before[i]), 3),
                    "de_after": round(float(self.de_after[i]), 3),
                    "spread": round(float(r.spread[i]), 2),
                }
                for i, n in enumerate(r.names)
            ],
        }


def calibrate_color(
    image_rgb: np.ndarray,
    layout: Layout,
    *,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    knots: int = DEFAULT_KNOTS,
    flat_field: bool = True,
    source: str = "photo",
) -> ColorCalibration:
    """Read the chart in ``image_rgb``, fit the transform on the training swatches,
    score it on the held-out ones (see :mod:`patchlab.calib.color`)."""
    reading = read_chart(image_rgb, layout, flat_field=flat_field, source=source)
    train, test = holdout_split(reading.names, reading.intended, frac=holdout, seed=seed)
    transform = fit_color_transform(reading.intended[train], reading.observed[train], knots=knots)
    predicted = predict(transform, reading.intended)
    return ColorCalibration(
        transform=transform,
        reading=reading,
        train=train,
        test=test,
        predicted=predicted,
        de_before=_de(reading.intended, reading.observed),
        de_after=_de(predicted, reading.observed),
        knots=knots,
        holdout=holdout,
        seed=seed,
    )
