"""Statistics of the analysis: over-seed summaries and Welch's t interval.

The Student-t quantile is computed here (regularised incomplete beta by continued
fraction, then bisection), because scipy is not a dependency of this project.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable


# --------------------------------------------------------------------------- t quantile


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz algorithm)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast only on this side of the mean; use the
    # symmetry I_x(a, b) = 1 - I_{1-x}(b, a) on the other.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (real, > 0) degrees of freedom."""
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """Inverse of `student_t_cdf` in its first argument, by bisection (|error| < 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-10 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    """Mean and sample std of the finite values of one quantity over seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


def make_stat(values: Iterable[float | None]) -> Stat:
    """A `Stat` over the finite entries of `values` (None/NaN/inf are dropped)."""
    return Stat(tuple(float(v) for v in values if v is not None and math.isfinite(v)))


@dataclass(frozen=True)
class Interval:
    """Welch's t interval for mean(a) - mean(b)."""

    difference: float
    low: float
    high: float
    df: float


def welch_interval(a: Stat, b: Stat, level: float = 0.95) -> Interval:
    """Welch's t interval for mean(a) - mean(b); needs at least two values on each side."""
    if a.n < 2 or b.n < 2:
        raise ValueError("Welch's interval needs at least two values per group")
    diff = a.mean - b.mean
    var_a, var_b = a.std ** 2 / a.n, b.std ** 2 / b.n
    se = math.sqrt(var_a + var_b)
    if se == 0.0:  # identical values on both sides: the interval collapses to the point
        return Interval(diff, diff, diff, math.inf)
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (a.n - 1) + var_b ** 2 / (b.n - 1))
    half = student_t_quantile(0.5 + level / 2.0, df) * se
    return Interval(diff, diff - half, diff + half, df)
