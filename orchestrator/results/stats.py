"""Seed noise: a 95% Student-t interval for a cell's mean, a Welch interval for the
difference of two cells' means, and the verdict a comparison earns from it.

At batch 5 the seeds of one cell differ by several points, so "mean A > mean B" says
little with n = 3; a comparison is resolved only when its interval excludes 0:

    d = difference(Estimate(45.1, 1.2, 3), Estimate(40.2, 2.5, 3))   # A - B
    d.low, d.high       # 95% Welch interval of mean A - mean B
    d.verdict()         # "holds" (A > B resolved), "reversed" (B > A), "not resolved"

An `exact` estimate has no seed noise: a value the code computes (a memory forecast, a
model's bytes) or a threshold a claim compares with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95
HOLDS, REVERSED, NOT_RESOLVED = "holds", "reversed", "not resolved"


def t_quantile(df: float) -> float:
    """The two-sided 95% Student-t critical value for `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + LEVEL / 2, df))


@dataclass(frozen=True)
class Estimate:
    """A mean over n runs (std: sample std, ddof=1; None when n < 2), or an exact value."""
    mean: float
    std: float | None = None
    n: int = 1
    exact: bool = False

    @classmethod
    def of(cls, value: float) -> "Estimate":
        return cls(float(value), 0.0, 1, exact=True)

    def scaled(self, k: float) -> "Estimate":
        return Estimate(self.mean * k, None if self.std is None else abs(k) * self.std, self.n, self.exact)

    @property
    def interval(self) -> tuple[float, float] | None:
        return mean_interval(self.mean, self.std, self.n) if not self.exact else (self.mean, self.mean)


def mean_interval(mean: float | None, std: float | None, n: int) -> tuple[float, float] | None:
    """95% Student-t interval of a mean over n >= 2 runs (None below that)."""
    if mean is None or std is None or n < 2:
        return None
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class Difference:
    """mean A - mean B, its 95% interval (None: a side has n < 2 and is not exact)."""
    diff: float
    low: float | None
    high: float | None
    n: tuple[int | None, int | None]     # runs behind A and B (None: exact)

    def verdict(self) -> str:
        """"holds" if A > B is resolved, "reversed" if B > A is, else "not resolved"."""
        if self.low is None:
            return NOT_RESOLVED
        if self.low > 0:
            return HOLDS
        if self.high < 0:
            return REVERSED
        return NOT_RESOLVED


def difference(a: Estimate, b: Estimate) -> Difference:
    """Welch's interval of mean A - mean B (unequal variances, Welch-Satterthwaite df);
    exact sides add no variance. Both sides without spread (std 0) give a point."""
    diff = a.mean - b.mean
    n = (None if a.exact else a.n, None if b.exact else b.n)
    noisy = [e for e in (a, b) if not e.exact]
    if any(e.std is None or e.n < 2 for e in noisy):
        return Difference(diff, None, None, n)
    variances = [e.std ** 2 / e.n for e in noisy]
    se2 = sum(variances)
    if se2 == 0:
        return Difference(diff, diff, diff, n)
    df = se2 ** 2 / sum(v ** 2 / (e.n - 1) for v, e in zip(variances, noisy))
    half = t_quantile(df) * math.sqrt(se2)
    return Difference(diff, diff - half, diff + half, n)


def combined(verdicts: list[str]) -> str:
    """Several comparisons that must all hold: reversed if any is, holds if all do."""
    if REVERSED in verdicts:
        return REVERSED
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else NOT_RESOLVED
