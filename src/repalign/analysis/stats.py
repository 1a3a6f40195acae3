"""Uncertainty over seeds: means, t-intervals, bootstrap intervals and paired differences.

Pure functions on plain numbers. A value measured over ``n`` seeds is summarised by its mean, its
sample standard deviation (``ddof = 1``) and a two-sided confidence interval:

* ``n < bootstrap_min_n`` (the usual 2–10 seeds): Student's t-interval
  ``mean ± t_{1−α/2, n−1} · std / √n``;
* ``n ≥ bootstrap_min_n``: a seeded percentile bootstrap of the mean (no normality assumption);
* ``n = 1``: no interval (``lo = hi = None``) — one seed cannot measure seed-to-seed noise.

A comparison "A is more aligned than B" uses the per-seed differences ``A_s − B_s`` over the seeds
both have (:func:`paired_difference`): the shared randomness of a seed (initial weights, batches,
views) cancels, so the paired interval is much tighter than comparing two separate intervals.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Summary", "summarize", "t_interval", "bootstrap_interval", "paired_difference", "verdict"]


@dataclass(frozen=True)
class Summary:
    """``mean``, ``std`` (ddof 1; ``None`` for n = 1), ``n`` and the interval ``[lo, hi]`` at ``level``
    (``None`` when it cannot be computed), made by ``method`` (``t``, ``bootstrap`` or ``none``)."""

    mean: float
    std: float | None
    n: int
    lo: float | None
    hi: float | None
    level: float
    method: str

    @property
    def half_width(self) -> float | None:
        return None if self.lo is None or self.hi is None else (self.hi - self.lo) / 2

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        d = asdict(self)
        d["ci_lo"], d["ci_hi"] = d.pop("lo"), d.pop("hi")
        return {f"{prefix}{k}": v for k, v in d.items()}

    def text(self, digits: int = 3) -> str:
        """``0.901 [0.880, 0.922]`` (n > 1) or ``0.901`` (n = 1). When every number would print as ±0 at
        ``digits`` decimals but is not 0 (e.g. a margin of 2e-5 between two CKAs at the ceiling), two
        significant digits are shown instead (``-2.1e-05 [-3e-05, -1.2e-05]``), so a tiny difference that
        the interval decides does not read as "-0.000 [-0.000, -0.000]"."""
        f = f"{{:.{digits}f}}"
        shown = [x for x in (self.mean, self.lo, self.hi) if x is not None]
        if any(x != 0 for x in shown) and all(abs(x) < 0.5 * 10 ** -digits for x in shown):
            f = "{:.2g}"
        if self.lo is None or self.hi is None:
            return f.format(self.mean)
        return f"{f.format(self.mean)} [{f.format(self.lo)}, {f.format(self.hi)}]"


def _clean(values: Iterable[float]) -> np.ndarray:
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("values must be a non-empty sequence of numbers")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"values contain non-finite entries: {v.tolist()}")
    return v


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Two-sided Student-t interval of the mean; ``None`` for a single value."""
    from scipy import stats

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    v = _clean(values)
    if v.size < 2:
        return None
    m, se = float(v.mean()), float(v.std(ddof=1)) / math.sqrt(v.size)
    q = float(stats.t.ppf(0.5 + level / 2, df=v.size - 1))
    return m - q * se, m + q * se


def bootstrap_interval(values: Sequence[float], level: float = 0.95, n_boot: int = 10_000,
                       seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean (``n_boot`` resamples, generator seeded by ``seed``)."""
    v = _clean(values)
    if v.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def summarize(values: Sequence[float], level: float = 0.95, bootstrap_min_n: int = 30, seed: int = 0) -> Summary:
    """Mean, std, n and a confidence interval (t below ``bootstrap_min_n`` values, bootstrap above)."""
    v = _clean(values)
    n = int(v.size)
    std = float(v.std(ddof=1)) if n > 1 else None
    if n < 2:
        return Summary(float(v.mean()), std, n, None, None, level, "none")
    if n >= bootstrap_min_n:
        lo, hi = bootstrap_interval(v, level, seed=seed)  # type: ignore[misc]
        return Summary(float(v.mean()), std, n, lo, hi, level, "bootstrap")
    lo, hi = t_interval(v, level)  # type: ignore[misc]
    return Summary(float(v.mean()), std, n, lo, hi, level, "t")


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float], level: float = 0.95) -> Summary | None:
    """Summary of ``a[s] − b[s]`` over the keys (seeds) both have; ``None`` when they share none."""
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    if not keys:
        return None
    return summarize([a[k] - b[k] for k in keys], level)


def verdict(diff: Summary | None) -> str:
    """``"higher"`` (interval above 0), ``"lower"`` (below 0), ``"undecided"`` (interval contains 0)
    or ``"single"`` (one seed: no interval)."""
    if diff is None:
        return "undecided"
    if diff.lo is None or diff.hi is None:
        return "single"
    if diff.lo > 0:
        return "higher"
    if diff.hi < 0:
        return "lower"
    return "undecided"
