"""Representational similarity analysis (RSA) between two feature matrices.

``rsa(X, Y)`` correlates the strict upper triangles (all ``M = N(N−1)/2`` pairs ``i < j``) of the
representational dissimilarity matrices (RDMs) of ``X [N, d1]`` and ``Y [N, d2]``:

* ``rdm="cosine"``:      ``D_ij = 1 − cos(x_i, x_j)``
* ``rdm="correlation"``: ``D_ij = 1 − pearson(x_i, x_j)`` (= cosine RDM of the row-centred rows)
* ``rdm="euclidean"``:   ``D_ij = ‖x_i − x_j‖``

with ``corr="pearson"`` or ``"spearman"`` (Pearson of the tie-averaged ranks, as
``scipy.stats.spearmanr``). The result is an :class:`RSAResult` ``(value, stderr, exact, n_pairs)``
that also converts with ``float(result)``.

Algorithms and cost (no N×N matrix is formed, except by the Pearson cosine/correlation path when
``d1² + d2² + d1·d2 > 3N²``, where the N×N Gram form is the smaller one — see ``method``):

* **Pearson, cosine/correlation — exact, feature space.** With unit rows ``x̂_i`` and
  ``k_ij = x̂_iᵀx̂_j``: ``S_k = Σ_{i<j} k_ij = (‖Σx̂_i‖² − Σ‖x̂_i‖²)/2``,
  ``S_kk = (‖X̂ᵀX̂‖_F² − Σ‖x̂_i‖⁴)/2``, ``S_kl = (‖X̂ᵀŶ‖_F² − Σ‖x̂_i‖²‖ŷ_i‖²)/2`` and
  ``r = (M·S_kl − S_k·S_l)/sqrt((M·S_kk − S_k²)(M·S_ll − S_l²))`` (Pearson is affine invariant,
  so correlating similarities equals correlating ``1 − k``). Time O(N·d²), memory O(d²), float64.
* **Pearson, euclidean — exact, tiled.** ``‖x_i − x_j‖`` needs a square root per pair, so the
  pair values are generated in T×T tiles (T = ``tile``, default 2048; memory O(T² + T·d)) from the
  column-centred rows and only the running sums Σd, Σd², Σe, Σe², Σde are kept. Time O(N²·d).
* **Spearman — exact for N ≤ ``max_exact_n`` (default 20 000).** All M pair values of X are
  generated tile by tile into one float64 vector, sorted once in place, and replaced by int32
  *doubled* average ranks; then the same for Y, and the ranks are correlated. Peak memory ≈ 28·M
  bytes ≈ 14·N² bytes (measured: N = 10k → 1.5 GB, 18 s; N = 20k → 5.6 GB, 84 s on 2 cores; hard
  limit N ≤ 46 340 because doubled ranks are int32). Time is dominated by the two sorts.
* **Spearman, N > ``max_exact_n`` — pair-subsampling estimator.** ``n_pairs`` pairs ``i ≠ j``
  drawn i.i.d. uniformly (with replacement) from a generator seeded by
  ``derive_seed(seed, "rsa", "pairs")``; the value is Spearman's ρ of the sampled pairs and
  ``stderr`` its delete-a-group jackknife standard error (20 groups). ``exact=False``.

Ties (Spearman) are exact float64 ties of the computed dissimilarities: values that are equal
mathematically but differ by rounding (e.g. cosine of different integer vectors) are not tied,
so on tie-heavy data the result may differ from another implementation at the rounding level.

Degenerate inputs (never NaN): zero rows (cosine) or constant rows (correlation) have cosine 0
with every row *including themselves*. An RDM is treated as *constant* when the variance of its
pair values is ≤ 1e-12 × their mean square (exactly zero rank variance for Spearman): both RDMs
constant → 1.0 (they are identical up to an affine map), exactly one constant → 0.0 — the same
convention as CKA. Spearman uses the same variance tolerance on the pair values (exact path; the
subsampled path checks the sampled values), so rounding noise on a constant RDM is not ranked.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, NamedTuple

import torch

from repalign.seeding import generator

from ._validate import check_finite, check_pair, check_positive_int, default_chunk_rows, row_chunks
from .moments import F64, CrossStats, SideStats, pair_stats, ratio

__all__ = ["rsa", "RSAResult", "RDMS", "CORRS", "MAX_EXACT_SPEARMAN_N", "pearson_from_stats"]

RDMS = ("cosine", "correlation", "euclidean")
CORRS = ("pearson", "spearman")
#: doubled ranks are stored as int32 → M ≤ 2^30 pairs
MAX_EXACT_SPEARMAN_N = 46340
_VAR_RTOL = 1e-12
_JACKKNIFE_GROUPS = 20
_RANK_CHUNK = 1 << 22  # sorted positions processed per step when assigning tie-averaged ranks


class RSAResult(NamedTuple):
    """``value``: the RSA correlation; ``stderr``: 0 when exact, else the jackknife standard error;
    ``exact``: whether every pair was used; ``n_pairs``: the number of pair values correlated."""

    value: float
    stderr: float
    exact: bool
    n_pairs: int

    def __float__(self) -> float:
        return float(self.value)


def rsa(X: Any, Y: Any, rdm: str = "cosine", corr: str = "pearson", *, max_exact_n: int = 20000,
        n_pairs: int = 1_000_000, seed: int = 0, chunk_size: int | None = None, tile: int = 2048,
        method: str = "auto") -> RSAResult:
    """RSA between ``X [N, d1]`` and ``Y [N, d2]`` (N ≥ 3; see the module docstring for the
    formulas, algorithms, memory and degenerate-input conventions).

    ``max_exact_n``: largest N for exact Spearman (≤ 46 340); ``n_pairs``/``seed``: the
    subsampling estimator beyond it. ``chunk_size``: rows per float64 chunk of the feature-space
    path; ``tile``: tile side for the pairwise paths; ``method``: ``"auto"|"features"|"gram"``
    for the cosine/correlation Pearson path (as in :func:`linear_cka`).
    """
    if rdm not in RDMS:
        raise ValueError(f"rdm must be one of {RDMS}, got {rdm!r}")
    if corr not in CORRS:
        raise ValueError(f"corr must be one of {CORRS}, got {corr!r}")
    max_exact_n = check_positive_int(max_exact_n, "max_exact_n", 3)
    if max_exact_n > MAX_EXACT_SPEARMAN_N:
        raise ValueError(f"max_exact_n must be ≤ {MAX_EXACT_SPEARMAN_N} (int32 doubled ranks), got {max_exact_n}")
    n_pairs = check_positive_int(n_pairs, "n_pairs", 2 * _JACKKNIFE_GROUPS)
    tile = check_positive_int(tile, "tile")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    X, Y = check_pair(X, Y, 3, "RSA (at least 3 pairs of samples)", finite=False)
    n = X.shape[0]
    M = n * (n - 1) // 2
    if corr == "pearson" and rdm != "euclidean":  # finiteness is checked while streaming
        sx, sy, xy = pair_stats(X, Y, rdm, method, chunk_size)
        return RSAResult(pearson_from_stats(sx, sy, xy, n), 0.0, True, M)
    check_finite(X, "X")
    check_finite(Y, "Y")
    if corr == "pearson":
        return RSAResult(_pearson_euclidean(X, Y, tile), 0.0, True, M)
    if n <= max_exact_n:
        return RSAResult(_spearman_exact(X, Y, rdm, tile), 0.0, True, M)
    return _spearman_subsampled(X, Y, rdm, n_pairs, seed)


# ----------------------------------------------------------------------------------------------
# Pearson, feature space (cosine / correlation)
# ----------------------------------------------------------------------------------------------
def pearson_from_stats(sx: SideStats, sy: SideStats, xy: CrossStats, n: int) -> float:
    """Pearson RSA (cosine/correlation RDM) from uncentred moment statistics of the unit rows
    (:func:`repalign.metrics.moments.pair_stats` in ``rdm`` mode): the sums over pairs ``i < j`` are
    ``S_k = (1ᵀK1 − tr K)/2``, ``S_kk = (‖K‖_F² − Σ K_ii²)/2``, ``S_kl = (⟨K, L⟩ − Σ K_ii L_ii)/2``
    (formula for ``r`` in the module docstring)."""
    M = n * (n - 1) / 2.0
    Sk, Sl = (sx.total - sx.trace) / 2, (sy.total - sy.trace) / 2
    Skk, Sll = (sx.frob_sq - sx.diag_sq) / 2, (sy.frob_sq - sy.diag_sq) / 2
    Skl = (xy.inner - xy.diag_inner) / 2
    vx, vy = M * Skk - Sk * Sk, M * Sll - Sl * Sl
    return ratio(M * Skl - Sk * Sl, vx, vy, _const(vx, M * Skk), _const(vy, M * Sll), clip=False)


def _const(var_times_m2: float, msq_times_m2: float) -> bool:
    return not (var_times_m2 > _VAR_RTOL * msq_times_m2)


# ----------------------------------------------------------------------------------------------
# pairwise tiles
# ----------------------------------------------------------------------------------------------
class _Rows:
    """Transformed float64 row blocks of one matrix for pairwise dissimilarities."""

    def __init__(self, X: torch.Tensor, rdm: str) -> None:
        self.X, self.rdm = X, rdm
        self.mean = None
        if rdm == "euclidean":  # distances are translation invariant; centring improves the expansion
            rows = default_chunk_rows(X.shape[1])
            m = torch.zeros(X.shape[1], dtype=F64, device=X.device)
            for a, b in row_chunks(X.shape[0], rows):
                m += X[a:b].sum(dim=0, dtype=F64)
            self.mean = m / X.shape[0]

    def block(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.X[a:b].to(F64)
        if self.rdm == "euclidean":
            z = z - self.mean
            return z, (z * z).sum(dim=1)
        if self.rdm == "correlation":
            z = z - z.mean(dim=1, keepdim=True)
        nrm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
        return z / torch.where(nrm > 0, nrm, torch.ones_like(nrm)), None

    def dissim(self, zi, qi, zj, qj) -> torch.Tensor:
        g = zi @ zj.T
        if self.rdm == "euclidean":
            return (qi[:, None] + qj[None, :] - 2 * g).clamp_min_(0).sqrt_()
        return 1.0 - g


def _tiles(R: _Rows, tile: int) -> Iterator[torch.Tensor]:
    """Pair values ``D_ij, i < j`` as 1-D float64 tensors, tile by tile, in a fixed order that
    depends only on (N, tile)."""
    n = R.X.shape[0]
    for a in range(0, n, tile):
        b = min(n, a + tile)
        zi, qi = R.block(a, b)
        for c in range(a, n, tile):
            e = min(n, c + tile)
            zj, qj = (zi, qi) if c == a else R.block(c, e)
            D = R.dissim(zi, qi, zj, qj)
            if c == a:
                iu = torch.triu_indices(b - a, b - a, offset=1, device=D.device)
                yield D[iu[0], iu[1]]
            else:
                yield D.reshape(-1)


def _pearson_euclidean(X: torch.Tensor, Y: torch.Tensor, tile: int) -> float:
    Rx, Ry = _Rows(X, "euclidean"), _Rows(Y, "euclidean")
    ref = None
    s = torch.zeros(6, dtype=F64, device=X.device)  # Σu, Σu², Σv, Σv², Σuv, (unused)
    raw = torch.zeros(2, dtype=F64, device=X.device)  # Σd², Σe²
    m = 0
    for dx, dy in zip(_tiles(Rx, tile), _tiles(Ry, tile)):
        if dx.numel() == 0:
            continue
        if ref is None:  # shift by the first tile's means: Pearson is shift invariant, sums stay small
            ref = (dx.mean(), dy.mean())
        raw += torch.stack(((dx * dx).sum(), (dy * dy).sum()))
        u, v = dx - ref[0], dy - ref[1]
        s[:5] += torch.stack((u.sum(), (u * u).sum(), v.sum(), (v * v).sum(), (u * v).sum()))
        m += dx.numel()
    su, suu, sv, svv, suv = (float(t) for t in s[:5])
    vx, vy = m * suu - su * su, m * svv - sv * sv
    return ratio(m * suv - su * sv, vx, vy, _const(vx, m * float(raw[0])), _const(vy, m * float(raw[1])),
                  clip=False)


# ----------------------------------------------------------------------------------------------
# Spearman
# ----------------------------------------------------------------------------------------------
def _doubled_ranks(v: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """int32 ``2 × (average 1-based rank)`` of each entry of the float64 vector ``v`` (ties get the
    mean of their ranks, as ``scipy.stats.rankdata(method="average")``). **Sorts ``v`` in place**
    (callers pass a buffer they own; pass ``[v]`` to hand over the only reference so that it is
    freed before the rank vectors are allocated). Peak: 8 B (v) + 8 B (indices) + the sort's scratch
    per entry, then 8 B (indices) + 2 × 4 B (int32 ranks)."""
    if isinstance(v, list):
        v = v.pop()
    m = v.numel()
    idx = torch.empty(m, dtype=torch.long, device=v.device)
    torch.sort(v, out=(v, idx))
    sv = v
    del v
    out = torch.empty(m, dtype=torch.int32, device=sv.device)
    step = _RANK_CHUNK
    for s in range(0, m, step):
        e = min(m, s + step)
        vals = sv[s:e]
        tied = bool((vals[1:] == vals[:-1]).any())
        tied = tied or (s > 0 and bool(sv[s - 1] == vals[0])) or (e < m and bool(sv[e] == vals[-1]))
        if not tied:
            out[s:e] = torch.arange(2 * s + 2, 2 * e + 2, 2, dtype=torch.int32, device=sv.device)
        else:
            lo = torch.searchsorted(sv, vals, right=False)
            hi = torch.searchsorted(sv, vals, right=True)
            out[s:e] = (lo + hi + 1).to(torch.int32)
    del sv
    ranks = torch.empty_like(out)
    ranks[idx] = out
    return ranks


def _rank_corr(rx: torch.Tensor, ry: torch.Tensor) -> float:
    """Pearson correlation of two doubled-rank vectors (their mean is exactly M + 1)."""
    m = rx.numel()
    center = float(m + 1)
    acc = torch.zeros(3, dtype=F64, device=rx.device)
    step = 1 << 23
    for s in range(0, m, step):
        a = rx[s:s + step].to(F64) - center
        b = ry[s:s + step].to(F64) - center
        acc += torch.stack(((a * b).sum(), (a * a).sum(), (b * b).sum()))
    sab, saa, sbb = (float(t) for t in acc)
    return ratio(sab, saa, sbb, saa == 0.0, sbb == 0.0, clip=False)


def _all_pair_values(X: torch.Tensor, rdm: str, tile: int) -> tuple[torch.Tensor, bool]:
    """All M pair values (fixed tile order) and whether the RDM is constant (variance ≤ 1e-12 × mean
    square, the same tolerance as the Pearson path, so rounding noise on a constant RDM is ignored)."""
    n = X.shape[0]
    out = torch.empty(n * (n - 1) // 2, dtype=F64, device=X.device)
    k = 0
    ref = None
    acc = torch.zeros(3, dtype=F64, device=X.device)
    for t in _tiles(_Rows(X, rdm), tile):
        if t.numel() == 0:
            continue
        out[k:k + t.numel()] = t
        k += t.numel()
        if ref is None:
            ref = t.mean()
        u = t - ref
        acc += torch.stack((u.sum(), (u * u).sum(), (t * t).sum()))
    su, suu, sqq = (float(a) for a in acc)
    return out, _const(k * suu - su * su, k * sqq)


def _spearman_exact(X: torch.Tensor, Y: torch.Tensor, rdm: str, tile: int) -> float:
    vx, cx = _all_pair_values(X, rdm, tile)
    if cx:
        del vx
        _, cy = _all_pair_values(Y, rdm, tile)
        return ratio(0.0, 1.0, 1.0, cx, cy, clip=False)
    holder = [vx]
    del vx
    rx = _doubled_ranks(holder)
    vy, cy = _all_pair_values(Y, rdm, tile)
    if cy:
        return 0.0
    holder = [vy]
    del vy
    ry = _doubled_ranks(holder)
    return _rank_corr(rx, ry)


def _sampled_values(X: torch.Tensor, rdm: str, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    out = torch.empty(i.numel(), dtype=F64, device=X.device)
    step = default_chunk_rows(X.shape[1])
    for a, b in row_chunks(i.numel(), step):
        xi, xj = X[i[a:b]].to(F64), X[j[a:b]].to(F64)
        if rdm == "euclidean":
            out[a:b] = torch.linalg.vector_norm(xi - xj, dim=1)
            continue
        if rdm == "correlation":
            xi = xi - xi.mean(dim=1, keepdim=True)
            xj = xj - xj.mean(dim=1, keepdim=True)
        ni, nj = torch.linalg.vector_norm(xi, dim=1), torch.linalg.vector_norm(xj, dim=1)
        den = ni * nj
        cos = (xi * xj).sum(dim=1) / torch.where(den > 0, den, torch.ones_like(den))
        out[a:b] = 1.0 - torch.where(den > 0, cos, torch.zeros_like(cos))
    return out


def _spearman_subsampled(X: torch.Tensor, Y: torch.Tensor, rdm: str, n_pairs: int, seed: int) -> RSAResult:
    n = X.shape[0]
    g = generator(seed, "rsa", "pairs")
    i = torch.randint(0, n, (n_pairs,), generator=g)
    j = torch.randint(0, n - 1, (n_pairs,), generator=g)
    j = j + (j >= i).long()  # uniform over ordered pairs with i ≠ j
    i, j = i.to(X.device), j.to(X.device)
    vx, vy = _sampled_values(X, rdm, i, j), _sampled_values(Y, rdm, i, j)
    cx, cy = (_const(float(v.var(correction=0)), float((v * v).mean())) for v in (vx, vy))
    if cx or cy:
        return RSAResult(ratio(0.0, 1.0, 1.0, cx, cy, clip=False), 0.0, False, n_pairs)
    value = _rank_corr(_doubled_ranks(vx.clone()), _doubled_ranks(vy.clone()))  # clones: sorted in place
    G = _JACKKNIFE_GROUPS
    groups = torch.arange(n_pairs, device=X.device) % G
    thetas = []
    for k in range(G):
        keep = groups != k
        thetas.append(_rank_corr(_doubled_ranks(vx[keep]), _doubled_ranks(vy[keep])))
    th = torch.tensor(thetas, dtype=F64)
    stderr = math.sqrt((G - 1) / G * float(((th - th.mean()) ** 2).sum()))
    return RSAResult(value, stderr, False, n_pairs)
