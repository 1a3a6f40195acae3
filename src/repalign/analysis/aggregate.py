"""Seed aggregation of metric rows: per group × pair × split × layer × evaluation point, the mean,
std, n and 95 % interval of every metric (``aggregate.csv``), and paired comparisons between pairs
(``comparisons.csv``).

Rows are ``metrics.jsonl``/``summary.csv`` rows (kinds ``align``, ``baseline``, ``eval``, ``weight``)
carrying a ``seed`` column (sweeps) or not (one run = one seed). ``group_keys`` name the columns
that define a condition (e.g. ``loss.temperature``); everything else that varies is the seed.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

from repalign.analysis.stats import paired_difference, summarize, verdict
from repalign.errors import UserError
from repalign.results import last_steps
from repalign.schema import CONTROL_KINDS, setting_columns

__all__ = ["AGG_ID", "FINGERPRINT", "MixedConfigError", "SeedConflictError", "put_seed", "check_one_config", "aggregate_rows", "comparison_rows", "pair_values", "final_step", "CONTROL_KINDS"]

#: Column of summary rows holding the point's config fingerprint without its seed (issue 17).
FINGERPRINT = "config_fingerprint"
#: Identity columns of an aggregated row besides the group keys.
AGG_ID = ("kind", "split", "layer", "arm_a", "arm_b", "control", "arm", "baseline", "step", "epoch")
#: Columns that are never aggregated as metrics (besides the schema's setting columns, e.g. ``rsa_rdm``).
_NOT_METRICS = set(AGG_ID) | {FINGERPRINT, "point", "seed", "wall_s", "samples_per_s", "objective", "dataset", "lr"}


class MixedConfigError(UserError):
    """Rows of one condition come from runs with different configs (fingerprints apart from the seed)."""


def check_one_config(rows: Iterable[Mapping[str, Any]], group_keys: Sequence[str] = (), what: str = "aggregate") -> None:
    """Refuse (one line, :class:`MixedConfigError`) a condition — rows with the same ``group_keys``
    values — whose rows carry more than one :data:`FINGERPRINT` (seeds of different configurations would
    be pooled as one). Rows without the column (older summaries) are not checked."""
    seen: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        fp = r.get(FINGERPRINT)
        if fp is None or fp == "":
            continue
        g = tuple(r.get(k) for k in group_keys)
        seen.setdefault(g, {}).setdefault(str(fp), r.get("point", r.get("seed")))
    for g, fps in seen.items():
        if len(fps) > 1:
            cond = ", ".join(f"{k}={v}" for k, v in zip(group_keys, g)) or "the only condition"
            pts = ", ".join(f"{p} ({fp[:10]}…)" for fp, p in list(fps.items())[:4])
            raise MixedConfigError(f"{what}: {cond} mixes {len(fps)} configurations (points {pts}: config "
                                   "fingerprints apart from the seed differ); its seeds cannot be pooled — re-run "
                                   "the stale points (repalign sweep … --redo-stale) or aggregate them apart")


class SeedConflictError(UserError):
    """One seed holds two different values in one cell: rows of two runs with the same seed are pooled."""


def put_seed(cell: dict[Any, float], seed: Any, v: float, where: str | Callable[[], str]) -> None:
    """``cell[seed] = v`` — ``n`` counts seeds, never rows: the same value again (a duplicated run) is
    counted once, a different value for a seed already there is refused (one line naming ``where`` and
    the seed; :class:`SeedConflictError`), never silently replaced."""
    old = cell.get(seed)
    if old is not None and old != v and not (old != old and v != v):
        where = where() if callable(where) else where
        raise SeedConflictError(f"{where}: seed {seed!r} has two different values ({old:.6g} and {v:.6g}) — rows "
                                "of two runs with the same seed are pooled, and n counts seeds, not rows; give "
                                "the runs distinct seeds or aggregate them apart")
    cell[seed] = v


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _seed(r: Mapping[str, Any]) -> Any:
    return r.get("seed", 0)


def aggregate_rows(rows: Iterable[Mapping[str, Any]], group_keys: Sequence[str] = (),
                   kinds: Sequence[str] = ("align", "baseline", "eval", "weight"), level: float = 0.95
                   ) -> list[dict[str, Any]]:
    """One output row per (group, identity, metric): ``{group keys…, kind, split, layer, arm_a, arm_b,
    control, arm, baseline, step, epoch, metric, n, mean, std, ci_lo, ci_hi, level, method}``.
    ``n`` counts seeds; a metric missing (or non-finite) for a seed is left out of that cell. A condition
    whose rows carry different config fingerprints is refused (:func:`check_one_config`)."""
    rows = list(rows)
    check_one_config(rows, group_keys, "aggregate")
    cells: dict[tuple, dict[str, dict[Any, float]]] = defaultdict(lambda: defaultdict(dict))
    order: list[tuple] = []
    not_metrics = _NOT_METRICS | setting_columns()
    for r in rows:
        if r.get("kind") not in kinds:
            continue
        key = tuple(r.get(k) for k in group_keys) + tuple(r.get(k) for k in AGG_ID)
        if key not in cells:
            order.append(key)
        for m, v in r.items():
            if m not in not_metrics and m not in group_keys and _num(v):
                put_seed(cells[key][m], _seed(r), float(v), lambda: _where("aggregate", group_keys, key, m))
    out = []
    for key in order:
        for m, by_seed in cells[key].items():
            s = summarize(list(by_seed.values()), level)
            out.append({**dict(zip(list(group_keys) + list(AGG_ID), key)), "metric": m, "n": s.n, "mean": s.mean,
                        "std": s.std, "ci_lo": s.lo, "ci_hi": s.hi, "level": level, "method": s.method})
    return out


def _where(what: str, group_keys: Sequence[str], key: tuple, metric: str) -> str:
    ident = dict(zip(list(group_keys) + list(AGG_ID), key))
    return f"{what}: " + ", ".join(f"{k}={v}" for k, v in ident.items() if v is not None) + f", metric {metric}"


def final_step(rows: Iterable[Mapping[str, Any]]) -> dict[Any, int]:
    """Per seed, the last evaluation step among ``align`` rows."""
    return {seed: int(step) for seed, step in last_steps((r for r in rows if r.get("kind") == "align"), _seed).items()}


def pair_values(rows: Iterable[Mapping[str, Any]], metric: str, split: str, layer: str,
                step: Mapping[Any, int] | int | None = None) -> tuple[dict[tuple[str, str], dict[Any, float]],
                                                                      dict[Any, float], dict[tuple[str, str], str | None]]:
    """``(values, untrained, controls)`` at one evaluation point: ``values[(a, b)][seed]``, the untrained
    baseline ``untrained[seed]`` and each pair's control kind. ``step``: per-seed step mapping, one
    step for all seeds, or ``None`` for each seed's last evaluation."""
    rows = list(rows)
    last = final_step(rows) if step is None else None

    def at(r: Mapping[str, Any]) -> bool:
        want = last.get(_seed(r)) if last is not None else (step.get(_seed(r)) if isinstance(step, Mapping) else step)
        return r.get("step") == want and r.get("split") == split and r.get("layer", "h") == layer

    vals: dict[tuple[str, str], dict[Any, float]] = defaultdict(dict)
    ctrl: dict[tuple[str, str], str | None] = {}
    base: dict[Any, float] = {}
    for r in rows:
        if not at(r) or not _num(r.get(metric)):
            continue
        where = lambda: (f"{metric} of {r.get('arm_a', 'untrained')}/{r.get('arm_b', 'untrained')} at step "  # noqa: E731
                         f"{r.get('step')} ({split}, layer {layer})")
        if r.get("kind") == "align":
            put_seed(vals[(r["arm_a"], r["arm_b"])], _seed(r), float(r[metric]), where)
            ctrl[(r["arm_a"], r["arm_b"])] = r.get("control") or None
        elif r.get("kind") == "baseline" and r.get("baseline") == "untrained":
            put_seed(base, _seed(r), float(r[metric]), where)
    return dict(vals), base, ctrl


def comparison_rows(rows: Iterable[Mapping[str, Any]], group_keys: Sequence[str] = (),
                    metrics: Sequence[str] = ("linear_cka", "rsa"), level: float = 0.95) -> list[dict[str, Any]]:
    """Paired comparisons at every evaluation point: for each group, split, layer and step, every
    objective pair ``A`` (not a control) against every other pair ``B`` sharing ``arm_a`` and against
    the untrained baseline — per-seed differences ``A_s − B_s`` summarised as mean, CI and a verdict
    (``higher``/``lower``/``undecided``/``single``)."""
    rows = [r for r in rows if r.get("kind") in ("align", "baseline")]
    check_one_config(rows, group_keys, "comparisons")
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in group_keys)].append(r)
    out = []
    for g, rr in groups.items():
        points = sorted({(r.get("split"), r.get("layer", "h"), int(r["step"])) for r in rr if r.get("kind") == "align"})
        for split, layer, step in points:
            for m in metrics:
                vals, base, ctrl = pair_values(rr, m, split, layer, step)
                for (a, b), va in vals.items():
                    if ctrl.get((a, b)):
                        continue
                    others = [((a2, b2), vb, ctrl.get((a2, b2)) or "objective") for (a2, b2), vb in vals.items()
                              if a2 == a and b2 != b]
                    if base:
                        others.append((("untrained", "untrained"), base, "untrained"))
                    for (a2, b2), vb, role in others:
                        d = paired_difference(va, vb, level)
                        if d is None:
                            continue
                        out.append({**dict(zip(group_keys, g)), "split": split, "layer": layer, "step": step,
                                    "metric": m, "pair": f"{a}/{b}", "versus": f"{a2}/{b2}", "versus_role": role,
                                    "n": d.n, "diff_mean": d.mean, "diff_std": d.std, "ci_lo": d.lo, "ci_hi": d.hi,
                                    "level": level, "verdict": verdict(d)})
    return out
