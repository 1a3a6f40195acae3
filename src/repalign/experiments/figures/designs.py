"""Shared maker of issue 18's two loss-isolating designs (figures ``granularity`` and ``alpha``).

Both are one coupled run per seed: CL, its chaos floor ``cl_eps`` and noise floor ``cl_data``, and a
family of X arms that differ **only in their objective** (NSCL on coarsened labels / ``nscl_alpha`` at α),
on the same images, batches, views and initial weights. So across X the data, the steps and S_T are fixed
and only the loss gap ``L_DCL − L_X`` moves. The maker reads the sweep's summary rows and writes:

* ``<fig>.png`` — CL–X test CKA on h at the last evaluation against the condition (K or α), seeds joined;
  the floors as bands (mean, 95 % CI); ``<fig>.csv`` its align rows with the condition column;
* ``<fig>_gap.png`` — CL–X CKA against X's measured mean loss gap; ``<fig>_structure.png`` — the theorem's
  structure, ‖Σ_CL − Σ_X‖_F (``sim_gap``) against the measured loss gap; ``<fig>_lossgap.csv`` — per seed
  and X arm the mean (and first-step) gap over every logged batch, and the bound;
* ``<fig>_growth.png`` / ``<fig>_theory.csv`` — ‖Σ_CL − Σ_X‖_F against the cumulative learning rate S_T
  through training for every X (theory rows), with the per-seed log–log growth exponent per X;
* tables: final values per condition; the per-seed paired slope over the condition (the primary test of
  each figure's page, declared there in advance) and the relation fits, each mean [95 % CI].

The loss gap of an X arm is the mean of its ``lossgap`` rows (``L_DCL − L_X`` on the CL arm's embeddings
with X's labels, every logged batch; the trainer's ``_arm_gap_rows``); a plain NSCL arm has no row of its
own and takes the CL arm's row (the same quantity).
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping, Sequence

from repalign.analysis.aggregate import pair_values
from repalign.analysis.stats import per_seed_slopes, summarize
from repalign.analysis.structure import fit_relation, growth_over_training, relation_text
from repalign.analysis.theory import theory_rows
from repalign.experiments.figures.common import ALIGN_COLS, THEORY_COLS, Context, _align, _all, _findings
from repalign.report import plots
from repalign.results import read_rows

CHAOS_ARM = "cl_eps: {same_as: cl, init_perturb: 1.0e-6}"
NOISE_ARM = "cl_data: {same_as: cl, data_seed: 1002}"
SPLIT, LAYER, METRIC = "test", "h", "linear_cka"


def arms_override(x_arms: Mapping[str, str]) -> list[str]:
    """``arms=`` and ``pairs=`` overrides: CL, the X arms (name → YAML flow spec), the two floors."""
    arms = "{cl: {objective: cl}, " + ", ".join(f"{n}: {s}" for n, s in x_arms.items()) + f", {CHAOS_ARM}, {NOISE_ARM}}}"
    pairs = "[" + ", ".join(f"[cl, {n}]" for n in x_arms) + ", [cl, cl_eps], [cl, cl_data]]"
    return [f"arms={arms}", f"pairs={pairs}"]


#: CPU scales: one thread per run — the designs are many independent seeds, run as ``--processes 2`` × 1 thread
#: on 2 cores (processes × threads ≤ cores; a 2-thread run on shared cores stalls at every parallel region)
CPU_THREADS = "train.threads=1"


def _fmt(x: float) -> str:
    return f"{x:g}"


def mean_gaps(rows: Sequence[Mapping[str, Any]], conds: Mapping[str, float], plain: str | None
              ) -> tuple[dict[str, dict[Any, float]], list[dict[str, Any]]]:
    """Per X arm and seed the mean loss gap over every logged batch → ``(gaps[arm][seed], csv rows)``.
    ``plain``: the X arm that is plain NSCL (its gap is the CL arm's own ``lossgap`` row), if any."""
    acc: dict[tuple[str, Any], dict[str, list[float]]] = {}
    for r in rows:
        if r.get("kind") != "lossgap" or not isinstance(r.get("gap"), (int, float)):
            continue
        arm = r.get("arm")
        if not r.get("embeddings"):  # the CL arm's own row: DCL − NSCL with the true labels
            if plain is None or arm != "cl":
                continue
            arm = plain
        if arm not in conds:
            continue
        d = acc.setdefault((arm, r.get("seed")), {"gap": [], "bound": [], "step": []})
        d["gap"].append(float(r["gap"]))
        d["step"].append(float(r.get("step", 0)))
        if isinstance(r.get("bound"), (int, float)) and math.isfinite(float(r["bound"])):
            d["bound"].append(float(r["bound"]))
    gaps: dict[str, dict[Any, float]] = {}
    out = []
    for (arm, seed), d in sorted(acc.items(), key=lambda kv: (conds[kv[0][0]], str(kv[0][1]))):
        g = sum(d["gap"]) / len(d["gap"])
        gaps.setdefault(arm, {})[seed] = g
        first = d["gap"][d["step"].index(min(d["step"]))]
        out.append({"seed": seed, "arm": arm, "condition": conds[arm], "gap": g, "first_gap": first,
                    "bound": sum(d["bound"]) / len(d["bound"]) if d["bound"] else None, "n_batches": len(d["gap"])})
    return gaps, out


def _theory_all(ctx: Context, conds: Mapping[str, float], column: str) -> list[dict[str, Any]]:
    """Theory rows (S_T, sim_gap through training) of every (cl, X) pair of every point."""
    import yaml

    out = []
    for plan, rows in ctx.results:
        by_point: dict[str, Any] = {}
        for r in rows:
            by_point.setdefault(r["point"], r.get("seed"))
        for slug, seed in by_point.items():
            d = ctx.out / plan.name / "points" / slug
            try:
                cfg = yaml.safe_load((d / "config.yaml").read_text())
                meta = json.loads((d / "meta.json").read_text())
                run_rows = read_rows(d)
            except (OSError, ValueError) as e:
                ctx.notes.append(f"theory rows skipped for {plan.name}/{slug}: {e}")
                continue
            for arm, c in conds.items():
                for t in theory_rows(run_rows, cfg, meta, pair=("cl", arm), split=SPLIT, layer=LAYER):
                    t.update({"dataset": plan.label, "seed": seed, column: c})
                    out.append(t)
    return out


def make_design(ctx: Context, fig: str, column: str, conds: Mapping[str, float], plain: str | None,
                x_label: str, transform: Callable[[float], float] | None, slope_unit: str, log_x: bool) -> None:
    """The figure of one design (see the module docstring). ``conds``: X arm → its condition (K or α);
    ``column``: the condition's CSV column; ``transform``: applied to the condition for the primary slope
    (``math.log10`` for K, none for α)."""
    rows = _all(ctx)
    al = _align(rows)
    for r in al:
        if r.get("arm_a") == "cl" and r.get("arm_b") in conds:
            r[column] = conds[r["arm_b"]]
    C = next((r.get("num_classes") for r in rows if isinstance(r.get("num_classes"), (int, float))), None)
    for r in al:
        if C is not None:
            r.setdefault("num_classes", C)
    ctx.write_csv(fig, al, [column, "num_classes"] + ALIGN_COLS)
    _findings(ctx, al, [])
    vals, _base, _ctrl = pair_values(al, METRIC, SPLIT, LAYER)
    simv, _b2, _c2 = pair_values(al, "sim_gap", SPLIT, LAYER)
    per = {conds[a]: vals[("cl", a)] for a in conds if ("cl", a) in vals}
    floors = {"chaos floor (cl vs cl_eps)": vals.get(("cl", "cl_eps"), {}),
              "noise floor (cl vs cl_data)": vals.get(("cl", "cl_data"), {})}
    xs = sorted(per)
    ctx.save(plots.plot_design_vs(per, floors, x_label, "linear CKA on h, test (unitless)",
                                  f"{fig}: CL–X alignment at the last evaluation", log_x=log_x, x_ticks=xs),
             fig, f"CL–X linear CKA (test, layer h, last evaluation) against {x_label}: mean and 95 % t-interval over "
                  "seeds, grey lines join one seed's arms (one coupled run: the same images, batches, views and initial "
                  "weights for every X); dashed / dotted bands: the chaos floor (CL from a 1e-6 perturbation) and the "
                  "noise floor (CL on other batches and views).")
    gaps, gap_rows = mean_gaps(rows, conds, plain)
    ctx.write_csv(f"{fig}_lossgap", gap_rows, ["seed", "arm", "condition", "gap", "first_gap", "bound", "n_batches"])
    names = {a: f"{a} ({column} = {_fmt(c)})" for a, c in conds.items()}
    pts_cka = {names[a]: {s: (gaps[a][s], y) for s, y in vals.get(("cl", a), {}).items() if s in gaps.get(a, {})}
               for a in sorted(conds, key=conds.get)}
    pts_sim = {names[a]: {s: (gaps[a][s], y) for s, y in simv.get(("cl", a), {}).items() if s in gaps.get(a, {})}
               for a in sorted(conds, key=conds.get)}
    f_cka, f_sim = fit_relation(pts_cka), fit_relation(pts_sim)
    ctx.save(plots.plot_relation(pts_cka, "measured mean loss gap L_DCL − L_X on CL's embeddings (nats)",
                                 "linear CKA(cl, X) on h, test (unitless)", f"{fig}: alignment vs the loss gap", f_cka),
             f"{fig}_gap", "CL–X alignment at the last evaluation against X's measured mean loss gap (mean over every "
                           "logged batch of L_DCL − L_X on the CL arm's embeddings with X's labels); per arm its seeds "
                           "(dots) and mean with 95 % intervals in both directions; title: the per-seed OLS slope.")
    ctx.save(plots.plot_relation(pts_sim, "measured mean loss gap L_DCL − L_X (nats)",
                                 "‖Σ_CL − Σ_X‖_F on h, test (unitless)", f"{fig}: the theorem's structure", f_sim),
             f"{fig}_structure", "Thm 1's structure at fixed data, steps and S_T: the similarity-matrix gap "
                                 "‖Σ_CL − Σ_X‖_F at the last evaluation against X's measured mean loss gap. "
                                 + relation_text(f_sim))
    th = _theory_all(ctx, conds, column)
    if th:
        ctx.write_csv(f"{fig}_theory", th, THEORY_COLS + [column])
        grow = growth_over_training(th, group_key=column)
        ctx.save(plots.plot_theory(th, group_key=column), f"{fig}_growth",
                 f"‖Σ_CL − Σ_X‖_F through training against the main bound's shape per {column} (theory overlay). "
                 "Growth exponent d log sim_gap / d log S_T per seed, mean [95 % CI]: "
                 + "; ".join(f"{column} = {_fmt(g)}: {s.text() if s else '—'}" for g, s in sorted(grow.items())))
    # tables
    trows = []
    for a in sorted(conds, key=conds.get):
        v = vals.get(("cl", a), {})
        g = gaps.get(a, {})
        trows.append([_fmt(conds[a]), a, f"{summarize(list(v.values())).text()} (n={len(v)})" if v else "—",
                      f"{summarize(list(g.values())).text()} (n={len(g)})" if g else "—"])
    for name, v in floors.items():
        trows.append(["—", name, f"{summarize(list(v.values())).text()} (n={len(v)})" if v else "—", "—"])
    ctx.tables.append({"title": f"{fig}: CL–X at the last evaluation (test, h) and X's mean loss gap",
                       "header": [column, "arm", "linear CKA", "mean loss gap (nats)"], "rows": trows,
                       "note": "mean [95 % t-interval] over seeds; n = distinct seeds."})
    slopes = per_seed_slopes(per, transform)
    s_sum = summarize(list(slopes.values())) if len(slopes) >= 2 else None
    srows = [[f"CL–X CKA over {'log10 ' if transform is math.log10 else ''}{column} (primary)",
              f"{s_sum.text()} {slope_unit} (n={s_sum.n})" if s_sum else "—"],
             ["CL–X CKA over the mean loss gap", _slope_text(f_cka, "per nat")],
             ["‖Σ_CL − Σ_X‖_F over the mean loss gap", _slope_text(f_sim, "per nat")],
             ["structure verdict", relation_text(f_sim)]]
    ctx.tables.append({"title": f"{fig}: per-seed paired slopes (mean [95 % CI] over seeds)",
                       "header": ["relation", "slope"], "rows": srows,
                       "note": "each seed's OLS slope over its X arms (the arms of one seed share data, steps and "
                               "initial weights: the slope is the paired statistic); the interval is over seeds. "
                               "The primary test and its seed count are declared in docs/figures/" + fig + ".md."})


def _slope_text(fit: Mapping[str, Any], unit: str) -> str:
    s = fit.get("slope")
    return f"{s.text()} {unit} (n={s.n})" if s is not None else "—"
