"""Fig 2: CL vs NSCL, SCL and CE over training, with chaos- and noise-floor controls."""
from __future__ import annotations

from repalign.experiments.cost import paper_plan
from repalign.experiments.figures.common import (
    ALIGN_COLS, ARMS_CONTROLS, Context, FigureDef, PAIRS_CONTROLS, SEEDS, SweepPlan, _align, _all, _by_dataset, _cpu,
    _final_table, _findings, _label,
)
from repalign.report import plots


def plans_fig2(scale: str) -> list[SweepPlan]:
    arms = [f"arms={ARMS_CONTROLS}", f"pairs={PAIRS_CONTROLS}"]
    if scale == "paper":
        return [paper_plan(ds, ds, {"seed": SEEDS["paper"]}, arms, 7, 1200)
                for ds in ("cifar100", "tiny_imagenet", "mini_imagenet")]
    return [SweepPlan("runs", _label(scale), _cpu(scale, arms, {"seed": SEEDS[scale]}))]


def make_fig2(ctx: Context) -> None:
    for i, (ds, rows) in enumerate(_by_dataset(ctx).items()):
        al = _align(rows)
        name = "fig2" if i == 0 else f"fig2_{ds}"
        ctx.save(plots.plot_alignment(al, title=f"CL vs NSCL / SCL / CE with chaos- and noise-floor controls ({ds})"),
                 name, f"CKA and RSA between CL and each arm over training, train and test split ({ds}); mean and 95 % "
                 "CI over seeds. Grey, shaded: controls — cl_eps (chaos floor: CL from a 1e-6 perturbation of the same "
                 "initial weights, same batches and views), cl_data (same initialisation, own batches and "
                 "augmentations), cl_seed (own seed for everything). Dotted: untrained baseline.")
    al = _align(_all(ctx))
    ctx.write_csv("fig2", al, ALIGN_COLS)
    _final_table(ctx, al, [], "fig2")
    _findings(ctx, al, [])


FIGURE = FigureDef("fig2", "Fig 2 — CL vs NSCL, SCL, CE over training, with noise-floor controls",
                   "CKA and RSA between CL and each supervised objective, plus two CL controls (noise floor).",
                   plans_fig2, make_fig2, "≈ 12–16 min")
