"""The theorem's structure, tested on measured numbers (issue 18, item 4).

Thm 1 of arXiv 2510.08852 (paper-notes §2.2) bounds ``‖Σ_CL − Σ_X‖_F`` by a loss-gap factor times a
function of the cumulative learning rate ``S_T``: at fixed data, steps and ``S_T`` the similarity-matrix gap
should grow with the loss gap ``L_DCL − L_X`` — monotonely and, if the bound is tight up to its constant,
roughly proportionally. These functions fit that relation on measured points without assuming it:

* :func:`fit_relation` — points ``[arm][seed] = (x, y)`` (e.g. x = the arm's mean loss gap, y = its final
  ``sim_gap``): per seed an OLS slope of y on x over the arms, a log–log slope (the elasticity: 1 means
  proportional) and Spearman's rank correlation; each summarised over seeds (mean, 95 % t-interval). The
  seeds pair the arms (same CL, batches and views), so the per-seed slope is the paired statistic.
* :func:`growth_over_training` — per seed the log–log slope of ``sim_gap`` against ``S_T`` over the
  evaluations of one pair (theory rows), i.e. the growth exponent through training.

Verdict words: *monotone* only when the seed means of y are ordered like those of x **and** the slope's
interval lies above 0; *consistent with proportional* when the elasticity's interval contains 1 (not
"proportional": an interval containing 1 does not show equality); *faster / slower than proportional*
when it lies above / below 1.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from repalign.analysis.stats import Summary, summarize

__all__ = ["fit_relation", "growth_over_training", "relation_text"]


def _ols(x: np.ndarray, y: np.ndarray) -> float:
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx * dx).sum())


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy import stats

    r = stats.spearmanr(x, y).statistic
    return float(r) if np.isfinite(r) else 0.0


def _sum(v: list[float]) -> Summary | None:
    return summarize(v) if v else None


def fit_relation(points: Mapping[Any, Mapping[Any, tuple[float, float]]]) -> dict[str, Any]:
    """Relation of y to x over arms, per seed. ``points[arm][seed] = (x, y)``.

    Returns ``{"n_arms", "n_seeds", "slope", "elasticity", "spearman"`` (Summaries over seeds or ``None``),
    ``"monotone"`` (bool), ``"proportional"`` (``consistent`` / ``faster`` / ``slower`` / ``undecided`` /
    ``None``), ``"means"`` (``[(arm, mean x, mean y)]`` sorted by x)}. A seed enters when it has ≥ 3 arms
    with distinct x (2 for the slope); the elasticity uses arms with x, y > 0 only.
    """
    by_seed: dict[Any, list[tuple[float, float]]] = {}
    for arm, per in points.items():
        for s, (x, y) in per.items():
            if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
                continue
            by_seed.setdefault(s, []).append((float(x), float(y)))
    slopes, elast, rhos = [], [], []
    for pts in by_seed.values():
        x = np.array([p[0] for p in pts])
        y = np.array([p[1] for p in pts])
        if len(set(x.tolist())) < 2:
            continue
        slopes.append(_ols(x, y))
        if len(pts) >= 3:
            rhos.append(_spearman(x, y))
        pos = (x > 0) & (y > 0)
        if pos.sum() >= 2 and len(set(x[pos].tolist())) >= 2:
            elast.append(_ols(np.log(x[pos]), np.log(y[pos])))
    means = []
    for arm, per in points.items():
        xs = [p[0] for p in per.values() if p[0] is not None and p[1] is not None]
        ys = [p[1] for p in per.values() if p[0] is not None and p[1] is not None]
        if xs:
            means.append((arm, float(np.mean(xs)), float(np.mean(ys))))
    means.sort(key=lambda t: t[1])
    slope, el = _sum(slopes), _sum(elast)
    ordered = all(b[2] >= a[2] for a, b in zip(means, means[1:])) and len(means) >= 2
    monotone = bool(ordered and slope is not None and slope.lo is not None and slope.lo > 0)
    prop = None
    if el is not None and el.lo is not None:
        prop = "consistent" if el.lo <= 1 <= el.hi else ("faster" if el.lo > 1 else "slower")
    elif el is not None:
        prop = "undecided"
    return {"n_arms": len(points), "n_seeds": len(slopes), "slope": slope, "elasticity": el,
            "spearman": _sum(rhos), "monotone": monotone, "proportional": prop, "means": means}


def relation_text(fit: Mapping[str, Any], x: str = "loss gap", y: str = "‖Σ_CL − Σ_X‖_F") -> str:
    """One sentence for :func:`fit_relation`'s result (numbers with their intervals)."""
    if fit["slope"] is None:
        return f"{y} vs {x}: too few arms or seeds for a slope"
    t = (f"{y} vs {x} over {fit['n_arms']} arms: per-seed slope {fit['slope'].text(3)} (n = {fit['n_seeds']})")
    if fit["spearman"] is not None:
        t += f", Spearman {fit['spearman'].text(2)}"
    t += "; monotone increasing" if fit["monotone"] else "; not decided monotone increasing"
    el, prop = fit["elasticity"], fit["proportional"]
    if el is not None:
        word = {"consistent": "consistent with proportional", "faster": "faster than proportional",
                "slower": "slower than proportional", "undecided": "one seed: no interval"}[prop]
        t += f"; log–log slope {el.text(2)} ({word})"
    return t


def growth_over_training(rows: Iterable[Mapping[str, Any]], group_key: str | None = None,
                         x: str = "S_T", y: str = "sim_gap") -> dict[Any, Summary | None]:
    """Per group (``group_key`` value, or ``None``), the over-seed summary of each seed's log–log slope of
    ``y`` on ``x`` through training (points with x, y > 0; theory rows of one arm pair)."""
    acc: dict[Any, dict[Any, list[tuple[float, float]]]] = {}
    for r in rows:
        xv, yv = r.get(x), r.get(y)
        if not (isinstance(xv, (int, float)) and isinstance(yv, (int, float))) or xv <= 0 or yv <= 0:
            continue
        if not (math.isfinite(xv) and math.isfinite(yv)):
            continue
        g = r.get(group_key) if group_key else None
        acc.setdefault(g, {}).setdefault(r.get("seed", 0), []).append((math.log(xv), math.log(yv)))
    out: dict[Any, Summary | None] = {}
    for g, seeds in acc.items():
        sl = [_ols(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
              for pts in seeds.values() if len({p[0] for p in pts}) >= 2]
        out[g] = _sum(sl)
    return out
