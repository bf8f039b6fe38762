"""Small statistics shared by every judge: success rates with confidence intervals."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
