"""α-family (issue 18): ``nscl_alpha`` at α ∈ {0, 0.25, 0.5, 0.75, 1} — same-class negatives weighted 1 − α.

α = 0 is CL's loss (DCL), α = 1 NSCL's; every arm of a seed is one coupled run (same images, batches, views and
initial weights), so only the objective — and with it the loss gap L_DCL − L_α — moves with α. The seeds are
pre-declared in docs/figures/alpha.md.
"""
from __future__ import annotations

from repalign.experiments.cost import paper_plan
from repalign.experiments.figures.common import Context, FigureDef, SweepPlan, _cpu, _label
from repalign.experiments.figures.designs import CPU_THREADS, arms_override, make_design

ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]
#: pre-declared seeds (docs/figures/alpha.md)
ALPHA_SEEDS = {"tiny": [0, 1], "cpu": list(range(16)), "paper": [0, 1, 2]}


def arm_name(a: float) -> str:
    return "alpha_" + f"{a:g}".replace(".", "p")


def x_arms() -> dict[str, str]:
    return {arm_name(a): f"{{objective: nscl_alpha, options: {{alpha: {a:g}}}}}" for a in ALPHAS}


def plans_alpha(scale: str) -> list[SweepPlan]:
    ov = arms_override(x_arms())
    grid = {"seed": ALPHA_SEEDS[scale]}
    if scale == "paper":
        return [paper_plan("cifar100", "cifar100", grid, ov, len(ALPHAS) + 3, 500)]
    return [SweepPlan("runs", _label(scale), _cpu(scale, ov + [CPU_THREADS], grid))]


def make_alpha(ctx: Context) -> None:
    make_design(ctx, "alpha", "alpha", {arm_name(a): a for a in ALPHAS}, plain=None,
                x_label="α (weight 1 − α on same-class negatives; 0 = CL, 1 = NSCL)", transform=None,
                slope_unit="per unit α", log_x=False)
    ctx.notes.append("α-family design: every arm of a seed is one coupled run; α = 0 is CL's own loss (so CL vs "
                     "alpha_0 differs only by floating-point rounding — a numerical chaos floor), α = 1 is NSCL. "
                     "The loss gap L_DCL − L_α is measured on the CL arm's embeddings; its bound is "
                     "log(1 + R) − log(1 + (1 − α) R), R = e^{2/τ} n_max/(N − n_max).")


FIGURE = FigureDef("alpha", "α-family — nscl_alpha between CL and NSCL",
                   "CL–X alignment against α and against the measured loss gap, with the chaos and noise floors "
                   "(issue 18; same images, batches and steps for every α).",
                   plans_alpha, make_alpha, "≈ 30–40 min")
