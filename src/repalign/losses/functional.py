r"""Contrastive and supervised losses as pure functions (see paper-notes §1).

Conventions shared by every function here
-----------------------------------------
* ``z``: ``[K, B, d]`` floating tensor, K ≥ 2 views of B samples. It is L2-normalised along
  ``d`` inside the loss; ``s(a, b) = cos(z_a, z_b) / τ``.
* ``labels``: ``[B]`` integer tensor (only equality of labels matters for the contrastive
  losses; ``ce_loss`` needs ``0 ≤ y < C``).
* ``temperature`` τ: a finite real number > 0.
* **Flat layout (view-major)**: ``z`` is flattened to ``zf = z.reshape(K * B, d)``, so the flat
  index of view ``l`` of sample ``i`` is ``a = l * B + i``; ``sample(a) = a % B`` and
  ``view(a) = a // B``. There is one ``[K·B_anchor, K·B]`` similarity matrix ``(za / τ) @ zf.T``
  per call (no ``[(KB)², d]`` tensor); masks are built from index arithmetic, either as
  ``[B_anchor, B]`` sample-level masks broadcast over views (viewing the matrix as
  ``[K, B_anchor, K, B]``) or as index_put/gather at ``(row, a)`` positions.
* Anchors are ``a = (i, l1)``; their positives are ``(i, l2)`` with ``l2 ≠ l1`` (K − 1 of them).
  The pair-based losses (NT-Xent, DCL, NSCL) are means over all ordered positive pairs
  ``(i, l1, l2 ≠ l1)``; since every anchor has exactly K − 1 positives this equals the mean over
  anchors of the per-anchor mean over its positives, which is what is computed.
* Numerics: similarities are masked with ``-inf`` and reduced with ``torch.logsumexp``. fp16 /
  bf16 inputs are upcast to fp32 for the whole computation and the loss is returned in fp32
  (fp32 / fp64 inputs keep their dtype). Finite values and gradients down to τ = 0.01.
* **Empty denominators.** An anchor whose denominator set is empty (only possible for NSCL
  without the positive, and then for *every* anchor at once: it happens iff the batch is
  single-class) has an undefined loss (``+∞`` in the paper formula). Such anchors are marked
  invalid, contribute 0 and are excluded from the mean's count; the loss is the mean over the
  valid anchors. If no anchor is valid the loss is exactly 0, with an all-zero gradient, and still
  connected to the autograd graph so ``backward()`` works. Consequently on a single-class batch
  ``dcl − nscl`` is not bounded below by 0 (and ``loss_gap_bound`` is ``+∞`` there).
* Bad inputs raise ``ValueError`` naming the argument: ``z`` not 3-D / K < 2 / B < 1 / d < 1 /
  non-floating / non-finite entries, ``labels`` not an integer ``[B]`` tensor, τ not finite and
  > 0, unknown objective. DCL additionally needs B ≥ 2 (otherwise every denominator is empty,
  which is always a configuration bug rather than a data accident). The finiteness check costs one
  device synchronisation per call; inside ``with unchecked_inputs():`` the data-dependent checks
  (non-finite entries, the label range of ``ce_loss``) are skipped — for callers such as the
  trainer that check the values themselves without a sync per call.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import threading
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "OBJECTIVES",
    "AnchorLosses",
    "canonical_objective",
    "contrastive_per_anchor",
    "contrastive_loss",
    "ntxent_loss",
    "dcl_loss",
    "nscl_loss",
    "loss_gap_bound_alpha_from_counts",
    "supcon_loss",
    "ce_loss",
    "loss_gap_bound",
    "nscl_alpha_loss",
    "loss_gap_bound_alpha",
]

#: accepted objective names → canonical name
OBJECTIVES = {
    "ntxent": "ntxent",
    "cl": "dcl",
    "dcl": "dcl",
    "nscl": "nscl",
    "nscl_alpha": "nscl_alpha",
    "scl": "supcon",
    "supcon": "supcon",
}


class AnchorLosses(NamedTuple):
    """Per-anchor losses returned by :func:`contrastive_per_anchor`.

    losses:    ``[K, B_a]`` loss of each selected anchor ``(i, l)`` (0 where invalid), indexed
               ``losses[l, i - start]``.
    valid:     ``[K, B_a]`` bool, False where the anchor's denominator set is empty.
    num_valid: 0-d int64 tensor, number of valid anchors among **all** K·B anchors of ``z`` (not
               only the selected ones). The batch loss is ``losses.sum() / max(num_valid, 1)``.
    """

    losses: torch.Tensor
    valid: torch.Tensor
    num_valid: torch.Tensor


# ----------------------------------------------------------------------------- validation


def canonical_objective(objective: str) -> str:
    """Map an objective name ("ntxent", "cl"/"dcl", "nscl", "scl"/"supcon") to its canonical form."""
    if not isinstance(objective, str) or objective.lower() not in OBJECTIVES:
        raise ValueError(
            f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}"
        )
    return OBJECTIVES[objective.lower()]


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(
            f"temperature must be a real number > 0, got {type(temperature).__name__} {temperature!r}"
        )
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {t}")
    return t


_CHECKS = threading.local()


@contextlib.contextmanager
def unchecked_inputs():
    """Skip the data-dependent input checks (non-finite entries of ``z``/``logits``, the label
    range of :func:`ce_loss`), each of which costs a device→host sync, in this thread.

    Shape, dtype and temperature checks stay. The caller takes over the responsibility: a
    non-finite input then gives a non-finite loss instead of a ``ValueError``.
    """
    before = getattr(_CHECKS, "off", False)
    _CHECKS.off = True
    try:
        yield
    finally:
        _CHECKS.off = before


def _checks_on() -> bool:
    return not getattr(_CHECKS, "off", False)


def _check_z(z, name: str = "z") -> Tuple[int, int, int]:
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [K, B, d], got {type(z).__name__}")
    if z.dim() != 3:
        raise ValueError(f"{name} must have shape [K, B, d] (3-D), got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {z.dtype}")
    K, B, d = z.shape
    if K < 2:
        raise ValueError(f"{name} must have K >= 2 views (shape [K, B, d]), got K={K}")
    if B < 1:
        raise ValueError(f"{name} must have B >= 1 samples (shape [K, B, d]), got B={B}")
    if d < 1:
        raise ValueError(f"{name} must have embedding dim d >= 1 (shape [K, B, d]), got d={d}")
    if _checks_on() and not bool(torch.isfinite(z).all()):
        n_bad = int((~torch.isfinite(z)).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite (NaN/inf) entries")
    return K, B, d


def _check_labels(labels, B: int, device, required: bool, name: str = "labels"):
    if labels is None:
        if required:
            raise ValueError(f"{name} is required for this objective (int64 tensor of shape [{B}])")
        return None
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be an integer torch.Tensor of shape [B], got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must have an integer dtype (int64), got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != B:
        raise ValueError(f"{name} must have shape [B] = [{B}], got shape {tuple(labels.shape)}")
    return labels.to(device=device, dtype=torch.long)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


# ----------------------------------------------------------------------------- core


def contrastive_per_anchor(
    objective: str,
    z: torch.Tensor,
    labels: Optional[torch.Tensor],
    temperature: float,
    include_positive: bool = False,
    anchor_range: Optional[Tuple[int, int]] = None,
    alpha: Optional[float] = None,
) -> AnchorLosses:
    r"""Per-anchor contrastive losses of the anchors ``(i, l)``, ``start ≤ i < stop``, against all K·B views.

    Args:
        objective: "ntxent", "cl"/"dcl", "nscl", "nscl_alpha" or "scl"/"supcon".
        z: ``[K, B, d]`` embeddings (normalised here). Candidates are always all K·B views.
        labels: ``[B]`` int64; required for "nscl" and "supcon", optional otherwise.
        temperature: τ > 0.
        include_positive: for "dcl" and "nscl", add the positive term ``exp s(a, p)`` to the
            denominator of each pair ``(a, p)`` (the authors' code; for K = 2, DCL with the positive
            is exactly NT-Xent). "ntxent" and "supcon" always contain the positive; the flag has no
            effect on them.
        anchor_range: ``(start, stop)`` on the B axis selecting the anchor samples (default all).
            Used by :class:`repalign.losses.ContrastiveLoss` to compute only the local anchors of a
            rank against the globally gathered batch.
        alpha: α ∈ [0, 1], required for (and only for) "nscl_alpha".

    Returns:
        :class:`AnchorLosses` ``(losses [K, stop-start], valid [K, stop-start], num_valid [])``.

    Per-anchor loss for anchor ``a = (i, l1)``, positives ``p = (i, l2)``, ``l2 ≠ l1``, with
    ``LSE_D = log Σ_{c ∈ D(a)} exp s(a, c)``:

    * ntxent: ``ℓ_a = LSE_{c ≠ a} − mean_{l2≠l1} s(a, p)``
    * dcl:    ``ℓ_a = LSE_{(j,l3): j ≠ i} − mean_{l2≠l1} s(a, p)``
    * nscl:   ``ℓ_a = LSE_{(j,l3): y_j ≠ y_i} − mean_{l2≠l1} s(a, p)``
    * nscl_alpha: ``ℓ_a = log(Σ_{j≠i, y_j≠y_i} Σ_l3 e^{s(a,c)} + (1−α) Σ_{j≠i, y_j=y_i} Σ_l3 e^{s(a,c)}) − mean s(a, p)``
      (the weight enters as ``log(1 − α)`` added to the same-class logits; α = 0: dcl, α = 1: nscl)
    * dcl/nscl with ``include_positive``: ``ℓ_a = mean_{l2≠l1} [log(exp s(a,p) + Σ_{c∈D(a)} exp s(a,c)) − s(a,p)]``
      ``= mean_{l2≠l1} softplus(LSE_D − s(a, p))``
    * supcon: ``ℓ_a = LSE_{c ≠ a} − (1/|P(a)|) Σ_{b∈P(a)} s(a, b)``,
      ``P(a) = {(j, l3) ≠ a : y_j = y_i}`` (|P(a)| ≥ K − 1 ≥ 1).
    """
    obj = canonical_objective(objective)
    tau = _check_temperature(temperature)
    K, B, d = _check_z(z)
    labels = _check_labels(labels, B, z.device, required=obj in ("nscl", "nscl_alpha", "supcon"))
    if obj in ("dcl", "nscl_alpha") and B < 2:
        raise ValueError(f"{obj} needs B >= 2 samples (its denominator excludes the anchor's sample), got B={B}")
    if obj == "nscl_alpha":
        a_w = _check_alpha(alpha)
        if include_positive:
            raise ValueError("nscl_alpha has no include_positive variant")
    elif alpha is not None:
        raise ValueError(f"alpha applies to objective 'nscl_alpha' only, got objective {objective!r}")
    if anchor_range is None:
        start, stop = 0, B
    else:
        try:
            start, stop = (int(v) for v in anchor_range)
        except (TypeError, ValueError):
            raise ValueError(f"anchor_range must be a pair (start, stop), got {anchor_range!r}") from None
        if not 0 <= start < stop <= B:
            raise ValueError(f"anchor_range must satisfy 0 <= start < stop <= B={B}, got {anchor_range!r}")
    if not isinstance(include_positive, bool):
        raise ValueError(f"include_positive must be a bool, got {include_positive!r}")
    Ba = stop - start
    dev = z.device

    zn = F.normalize(z.to(_compute_dtype(z)), dim=-1)  # [K, B, d]
    zf = zn.reshape(K * B, d)  # candidates, flat index l*B + j
    za = (zn[:, start:stop] / tau).reshape(K * Ba, d)  # anchors / τ, row r = l*Ba + (i - start)
    sim = za @ zf.T  # [K*Ba, K*B] = s(anchor, candidate) -- the only O((KB)^2) tensor
    sim4 = sim.view(K, Ba, K, B)  # [l1, i - start, l3, j]: masks over (i, j) broadcast over views

    rows = torch.arange(K * Ba, device=dev)
    view_a = rows // Ba  # [K*Ba]
    samp_a = rows % Ba + start  # [K*Ba]
    flat_a = view_a * B + samp_a  # [K*Ba] flat candidate index of the anchor itself

    # positives (i, l2), l2 != l1: [K*Ba, K-1]
    views = torch.arange(K, device=dev)
    other_views = views.expand(K * Ba, K)[views[None, :] != view_a[:, None]].view(K * Ba, K - 1)
    # computed as row-wise dot products (not gathered from sim, which is masked in place below)
    s_pos = (za[:, None, :] * zf[other_views * B + samp_a[:, None]]).sum(dim=-1)  # [K*Ba, K-1]

    neg_inf = torch.tensor(float("-inf"), dtype=sim.dtype, device=dev)
    if obj == "supcon":  # before sim is masked in place below
        same = labels[start:stop, None] == labels[None, :]  # [Ba, B], includes j == i
        pos_vals = torch.where(same[None, :, None, :], sim4, 0.0).reshape(K * Ba, K * B)
        pos_sum = pos_vals.index_put_((rows, flat_a), neg_inf.new_zeros(())).sum(dim=1)  # drop b = a
        n_pos = (K * same.sum(dim=1) - 1).repeat(K)  # |P(a)| >= K - 1
    if obj in ("ntxent", "supcon"):  # denominator: every candidate except the anchor itself
        lse = torch.logsumexp(sim.index_put_((rows, flat_a), neg_inf), dim=1)  # [K*Ba]
        nonempty = torch.ones(K * Ba, dtype=torch.bool, device=dev)
    else:
        j = torch.arange(B, device=dev)
        if obj == "dcl":  # denominator: j != i (B >= 2, never empty)
            den = j[None, :] != torch.arange(start, stop, device=dev)[:, None]  # [Ba, B]
        elif obj == "nscl":  # nscl: y_j != y_i
            den = labels[start:stop, None] != labels[None, :]  # [Ba, B]
        else:  # nscl_alpha: j != i, same-class candidates weighted 1 − α (left out at α = 1)
            den = j[None, :] != torch.arange(start, stop, device=dev)[:, None]  # [Ba, B]
            same = labels[start:stop, None] == labels[None, :]
            if a_w == 1.0:
                den = den & ~same
            elif a_w > 0.0:  # + log(1 − α) on same-class logits, in place like the mask below
                sim4.add_((same.to(sim4.dtype) * math.log1p(-a_w))[None, :, None, :])  # in sim's precision
        nonempty_s = den.any(dim=1)  # [Ba]
        # Empty rows get a finite dummy reduction (over all entries) whose value and gradient are
        # discarded by the torch.where below. (logsumexp of an all -inf row is -inf with a NaN local
        # gradient, which today only masked_fill's backward happens to erase; don't rely on that.)
        safe_den = den | ~nonempty_s[:, None]
        sim4.masked_fill_(~safe_den[None, :, None, :], float("-inf"))  # in place: mm saves no output
        lse = torch.logsumexp(sim, dim=1)  # [K*Ba]; row r of sim = (l1, i) block of sim4
        nonempty = nonempty_s.repeat(K)  # [K*Ba]

    if obj == "supcon":
        per = lse - pos_sum / n_pos
        valid = torch.ones_like(nonempty)
    elif include_positive and obj in ("dcl", "nscl"):
        lse_neg = torch.where(nonempty, lse, float("-inf"))
        per = F.softplus(lse_neg[:, None] - s_pos).mean(dim=1)  # softplus(-inf) = 0, grad 0
        valid = torch.ones_like(nonempty)
    else:
        per = torch.where(nonempty, lse - s_pos.mean(dim=1), 0.0)
        valid = nonempty

    if (obj == "nscl" and not include_positive) or (obj == "nscl_alpha" and a_w == 1.0):
        # empty iff the whole (global) batch is single-class → all-or-nothing
        multi_class = (labels != labels[0]).any()
        num_valid = torch.where(multi_class, K * B, 0).to(torch.long)
    else:
        num_valid = torch.tensor(K * B, device=dev, dtype=torch.long)
    return AnchorLosses(per.view(K, Ba), valid.view(K, Ba), num_valid)


def _mean_over_valid(res: AnchorLosses) -> torch.Tensor:
    # invalid anchors are exactly 0 in res.losses; the sum stays connected to the graph.
    return res.losses.sum() / res.num_valid.clamp_min(1).to(res.losses.dtype)


def contrastive_loss(
    objective: str,
    z: torch.Tensor,
    labels: Optional[torch.Tensor],
    temperature: float,
    include_positive: bool = False,
) -> torch.Tensor:
    """Dispatch to the contrastive loss named ``objective`` ("ntxent", "cl"/"dcl", "nscl", "scl"/"supcon").

    ``z [K, B, d]``, ``labels [B]`` (may be None for ntxent/dcl), τ > 0 → scalar loss: mean of
    the per-anchor losses of :func:`contrastive_per_anchor` over the valid anchors.
    ``include_positive`` affects "dcl" and "nscl" only.
    """
    return _mean_over_valid(
        contrastive_per_anchor(objective, z, labels, temperature, include_positive=include_positive)
    )


def ntxent_loss(z: torch.Tensor, labels: Optional[torch.Tensor], temperature: float) -> torch.Tensor:
    r"""NT-Xent / InfoNCE (SimCLR), generalised to K views.

    ``z [K, B, d]``, ``labels [B]`` or None (unused), τ > 0 → scalar.

    .. math::
        \mathcal L = \frac{1}{K(K-1)B}\sum_{i}\sum_{l_1}\sum_{l_2\ne l_1}
        \Big[-s(z_i^{l_1}, z_i^{l_2}) + \log\!\!\sum_{(j,l_3)\ne(i,l_1)}\!\! e^{s(z_i^{l_1}, z_j^{l_3})}\Big]

    The denominator contains all other K·B − 1 views, including the K − 1 views of sample i.
    Works for any B ≥ 1.
    """
    return contrastive_loss("ntxent", z, labels, temperature)


def dcl_loss(
    z: torch.Tensor, labels: Optional[torch.Tensor], temperature: float, include_positive: bool = False
) -> torch.Tensor:
    r"""Decoupled contrastive loss (the paper's CL): the anchor's own sample is not a negative.

    ``z [K, B, d]`` (B ≥ 2), ``labels [B]`` or None (unused), τ > 0 → scalar.

    .. math::
        \mathcal L^{CL} = \frac{1}{K(K-1)B}\sum_{i}\sum_{l_1}\sum_{l_2\ne l_1}
        \Big[-s(z_i^{l_1}, z_i^{l_2}) + \log\sum_{j\ne i}\sum_{l_3} e^{s(z_i^{l_1}, z_j^{l_3})}\Big]

    (the paper normalises by K²N and includes l1 = l2 in its sum; here l2 ≠ l1 as in the project
    spec). With ``include_positive=True`` the denominator of pair (l1, l2) additionally contains
    ``e^{s(z_i^{l1}, z_i^{l2})}``; for K = 2 this equals :func:`ntxent_loss`.
    """
    return contrastive_loss("dcl", z, labels, temperature, include_positive=include_positive)


def nscl_loss(
    z: torch.Tensor, labels: torch.Tensor, temperature: float, include_positive: bool = False
) -> torch.Tensor:
    r"""Negatives-only supervised contrastive loss: only other-class samples are negatives.

    ``z [K, B, d]``, ``labels [B]``, τ > 0 → scalar.

    .. math::
        \mathcal L^{NSCL} = \frac{1}{K(K-1)B}\sum_{i}\sum_{l_1}\sum_{l_2\ne l_1}
        \Big[-s(z_i^{l_1}, z_i^{l_2}) + \log\big([e^{s(z_i^{l_1}, z_i^{l_2})}]
        + \sum_{j:\,y_j\ne y_i}\sum_{l_3} e^{s(z_i^{l_1}, z_j^{l_3})}\big)\Big]

    The bracketed positive term is present only with ``include_positive=True`` (the form the
    authors' code trains). Without it, a single-class batch has empty denominators: the loss is
    then defined as 0 (zero gradient, graph-connected); see the module docstring.
    """
    return contrastive_loss("nscl", z, labels, temperature, include_positive=include_positive)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be a real number in [0, 1], got {alpha!r}")
    return float(alpha)


def nscl_alpha_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    r"""The α-family between DCL (α = 0) and NSCL (α = 1): same-class negatives weighted 1 − α.

    ``z [K, B, d]``, ``labels [B]``, τ > 0, α ∈ [0, 1] → scalar. Per anchor ``a = (i, l1)``:

    .. math::
        \ell_a = \log\Big(\sum_{j\ne i,\,y_j\ne y_i}\sum_{l_3} e^{s(a, z_j^{l_3})}
        + (1-\alpha)\sum_{j\ne i,\,y_j=y_i}\sum_{l_3} e^{s(a, z_j^{l_3})}\Big)
        - \operatorname{mean}_{l_2\ne l_1} s(a, z_i^{l_2})

    averaged over the K·B anchors (the normalisation of :func:`dcl_loss`). The weight enters as
    ``log(1 − α)`` in a log-sum-exp over the DCL candidates (``-inf`` at α = 1, where the
    denominator is NSCL's). At α = 1 a single-class batch has empty denominators and the loss is 0
    (graph-connected), as for :func:`nscl_loss`. No ``include_positive`` variant. Computed by
    :func:`contrastive_per_anchor` (so :class:`~repalign.losses.ContrastiveLoss` gathers it across ranks).
    """
    return _mean_over_valid(contrastive_per_anchor("nscl_alpha", z, labels, temperature, alpha=alpha))


def loss_gap_bound_alpha(labels: torch.Tensor, temperature: float, alpha: float) -> float:
    r"""Upper bound on DCL − :func:`nscl_alpha_loss` for a batch; equals :func:`loss_gap_bound` at α = 1.

    Per anchor, with ``S_o`` (``S_s``) the DCL denominator's other-class (same-class) part,
    the gap is ``log((S_o + S_s)/(S_o + (1−α)S_s)) = log((1 + r)/(1 + (1−α) r))``, ``r = S_s/S_o``,
    which is ≥ 0 and increasing in r. Cosines in [−1, 1] give ``r ≤ R = e^{2/τ} n_max/(N − n_max)``, so

    .. math:: 0 \le L_{DCL} - L_\alpha \le \log(1 + R) - \log(1 + (1-\alpha) R)

    (tighter than ``log(1 + αR)``). Single-class batch: ``R = ∞`` and the bound is ``−log(1 − α)``
    (``+inf`` at α = 1). Evaluated in float64 log-space.
    """
    return _alpha_bound(loss_gap_bound(labels, temperature), alpha)


def loss_gap_bound_alpha_from_counts(n: int, n_max: int, temperature: float, alpha: float) -> float:
    """:func:`loss_gap_bound_alpha` from the batch size ``n`` and its largest class count ``n_max``."""
    return _alpha_bound(loss_gap_bound_from_counts(n, n_max, temperature), alpha)


def _alpha_bound(b1: float, alpha: float) -> float:
    """``log(1 + R) − log(1 + (1−α) R)`` from ``b1 = log(1 + R)`` (float64 log-space)."""
    a = _check_alpha(alpha)
    if a == 0.0:
        return 0.0
    if math.isinf(b1):
        return -math.log1p(-a) if a < 1.0 else math.inf
    if a == 1.0:
        return b1
    log_r = b1 + math.log(-math.expm1(-b1))  # log R = log(e^{b1} − 1)
    x = math.log1p(-a) + log_r
    b2 = max(x, 0.0) + math.log1p(math.exp(-abs(x)))  # log(1 + (1−α)R)
    return max(b1 - b2, 0.0)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Supervised contrastive loss, :math:`L_{out}` form (Khosla et al. 2020).

    ``z [K, B, d]``, ``labels [B]``, τ > 0 → scalar. For anchor ``a = (i, l1)`` let
    ``P(a) = {(j, l3) ≠ a : y_j = y_i}`` (includes the other views of i, so |P(a)| ≥ K − 1):

    .. math::
        \ell_a = -\frac{1}{|P(a)|}\sum_{b\in P(a)}\Big[s_{ab} - \log\sum_{c\ne a} e^{s_{ac}}\Big],
        \qquad \mathcal L = \frac{1}{KB}\sum_a \ell_a

    Note: this averages **per anchor** (each anchor weighs 1, its positives share it), not per
    ordered positive pair as the other losses do.
    """
    return contrastive_loss("supcon", z, labels, temperature)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Softmax cross-entropy averaged over views and samples.

    ``logits [K, B, C]`` (K ≥ 1), ``labels [B]`` int64 in ``[0, C)`` → scalar

    .. math:: \mathcal L = \frac{1}{KB}\sum_{l,i} -\log\mathrm{softmax}(\text{logits}_{l,i})_{y_i}

    fp16/bf16 logits are upcast to fp32.
    """
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"logits must be a torch.Tensor of shape [K, B, C], got {type(logits).__name__}")
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape [K, B, C] (3-D), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    K, B, C = logits.shape
    if K < 1 or B < 1 or C < 1:
        raise ValueError(f"logits must have K, B, C >= 1, got shape {tuple(logits.shape)}")
    if _checks_on() and not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contains non-finite (NaN/inf) entries")
    labels = _check_labels(labels, B, logits.device, required=True)
    if _checks_on() and (bool((labels < 0).any()) or bool((labels >= C).any())):
        raise ValueError(
            f"labels must lie in [0, C) = [0, {C}), got min {int(labels.min())}, max {int(labels.max())}"
        )
    flat = logits.to(_compute_dtype(logits)).reshape(K * B, C)  # row l*B + i
    return F.cross_entropy(flat, labels.repeat(K))


def loss_gap_bound(labels: torch.Tensor, temperature: float) -> float:
    r"""Upper bound on DCL − NSCL for a batch (predecessor Thm 1, general-τ form).

    ``labels [N]`` (N samples, any number of views), τ > 0 → python float

    .. math:: \log\Big(1 + e^{2/\tau}\,\frac{n_{max}}{N - n_{max}}\Big)

    with ``n_max`` the largest class count. Evaluated in float64 log-space as
    ``logaddexp(0, 2/τ + log n_max − log(N − n_max))`` (no overflow at τ = 0.01).
    Returns ``+inf`` for a single-class batch (N == n_max), where NSCL has no negatives.
    The per-anchor gap is ≤ log(1 + e^{2/τ}(n_{y_i} − 1)/(N − n_{y_i})), so this bound holds for
    :func:`dcl_loss` − :func:`nscl_loss` both without and with ``include_positive``.
    """
    tau = _check_temperature(temperature)
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be an integer torch.Tensor of shape [N], got {type(labels).__name__}")
    if labels.dim() != 1 or labels.numel() < 1:
        raise ValueError(f"labels must have shape [N] with N >= 1, got shape {tuple(labels.shape)}")
    _check_labels(labels, labels.shape[0], "cpu", required=True)
    n = int(labels.numel())
    n_max = int(torch.unique(labels.detach().cpu(), return_counts=True)[1].max())
    return loss_gap_bound_from_counts(n, n_max, tau)


def loss_gap_bound_from_counts(n: int, n_max: int, temperature: float) -> float:
    """:func:`loss_gap_bound` from the batch size ``n`` and its largest class count ``n_max`` (the
    trainer counts classes on the device and reads the count with its other values)."""
    tau = _check_temperature(temperature)
    if not 1 <= n_max <= n:
        raise ValueError(f"n_max must lie in 1..n = 1..{n}, got {n_max}")
    if n_max == n:
        return math.inf
    x = 2.0 / tau + math.log(n_max) - math.log(n - n_max)
    # logaddexp(0, x) = max(x, 0) + log1p(exp(-|x|))
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))
