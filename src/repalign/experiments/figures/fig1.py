"""Fig 1: angle between the CL and NSCL models over training, in weight space and in representation space."""
from __future__ import annotations

from repalign.experiments.cost import paper_plan
from repalign.experiments.figures.common import (
    ALIGN_COLS, ARMS_FLOORS, Context, FigureDef, PAIRS_FLOORS, SEEDS, SweepPlan, _align, _all, _by_dataset, _cpu,
    _findings, _label,
)
from repalign.report import plots


def plans_fig1(scale: str) -> list[SweepPlan]:
    if scale == "paper":
        return [paper_plan("cifar100", "cifar100", {"seed": SEEDS["paper"]},
                           [f"arms={ARMS_FLOORS}", f"pairs={PAIRS_FLOORS}"], 4, 1200)]
    ep = ["eval.schedule=log", "eval.log_points=12"] if scale == "cpu" else []
    return [SweepPlan("runs", _label(scale), _cpu(scale, ep + [f"arms={ARMS_FLOORS}", f"pairs={PAIRS_FLOORS}"],
                                                  {"seed": SEEDS[scale]}))]


def make_fig1(ctx: Context) -> None:
    for ds, rows in _by_dataset(ctx).items():
        al = [r for r in _align(rows) if (r.get("arm_a"), r.get("arm_b")) == ("cl", "nscl")]
        ctx.save(plots.plot_angles(al, ("cl", "nscl")), "fig1" if ds == next(iter(_by_dataset(ctx))) else f"fig1_{ds}",
                 f"Angle between CL and NSCL in weight space vs representation space ({ds}, test split).")
    al = [r for r in _align(_all(ctx)) if r.get("kind") == "baseline"
          or (r.get("arm_a"), r.get("arm_b")) in (("cl", "nscl"), ("cl", "cl_eps"), ("cl", "cl_data"))]
    ctx.write_csv("fig1", al, ALIGN_COLS)
    al = [r for r in al if (r.get("arm_a"), r.get("arm_b")) == ("cl", "nscl")]
    fin: dict[str, list[float]] = {"weight_angle_deg": [], "repr_angle_deg": []}
    last = max((r["step"] for r in al), default=None)
    for r in al:
        if r["step"] == last and r["split"] == "test" and r.get("layer", "h") == "h":
            for k in fin:
                fin[k].append(r[k])
    from repalign.analysis import summarize

    ctx.tables.append({"title": "Final angles between CL and NSCL (test split, mean [95 % CI] over seeds)",
                       "header": ["quantity", "ours"],
                       "rows": [["weight-space angle (°)", summarize(fin["weight_angle_deg"]).text(2) if fin["weight_angle_deg"] else "—"],
                                ["representation angle (°)", summarize(fin["repr_angle_deg"]).text(2) if fin["repr_angle_deg"] else "—"]],
                       "note": "Weight angle: arccos of the cosine between the two arms' flattened encoder weights. "
                               "Representation angle: arccos of the linear CKA-style cosine between the two centred "
                               "Gram matrices of the test features, i.e. arccos(CKA) in degrees."})
    ctx.tables.append({"title": "arXiv 2510.08852 Fig 1", "paper": True, "header": ["quantity", "paper value", "setting"],
                       "rows": [["weight-space angle (°)", 85.7, "stated in the teaser; dataset/epoch unspecified"],
                                ["representation angle (°)", 27.8, "stated in the teaser; dataset/epoch unspecified"]]})
    _findings(ctx, _align(_all(ctx)), [])


FIGURE = FigureDef("fig1", "Fig 1 — weight-space vs representation-space angle (CL vs NSCL)",
                   "Angle between the CL and NSCL models over training, in weight space and in representation space.",
                   plans_fig1, make_fig1, "≈ 5–8 min")
