"""The numerical core of :func:`repalign.compare`: features of named layers of two models, reduced
batch by batch into every layer pair's metric.

Three kinds of metric state (``KIND``):

* ``"moments"`` — linear / debiased CKA (``"center"`` moments), RSA (Pearson r of cosine RDMs,
  ``"cosine"`` moments; ``rsa_correlation``: correlation RDMs), the similarity gap family and the
  representation angle (``"cosine"``). Streamed with :class:`~repalign.metrics.moments.SideMoments`
  (one per layer and mode) and :class:`~repalign.metrics.moments.CrossMoments` (one per layer pair
  and mode): memory ``Σ_i (d_i+2+L_b)² + Σ_j (d_j+2+L_a)² + Σ_ij d_i d_j`` float64 per mode,
  independent of N. With ``ci="bootstrap"`` (or ``method="gram"``) the same statistics come from
  N×N Grams instead (see :func:`gram_side` / :func:`gram_cross`).
* ``"features"`` — metrics that need the samples themselves (``rbf_cka``, ``rsa_spearman``,
  ``rsa_euclidean``, plug-in metrics registered with ``compute=``): the pooled features of every
  layer are kept (N × Σd values) and the metric's function is called on each pair.
* ``"batch"`` — ``minibatch_cka`` (Nguyen, Raghu & Kornblith 2021): per batch the unbiased HSIC
  estimates ``HSIC₁(K_b, L_b)``, ``HSIC₁(K_b, K_b)``, ``HSIC₁(L_b, L_b)`` of linear Grams of the
  *flattened*-or-pooled features; the value is ``mean_b HSIC₁(K,L) / sqrt(mean_b HSIC₁(K,K) ·
  mean_b HSIC₁(L,L))`` (memory O(B²) per layer, batches < 4 samples skipped).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from repalign.metrics.cka import cka_from_stats, gram_linear, rbf_cka, unbiased_hsic
from repalign.metrics.moments import F64, CrossMoments, CrossStats, SideMoments, SideStats, center_gram, frob_sq, ratio
from repalign.metrics.rsa import _const, pearson_from_stats, rsa
from repalign.metrics.similarity import _angle, _gap

__all__ = ["BUILTIN", "metric_kind", "finish_stats", "gram_side", "gram_cross", "MomentState", "BatchState",
           "feature_metric", "POOLS", "pool_output", "weighted_stats"]

POOLS = ("flatten", "avg", "none")

#: built-in metric name → (kind, moment mode or None)
BUILTIN: dict[str, tuple[str, str | None]] = {
    "linear_cka": ("moments", "center"),
    "debiased_cka": ("moments", "center"),
    "rsa": ("moments", "cosine"),
    "rsa_correlation": ("moments", "correlation"),
    "sim_gap": ("moments", "cosine"),
    "sim_gap_rel": ("moments", "cosine"),
    "sim_gap_per_entry": ("moments", "cosine"),
    "sim_gap_centred_rel": ("moments", "cosine"),
    "repr_angle_deg": ("moments", "cosine"),
    "rbf_cka": ("features", None),
    "rsa_spearman": ("features", None),
    "rsa_euclidean": ("features", None),
    "minibatch_cka": ("batch", None),
}


def metric_kind(name: str) -> tuple[str, str | None]:
    """``(kind, mode)`` of a metric name: a built-in above or a plug-in representation metric of
    :data:`repalign.schema.ALIGN_METRICS` with ``compute=``; else ``ValueError`` listing the names."""
    if name in BUILTIN:
        return BUILTIN[name]
    from repalign.schema import ALIGN_METRICS

    for m in ALIGN_METRICS:
        if m.name == name and m.source == "representation" and callable(m.compute):
            return ("features", None)
    known = sorted(set(BUILTIN) | {m.name for m in ALIGN_METRICS if m.source == "representation" and callable(m.compute)})
    raise ValueError(f"metrics: unknown metric {name!r} (known: {', '.join(known)})")


def _pearson_pairs(sx: SideStats, sy: SideStats, xy: CrossStats, M: float) -> float:
    """:func:`repalign.metrics.rsa.pearson_from_stats` with the number of pairs ``M`` given (a
    bootstrap resample without its copy pairs has ``(N² − Σw²)/2`` pairs, not ``N(N−1)/2``)."""
    Sk, Sl = (sx.total - sx.trace) / 2, (sy.total - sy.trace) / 2
    Skk, Sll = (sx.frob_sq - sx.diag_sq) / 2, (sy.frob_sq - sy.diag_sq) / 2
    Skl = (xy.inner - xy.diag_inner) / 2
    vx, vy = M * Skk - Sk * Sk, M * Sll - Sl * Sl
    return ratio(M * Skl - Sk * Sl, vx, vy, _const(vx, M * Skk), _const(vy, M * Sll), clip=False)


def finish_stats(name: str, sx: SideStats, sy: SideStats, xy: CrossStats, pairs: float | None = None) -> float:
    """A ``"moments"`` metric from the named statistics of its mode (``pairs``: number of distinct
    pairs for RSA when it is not ``n(n−1)/2``, see :func:`weighted_stats`)."""
    n = sx.n
    if name == "linear_cka":
        return cka_from_stats(sx, sy, xy, False)
    if name == "debiased_cka":
        if n < 4:
            raise ValueError(f"debiased_cka needs at least 4 samples, got {n}")
        return cka_from_stats(sx, sy, xy, True)
    if name in ("rsa", "rsa_correlation"):
        if n < 3:
            raise ValueError(f"{name} needs at least 3 samples, got {n}")
        return pearson_from_stats(sx, sy, xy, n) if pairs is None else _pearson_pairs(sx, sy, xy, pairs)
    if name == "repr_angle_deg":
        return _angle(sx, sy, xy, True)
    g = _gap(sx, sy, xy, n)
    return float({"sim_gap": g["abs"], "sim_gap_rel": g["rel"], "sim_gap_per_entry": g["per_entry"],
                  "sim_gap_centred_rel": g["centred_rel"]}[name])


def feature_metric(name: str, rbf_sigma: float) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """``f(X [N, d1], Y [N, d2]) → float`` of a ``"features"`` metric."""
    if name == "rbf_cka":
        return lambda X, Y: rbf_cka(X, Y, sigma=rbf_sigma)
    if name == "rsa_spearman":
        return lambda X, Y: float(rsa(X, Y, "cosine", "spearman"))
    if name == "rsa_euclidean":
        return lambda X, Y: float(rsa(X, Y, "euclidean", "pearson"))
    from repalign.schema import ALIGN_METRICS

    fn = next(m.compute for m in ALIGN_METRICS if m.name == name)
    return lambda X, Y: float(fn(X, Y))


# ----------------------------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------------------------
def pool_output(out: Any, pool: str, name: str) -> torch.Tensor:
    """One feature row per sample from a layer output ``[B, ...]`` (a tuple/list: its first tensor).

    * ``"flatten"``: ``[B, ...]`` → ``[B, prod(...)]`` (every unit of a conv map is a feature; what
      torch_cka and Kornblith et al. use);
    * ``"avg"``: conv maps ``[B, C, H, W]`` → spatial mean ``[B, C]``; tokens ``[B, T, D]`` → mean
      over tokens ``[B, D]``; rank > 4 → mean over every dim after the second; ``[B, D]`` unchanged;
    * ``"none"``: ``[B, D]`` only (a higher-rank output is an error naming the layer).
    """
    if isinstance(out, (tuple, list)):
        out = next((o for o in out if isinstance(o, torch.Tensor)), None)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"layer {name!r} produced {type(out).__name__}, expected a tensor [B, ...]")
    out = out.detach()
    if out.dim() == 0:
        raise ValueError(f"layer {name!r} produced a scalar, expected a tensor [B, ...]")
    if out.dim() == 1:
        out = out[:, None]
    if pool == "none":
        if out.dim() > 2:
            raise ValueError(f"layer {name!r} output has shape {tuple(out.shape)}: pool='none' takes [B, D] "
                             f"outputs only (use pool='flatten' or 'avg')")
    elif pool == "avg":
        if out.dim() == 3:
            out = out.mean(dim=1)
        elif out.dim() >= 4:
            out = out.flatten(2).mean(dim=2)
    return out.reshape(out.shape[0], -1)


# ----------------------------------------------------------------------------------------------
# streamed moments
# ----------------------------------------------------------------------------------------------
class MomentState:
    """Moments of every layer of A and B and of every layer pair in one mode. ``same``: A and B are
    the same feature lists (one set of sides; only pairs i ≤ j are accumulated)."""

    def __init__(self, mode: str, fa: list[torch.Tensor], fb: list[torch.Tensor], names_a: list[str],
                 names_b: list[str], same: bool, max_dim: int) -> None:
        for nm, f in list(zip(names_a, fa)) + list(zip(names_b, fb)):
            if f.shape[1] > max_dim:
                raise ValueError(f"layer {nm!r} has {f.shape[1]} features > max_dim={max_dim}: its exact moments "
                                 f"would take {8 * f.shape[1] ** 2 / 2 ** 30:.1f} GiB; use pool='avg', "
                                 f"ci='bootstrap' with max_samples (N×N Grams), 'minibatch_cka', or raise max_dim")
        dev = fa[0].device
        self.mode, self.same = mode, same
        la, lb = len(fa), len(fb)
        self.ma = [SideMoments(f.shape[1], dev, mode, f"layer {n!r} of model_a", k=lb) for n, f in zip(names_a, fa)]
        self.mb = self.ma if same else [SideMoments(f.shape[1], dev, mode, f"layer {n!r} of model_b", k=la)
                                        for n, f in zip(names_b, fb)]
        self.cr = [[CrossMoments(x, y) if (not same or j >= i) else None for j, y in enumerate(self.mb)]
                   for i, x in enumerate(self.ma)]

    def update(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> None:
        if [f.shape[1] for f in fa] != [m.d for m in self.ma] or [f.shape[1] for f in fb] != [m.d for m in self.mb]:
            raise ValueError("layer feature widths changed between batches (variable input size with pool='flatten'?)")
        pa = [m.prepare(f) for m, f in zip(self.ma, fa)]
        pb = pa if self.same else [m.prepare(f) for m, f in zip(self.mb, fb)]
        for m in self.ma:
            m.set_partners(pb)
            m.accumulate()
        if not self.same:
            for m in self.mb:
                m.set_partners(pa)
                m.accumulate()
        for i, x in enumerate(self.ma):
            for j, y in enumerate(self.mb):
                if self.cr[i][j] is not None:
                    self.cr[i][j].update(x, y)

    def stats(self) -> tuple[list[SideStats], list[SideStats], list[list[CrossStats]]]:
        unc = self.mode != "center"
        sa = [m.stats(unc) for m in self.ma]
        sb = sa if self.same else [m.stats(unc) for m in self.mb]
        la, lb = len(sa), len(sb)
        cross: list[list[Any]] = [[None] * lb for _ in range(la)]
        for i in range(la):
            for j in range(lb):
                if self.cr[i][j] is not None:
                    cross[i][j] = self.cr[i][j].stats(sa[i], sb[j], unc, i, j)
        if self.same:
            for i in range(la):
                for j in range(i):
                    cross[i][j] = cross[j][i]
        return sa, sb, cross


# ----------------------------------------------------------------------------------------------
# Gram (sample-space) statistics, used for the point value and the replicates of the bootstrap
# ----------------------------------------------------------------------------------------------
def gram_side(G: torch.Tensor, mode: str, constant: bool) -> tuple[SideStats, torch.Tensor]:
    """(:class:`SideStats`, centred Gram ``HGH``) of a float64 Gram ``G [n, n]`` of the mode-transformed
    rows (``"center"``: any shift of the rows, e.g. the full sample's centred rows)."""
    n = G.shape[0]
    Gc = center_gram(G)
    dc = torch.diagonal(Gc)
    unc: dict[str, float] = {}
    if mode != "center":
        dg = torch.diagonal(G)
        unc = {"frob_sq": frob_sq(G), "total": float(G.sum()), "trace": float(dg.sum()), "diag_sq": frob_sq(dg)}
    return SideStats(n=n, constant=constant, centred_frob_sq=frob_sq(Gc), centred_trace=float(dc.sum()),
                     centred_diag_sq=frob_sq(dc), **unc), Gc


def gram_cross(Gx: torch.Tensor, Gxc: torch.Tensor, Gy: torch.Tensor, Gyc: torch.Tensor, mode: str) -> CrossStats:
    """:class:`CrossStats` of two Grams and their centred forms (:func:`gram_side`)."""
    unc: dict[str, float] = {}
    if mode != "center":
        unc = {"inner": float((Gx * Gy).sum()),
               "diag_inner": float((torch.diagonal(Gx) * torch.diagonal(Gy)).sum())}
    return CrossStats(centred_inner=float((Gxc * Gyc).sum()),
                      centred_diag_inner=float((torch.diagonal(Gxc) * torch.diagonal(Gyc)).sum()), **unc)


def weighted_stats(Ga: list[torch.Tensor], Gb: list[torch.Tensor] | None, mode: str, w: torch.Tensor,
                   const_a: list[bool], const_b: list[bool]) -> tuple[list[SideStats], list[SideStats],
                                                                   list[list[CrossStats]]]:
    """Statistics of a bootstrap resample given by counts ``w [N]`` (``Σw = N``) from the full-sample
    Grams ``G [N, N]`` of each layer (``Gb=None``: B's layers are A's). ``w = 1`` gives the plain
    statistics of the sample.

    The resample holds sample i ``w_i`` times. Its mean is ``μ_w = Σ w_i z̃_i / N``, so its centred
    Gram entries are ``K̄ʷ = G − 1mᵀ − m1ᵀ + c`` (``m = Gw/N``, ``c = wᵀGw/N²``). Sums over the
    resample's pairs of positions ``(p, q)`` count pair ``(i, j)`` ``w_i w_j`` times when ``i ≠ j``
    and ``w_i`` times when ``i = j`` (the p = q positions) — the pairs of two *copies* of the same
    sample are left out. Those copy pairs would otherwise enter as perfectly matched off-diagonal
    entries (``K_ii`` in both spaces) and inflate every resampled CKA/RSA when features are wide
    relative to N (measured: resampled values above the full-sample one at N = 64–160). So e.g.
    ``‖K̄‖_F² → wᵀ(K̄ʷ∘K̄ʷ)w − Σ (w_i² − w_i) K̄ʷ_ii²`` and ``tr K̄ → Σ w_i K̄ʷ_ii``; the uncentred
    sums of the RSA modes alike. Cross products over all layer pairs are one GEMM per mode.
    """
    w = w.to(F64)
    n = float(w.sum())
    extra = w * w - w
    W = torch.outer(w, w).reshape(-1)

    def side(G: torch.Tensor, c: bool) -> tuple[SideStats, torch.Tensor, torch.Tensor, torch.Tensor]:
        m = G @ w / n
        Kc = G - m[:, None] - m[None, :] + float(w @ m) / n
        dk = torch.diagonal(Kc).clone()
        kw = Kc.reshape(-1) * W
        unc: dict[str, float] = {}
        if mode != "center":
            dg = torch.diagonal(G)
            gw = G.reshape(-1) * W
            unc = {"frob_sq": float(gw @ G.reshape(-1)) - float(extra @ (dg * dg)),
                   "total": float(w @ G @ w) - float(extra @ dg), "trace": float(w @ dg), "diag_sq": float(w @ (dg * dg))}
        st = SideStats(n=int(round(n)), constant=c, centred_frob_sq=float(kw @ Kc.reshape(-1)) - float(extra @ (dk * dk)),
                       centred_trace=float(w @ dk), centred_diag_sq=float(w @ (dk * dk)), **unc)
        return st, Kc, dk, kw

    A = [side(G, c) for G, c in zip(Ga, const_a)]
    B = A if Gb is None else [side(G, c) for G, c in zip(Gb, const_b)]
    Gb_ = Ga if Gb is None else Gb
    # ⟨(wwᵀ)∘K̄_i, K̄_j⟩ for all pairs: one GEMM
    CI = torch.stack([a[3] for a in A]) @ torch.stack([b[1].reshape(-1) for b in B]).T
    DK, DL = torch.stack([a[2] for a in A]), torch.stack([b[2] for b in B])
    CDI = (DK * w) @ DL.T
    CX = (DK * extra) @ DL.T
    if mode != "center":
        UI = torch.stack([G.reshape(-1) * W for G in Ga]) @ torch.stack([G.reshape(-1) for G in Gb_]).T
        dga, dgb = torch.stack([torch.diagonal(G) for G in Ga]), torch.stack([torch.diagonal(G) for G in Gb_])
        UD = (dga * w) @ dgb.T
        UX = (dga * extra) @ dgb.T
    cross = [[CrossStats(centred_inner=float(CI[i, j] - CX[i, j]), centred_diag_inner=float(CDI[i, j]),
                         inner=None if mode == "center" else float(UI[i, j] - UX[i, j]),
                         diag_inner=None if mode == "center" else float(UD[i, j]))
              for j in range(len(B))] for i in range(len(A))]
    return [a[0] for a in A], [b[0] for b in B], cross


# ----------------------------------------------------------------------------------------------
# minibatch HSIC
# ----------------------------------------------------------------------------------------------
class BatchState:
    """Per-batch unbiased HSIC values (kept per batch so the bootstrap can resample batches)."""

    def __init__(self) -> None:
        self.xy: list[torch.Tensor] = []   # [La, Lb] per batch
        self.xx: list[torch.Tensor] = []   # [La]
        self.yy: list[torch.Tensor] = []   # [Lb]
        self.skipped = 0
        self.n = 0

    def update(self, fa: list[torch.Tensor], fb: list[torch.Tensor], same: bool) -> None:
        b = fa[0].shape[0]
        if b < 4:
            self.skipped += 1
            return
        Ka = [gram_linear(f) for f in fa]
        Kb = Ka if same else [gram_linear(f) for f in fb]
        xx = torch.tensor([float(unbiased_hsic(K, K)) for K in Ka], dtype=F64)
        yy = xx if same else torch.tensor([float(unbiased_hsic(L, L)) for L in Kb], dtype=F64)
        xy = torch.zeros(len(Ka), len(Kb), dtype=F64)
        for i, K in enumerate(Ka):
            for j, L in enumerate(Kb):
                if same and j < i:
                    continue
                xy[i, j] = float(unbiased_hsic(K, L))
                if same:
                    xy[j, i] = xy[i, j]
        self.xy.append(xy)
        self.xx.append(xx)
        self.yy.append(yy)
        self.n += b

    def value(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``[La, Lb]`` minibatch CKA; ``weights [n_batches]`` (bootstrap counts) weight the batch means."""
        if not self.xy:
            raise ValueError("minibatch_cka: no batch with at least 4 samples")
        XY, XX, YY = torch.stack(self.xy), torch.stack(self.xx), torch.stack(self.yy)
        w = torch.ones(XY.shape[0], dtype=F64) if weights is None else weights.to(F64)
        mxy = torch.einsum("b,bij->ij", w, XY) / w.sum()
        mxx, myy = (w @ XX) / w.sum(), (w @ YY) / w.sum()
        out = torch.zeros_like(mxy)
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] = ratio(float(mxy[i, j]), float(mxx[i]), float(myy[j]), False, False, clip=False)
        return out


def percentile(v: torch.Tensor, q: float) -> float:
    """numpy's default (linear) percentile of a 1-D tensor, ``q`` in [0, 1]."""
    s = torch.sort(v.to(F64)).values
    pos = q * (s.numel() - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))
