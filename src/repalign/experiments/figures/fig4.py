"""Fig 4: CL–NSCL alignment over training per temperature τ."""
from __future__ import annotations

from repalign.experiments.cost import paper_plan
from repalign.experiments.figures.common import (
    ALIGN_COLS, ARMS_FLOORS, Context, FigureDef, PAIRS_FLOORS, SEEDS, SweepPlan, _align, _all, _by_dataset, _cpu,
    _final_table, _findings, _label, _theory, _theory_figs,
)
from repalign.report import plots


def plans_fig4(scale: str) -> list[SweepPlan]:
    taus = [0.1, 0.5, 1.0] if scale != "tiny" else [0.1, 1.0]
    if scale == "paper":
        return [paper_plan(ds, ds, {"loss.temperature": taus, "seed": SEEDS["paper"]},
                           [f"arms={ARMS_FLOORS}", f"pairs={PAIRS_FLOORS}"], 4, 300)
                for ds in ("cifar100", "tiny_imagenet", "mini_imagenet")]
    ep = ["eval.schedule=[0,1,3,5,10]"] if scale == "cpu" else []
    return [SweepPlan("runs", _label(scale), _cpu(scale, ep + [f"arms={ARMS_FLOORS}", f"pairs={PAIRS_FLOORS}"],
                                                  {"loss.temperature": taus, "seed": SEEDS[scale]}))]


def make_fig4(ctx: Context) -> None:
    for i, (ds, rows) in enumerate(_by_dataset(ctx).items()):
        al = [r for r in _align(rows) if r.get("kind") == "baseline" or (r.get("arm_a"), r.get("arm_b")) == ("cl", "nscl")]
        ctx.save(plots.plot_alignment(al, group_key="tau", title=f"CL vs NSCL for τ ∈ {{0.1, 0.5, 1.0}} ({ds})"),
                 "fig4" if i == 0 else f"fig4_{ds}", f"CL–NSCL CKA and RSA over training per temperature τ ({ds}); "
                 "mean and 95 % CI over seeds; dotted: untrained baseline. The chaos-floor margins per τ are in the "
                 "table and the Findings.")
    al = _align(_all(ctx))
    ctx.write_csv("fig4", al, ["tau"] + ALIGN_COLS)
    _theory_figs(ctx, _theory(ctx, "tau"), "tau", "fig4_theory")
    _final_table(ctx, al, ["loss.temperature"], "fig4", title="Final CKA / RSA per τ (mean [95 % CI] over seeds)")
    _findings(ctx, al, ["tau"])


FIGURE = FigureDef("fig4", "Fig 4 — temperature τ", "CL–NSCL alignment over epochs for τ ∈ {0.1, 0.5, 1.0}.",
                   plans_fig4, make_fig4, "≈ 8–12 min")
