"""Weight gap between CL and each arm over training, with its exponential-phase growth rate."""
from __future__ import annotations

from repalign.experiments.cost import paper_plan
from repalign.experiments.figures.common import (
    ALIGN_COLS, ARMS_FOUR, Context, FigureDef, SEEDS, SweepPlan, _align, _all, _by_dataset, _cpu, _final_table,
    _findings, _label,
)
from repalign.report import plots


def plans_weights(scale: str) -> list[SweepPlan]:
    if scale == "paper":
        return [paper_plan("cifar100", "cifar100", {"seed": SEEDS["paper"]}, [f"arms={ARMS_FOUR}"], 5, 1200)]
    ep = (["eval.schedule=log", "eval.log_points=10"] if scale == "cpu" else ["train.epochs=3"]) + ["eval.weight_every=1"]
    arms = [] if scale == "cpu" else [f"arms={ARMS_FOUR}"]  # CPU: the regime's six arms (four objectives + floors)
    return [SweepPlan("runs", _label(scale), _cpu(scale, ep + arms, {"seed": SEEDS[scale]}))]


def make_weights(ctx: Context) -> None:
    for i, (ds, rows) in enumerate(_by_dataset(ctx).items()):
        wr = [r for r in rows if r.get("kind") in ("align", "baseline", "weight")]
        ctx.save(plots.plot_weight_gap(wr), "weights" if i == 0 else f"weights_{ds}",
                 f"Weight gap between CL and each arm against the optimiser step (log y; logged every step), with "
                 f"the exponential-phase fit drawn over its window, next to the representation alignment ({ds}, test "
                 "split).")
    al = _align(_all(ctx))
    ctx.write_csv("weights", al, ALIGN_COLS + ["weight_rel_l2"])
    fits = []
    for ds, rows in _by_dataset(ctx).items():
        wr = [r for r in rows if r.get("kind") in ("align", "weight")]
        seeds = sorted({r.get("seed") for r in wr}, key=str)
        for s in seeds + ["mean"]:
            sel = [r for r in wr if s == "mean" or r.get("seed") == s]
            for (a, b), f in plots.weight_growth_fits(sel).items():
                if f is None:
                    continue
                status = "exponential phase" if f.resolved else ("no exponential phase" if f.dense else "not resolved")
                fits.append({"dataset": ds, "seed": s, "arm_a": a, "arm_b": b, "status": status,
                             "rate_per_step": f.rate_per_step if f.resolved else None,
                             "rate_per_epoch": f.rate_per_epoch if f.resolved else None, "start_step": f.start_step,
                             "end_step": f.end_step, "n_points": f.n_points, "r2": f.r2, "saturates": f.saturates})
    cols = ["dataset", "seed", "arm_a", "arm_b", "status", "rate_per_step", "rate_per_epoch", "start_step", "end_step",
            "n_points", "r2", "saturates"]
    ctx.write_csv("weights_fit", fits, cols)
    ctx.tables.append({"title": "Exponential-phase fit of the weight gap (per seed and of the seed mean)",
                       "header": ["dataset", "seed", "pair", "status", "rate / step", "rate / epoch", "window (steps)",
                                  "R²"],
                       "rows": [[f["dataset"], f["seed"], f"{f['arm_a']} vs {f['arm_b']}", f["status"],
                                 f["rate_per_step"], f["rate_per_epoch"], f"{f['start_step']:g}–{f['end_step']:g}",
                                 f["r2"]] for f in fits],
                       "note": "Window rule (repalign.analysis.growth): from the first 3 points with a positive gap, "
                               "extend while no two successive points fall > 20 % below the window's exponential fit. "
                               "The paper gives no per-step weight-gap values (qualitative: 'diverge significantly')."})
    _final_table(ctx, al, [], None, title="Final representation alignment (for comparison with the weight gap)")
    _findings(ctx, al, [])


FIGURE = FigureDef("weights", "Weight gap over training", "Weight gap (log axis) with a fitted exponential growth "
                   "rate, next to the representation alignment.", plans_weights, make_weights, "≈ 8–12 min")
