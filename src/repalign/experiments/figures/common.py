"""Shared pieces of the figure modules (:mod:`repalign.experiments.figures`): the plan and figure types, the
settings every scale starts from (seeds, arms with their chaos- and noise-floor controls, base configs) and
the helpers several figure makers use (alignment rows, Findings, the final-value table, the theory overlay).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from repalign.analysis.theory import THEORY_NOTE, theory_rows
from repalign.config import ConfigError
from repalign.experiments.sweep import SweepSpec, load_spec
from repalign.report import plots
from repalign.report import reference as ref
from repalign.results import last_steps, read_rows
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
    "cpu": ["train.threads=2"],  # the train bar stays on for a person watching (logging.* is fingerprint-exempt)
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


def _cpu(scale: str, extra: list[str], grid: dict[str, list], base: str | None = None) -> dict[str, Any]:
    return {"base": base or BASE[scale], "overrides": COMMON[scale] + extra, "grid": grid}


def _label(scale: str) -> str:
    """Dataset label of a scale's figures (the regime's data at CPU scale)."""
    return "strokes" if scale == "cpu" else "digits"


def _spec(plan: SweepPlan, out: Path, processes: int) -> SweepSpec:
    return load_spec(dict(plan.spec, out=str(out / plan.name), processes=processes))


def with_seeds(plan: SweepPlan, seeds: Sequence[int]) -> SweepPlan:
    """``plan`` with its seed grid replaced by ``seeds`` (``reproduce --seeds``); its GPU-hours scale with the
    number of seeds. Seeds 0…N−1 include the default ones, so a resumable sweep reuses their finished runs."""
    grid = plan.spec.get("grid") or {}
    if "seed" not in grid:
        raise ConfigError(f"reproduce --seeds: sweep {plan.name!r} has no seed grid")
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"reproduce --seeds: need at least 2 distinct seeds for a confidence interval, got {seeds}")
    hours = None if plan.gpu_hours is None else plan.gpu_hours * len(seeds) / len(grid["seed"])
    return replace(plan, spec=dict(plan.spec, grid=dict(grid, seed=seeds)), gpu_hours=hours)


# ---------------------------------------------------------------------------- makers
#: figure CSV columns: identity, then the metric columns the schema (repalign.schema) sends to figures
#: figure CSV columns; `baseline` names the reference of `kind: baseline` rows (so the CSVs stand alone)
ALIGN_COLS = ["dataset", "seed", *ROW_ID, *figure_columns(), "config_fingerprint"]  # the last: verdicts refuse a
# condition whose rows come from different configs (issue 17)
THEORY_COLS = ["dataset", "seed", "epoch", "step", "arm_a", "arm_b", "split", "tau", "num_classes", "batch_size",
               "S_T", "sim_gap", "bound_shape", "log10_bound", "sim_gap_rel", "linear_cka", "cka_lower_bound", "rsa",
               "sim_gap_centred_rel", "cka_cos", "bound_status"]  # the last three: Cor. 1's ρ, its CKA, bound/vacuous


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
    # each seed's own last evaluation (a seed that ended earlier is not dropped); n = distinct seeds
    last = last_steps(al, lambda r: keyf(r) + (r.get("seed"),))
    acc: dict[tuple, dict[str, dict[Any, float]]] = {}
    ep_of: dict[tuple, set] = {}
    for r in al:
        k = keyf(r)
        if r["step"] != last[k + (r.get("seed"),)] or (pairs and (r["arm_a"], r["arm_b"]) not in pairs):
            continue
        kk = k + (r.get("control") or "objective",)
        ep_of.setdefault(kk, set()).add(r["epoch"])
        d = acc.setdefault(kk, {"linear_cka": {}, "rsa": {}, "linear_cka_over_chaos": {}})
        for m in d:
            if isinstance(r.get(m), (int, float)):
                d[m][r.get("seed")] = float(r[m])
    out, paper = [], []
    for k, d in sorted(acc.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        ds, *g, a, b, split, role = k
        eps = sorted(ep_of[k])
        ep = eps[0] if len(eps) == 1 else "/".join(str(e) for e in eps)  # seeds ending at other epochs: all named
        row = [ds, *g, f"{a} vs {b}", role, split, ep]
        for m in ("linear_cka", "rsa", "linear_cka_over_chaos"):
            v = list(d[m].values())
            row.append(f"{summarize(v).text()} (n={len(v)})" if v else "—")
        out.append(row)
        if fig_ref and role == "objective":
            filt = {ALIASES.get(gk, gk): gv for gk, gv in zip(group_keys, g) if ALIASES.get(gk, gk) != "seed"}
            filt = {fk: fv for fk, fv in filt.items()
                    if fk in ("tau", "batch_size", "lr_rule", "num_classes", "optimizer")}
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


def _mean(v: Sequence[float]) -> float | None:
    return float(np.mean(v)) if v else None


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
             "(normalised at the first evaluation after epoch 0), and Cor. 1: the cosine-kernel CKA vs (1 − ρ)/(1 + ρ) "
             "with the centred ρ = ‖H(Σ_CL − Σ_NSCL)H‖_F / ‖HΣ_NSCLH‖_F, drawn only where ρ < 1 (vacuous elsewhere). "
             + THEORY_NOTE)
    ctx.write_csv(name, th, THEORY_COLS + (["lr_rule"] if any("lr_rule" in t for t in th) else []))
    ctx.notes.append(THEORY_NOTE)
