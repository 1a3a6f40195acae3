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
(memory O(d1² + d2² + d1·d2 + chunk·d)). On CPU the symmetric products use scipy's BLAS ``dsyrk``
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

import numpy as np
import torch

from ._validate import (check_finite, check_pair, check_positive_int, default_chunk_rows,
                        row_chunks, rows_all_equal)

try:  # BLAS dsyrk / dgemm on CPU (float64 SYRK is ~2x faster than a float64 GEMM)
    from scipy.linalg import blas as _sblas
except Exception:  # pragma: no cover - scipy is a dependency, but keep a torch fallback
    _sblas = None

__all__ = ["linear_cka", "rbf_cka", "cka_from_grams", "gram_linear", "gram_rbf", "center_gram",
           "StreamingLinearCKA", "MinibatchCKA", "unbiased_hsic"]

_F64 = torch.float64
#: on CPU use scipy's BLAS dsyrk/dgemm (float64 SYRK = half the flops of a GEMM) when the augmented
#: width is ≥ this (measured faster than torch's float64 matmul at every width from 128 up on an idle
#: machine; tests set it to exercise both back-ends)
_BLAS_MIN_DIM = 0
_METHODS = ("auto", "features", "gram")


# ==============================================================================================
# chunk transforms and float64 moment accumulators (shared with rsa.py / similarity.py / layerwise.py)
# ==============================================================================================
class _Side:
    """Streaming float64 moments of the transformed rows ``z̃_i`` of one feature matrix.

    Transform (``mode``): ``center``: ``z̃ = x − shift`` (``shift`` = the first chunk's column
    mean unless given: CKA is translation invariant and the shift keeps the final exact centring
    well conditioned); ``cosine``: unit rows (zero rows stay zero); ``correlation``: rows centred
    over their features, then unit norm.

    Each chunk is written into an *augmented* float64 buffer ``A = [z̃, 1, p, q_1 … q_k]``
    (``p_i = ‖z̃_i‖²``, ``q_j`` = the ``p`` of the j-th partner side) and a single BLAS ``dsyrk``
    accumulates ``AᵀA``, which holds ``S = Σz̃z̃ᵀ``, ``s = Σz̃``, ``vp = Σp z̃``, ``vq_j = Σq_j z̃``,
    ``n``, ``Σp``, ``Σp²`` and ``Σp q_j`` at once (no extra passes over the chunk). Finiteness is
    checked on ``p`` (NaN/inf propagate into it); "all raw rows identical" is tracked exactly by
    comparing chunks with the first row until the first difference.
    """

    def __init__(self, d: int, device: torch.device, mode: str, name: str = "X", k: int = 1) -> None:
        if mode not in ("center", "cosine", "correlation"):
            raise ValueError(f"unknown transform {mode!r}")
        self.d, self.device, self.mode, self.name, self.k = int(d), device, mode, name, int(k)
        self.w = self.d + 2 + self.k
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.blas = device.type == "cpu" and _sblas is not None and self.w >= _BLAS_MIN_DIM
        self.S: Any = (np.zeros((self.w, self.w), order="F") if self.blas
                       else torch.zeros(self.w, self.w, dtype=_F64, device=device))
        self.first: torch.Tensor | None = None
        self.constant = True
        self._buf: torch.Tensor | None = None
        self._c = 0

    def prepare(self, raw: torch.Tensor) -> torch.Tensor:
        """Check and transform a raw chunk ``[c, d]`` into the buffer; returns ``p [c]``."""
        c = raw.shape[0]
        if self.first is None:
            self.first = raw[:1].clone()
        if self.constant:
            self.constant = bool((raw == self.first).all())
        if self._buf is None or self._buf.shape[0] < c:
            self._buf = torch.empty(c, self.w, dtype=_F64, device=self.device)
        self._c = c
        A = self._buf[:c]
        z = A[:, :self.d]
        z.copy_(raw)
        if self.mode == "center":
            if self.shift is None:
                self.shift = z.mean(dim=0)
            z.sub_(self.shift)
        else:
            if self.mode == "correlation":
                z.sub_(z.mean(dim=1, keepdim=True))
            nrm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
            z.div_(torch.where(nrm > 0, nrm, torch.ones_like(nrm)))
        p = torch.linalg.vector_norm(z, dim=1).square_()
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"{self.name} contains NaN or inf values (or entries too large to square in float64)")
        A[:, self.d] = 1.0
        A[:, self.d + 1] = p
        return p

    def set_partners(self, qs: list[torch.Tensor]) -> None:
        for j, q in enumerate(qs):
            self._buf[:self._c, self.d + 2 + j] = q

    @property
    def chunk(self) -> torch.Tensor:
        return self._buf[:self._c]

    def accumulate(self) -> None:
        A = self.chunk
        if self.blas:
            self.S = _sblas.dsyrk(1.0, A.numpy().T, beta=1.0, c=self.S, trans=0, lower=0, overwrite_c=1)
        else:
            self.S.addmm_(A.T, A)
        self.n += self._c

    def moments(self) -> tuple[torch.Tensor, bool]:
        """(``AᵀA`` accumulated so far, ``upper``): on the BLAS path only the upper triangle is filled
        (the strict lower triangle is exactly zero); a zero-copy view, do not modify."""
        if self.blas:
            return torch.from_numpy(self.S), True
        return self.S, False


class _Cross:
    """``Σ A_x,iᵀ A_y,i`` of the augmented chunks; its ``[:d1, :d2]`` block is ``Sxy = Σ x̃_i ỹ_iᵀ``."""

    def __init__(self, sx: _Side, sy: _Side) -> None:
        self.d1, self.d2 = sx.d, sy.d
        self.blas = sx.blas and sy.blas
        self.S: Any = (np.zeros((sx.w, sy.w), order="F") if self.blas
                       else torch.zeros(sx.w, sy.w, dtype=_F64, device=sx.device))

    def update(self, sx: _Side, sy: _Side) -> None:
        a, b = sx.chunk, sy.chunk
        if self.blas:
            self.S = _sblas.dgemm(1.0, a.numpy().T, b.numpy().T, beta=1.0, c=self.S, trans_b=1, overwrite_c=1)
        else:
            self.S.addmm_(a.T, b)

    def full(self) -> torch.Tensor:
        S = torch.from_numpy(self.S) if self.blas else self.S
        return S[:self.d1, :self.d2]


def _feed(sx: _Side, sy: _Side, cr: _Cross, X: torch.Tensor, Y: torch.Tensor, rows: int) -> None:
    """Stream the row chunks of X, Y through one pair of sides and their cross moments."""
    for a, b in row_chunks(X.shape[0], rows):
        px = sx.prepare(X[a:b])
        py = sy.prepare(Y[a:b])
        sx.set_partners([py])
        sy.set_partners([px])
        sx.accumulate()
        sy.accumulate()
        cr.update(sx, sy)


def _sq(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t)) ** 2


def _sym_sq(U: torch.Tensor, upper: bool) -> float:
    """‖S‖_F² of the symmetric S given by its upper triangle U (strict lower part zero) or by S."""
    if not upper:
        return _sq(U)
    return 2.0 * _sq(U) - _sq(torch.diagonal(U))


def _side_stats(m: _Side, uncentred: bool) -> dict[str, Any]:
    """Scalars of one side. Centred quantities use ``c_i = z̃_i − mean`` (exact, via the moments)."""
    F, upper = m.moments()
    d, n = m.d, m.n
    # everything below lies in the upper triangle of the augmented AᵀA
    S, s, vp = F[:d, :d], F[:d, d], F[:d, d + 1]
    tp, tpp = float(F[d, d + 1]), float(F[d + 1, d + 1])
    mu = s / n
    M = float(mu @ mu)
    C = torch.addr(S, mu, mu, alpha=-float(n))       # S − n μμᵀ (centred scatter), formed explicitly
    if upper:
        C.triu_()
    Smu = S @ mu
    muSmu = 2.0 * float(mu @ Smu) - float((torch.diagonal(S) * mu) @ mu) if upper else float(mu @ Smu)
    st = {
        "n": n, "mu": mu, "M": M, "tp": tp, "constant": m.constant,
        "vq": F[:d, d + 2:], "tpq": F[d + 1, d + 2:],
        "c": _sym_sq(C, upper),                        # ‖C_cᵀC_c‖_F²
        "a": tp - n * M,                               # Σ‖c_i‖²
        # Σ‖c_i‖⁴ with ‖c_i‖² = p_i − 2 z̃_i·μ + M
        "aa": tpp - 4 * float(vp @ mu) + 4 * muSmu + 2 * M * tp - 3 * n * M * M,
    }
    if uncentred:
        st.update(g=_sym_sq(S, upper), s2=float(s @ s), t=tp, tt=tpp)
    return st


def _cross_stats(sx: dict, sy: dict, c: _Cross, uncentred: bool, i: int = 0, j: int = 0) -> dict[str, float]:
    """Cross scalars of x-side (partner index ``j`` of y in x's buffer) and y-side (index ``i``)."""
    n = sx["n"]
    Sxy = c.full()
    mu, nu = sx["mu"], sy["mu"]
    tpq = float(sx["tpq"][j])
    vqx, vpy = sx["vq"][:, j], sy["vq"][:, i]   # Σ q_i x̃_i, Σ p_i ỹ_i
    st = {
        "c": _sq(torch.addr(Sxy, mu, nu, alpha=-float(n))),
        "a": tpq - 2 * float(vpy @ nu) - 2 * float(vqx @ mu) + 4 * float(mu @ (Sxy @ nu))
        + sy["M"] * sx["tp"] + sx["M"] * sy["tp"] - 3 * n * sx["M"] * sy["M"],
    }
    if uncentred:
        st.update(g=_sq(Sxy), t=tpq)
    return st


def _accumulate(X: torch.Tensor, Y: torch.Tensor, mode: str, chunk_size: int | None) -> tuple[dict, dict, dict]:
    """One pass over row chunks of X, Y → (stats_x, stats_y, stats_xy). Also validates finiteness."""
    rows = default_chunk_rows(max(X.shape[1], Y.shape[1]), chunk_size)
    sx, sy = _Side(X.shape[1], X.device, mode, "X"), _Side(Y.shape[1], Y.device, mode, "Y")
    cr = _Cross(sx, sy)
    _feed(sx, sy, cr, X, Y, rows)
    unc = mode != "center"
    a, b = _side_stats(sx, unc), _side_stats(sy, unc)
    return a, b, _cross_stats(a, b, cr, unc)


def _gram_matrix(X: torch.Tensor, mode: str, chunk_cols: int = 4096) -> torch.Tensor:
    """float64 N×N Gram of the transformed rows (column-chunked, no float64 copy of X)."""
    n, d = X.shape
    K = torch.zeros(n, n, dtype=_F64, device=X.device)
    if mode == "center":
        for a in range(0, d, chunk_cols):
            z = X[:, a:a + chunk_cols].to(_F64)
            z = z - z.mean(dim=0, keepdim=True)
            K.addmm_(z, z.T)
        return K
    r = X.sum(dim=1, dtype=_F64) / d if mode == "correlation" else None
    for a in range(0, d, chunk_cols):
        z = X[:, a:a + chunk_cols].to(_F64)
        if r is not None:
            z = z - r[:, None]
        K.addmm_(z, z.T)
    nrm = torch.sqrt(torch.diagonal(K).clamp_min(0))
    inv = torch.where(nrm > 0, 1.0 / torch.where(nrm > 0, nrm, torch.ones_like(nrm)), torch.zeros_like(nrm))
    K *= inv[:, None]
    K *= inv[None, :]
    return K


def _gram_stats(X: torch.Tensor, Y: torch.Tensor, mode: str) -> tuple[dict, dict, dict]:
    """Same scalars as :func:`_accumulate`, from N×N Gram matrices (used when d ≫ N)."""
    K, L = _gram_matrix(X, mode), _gram_matrix(Y, mode)
    n = K.shape[0]
    unc = mode != "center"
    sx: dict[str, Any] = {"n": n, "constant": mode == "center" and rows_all_equal(X)}
    sy: dict[str, Any] = {"n": n, "constant": mode == "center" and rows_all_equal(Y)}
    xy: dict[str, Any] = {}
    if unc:
        dk, dl = torch.diagonal(K), torch.diagonal(L)
        sx.update(g=_sq(K), s2=float(K.sum()), t=float(dk.sum()), tt=_sq(dk))
        sy.update(g=_sq(L), s2=float(L.sum()), t=float(dl.sum()), tt=_sq(dl))
        xy.update(g=float((K * L).sum()), t=float((dk * dl).sum()))
        K, L = center_gram(K), center_gram(L)
    dk, dl = torch.diagonal(K), torch.diagonal(L)
    sx.update(c=_sq(K), a=float(dk.sum()), aa=_sq(dk))
    sy.update(c=_sq(L), a=float(dl.sum()), aa=_sq(dl))
    xy.update(c=float((K * L).sum()), a=float((dk * dl).sum()))
    return sx, sy, xy


def _pair_stats(X: torch.Tensor, Y: torch.Tensor, mode: str, method: str, chunk_size: int | None):
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    n, d1, d2 = X.shape[0], X.shape[1], Y.shape[1]
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
    use_gram = method == "gram" or (method == "auto" and d1 * d1 + d2 * d2 + d1 * d2 > 3 * n * n)
    if use_gram:
        check_finite(X, "X")
        check_finite(Y, "Y")
        return _gram_stats(X, Y, mode)
    return _accumulate(X, Y, mode, chunk_size)


# ==============================================================================================
# finalisation
# ==============================================================================================
def _ratio(num: float, den_x: float, den_y: float, const_x: bool, const_y: bool, clip: bool) -> float:
    if const_x and const_y:
        return 1.0
    if const_x or const_y:
        return 0.0
    if not (den_x > 0 and den_y > 0 and math.isfinite(den_x) and math.isfinite(den_y) and math.isfinite(num)):
        return 0.0
    v = num / (math.sqrt(den_x) * math.sqrt(den_y))  # not sqrt(dx·dy): that product can overflow
    return min(1.0, max(0.0, v)) if clip else v


def _debiased_hsic(xty: float, ab: float, A: float, B: float, n: int) -> float:
    return xty - n / (n - 2.0) * ab + A * B / ((n - 1.0) * (n - 2.0))


def _cka_from_stats(sx: dict, sy: dict, xy: dict, debiased: bool) -> float:
    cx, cy = sx["constant"], sy["constant"]
    if not debiased:
        return _ratio(xy["c"], sx["c"], sy["c"], cx, cy, clip=True)
    n = sx["n"]
    num = _debiased_hsic(xy["c"], xy["a"], sx["a"], sy["a"], n)
    hx = _debiased_hsic(sx["c"], sx["aa"], sx["a"], sx["a"], n)
    hy = _debiased_hsic(sy["c"], sy["aa"], sy["a"], sy["a"], n)
    return _ratio(num, hx, hy, cx, cy, clip=False)


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
    sx, sy, xy = _pair_stats(X, Y, "center", method, chunk_size)
    return _cka_from_stats(sx, sy, xy, debiased)


def gram_linear(X: torch.Tensor) -> torch.Tensor:
    """``K = XXᵀ`` in float64 ``[N, N]``."""
    X = X.to(_F64)
    return X @ X.T


def gram_rbf(X: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """RBF Gram in Kornblith's ``gram_rbf(x, threshold)`` convention, float64 ``[N, N]``::

        D²_ij = ‖x_i − x_j‖²,  m = median of all N² entries of D² (diagonal zeros included),
        K_ij = exp(−D²_ij / (2·sigma²·m))

    i.e. the bandwidth is ``sigma`` × the median pairwise distance. If ``m = 0`` (more than half of
    the pairs coincide) the median of the non-zero squared distances is used; if all distances are
    zero, ``K`` is all ones.
    """
    X = X.to(_F64)
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


def center_gram(K: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Kornblith's ``center_gram``: ``HKH`` (biased) or the U-statistic centring with zero diagonal."""
    K = K.to(_F64).clone()
    n = K.shape[0]
    if unbiased:
        K.fill_diagonal_(0)
        means = K.sum(dim=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
    else:
        means = K.mean(dim=0)
        means -= means.mean() / 2
    K -= means[:, None]
    K -= means[None, :]
    if unbiased:
        K.fill_diagonal_(0)
    return K


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
    return _ratio(float((Kc * Lc).sum()), _sq(Kc), _sq(Lc), constant[0], constant[1], clip=not debiased)


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
        self._sx: _Side | None = None
        self._sy: _Side | None = None
        self._cr: _Cross | None = None

    @property
    def n(self) -> int:
        return 0 if self._sx is None else self._sx.n

    def update(self, X: Any, Y: Any) -> "StreamingLinearCKA":
        X, Y = check_pair(X, Y, 1, "StreamingLinearCKA.update", finite=False)
        if self._sx is None:
            self._sx = _Side(X.shape[1], X.device, "center", "X")
            self._sy = _Side(Y.shape[1], Y.device, "center", "Y")
            self._cr = _Cross(self._sx, self._sy)
        elif X.shape[1] != self._sx.d or Y.shape[1] != self._sy.d:
            raise ValueError(f"feature dimensions changed between updates: expected X [*, {self._sx.d}] and "
                             f"Y [*, {self._sy.d}], got {tuple(X.shape)} and {tuple(Y.shape)}")
        elif X.device != self._sx.device:
            raise ValueError(f"X is on {X.device} but earlier chunks were on {self._sx.device}")
        _feed(self._sx, self._sy, self._cr, X, Y, default_chunk_rows(max(X.shape[1], Y.shape[1])))
        return self

    def result(self) -> dict[str, Any]:
        """``{"linear_cka", "debiased_cka" (None if N < 4), "n"}``."""
        n = self.n
        if n < 2:
            raise ValueError(f"StreamingLinearCKA needs at least 2 samples before compute(), got N={n}")
        sx, sy = _side_stats(self._sx, False), _side_stats(self._sy, False)
        xy = _cross_stats(sx, sy, self._cr, False)
        return {"linear_cka": _cka_from_stats(sx, sy, xy, False),
                "debiased_cka": _cka_from_stats(sx, sy, xy, True) if n >= 4 else None, "n": n}

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
    Kt = K.to(_F64).clone().fill_diagonal_(0)
    Lt = L.to(_F64).clone().fill_diagonal_(0)
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
                self._first[k] = Z[:1].to(_F64).clone()
            elif self._first[k].shape[1] != Z.shape[1]:
                raise ValueError(f"feature dimension of {'XY'[k]} changed between updates: "
                                 f"{self._first[k].shape[1]} → {Z.shape[1]}")
            if self._const[k] and not bool((Z.to(_F64) == self._first[k].to(Z.device)).all()):
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
        return _ratio(self._xy, self._xx, self._yy, self._const[0], self._const[1], clip=False)
