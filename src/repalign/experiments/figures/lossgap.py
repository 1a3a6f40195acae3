"""Loss gap L_DCL − L_NSCL of the CL arm against its bound, over training and against C."""
from __future__ import annotations

import math

from repalign.experiments.cost import paper_plan
from repalign.experiments.figures.common import (
    Context, FigureDef, SEEDS, SweepPlan, strokes_overrides, _all, _cpu, _mean,
)
from repalign.report import plots
from repalign.report import reference as ref

LOSSGAP_C = {"tiny": [2, 5], "cpu": [2, 5, 10, 20, 50, 100, 200]}


def plans_lossgap(scale: str) -> list[SweepPlan]:
    arms = ["arms={cl: {objective: cl}}", "loss.temperature=1.0", "eval.every=null", "eval.schedule=null",
            "train.log_every=1"]
    if scale == "paper":
        return [paper_plan("cifar100", "cifar100", {"data.num_classes": [2, 10, 20, 40, 100], "seed": SEEDS["paper"]},
                           arms, 1, 300, fraction=lambda v: v["data.num_classes"] / 100)]
    total = 60 if scale == "tiny" else 2000
    plans = []
    for c in LOSSGAP_C[scale]:
        ep = ["train.epochs=4", "train.batch_size=128"] if scale == "cpu" else ["train.batch_size=16"]
        plans.append(SweepPlan(f"C{c}", "strokes", _cpu(scale, ep + arms + strokes_overrides(scale, c, total=total),
                                                         {"seed": SEEDS[scale]}), extra={"num_classes": c}))
    return plans


def make_lossgap(ctx: Context) -> None:
    # the CL arm's own rows (DCL − NSCL on its embeddings); rows of grouped-NSCL / α arms carry `embeddings`
    rows = [r for r in _all(ctx) if r.get("kind") == "lossgap" and not r.get("embeddings")]
    cs = sorted({r["num_classes"] for r in rows if r.get("num_classes") is not None})
    show = next((c for c in cs if c >= 10), cs[-1] if cs else None)
    ctx.save(plots.plot_loss_gap([r for r in rows if r.get("num_classes") == show]), "lossgap",
             f"Per-batch L_DCL − L_NSCL of the CL arm against its bound over training (C = {show}, τ = 1).")
    ctx.write_csv("lossgap", rows, ["dataset", "num_classes", "seed", "step", "epoch", "arm", "dcl", "nscl", "gap", "bound"])
    pts = []
    for c in cs:
        for s in sorted({r["seed"] for r in rows if r.get("num_classes") == c}):
            rr = sorted((r for r in rows if r.get("num_classes") == c and r.get("seed") == s), key=lambda r: r["step"])
            tail = rr[-max(1, len(rr) // 4):]
            pts.append({"num_classes": c, "seed": s, "gap": _mean([r["gap"] for r in tail]),
                        "bound": _mean([r["bound"] for r in tail]), "first_gap": rr[0]["gap"] if rr else None})
    ctx.save(plots.plot_loss_gap_vs_classes(pts), "lossgap_vs_C",
             "Loss gap at the end of training (mean over the last quarter of logged batches) against C, with its bound.")
    ctx.write_csv("lossgap_vs_C", pts, ["num_classes", "seed", "gap", "bound", "first_gap"])
    from repalign.analysis import summarize

    tab, paper = [], []
    for c in cs:
        g = [p["gap"] for p in pts if p["num_classes"] == c and p["gap"] is not None]
        b = [p["bound"] for p in pts if p["num_classes"] == c and p["bound"] is not None]
        tab.append([c, summarize(g).text(4) if g else "—", _mean(b),
                    math.log1p(math.e ** 2 / (c - 1)) if c > 1 else None, len(g)])
        for ds, v in ref.lookup("lossgap", "gap", num_classes=c).items():
            paper.append([c, ref.DATASET_NAMES.get(ds, ds), "ResNet-18 (predecessor, arXiv 2506.04411)", v])
    ctx.tables.append({"title": "Loss gap vs C (τ = 1; mean [95 % CI] over seeds)",
                       "header": ["C", "measured gap", "bound (batch)", "log(1 + e²/(C − 1))", "n seeds"], "rows": tab})
    if paper:
        ctx.tables.append({"title": "Loss gap vs C in the predecessor paper", "paper": True,
                           "header": ["C", "paper dataset", "paper model / source", "paper gap"], "rows": paper})
    # 0 ≤ gap ≤ bound on every logged batch?
    ok = sum(1 for r in rows if -1e-6 <= r["gap"] <= r["bound"] + 1e-6)
    worst = max((r["gap"] / r["bound"] for r in rows if r["bound"] > 0), default=float("nan"))
    verdict_ = "higher" if ok == len(rows) and rows else "lower"
    text = (f"0 ≤ L_DCL − L_NSCL ≤ log(1 + e^(2/τ)·n_max/(N − n_max)) held on {ok} of {len(rows)} logged batches "
            f"(largest gap/bound ratio {worst:.3f})." if rows else "No loss-gap rows.")
    ctx.findings.append({"label": "", "items": [{"text": text, "kind": "bound", "verdict": verdict_ if rows else None,
                                                 "numbers": {"ok": ok, "n": len(rows), "max_ratio": worst}}]})


FIGURE = FigureDef("lossgap", "Loss gap L_DCL − L_NSCL vs its bound", "Per-batch loss gap of the CL arm against its "
                   "bound over training and against C.", plans_lossgap, make_lossgap, "≈ 5–8 min")
