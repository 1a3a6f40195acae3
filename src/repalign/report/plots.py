"""Plots: pure functions ``rows → matplotlib Figure`` (Agg backend, Okabe–Ito palette).

Every function takes plain lists of metric rows (the ``metrics.jsonl`` schema of docs/design.md,
optionally with extra keys such as ``seed``, ``tau`` or ``num_classes`` added by a sweep) and
returns a :class:`matplotlib.figure.Figure`; nothing is read from disk. Rows sharing everything
but their ``seed`` are averaged: the line is the mean, the band the min–max over seeds (± std
would need ≥ 3 seeds to mean anything). Curves are labelled by arm name (``cl vs nscl``).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: Okabe & Ito (2008) colour-blind-safe palette (blue, vermillion, green, orange, purple, sky, yellow, black).
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
LINESTYLE = {"train": "-", "test": "--"}
METRIC_LABEL = {
    "linear_cka": "linear CKA", "debiased_cka": "debiased CKA", "rsa": "RSA (Pearson r of RDMs)",
    "sim_gap": "similarity gap ‖Σ_a − Σ_b‖_F", "sim_gap_rel": "relative similarity gap ρ",
    "weight_gap_mean": "weight gap (mean rel. Frobenius)",
    "weight_rel_l2": "relative L2 weight distance", "weight_angle_deg": "weight-space angle (degrees)",
    "repr_angle_deg": "representation angle (degrees)", "displacement_angle_deg": "displacement angle (degrees)",
    "knn_acc": "kNN test accuracy (fraction)", "loss": "training loss (nats)",
}
_ARM_COLOURS: dict[str, str] = {}


def colour(key: Any, order: Sequence[Any] | None = None) -> str:
    """A stable palette colour for a curve key (by position in ``order`` when given)."""
    if order is not None and key in order:
        return OKABE_ITO[list(order).index(key) % len(OKABE_ITO)]
    k = str(key)
    if k not in _ARM_COLOURS:
        _ARM_COLOURS[k] = OKABE_ITO[len(_ARM_COLOURS) % len(OKABE_ITO)]
    return _ARM_COLOURS[k]


def pair_label(a: str, b: str) -> str:
    return f"{a} vs {b}"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def aggregate(rows: Iterable[Mapping[str, Any]], x: str, y: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean, min and max of ``y`` over rows sharing ``x`` (rows from several seeds) → ``(x, mean, lo, hi, n)``;
    ``n`` = largest number of values averaged at one ``x``. Non-finite values are left out."""
    by: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        if _finite(r.get(x)) and _finite(r.get(y)):
            by[float(r[x])].append(float(r[y]))
    xs = np.array(sorted(by))
    if not len(xs):
        return xs, xs, xs, xs, 0
    vals = [np.array(by[v]) for v in xs]
    return (xs, np.array([v.mean() for v in vals]), np.array([v.min() for v in vals]),
            np.array([v.max() for v in vals]), max(len(v) for v in vals))


def _line(ax, rows, x, y, label, col, ls="-", marker="o", band=True):
    xs, m, lo, hi, n = aggregate(rows, x, y)
    if not len(xs):
        return None
    lab = label + (f" (mean of {n}, band = min–max)" if n > 1 else "")
    (h,) = ax.plot(xs, m, ls, color=col, marker=marker, ms=3, lw=1.5, label=lab)
    if band and n > 1:
        ax.fill_between(xs, lo, hi, color=col, alpha=0.18, lw=0)
    return h


def _epoch_axis(ax, log_epoch: bool) -> None:
    if log_epoch:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("epoch (symlog scale)")
    else:
        ax.set_xlabel("epoch")


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
                   log_epoch: bool = True, title: str | None = None) -> Figure:
    """Alignment over epochs: one panel per (metric, split); a curve per arm pair, or per value of
    ``group_key`` (e.g. ``tau``) when given; mean and min–max band over seeds."""
    rows = [r for r in rows if r.get("kind", "align") == "align" and r.get("layer", "h") == layer]
    pairs = list(pairs) if pairs is not None else _pairs_of(rows)
    fig, axes = new_figure(len(metrics), len(splits))
    groups = _values_of(rows, group_key) if group_key else [None]
    for i, metric in enumerate(metrics):
        for j, split in enumerate(splits):
            ax = axes[i, j]
            sel = [r for r in rows if r.get("split") == split]
            if not sel:
                _no_data(ax, f"{split} alignment")
            k = 0
            for a, b in pairs:
                for g in groups:
                    rr = [r for r in sel if r["arm_a"] == a and r["arm_b"] == b and (g is None or r.get(group_key) == g)]
                    lab = pair_label(a, b) if g is None else (f"{group_key}={g}" if len(pairs) == 1
                                                              else f"{pair_label(a, b)}, {group_key}={g}")
                    if _line(ax, rr, "epoch", metric, lab, OKABE_ITO[k % len(OKABE_ITO)], LINESTYLE.get(split, "-")):
                        k += 1
            _epoch_axis(ax, log_epoch)
            ax.set_ylabel(f"{METRIC_LABEL.get(metric, metric)} (unitless)")
            ax.set_title(f"{METRIC_LABEL.get(metric, metric)} — {split} split, layer {layer}", fontsize=9)
            ax.grid(alpha=0.3)
            if k:
                ax.legend(fontsize=7)
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
    for k, (key, lab) in enumerate((("weight_angle_deg", "weight space"), ("repr_angle_deg", "representation space"),
                                    ("displacement_angle_deg", "weight displacement from init"))):
        _line(ax, rr, "epoch", key, f"{lab} ({pair_label(*pair)})", OKABE_ITO[k], "-" if k < 2 else ":")
    _epoch_axis(ax, log_epoch)
    ax.set_ylabel("angle (degrees)")
    ax.set_title(f"angle between {pair[0]} and {pair[1]} ({split} split, layer {layer})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------- weights
def fit_growth_rate(epochs: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit ``log v = a + r·epoch`` over points with epoch > 0 and v > 0 → ``(r, a)``
    (``r`` in 1/epoch; ``nan`` when fewer than 2 usable points)."""
    e = np.asarray(epochs, dtype=float)
    v = np.asarray(values, dtype=float)
    ok = (e > 0) & (v > 0) & np.isfinite(v)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    r, a = np.polyfit(e[ok], np.log(v[ok]), 1)
    return float(r), float(a)


def plot_weight_gap(rows: Iterable[Mapping[str, Any]], metric: str = "weight_gap_mean", split: str = "test",
                    layer: str = "h", with_alignment: bool = True, pairs: Sequence[tuple[str, str]] | None = None
                    ) -> Figure:
    """Weight gap over epochs (log y) with a fitted exponential growth rate per pair, next to the
    representation alignment (linear CKA) of the same pairs."""
    rows = [r for r in rows if r.get("kind", "align") == "align" and r.get("split") == split
            and r.get("layer", "h") == layer]
    pairs = list(pairs) if pairs is not None else _pairs_of(rows)
    fig, axes = new_figure(1, 2 if with_alignment else 1)
    ax = axes[0, 0]
    if not rows:
        _no_data(ax, "alignment")
    for k, (a, b) in enumerate(pairs):
        rr = [r for r in rows if r["arm_a"] == a and r["arm_b"] == b]
        col = OKABE_ITO[k % len(OKABE_ITO)]
        xs, m, _lo, _hi, _n = aggregate(rr, "epoch", metric)
        rate, icpt = fit_growth_rate(xs, m)
        lab = pair_label(a, b) + (f"  (fit: ∝ e^{{{rate:.3g}·epoch}})" if math.isfinite(rate) else "")
        _line(ax, [r for r in rr if _finite(r.get(metric)) and r[metric] > 0], "epoch", metric, lab, col)
        if math.isfinite(rate):
            ex = xs[xs > 0]
            ax.plot(ex, np.exp(icpt + rate * ex), ":", color=col, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{METRIC_LABEL.get(metric, metric)} (unitless, log scale)")
    ax.set_title("weight gap over training (dotted: exponential fit, epochs > 0)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    if pairs:
        ax.legend(fontsize=7)
    if with_alignment:
        ax2 = axes[0, 1]
        for k, (a, b) in enumerate(pairs):
            rr = [r for r in rows if r["arm_a"] == a and r["arm_b"] == b]
            _line(ax2, rr, "epoch", "linear_cka", pair_label(a, b), OKABE_ITO[k % len(OKABE_ITO)])
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("linear CKA (unitless)")
        ax2.set_title(f"representation alignment ({split} split, layer {layer})", fontsize=9)
        ax2.grid(alpha=0.3)
        if pairs:
            ax2.legend(fontsize=7)
    return fig


def weight_growth_rates(rows: Iterable[Mapping[str, Any]], metric: str = "weight_gap_mean", split: str = "test",
                        layer: str = "h") -> dict[tuple[str, str], float]:
    """Fitted exponential growth rate (1/epoch) of the weight gap per arm pair (seed-mean curve)."""
    rows = [r for r in rows if r.get("kind", "align") == "align" and r.get("split") == split
            and r.get("layer", "h") == layer]
    out = {}
    for a, b in _pairs_of(rows):
        xs, m, *_ = aggregate([r for r in rows if (r["arm_a"], r["arm_b"]) == (a, b)], "epoch", metric)
        out[(a, b)] = fit_growth_rate(xs, m)[0]
    return out


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
            a.legend(fontsize=7)
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
        ax.legend(fontsize=7)
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
        ax.legend(fontsize=7)
    return fig


def plot_knn(rows: Iterable[Mapping[str, Any]], metric: str = "knn_acc") -> Figure:
    """kNN test accuracy of every arm over epochs."""
    rows = [r for r in rows if r.get("kind") == "eval" and _finite(r.get(metric))]
    fig, axes = new_figure(1, 1, w=6.0)
    ax = axes[0, 0]
    arms = list(dict.fromkeys(r["arm"] for r in rows))  # first-seen order
    for k, arm in enumerate(arms):
        _line(ax, [r for r in rows if r["arm"] == arm], "epoch", metric, arm, OKABE_ITO[k % 8])
    if not rows:
        _no_data(ax, "eval")
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC_LABEL.get(metric, metric))
    ax.set_title("kNN accuracy (features h, test split)", fontsize=9)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------- theory
def plot_theory(rows: Iterable[Mapping[str, Any]], group_key: str | None = None, log_epoch: bool = False) -> Figure:
    """Theory overlay from :func:`repalign.experiments.theory.theory_rows` rows.

    Left: measured similarity gap (solid) and the main bound's shape normalised at the first
    evaluation after epoch 0 (dashed), log y. Right: measured CKA (solid) and the lower bound
    (1 − ρ)/(1 + ρ) (dashed). One colour per ``group_key`` value (e.g. ``tau``, ``num_classes``)."""
    rows = list(rows)
    fig, axes = new_figure(1, 2)
    ax, ax2 = axes[0, 0], axes[0, 1]
    groups = _values_of(rows, group_key) if group_key else [None]
    if not rows:
        _no_data(ax, "theory")
        _no_data(ax2, "theory")
    for k, g in enumerate(groups):
        rr = [r for r in rows if g is None or r.get(group_key) == g]
        if not rr:
            continue
        col = OKABE_ITO[k % len(OKABE_ITO)]
        tag = f"{group_key}={g}: " if g is not None else ""
        pair = f"{rr[0]['arm_a']} vs {rr[0]['arm_b']}"
        _line(ax, [r for r in rr if r["sim_gap"] > 0], "epoch", "sim_gap", f"{tag}measured ({pair})", col)
        bound = [r for r in rr if _finite(r.get("bound_shape")) and r["bound_shape"] > 0]
        _line(ax, bound, "epoch", "bound_shape", f"{tag}bound shape (normalised)", col, "--", marker="x")
        if len(bound) < len([r for r in rr if r["epoch"] > 0]):
            ax.text(0.02, 0.02 + 0.06 * k, f"{tag}bound overflows / is ∞ at some epochs",
                    transform=ax.transAxes, fontsize=7, color=col)
        _line(ax2, rr, "epoch", "linear_cka", f"{tag}measured CKA", col)
        _line(ax2, rr, "epoch", "cka_lower_bound", f"{tag}(1 − ρ)/(1 + ρ)", col, "--", marker="x")
    for a in (ax, ax2):
        _epoch_axis(a, log_epoch)
        a.grid(alpha=0.3, which="both")
        if rows:
            a.legend(fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("‖Σ_a − Σ_b‖_F (unitless, log scale)")
    ax.set_title("similarity gap vs bound shape (constants unknown: trend only)", fontsize=9)
    ax2.set_ylabel("linear CKA (unitless)")
    ax2.set_title("CKA vs lower bound from the measured relative gap ρ", fontsize=9)
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
        ax.set_title(f"{METRIC_LABEL.get(metric, metric)}: {pair_label(a, b)} ({split})", fontsize=9)
        for i in range(len(ys)):
            for j in range(len(xs)):
                if np.isfinite(M[i, j]):
                    ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if M[i, j] < (lo + vmax) / 2 else "black")
    if im is not None:
        fig.colorbar(im, ax=list(axes.ravel()), label=f"{METRIC_LABEL.get(metric, metric)} (unitless)", shrink=0.9)
    return fig


def plot_final_vs(rows: Iterable[Mapping[str, Any]], x_key: str, group_key: str | None,
                  metrics: Sequence[str] = ("linear_cka", "rsa"), pair: tuple[str, str] = ("cl", "nscl"),
                  split: str = "test", layer: str = "h", log_x: bool = True,
                  reference: Sequence[Mapping[str, Any]] | None = None) -> Figure:
    """Final-epoch alignment of one pair against ``x_key`` (e.g. batch size), one curve per ``group_key``
    value (e.g. lr rule); paper reference points (hollow markers) when given."""
    rows = [r for r in rows if r.get("kind", "align") == "align" and r.get("split") == split
            and r.get("layer", "h") == layer and (r["arm_a"], r["arm_b"]) == tuple(pair)]
    last = max((r["epoch"] for r in rows), default=None)
    rows = [r for r in rows if r["epoch"] == last]
    fig, axes = new_figure(1, len(metrics))
    groups = _values_of(rows, group_key) if group_key else [None]
    for i, metric in enumerate(metrics):
        ax = axes[0, i]
        for k, g in enumerate(groups):
            rr = [r for r in rows if g is None or r.get(group_key) == g]
            _line(ax, rr, x_key, metric, f"{group_key}={g}" if g is not None else pair_label(*pair), OKABE_ITO[k % 8])
            if reference:
                ref = [r for r in reference if r["metric"] == metric and (g is None or r.get(group_key) == g)
                       and r["split"] in (split, "both")]
                if ref:
                    ax.plot([r[x_key] for r in ref], [r["value"] for r in ref], "s", mfc="none",
                            color=OKABE_ITO[k % 8], label=f"paper ({ref[0]['dataset']}), {group_key}={g}")
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(x_key.replace("batch_size", "batch size B (log2 scale)"))
        ax.set_ylabel(f"{METRIC_LABEL.get(metric, metric)} (unitless)")
        ax.set_title(f"{pair_label(*pair)} at the last epoch ({last}), {split}", fontsize=9)
        ax.grid(alpha=0.3)
        if rows:
            ax.legend(fontsize=6)
    return fig


PLOTTERS: dict[str, Callable[..., Figure]] = {
    "alignment": plot_alignment, "angles": plot_angles, "weight_gap": plot_weight_gap, "loss_gap": plot_loss_gap,
    "train_loss": plot_train_loss, "knn": plot_knn, "theory": plot_theory,
}
