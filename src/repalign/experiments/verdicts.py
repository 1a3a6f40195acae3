"""Per-claim verdicts on arXiv 2510.08852 from the toolkit's own figure outputs (issue 9).

Reads the CSVs that ``repalign reproduce FIG --scale cpu`` writes (``OUT/FIG/FIG.csv``: one row per
seed × evaluation × split × layer × pair, plus the untrained-baseline rows) and decides each claim by a
rule written here *before* the figures were run. Every comparison is paired over seeds (the same seed
shares initial weights, batches and views across arms, and the same seed index across a figure's
conditions), summarised by the mean and a 95 % t-interval (:mod:`repalign.analysis.stats`).

Measured at each seed's last evaluation, **test split, layer h, linear CKA** (RSA and layer z are in
the figure CSVs and reports). Verdicts:

* ``reproduced`` — every interval the claim needs lies on the paper's side of 0;
* ``not reproduced`` — an interval the claim needs lies entirely on the other side;
* ``inconclusive at CPU scale`` — anything else (an interval contains 0), with the reason;
* ``not run`` — the figure's output is missing.

Claims and their tests (``d`` = paired per-seed difference):

1. *NSCL is the objective most aligned with CL* (fig2): ``d = CKA(cl,nscl) − CKA(cl,scl)`` and
   ``CKA(cl,nscl) − CKA(cl,ce)``.
2. *CL–NSCL alignment exceeds training noise* (fig2; a control, not a number of the paper):
   ``d = CKA(cl,nscl) − CKA(cl,cl_data)`` (the noise floor: same initialisation, other batches and views).
   The chaos floor ``CKA(cl,cl_eps)`` is reported beside it as the upper reference.
3. *Alignment grows with C* (fig3): ``d = CKA(cl,nscl)|C_max − CKA(cl,nscl)|C_min`` and, so that a
   trend of the data alone is not read as one of the objective, the same difference of the margin over
   the noise floor ``CKA(cl,nscl) − CKA(cl,cl_data)``.
4. *Alignment grows with τ* (fig4): as 3 with τ_max vs τ_min.
5. *B × LR rule* (fig5, the paper's optimiser LARS; SGD reported beside): under the linear rule
   ``d = CKA|B_min − CKA|B_max`` (falls with B); under the √B rule ``d = CKA|B_max − CKA|B_min`` (rises).
6. *Weights diverge while representations stay aligned* (fig1): ``d = weight angle − representation
   angle`` between CL and NSCL (degrees), with the chaos twin's weight angle beside it.
7. *0 ≤ L_DCL − L_NSCL ≤ bound on every batch* (lossgap): the count of logged batches that satisfy it.

Issue 18 (what a row may claim): trends are per-seed OLS slopes over *every* condition (log10 of C, τ, K), and
the noise-floor check is symmetric — a direction counts only when the slope of CL–NSCL's margin over the noise
floor is decided the same way, so a trend of the data alone is inconclusive in either direction; every cell a row
interprets is checked against calibration rule 2 (room) and cells without room are named; "as close as the chaos
floor" needs a TOST at ±``EQUIV_FRACTION`` × the cell's chaos − noise band; each row has one primary test (an
intersection–union test when it needs several), its raw and Holm-adjusted p-value over the table's family, its
minimum detectable difference and the seeds a stated effect would need; two-stage follow-ups are labelled. Rows
3b (label granularity) and 8 (the mechanism: alignment against the measured loss gap, with the theorem's
structure from :mod:`repalign.analysis.structure`) read the ``granularity`` / ``alpha`` figures and say "not run
yet" until their CSVs exist.

Command line: ``python -m repalign.experiments.verdicts RUNS_DIR [--md FILE] [--follow-up fig2=DIR]`` where
``RUNS_DIR`` holds ``fig1/ … lossgap/`` (the layout of ``benchmarks/bench_figures.py --out``; the committed
``docs/figures/cpu`` has it too).
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from repalign.analysis.aggregate import pair_values
from repalign.analysis.stats import (Summary, Tost, holm, mde, paired_difference, per_seed_slopes, seeds_needed,
                                     summarize, t_test, tost)
from repalign.experiments.calibration import Rule, setting_rows
from repalign.results import read_summary

__all__ = ["Verdict", "Comparison", "read_rows", "judge", "verdicts", "markdown", "figure_markdown",
           "EQUIV_FRACTION", "claim_granularity", "claim_mechanism"]

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = ("reproduced", "not reproduced", "inconclusive at CPU scale",
                                                     "not run")
METRIC, SPLIT, LAYER = "linear_cka", "test", "h"
#: A cell "has room" when its chaos floor lies above its noise floor by this much (lower end of the paired
#: interval) — rule 2 of docs/calibration.md, reused so a figure cell is judged by the regime's own bar.
ROOM = Rule().min_separation
#: Equivalence margin of every "as close as the chaos floor" sentence (declared in issue 18 before the TOSTs were
#: computed here): ± half of the cell's own chaos − noise band (paired mean of CKA(cl, cl_eps) − CKA(cl, cl_data)).
#: Why half: an arm within half the band of the chaos floor is closer to CL-on-the-same-batches than to
#: CL-on-other-batches — the one distinction the paper's mechanism (shared randomness) makes. Only a TOST that
#: succeeds at this margin licenses "as close as"; otherwise the sentence says "not decidably different".
EQUIV_FRACTION = 0.5
#: level of every test and the power of the minimum detectable difference (MDE) and seeds-needed columns
ALPHA, POWER = 0.05, 0.8
#: effects stated for "seeds needed": a CKA difference of the room bar (0.02), a trend of 0.02 CKA per decade of
#: the condition (C, τ, K), 5° of angle (fig1)
EFFECT_CKA, EFFECT_SLOPE, EFFECT_DEG = ROOM, ROOM, 5.0
#: the figures of issue 18's designs (read when their CSVs exist)
GRANULARITY, ALPHA_FIG = "granularity", "alpha"


@dataclass
class Comparison:
    """One paired statistic: per-seed ``values`` (differences or slopes) with its ``unit`` and the ``effect``
    stated for the seeds-needed column."""

    label: str
    values: dict[Any, float]
    unit: str = ""
    effect: float = EFFECT_CKA

    @property
    def summary(self) -> Summary | None:
        return summarize(list(self.values.values())) if self.values else None

    @property
    def p(self) -> float | None:
        return t_test(list(self.values.values())).p if len(self.values) >= 2 else None


@dataclass
class Verdict:
    """One claim: ``ours`` (our numbers with intervals), ``baselines`` (controls and untrained zero
    point), ``verdict`` and its ``reason``; ``paper`` what the paper reports. The primary test of the row:
    ``test`` (its name), ``p`` (raw, two-sided) and ``p_holm`` (Holm over the table's primary family), ``mde``
    (minimum detectable difference at its n, 80 % power, α = 0.05) and ``need`` (seeds for the stated effect);
    ``room`` the calibration rule-2 check of every cell the row interprets; ``equivalence`` the TOSTs of its
    "as close as the chaos floor" statements; ``stage`` labels a two-stage follow-up."""

    claim: str
    figure: str
    paper: str
    ours: str = "—"
    baselines: str = "—"
    verdict: str = NOT_RUN
    reason: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    test: str = ""
    p: float | None = None
    p_holm: float | None = None
    mde: str = "—"
    need: str = "—"
    room: str = ""
    equivalence: str = ""
    stage: str = ""


#: Columns of a figure CSV that tell its conditions apart (the seeds of one are pooled): a condition whose rows
#: carry more than one ``config_fingerprint`` is refused, as aggregate/report do (issue 17).
CONDITION_COLUMNS = ("dataset", "tau", "num_classes", "batch_size", "lr_rule", "optimizer", "label_groups", "alpha")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a figure CSV with numbers parsed (empty cells → ``None``); ``[]`` if the file is missing.
    Rows of one condition (:data:`CONDITION_COLUMNS`) from different configs (``config_fingerprint``
    column, where present) are refused: one line, :class:`~repalign.analysis.aggregate.MixedConfigError`."""
    if not path.exists():
        return []
    from repalign.analysis.aggregate import check_one_config

    rows = read_summary(path)
    check_one_config(rows, [c for c in CONDITION_COLUMNS if rows and c in rows[0]], f"verdicts {str(path)!r}")
    return rows


def judge(diffs: Sequence[Summary | None]) -> tuple[str, str]:
    """Verdict from the paired differences a claim needs (each positive on the paper's side)."""
    if not diffs or any(d is None for d in diffs):
        return INCONCLUSIVE, "a comparison has no common seeds"
    if any(d.lo is None for d in diffs):  # type: ignore[union-attr]
        return INCONCLUSIVE, "one seed: no interval"
    if any(d.hi < 0 for d in diffs):  # type: ignore[operator,union-attr]
        return NOT_REPRODUCED, "an interval lies entirely on the other side of 0"
    if all(d.lo > 0 for d in diffs):  # type: ignore[operator,union-attr]
        return REPRODUCED, "every interval lies above 0"
    return INCONCLUSIVE, "an interval contains 0: the seeds cannot decide"


def _m(values: Any) -> Summary | None:
    """Summary of the values (a mapping's values or a sequence), ``None`` when there are none."""
    vals = [x for x in (values.values() if isinstance(values, Mapping) else values) if x is not None]
    return summarize(vals) if vals else None


def _s(x: Summary | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x.text(digits)}"


def _d(a: Mapping[Any, float], b: Mapping[Any, float]) -> dict[Any, float]:
    """Per-seed ``a[s] − b[s]`` over the seeds both have."""
    return {k: a[k] - b[k] for k in a if k in b and a[k] is not None and b[k] is not None}


def _final(rows: Sequence[Mapping[str, Any]], metric: str = METRIC) -> tuple[dict, dict]:
    vals, base, _ = pair_values(rows, metric, SPLIT, LAYER)
    return vals, base


def _by(rows: Sequence[Mapping[str, Any]], key: str) -> dict[Any, list[Mapping[str, Any]]]:
    out: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get(key) is not None:
            out.setdefault(r[key], []).append(r)
    return out


def _refs(vals: Mapping[tuple[str, str], Mapping[Any, float]], base: Mapping[Any, float]) -> str:
    parts = []
    for name, pair in (("chaos floor", ("cl", "cl_eps")), ("noise floor (data)", ("cl", "cl_data")),
                       ("noise floor (seed)", ("cl", "cl_seed"))):
        if pair in vals:
            parts.append(f"{name} {_s(_m(vals[pair]))}")
    if base:
        parts.append(f"untrained {_s(_m(base))}")
    return "; ".join(parts) or "—"


def _primary(v: Verdict, comps: Sequence[Comparison]) -> None:
    """Set the row's primary test from the comparisons its verdict needs: one → its paired t-test; several →
    the intersection–union test (every one must hold: p = the largest p), whose MDE and seeds-needed are those
    of the binding comparison."""
    ps = [c.p for c in comps]
    if not comps or any(p is None for p in ps):
        return
    v.p = max(ps)  # type: ignore[type-var]
    bind = comps[ps.index(v.p)]
    v.test = (f"paired t: {bind.label}" if len(comps) == 1 else
              f"intersection–union of {len(comps)} paired t-tests ({', '.join(c.label for c in comps)}); "
              f"binding: {bind.label}")
    s = bind.summary
    m = mde(s.std, s.n, ALPHA, POWER) if s is not None and s.std is not None else None  # type: ignore[union-attr]
    need = seeds_needed(s.std, bind.effect, ALPHA, POWER) if s is not None and s.std is not None else None  # type: ignore[union-attr]
    if m is not None:
        v.mde = f"{m:.3g}{bind.unit} at n = {s.n}"  # type: ignore[union-attr]
        v.need = f"{need if need else '> 100000'} for {bind.effect:g}{bind.unit}"


def _room(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], name: Any) -> tuple[str, list[str]]:
    """Calibration rule 2 for every cell (setting of ``keys``) of ``rows``: the text and the cells without room."""
    cells = setting_rows([r for r in rows if r.get("kind") in ("align", "baseline")], list(keys))
    bits, lacking = [], []
    for c in sorted(cells, key=lambda c: tuple((0, c[k], "") if isinstance(c.get(k), (int, float)) else (1, 0, str(c.get(k)))
                                               for k in keys)):
        label = name(c)
        sep = c["separation"]
        if sep is None or sep.lo is None:
            lacking.append(label)
            bits.append(f"{label}: no floors/interval")
            continue
        ok = c["rule2_room"]
        bits.append(f"{label} {sep.lo:.3f}{' ✓' if ok else ' ✗'}")
        if not ok:
            lacking.append(label)
    text = f"room (rule 2: lower end of chaos − noise ≥ {ROOM:g}): " + ", ".join(bits)
    if lacking:
        text += f" — no room in {', '.join(lacking)}"
    return text, lacking


def _chaos_sentence(nscl: Mapping[Any, float], chaos: Mapping[Any, float], noise: Mapping[Any, float],
                    what: str = "CL–NSCL") -> tuple[str, Tost | None]:
    """The only sentences allowed about an arm and the chaos floor: TOST-equivalent within ±½·band, decidably
    below/above, or not decidably different."""
    d = _d(nscl, chaos)
    band = paired_difference(chaos, noise)
    ds = _m(d)
    if ds is None or ds.lo is None:
        return f"{what} − chaos floor: —", None
    if band is None or not band.mean > 0:
        return f"{what} − chaos floor {_s(ds)} (no chaos − noise band: no margin)", None
    margin = EQUIV_FRACTION * band.mean
    t = tost(list(d.values()), margin)
    head = f"{what} − chaos floor {_s(ds)}"
    if t is not None and t.equivalent(ALPHA):
        return f"{head}: equivalent to the chaos floor within ±{margin:.3f} (½ band; TOST p = {t.p:.2g})", t
    side = ("decidably below the chaos floor" if ds.hi < 0 else "decidably above the chaos floor" if ds.lo > 0  # type: ignore[operator]
            else "not decidably different from the chaos floor")
    return f"{head}: {side}, not shown equivalent within ±{margin:.3f} (½ band; TOST p = {t.p:.2g})", t  # type: ignore[union-attr]


def claim_nscl_most_aligned(rows: Sequence[Mapping[str, Any]]) -> Verdict:
    v = Verdict("NSCL is the objective most aligned with CL", "fig2",
                "CIFAR-100 / Tiny / mini, ResNet-50, epoch ≈ 1200: NSCL highest except mini CKA at the end "
                "(CE 0.61–0.65 vs NSCL 0.55–0.58)", key="1")
    if not rows:
        return v
    vals, base = _final(rows)
    nscl = vals.get(("cl", "nscl"), {})
    c_scl = Comparison("NSCL − SCL", _d(nscl, vals.get(("cl", "scl"), {})))
    c_ce = Comparison("NSCL − CE", _d(nscl, vals.get(("cl", "ce"), {})))
    d_scl, d_ce = c_scl.summary, c_ce.summary
    v.ours = (f"CL–NSCL {_s(_m(nscl))}, CL–SCL {_s(_m(vals.get(('cl', 'scl'), {})))}, "
              f"CL–CE {_s(_m(vals.get(('cl', 'ce'), {})))}; NSCL − SCL {_s(d_scl)}, NSCL − CE {_s(d_ce)} "
              f"(paired, n = {len(nscl)})")
    v.baselines = _refs(vals, base)
    v.room, _ = _room(rows, [], lambda c: "the regime cell")
    v.verdict, v.reason = judge([d_scl, d_ce])
    _primary(v, [c_scl, c_ce])
    v.numbers = {"nscl_minus_scl": d_scl and d_scl.as_dict(), "nscl_minus_ce": d_ce and d_ce.as_dict()}
    return v


def claim_above_noise(rows: Sequence[Mapping[str, Any]]) -> Verdict:
    v = Verdict("CL–NSCL alignment exceeds training noise (above the noise floor)", "fig2",
                "not measured in the paper (no controls); its explanation is shared randomness + a small loss gap",
                key="2")
    if not rows:
        return v
    vals, base = _final(rows)
    nscl = vals.get(("cl", "nscl"), {})
    chaos, noise = vals.get(("cl", "cl_eps"), {}), vals.get(("cl", "cl_data"), {})
    c_noise = Comparison("NSCL − noise floor", _d(nscl, noise))
    d_noise, d_chaos = c_noise.summary, paired_difference(nscl, chaos)
    sentence, t = _chaos_sentence(nscl, chaos, noise)
    v.ours = f"CL–NSCL − noise floor {_s(d_noise)}; {sentence} (paired)"
    v.baselines = _refs(vals, base)
    v.room, lacking = _room(rows, [], lambda c: "the regime cell")
    v.equivalence = sentence
    v.verdict, v.reason = judge([d_noise])
    if v.verdict == REPRODUCED:
        v.reason = "above the noise floor (interval above 0)"
    if t is not None:
        v.reason += "; " + sentence.split(": ", 1)[1]
    if lacking:
        v.reason += "; the cell has no room (rule 2), so where NSCL sits between the floors is not interpreted"
    v.numbers = {"nscl_minus_noise": d_noise and d_noise.as_dict(), "nscl_minus_chaos": d_chaos and d_chaos.as_dict(),
                 "tost_chaos": t and {"margin": t.margin, "p": t.p, "equivalent": t.equivalent(ALPHA)}}
    _primary(v, [c_noise])
    return v


def _fmt(k: Any) -> str:
    return f"{k:g}" if isinstance(k, (int, float)) else str(k)


def _trend(rows: Sequence[Mapping[str, Any]], key: str, claim: str, fig: str, paper: str, label: str,
           vkey: str = "") -> Verdict:
    """A trend over every condition of ``key``: per seed the OLS slope of CL–NSCL over log10(condition), and the
    same slope of CL–NSCL's margin over the noise floor. The rule is symmetric: the raw slope decides a direction
    only when the margin's slope decides the same direction; a direction of the data alone (raw decided, margin
    not) is inconclusive either way."""
    v = Verdict(claim, fig, paper, key=vkey)
    rows = [r for r in rows if r.get("kind") in ("align", "baseline")]
    groups = _by(rows, key)
    if len(groups) < 2:
        return v
    lo_k, hi_k = min(groups), max(groups)
    per: dict[Any, dict[Any, float]] = {}
    margin: dict[Any, dict[Any, float]] = {}
    bits, eq = [], []
    for k in sorted(groups):
        vals, base = _final(groups[k])
        per[k] = dict(vals.get(("cl", "nscl"), {}))
        noise, chaos = vals.get(("cl", "cl_data"), {}), vals.get(("cl", "cl_eps"), {})
        margin[k] = _d(per[k], noise)
        bits.append(f"{label} = {_fmt(k)}: {_s(_m(per[k]))} (noise floor "
                    f"{_s(_m(noise))})" if per[k] else f"{label} = {_fmt(k)}: —")
        if per[k] and chaos:
            eq.append((k, _chaos_sentence(per[k], chaos, noise, f"CL–NSCL({label} = {_fmt(k)})")[0]))
    v.room, lacking = _room(rows, [key], lambda c: f"{label} = {_fmt(c[key])}")
    v.equivalence = "; ".join(s + (" [no room: not interpreted]" if f"{label} = {_fmt(k)}" in lacking else "")
                              for k, s in eq)
    d_raw = paired_difference(per[hi_k], per[lo_k])
    c_raw = Comparison(f"slope of CL–NSCL over log10 {label}", per_seed_slopes(per, math.log10), " /decade",
                       EFFECT_SLOPE)
    c_ctl = Comparison(f"slope of the margin over the noise floor over log10 {label}",
                       per_seed_slopes(margin, math.log10), " /decade", EFFECT_SLOPE)
    s_raw, s_ctl = c_raw.summary, c_ctl.summary
    v.ours = ("; ".join(bits) + f". Per-seed slope over all {len(groups)} conditions (per decade of {label}) "
              f"{_s(s_raw)}; end points {label} = {_fmt(hi_k)} − {_fmt(lo_k)} {_s(d_raw)}")
    v.baselines = (f"slope of the margin over the noise floor {_s(s_ctl)}; untrained "
                   f"{_s(_m([x for k in groups for x in _final(groups[k])[1].values()]))}")
    raw_v, raw_r = judge([s_raw])
    ctl_v = judge([s_ctl])[0] if s_ctl is not None else INCONCLUSIVE
    if raw_v in (REPRODUCED, NOT_REPRODUCED) and ctl_v == raw_v:
        word = "above" if raw_v == REPRODUCED else "below"
        v.verdict, v.reason = raw_v, f"the slope and the slope of the margin over the noise floor both lie {word} 0"
    elif raw_v in (REPRODUCED, NOT_REPRODUCED):
        up = raw_v == REPRODUCED
        v.verdict = INCONCLUSIVE
        v.reason = (f"CL–NSCL {'rises' if up else 'falls'}, but its margin over the noise floor does not "
                    f"{'rise' if up else 'fall'} decidably: the trend may belong to the data, not the objective")
    else:
        v.verdict, v.reason = raw_v, raw_r
    if lacking:
        v.reason += f"; no room in {', '.join(lacking)} (floors not interpreted there)"
    _primary(v, [c_raw, c_ctl])
    d_ctl = paired_difference(margin[hi_k], margin[lo_k])
    v.numbers = {"raw": d_raw and d_raw.as_dict(), "slope": s_raw and s_raw.as_dict(),
                 "slope_over_noise": s_ctl and s_ctl.as_dict(), "over_noise": d_ctl and d_ctl.as_dict(),
                 "lo": lo_k, "hi": hi_k, "no_room": lacking}
    return v


def claim_grows_with_c(rows: Sequence[Mapping[str, Any]]) -> Verdict:
    v = _trend(rows, "num_classes", "CL–NSCL alignment grows with the number of classes C (class subsets)", "fig3",
               "grows with C on mini / Tiny / ImageNet (e.g. Tiny late: C = 5–10 ≈ 0.55–0.75, C = 200 ≈ 0.9)", "C",
               "3a")
    if v.verdict != NOT_RUN:
        v.reason += "; confounded: a class subset changes the data and the number of steps with C"
    return v


def claim_grows_with_tau(rows: Sequence[Mapping[str, Any]]) -> Verdict:
    return _trend(rows, "tau", "CL–NSCL alignment grows with the temperature τ", "fig4",
                  "epoch 300, test CKA τ = 0.1 / 0.5 / 1.0: CIFAR-100 0.855 / 0.949 / 0.968, mini 0.774 / 0.944 / 0.960",
                  "τ", "4")


def claim_batch_rule(rows: Sequence[Mapping[str, Any]]) -> Verdict:
    v = Verdict("B × LR rule: under the linear rule alignment falls with B; under √B it rises", "fig5",
                "mini, epoch 200, test CKA: linear 0.942 / 0.918 / 0.868 at B = 256 / 512 / 1024; "
                "√B 0.976 / 0.982 / 0.979 (LARS)", key="5")
    if not rows:
        return v
    rows = [r for r in rows if r.get("kind") in ("align", "baseline")]
    bits, needed, refs, no_room, comps, eq, room_bits = [], [], [], [], [], [], []
    for opt in sorted({r.get("optimizer") for r in rows if r.get("optimizer")}, key=lambda o: o != "lars"):
        sub = [r for r in rows if r.get("optimizer") == opt]
        for rule, sign in (("linear", -1), ("sqrt", +1)):
            by_b = _by([r for r in sub if r.get("lr_rule") == rule], "batch_size")
            if len(by_b) < 2:
                continue
            b_lo, b_hi = min(by_b), max(by_b)
            a = dict(_final(by_b[b_hi])[0].get(("cl", "nscl"), {}))
            b = dict(_final(by_b[b_lo])[0].get(("cl", "nscl"), {}))
            dd = _d(a, b) if sign > 0 else _d(b, a)
            d = _m(dd)
            word = "rise" if sign > 0 else "fall"
            bits.append(f"{opt.upper()} {rule}: {word} B {b_lo}→{b_hi} {_s(d)}")
            v.numbers[f"{opt}_{rule}"] = d and d.as_dict()
            if opt == "lars":
                needed.append(d)
                comps.append(Comparison(f"LARS {rule} {word}", dd))
            # each cell's floors and whether it has room: the calibration rule's own per-setting check
            cells = {s["batch_size"]: s for s in setting_rows([r for r in sub if r.get("lr_rule") == rule],
                                                              ["batch_size"])}
            lo_c, hi_c = cells[b_lo], cells[b_hi]
            refs.append(f"{opt.upper()} {rule}: chaos floor {_s(lo_c['chaos_floor'])} → {_s(hi_c['chaos_floor'])}, "
                        f"noise floor {_s(lo_c['noise_floor'])} → {_s(hi_c['noise_floor'])} (B {b_lo} → {b_hi})")
            no_room += [(opt, f"{opt.upper()} {rule} B = {bb}") for bb in (b_lo, b_hi)
                        if cells[bb]["separation"] is not None and not cells[bb]["rule2_room"]]
            for bb in (b_lo, b_hi):
                name = f"{opt.upper()} {rule} B = {bb}"
                sep = cells[bb]["separation"]
                room_bits.append(f"{name} {sep.lo:.3f}" if sep is not None and sep.lo is not None else f"{name} —")
                vals = _final(by_b[bb])[0]
                if (opt, name) in no_room:
                    eq.append(f"{name}: no room (not interpreted)")
                elif vals.get(("cl", "nscl")) and vals.get(("cl", "cl_eps")):
                    eq.append(_chaos_sentence(vals[("cl", "nscl")], vals[("cl", "cl_eps")],
                                              vals.get(("cl", "cl_data"), {}), f"CL–NSCL({name})")[0])
    if not bits:
        return v
    v.ours = "; ".join(bits) + " (paired; positive = the paper's direction)"
    v.baselines = "; ".join(refs)
    if no_room:
        v.baselines += (f". No room (chaos − noise floor interval not ≥ {ROOM:g}, calibration rule 2) in: "
                        + ", ".join(label for _, label in no_room))
    v.room = f"room (rule 2: lower end of chaos − noise ≥ {ROOM:g}): " + ", ".join(room_bits)
    v.equivalence = "; ".join(eq)
    v.verdict, v.reason = judge(needed) if needed else (INCONCLUSIVE, "no LARS runs")
    v.reason += " (verdict on LARS, the paper's optimiser)"
    lars_lacking = [label for opt, label in no_room if opt == "lars"]
    if lars_lacking:
        v.reason += ("; no room in " + ", ".join(lars_lacking) + " (chaos and noise floor not separated by "
                     f"{ROOM:g}): a difference of the objective cannot show there")
    _primary(v, comps)
    return v


def claim_weights_diverge(rows: Sequence[Mapping[str, Any]]) -> Verdict:
    v = Verdict("Weights diverge while representations stay aligned", "fig1",
                "teaser: weight-space angle 85.7°, representation angle 27.8° (dataset/epoch unspecified)", key="6")
    if not rows:
        return v
    w, _ = _final(rows, "weight_angle_deg")
    r, _ = _final(rows, "repr_angle_deg")
    wn, rn = w.get(("cl", "nscl"), {}), r.get(("cl", "nscl"), {})
    c = Comparison("weight angle − representation angle", _d(wn, rn), "°", EFFECT_DEG)
    d = c.summary
    v.ours = (f"CL–NSCL weight angle {_s(_m(wn), 1)}°, representation angle "
              f"{_s(_m(rn), 1)}°; difference {_s(d, 1)}° (paired)") if wn else "—"
    chaos_w = w.get(("cl", "cl_eps"), {})
    noise_w = w.get(("cl", "cl_data"), {})
    _, base = _final(rows, "repr_angle_deg")
    parts = [f"weight angle of the chaos twin (cl vs cl_eps) {_s(_m(chaos_w), 1)}°" if chaos_w else "",
             f"of the noise twin (cl vs cl_data) {_s(_m(noise_w), 1)}°" if noise_w else "",
             f"representation angle of two untrained networks {_s(_m(base), 1)}°" if base else ""]
    v.baselines = "; ".join(p for p in parts if p) or "—"
    if any(isinstance(x.get(METRIC), (int, float)) for x in rows):
        v.room, _ = _room(rows, [], lambda c: "the fig1 cell (CKA floors)")
    v.verdict, v.reason = judge([d])
    _primary(v, [c])
    v.numbers = {"weight_minus_repr_deg": d and d.as_dict()}
    return v


def claim_loss_gap(rows: Sequence[Mapping[str, Any]]) -> Verdict:
    v = Verdict("0 ≤ L_DCL − L_NSCL ≤ log(1 + e^{2/τ}·n_max/(N − n_max)) on every batch", "lossgap",
                "predecessor, CIFAR-100: gap 0.7–0.8 at C = 2 down to 0.01 at C = 100, below the bound", key="7")
    rows = [r for r in rows if isinstance(r.get("gap"), (int, float)) and isinstance(r.get("bound"), (int, float))]
    if not rows:
        return v
    ok = sum(1 for r in rows if -1e-6 <= r["gap"] <= r["bound"] + 1e-6)
    worst = max((r["gap"] / r["bound"] for r in rows if r["bound"] > 0), default=math.nan)
    v.ours = f"held on {ok} of {len(rows)} logged batches; largest gap / bound {worst:.3f}"
    v.baselines = "a bound (no control needed): a single violation refutes it"
    v.verdict = REPRODUCED if ok == len(rows) else NOT_REPRODUCED
    v.reason = "every batch within [0, bound]" if ok == len(rows) else f"{len(rows) - ok} batches outside [0, bound]"
    v.test = "count of batches within [0, bound] (a deterministic check, not in the Holm family)"
    v.numbers = {"ok": ok, "n": len(rows), "max_ratio": worst}
    return v


# ---------------------------------------------------------------------------- issue 18's designs
_NUM = re.compile(r"(\d+(?:[.p]\d+)?)$")


def _condition(r: Mapping[str, Any], column: str, plain: float | None) -> float | None:
    """The design's condition of an align row's X arm: the ``column`` cell (``label_groups`` / ``alpha``) when
    present, else the number ending the arm's name (``nscl_k10`` → 10, ``nscl_a0p25`` / ``alpha_0.25`` → 0.25),
    else ``plain`` for a plain ``nscl`` arm."""
    val = r.get(column)
    if isinstance(val, (int, float)) and not isinstance(val, bool):
        return float(val)
    arm = str(r.get("arm_b") or "")
    m = _NUM.search(arm)
    if m and arm != "cl_eps":
        return float(m.group(1).replace("p", "."))
    return plain if arm == "nscl" else None


def _design(rows: Sequence[Mapping[str, Any]], column: str, plain: float | None, metric: str = METRIC
            ) -> tuple[dict[float, dict[Any, float]], dict[float, str], dict, dict]:
    """``(values[cond][seed], arm name of each condition, all pair values, untrained)`` at the last evaluation;
    the X arms are the objective pairs (no ``control``) with arm_a = cl."""
    rows = [r for r in rows if r.get("kind") in ("align", "baseline")]
    vals, base, ctrl = pair_values(rows, metric, SPLIT, LAYER)
    cond_of: dict[str, float] = {}
    for r in rows:
        if r.get("kind") == "align" and r.get("arm_a") == "cl" and not r.get("control"):
            c = _condition(r, column, plain)
            if c is not None:
                cond_of.setdefault(r["arm_b"], c)
    out = {c: dict(vals.get(("cl", arm), {})) for arm, c in cond_of.items() if ("cl", arm) in vals}
    return out, {c: arm for arm, c in cond_of.items()}, vals, base


def _loss_gaps(rows: Sequence[Mapping[str, Any]], gap_rows: Sequence[Mapping[str, Any]], column: str = "",
               arm_of: Mapping[float, str] | None = None) -> dict[str, dict[Any, float]]:
    """Mean loss gap per X arm and seed, averaged over every row given (all logged batches): the ``loss_gap``
    column of align rows, else the rows of the figure's ``<fig>_lossgap.csv`` (columns seed, gap or loss_gap, and
    the arm as ``arm_b`` / ``arm`` — or, when the rows carry the design's ``column`` (``label_groups`` /
    ``alpha``), the X arm of that condition via ``arm_of``)."""
    acc: dict[str, dict[Any, list[float]]] = {}
    for r in rows:
        if r.get("kind") == "align" and isinstance(r.get("loss_gap"), (int, float)) and r.get("arm_a") == "cl":
            acc.setdefault(r["arm_b"], {}).setdefault(r.get("seed", 0), []).append(float(r["loss_gap"]))
    if not acc:
        for r in gap_rows:
            g = r.get("gap", r.get("loss_gap"))
            if not isinstance(g, (int, float)):
                continue
            c = r.get(column) if column else None
            if isinstance(c, (int, float)) and arm_of and float(c) in arm_of:
                arm = arm_of[float(c)]
            else:
                arm = r.get("arm_b") or r.get("arm")
            if arm:
                acc.setdefault(str(arm), {}).setdefault(r.get("seed", 0), []).append(float(g))
    return {a: {s: sum(v) / len(v) for s, v in per.items()} for a, per in acc.items()}


def claim_granularity(rows: Sequence[Mapping[str, Any]]) -> Verdict:
    """Claim 3, second design: NSCL on the same images with the labels coarsened to K superclasses (CL, its
    floors and every batch identical across K): per seed the OLS slope of CL–NSCL(K) over log10 K."""
    v = Verdict("CL–NSCL alignment grows with the number of label classes K (same images, same steps)",
                GRANULARITY, "grows with C (the paper varies C through class subsets only)", key="3b")
    if not rows:
        v.reason = "not run yet: the granularity figure (issue 18) has no committed CSV"
        return v
    C = next((r.get("num_classes") for r in rows if isinstance(r.get("num_classes"), (int, float))), None)
    per, arms, vals, base = _design(rows, "label_groups", C)
    if len(per) < 2:
        v.verdict, v.reason = INCONCLUSIVE, "fewer than two label granularities in the CSV"
        return v
    c = Comparison("slope of CL–NSCL(K) over log10 K", per_seed_slopes(per, math.log10), " /decade", EFFECT_SLOPE)
    v.ours = ("; ".join(f"K = {_fmt(k)}: {_s(_m(per[k]))}" for k in sorted(per)) +
              f". Per-seed slope over all {len(per)} K (per decade of K) {_s(c.summary)}")
    v.baselines = _refs(vals, base) + " (identical for every K: CL and its floors do not see labels)"
    v.room, lacking = _room(rows, [], lambda _c: "the granularity cell")
    chaos, noise = vals.get(("cl", "cl_eps"), {}), vals.get(("cl", "cl_data"), {})
    v.equivalence = "; ".join(_chaos_sentence(per[k], chaos, noise, f"CL–NSCL(K = {_fmt(k)})")[0] for k in sorted(per)
                              if chaos) + (" [no room: not interpreted]" if lacking else "")
    v.verdict, v.reason = judge([c.summary])
    if lacking:
        v.reason += "; the cell has no room (rule 2)"
    _primary(v, [c])
    v.numbers = {"slope": c.summary and c.summary.as_dict(), "K": sorted(per)}
    return v


def claim_mechanism(designs: Sequence[tuple[str, Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]],
                    confounded: str = "") -> Verdict:
    """The mechanism (new row): within each design (granularity, α), per seed the OLS slope of CKA(cl, X) over X's
    measured mean loss gap across the X arms; the paper's side is a negative slope (alignment falls as the loss
    gap grows), so the tested statistic is −slope. The theorem's structure (‖Σ_CL − Σ_X‖_F vs the loss gap:
    slope, monotone, log–log slope) is reported beside it. ``designs``: ``(name, figure rows, loss-gap rows)``."""
    from repalign.analysis.structure import fit_relation, relation_text

    v = Verdict("Alignment falls as the loss gap grows (the mechanism; Thm 1's structure)", "granularity, alpha",
                "Thm 1: ‖Σ_CL − Σ_X‖_F ≲ loss-gap factor × f(S_T); no figure varies the gap at fixed data", key="8")
    comps, bits, struct = [], [], []
    for name, rows, gap_rows in designs:
        if not rows:
            continue
        column, plain = ("label_groups", None) if name == GRANULARITY else ("alpha", 1.0)
        per, arms, _vals, _base = _design(rows, column, plain)
        gaps = _loss_gaps(rows, gap_rows, column, arms)
        simg = _design(rows, column, plain, "sim_gap")[0]
        pts_cka = {arms[c]: {s: (gaps[arms[c]][s], y) for s, y in per[c].items() if s in gaps.get(arms[c], {})}
                   for c in per}
        pts_sim = {arms[c]: {s: (gaps[arms[c]][s], y) for s, y in simg.get(c, {}).items()
                             if s in gaps.get(arms[c], {})} for c in per}
        if not any(pts_cka.values()):
            bits.append(f"{name}: no loss-gap column for its arms")
            continue
        f_cka = fit_relation(pts_cka)
        by_seed: dict[Any, list[tuple[float, float]]] = {}
        for arm_pts in pts_cka.values():
            for s, xy in arm_pts.items():
                by_seed.setdefault(s, []).append(xy)
        neg = {}
        for s, pts in by_seed.items():
            if len({x for x, _ in pts}) >= 2:
                xs = [x for x, _ in pts]
                ys = [y for _, y in pts]
                mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
                neg[s] = -sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x in xs)
        comps.append(Comparison(f"{name}: −slope of CKA over the loss gap", neg, " per nat", ROOM))
        bits.append(f"{name}: CKA vs loss gap per-seed slope {_s(f_cka['slope'])} over {f_cka['n_arms']} arms")
        struct.append(f"{name}: " + relation_text(fit_relation(pts_sim)))
    if not comps:
        v.reason = ("not run yet: neither the granularity nor the alpha figure (issue 18) has a committed CSV"
                    if not bits else "; ".join(bits))
        if confounded:
            v.baselines = confounded
        return v
    v.ours = "; ".join(bits) + " (negative = the paper's side)"
    v.baselines = "theorem's structure: " + "; ".join(struct) + (f". {confounded}" if confounded else "")
    v.verdict, v.reason = judge([c.summary for c in comps])
    v.reason += f" (both designs needed: {len(comps)} of 2 present)" if len(comps) < 2 else " (both designs)"
    if len(comps) < 2 and v.verdict == REPRODUCED:
        v.verdict, v.reason = INCONCLUSIVE, "only one design run so far: " + v.reason
    _primary(v, comps)
    return v


def _confounded_structure(runs: Path) -> str:
    """The theorem's structure on the designs that exist now (fig3/fig4 theory CSVs, the lossgap figure):
    labelled confounded — C and τ change the data, steps or loss scale together with the gap."""
    from repalign.analysis.structure import fit_relation, growth_over_training, relation_text

    parts = []
    th3 = read_rows(Path(runs) / "fig3" / "fig3_theory.csv")
    lg = read_rows(Path(runs) / "lossgap" / "lossgap_vs_C.csv")
    if th3 and lg:
        gap_c: dict[float, list[float]] = {}
        for r in lg:
            gap_c.setdefault(float(r["num_classes"]), []).append(float(r["gap"]))
        last: dict[tuple, dict] = {}
        for r in th3:
            k = (r["num_classes"], r["seed"])
            if k not in last or r["step"] > last[k]["step"]:
                last[k] = r
        pts: dict[Any, dict[Any, tuple[float, float]]] = {}
        for (c, s), r in last.items():
            if float(c) in gap_c:
                pts.setdefault(f"C={c}", {})[s] = (sum(gap_c[float(c)]) / len(gap_c[float(c)]), float(r["sim_gap"]))
        if len(pts) >= 2:
            parts.append("fig3 (confounded: C changes the data, the steps and the loss gap together, and ‖Σ‖_F grows "
                         "with the evaluation set, 10 test images per class; loss gap from the lossgap figure at "
                         "τ = 1, seed means) — " + relation_text(fit_relation(pts)))
    for fig, key in (("fig3", "num_classes"), ("fig4", "tau")):
        th = read_rows(Path(runs) / fig / f"{fig}_theory.csv")
        if th:
            g = growth_over_training(th, key)
            parts.append(f"{fig}: log–log slope of ‖Σ_CL − Σ_NSCL‖_F over S_T through training, per {key}: "
                         + ", ".join(f"{_fmt(k)} {_s(s, 2)}" for k, s in sorted(g.items()) if s is not None))
    return "Existing designs (not at fixed data): " + "; ".join(parts) if parts else ""


def _holm(vs: Sequence[Verdict]) -> None:
    adj = holm([v.p for v in vs])
    for v, a in zip(vs, adj):
        v.p_holm = a


def verdicts(runs: Path, follow_up: Mapping[str, Path] | None = None) -> list[Verdict]:
    """Every claim, from the figure outputs under ``runs`` (``runs/FIG/FIG.csv``), with Holm-adjusted p-values
    over the rows that have a primary test. ``follow_up``: ``{fig: folder}`` replaces a figure's CSV by a
    two-stage follow-up's (e.g. fig2 at 16 seeds re-using the first look's seeds 0–3); its rows are labelled."""
    rd = lambda fig: read_rows(Path(runs) / fig / f"{fig}.csv")  # noqa: E731
    follow_up = dict(follow_up or {})
    fig2 = read_rows(Path(follow_up["fig2"]) / "fig2.csv") if "fig2" in follow_up else rd("fig2")
    gran, alpha = rd(GRANULARITY), rd(ALPHA_FIG)

    def gaps(fig: str) -> list[dict[str, Any]]:
        for name in (f"{fig}_lossgap.csv", f"{fig}_gap.csv"):
            if (Path(runs) / fig / name).exists():
                return read_rows(Path(runs) / fig / name)
        return []

    vs = [claim_nscl_most_aligned(fig2), claim_above_noise(fig2), claim_grows_with_c(rd("fig3")),
          claim_granularity(gran), claim_grows_with_tau(rd("fig4")), claim_batch_rule(rd("fig5")),
          claim_weights_diverge(rd("fig1")), claim_loss_gap(rd("lossgap")),
          claim_mechanism([(GRANULARITY, gran, gaps(GRANULARITY)), (ALPHA_FIG, alpha, gaps(ALPHA_FIG))],
                          _confounded_structure(Path(runs)))]
    if "fig2" in follow_up:
        n = vs[0].numbers.get("nscl_minus_scl", {}) or {}
        for v in vs[:2]:
            v.stage = (f"two-stage follow-up: {n.get('n', '?')} seeds, re-using the first look's 4 seeds "
                       "(declared before it ran; p-values not adjusted for the second look)")
    _holm(vs)
    return vs


def _p(p: float | None) -> str:
    return "—" if p is None else (f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}")


def markdown(vs: Sequence[Verdict]) -> str:
    """The verdict table (one row per claim) and a note on what is and is not corrected for multiplicity."""
    lines = ["| # | claim (figure) | paper | ours (test, layer h, linear CKA; mean [95 % CI]) | baselines; room | "
             "primary test: p raw / Holm | MDE (80 %, α = 0.05); seeds needed | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for i, v in enumerate(vs, 1):
        verdict = f"**{v.verdict}**" + (f" — {v.reason}" if v.reason else "")
        if v.stage:
            verdict += f" [{v.stage}]"
        ours = v.ours + (f". Chaos floor: {v.equivalence}" if v.equivalence and v.equivalence not in v.ours else "")
        base = v.baselines + (f"; {v.room}" if v.room else "")
        test = f"{v.test}: p = {_p(v.p)} / {_p(v.p_holm)}" if v.p is not None else (v.test or "—")
        need = f"{v.mde}; {v.need}" if v.p is not None else "—"
        cells = [v.key or str(i), f"{v.claim} ({v.figure})", v.paper, ours, base, test, need, verdict]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    m = sum(1 for v in vs if v.p is not None)
    lines += ["", f"Holm over the m = {m} primary tests of this table (one per row with a p-value; an intersection–"
              "union row needs every one of its tests and reports the largest p). Everything else — each cell's floors "
              "and TOSTs, z / RSA views, the per-evaluation `comparisons.csv` — is uncorrected and exploratory. "
              f"Equivalence to the chaos floor is claimed only where a TOST at ±{EQUIV_FRACTION:g} × the cell's "
              "chaos − noise band succeeds (α = 0.05); otherwise a sentence says \"not decidably different\". "
              f"Seeds needed: for {EFFECT_CKA:g} CKA (differences), {EFFECT_SLOPE:g} CKA per decade (trends), "
              f"{EFFECT_DEG:g}° (angles), 0.02 CKA per nat (mechanism)."]
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v).replace("|", "/")


def _load_text(load: Mapping[str, Any] | None, threads: int | None = None) -> str:
    """How busy the machine was while a figure was timed (``benchmarks/bench_figures.py`` samples the
    1-minute load average); the figure's own process accounts for about its thread count."""
    if not load:
        return "load not recorded: the time may include other jobs on the same cores"
    own = f"the run itself accounts for ≈ {threads}" if threads else "the run itself accounts for ≈ its threads"
    return f"1-min load average {load['mean']:.1f} on average, {load['max']:.1f} at most; {own}"


def figure_markdown(fig_dir: Path, seconds: float | None = None, load: Mapping[str, Any] | None = None,
                    threads: int | None = None) -> str:
    """The Findings and tables of one figure's ``reproduce.json`` as Markdown (for docs/figures/FIG.md);
    ``seconds``, ``load`` and ``threads`` come from ``benchmarks/results/figures-cpu.json``."""
    import json

    man = json.loads((Path(fig_dir) / "reproduce.json").read_text())
    out = []
    if seconds is not None:
        out.append(f"Measured: {seconds / 60:.1f} min on the 2-core machine ({_load_text(load, threads)}).\n")
    out.append("**Findings** (generated from the runs):\n")
    for g in man.get("findings", []):
        if g.get("label"):
            out.append(f"- *{g['label']}*")
        for it in g.get("items", []):
            out.append(("  - " if g.get("label") else "- ") + it["text"])
    out.append("")
    for t in man.get("tables", []):
        if t.get("paper"):
            continue
        out.append(f"**{t['title']}**\n")
        out.append("| " + " | ".join(_cell(h) for h in t["header"]) + " |")
        out.append("|" + "---|" * len(t["header"]))
        for r in t["rows"]:
            out.append("| " + " | ".join(_cell(c) for c in r) + " |")
        if t.get("note"):
            out.append(f"\n{t['note']}")
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repalign.experiments.verdicts", description=__doc__.splitlines()[0])
    ap.add_argument("runs", help="folder holding fig1/ … lossgap/ as written by benchmarks/bench_figures.py --out")
    ap.add_argument("--md", help="write the Markdown table here")
    ap.add_argument("--follow-up", action="append", default=[], metavar="FIG=DIR",
                    help="use DIR/FIG.csv (a two-stage follow-up, e.g. fig2=runs/fig2-16seeds) instead of RUNS/FIG")
    args = ap.parse_args(argv)
    follow = {}
    for item in args.follow_up:
        fig, sep, d = item.partition("=")
        if not sep or not fig or not d:
            ap.error(f"--follow-up expects FIG=DIR, got {item!r}")
        follow[fig] = Path(d)
    from repalign.errors import UserError, one_line

    try:
        text = markdown(verdicts(Path(args.runs), follow))
    except UserError as e:  # e.g. a condition mixing configurations: one line, exit 2
        import sys

        print(f"repalign: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    if args.md:
        from repalign.training.checkpoint import write_atomic

        write_atomic(args.md, text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
