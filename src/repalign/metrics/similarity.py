"""Similarity-matrix gap (the quantity of the main theorem) and the representation angle.

For ``X [N, d1]`` let ``Σ_X ∈ R^{N×N}``, ``(Σ_X)_ij = cos(x_i, x_j)`` (diagonal included; a zero
row has cosine 0 with every row, itself included) and ``H = I − 11ᵀ/N``. With unit rows ``X̂``::

    ‖Σ_X − Σ_Y‖_F² = ‖X̂ᵀX̂‖_F² + ‖ŶᵀŶ‖_F² − 2‖X̂ᵀŶ‖_F²

so everything is computed from d×d float64 products without an N×N matrix (memory O(d²),
time O(N·d²); the N×N Gram form is used instead when it is smaller, see ``linear_cka``).
The subtraction cancels when the gap is tiny; in float64 the absolute error of ``abs`` is about
``1e-8·‖Σ‖_F`` at worst (abs² is clamped at 0), which is why no float32 shortcut is used.
"""
from __future__ import annotations

import math
from typing import Any

from ._validate import check_pair
from .cka import cka_from_stats
from .moments import CrossStats, SideStats, pair_stats, ratio
from .rsa import pearson_from_stats

__all__ = ["similarity_gap", "representation_angle", "representation_metrics"]

_ANGLE_RTOL = 1e-12


def _div(a: float, b: float) -> float:
    """a / b with 0/0 = 0 and x/0 = inf (x > 0): documented, never NaN."""
    if b > 0:
        return a / b
    return 0.0 if a == 0 else math.inf


def _gap(sx: SideStats, sy: SideStats, xy: CrossStats, n: int) -> dict[str, float]:
    # ‖Σ_X − Σ_Y‖_F² = ‖K‖² + ‖L‖² − 2⟨K, L⟩ (K, L the Grams of the unit rows), likewise centred
    nx, ny = math.sqrt(max(sx.frob_sq, 0.0)), math.sqrt(max(sy.frob_sq, 0.0))
    ab = math.sqrt(max(sx.frob_sq + sy.frob_sq - 2 * xy.inner, 0.0))
    cab = math.sqrt(max(sx.centred_frob_sq + sy.centred_frob_sq - 2 * xy.centred_inner, 0.0))
    dx, dy = _degenerate(sx), _degenerate(sy)
    if dy:  # HΣ_YH = 0 up to rounding
        crel = 0.0 if dx else math.inf
    else:
        crel = cab / math.sqrt(sy.centred_frob_sq)
    return {"abs": ab, "rel": _div(ab, ny), "rel_sym": _div(ab, 0.5 * (nx + ny)), "per_entry": ab / n,
            "centred_abs": cab, "centred_rel": crel, "n": n}


def _degenerate(s: SideStats) -> bool:
    """All unit rows identical (centred variation ≤ 1e-12 of the total, i.e. 1e-6 RMS)."""
    return not (s.centred_trace > _ANGLE_RTOL * s.trace and s.centred_frob_sq > 0)


def _angle(sx: SideStats, sy: SideStats, xy: CrossStats, centred: bool) -> float:
    # a side is degenerate when its (centred) unit rows carry no variation at all
    if centred:
        cx, cy = _degenerate(sx), _degenerate(sy)
        cos = ratio(xy.centred_inner, sx.centred_frob_sq, sy.centred_frob_sq, cx, cy, clip=True)
    else:
        cx, cy = not sx.frob_sq > 0, not sy.frob_sq > 0
        cos = ratio(xy.inner, sx.frob_sq, sy.frob_sq, cx, cy, clip=True)
    return math.degrees(math.acos(cos))


def similarity_gap(X: Any, Y: Any, *, chunk_size: int | None = None, method: str = "auto") -> dict[str, float]:
    """Gap between the cosine-similarity matrices of ``X [N, d1]`` and ``Y [N, d2]`` (N ≥ 2).

    Returns a dict:

    * ``abs``        = ‖Σ_X − Σ_Y‖_F (diagonal included; Thm 1 of the paper bounds this)
    * ``rel``        = abs / ‖Σ_Y‖_F — ``Y`` is the reference (pass the supervised arm as ``Y``)
    * ``rel_sym``    = abs / (½(‖Σ_X‖_F + ‖Σ_Y‖_F)) — symmetric, in [0, 2]
    * ``per_entry``  = abs / N (the RMS entry difference is abs / N)
    * ``centred_abs`` = ‖H(Σ_X − Σ_Y)H‖_F and ``centred_rel`` = centred_abs / ‖HΣ_YH‖_F — the ρ_T of
      the paper's CKA corollary (paper-notes §2.3, UNCONFIRMED form): CKA_cos ≥ (1−ρ)/(1+ρ)
    * ``n`` = N

    Relative values with a zero denominator are 0.0 if the numerator is 0, else ``inf``: ``rel`` only
    when every row of ``Y`` is zero; ``centred_rel`` when all unit rows of ``Y`` coincide (to 1e-6
    relative RMS; then 0.0 if the same holds for ``X``).
    """
    X, Y = check_pair(X, Y, 2, "similarity_gap", finite=False)
    sx, sy, xy = pair_stats(X, Y, "cosine", method, chunk_size)
    return _gap(sx, sy, xy, X.shape[0])


def representation_angle(X: Any, Y: Any, *, centred: bool = True, chunk_size: int | None = None,
                         method: str = "auto") -> float:
    """Angle in degrees between the cosine-similarity matrices of ``X`` and ``Y`` (Fig 1 reading)::

        angle = arccos( ⟨HΣ_XH, HΣ_YH⟩_F / (‖HΣ_XH‖_F ‖HΣ_YH‖_F) )

    i.e. ``arccos`` of linear CKA computed on the unit-normalised rows (``centred=False`` drops
    ``H``: arccos of the cosine between Σ_X and Σ_Y themselves). The inner product of two centred
    PSD Gram matrices is ≥ 0, so the angle lies in [0°, 90°]. Resolution near 0° is limited by
    arccos to ≈ sqrt(1e-16) rad ≈ 1e-6° (a few 1e-6° for inputs equal up to rounding). Degenerate sides (all unit rows
    identical up to 1e-6 relative RMS) follow the CKA convention: both → 0°, one → 90°.
    """
    X, Y = check_pair(X, Y, 2, "representation_angle", finite=False)
    sx, sy, xy = pair_stats(X, Y, "cosine", method, chunk_size)
    return _angle(sx, sy, xy, centred)


def representation_metrics(X: Any, Y: Any, *, debiased: bool = True, chunk_size: int | None = None,
                           method: str = "auto") -> dict[str, Any]:
    """All representation-space alignment numbers of a ``metrics.jsonl`` ``align`` row in one go
    (two passes of d×d products instead of one per metric)::

        linear_cka, debiased_cka (None if not requested or N < 4),
        rsa (Pearson, cosine RDM), sim_gap, sim_gap_rel, sim_gap_per_entry, repr_angle_deg,
        plus sim_gap_rel_sym, sim_gap_centred_rel, n

    Each equals the corresponding stand-alone function (``linear_cka``, ``rsa``, ``similarity_gap``,
    ``representation_angle``) on the same inputs.
    """
    X, Y = check_pair(X, Y, 3, "representation_metrics", finite=False)
    n = X.shape[0]
    cx, cy, cxy = pair_stats(X, Y, "center", method, chunk_size)
    sx, sy, xy = pair_stats(X, Y, "cosine", method, chunk_size)
    gap = _gap(sx, sy, xy, n)
    return {
        "linear_cka": cka_from_stats(cx, cy, cxy, False),
        "debiased_cka": cka_from_stats(cx, cy, cxy, True) if debiased and n >= 4 else None,
        "rsa": pearson_from_stats(sx, sy, xy, n),
        "sim_gap": gap["abs"], "sim_gap_rel": gap["rel"], "sim_gap_per_entry": gap["per_entry"],
        "repr_angle_deg": _angle(sx, sy, xy, True),
        "sim_gap_rel_sym": gap["rel_sym"], "sim_gap_centred_rel": gap["centred_rel"], "n": n,
    }
