"""Class-distance normalised variance (CDNV) and its directional variant (arXiv 2506.04411).

Notation: classes ``i = 1..C`` present in ``y``; ``μ_i`` the mean of the rows of class ``i``;
``σ_i² = E_{x∼D_i} ‖f(x) − μ_i‖²`` (biased, i.e. divided by ``n_i``); ``Δ_ij = μ_i − μ_j``;
``u_ij = Δ_ij / ‖Δ_ij‖``.

- CDNV:             ``V(i, j)  = σ_i² / ‖Δ_ij‖²``
- directional CDNV: ``Ṽ(i, j)  = σ_ij² / ‖Δ_ij‖²`` with ``σ_ij² = Var_{x∼D_i} ⟨f(x) − μ_i, u_ij⟩ = u_ijᵀ Σ_i u_ij``
  (``Σ_i`` the biased class covariance), so ``Ṽ(i, j) = Δ_ijᵀ Σ_i Δ_ij / ‖Δ_ij‖⁴``.

Both scalars average over ordered pairs ``i ≠ j``. For the plain CDNV this equals the symmetric form
``(σ_i² + σ_j²) / (2 ‖Δ_ij‖²)`` averaged over unordered pairs ``i < j`` (the authors' code). Since
``u_ijᵀ Σ_i u_ij ≤ tr Σ_i = σ_i²``, ``Ṽ(i, j) ≤ V(i, j)`` entrywise.

Degenerate cases: fewer than 2 classes → ``ValueError``; two classes with identical means (``‖Δ_ij‖ = 0``
exactly, computed as an explicit difference, not via a Gram matrix) → ``ValueError`` naming the classes; a
non-finite result (e.g. overflow from nearly coincident means) → ``ValueError``. A class with a single
sample has ``σ_i² = 0``. All arithmetic is float64. Memory is O(C² + C·d + n_max·d) (n_max the largest class) — no ``N × C × C``
or ``C × C × d`` tensors (pair distances are computed in blocks of classes).
"""
from __future__ import annotations

import torch

from .features import check_features_labels

__all__ = ["cdnv", "directional_cdnv", "cdnv_matrices"]

_BLOCK_ELEMS = 1 << 22  # ~4M float64 elements (32 MB) per temporary block


def _group(x: torch.Tensor, y: torch.Tensor):
    """Sort rows by class. Returns classes [C], counts [C] (cpu), starts [C] (cpu), order [N]."""
    classes, inverse, counts = torch.unique(y, sorted=True, return_inverse=True, return_counts=True)
    if classes.numel() < 2:
        raise ValueError(f"CDNV needs at least 2 classes in y, got {classes.numel()}")
    order = torch.argsort(inverse, stable=True)
    counts = counts.cpu()
    starts = torch.cumsum(counts, 0) - counts
    return classes, counts, starts, order


def _class_means(x: torch.Tensor, counts, starts, order) -> torch.Tensor:
    C, d = counts.numel(), x.shape[1]
    means = torch.empty(C, d, dtype=torch.float64, device=x.device)
    for c in range(C):
        rows = order[int(starts[c]):int(starts[c] + counts[c])]
        means[c] = x[rows].to(torch.float64).mean(0)
    return means


def _pair_sqdist(means: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Exact ``D[i, j] = ‖μ_i − μ_j‖²`` [C, C], in blocks of rows (no C × C × d tensor at once)."""
    C, d = means.shape
    D = torch.empty(C, C, dtype=torch.float64, device=means.device)
    block = max(1, _BLOCK_ELEMS // max(1, C * d))
    for s in range(0, C, block):
        diff = means[s:s + block].unsqueeze(1) - means.unsqueeze(0)  # [b, C, d]
        D[s:s + block] = (diff * diff).sum(-1)
    off = ~torch.eye(C, dtype=torch.bool, device=D.device)
    bad = (D == 0) & off
    if bool(bad.any()):
        i, j = [int(t) for t in bad.nonzero()[0]]
        n_bad = int(bad.sum()) // 2
        raise ValueError(f"classes {classes[i].item()} and {classes[j].item()} have identical means "
                         f"(‖μ_i − μ_j‖ = 0; {n_bad} coincident pair(s)); CDNV is undefined")
    return D


def cdnv_matrices(x: torch.Tensor, y: torch.Tensor, directional: bool = True, plain: bool = True) -> dict:
    """Per-pair CDNV matrices.

    Args: ``x [N, d]`` features, ``y [N]`` integer labels (any values; classes are the sorted unique values).
    Returns ``{"classes": LongTensor [C], "cdnv": float64 [C, C] or None, "directional_cdnv": ... or None,
    "sigma2": [C], "sqdist": [C, C]}`` with entry ``[i, j] = V(i, j)`` / ``Ṽ(i, j)`` for row class ``i``
    (whose variance is used) and column class ``j``; the diagonal is 0 (undefined, excluded from averages).
    """
    x, y = check_features_labels(x, y, "x", "y", nonnegative=False)
    classes, counts, starts, order = _group(x, y)
    C = classes.numel()
    means = _class_means(x, counts, starts, order)
    D = _pair_sqdist(means, classes)
    off = ~torch.eye(C, dtype=torch.bool, device=D.device)

    sigma2 = torch.empty(C, dtype=torch.float64, device=x.device)
    proj = torch.zeros(C, C, dtype=torch.float64, device=x.device) if directional else None
    for c in range(C):
        rows = order[int(starts[c]):int(starts[c] + counts[c])]
        xc = x[rows].to(torch.float64) - means[c]  # [n_c, d]
        sigma2[c] = (xc * xc).sum(1).mean()
        if directional:
            delta = means[c].unsqueeze(0) - means  # [C, d], Δ_cj
            col_block = max(1, _BLOCK_ELEMS // max(1, xc.shape[0]))
            for s in range(0, C, col_block):
                p = xc @ delta[s:s + col_block].T  # [n_c, b] = ⟨x − μ_c, Δ_cj⟩
                proj[c, s:s + col_block] = (p * p).mean(0)  # Δ_cjᵀ Σ_c Δ_cj

    out = {"classes": classes, "sigma2": sigma2, "sqdist": D, "cdnv": None, "directional_cdnv": None}
    safe_D = torch.where(off, D, torch.ones_like(D))
    if plain:
        V = torch.where(off, sigma2.unsqueeze(1) / safe_D, torch.zeros_like(D))
        _check_finite(V, classes, "CDNV")
        out["cdnv"] = V
    if directional:
        Vd = torch.where(off, proj / (safe_D * safe_D), torch.zeros_like(D))
        _check_finite(Vd, classes, "directional CDNV")
        out["directional_cdnv"] = Vd
    return out


def _check_finite(V: torch.Tensor, classes: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(V)
    if bool(bad.any()):
        i, j = [int(t) for t in bad.nonzero()[0]]
        raise ValueError(f"{what} is not finite for classes {classes[i].item()} and {classes[j].item()} "
                         f"(class means nearly coincide)")


def _offdiag_mean(V: torch.Tensor) -> float:
    C = V.shape[0]
    return float(V.sum() / (C * (C - 1)))  # diagonal is 0


def cdnv(x: torch.Tensor, y: torch.Tensor) -> float:
    """Average CDNV ``(1 / (C(C−1))) Σ_{i≠j} σ_i² / ‖μ_i − μ_j‖²`` of features ``x [N, d]`` with labels ``y [N]``."""
    return _offdiag_mean(cdnv_matrices(x, y, directional=False, plain=True)["cdnv"])


def directional_cdnv(x: torch.Tensor, y: torch.Tensor) -> float:
    """Average directional CDNV ``(1 / (C(C−1))) Σ_{i≠j} Var_{D_i}⟨f(x) − μ_i, u_ij⟩ / ‖μ_i − μ_j‖²``."""
    return _offdiag_mean(cdnv_matrices(x, y, directional=True, plain=False)["directional_cdnv"])
