"""Heatmaps and the self-contained HTML page of a :class:`~repalign.compare.Comparison` (the run
report's page style: :func:`repalign.report.html.page`)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_comparison", "html_page"]

_LABELS = {"linear_cka": "linear CKA", "debiased_cka": "debiased CKA", "rsa": "RSA (Pearson r, cosine RDMs)",
           "rsa_correlation": "RSA (Pearson r, correlation RDMs)", "rsa_spearman": "RSA (Spearman, cosine RDMs)",
           "rsa_euclidean": "RSA (Pearson r, euclidean RDMs)", "rbf_cka": "RBF CKA",
           "minibatch_cka": "minibatch CKA (torch_cka's estimator)"}


def _label(m: str) -> str:
    if m in _LABELS:
        return _LABELS[m]
    from repalign.schema import metric_label

    return metric_label(m)


def plot_comparison(comp: Any, path: Path) -> Path:
    """One heatmap per metric: y = layers of A, x = layers of B, colour bar, values on grids ≤ 12 × 12."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(comp.metrics)
    la, lb = len(comp.names_a), len(comp.names_b)
    w = max(3.5, 0.55 * lb + 2.2)
    h = max(3.0, 0.45 * la + 1.6)
    fig, axes = plt.subplots(1, k, figsize=(w * k, h), squeeze=False)
    for ax, m in zip(axes[0], comp.metrics):
        M = comp.matrix(m)
        bounded = m in ("linear_cka", "debiased_cka", "rbf_cka", "minibatch_cka")
        im = ax.imshow(M, cmap="magma", vmin=0.0 if bounded else None, vmax=1.0 if bounded else None, aspect="auto")
        ax.set_xticks(range(lb), comp.names_b, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(la), comp.names_a, fontsize=7)
        ax.set_xlabel(f"model B layer ({comp.settings.get('model_b', 'B')})")
        ax.set_ylabel(f"model A layer ({comp.settings.get('model_a', 'A')})")
        ax.set_title(f"{_label(m)}\npool={comp.settings.get('pool')}, n={comp.n}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if la <= 12 and lb <= 12:
            lo, hi = np.nanmin(M), np.nanmax(M)
            for i in range(la):
                for j in range(lb):
                    v = M[i, j]
                    dark = bounded and v < 0.6 or (not bounded and hi > lo and (v - lo) / (hi - lo) < 0.6)
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if dark else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def html_page(comp: Any, path: Path) -> Path:
    """Settings, one heatmap per metric (embedded PNG) and the rows as a table."""
    from repalign.report.html import esc, img_tag, page, table
    from repalign.training.checkpoint import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".compare.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        plot_comparison(comp, Path(tmp))
        fig = img_tag(Path(tmp), "rows: layers of model A; columns: layers of model B")
    finally:
        os.unlink(tmp)
    s = comp.settings
    settings = table(["setting", "value"], [(k, v) for k, v in s.items()] + [("samples (n)", comp.n),
                     ("layers A", ", ".join(comp.names_a)), ("layers B", ", ".join(comp.names_b))])
    notes = ("<p class='note'>Values are exact over all n samples (streamed float64 moments) except "
             "<code>minibatch_cka</code>, an estimator averaged over batches (torch_cka's number). "
             + ("Intervals: percentile bootstrap over samples, the same resamples for every layer pair. "
                if s.get("ci") else "No interval requested (ci='bootstrap' adds one). ")
             + ("<code>baseline</code>: the same metric between the two architectures re-initialised "
                f"from seed {esc(s.get('seed'))} — the untrained zero point." if s.get("baseline") else "")
             + "</p>")
    cols = ["metric", "layer A", "layer B", "value", "CI low", "CI high", "baseline", "n"]
    rows = [(r["metric"], r["layer_a"], r["layer_b"], r["value"], r["ci_low"], r["ci_high"], r["baseline"], r["n"])
            for r in comp.rows]
    html = page("repalign compare", [("", notes), ("Heatmaps", fig), ("Settings", settings),
                                     ("All layer pairs", table(cols, rows, left=3))])
    return write_atomic(path, html.encode("utf-8"))
