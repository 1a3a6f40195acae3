"""Streamed float64 moment engine behind CKA, RSA, the similarity gap and layer-wise CKA.

Every representation metric of :mod:`repalign.metrics` is a function of a few scalar products of
two N×N Gram matrices that are **never formed**. For a feature matrix ``X [N, d]`` let ``z̃_i`` be
its transformed rows (``mode``: ``"center"`` → ``x_i − shift``, ``"cosine"`` → unit rows,
``"correlation"`` → rows centred over their features, then unit norm), ``K = Z̃Z̃ᵀ`` their Gram,
``H = I − 11ᵀ/N``, ``K̄ = HKH`` the centred Gram and ``c_i = z̃_i − mean_j z̃_j`` the centred rows
(so ``K̄_ij = c_iᵀc_j``). ``Y``, ``L``, ``L̄``, ``e_i`` are the same for the other side.

:class:`SideStats` (one matrix)::

    centred_frob_sq   = ‖K̄‖_F²          = ‖Z_cᵀZ_c‖_F²
    centred_trace     = tr K̄            = Σ‖c_i‖²
    centred_diag_sq   = Σ K̄_ii²         = Σ‖c_i‖⁴
    frob_sq           = ‖K‖_F²          = ‖Z̃ᵀZ̃‖_F²            ┐
    trace             = tr K            = Σ‖z̃_i‖²              │ uncentred: only for
    diag_sq           = Σ K_ii²         = Σ‖z̃_i‖⁴              │ "cosine" / "correlation"
    total             = 1ᵀK1            = ‖Σ z̃_i‖²             ┘

:class:`CrossStats` (a pair of matrices)::

    centred_inner      = ⟨K̄, L̄⟩_F       = ‖Y_cᵀX_c‖_F²
    centred_diag_inner = Σ K̄_ii L̄_ii    = Σ‖c_i‖²‖e_i‖²
    inner              = ⟨K, L⟩_F       = ‖Ỹᵀ Z̃‖_F²            ┐ uncentred
    diag_inner         = Σ K_ii L_ii    = Σ‖z̃_i‖²‖ỹ_i‖²         ┘

Two ways to get them (same quantities up to float64 rounding), chosen by :func:`pair_stats`:

* **feature space** (:class:`SideMoments`, :class:`CrossMoments`, :func:`feed`): each row chunk is
  written into an augmented float64 buffer ``A = [z̃, 1, p, q_1 … q_k]`` (``p_i = ‖z̃_i‖²``,
  ``q_j`` = the ``p`` of the j-th partner side) and a single BLAS ``dsyrk`` accumulates ``AᵀA``,
  which holds ``S = Σz̃z̃ᵀ``, ``s = Σz̃``, ``Σp z̃``, ``Σq_j z̃``, ``n``, ``Σp``, ``Σp²`` and ``Σp q_j``
  at once; ``Σ A_xᵀA_y`` (one ``dgemm``) gives the cross products. Exact centring is applied at
  the end. Memory O(d1² + d2² + d1·d2 + chunk·d), time O(N·d²). On CPU the symmetric products use
  scipy's BLAS ``dsyrk`` (half the flops of a GEMM); GPU tensors use torch float64 matmuls.
* **sample space** (:func:`gram_stats`): the float64 N×N Grams, cheaper when
  ``d1² + d2² + d1·d2 > 3N²`` (``method="auto"`` switches there).

A side is ``constant`` when all its raw rows are identical (its centred Gram is exactly zero;
tracked exactly, only in ``"center"`` mode). :func:`ratio` is the shared normalised ratio with the
degenerate-input conventions of the metrics (never NaN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._validate import check_finite, check_positive_int, default_chunk_rows, row_chunks, rows_all_equal

try:  # BLAS dsyrk / dgemm on CPU (float64 SYRK is ~2x faster than a float64 GEMM)
    from scipy.linalg import blas as _sblas
except Exception:  # pragma: no cover - scipy is a dependency, but keep a torch fallback
    _sblas = None

__all__ = ["F64", "MODES", "METHODS", "SideStats", "CrossStats", "FeatureTerms", "SideMoments", "CrossMoments",
           "feed", "pair_stats", "feature_stats", "gram_stats", "gram_matrix", "center_gram", "ratio", "frob_sq"]

F64 = torch.float64
MODES = ("center", "cosine", "correlation")
METHODS = ("auto", "features", "gram")
#: on CPU use scipy's BLAS dsyrk/dgemm (float64 SYRK = half the flops of a GEMM) when the augmented
#: width is ≥ this (measured faster than torch's float64 matmul at every width from 128 up on an idle
#: machine; tests set it to exercise both back-ends)
_BLAS_MIN_DIM = 0


# ==============================================================================================
# named statistics
# ==============================================================================================
@dataclass(frozen=True)
class FeatureTerms:
    """Feature-space intermediates of one side that its cross statistics need (``Σ`` over rows):
    ``mean = Σz̃/n``, ``mean_sq = ‖mean‖²``, ``sq_norm_sum = Σp`` (``= tr K``),
    ``partner_weighted = [Σ q_j z̃]_j`` (``[d, k]``) and ``partner_inner = [Σ p q_j]_j`` (``[k]``),
    with ``p``, ``q_j`` as in the module docstring."""

    mean: torch.Tensor
    mean_sq: float
    sq_norm_sum: float
    partner_weighted: torch.Tensor
    partner_inner: torch.Tensor


@dataclass(frozen=True)
class SideStats:
    """Scalars of one side (formulas in the module docstring); the uncentred ones are ``None`` in
    ``"center"`` mode. ``terms`` is set on the feature-space path only."""

    n: int
    constant: bool
    centred_frob_sq: float
    centred_trace: float
    centred_diag_sq: float
    frob_sq: float | None = None
    trace: float | None = None
    diag_sq: float | None = None
    total: float | None = None
    terms: FeatureTerms | None = None


@dataclass(frozen=True)
class CrossStats:
    """Scalars of a pair of sides (formulas in the module docstring); the uncentred ones are
    ``None`` in ``"center"`` mode."""

    centred_inner: float
    centred_diag_inner: float
    inner: float | None = None
    diag_inner: float | None = None


# ==============================================================================================
# small numerics shared by the metrics
# ==============================================================================================
def frob_sq(t: torch.Tensor) -> float:
    """‖t‖_F² as a Python float."""
    return float(torch.linalg.vector_norm(t)) ** 2


def _sym_frob_sq(U: torch.Tensor, upper: bool) -> float:
    """‖S‖_F² of the symmetric S given by its upper triangle U (strict lower part zero) or by S."""
    if not upper:
        return frob_sq(U)
    return 2.0 * frob_sq(U) - frob_sq(torch.diagonal(U))


def ratio(num: float, den_x: float, den_y: float, const_x: bool, const_y: bool, clip: bool) -> float:
    """``num / (sqrt(den_x)·sqrt(den_y))`` with the degenerate conventions of the metrics: both sides
    constant → 1.0, exactly one → 0.0, a non-positive or non-finite normaliser → 0.0; ``clip``
    clamps to [0, 1]. Never NaN."""
    if const_x and const_y:
        return 1.0
    if const_x or const_y:
        return 0.0
    if not (den_x > 0 and den_y > 0 and math.isfinite(den_x) and math.isfinite(den_y) and math.isfinite(num)):
        return 0.0
    v = num / (math.sqrt(den_x) * math.sqrt(den_y))  # not sqrt(dx·dy): that product can overflow
    return min(1.0, max(0.0, v)) if clip else v


def center_gram(K: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Kornblith's ``center_gram``: ``HKH`` (biased) or the U-statistic centring with zero diagonal."""
    K = K.to(F64).clone()
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


# ==============================================================================================
# feature-space accumulators
# ==============================================================================================
class SideMoments:
    """Streaming float64 moments ``AᵀA`` of the augmented transformed rows of one feature matrix.

    ``mode`` as in the module docstring (``"center"`` shifts by the first chunk's column mean:
    every metric here is translation invariant in that mode and the shift keeps the final exact
    centring well conditioned). ``k`` is the number of partner sides whose row norms ``q_j`` are
    carried along. Per chunk: :meth:`prepare` (returns ``p``), :meth:`set_partners` (the partners'
    ``p``), :meth:`accumulate`. Finiteness is checked on ``p`` (NaN/inf propagate into it); "all raw
    rows identical" is tracked exactly by comparing chunks with the first row until the first
    difference.
    """

    def __init__(self, d: int, device: torch.device, mode: str, name: str = "X", k: int = 1) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown transform {mode!r}")
        self.d, self.device, self.mode, self.name, self.k = int(d), device, mode, name, int(k)
        self.w = self.d + 2 + self.k
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.blas = device.type == "cpu" and _sblas is not None and self.w >= _BLAS_MIN_DIM
        self.S: Any = (np.zeros((self.w, self.w), order="F") if self.blas
                       else torch.zeros(self.w, self.w, dtype=F64, device=device))
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
            self._buf = torch.empty(c, self.w, dtype=F64, device=self.device)
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

    def stats(self, uncentred: bool) -> SideStats:
        """:class:`SideStats` of the rows so far (centred quantities exact, via the moments)."""
        F, upper = self.moments()
        d, n = self.d, self.n
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
        extra: dict[str, float] = {}
        if uncentred:
            extra = {"frob_sq": _sym_frob_sq(S, upper), "total": float(s @ s), "trace": tp, "diag_sq": tpp}
        return SideStats(
            n=n, constant=self.constant,
            centred_frob_sq=_sym_frob_sq(C, upper),
            centred_trace=tp - n * M,
            # Σ‖c_i‖⁴ with ‖c_i‖² = p_i − 2 z̃_i·μ + M
            centred_diag_sq=tpp - 4 * float(vp @ mu) + 4 * muSmu + 2 * M * tp - 3 * n * M * M,
            terms=FeatureTerms(mean=mu, mean_sq=M, sq_norm_sum=tp, partner_weighted=F[:d, d + 2:], partner_inner=F[d + 1, d + 2:]),
            **extra)


class CrossMoments:
    """``Σ A_x,iᵀ A_y,i`` of the augmented chunks of two :class:`SideMoments`; its ``[:d1, :d2]``
    block is ``Σ x̃_i ỹ_iᵀ``."""

    def __init__(self, sx: SideMoments, sy: SideMoments) -> None:
        self.d1, self.d2 = sx.d, sy.d
        self.blas = sx.blas and sy.blas
        self.S: Any = (np.zeros((sx.w, sy.w), order="F") if self.blas
                       else torch.zeros(sx.w, sy.w, dtype=F64, device=sx.device))

    def update(self, sx: SideMoments, sy: SideMoments) -> None:
        a, b = sx.chunk, sy.chunk
        if self.blas:
            self.S = _sblas.dgemm(1.0, a.numpy().T, b.numpy().T, beta=1.0, c=self.S, trans_b=1, overwrite_c=1)
        else:
            self.S.addmm_(a.T, b)

    def full(self) -> torch.Tensor:
        S = torch.from_numpy(self.S) if self.blas else self.S
        return S[:self.d1, :self.d2]

    def stats(self, sx: SideStats, sy: SideStats, uncentred: bool, i: int = 0, j: int = 0) -> CrossStats:
        """:class:`CrossStats` from the sides' feature-space statistics; ``j`` is the y side's index
        among x's partners, ``i`` the x side's index among y's partners."""
        tx, ty = sx.terms, sy.terms
        if tx is None or ty is None:
            raise ValueError("CrossMoments.stats needs feature-space SideStats (from SideMoments.stats)")
        n = sx.n
        Sxy = self.full()
        mu, nu = tx.mean, ty.mean
        tpq = float(tx.partner_inner[j])
        vqx, vpy = tx.partner_weighted[:, j], ty.partner_weighted[:, i]   # Σ q_i x̃_i, Σ p_i ỹ_i
        tpx, tpy = tx.sq_norm_sum, ty.sq_norm_sum
        Mx, My = tx.mean_sq, ty.mean_sq
        centred_diag_inner = (tpq - 2 * float(vpy @ nu) - 2 * float(vqx @ mu) + 4 * float(mu @ (Sxy @ nu))
                              + My * tpx + Mx * tpy - 3 * n * Mx * My)
        return CrossStats(centred_inner=frob_sq(torch.addr(Sxy, mu, nu, alpha=-float(n))),
                          centred_diag_inner=centred_diag_inner,
                          inner=frob_sq(Sxy) if uncentred else None,
                          diag_inner=tpq if uncentred else None)


def feed(sx: SideMoments, sy: SideMoments, cr: CrossMoments, X: torch.Tensor, Y: torch.Tensor, rows: int) -> None:
    """Stream the row chunks of X, Y (``rows`` per chunk) through one pair of sides and their cross
    moments."""
    for a, b in row_chunks(X.shape[0], rows):
        px = sx.prepare(X[a:b])
        py = sy.prepare(Y[a:b])
        sx.set_partners([py])
        sy.set_partners([px])
        sx.accumulate()
        sy.accumulate()
        cr.update(sx, sy)


def feature_stats(X: torch.Tensor, Y: torch.Tensor, mode: str,
                  chunk_size: int | None) -> tuple[SideStats, SideStats, CrossStats]:
    """One pass over row chunks of X, Y → (x, y, cross) statistics. Also validates finiteness."""
    rows = default_chunk_rows(max(X.shape[1], Y.shape[1]), chunk_size)
    sx, sy = SideMoments(X.shape[1], X.device, mode, "X"), SideMoments(Y.shape[1], Y.device, mode, "Y")
    cr = CrossMoments(sx, sy)
    feed(sx, sy, cr, X, Y, rows)
    unc = mode != "center"
    a, b = sx.stats(unc), sy.stats(unc)
    return a, b, cr.stats(a, b, unc)


# ==============================================================================================
# sample-space (N×N Gram) path
# ==============================================================================================
def gram_matrix(X: torch.Tensor, mode: str, chunk_cols: int = 4096) -> torch.Tensor:
    """float64 N×N Gram ``K`` of the transformed rows (column-chunked, no float64 copy of X); in
    ``"center"`` mode the rows are column-centred, so ``K`` is already ``K̄``."""
    n, d = X.shape
    K = torch.zeros(n, n, dtype=F64, device=X.device)
    if mode == "center":
        for a in range(0, d, chunk_cols):
            z = X[:, a:a + chunk_cols].to(F64)
            z = z - z.mean(dim=0, keepdim=True)
            K.addmm_(z, z.T)
        return K
    r = X.sum(dim=1, dtype=F64) / d if mode == "correlation" else None
    for a in range(0, d, chunk_cols):
        z = X[:, a:a + chunk_cols].to(F64)
        if r is not None:
            z = z - r[:, None]
        K.addmm_(z, z.T)
    nrm = torch.sqrt(torch.diagonal(K).clamp_min(0))
    inv = torch.where(nrm > 0, 1.0 / torch.where(nrm > 0, nrm, torch.ones_like(nrm)), torch.zeros_like(nrm))
    K *= inv[:, None]
    K *= inv[None, :]
    return K


def gram_stats(X: torch.Tensor, Y: torch.Tensor, mode: str) -> tuple[SideStats, SideStats, CrossStats]:
    """Same statistics as :func:`feature_stats`, from N×N Gram matrices (used when d ≫ N)."""
    K, L = gram_matrix(X, mode), gram_matrix(Y, mode)
    n = K.shape[0]
    unc: dict[str, dict[str, float]] = {"x": {}, "y": {}, "xy": {}}
    if mode != "center":
        dk, dl = torch.diagonal(K), torch.diagonal(L)
        unc["x"] = {"frob_sq": frob_sq(K), "total": float(K.sum()), "trace": float(dk.sum()), "diag_sq": frob_sq(dk)}
        unc["y"] = {"frob_sq": frob_sq(L), "total": float(L.sum()), "trace": float(dl.sum()), "diag_sq": frob_sq(dl)}
        unc["xy"] = {"inner": float((K * L).sum()), "diag_inner": float((dk * dl).sum())}
        K, L = center_gram(K), center_gram(L)
    dk, dl = torch.diagonal(K), torch.diagonal(L)
    sx = SideStats(n=n, constant=mode == "center" and rows_all_equal(X), centred_frob_sq=frob_sq(K),
                   centred_trace=float(dk.sum()), centred_diag_sq=frob_sq(dk), **unc["x"])
    sy = SideStats(n=n, constant=mode == "center" and rows_all_equal(Y), centred_frob_sq=frob_sq(L),
                   centred_trace=float(dl.sum()), centred_diag_sq=frob_sq(dl), **unc["y"])
    xy = CrossStats(centred_inner=float((K * L).sum()), centred_diag_inner=float((dk * dl).sum()), **unc["xy"])
    return sx, sy, xy


def pair_stats(X: torch.Tensor, Y: torch.Tensor, mode: str, method: str = "auto",
               chunk_size: int | None = None) -> tuple[SideStats, SideStats, CrossStats]:
    """(x, y, cross) statistics of ``X [N, d1]``, ``Y [N, d2]`` under ``mode``; ``method``:
    ``"features"`` (:func:`feature_stats`), ``"gram"`` (:func:`gram_stats`) or ``"auto"`` (the one
    with the smaller matrices). ``chunk_size``: rows per float64 chunk of the feature path."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n, d1, d2 = X.shape[0], X.shape[1], Y.shape[1]
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
    use_gram = method == "gram" or (method == "auto" and d1 * d1 + d2 * d2 + d1 * d2 > 3 * n * n)
    if use_gram:
        check_finite(X, "X")
        check_finite(Y, "Y")
        return gram_stats(X, Y, mode)
    return feature_stats(X, Y, mode, chunk_size)
