"""Plots: pure functions ``rows → matplotlib Figure`` (Agg backend, Okabe–Ito palette).

Every function takes plain lists of metric rows (the ``metrics.jsonl`` schema of docs/design.md,
optionally with extra keys such as ``seed``, ``tau`` or ``num_classes`` added by a sweep) and
returns a :class:`matplotlib.figure.Figure`; nothing is read from disk. Rows sharing everything
but their ``seed`` are averaged: the line is the mean, the band its 95 % t-interval over seeds (the
legend says n). Curves are labelled by arm name (``cl vs nscl``). Control pairs (an arm against its
chaos-floor or noise-floor twin, ``control`` column) are drawn as grey shaded references, the
untrained baseline as a dotted black line, so they read as reference levels, not objectives.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from repalign.schema import metric_label  # noqa: E402

#: Okabe & Ito (2008) colour-blind-safe palette (blue, vermillion, green, orange, purple, sky, yellow, black).
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
LINESTYLE = {"train": "-", "test": "--"}


def pair_label(a: str, b: str) -> str:
    return f"{a} vs {b}"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def aggregate(rows: Iterable[Mapping[str, Any]], x: str, y: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean and 95 % t-interval of ``y`` over rows sharing ``x`` (rows from several seeds) →
    ``(x, mean, lo, hi, n)``; ``n`` = largest number of values averaged at one ``x``; where only one
    value exists ``lo = hi = mean``. Non-finite values are left out."""
    from repalign.analysis.stats import t_interval

    by: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        if _finite(r.get(x)) and _finite(r.get(y)):
            by[float(r[x])].append(float(r[y]))
    xs = np.array(sorted(by))
    if not len(xs):
        return xs, xs, xs, xs, 0
    vals = [np.array(by[v]) for v in xs]
    means = np.array([v.mean() for v in vals])
    ci = [t_interval(v) if len(v) > 1 else None for v in vals]
    lo = np.array([c[0] if c else m for c, m in zip(ci, means)])
    hi = np.array([c[1] if c else m for c, m in zip(ci, means)])
    if y in BOUNDS:  # a bounded metric's band drawn within its range (clipped; small-n t-intervals overshoot)
        lo, hi = np.clip(lo, *BOUNDS[y]), np.clip(hi, *BOUNDS[y])
    return xs, means, lo, hi, max(len(v) for v in vals)


#: Ranges of bounded metrics (issue 20): their intervals are shown clipped to these (``clip_interval``).
BOUNDS: dict[str, tuple[float, float]] = {"linear_cka": (0.0, 1.0), "rsa": (-1.0, 1.0), "knn_acc": (0.0, 1.0),
                                           "linear_cka_rel": (-np.inf, 1.0)}


def clip_interval(metric: str, lo: float | None, hi: float | None) -> tuple[float | None, float | None, bool]:
    """``(lo, hi, clipped)``: a t-interval of a bounded metric (:data:`BOUNDS`, e.g. CKA ∈ [0, 1]) clipped
    to the metric's range; ``clipped`` says the raw interval crossed it (with few seeds the symmetric
    t-interval overshoots a mean near a bound; the clipped one is shown and marked)."""
    if metric not in BOUNDS or lo is None or hi is None:
        return lo, hi, False
    a, b = BOUNDS[metric]
    return max(lo, a), min(hi, b), bool(lo < a or hi > b)


def legend_outside(ax: Any, fontsize: float = 6.5) -> None:
    """The legend to the right of the axes, outside the data area (issue 20: never over a curve)."""
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def _line(ax, rows, x, y, label, col, ls="-", marker="o", band=True, control=False):
    xs, m, lo, hi, n = aggregate(rows, x, y)
    if not len(xs):
        return None
    lab = label + ((f" (mean ± 95 % CI, n = {n})" if band or control else f" (mean, n = {n})") if n > 1 else "")
    if control:  # reference level: grey, dashed, shaded
        (h,) = ax.plot(xs, m, "--", color=col, lw=1.2, label=lab, zorder=1)
        ax.fill_between(xs, lo if n > 1 else m, hi if n > 1 else m, color=col, alpha=0.25, lw=0, zorder=0)
        if n <= 1:
            ax.fill_between(xs, m - 0.004, m + 0.004, color=col, alpha=0.25, lw=0, zorder=0)
        return h
    (h,) = ax.plot(xs, m, ls, color=col, marker=marker, ms=3, lw=1.5, label=lab, zorder=3)
    if band and n > 1:
        ax.fill_between(xs, lo, hi, color=col, alpha=0.18, lw=0, zorder=2)
    return h


#: Grey shades for control pairs (chaos floor darker, noise floors lighter).
CONTROL_COLOURS = {"chaos": "#555555", "noise_data": "#999999", "noise_seed": "#BBBBBB"}
CONTROL_NAMES = {"chaos": "chaos floor", "noise_data": "noise floor (own data)", "noise_seed": "noise floor (own seed)"}


def x_axis(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str, bool]:
    """The one x-axis of a set of evaluation rows: ``("epoch", label, log=False)`` when every
    evaluation falls on an epoch boundary, else optimiser steps on a symlog axis labelled with real
    step values and the steps per epoch."""
    fractional = any(_finite(r.get("epoch")) and float(r["epoch"]) != int(float(r["epoch"])) for r in rows)
    if not fractional:
        return "epoch", "epoch", False
    spe = _steps_per_epoch(rows)
    extra = f"; 1 epoch = {spe} steps" if spe is not None else ""
    return "step", f"optimiser step (log scale{extra})", True


def _apply_x(ax, label: str, log: bool) -> None:
    from matplotlib.ticker import FuncFormatter

    if log:
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.3)
        hi = max(1.0, ax.get_xlim()[1])
        ticks = [t for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000,
                             100_000, 200_000, 500_000) if t <= hi]
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.set_xlim(left=0, right=hi * 1.12)
    ax.set_xlabel(label)


def _baseline_line(ax, rows: Sequence[Mapping[str, Any]], metric: str, split: str, layer: str) -> None:
    """Dotted horizontal line at the untrained baseline (mean over seeds) of ``metric``."""
    vals = [float(r[metric]) for r in rows if r.get("kind") == "baseline" and r.get("split") == split
            and r.get("layer", "h") == layer and _finite(r.get(metric))]
    if vals:
        ax.axhline(float(np.mean(vals)), color="black", ls=":", lw=1.2,
                   label=f"untrained baseline ({np.mean(vals):.2f})", zorder=1)


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} rows", ha="center", va="center", transform=ax.transAxes, color="0.4")


def _pairs_of(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for r in rows:
        p = (r["arm_a"], r["arm_b"])
        if p not in seen:
            seen.append(p)
    return seen


def _values_of(rows: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    seen: list[Any] = []
    for r in rows:
        if key in r and r[key] not in seen:
            seen.append(r[key])
    try:
        return sorted(seen)
    except TypeError:
        return seen


def new_figure(nrows: int = 1, ncols: int = 1, w: float = 5.2, h: float = 3.6) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (parents created) and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi, format="png")
    return p


# --------------------------------------------------------------------------- alignment
def plot_alignment(rows: Iterable[Mapping[str, Any]], metrics: Sequence[str] = ("linear_cka", "rsa"),
                   splits: Sequence[str] = ("train", "test"), layer: str = "h",
                   pairs: Sequence[tuple[str, str]] | None = None, group_key: str | None = None,
                   log_epoch: bool | None = None, title: str | None = None) -> Figure:
    """Alignment over training: one panel per (metric, split); a curve per arm pair, or per value of
    ``group_key`` (e.g. ``tau``) when given; mean and 95 % CI band over seeds. Control pairs are grey
    shaded references and the untrained baseline (``kind: baseline`` rows) a dotted line. The x-axis
    is linear epochs, or log-scaled steps when evaluations fall mid-epoch (:func:`x_axis`);
    ``log_epoch`` is accepted for compatibility and ignored."""
    rows = list(rows)
    base = [r for r in rows if r.get("kind") == "baseline"]
    rows = [r for r in rows if r.get("kind", "align") == "align" and r.get("layer", "h") == layer]
    pairs = list(pairs) if pairs is not None else _pairs_of(rows)
    ctrl = {(r["arm_a"], r["arm_b"]): r.get("control") for r in rows}
    xk, xlabel, xlog = x_axis(rows)
    fig, axes = new_figure(len(metrics), len(splits), w=5.6, h=3.8)
    groups = _values_of(rows, group_key) if group_key else [None]
    for i, metric in enumerate(metrics):
        for j, split in enumerate(splits):
            ax = axes[i, j]
            sel = [r for r in rows if r.get("split") == split]
            if not sel:
                _no_data(ax, f"{split} alignment")
            k = 0
            for a, b in pairs:
                kind = ctrl.get((a, b))
                for g in groups:
                    rr = [r for r in sel if r["arm_a"] == a and r["arm_b"] == b and (g is None or r.get(group_key) == g)]
                    lab = pair_label(a, b) if g is None else (f"{group_key}={g}" if len(pairs) == 1
                                                              else f"{pair_label(a, b)}, {group_key}={g}")
                    if kind:
                        _line(ax, rr, xk, metric, f"[{CONTROL_NAMES.get(kind, kind)}] {lab}",
                              CONTROL_COLOURS.get(kind, "#888888"), control=True)
                    elif _line(ax, rr, xk, metric, lab, OKABE_ITO[k % len(OKABE_ITO)], LINESTYLE.get(split, "-")):
                        k += 1
            _baseline_line(ax, base, metric, split, layer)
            _apply_x(ax, xlabel, xlog)
            ax.set_ylabel(metric_label(metric))
            ax.set_title(f"{metric_label(metric)}: {split} split, layer {layer}", fontsize=9)
            ax.grid(alpha=0.3)
            legend_outside(ax, 6.5)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_angles(rows: Iterable[Mapping[str, Any]], pair: tuple[str, str] | None = None, split: str = "test",
                layer: str = "h", log_epoch: bool = False) -> Figure:
    """Fig 1: weight-space vs representation-space angle between two arms over training."""
    rows = [r for r in rows if r.get("kind", "align") == "align" and r.get("split") == split
            and r.get("layer", "h") == layer]
    if pair is None and rows:
        pair = next((p for p in _pairs_of(rows) if p[1] == "nscl"), _pairs_of(rows)[0])
    fig, axes = new_figure(1, 1, w=6.0, h=3.8)
    ax = axes[0, 0]
    if pair is None:
        _no_data(ax, "alignment")
        return fig
    rr = [r for r in rows if (r["arm_a"], r["arm_b"]) == tuple(pair)]
    xk, xlabel, xlog = x_axis(rr)
    for k, (key, lab) in enumerate((("weight_angle_deg", "weight space"), ("repr_angle_deg", "representation space"),
                                    ("displacement_angle_deg", "weight displacement from init"))):
        _line(ax, rr, xk, key, f"{lab} ({pair_label(*pair)})", OKABE_ITO[k], "-" if k < 2 else ":")
    _apply_x(ax, xlabel, xlog)
    ax.set_ylabel("angle (degrees)")
    ax.set_title(f"angle between {pair[0]} and {pair[1]} ({split} split, layer {layer})", fontsize=9)
    ax.grid(alpha=0.3)
    legend_outside(ax, 7)
    return fig


# --------------------------------------------------------------------------- weights
def weight_series(rows: Iterable[Mapping[str, Any]], metric: str = "weight_gap_mean", split: str = "test",
                  layer: str = "h") -> list[dict[str, Any]]:
    """The weight-gap series of every pair: the dense ``kind: weight`` rows (``eval.weight_every``)
    when present, else the ``align`` rows of one split/layer (the weight gap is the same in all)."""
    rows = list(rows)
    dense = [r for r in rows if r.get("kind") == "weight" and _finite(r.get(metric))]
    if dense:
        return dense
    return [r for r in rows if r.get("kind", "align") == "align" and r.get("split") == split
            and r.get("layer", "h") == layer and _finite(r.get(metric))]


def _steps_per_epoch(rows: Sequence[Mapping[str, Any]]) -> int | None:
    """Steps per epoch implied by rows with both ``step`` and ``epoch ≥ 1`` (``None`` if ambiguous)."""
    spe = sorted({round(float(r["step"]) / float(r["epoch"])) for r in rows
                  if _finite(r.get("epoch")) and float(r["epoch"]) >= 1 and _finite(r.get("step"))})
    return int(spe[0]) if len(spe) == 1 else None


def weight_growth_fits(rows: Iterable[Mapping[str, Any]], metric: str = "weight_gap_mean") -> dict[tuple[str, str], Any]:
    """Exponential-phase fit (:func:`repalign.analysis.fit_exponential_phase`) of the seed-mean weight gap
    of every pair against the step → ``{(a, b): GrowthFit | None}``."""
    from repalign.analysis.growth import fit_exponential_phase

    ser = weight_series(rows, metric)
    spe = _steps_per_epoch(ser)
    out = {}
    for a, b in _pairs_of(ser):
        xs, m, *_ = aggregate([r for r in ser if (r["arm_a"], r["arm_b"]) == (a, b)], "step", metric)
        out[(a, b)] = fit_exponential_phase(xs, m, steps_per_epoch=spe)
    return out


def plot_weight_gap(rows: Iterable[Mapping[str, Any]], metric: str = "weight_gap_mean", split: str = "test",
                    layer: str = "h", with_alignment: bool = True, pairs: Sequence[tuple[str, str]] | None = None
                    ) -> Figure:
    """Weight gap against the optimiser step (log y), with each pair's exponential-phase fit drawn
    over its fitted window only, next to the representation alignment (linear CKA) of the same pairs."""
    rows = list(rows)
    ser = weight_series(rows, metric, split, layer)
    pairs = list(pairs) if pairs is not None else _pairs_of(ser)
    fits = weight_growth_fits(rows, metric)
    ctrl = {(r["arm_a"], r["arm_b"]): r.get("control") for r in rows if r.get("kind", "align") == "align"}
    fig, axes = new_figure(1, 2 if with_alignment else 1, w=5.8, h=3.9)
    ax = axes[0, 0]
    n_fits = 0
    if not ser:
        _no_data(ax, "weight gap")
    for k, (a, b) in enumerate(pairs):
        rr = [r for r in ser if r["arm_a"] == a and r["arm_b"] == b and r[metric] > 0]
        col = OKABE_ITO[k % len(OKABE_ITO)]
        kind = ctrl.get((a, b))
        lab = (f"[{CONTROL_NAMES[kind]}] " if kind in CONTROL_NAMES else "") + pair_label(a, b)
        if kind:  # controls drawn as in every panel: grey, dashed, shaded
            _line(ax, rr, "step", metric, lab, CONTROL_COLOURS.get(kind, "#888888"), control=True)
        else:
            _line(ax, rr, "step", metric, lab, col, marker="." if len(rr) > 40 else "o")
        f = fits.get((a, b))
        if f is not None and f.resolved:
            n_fits += 1
            ex = np.linspace(f.start_step, f.end_step, 50)
            ax.plot(ex, np.exp(f.intercept + f.rate_per_step * ex), ":", color=col, lw=2,
                    label=f"fit {pair_label(a, b)}: rate {f.rate_per_step:.3g}/step, steps {f.start_step:g}–{f.end_step:g}")
    ax.set_yscale("log")
    _apply_x(ax, "optimiser step (log scale)", True)
    ax.set_ylabel("weight gap (log scale)")
    ax.set_title("weight gap; dotted: exponential-phase fit over its window" if n_fits else
                 "weight gap (no exponential-phase fit resolved; see the growth table)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax, 6)
    if with_alignment:
        ax2 = axes[0, 1]
        al = [r for r in rows if r.get("kind", "align") == "align" and r.get("split") == split
              and r.get("layer", "h") == layer]
        for k, (a, b) in enumerate(pairs):
            rr = [r for r in al if r["arm_a"] == a and r["arm_b"] == b]
            kind = ctrl.get((a, b))
            if kind:
                _line(ax2, rr, "step", "linear_cka", f"[{CONTROL_NAMES.get(kind, kind)}] {pair_label(a, b)}",
                      CONTROL_COLOURS.get(kind, "#888888"), control=True)
            else:
                _line(ax2, rr, "step", "linear_cka", pair_label(a, b), OKABE_ITO[k % len(OKABE_ITO)])
        _baseline_line(ax2, rows, "linear_cka", split, layer)
        _apply_x(ax2, "optimiser step (log scale)", True)
        ax2.set_ylabel("linear CKA")
        ax2.set_title(f"representation alignment ({split} split, layer {layer})", fontsize=9)
        ax2.grid(alpha=0.3)
        legend_outside(ax2, 6)
    return fig


# --------------------------------------------------------------------------- losses
def plot_loss_gap(rows: Iterable[Mapping[str, Any]]) -> Figure:
    """Per-batch L_DCL − L_NSCL of each CL arm against its bound over optimiser steps, and the two losses."""
    rows = [r for r in rows if r.get("kind") == "lossgap"]
    fig, axes = new_figure(1, 2)
    ax, ax2 = axes[0, 0], axes[0, 1]
    if not rows:
        _no_data(ax, "lossgap")
        _no_data(ax2, "lossgap")
    for k, arm in enumerate(_values_of(rows, "arm")):
        rr = [r for r in rows if r["arm"] == arm]
        col = OKABE_ITO[(2 * k) % len(OKABE_ITO)]
        col2 = OKABE_ITO[(2 * k + 1) % len(OKABE_ITO)]
        _line(ax, rr, "step", "gap", f"{arm}: measured L_DCL − L_NSCL", col, marker="")
        _line(ax, rr, "step", "bound", f"{arm}: bound log(1 + e^{{2/τ}} n_max/(N − n_max))", col2, "--", marker="")
        _line(ax2, rr, "step", "dcl", f"{arm}: L_DCL", col, marker="")
        _line(ax2, rr, "step", "nscl", f"{arm}: L_NSCL (same embeddings)", col2, "--", marker="")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss gap (nats, log scale)")
    ax.set_yscale("log")
    ax.set_title("per-batch loss gap vs its bound", fontsize=9)
    ax2.set_xlabel("optimiser step")
    ax2.set_ylabel("loss (nats)")
    ax2.set_title("DCL and NSCL losses of the CL arm", fontsize=9)
    for a in (ax, ax2):
        a.grid(alpha=0.3, which="both")
        if rows:
            legend_outside(a, 7)
    return fig


def plot_gap_vs_classes(points: Iterable[Mapping[str, Any]], gap_label: str, bound_label: str,
                        ylabel: str, title: str) -> Figure:
    """A measured gap and its bound against the number of classes C: ``points`` rows with
    ``num_classes, gap, bound`` (and optionally ``seed``); log–log axes, mean and min–max band over seeds."""
    points = list(points)
    fig, axes = new_figure(1, 1, w=5.6)
    ax = axes[0, 0]
    if not points:
        _no_data(ax, "gap")
    _line(ax, points, "num_classes", "gap", gap_label, OKABE_ITO[0])
    _line(ax, points, "num_classes", "bound", bound_label, OKABE_ITO[1], "--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of classes C (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    if points:
        legend_outside(ax, 7)
    return fig


def plot_loss_gap_vs_classes(points: Iterable[Mapping[str, Any]]) -> Figure:
    """Loss gap L_DCL − L_NSCL and its bound against the number of classes C (see :func:`plot_gap_vs_classes`)."""
    return plot_gap_vs_classes(points, "measured L_DCL − L_NSCL (CL arm, end of training)",
                               "bound log(1 + e^{2/τ} n_max/(N − n_max))", "loss gap (nats, log scale)",
                               "loss gap vs number of classes")


def plot_train_loss(rows: Iterable[Mapping[str, Any]]) -> Figure:
    """Training loss of every arm over optimiser steps."""
    rows = [r for r in rows if r.get("kind") == "train"]
    fig, axes = new_figure(1, 1, w=6.0)
    ax = axes[0, 0]
    arms = list(dict.fromkeys(r["arm"] for r in rows))  # first-seen order
    for k, arm in enumerate(arms):
        rr = [r for r in rows if r["arm"] == arm]
        obj = rr[0].get("objective", "")
        _line(ax, rr, "step", "loss", f"{arm} ({obj})" if obj and obj != arm else arm, OKABE_ITO[k % 8], marker="")
    if not rows:
        _no_data(ax, "train")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (nats)")
    ax.set_title("per-arm training loss", fontsize=9)
    ax.grid(alpha=0.3)
    if rows:
        legend_outside(ax, 7)
    return fig


def plot_knn(rows: Iterable[Mapping[str, Any]], metric: str = "knn_acc") -> Figure:
    """kNN test accuracy of every arm over epochs."""
    rows = [r for r in rows if r.get("kind") == "eval" and _finite(r.get(metric))]
    fig, axes = new_figure(1, 1, w=6.0)
    ax = axes[0, 0]
    arms = list(dict.fromkeys(r["arm"] for r in rows))  # first-seen order
    xk, xlabel, xlog = x_axis(rows)
    for k, arm in enumerate(arms):
        _line(ax, [r for r in rows if r["arm"] == arm], xk, metric, arm, OKABE_ITO[k % 8])
    if not rows:
        _no_data(ax, "eval")
    _apply_x(ax, xlabel, xlog)
    ax.set_ylabel(metric_label(metric))
    ax.set_title("kNN accuracy (features h, test split)", fontsize=9)
    ax.grid(alpha=0.3)
    if rows:
        legend_outside(ax, 7)
    return fig


# --------------------------------------------------------------------------- theory
def plot_theory(rows: Iterable[Mapping[str, Any]], group_key: str | None = None, log_epoch: bool = False) -> Figure:
    """Theory overlay from :func:`repalign.analysis.theory.theory_rows` rows.

    Left: measured similarity gap (solid) and the main bound's shape normalised at the first
    evaluation after epoch 0 (dashed), log y. Right: Cor. 1 — the cosine-kernel CKA it bounds
    (``cka_cos`` = cos of the representation angle, solid) and ``(1 − ρ)/(1 + ρ)`` with the centred
    ``ρ = ‖H(Σ_a − Σ_b)H‖_F / ‖HΣ_bH‖_F`` (dashed) drawn only where ρ < 1; where ρ ≥ 1 the panel says "vacuous".
    The linear CKA of the raw features (what the tables report; not bounded by the corollary) is dotted.
    One colour per ``group_key`` value (e.g. ``tau``, ``num_classes``)."""
    rows = list(rows)
    fig, axes = new_figure(1, 2)
    ax, ax2 = axes[0, 0], axes[0, 1]
    groups = _values_of(rows, group_key) if group_key else [None]
    if not rows:
        _no_data(ax, "theory")
        _no_data(ax2, "theory")
    xk, xlabel, xlog = x_axis(rows)
    notes: dict[str, list[str]] = {}  # where Cor. 1 gives no bound → the groups (under the right panel's x label)
    for k, g in enumerate(groups):
        rr = [r for r in rows if g is None or r.get(group_key) == g]
        if not rr:
            continue
        col = OKABE_ITO[k % len(OKABE_ITO)]
        tag = f"{group_key}={g}: " if g is not None else ""
        pair = f"{rr[0]['arm_a']} vs {rr[0]['arm_b']}"
        _line(ax, [r for r in rr if r["sim_gap"] > 0], xk, "sim_gap", f"{tag}measured ({pair})", col)
        bound = [r for r in rr if _finite(r.get("bound_shape")) and r["bound_shape"] > 0]
        _line(ax, bound, xk, "bound_shape", f"{tag}bound shape (normalised)", col, "--", marker="x")
        if len(bound) < len([r for r in rr if r["step"] > 0]):
            ax.text(0.02, 0.02 + 0.06 * k, f"{tag}bound overflows / is ∞ at some epochs",
                    transform=ax.transAxes, fontsize=7, color=col)
        # Cor. 1 bounds the CKA of the cosine kernel by the centred ρ (analysis.theory.corollary_bound); rows
        # without those columns (older CSVs) show no bound rather than the old, wrong one
        cos_rows = [r for r in rr if _finite(r.get("cka_cos"))]
        _line(ax2, cos_rows, xk, "cka_cos", f"{tag}CKA of the cosine kernel (bounded)", col)
        _line(ax2, rr, xk, "linear_cka", f"{tag}linear CKA on raw h (not bounded)", col, ":")
        bounded = [r for r in rr if r.get("bound_status") == "bound" and _finite(r.get("cka_lower_bound"))]
        _line(ax2, bounded, xk, "cka_lower_bound", f"{tag}(1 − ρ)/(1 + ρ), ρ < 1", col, "--", marker="x")
        vac = [r for r in rr if str(r.get("bound_status", "")).startswith("vacuous")]
        if vac or not bounded:
            why = f"vacuous (ρ ≥ 1) at {len(vac)} of {len(rr)} evaluations" if vac else "no bound: centred ρ not recorded"
            notes.setdefault(why, []).append(str(g) if g is not None else "")
    for a in (ax, ax2):
        _apply_x(a, xlabel, xlog)
        a.grid(alpha=0.3, which="both")
        if rows:
            legend_outside(a, 6)
    ax.set_yscale("log")
    ax.set_ylabel("‖Σ_a − Σ_b‖_F (unitless, log scale)")
    ax.set_title("similarity gap vs bound shape (constants unknown: trend only)", fontsize=9)
    if notes:
        lines = [why + (f" ({group_key} = {', '.join(gs)})" if group_key and any(gs) else "") for why, gs in notes.items()]
        ax2.set_xlabel(ax2.get_xlabel() + "\n" + "\n".join(lines), fontsize=7)
    ax2.set_ylabel("CKA (unitless)")
    ax2.set_title("Cor. 1: cosine-kernel CKA ≥ (1 − ρ)/(1 + ρ), ρ = ‖H(Σ_a − Σ_b)H‖_F / ‖HΣ_bH‖_F", fontsize=8)
    return fig


# --------------------------------------------------------------------------- sweeps
def plot_heatmaps(rows: Iterable[Mapping[str, Any]], row_key: str = "num_classes", metric: str = "linear_cka",
                  pairs: Sequence[tuple[str, str]] | None = None, split: str = "test", layer: str = "h",
                  vmin: float | None = None, vmax: float = 1.0) -> Figure:
    """Fig 3: one heatmap per arm pair, ``row_key`` (e.g. C) × epoch, seed-mean of ``metric``."""
    rows = [r for r in rows if r.get("kind", "align") == "align" and r.get("split") == split
            and r.get("layer", "h") == layer]
    pairs = list(pairs) if pairs is not None else _pairs_of(rows)
    fig, axes = new_figure(1, max(1, len(pairs)), w=4.4, h=3.6)
    ys = _values_of(rows, row_key)
    xs = _values_of(rows, "epoch")
    vals = [r[metric] for r in rows if _finite(r.get(metric))]
    lo = vmin if vmin is not None else (min(vals) if vals else 0.0)
    lo = min(lo, vmax - 0.05)
    im = None
    for k, (a, b) in enumerate(pairs):
        ax = axes[0, k]
        M = np.full((len(ys), len(xs)), np.nan)
        for i, yv in enumerate(ys):
            for j, xv in enumerate(xs):
                v = [r[metric] for r in rows if (r["arm_a"], r["arm_b"]) == (a, b) and r.get(row_key) == yv
                     and r["epoch"] == xv and _finite(r.get(metric))]
                if v:
                    M[i, j] = float(np.mean(v))
        im = ax.imshow(M, aspect="auto", origin="lower", cmap="viridis", vmin=lo, vmax=vmax)
        ax.set_xticks(range(len(xs)), [str(x) for x in xs], fontsize=7)
        ax.set_yticks(range(len(ys)), [str(y) for y in ys], fontsize=7)
        ax.set_xlabel("epoch")
        ax.set_ylabel(row_key.replace("num_classes", "number of classes C"))
        ax.set_title(f"{metric_label(metric)}: {pair_label(a, b)} ({split})", fontsize=9)
        for i in range(len(ys)):
            for j in range(len(xs)):
                if np.isfinite(M[i, j]):
                    ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if M[i, j] < (lo + vmax) / 2 else "black")
    if im is not None:
        fig.colorbar(im, ax=list(axes.ravel()), label=f"{metric_label(metric)} (unitless)", shrink=0.9)
    return fig


def plot_final_vs(rows: Iterable[Mapping[str, Any]], x_key: str, group_key: str | None,
                  metrics: Sequence[str] = ("linear_cka", "rsa"), pair: tuple[str, str] = ("cl", "nscl"),
                  split: str = "test", layer: str = "h", log_x: bool = True,
                  reference: Sequence[Mapping[str, Any]] | None = None,
                  controls: Sequence[tuple[str, str]] = (), title: str | None = None) -> Figure:
    """Final-epoch alignment of one pair against ``x_key`` (e.g. batch size), one curve per ``group_key``
    value (e.g. lr rule); paper reference points (hollow markers) when given. Each pair in ``controls``
    (e.g. the chaos floor ``("cl", "cl_eps")`` and noise floor ``("cl", "cl_data")``) is drawn per group in
    the group's colour without markers — dashed for the first control, dotted for the next — so every
    point can be read against its own floors."""
    every = [r for r in rows if r.get("kind", "align") == "align" and r.get("split") == split
             and r.get("layer", "h") == layer]
    rows = [r for r in every if (r["arm_a"], r["arm_b"]) == tuple(pair)]
    last = max((r["epoch"] for r in rows), default=None)
    rows = [r for r in rows if r["epoch"] == last]
    ctrl_rows = {c: [r for r in every if (r["arm_a"], r["arm_b"]) == tuple(c) and r["epoch"] == last] for c in controls}
    fig, axes = new_figure(1, len(metrics), h=4.6 if controls else 3.6)
    groups = _values_of(rows, group_key) if group_key else [None]
    for i, metric in enumerate(metrics):
        ax = axes[0, i]
        for k, g in enumerate(groups):
            rr = [r for r in rows if g is None or r.get(group_key) == g]
            _line(ax, rr, x_key, metric, f"{group_key}={g}" if g is not None else pair_label(*pair), OKABE_ITO[k % 8])
            for j, c in enumerate(controls):
                cr = [r for r in ctrl_rows[c] if g is None or r.get(group_key) == g]
                name = CONTROL_NAMES.get(str(cr[0].get("control")), pair_label(*c)) if cr else pair_label(*c)
                _line(ax, cr, x_key, metric, (f"{group_key}={g}: " if g is not None else "") + name,
                      OKABE_ITO[k % 8], ls="--" if j == 0 else ":", marker="", band=False)
            if reference:
                ref = [r for r in reference if r["metric"] == metric and (g is None or r.get(group_key) == g)
                       and r["split"] in (split, "both")]
                if ref:
                    ax.plot([r[x_key] for r in ref], [r["value"] for r in ref], "s", mfc="none",
                            color=OKABE_ITO[k % 8], label=f"paper ({ref[0]['dataset']}), {group_key}={g}")
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(x_key.replace("batch_size", "batch size B (log2 scale)"))
        ax.set_ylabel(f"{metric_label(metric)} (unitless)")
        ax.set_title(title or f"{pair_label(*pair)} at the last epoch ({last}), {split}", fontsize=9)
        ax.grid(alpha=0.3)
        if rows and controls:  # many entries: below the axes, off the lines
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        elif rows:
            legend_outside(ax, 6)
    return fig





# --------------------------------------------------------------------------- designs (issue 18)
def _mean_ci(values: Iterable[float]) -> tuple[float, float, float, int]:
    from repalign.analysis.stats import summarize

    v = [float(x) for x in values if _finite(x)]
    if not v:
        return math.nan, math.nan, math.nan, 0
    s = summarize(v)
    return s.mean, s.lo if s.lo is not None else s.mean, s.hi if s.hi is not None else s.mean, s.n


def plot_design_vs(per: Mapping[float, Mapping[Any, float]], floors: Mapping[str, Mapping[Any, float]],
                   x_label: str, y_label: str, title: str, log_x: bool = False,
                   x_ticks: Sequence[float] | None = None) -> Figure:
    """One design's alignment against its condition: ``per[x][seed] = y`` (e.g. CKA(cl, NSCL_K) at K = x).
    Thin grey lines join each seed's conditions (the paired design), the black line with error bars is
    the mean and 95 % t-interval over seeds; each ``floors[name][seed]`` (chaos / noise floor, the same
    for every condition) is a horizontal band: mean (dashed / dotted) and its interval (shaded)."""
    fig, axes = new_figure(1, 1, w=6.4, h=4.2)
    ax = axes[0, 0]
    xs = sorted(per)
    if not xs:
        _no_data(ax, "align")
        return fig
    seeds = sorted({s for x in xs for s in per[x]}, key=str)
    for s in seeds:
        pts = [(x, per[x][s]) for x in xs if s in per[x] and _finite(per[x][s])]
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="#BBBBBB", lw=0.6, zorder=1)
    stats = [_mean_ci(per[x].values()) for x in xs]
    m = np.array([t[0] for t in stats])
    err = np.array([[t[0] - t[1] for t in stats], [t[2] - t[0] for t in stats]])
    n = max(t[3] for t in stats)
    ax.errorbar(xs, m, yerr=err, fmt="o-", color=OKABE_ITO[0], ms=4, lw=1.6, capsize=3, zorder=3,
                label=f"cl vs X (mean ± 95 % CI, n = {n} seeds; grey: one seed)")
    for j, (name, vals) in enumerate(floors.items()):
        fm, flo, fhi, fn = _mean_ci(vals.values())
        if fn == 0:
            continue
        col = CONTROL_COLOURS["chaos" if j == 0 else "noise_data"]
        ax.axhline(fm, color=col, ls="--" if j == 0 else ":", lw=1.2, label=f"{name} (mean ± 95 % CI, n = {fn})", zorder=2)
        ax.axhspan(flo, fhi, color=col, alpha=0.18, lw=0, zorder=0)
    if log_x:
        ax.set_xscale("log")
    if x_ticks is not None:
        from matplotlib.ticker import NullFormatter

        ax.set_xticks(list(x_ticks))
        ax.set_xticklabels([f"{t:g}" for t in x_ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return fig


def plot_relation(points: Mapping[str, Mapping[Any, tuple[float, float]]], x_label: str, y_label: str, title: str,
                  fit: Mapping[str, Any] | None = None) -> Figure:
    """A measured relation over arms: ``points[arm][seed] = (x, y)`` (e.g. x = the arm's mean loss gap,
    y = CKA(cl, arm) or ‖Σ_CL − Σ_arm‖_F). Each arm: its seeds (small dots) and the mean with 95 % intervals in
    x and y; grey lines join one seed's arms in x order. ``fit`` (:func:`repalign.analysis.structure.fit_relation`)
    goes to the title as the per-seed slope with its interval."""
    fig, axes = new_figure(1, 1, w=6.4, h=4.2)
    ax = axes[0, 0]
    if not any(points.values()):
        _no_data(ax, "lossgap")
        return fig
    by_seed: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for per in points.values():
        for s, xy in per.items():
            by_seed[s].append(xy)
    for pts in by_seed.values():
        pts = sorted(p for p in pts if _finite(p[0]) and _finite(p[1]))
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="#DDDDDD", lw=0.6, zorder=1)
    for k, (arm, per) in enumerate(points.items()):
        col = OKABE_ITO[k % len(OKABE_ITO)]
        xy = [p for p in per.values() if _finite(p[0]) and _finite(p[1])]
        if not xy:
            continue
        ax.plot([p[0] for p in xy], [p[1] for p in xy], ".", color=col, ms=3, alpha=0.5, zorder=2)
        mx, xlo, xhi, _n = _mean_ci(p[0] for p in xy)
        my, ylo, yhi, n = _mean_ci(p[1] for p in xy)
        ax.errorbar([mx], [my], xerr=[[mx - xlo], [xhi - mx]], yerr=[[my - ylo], [yhi - my]], fmt="o", color=col,
                    ms=5, capsize=3, zorder=3, label=f"{arm} (n = {n})")
    t = title
    if fit and fit.get("slope") is not None:
        s = fit["slope"]
        t += f"\nper-seed slope {s.mean:.3g} [{s.lo:.3g}, {s.hi:.3g}] (95 % CI, n = {s.n})" if s.lo is not None else ""
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(t, fontsize=9)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return fig
