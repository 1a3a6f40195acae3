"""``repalign reproduce FIG``: build the runs a figure of arXiv 2510.08852 needs, then plot it.

Figures: ``fig1`` (weight vs representation angle), ``fig2`` (CL vs NSCL/SCL/CE over epochs, with
noise-floor controls), ``fig3`` (CL–NSCL CKA over C × epoch, with controls and theory overlay),
``fig4`` (τ), ``fig5`` (B × lr rule), ``weights`` (weight gap + growth rate), ``lossgap`` (loss
gap vs its bound, over training and against C).

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
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from repalign.config import ConfigError
from repalign.experiments import FIGURES
from repalign.analysis.theory import THEORY_NOTE, theory_rows
from repalign.experiments.sweep import SweepSpec, expand, load_spec, run_sweep
from repalign.report import plots
from repalign.report import reference as ref
from repalign.results import last_steps, point_status, read_rows, read_summary
from repalign.schema import ROW_ID, figure_columns

SCALES = ("tiny", "cpu", "paper")
#: Seeds per scale: every compared value carries a 95 % interval over these (issue 8/9); paper scale
#: uses 3 seeds so a GPU user gets the discriminating version of each figure (3× the GPU-hours of one).
SEEDS = {"tiny": [0, 1], "cpu": [0, 1, 2, 3], "paper": [0, 1, 2]}

# ---------------------------------------------------------------------------- settings
#: The chaos-floor control (issue 8): CL from a 1e-6 relative perturbation of the shared initial weights,
#: same batches and views — how far training dynamics alone carry two almost identical CL models apart.
CHAOS = "cl_eps: {same_as: cl, init_perturb: 1.0e-6}"
ARMS_PAIR = "{cl: {objective: cl}, nscl: {objective: nscl}, " + CHAOS + "}"
ARMS_FOUR = "{cl: {objective: cl}, nscl: {objective: nscl}, scl: {objective: scl}, ce: {objective: ce}, " + CHAOS + "}"
ARMS_CONTROLS = ("{cl: {objective: cl}, nscl: {objective: nscl}, scl: {objective: scl}, ce: {objective: ce}, "
                 "cl_seed: {same_as: cl, init_seed: 1001, data_seed: 1001}, cl_data: {same_as: cl, data_seed: 1002}, "
                 + CHAOS + "}")
ARMS_PAIR_CONTROLS = ("{cl: {objective: cl}, nscl: {objective: nscl}, "
                      "cl_seed: {same_as: cl, init_seed: 1001, data_seed: 1001}, cl_data: {same_as: cl, data_seed: 1002}, "
                      + CHAOS + "}")
PAIRS_CONTROLS = "[[cl, nscl], [cl, scl], [cl, ce], [cl, cl_eps], [cl, cl_seed], [cl, cl_data]]"
PAIRS_PAIR_CONTROLS = "[[cl, nscl], [cl, cl_eps], [cl, cl_seed], [cl, cl_data]]"
#: CL, NSCL and both references of the regime: chaos floor (upper) and noise floor (lower, other batches/views).
ARMS_FLOORS = "{cl: {objective: cl}, nscl: {objective: nscl}, cl_data: {same_as: cl, data_seed: 1002}, " + CHAOS + "}"
PAIRS_FLOORS = "[[cl, nscl], [cl, cl_eps], [cl, cl_data]]"
#: Base config per scale: the CPU figures start from the calibrated regime (docs/calibration.md).
BASE = {"tiny": "demo", "cpu": "regime/cpu"}

COMMON = {
    "tiny": ["data.source=digits", "data.augment=simclr_gray", "data.max_per_class=10", "data.test_max_per_class=10", "train.batch_size=32", "train.epochs=2",
             "eval.every=1", "eval.max_train=100", "eval.max_test=100", "model.width=4", "model.projector_hidden=32",
             "model.projector_out=16", "train.log_every=1", "logging.progress=false", "train.threads=2",
             "data.num_classes=null", "data.options={}"],
    "cpu": ["logging.progress=false", "train.threads=2"],
}


def strokes_overrides(scale: str, num_classes: int, total: int | None = None, per_class: int | None = None) -> list[str]:
    """Strokes source with either a fixed number of images per class ``per_class`` (as the paper: all
    images of the chosen classes, so steps grow with C) or a fixed training-set size ``total``
    (``samples_per_class = total // C``: every C has the same number of steps and S_T)."""
    if (total is None) == (per_class is None):
        raise ValueError("strokes_overrides: give exactly one of total and per_class")
    per = per_class if per_class is not None else max(2, int(total) // num_classes)
    test = 2 if scale == "tiny" else max(2, min(20, 1000 // num_classes))
    ov = [f"data.source=strokes", f"data.num_classes={num_classes}",
          f"data.options={{samples_per_class: {per}, test_per_class: {test}, within_class: 0.5, between_class: 0.25}}",
          "data.max_per_class=null", "data.test_max_per_class=null", "data.augment=simclr_gray"]
    if scale == "tiny":
        ov.append("data.image_size=16")
    return ov


@dataclass
class SweepPlan:
    """One sweep of a figure: ``name`` (sub-folder of OUT), ``label`` (e.g. the dataset), the spec."""

    name: str
    label: str
    spec: dict[str, Any]
    gpu_hours: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # constant columns added to every row (e.g. num_classes)


@dataclass
class FigureDef:
    name: str
    title: str
    description: str
    plans: Callable[[str], list[SweepPlan]]
    make: Callable[["Context"], None]
    cpu_minutes: str = ""


@dataclass
class Context:
    fig: str
    scale: str
    out: Path
    results: list[tuple[SweepPlan, list[dict[str, Any]]]]  # per plan: summary rows (+ short aliases)
    figures: list[dict[str, str]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    csvs: list[str] = field(default_factory=list)

    def save(self, fig: Any, name: str, caption: str) -> Path:
        p = plots.save_figure(fig, self.out / f"{name}.png")
        self.figures.append({"file": p.name, "caption": caption})
        return p

    def write_csv(self, name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
        p = self.out / f"{name}.csv"
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
        self.csvs.append(p.name)
        return p


ALIASES = {"loss.temperature": "tau", "train.batch_size": "batch_size", "optim.lr_rule": "lr_rule", "optim.type": "optimizer",
           "data.num_classes": "num_classes", "seed": "seed"}


def _with_aliases(rows: list[dict[str, Any]], label: str, extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    for r in rows:
        r["dataset"] = label
        r.update(extra or {})
        for k, a in ALIASES.items():
            if k in r and r[k] is not None:
                r[a] = r[k]
    return rows


# ---------------------------------------------------------------------------- paper scale
PAPER_DATA = {  # config, train images, fwd GFLOPs per image, total classes
    "cifar100": ("cifar100_resnet50", 50_000, 1.3, 100),
    "tiny_imagenet": ("tiny_imagenet_resnet50", 100_000, 0.34, 200),
    "mini_imagenet": ("mini_imagenet_resnet50", 50_000, 4.1, 100),
    "imagenet": ("imagenet_resnet50", 1_281_167, 4.1, 1000),
}
#: Effective throughput assumed for the GPU-hour estimates: one A100-class GPU sustaining ≈ 25 TFLOP/s
#: end to end (≈ 8 % of bf16 peak — small images, augmentation and data loading dominate; in line with
#: public SimCLR ResNet timings); evaluation adds ≈ 10 %. A rough planning figure, not a measurement.
GPU_TFLOPS = 25.0


def gpu_hours(dataset: str, arms: int, epochs: int, fraction: float = 1.0, views: int = 2,
              tflops: float = GPU_TFLOPS) -> float:
    """Estimated GPU-hours of one coupled paper-scale run: arms × epochs × N × views × 3 × GFLOPs / throughput
    (``tflops``: effective TFLOP/s of the whole step; +10 % for evaluation)."""
    _cfg, n, gf, _c = PAPER_DATA[dataset]
    flops = arms * epochs * n * fraction * views * 3 * gf * 1e9
    return 1.1 * flops / (tflops * 1e12) / 3600


#: Folder of ``benchmarks/gpu_check.py`` results (``<gpu-slug>.json``); ``$REPALIGN_GPU_RESULTS`` overrides it.
GPU_RESULTS_ENV = "REPALIGN_GPU_RESULTS"
#: GPU whose measurement plans the cost when several are present (``--gpu``); ``$REPALIGN_GPU`` sets a default.
GPU_ENV = "REPALIGN_GPU"


@dataclass
class CostBasis:
    """Throughput behind a GPU-hour figure: ``source`` is ``measured`` (a ``gpu_check.py`` result) or
    ``estimate`` (:data:`GPU_TFLOPS`); ``tflops`` the effective TFLOP/s of a whole coupled step (data wait
    included); ``note`` says where it came from, in one sentence."""

    source: str
    tflops: float
    note: str
    gpu: str | None = None
    path: str | None = None


def gpu_results_dirs() -> list[Path]:
    """Where measured GPU results are looked for: ``$REPALIGN_GPU_RESULTS``, else ``benchmarks/results/gpu``
    under the working directory and under the repalign checkout (when installed from one)."""
    if os.environ.get(GPU_RESULTS_ENV):
        return [Path(os.environ[GPU_RESULTS_ENV])]
    here = Path("benchmarks/results/gpu")
    repo = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "gpu"
    return list(dict.fromkeys([here.resolve(), repo]))


def _gpu_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _measured(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(result, "")`` for a usable gpu_check result, else ``(None, why not)``."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{path.name}: unreadable ({e.__class__.__name__})"
    basis = d.get("cost_basis") if isinstance(d, dict) else None
    if not isinstance(basis, dict):
        return None, f"{path.name}: no cost_basis"
    if d.get("dry_run"):
        return None, f"{path.name}: a --dry-run result (CPU, tiny sizes)"
    t = basis.get("effective_tflops")
    if not isinstance(t, (int, float)) or not t > 0:
        return None, f"{path.name}: cost_basis.effective_tflops missing or not positive"
    return d, ""


def cost_basis(gpu: str | None = None, dirs: Sequence[Path] | None = None) -> CostBasis:
    """The throughput to plan paper-scale GPU-hours with.

    Measured when a ``gpu_check.py`` result (``<slug>.json``, not a dry run) exists for the chosen GPU:
    ``gpu`` (else ``$REPALIGN_GPU``) matched against the file name and the recorded GPU name
    (case-insensitive, punctuation-insensitive substring), or — with no GPU chosen — the only result
    present. Otherwise the FLOP estimate (:data:`GPU_TFLOPS`), with a note saying why.
    """
    gpu = gpu or os.environ.get(GPU_ENV) or None
    dirs = list(dirs) if dirs is not None else gpu_results_dirs()
    found: dict[str, Path] = {}
    for d in dirs:
        for f in sorted(Path(d).glob("*.json")) if Path(d).is_dir() else []:
            found.setdefault(f.name, f)
    usable, skipped = [], []
    for f in found.values():
        res, why = _measured(f)
        if res is None:
            skipped.append(why)
        else:
            usable.append((f, res))
    est = f"FLOP estimate at {GPU_TFLOPS:.0f} effective TFLOP/s (A100-class assumption, not a measurement)"
    if gpu:
        want = _gpu_slug(gpu)
        match = [(f, r) for f, r in usable if want in _gpu_slug(f.stem) or want in _gpu_slug(str(r.get("gpu", {}).get("name", "")))]
        if not match:
            have = ", ".join(f.stem for f, _ in usable) or "none"
            return CostBasis("estimate", GPU_TFLOPS, f"{est}: no measured result for GPU {gpu!r} (measured: {have})")
        if len(match) > 1:
            names = ", ".join(f.stem for f, _ in match)
            raise ConfigError(f"reproduce --gpu {gpu!r}: matches several measured results ({names}); give a longer name")
        f, r = match[0]
    elif len(usable) == 1:
        f, r = usable[0]
    elif usable:
        names = ", ".join(f.stem for f, _ in usable)
        return CostBasis("estimate", GPU_TFLOPS, f"{est}: several measured GPUs ({names}); choose one with --gpu")
    else:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        return CostBasis("estimate", GPU_TFLOPS, f"{est}: no gpu_check result in {', '.join(map(str, dirs))}{why}")
    b = r["cost_basis"]
    name = str(r.get("gpu", {}).get("name") or f.stem)
    note = (f"measured on {name} by benchmarks/gpu_check.py ({f}): {b['effective_tflops']:.1f} effective TFLOP/s for a "
            f"coupled {b.get('arms', '?')}-arm {b.get('model', 'resnet50')} step at B = {b.get('batch', '?')}, "
            f"{b.get('image_size', '?')} px, {b.get('variant', '?')}, data wait included; other image sizes scaled by "
            "their FLOPs per image")
    return CostBasis("measured", float(b["effective_tflops"]), note, name, str(f))


def paper_plan(name: str, dataset: str, grid: dict[str, list], overrides: list[str], arms: int, epochs: int,
               fraction: Callable[[dict], float] | None = None) -> SweepPlan:
    cfg = PAPER_DATA[dataset][0]
    spec = {"base": cfg, "overrides": [f"train.epochs={epochs}", *overrides], "grid": grid}
    pts = expand(load_spec(dict(spec, out="unused")))
    hours = sum(gpu_hours(dataset, arms, epochs, fraction(p.values) if fraction else 1.0) for p in pts)
    return SweepPlan(name, dataset, spec, hours)


# ---------------------------------------------------------------------------- plans per figure
def _cpu(scale: str, extra: list[str], grid: dict[str, list], base: str | None = None) -> dict[str, Any]:
    return {"base": base or BASE[scale], "overrides": COMMON[scale] + extra, "grid": grid}


def plans_fig1(scale: str) -> list[SweepPlan]:
    if scale == "paper":
        return [paper_plan("cifar100", "cifar100", {"seed": SEEDS["paper"]},
                           [f"arms={ARMS_FLOORS}", f"pairs={PAIRS_FLOORS}"], 4, 1200)]
    ep = ["eval.schedule=log", "eval.log_points=12"] if scale == "cpu" else []
    return [SweepPlan("runs", _label(scale), _cpu(scale, ep + [f"arms={ARMS_FLOORS}", f"pairs={PAIRS_FLOORS}"],
                                                  {"seed": SEEDS[scale]}))]


def plans_fig2(scale: str) -> list[SweepPlan]:
    arms = [f"arms={ARMS_CONTROLS}", f"pairs={PAIRS_CONTROLS}"]
    if scale == "paper":
        return [paper_plan(ds, ds, {"seed": SEEDS["paper"]}, arms, 7, 1200)
                for ds in ("cifar100", "tiny_imagenet", "mini_imagenet")]
    return [SweepPlan("runs", _label(scale), _cpu(scale, arms, {"seed": SEEDS[scale]}))]


FIG3_C = {"tiny": [3, 6], "cpu": [10, 50, 100]}
#: Fig 3 keeps a fixed number of training images per class, as the paper does (all images of the chosen
#: classes): the number of steps grows with C. At CPU scale: the regime's 40 images per class; C = 200
#: (≈ 2× the regime's cost per run) does not fit the 25-minute budget with 4 seeds.
FIG3_PER_CLASS = {"tiny": 12, "cpu": 40}


def plans_fig3(scale: str) -> list[SweepPlan]:
    arms = [f"arms={ARMS_PAIR_CONTROLS}", f"pairs={PAIRS_PAIR_CONTROLS}"]
    if scale == "paper":
        out = []
        for ds, cs, ep in (("mini_imagenet", [5, 10, 50, 100], 1000), ("tiny_imagenet", [5, 10, 50, 100, 200], 1000),
                           ("imagenet", [5, 10, 50, 100, 500, 1000], 100)):
            tot = PAPER_DATA[ds][3]
            out.append(paper_plan(ds, ds, {"data.num_classes": cs, "seed": SEEDS["paper"]}, arms, 5, ep,
                                  fraction=lambda v, tot=tot: v["data.num_classes"] / tot))
        return out
    per_class = FIG3_PER_CLASS[scale]
    plans = []
    for c in FIG3_C[scale]:  # one sweep per C: the strokes options depend on C
        ep = [] if scale == "cpu" else ["train.batch_size=16"]  # CPU: the regime's epoch schedule, common to every C
        plans.append(SweepPlan(f"C{c}", "strokes", _cpu(scale, ep + [f"arms={ARMS_FLOORS}", f"pairs={PAIRS_FLOORS}"]
                                                         + strokes_overrides(scale, c, per_class=per_class),
                                                         {"seed": SEEDS[scale]}), extra={"num_classes": c}))
    return plans


def plans_fig4(scale: str) -> list[SweepPlan]:
    taus = [0.1, 0.5, 1.0] if scale != "tiny" else [0.1, 1.0]
    if scale == "paper":
        return [paper_plan(ds, ds, {"loss.temperature": taus, "seed": SEEDS["paper"]},
                           [f"arms={ARMS_FLOORS}", f"pairs={PAIRS_FLOORS}"], 4, 300)
                for ds in ("cifar100", "tiny_imagenet", "mini_imagenet")]
    ep = ["eval.schedule=[0,1,3,5,10]"] if scale == "cpu" else []
    return [SweepPlan("runs", _label(scale), _cpu(scale, ep + [f"arms={ARMS_FLOORS}", f"pairs={PAIRS_FLOORS}"],
                                                  {"loss.temperature": taus, "seed": SEEDS[scale]}))]


def plans_fig5(scale: str) -> list[SweepPlan]:
    rules = ["linear", "sqrt", "fourth_root"]
    if scale == "paper":
        return [paper_plan("mini_imagenet", "mini_imagenet", {"train.batch_size": [256, 512, 1024],
                                                              "optim.lr_rule": rules, "seed": SEEDS["paper"]},
                           [f"arms={ARMS_FLOORS}", f"pairs={PAIRS_FLOORS}"], 4, 200)]
    if scale == "tiny":
        grid: dict[str, list[Any]] = {"train.batch_size": [16, 32], "optim.lr_rule": ["linear", "sqrt"],
                                      "seed": SEEDS[scale]}
        return [SweepPlan("runs", _label(scale), _cpu(scale, [f"arms={ARMS_PAIR}"], grid))]
    # The paper trains with LARS at base lr 0.3 (its own setting); SGD at the regime's lr beside it shows whether
    # the ordering depends on the optimiser. 2 optimisers × 2 B × 2 rules × 4 seeds = 32 runs: to fit 25 minutes
    # on 2 cores the figure uses C = 40 classes of the regime's data (1,600 images) — the one stated change.
    grid = {"train.batch_size": FIG5_B, "optim.lr_rule": ["linear", "sqrt"], "seed": SEEDS[scale]}
    ov = ["eval.schedule=[0,1,3,10]", "data.num_classes=40", f"arms={ARMS_FLOORS}", f"pairs={PAIRS_FLOORS}"]
    return [SweepPlan(opt, _label(scale), _cpu(scale, ov + [f"optim.type={opt}", f"optim.lr={lr}"], grid),
                      extra={"optimizer": opt, "optim.type": opt}) for opt, lr in (("lars", 0.3), ("sgd", 0.1))]


FIG5_B = [64, 256]


def _label(scale: str) -> str:
    """Dataset label of a scale's figures (the regime's data at CPU scale)."""
    return "strokes" if scale == "cpu" else "digits"


def plans_weights(scale: str) -> list[SweepPlan]:
    if scale == "paper":
        return [paper_plan("cifar100", "cifar100", {"seed": SEEDS["paper"]}, [f"arms={ARMS_FOUR}"], 5, 1200)]
    ep = (["eval.schedule=log", "eval.log_points=10"] if scale == "cpu" else ["train.epochs=3"]) + ["eval.weight_every=1"]
    arms = [] if scale == "cpu" else [f"arms={ARMS_FOUR}"]  # CPU: the regime's six arms (four objectives + floors)
    return [SweepPlan("runs", _label(scale), _cpu(scale, ep + arms, {"seed": SEEDS[scale]}))]


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


# ---------------------------------------------------------------------------- makers
#: figure CSV columns: identity, then the metric columns the schema (repalign.schema) sends to figures
ALIGN_COLS = ["dataset", "seed", *(c for c in ROW_ID if c != "baseline"), *figure_columns()]
THEORY_COLS = ["dataset", "seed", "epoch", "step", "arm_a", "arm_b", "split", "tau", "num_classes", "batch_size",
               "S_T", "sim_gap", "bound_shape", "log10_bound", "sim_gap_rel", "linear_cka", "cka_lower_bound", "rsa"]


def _align(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``align`` rows plus the ``baseline`` (untrained) rows that give them their zero point."""
    return [dict(r) for r in rows if r.get("kind") in ("align", "baseline")]


def _all(ctx: Context) -> list[dict[str, Any]]:
    return [r for _p, rows in ctx.results for r in rows]


def _by_dataset(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for p, rows in ctx.results:
        out.setdefault(p.label, []).extend(rows)
    return out


def _findings(ctx: Context, rows: Sequence[Mapping[str, Any]], group_keys: Sequence[str]) -> None:
    """Findings of the figure (per dataset and condition), stored in the manifest."""
    from repalign.analysis import findings

    for label, fs in findings(rows, group_keys=["dataset", *group_keys]):
        ctx.findings.append({"label": label, "items": [{"text": f.text, "kind": f.kind, "verdict": f.verdict,
                                                        "numbers": f.numbers} for f in fs]})


def _final_table(ctx: Context, rows: Sequence[Mapping[str, Any]], group_keys: Sequence[str], fig_ref: str | None,
                 pairs: Sequence[tuple[str, str]] | None = None, title: str = "Final values (mean [95 % CI] over seeds)") -> None:
    """Table: per dataset/group/pair/split the last-evaluation CKA and RSA (mean [95 % CI], n) with the
    margin over the chaos floor; the paper's values (where the figure has them) go to a separate table
    labelled with the paper's dataset, model and epoch."""
    from repalign.analysis import summarize

    al = [r for r in rows if r.get("layer", "h") == "h" and r.get("kind", "align") == "align"]
    keyf = lambda r: (r.get("dataset"), *(r.get(k) for k in group_keys), r["arm_a"], r["arm_b"], r["split"])  # noqa: E731
    last = last_steps(al, keyf)
    acc: dict[tuple, dict[str, list[float]]] = {}
    for r in al:
        k = keyf(r)
        if r["step"] != last[k] or (pairs and (r["arm_a"], r["arm_b"]) not in pairs):
            continue
        d = acc.setdefault(k + (r["epoch"], r.get("control") or "objective"),
                           {"linear_cka": [], "rsa": [], "linear_cka_over_chaos": []})
        for m in d:
            if isinstance(r.get(m), (int, float)):
                d[m].append(float(r[m]))
    out, paper = [], []
    for k, d in sorted(acc.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        ds, *g, a, b, split, ep, role = k
        row = [ds, *g, f"{a} vs {b}", role, split, ep]
        for m in ("linear_cka", "rsa", "linear_cka_over_chaos"):
            v = d[m]
            row.append(f"{summarize(v).text()} (n={len(v)})" if v else "—")
        out.append(row)
        if fig_ref and role == "objective":
            filt = {ALIASES.get(gk, gk): gv for gk, gv in zip(group_keys, g) if ALIASES.get(gk, gk) != "seed"}
            filt = {fk: fv for fk, fv in filt.items() if fk in ("tau", "batch_size", "lr_rule", "num_classes")}
            for m in ("linear_cka", "rsa"):
                refs = ref.reference(fig_ref, metric=m, pair=f"cl/{b}", **filt)
                if fig_ref == "fig2":
                    refs = [r for r in refs if r.get("epoch") == 1200]
                for r in refs:
                    if r["split"] in (split, "both"):
                        paper.append([f"cl vs {b}", *g, split, m.replace("_", " "),
                                      ref.DATASET_NAMES.get(r["dataset"], r["dataset"]), "ResNet-50", r.get("epoch") or "—",
                                      r["value"]])
    header = ["dataset", *[ALIASES.get(g, g) for g in group_keys], "pair", "role", "split", "epoch",
              "linear CKA", "RSA", "CKA − chaos floor"]
    ctx.tables.append({"title": title, "header": header, "rows": out,
                       "note": "Ours: CPU-scale runs, mean [95 % CI, t-interval] over seeds (n = seeds). Controls: chaos "
                               "floor (init_perturb), noise floors (data_seed / init_seed)."})
    if paper:
        uniq = [list(x) for x in dict.fromkeys(tuple(p) for p in paper)]
        ctx.tables.append({"title": f"arXiv 2510.08852 {fig_ref.replace('fig', 'Fig ')}", "paper": True,
                           "header": ["pair", *[ALIASES.get(g, g) for g in group_keys], "split", "metric",
                                      "paper dataset", "paper model", "paper epoch", "paper value"],
                           "rows": uniq,
                           "note": "Published values (≈ where read off a plot) from long ResNet-50 runs; not comparable "
                                   "in value with the CPU-scale numbers above, only in ordering and trend."})


def make_fig1(ctx: Context) -> None:
    for ds, rows in _by_dataset(ctx).items():
        al = [r for r in _align(rows) if (r.get("arm_a"), r.get("arm_b")) == ("cl", "nscl")]
        ctx.save(plots.plot_angles(al, ("cl", "nscl")), "fig1" if ds == next(iter(_by_dataset(ctx))) else f"fig1_{ds}",
                 f"Angle between CL and NSCL in weight space vs representation space ({ds}, test split).")
    al = [r for r in _align(_all(ctx)) if r.get("kind") == "baseline"
          or (r.get("arm_a"), r.get("arm_b")) in (("cl", "nscl"), ("cl", "cl_eps"))]
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


def _mean(v: Sequence[float]) -> float | None:
    return float(np.mean(v)) if v else None


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


def _theory(ctx: Context, group_key: str | None) -> list[dict[str, Any]]:
    out = []
    for plan, rows in ctx.results:
        by_point: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_point.setdefault(r["point"], []).append(r)
        for slug, prow in by_point.items():
            d = ctx.out / plan.name / "points" / slug
            try:
                import yaml

                cfg = yaml.safe_load((d / "config.yaml").read_text())
                meta = json.loads((d / "meta.json").read_text())
                for t in theory_rows(read_rows(d), cfg, meta, pair=("cl", "nscl"), split="test"):
                    t.update({"dataset": plan.label, "seed": prow[0].get("seed")})
                    for k in ("tau", "num_classes", "batch_size", "lr_rule"):
                        if k in prow[0]:
                            t[k] = prow[0][k]
                    out.append(t)
            except (OSError, ValueError, KeyError) as e:
                ctx.notes.append(f"theory overlay skipped for {plan.name}/{slug}: {e}")
    return out


def _theory_figs(ctx: Context, th: list[dict[str, Any]], group_key: str, name: str) -> None:
    if not th:
        return
    ctx.save(plots.plot_theory(th, group_key=group_key), name,
             f"Theory overlay per {group_key}: measured CL–NSCL similarity gap vs the main bound's shape "
             "(normalised at the first evaluation after epoch 0), and measured CKA vs (1 − ρ)/(1 + ρ). " + THEORY_NOTE)
    ctx.write_csv(name, th, THEORY_COLS + (["lr_rule"] if any("lr_rule" in t for t in th) else []))
    ctx.notes.append(THEORY_NOTE)


def make_fig3(ctx: Context) -> None:
    for i, (ds, rows) in enumerate(_by_dataset(ctx).items()):
        al = _align(rows)
        name = "fig3" if i == 0 else f"fig3_{ds}"
        for split in ("test", "train"):
            present = {(r.get("arm_a"), r.get("arm_b")) for r in al}
            pairs = [p for p in (("cl", "nscl"), ("cl", "cl_eps"), ("cl", "cl_data"), ("cl", "cl_seed")) if p in present]
            ctx.save(plots.plot_heatmaps(al, "num_classes", pairs=pairs, split=split), name + ("" if split == "test" else "_train"),
                     f"Linear CKA over number of classes C × epoch ({ds}, {split} split, seed mean): CL vs NSCL and "
                     "the controls (cl_eps: chaos floor, 1e-6 perturbation of the same initial weights; cl_data: same "
                     "init, own batches/augmentations; cl_seed: own seed for everything).")
    al = _align(_all(ctx))
    ctx.write_csv("fig3", al, ["num_classes"] + ALIGN_COLS)
    th = _theory(ctx, "num_classes")
    _theory_figs(ctx, th, "num_classes", "fig3_theory")
    # across C: final measured gap vs the bound's 1/C dependence (normalised at the smallest C)
    if th:
        last = {}
        for t in th:
            k = (t["num_classes"], t["seed"])
            if k not in last or t["epoch"] > last[k]["epoch"]:
                last[k] = t
        cs = sorted({k[0] for k in last})
        pts = []
        for (c, s), t in last.items():
            pts.append({"num_classes": c, "seed": s, "gap": t["sim_gap"], "log_bound": t["log10_bound"]})
        c0 = cs[0]
        g0 = _mean([p["gap"] for p in pts if p["num_classes"] == c0])
        b0 = _mean([p["log_bound"] for p in pts if p["num_classes"] == c0])
        for p in pts:
            p["bound"] = g0 * 10 ** (p["log_bound"] - b0) if g0 is not None else None
        fig = plots.plot_gap_vs_classes(pts, "measured ‖Σ_CL − Σ_NSCL‖_F (last epoch)",
                                        f"bound shape ∝ 1/C (normalised at C = {c0})",
                                        "similarity gap (unitless, log scale)",
                                        "CL–NSCL similarity gap against C (trend only)")
        ctx.save(fig, "fig3_gap_vs_C", "Final similarity gap against C with the bound's C-dependence. " + THEORY_NOTE)
        ctx.write_csv("fig3_gap_vs_C", pts, ["num_classes", "seed", "gap", "bound", "log_bound"])
    _final_table(ctx, al, ["num_classes"], "fig3", title="Final CKA / RSA per C (mean [95 % CI] over seeds)")
    _findings(ctx, al, ["num_classes"])


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


def make_fig5(ctx: Context) -> None:
    rows_all = _all(ctx)
    opts = sorted({r.get("optimizer") for r in rows_all if r.get("optimizer")}) or [None]
    for i, (ds, rows) in enumerate(_by_dataset(ctx).items()):
        for opt in opts:
            al = [r for r in _align(rows) if (opt is None or r.get("optimizer") == opt) and
                  (r.get("kind") == "baseline" or (r.get("arm_a"), r.get("arm_b")) == ("cl", "nscl"))]
            for r in al:
                r["rule_B"] = f"{r.get('lr_rule')}, B={r.get('batch_size')}"
            tag = "" if opt is None or opt == opts[0] else f"_{opt}"
            sfx = "" if i == 0 else f"_{ds}"
            what = f"{ds}" + (f", {opt.upper()}" if opt else "")
            rules = ", ".join(sorted({str(r.get("lr_rule")) for r in al if r.get("lr_rule")}))
            ctx.save(plots.plot_final_vs(al, "batch_size", "lr_rule", reference=None), f"fig5{tag}{sfx}",
                     f"CL–NSCL alignment at the last evaluation against batch size B per lr rule ({rules}; {what}); "
                     "mean and 95 % CI over seeds.")
            ctx.save(plots.plot_alignment(al, group_key="rule_B", splits=("test",)), f"fig5_curves{tag}{sfx}",
                     f"CL–NSCL alignment over training per (rule, B) ({what}, test); dotted: untrained baseline.")
    al = _align(rows_all)
    ctx.write_csv("fig5", al, ["optimizer", "batch_size", "lr_rule"] + ALIGN_COLS)
    _theory_figs(ctx, _theory(ctx, "lr_rule"), "batch_size", "fig5_theory")
    keys = (["optim.type"] if opts != [None] else []) + ["optim.lr_rule", "train.batch_size"]
    _final_table(ctx, al, keys, "fig5", title="Final CKA / RSA per optimiser, lr rule and B (mean [95 % CI] over seeds)")
    _findings(ctx, al, (["optimizer"] if opts != [None] else []) + ["lr_rule", "batch_size"])
    ctx.notes.append("paper-notes §6.2: the √B and B^(1/4) rules are not anchored at a reference batch, so at equal B "
                     "their learning rate is 16–180× smaller than the linear rule's; high alignment under those rules "
                     "partly reflects models that barely leave the shared initialisation.")


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


def make_lossgap(ctx: Context) -> None:
    rows = [r for r in _all(ctx) if r.get("kind") == "lossgap"]
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


FIGS: dict[str, FigureDef] = {
    "fig1": FigureDef("fig1", "Fig 1 — weight-space vs representation-space angle (CL vs NSCL)",
                      "Angle between the CL and NSCL models over training, in weight space and in representation space.",
                      plans_fig1, make_fig1, "≈ 5–8 min"),
    "fig2": FigureDef("fig2", "Fig 2 — CL vs NSCL, SCL, CE over training, with noise-floor controls",
                      "CKA and RSA between CL and each supervised objective, plus two CL controls (noise floor).",
                      plans_fig2, make_fig2, "≈ 12–16 min"),
    "fig3": FigureDef("fig3", "Fig 3 — CL–NSCL alignment against the number of classes C",
                      "Linear CKA heatmaps over C × epoch on the strokes generator (a fixed number of images per "
                      "class, so steps grow with C), with chaos- and noise-floor controls and the theory overlay.",
                      plans_fig3, make_fig3, "≈ 12–18 min"),
    "fig4": FigureDef("fig4", "Fig 4 — temperature τ", "CL–NSCL alignment over epochs for τ ∈ {0.1, 0.5, 1.0}.",
                      plans_fig4, make_fig4, "≈ 8–12 min"),
    "fig5": FigureDef("fig5", "Fig 5 — batch size × learning-rate rule",
                      "CL–NSCL alignment against batch size under the lr rules (paper: 3 B × linear, √B, B^(1/4); "
                      "CPU: 2 B × linear, √B, with LARS and SGD).",
                      plans_fig5, make_fig5, "≈ 10–15 min"),
    "weights": FigureDef("weights", "Weight gap over training", "Weight gap (log axis) with a fitted exponential growth "
                         "rate, next to the representation alignment.", plans_weights, make_weights, "≈ 8–12 min"),
    "lossgap": FigureDef("lossgap", "Loss gap L_DCL − L_NSCL vs its bound", "Per-batch loss gap of the CL arm against its "
                         "bound over training and against C.", plans_lossgap, make_lossgap, "≈ 5–8 min"),
}


# ---------------------------------------------------------------------------- driver
def _spec(plan: SweepPlan, out: Path, processes: int) -> SweepSpec:
    return load_spec(dict(plan.spec, out=str(out / plan.name), processes=processes))


def _collect(plan: SweepPlan, out: Path) -> list[dict[str, Any]]:
    p = out / plan.name / "summary.csv"
    return _with_aliases(read_summary(p), plan.label, plan.extra) if p.exists() else []


def paper_commands(fig: str, out: Path, nproc: int = 8, log: Callable[[str], None] = print) -> tuple[list[str], float, bool]:
    """Write the paper-scale sweep specs/configs; return (commands, GPU-hours, all points done)."""
    import yaml

    cmds: list[str] = []
    hours = 0.0
    all_done = True
    for plan in FIGS[fig].plans("paper"):
        spec = _spec(plan, out, 1)
        sw = out / plan.name
        sw.mkdir(parents=True, exist_ok=True)
        (out / f"sweep_{plan.name}.yaml").write_text(yaml.safe_dump(dict(plan.spec, out=str(sw)), sort_keys=False))
        run_sweep(spec, log=lambda s: None, dry_run=True)
        hours += plan.gpu_hours or 0.0
        for p in expand(spec):
            rd = sw / "points" / p.slug
            st = point_status(rd)
            if st == "done":
                continue
            all_done = False
            cmds.append(f"torchrun --nproc_per_node={nproc} -m repalign train {sw / 'configs' / (p.slug + '.yaml')} "
                        f"--run-dir {rd} --resume-if-possible && touch {rd / 'DONE'}")
    return cmds, hours, all_done


def reproduce(fig: str, scale: str = "cpu", out: str | Path | None = None, processes: int = 1, run: bool = False,
              log: Callable[[str], None] = print, nproc: int = 8, gpu: str | None = None) -> Path:
    """Build the runs of ``fig`` at ``scale`` (resumable), then write its PNG(s), CSV(s) and report.
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
    t0 = time.perf_counter()
    if scale == "paper" and not run:
        cmds, hours, done = paper_commands(fig, outp, nproc, log)
        if not done:
            basis = cost_basis(gpu)
            text = paper_plan_text(fig, outp, cmds, hours * GPU_TFLOPS / basis.tflops, nproc, basis)
            (outp / "paper_plan.md").write_text(text)
            log(text)
            return outp
    if scale != "paper" or run:
        for plan in plans:
            run_sweep(_spec(plan, outp, processes), log=log)
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


def paper_plan_text(fig: str, out: Path, cmds: Sequence[str], hours: float, nproc: int,
                    basis: CostBasis | None = None) -> str:
    """The paper-scale plan: sweep specs, GPU-hours (saying whether from a measurement or the FLOP
    estimate), the commands."""
    d = FIGS[fig]
    basis = basis or CostBasis("estimate", GPU_TFLOPS, f"FLOP estimate at {GPU_TFLOPS:.0f} effective TFLOP/s")
    what = "from measured throughput" if basis.source == "measured" else "from the FLOP estimate"
    lines = [f"# {d.title} — paper scale", "", d.description, "",
             f"Sweep specs: {', '.join(str(p) for p in sorted(out.glob('sweep_*.yaml')))}",
             f"Cost: ≈ {hours:,.0f} GPU-hours {what} (+10 % evaluation; ResNet-50 FLOPs × 3 for forward+backward × "
             f"2 views × arms). Source: {basis.note}.", "",
             f"Run every point (torchrun on {nproc} GPUs per run; `--resume-if-possible` continues an interrupted run "
             "from its last checkpoint; re-running this command lists only unfinished points):", "",
             "```"] + list(cmds) + ["```", "",
                                    "Or run a sweep on SLURM: `repalign sweep SPEC --launcher slurm` (extra `slurm`).",
                                    f"Afterwards plot with: `repalign reproduce {fig} --scale paper --out {out}`", ""]
    return "\n".join(lines)
