"""Centred kernel alignment (CKA): linear (biased / debiased), RBF, exact streaming and minibatch.

Notation: ``X [N, d1]``, ``Y [N, d2]`` hold one sample per row. ``H = I − 11ᵀ/N`` centres,
``K = XXᵀ``, ``L = YYᵀ`` are the linear Gram matrices, ``X_c = HX``, ``Y_c = HY``.

* **Linear CKA** (Kornblith et al. 2019)::

      CKA(X, Y) = tr(HKH·HLH) / sqrt(tr((HKH)²)·tr((HLH)²))
                = ‖Y_cᵀX_c‖_F² / (‖X_cᵀX_c‖_F · ‖Y_cᵀY_c‖_F)          (feature-space form)

* **Debiased linear CKA**: the same ratio with every HSIC replaced by the unbiased estimator of
  Song et al. (2012), exactly as ``feature_space_linear_cka(..., debiased=True)`` in Kornblith's
  reference notebook: with ``a_i = ‖x_i − x̄‖²``, ``b_i = ‖y_i − ȳ‖²``, ``A = Σa_i``, ``B = Σb_i``::

      hsic(X, Y) = ‖Y_cᵀX_c‖_F² − N/(N−2)·Σ_i a_i b_i + A·B/((N−1)(N−2))
      dCKA       = hsic(X, Y) / sqrt(hsic(X, X)·hsic(Y, Y))                    (needs N ≥ 4)

  (The common factor 1/(N(N−3)) cancels.) dCKA can be slightly negative or > 1.

Everything is computed **without any N×N matrix** from the d×d products ``X̃ᵀX̃``, ``Ỹᵀ Ỹ``,
``X̃ᵀỸ`` of (shifted) rows plus O(d) row-norm moments, accumulated over row chunks in float64
(memory O(d1² + d2² + d1·d2 + chunk·d)) by the moment engine :mod:`repalign.metrics.moments`
(``hsic`` above is :func:`debiased_hsic` of its named statistics). On CPU the symmetric products use scipy's BLAS ``dsyrk``
(half the flops of a GEMM), which makes the float64 path about 1.4× three float32 GEMMs on the
benchmark machine (see ``benchmarks/results/metrics.md``); GPU tensors use torch float64 matmuls. No float32 shortcut is taken: the
similarity gap subtracts nearly equal Frobenius norms and needs float64 products.
When ``d1² + d2² + d1·d2 > 3N²`` the sample-space (N×N Gram) form is cheaper and ``method="auto"``
switches to it (exactly the same quantity).

Degenerate inputs (documented convention, never NaN):
* a side is *constant* when all its rows are identical (its centred Gram is exactly zero):
  both sides constant → 1.0 (both centred Grams are equal: zero), exactly one side constant → 0.0;
* a non-positive or non-finite normaliser (e.g. a debiased self-HSIC estimate ≤ 0, possible only
  for tiny N) → 0.0.
Biased CKA is clipped to [0, 1] (it lies there mathematically; rounding may exceed 1 by 1 ulp).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ._validate import check_pair, default_chunk_rows, rows_all_equal
from .moments import (F64, CrossMoments, CrossStats, SideMoments, SideStats, center_gram, feed, frob_sq, pair_stats,
                      ratio)

__all__ = ["linear_cka", "rbf_cka", "cka_from_grams", "gram_linear", "gram_rbf", "center_gram",
           "StreamingLinearCKA", "MinibatchCKA", "unbiased_hsic", "cka_from_stats", "debiased_hsic"]


# ==============================================================================================
# finalisation
# ==============================================================================================
def debiased_hsic(centred_inner: float, centred_diag_inner: float, trace_x: float, trace_y: float, n: int) -> float:
    """``N(N−3)`` × the unbiased HSIC estimate from the named moments (module docstring)::

        ⟨K̄, L̄⟩ − N/(N−2)·Σ K̄_ii L̄_ii + tr K̄ · tr L̄ / ((N−1)(N−2))
    """
    return centred_inner - n / (n - 2.0) * centred_diag_inner + trace_x * trace_y / ((n - 1.0) * (n - 2.0))


def cka_from_stats(sx: SideStats, sy: SideStats, xy: CrossStats, debiased: bool) -> float:
    """Linear CKA (biased, clipped to [0, 1], or debiased) from ``"center"``-mode moment statistics
    (:func:`repalign.metrics.moments.pair_stats`)::

        CKA  = ⟨K̄, L̄⟩ / sqrt(‖K̄‖_F² ‖L̄‖_F²)
        dCKA = hsic(X, Y) / sqrt(hsic(X, X) hsic(Y, Y))      with hsic = :func:`debiased_hsic`
    """
    cx, cy = sx.constant, sy.constant
    if not debiased:
        return ratio(xy.centred_inner, sx.centred_frob_sq, sy.centred_frob_sq, cx, cy, clip=True)
    n = sx.n
    num = debiased_hsic(xy.centred_inner, xy.centred_diag_inner, sx.centred_trace, sy.centred_trace, n)
    hx = debiased_hsic(sx.centred_frob_sq, sx.centred_diag_sq, sx.centred_trace, sx.centred_trace, n)
    hy = debiased_hsic(sy.centred_frob_sq, sy.centred_diag_sq, sy.centred_trace, sy.centred_trace, n)
    return ratio(num, hx, hy, cx, cy, clip=False)


# ==============================================================================================
# public API
# ==============================================================================================
def linear_cka(X: Any, Y: Any, debiased: bool = False, *, chunk_size: int | None = None,
               method: str = "auto") -> float:
    """Linear CKA between ``X [N, d1]`` and ``Y [N, d2]`` (see module docstring for the formulas).

    ``debiased=True`` uses the unbiased HSIC estimator (Song et al.; Kornblith's
    ``feature_space_linear_cka(..., debiased=True)``) and needs N ≥ 4.
    ``method``: ``"features"`` (d×d products, O(N·d²) time, O(d²) memory), ``"gram"`` (N×N Gram,
    O(N²·d) time, O(N²) memory) or ``"auto"`` (the one with the smaller matrices).
    ``chunk_size``: rows per float64 chunk (default ≈64 MiB of rows). Inputs may live on any
    device; accumulation is float64. Returns a Python float.
    """
    X, Y = check_pair(X, Y, 4 if debiased else 2, "debiased CKA" if debiased else "linear CKA", finite=False)
    sx, sy, xy = pair_stats(X, Y, "center", method, chunk_size)
    return cka_from_stats(sx, sy, xy, debiased)


def gram_linear(X: torch.Tensor) -> torch.Tensor:
    """``K = XXᵀ`` in float64 ``[N, N]``."""
    X = X.to(F64)
    return X @ X.T


def gram_rbf(X: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """RBF Gram in Kornblith's ``gram_rbf(x, threshold)`` convention, float64 ``[N, N]``::

        D²_ij = ‖x_i − x_j‖²,  m = median of all N² entries of D² (diagonal zeros included),
        K_ij = exp(−D²_ij / (2·sigma²·m))

    i.e. the bandwidth is ``sigma`` × the median pairwise distance. If ``m = 0`` (more than half of
    the pairs coincide) the median of the non-zero squared distances is used; if all distances are
    zero, ``K`` is all ones.
    """
    X = X.to(F64)
    X = X - X.mean(dim=0, keepdim=True)  # translation-invariant; improves the expansion's accuracy
    G = X @ X.T
    sq = torch.diagonal(G)
    D2 = (sq[:, None] + sq[None, :] - 2 * G).clamp_min_(0)
    D2.fill_diagonal_(0)
    del G
    m = _median(D2.reshape(-1))
    if m <= 0:
        nz = D2[D2 > 0]
        if nz.numel() == 0:
            return torch.ones_like(D2)
        m = _median(nz)
    D2 *= -1.0 / (2.0 * sigma * sigma * m)
    return D2.exp_()


def _median(v: torch.Tensor) -> float:
    """numpy-style median (mean of the two middle values for an even count)."""
    k = v.numel()
    hi = float(torch.kthvalue(v, k // 2 + 1).values)
    if k % 2:
        return hi
    return 0.5 * (hi + float(torch.kthvalue(v, k // 2).values))


def cka_from_grams(K: torch.Tensor, L: torch.Tensor, debiased: bool = False,
                   constant: tuple[bool, bool] | None = None) -> float:
    """CKA of two N×N Gram matrices (Kornblith's ``cka``): ``⟨K̃, L̃⟩ / (‖K̃‖_F‖L̃‖_F)`` with
    ``K̃ = center_gram(K, unbiased=debiased)``. A side whose centred Gram is exactly zero counts as
    constant (conventions in the module docstring)."""
    for name, G in (("K", K), ("L", L)):
        if not isinstance(G, torch.Tensor) or G.dim() != 2 or G.shape[0] != G.shape[1]:
            raise ValueError(f"{name} must be a square [N, N] tensor, got {getattr(G, 'shape', type(G))}")
        if not bool(torch.isfinite(G).all()):
            raise ValueError(f"{name} contains NaN or inf values")
    if K.shape != L.shape:
        raise ValueError(f"K and L must have the same shape, got {tuple(K.shape)} and {tuple(L.shape)}")
    n = K.shape[0]
    if n < (4 if debiased else 2):
        raise ValueError(f"{'debiased ' if debiased else ''}CKA needs at least {4 if debiased else 2} samples, got N={n}")
    Kc, Lc = center_gram(K, debiased), center_gram(L, debiased)
    if constant is None:
        constant = (not bool(center_gram(K).abs().gt(0).any()), not bool(center_gram(L).abs().gt(0).any()))
    return ratio(float((Kc * Lc).sum()), frob_sq(Kc), frob_sq(Lc), constant[0], constant[1], clip=not debiased)


def rbf_cka(X: Any, Y: Any, sigma: float = 0.8, debiased: bool = False) -> float:
    """CKA with RBF kernels, bandwidth ``sigma`` × median pairwise distance (:func:`gram_rbf`).

    Inherently sample-space: builds N×N float64 matrices (≈ 3·8·N² bytes peak: N = 10k → 2.4 GB).
    A side with identical rows is constant (conventions in the module docstring).
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    X, Y = check_pair(X, Y, 4 if debiased else 2, "debiased RBF CKA" if debiased else "RBF CKA")
    const = (rows_all_equal(X), rows_all_equal(Y))
    return cka_from_grams(gram_rbf(X, sigma), gram_rbf(Y, sigma), debiased, constant=const)


# ==============================================================================================
# streaming accumulators
# ==============================================================================================
class StreamingLinearCKA:
    """**Exact** linear CKA (biased and debiased) over data that arrives in chunks of rows.

    ``update(X_chunk [b, d1], Y_chunk [b, d2])`` adds rows (rows must correspond across X and Y);
    ``compute()`` returns exactly :func:`linear_cka` of the concatenated rows (up to float64
    rounding). Memory O(d1² + d2² + d1·d2): keeps the float64 moments ``Σx̃x̃ᵀ, Σỹỹᵀ, Σx̃ỹᵀ``,
    column sums and the row-norm moments needed by the debiased estimator, where ``x̃ = x − s``
    for a fixed shift ``s`` (the first chunk's column mean; CKA is translation invariant and the
    shift keeps the float64 centring accurate). Centring is applied exactly at the end.

    This is *not* Nguyen et al.'s minibatch estimator (see :class:`MinibatchCKA`), which averages
    per-batch HSICs and converges to a different (unbiased-HSIC) quantity.
    """

    def __init__(self, debiased: bool = False) -> None:
        self.debiased = bool(debiased)
        self.reset()

    def reset(self) -> None:
        self._sx: SideMoments | None = None
        self._sy: SideMoments | None = None
        self._cr: CrossMoments | None = None

    @property
    def n(self) -> int:
        return 0 if self._sx is None else self._sx.n

    def update(self, X: Any, Y: Any) -> "StreamingLinearCKA":
        X, Y = check_pair(X, Y, 1, "StreamingLinearCKA.update", finite=False)
        if self._sx is None:
            self._sx = SideMoments(X.shape[1], X.device, "center", "X")
            self._sy = SideMoments(Y.shape[1], Y.device, "center", "Y")
            self._cr = CrossMoments(self._sx, self._sy)
        elif X.shape[1] != self._sx.d or Y.shape[1] != self._sy.d:
            raise ValueError(f"feature dimensions changed between updates: expected X [*, {self._sx.d}] and "
                             f"Y [*, {self._sy.d}], got {tuple(X.shape)} and {tuple(Y.shape)}")
        elif X.device != self._sx.device:
            raise ValueError(f"X is on {X.device} but earlier chunks were on {self._sx.device}")
        feed(self._sx, self._sy, self._cr, X, Y, default_chunk_rows(max(X.shape[1], Y.shape[1])))
        return self

    def result(self) -> dict[str, Any]:
        """``{"linear_cka", "debiased_cka" (None if N < 4), "n"}``."""
        n = self.n
        if n < 2:
            raise ValueError(f"StreamingLinearCKA needs at least 2 samples before compute(), got N={n}")
        sx, sy = self._sx.stats(False), self._sy.stats(False)
        xy = self._cr.stats(sx, sy, False)
        return {"linear_cka": cka_from_stats(sx, sy, xy, False),
                "debiased_cka": cka_from_stats(sx, sy, xy, True) if n >= 4 else None, "n": n}

    def compute(self, debiased: bool | None = None) -> float:
        debiased = self.debiased if debiased is None else bool(debiased)
        if debiased and self.n < 4:
            raise ValueError(f"debiased CKA needs at least 4 samples, got N={self.n}")
        return self.result()["debiased_cka" if debiased else "linear_cka"]


def unbiased_hsic(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al. 2012, as used by Nguyen et al. 2021), float64::

        HSIC₁(K, L) = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))

    with ``K̃``, ``L̃`` the Gram matrices with zeroed diagonals; n ≥ 4.
    """
    n = K.shape[0]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples, got n={n}")
    Kt = K.to(F64).clone().fill_diagonal_(0)
    Lt = L.to(F64).clone().fill_diagonal_(0)
    trace = (Kt * Lt).sum()
    middle = Kt.sum() * Lt.sum() / ((n - 1) * (n - 2))
    last = 2.0 / (n - 2) * (Kt.sum(dim=0) @ Lt.sum(dim=1))
    return (trace + middle - last) / (n * (n - 3))


class MinibatchCKA:
    """Nguyen, Raghu & Kornblith (2021) minibatch CKA estimator::

        CKA_mb = mean_b HSIC₁(K_b, L_b) / sqrt(mean_b HSIC₁(K_b, K_b) · mean_b HSIC₁(L_b, L_b))

    over minibatches b (each ≥ 4 samples, all batches weighted equally), with linear kernels
    ``K_b = X_b X_bᵀ`` and :func:`unbiased_hsic`. Memory O(batch²) whatever the feature width, so
    it suits huge flattened feature maps. It is an estimator of a *population* quantity, not equal
    to the full-data CKA; for the exact full-split value use :class:`StreamingLinearCKA`.
    Degenerate conventions as in the module docstring (side constant over all batches).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._xy = self._xx = self._yy = 0.0
        self.batches = 0
        self.n = 0
        self._first: list[torch.Tensor | None] = [None, None]
        self._const = [True, True]

    def update(self, X: Any, Y: Any) -> "MinibatchCKA":
        X, Y = check_pair(X, Y, 4, "MinibatchCKA.update (per batch)")
        for k, Z in enumerate((X, Y)):
            if self._first[k] is None:
                self._first[k] = Z[:1].to(F64).clone()
            elif self._first[k].shape[1] != Z.shape[1]:
                raise ValueError(f"feature dimension of {'XY'[k]} changed between updates: "
                                 f"{self._first[k].shape[1]} → {Z.shape[1]}")
            if self._const[k] and not bool((Z.to(F64) == self._first[k].to(Z.device)).all()):
                self._const[k] = False
        K, L = gram_linear(X), gram_linear(Y)
        self._xy += float(unbiased_hsic(K, L))
        self._xx += float(unbiased_hsic(K, K))
        self._yy += float(unbiased_hsic(L, L))
        self.batches += 1
        self.n += X.shape[0]
        return self

    def compute(self) -> float:
        if self.batches == 0:
            raise ValueError("MinibatchCKA.compute() called before any update()")
        return ratio(self._xy, self._xx, self._yy, self._const[0], self._const[1], clip=False)
