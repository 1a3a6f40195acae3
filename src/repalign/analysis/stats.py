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

Tests (issue 18) — what a sentence may claim:

* :func:`t_test` — two-sided one-sample t-test of paired differences against 0 (the p-value beside the
  interval; ``p < 0.05`` ⇔ the 95 % t-interval excludes 0).
* :func:`tost` — equivalence (two one-sided t-tests) within ``±margin``: ``p = max(p_lower, p_upper)`` with
  ``p_lower = P(T ≥ (m + δ)/se)``, ``p_upper = P(T ≤ (m − δ)/se)``, ``T ~ t_{n−1}``; equivalent at α when
  ``p < α`` (⇔ the ``1 − 2α`` interval lies inside ``(−δ, δ)``). Only this licenses "as close as" /
  "equals"; an interval containing 0 alone says "not decidably different".
* :func:`holm` — Holm's step-down adjusted p-values over a family.
* :func:`mde` — minimum detectable difference of a paired t-test at ``n`` (two-sided α, power ``1 − β``),
  ``(t_{1−α/2, n−1} + t_{1−β, n−1}) · sd / √n``, and :func:`seeds_needed`, the smallest ``n`` whose MDE is ≤ a
  stated effect.
* :func:`per_seed_slopes` — a trend over conditions as one OLS slope per seed (all conditions the seed
  has), summarised over seeds like any paired difference.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Summary", "summarize", "t_interval", "bootstrap_interval", "paired_difference", "verdict", "TTest",
           "t_test", "Tost", "tost", "holm", "mde", "seeds_needed", "per_seed_slopes"]


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


# ---------------------------------------------------------------------------- tests (issue 18)
@dataclass(frozen=True)
class TTest:
    """Two-sided one-sample t-test of ``values`` against 0: ``t = mean / (std/√n)``, ``df = n − 1``;
    ``p = None`` for n < 2; ``p = 0`` (or 1) when ``std = 0`` and the mean is non-zero (or zero)."""

    mean: float
    std: float | None
    n: int
    t: float | None
    p: float | None


def t_test(values: Sequence[float]) -> TTest:
    """Two-sided one-sample t-test against 0 (paired differences)."""
    from scipy import stats

    v = _clean(values)
    n, m = int(v.size), float(v.mean())
    if n < 2:
        return TTest(m, None, n, None, None)
    sd = float(v.std(ddof=1))
    if sd == 0:
        return TTest(m, sd, n, math.copysign(math.inf, m) if m else 0.0, 0.0 if m else 1.0)
    t = m / (sd / math.sqrt(n))
    return TTest(m, sd, n, t, float(2 * stats.t.sf(abs(t), df=n - 1)))


@dataclass(frozen=True)
class Tost:
    """Equivalence test of a mean difference within ``±margin`` (two one-sided t-tests, df = n − 1).
    ``p_lower`` tests H0: μ ≤ −margin, ``p_upper`` H0: μ ≥ +margin; ``p = max`` of the two."""

    mean: float
    se: float
    n: int
    margin: float
    p_lower: float
    p_upper: float

    @property
    def p(self) -> float:
        return max(self.p_lower, self.p_upper)

    def equivalent(self, alpha: float = 0.05) -> bool:
        return self.p < alpha

    def text(self, digits: int = 3) -> str:
        f = f"{{:.{digits}f}}"
        word = "equivalent" if self.equivalent() else "not shown equivalent"
        return f"TOST ±{f.format(self.margin)}: p = {self.p:.2g} ({word})"


def tost(values: Sequence[float], margin: float) -> Tost | None:
    """TOST of ``values`` (paired differences) within ``±margin`` (> 0); ``None`` for n < 2."""
    from scipy import stats

    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    v = _clean(values)
    n = int(v.size)
    if n < 2:
        return None
    m, se = float(v.mean()), float(v.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        inside = -margin < m < margin
        return Tost(m, 0.0, n, float(margin), 0.0 if inside else 1.0, 0.0 if inside else 1.0)
    p_lo = float(stats.t.sf((m + margin) / se, df=n - 1))
    p_hi = float(stats.t.cdf((m - margin) / se, df=n - 1))
    return Tost(m, se, n, float(margin), p_lo, p_hi)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (same order as given; ``None`` entries are not in the family):
    sorted ascending ``p_(1) ≤ … ≤ p_(m)``, ``adj_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j))``."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    for i in idx:
        p = pvalues[i]
        if not (0 <= p <= 1):  # type: ignore[operator]
            raise ValueError(f"p-values must lie in [0, 1], got {p!r} at position {i}")
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):  # type: ignore[arg-type,return-value]
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def mde(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Minimum detectable mean difference of a two-sided paired t-test with ``n`` pairs of standard
    deviation ``sd``: ``(t_{1−α/2, n−1} + t_{power, n−1}) · sd / √n`` (the usual normal-approximation form
    with t quantiles); ``None`` for n < 2."""
    from scipy import stats

    if n < 2:
        return None
    if not (0 < alpha < 1 and 0 < power < 1) or sd < 0:
        raise ValueError(f"need 0 < alpha, power < 1 and sd >= 0 (alpha={alpha!r}, power={power!r}, sd={sd!r})")
    q = float(stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1))
    return q * sd / math.sqrt(n)


def seeds_needed(sd: float, effect: float, alpha: float = 0.05, power: float = 0.8, n_max: int = 100_000) -> int | None:
    """Smallest ``n ≥ 2`` with ``mde(sd, n) ≤ |effect|`` (``None`` when above ``n_max`` or effect is 0)."""
    effect = abs(float(effect))
    if effect == 0:
        return None
    if sd == 0:
        return 2
    n = 2
    while n <= n_max:
        if mde(sd, n, alpha, power) <= effect:  # type: ignore[operator]
            return n
        n = n + 1 if n < 1000 else int(n * 1.01) + 1
    return None


def per_seed_slopes(values: Mapping[float, Mapping[Any, float]], transform: Any = None,
                    min_points: int = 2) -> dict[Any, float]:
    """OLS slope of ``y`` over ``x`` per seed: ``values[x][seed] = y``; ``transform`` (e.g. ``math.log``)
    maps ``x`` first. A seed enters with every condition it has (at least ``min_points`` distinct x).
    ``slope_s = Σ (x − x̄)(y − ȳ) / Σ (x − x̄)²`` over that seed's points."""
    by_seed: dict[Any, list[tuple[float, float]]] = {}
    for x, ys in values.items():
        xx = float(transform(x) if transform else x)
        for s, y in ys.items():
            if y is not None:
                by_seed.setdefault(s, []).append((xx, float(y)))
    out = {}
    for s, pts in by_seed.items():
        xs = np.array([p[0] for p in pts])
        if len(set(xs.tolist())) < max(2, min_points):
            continue
        ys = np.array([p[1] for p in pts])
        dx = xs - xs.mean()
        out[s] = float((dx * (ys - ys.mean())).sum() / (dx * dx).sum())
    return out
