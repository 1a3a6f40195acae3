"""Growth rate of a gap (e.g. the weight gap between two arms) in its exponential phase only.

Two nearly identical models trained on the same batches drift apart exponentially at first and
then saturate. One exponential fitted through the whole curve describes neither phase, so
:func:`fit_exponential_phase` fits only the early window where ``log gap`` is linear in the step.

**Window rule.** Points with a positive, finite gap, in step order. The window starts with the
first three points and grows one point at a time; it stops before the first point that lies more
than ``drop`` (default 20 %) below the extrapolation of the current window's least-squares fit
``log g = a + r·step`` *and* is followed by another such point (one outlier does not end it).
The rate is the slope ``r`` of the fit over the final window (per step; per epoch = ``r · steps
per epoch``). The fit is ``resolved`` when the window has ≥ 4 points, a positive slope and
``R² ≥ 0.9``; otherwise the sampling is too coarse to see the exponential phase (evaluate more
densely: ``eval.weight_every``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["GrowthFit", "fit_exponential_phase"]


@dataclass(frozen=True)
class GrowthFit:
    rate_per_step: float
    rate_per_epoch: float | None
    intercept: float
    start_step: float
    end_step: float
    n_points: int
    n_usable: int
    r2: float
    resolved: bool
    saturates: bool
    dense: bool = False  # the first points are consecutive steps: sampling cannot be the reason

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        if not self.resolved and self.dense:
            return (f"no exponential phase: sampled every step, log-gap is already concave over steps "
                    f"{self.start_step:g}–{self.end_step:g} (growth slows from the start)")
        if not self.resolved:
            return (f"exponential phase not resolved by the sampling ({self.n_points} usable points in the first "
                    f"window, steps {self.start_step:g}–{self.end_step:g}); log the gap more densely (eval.weight_every)")
        per_epoch = f" = {self.rate_per_epoch:.3g} per epoch" if self.rate_per_epoch is not None else ""
        sat = ", then saturates" if self.saturates else ""
        return (f"grows ∝ exp({self.rate_per_step:.3g}·step){per_epoch} over steps {self.start_step:g}–"
                f"{self.end_step:g} ({self.n_points} points, R² = {self.r2:.3f}){sat}")


def _fit(s: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    r, a = np.polyfit(s, y, 1)
    pred = a + r * s
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return float(r), float(a), r2


def fit_exponential_phase(steps: Sequence[float], values: Sequence[float], steps_per_epoch: int | None = None,
                          drop: float = 0.2, min_points: int = 3) -> GrowthFit | None:
    """Fit ``log value = a + r·step`` over the exponential phase (window rule in the module doc).

    ``steps``/``values``: the gap over training (any order; non-positive or non-finite values are
    skipped). Returns ``None`` when fewer than ``min_points`` values are usable.
    """
    if not 0 < drop < 1:
        raise ValueError(f"drop must be in (0, 1), got {drop!r}")
    pts = sorted((float(s), float(v)) for s, v in zip(steps, values)
                 if v is not None and math.isfinite(float(v)) and float(v) > 0 and math.isfinite(float(s)))
    # one value per step (duplicates: mean of the logs)
    by: dict[float, list[float]] = {}
    for s, v in pts:
        by.setdefault(s, []).append(math.log(v))
    s_arr = np.array(sorted(by))
    y_arr = np.array([float(np.mean(by[s])) for s in s_arr])
    if len(s_arr) < min_points:
        return None
    thresh = math.log(1 - drop)
    end = min_points
    while end < len(s_arr):
        r, a, _ = _fit(s_arr[:end], y_arr[:end])
        if r <= 0:
            break

        def below(i: int) -> bool:
            return bool(y_arr[i] < a + r * s_arr[i] + thresh)

        if below(end) and (end + 1 >= len(s_arr) or below(end + 1)):
            break
        end += 1
    r, a, r2 = _fit(s_arr[:end], y_arr[:end])
    resolved = end >= 4 and r > 0 and r2 >= 0.9
    head = s_arr[: min(len(s_arr), min_points + 1)]
    dense = bool(len(head) > 1 and float(np.max(np.diff(head))) <= 1.0)
    return GrowthFit(rate_per_step=r, rate_per_epoch=(r * steps_per_epoch if steps_per_epoch else None), intercept=a,
                     start_step=float(s_arr[0]), end_step=float(s_arr[end - 1]), n_points=int(end),
                     n_usable=int(len(s_arr)), r2=r2, resolved=resolved, saturates=end < len(s_arr), dense=dense)
