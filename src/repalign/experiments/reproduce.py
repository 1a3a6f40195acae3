"""``repalign reproduce FIG``: build the runs a figure of arXiv 2510.08852 needs, then plot it.

Figures: ``fig1`` (weight vs representation angle), ``fig2`` (CL vs NSCL/SCL/CE over epochs, with
noise-floor controls), ``fig3`` (CL–NSCL CKA over C × epoch, with controls and theory overlay),
``fig4`` (τ), ``fig5`` (B × lr rule), ``weights`` (weight gap + growth rate), ``lossgap`` (loss
gap vs its bound, over training and against C), and issue 18's loss-isolating designs ``granularity``
(NSCL at K label groups) and ``alpha`` (``nscl_alpha`` at five α) — same images and steps for every arm.

Scales:
- ``tiny``  — seconds; used by the tests (``--tiny``).
- ``cpu``   — the regime chosen by the calibration rule (``configs/regime/cpu.yaml``, docs/calibration.md:
  strokes, C = 100, 40 images per class, ``small_cnn``, 310 steps); every figure changes only its own
  variable (stated per figure in docs/figures/), 4 seeds, each figure sized for ≤ 25 min on 2 CPU cores
  (timed in ``benchmarks/``).
- ``paper`` — the ResNet-50 configs ``configs/*_resnet50.yaml``. Without ``--run`` this writes
  the sweep specs and resolved configs, prints the exact ``torchrun`` commands and the estimated
  GPU-hours; once every point has a ``DONE`` marker it plots them like the CPU scale.

Each figure writes into ``OUT`` (default ``runs/reproduce/<fig>-<scale>``): ``<fig>.png`` (+ extra
PNGs), ``<fig>.csv`` (+ extra CSVs), ``reproduce.json`` (manifest) and ``report.html``.

Layout: this module is the driver (:func:`reproduce`); each figure's plans and maker live in
``experiments/figures/<fig>.py`` (registry :data:`FIGS`, shared settings and helpers in ``figures/common.py``),
paper-scale GPU-hours and commands in :mod:`repalign.experiments.cost`. Their public names are re-exported here.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from repalign.config import ConfigError
from repalign.experiments import FIGURES
from repalign.experiments.cost import (
    GPU_ENV, GPU_RESULTS_ENV, GPU_TFLOPS, PAPER_DATA, CostBasis, cost_basis, gpu_hours, gpu_results_dirs, paper_commands,
    paper_plan, paper_plan_text,
)
from repalign.experiments.figures import FIGS
from repalign.experiments.figures.common import (
    ALIASES, ALIGN_COLS, ARMS_CONTROLS, ARMS_FLOORS, ARMS_FOUR, ARMS_PAIR, ARMS_PAIR_CONTROLS, BASE, CHAOS, COMMON,
    PAIRS_CONTROLS, PAIRS_FLOORS, PAIRS_PAIR_CONTROLS, SCALES, SEEDS, THEORY_COLS, Context, FigureDef, SweepPlan,
    _spec, _with_aliases, strokes_overrides, with_seeds,
)
from repalign.experiments.figures.fig1 import make_fig1, plans_fig1
from repalign.experiments.figures.fig2 import make_fig2, plans_fig2
from repalign.experiments.figures.fig3 import FIG3_C, FIG3_PER_CLASS, make_fig3, plans_fig3
from repalign.experiments.figures.fig4 import make_fig4, plans_fig4
from repalign.experiments.figures.fig5 import FIG5_B, make_fig5, plans_fig5
from repalign.experiments.figures.lossgap import LOSSGAP_C, make_lossgap, plans_lossgap
from repalign.experiments.figures.weights import make_weights, plans_weights
from repalign.experiments.figures.granularity import GRANULARITY_K, GRANULARITY_SEEDS, make_granularity, plans_granularity
from repalign.experiments.figures.alpha import ALPHAS, ALPHA_SEEDS, make_alpha, plans_alpha
from repalign.experiments.sweep import run_sweep
from repalign.results import read_summary


def _collect(plan: SweepPlan, out: Path) -> list[dict[str, Any]]:
    p = out / plan.name / "summary.csv"
    return _with_aliases(read_summary(p), plan.label, plan.extra) if p.exists() else []


def reproduce(fig: str, scale: str = "cpu", out: str | Path | None = None, processes: int = 1, run: bool = False,
              log: Callable[[str], None] = print, nproc: int = 8, gpu: str | None = None,
              seeds: int | None = None, redo_stale: bool = False) -> Path:
    """Build the runs of ``fig`` at ``scale`` (resumable), then write its PNG(s), CSV(s) and report.
    ``seeds`` = N replaces the scale's seeds by 0…N−1 (default: :data:`SEEDS`; more seeds narrow the
    intervals, and the default seeds' finished runs are reused — a finished run is reused only when its config
    fingerprint is the one the plan asks for: else the sweep stops naming it, and ``redo_stale`` re-runs it).
    Returns the output folder. At ``scale='paper'`` without ``run`` only the plan is written
    (``paper_plan.md``) unless every point is already finished; its GPU-hours come from a measured
    ``gpu_check.py`` result for ``gpu`` when one exists, else from the FLOP estimate (:func:`cost_basis`)."""
    if fig not in FIGS:
        raise ConfigError(f"reproduce: unknown figure {fig!r} (one of {', '.join(FIGS)})")
    if scale not in SCALES:
        raise ConfigError(f"reproduce: --scale must be one of {', '.join(SCALES)}, got {scale!r}")
    d = FIGS[fig]
    outp = Path(out) if out is not None else Path("runs") / "reproduce" / f"{fig}-{scale}"
    outp.mkdir(parents=True, exist_ok=True)
    plans = d.plans(scale)
    if seeds is not None:
        plans = [with_seeds(p, range(seeds)) for p in plans]
    t0 = time.perf_counter()
    if scale == "paper" and not run:
        cmds, hours, done = paper_commands(fig, outp, nproc, log, plans)
        if not done:
            basis = cost_basis(gpu)
            text = paper_plan_text(fig, outp, cmds, hours * GPU_TFLOPS / basis.tflops, nproc, basis)
            (outp / "paper_plan.md").write_text(text)
            log(text)
            return outp
    if scale != "paper" or run:
        from repalign.progress import progress_line

        for i, plan in enumerate(plans, 1):  # each sweep logs its points N/M; then the sweeps N/M (ETA)
            run_sweep(_spec(plan, outp, processes), log=log, redo_stale=redo_stale)
            log(progress_line(f"{fig}: sweep", i, len(plans), time.perf_counter() - t0, label=plan.name))
    results = [(p, _collect(p, outp)) for p in plans]
    ctx = Context(fig, scale, outp, results)
    for old in outp.glob("*.png"):
        old.unlink()
    d.make(ctx)
    secs = time.perf_counter() - t0
    settings = {"figure": fig, "scale": scale, "seconds": round(secs, 1),
                "sweeps": [{"name": p.name, "label": p.label, **p.spec} for p in plans]}
    man = {"title": d.title, "description": d.description, "findings": ctx.findings, "figures": ctx.figures,
           "tables": ctx.tables,
           "notes": list(dict.fromkeys(ctx.notes)), "csv": ctx.csvs, "settings": settings}
    (outp / "reproduce.json").write_text(json.dumps(man, indent=2, default=str))
    from repalign.report.html import manifest_report

    rep = manifest_report(outp)
    log(f"{fig} ({scale}): {len(ctx.figures)} figure(s), CSV {', '.join(ctx.csvs)} in {outp} ({secs:.1f} s); report {rep}")
    return outp


#: What this module offers: the driver, plus the names of the figure modules and of :mod:`.cost` that code,
#: tests and docs import from here.
__all__ = [
    "reproduce", "FIGS", "FIGURES", "SCALES", "SweepPlan", "FigureDef", "Context",
    # settings (figures/common.py)
    "SEEDS", "CHAOS", "ARMS_PAIR", "ARMS_FOUR", "ARMS_CONTROLS", "ARMS_PAIR_CONTROLS", "ARMS_FLOORS", "PAIRS_CONTROLS",
    "PAIRS_PAIR_CONTROLS", "PAIRS_FLOORS", "BASE", "COMMON", "ALIASES", "ALIGN_COLS", "THEORY_COLS", "strokes_overrides",
    "with_seeds",
    # figures (figures/<fig>.py)
    "plans_fig1", "make_fig1", "plans_fig2", "make_fig2", "plans_fig3", "make_fig3", "FIG3_C", "FIG3_PER_CLASS",
    "plans_fig4", "make_fig4", "plans_fig5", "make_fig5", "FIG5_B", "plans_weights", "make_weights",
    "plans_lossgap", "make_lossgap", "LOSSGAP_C",
    # paper scale (cost.py)
    "PAPER_DATA", "GPU_TFLOPS", "GPU_RESULTS_ENV", "GPU_ENV", "CostBasis", "cost_basis", "gpu_hours",
    "gpu_results_dirs", "paper_plan", "paper_commands", "paper_plan_text",
]
