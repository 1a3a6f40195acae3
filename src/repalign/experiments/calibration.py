"""Calibration of the CPU-scale regime (issue 9): apply the selection rule of ``docs/calibration.md``
to a calibration sweep and pick a setting — without reading CL–NSCL, CL–SCL or CL–CE.

The rule, at the final evaluation (test split, layer h, linear CKA), over the seeds of each setting:

1. *The models learn*: mean over seeds of kNN(final) − kNN(step 0) ≥ ``min_knn_gain_scl`` for SCL and
   ≥ ``min_knn_gain_cl`` for CL.
2. *The measurement has room*: the paired difference CKA(cl, chaos) − CKA(cl, noise_data) has a 95 %
   interval whose lower end is ≥ ``min_separation``.
3. *The references are precise*: the 95 % interval of CKA(cl, chaos) has half-width ≤ ``max_half_width``.

Among the settings passing 1–3 the largest mean separation wins; settings within ``tie`` of the best
go to the cheapest (fewest optimiser steps). The objective pairs are reported only for the chosen
setting, after the choice (:func:`objective_rows`).

Command line: ``python -m repalign.experiments.calibration SWEEP_DIR [SWEEP_DIR ...] [--md FILE]``.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from repalign.analysis.aggregate import final_step, pair_values
from repalign.analysis.stats import paired_difference, summarize

__all__ = ["Rule", "setting_rows", "choose", "objective_rows", "markdown"]


@dataclass(frozen=True)
class Rule:
    min_knn_gain_scl: float = 0.05
    min_knn_gain_cl: float = 0.03
    min_separation: float = 0.02
    max_half_width: float = 0.03
    tie: float = 0.01
    reference: str = "cl"
    chaos: str = "cl_eps"
    noise: str = "cl_data"
    noise_seed: str = "cl_seed"


def _knn_gain(rows: Sequence[Mapping[str, Any]], arm: str) -> dict[Any, float]:
    by: dict[Any, dict[int, float]] = {}
    for r in rows:
        if r.get("kind") == "eval" and r.get("arm") == arm and isinstance(r.get("knn_acc"), (int, float)):
            by.setdefault(r.get("seed", 0), {})[int(r["step"])] = float(r["knn_acc"])
    return {s: v[max(v)] - v[min(v)] for s, v in by.items() if len(v) > 1}


def setting_rows(rows: Sequence[Mapping[str, Any]], group_keys: Sequence[str], rule: Rule = Rule(),
                 steps_of: Mapping[tuple, int] | None = None) -> list[dict[str, Any]]:
    """One row per setting (the values of ``group_keys``): the references, the kNN gains and the three
    rule checks. Reads no objective pair."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in group_keys), []).append(r)
    out = []
    for g, rr in groups.items():
        vals, base, _ctrl = pair_values(rr, "linear_cka", "test", "h")
        ref = rule.reference
        chaos = vals.get((ref, rule.chaos), {})
        noise = vals.get((ref, rule.noise), {})
        noise_seed = vals.get((ref, rule.noise_seed), {})
        gain_scl, gain_cl = _knn_gain(rr, "scl"), _knn_gain(rr, ref)
        sep = paired_difference(chaos, noise)
        sc = summarize(list(chaos.values())) if chaos else None
        row: dict[str, Any] = dict(zip(group_keys, g))
        row.update({
            "n_seeds": len(chaos), "final_step": max(final_step(rr).values(), default=None),
            "untrained": summarize(list(base.values())) if base else None,
            "chaos_floor": sc, "noise_floor": summarize(list(noise.values())) if noise else None,
            "noise_floor_seed": summarize(list(noise_seed.values())) if noise_seed else None,
            "knn_gain_scl": summarize(list(gain_scl.values())) if gain_scl else None,
            "knn_gain_cl": summarize(list(gain_cl.values())) if gain_cl else None,
            "separation": sep,
        })
        row["rule1_learns"] = bool(row["knn_gain_scl"] and row["knn_gain_cl"]
                                   and row["knn_gain_scl"].mean >= rule.min_knn_gain_scl
                                   and row["knn_gain_cl"].mean >= rule.min_knn_gain_cl)
        row["rule2_room"] = bool(sep is not None and sep.lo is not None and sep.lo >= rule.min_separation)
        row["rule3_precise"] = bool(sc is not None and sc.half_width is not None and sc.half_width <= rule.max_half_width)
        row["passes"] = row["rule1_learns"] and row["rule2_room"] and row["rule3_precise"]
        row["cost_steps"] = (steps_of or {}).get(g, row["final_step"])
        out.append(row)
    return out


def choose(settings: Sequence[Mapping[str, Any]], rule: Rule = Rule()) -> Mapping[str, Any] | None:
    """The chosen setting (largest separation among those passing; ties → fewest steps), or ``None``."""
    ok = [s for s in settings if s["passes"]]
    if not ok:
        return None
    best = max(s["separation"].mean for s in ok)
    near = [s for s in ok if s["separation"].mean >= best - rule.tie]
    return min(near, key=lambda s: (s["cost_steps"] or math.inf, -s["separation"].mean))


def closest(settings: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """When nothing passes: the setting passing most rules, then with the largest separation."""
    if not settings:
        return None
    return max(settings, key=lambda s: (int(s["rule1_learns"]) + int(s["rule2_room"]) + int(s["rule3_precise"]),
                                        s["separation"].mean if s["separation"] else -math.inf))


def objective_rows(rows: Sequence[Mapping[str, Any]], rule: Rule = Rule(),
                   objectives: Sequence[str] = ("nscl", "scl", "ce")) -> list[dict[str, Any]]:
    """After the choice: each objective pair's final CKA and its paired margins over the chaos and
    noise floors (rows of one setting)."""
    vals, _base, _ctrl = pair_values(rows, "linear_cka", "test", "h")
    ref = rule.reference
    out = []
    for o in objectives:
        v = vals.get((ref, o))
        if not v:
            continue
        out.append({"pair": f"{ref}–{o}", "cka": summarize(list(v.values())),
                    "over_chaos": paired_difference(v, vals.get((ref, rule.chaos), {})),
                    "over_noise": paired_difference(v, vals.get((ref, rule.noise), {}))})
    return out


def _t(s: Any) -> str:
    return "—" if s is None else s.text()


def markdown(settings: Sequence[Mapping[str, Any]], group_keys: Sequence[str]) -> str:
    """The stage table of docs/calibration.md."""
    head = [*(k.split(".")[-1] for k in group_keys), "n", "steps", "untrained", "chaos floor", "noise floor (data)",
            "noise floor (seed)", "ΔkNN SCL", "ΔkNN CL", "chaos − noise (paired)", "1 learns", "2 room", "3 precise"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in settings:
        cells = [*(str(s.get(k)) for k in group_keys), str(s["n_seeds"]), str(s["final_step"]), _t(s["untrained"]),
                 _t(s["chaos_floor"]), _t(s["noise_floor"]), _t(s["noise_floor_seed"]), _t(s["knn_gain_scl"]),
                 _t(s["knn_gain_cl"]), _t(s["separation"]), "✓" if s["rule1_learns"] else "✗",
                 "✓" if s["rule2_room"] else "✗", "✓" if s["rule3_precise"] else "✗"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from repalign.results import load_sweep_state, read_summary

    p = argparse.ArgumentParser(prog="python -m repalign.experiments.calibration",
                                description="Apply the calibration selection rule to sweep directories.")
    p.add_argument("sweeps", nargs="+", help="calibration sweep directories (summary.csv)")
    p.add_argument("--md", help="write the Markdown tables to this file")
    p.add_argument("--reveal", action="store_true",
                   help="also print the objective pairs of the chosen setting (only after the choice)")
    a = p.parse_args(argv)
    text = []
    for d in a.sweeps:
        keys = [k for k in load_sweep_state(d)["grid_keys"] if k != "seed"]
        rows = read_summary(Path(d) / "summary.csv")
        st = setting_rows(rows, keys)
        text += [f"### {d}", "", markdown(st, keys), ""]
        ch = choose(st)
        if ch is None:
            cl = closest(st)
            text.append("No setting passes rules 1–3. Closest: " +
                        (", ".join(f"{k}={cl[k]}" for k in keys) if cl else "—"))
        else:
            text.append("Chosen: " + ", ".join(f"{k}={ch[k]}" for k in keys) +
                        f" (separation {_t(ch['separation'])}).")
            if a.reveal:
                sel = [r for r in rows if all(r.get(k) == ch[k] for k in keys)]
                for o in objective_rows(sel):
                    text.append(f"- {o['pair']}: CKA {_t(o['cka'])}; over chaos floor {_t(o['over_chaos'])}; "
                                f"over noise floor {_t(o['over_noise'])}")
        text.append("")
    out = "\n".join(text)
    print(out)
    if a.md:
        Path(a.md).write_text(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
