"""Small statistics shared by every judge: success rates with confidence intervals."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

#: two-sided 95% normal quantile
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    E. B. Wilson, "Probable inference, the law of succession, and statistical
    inference", JASA 22 (1927). Unlike the normal approximation it stays inside
    [0, 1] and behaves at 0 and n successes. ``n == 0`` gives ``(0.0, 1.0)``.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"expected 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """A success rate with its Wilson 95% interval."""

    successes: int
    n: int

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rate"] = self.value
        d["ci95"] = list(self.ci95)
        return d


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired binary outcomes (two-sided binomial test of the discordant pairs).

    Returns ``(a_only, b_only, p)``: the pairs where only ``a`` succeeded, only ``b``, and the
    p-value of "both succeed equally often".
    """
    from scipy.stats import binomtest

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)
    return a_only, b_only, p


def paired_bootstrap(
    diff: np.ndarray, strata: np.ndarray | None = None, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, tuple[float, float]]:
    """Mean of paired differences with a percentile bootstrap interval.

    Args:
        diff: ``(k, n)`` per-item differences (``a - b``) of ``k`` statistics over ``n`` paired items
            (a 1-D array is one statistic).
        strata: ``(n,)`` group of each item (e.g. which seed's held-out split it came from);
            items are resampled within their group, so every group keeps its size.
        n_boot, seed: bootstrap draws and their seed.
        level: the interval's coverage.

    Returns ``(mean difference, (lo, hi))`` per statistic (arrays when ``diff`` is 2-D).
    """
    d = np.atleast_2d(np.asarray(diff, dtype=np.float64))
    n = d.shape[1]
    if n == 0:
        raise ValueError("no paired items to compare")
    s = np.zeros(n, np.int64) if strata is None else np.asarray(strata)
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, n))
    for g in np.unique(s):
        idx = np.flatnonzero(s == g)
        w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
    boots = w @ d.T / n  # (n_boot, k)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, alpha, axis=0), np.quantile(boots, 1 - alpha, axis=0)
    mean = d.mean(1)
    if np.ndim(diff) == 1:
        return float(mean[0]), (float(lo[0]), float(hi[0]))
    return mean, (lo, hi)  # type: ignore[return-value]
