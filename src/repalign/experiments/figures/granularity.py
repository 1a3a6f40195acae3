"""Granularity (issue 18): NSCL on the same images with the C labels coarsened to K superclasses.

CL never sees labels, so ``label_groups: K`` changes the NSCL arm's objective alone: CL, its floors and every
batch are identical across K (one coupled run per seed). The CPU plan is the regime (C = 100) with
K ∈ {2, 5, 10, 25, 50, 100} (K = 100 is plain NSCL) and 16 seeds, pre-declared in docs/figures/granularity.md
from the pilot's power calculation.
"""
from __future__ import annotations

import math

from repalign.experiments.cost import paper_plan
from repalign.experiments.figures.common import Context, FigureDef, SweepPlan, _cpu, _label
from repalign.experiments.figures.designs import CPU_THREADS, arms_override, make_design

#: K per scale; the largest is C (the plain NSCL arm)
GRANULARITY_K = {"tiny": [2, 5, 10], "cpu": [2, 5, 10, 25, 50, 100], "paper": [2, 5, 10, 25, 50, 100]}
#: paper scale: CIFAR-100's real hierarchy beside the seeded partitions (20 superclasses of 5 classes each)
SUPERCLASS_ARM = ("nscl_super20", "{objective: nscl, label_map: 'repalign:cifar100_coarse'}", 20)
#: pre-declared seeds (docs/figures/granularity.md: 16 from the pilot's power calculation)
GRANULARITY_SEEDS = {"tiny": [0, 1], "cpu": list(range(16)), "paper": [0, 1, 2]}


def arm_name(k: int, c: int) -> str:
    return "nscl" if k == c else f"nscl_k{k}"


def x_arms(scale: str) -> dict[str, str]:
    ks = GRANULARITY_K[scale]
    c = ks[-1]
    arms = {arm_name(k, c): ("{objective: nscl}" if k == c else f"{{objective: nscl, label_groups: {k}}}") for k in ks}
    if scale == "paper":
        arms[SUPERCLASS_ARM[0]] = SUPERCLASS_ARM[1]
    return arms


def plans_granularity(scale: str) -> list[SweepPlan]:
    ov = arms_override(x_arms(scale))
    grid = {"seed": GRANULARITY_SEEDS[scale]}
    if scale == "paper":  # CIFAR-100, 100 classes; the real 20-superclass hierarchy: add an arm with label_map
        return [paper_plan("cifar100", "cifar100", grid, ov, len(GRANULARITY_K["paper"]) + 4, 500)]
    return [SweepPlan("runs", _label(scale), _cpu(scale, ov + [CPU_THREADS], grid), extra={"num_classes": GRANULARITY_K[scale][-1]})]


def make_granularity(ctx: Context) -> None:
    ks = GRANULARITY_K[ctx.scale]
    c = ks[-1]
    conds = {arm_name(k, c): float(k) for k in ks}
    if ctx.scale == "paper":
        conds[SUPERCLASS_ARM[0]] = float(SUPERCLASS_ARM[2])
    make_design(ctx, "granularity", "label_groups", conds, plain="nscl",
                x_label="label groups K seen by NSCL (log scale)", transform=math.log10, slope_unit="per decade of K",
                log_x=True)
    ctx.notes.append("Granularity design: every arm of a seed is one coupled run (same images, batches, views, initial "
                     "weights); only the labels NSCL sees change (a seeded balanced partition of the C classes into K "
                     "groups, drawn from the run seed). The loss gap is measured on the CL arm's embeddings.")


FIGURE = FigureDef("granularity", "Granularity — NSCL at K label groups on the same images",
                   "CL–NSCL(K) alignment against the number of label groups K, and against the measured loss gap, "
                   "with the chaos and noise floors (issue 18; CL and every batch identical across K).",
                   plans_granularity, make_granularity, "≈ 30–40 min")
