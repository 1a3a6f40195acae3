"""Learning-rate schedule: linear warm-up then cosine decay, stepped once per optimiser step."""
from __future__ import annotations

import math

import torch


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, final_fraction: float = 0.0) -> float:
    """Multiplier of the peak lr at ``step`` (0-based).

    warm-up (``step < warmup_steps``): ``(step + 1) / warmup_steps``;
    then ``f + (1 − f)·½(1 + cos(π·(step − W)/(T − W)))`` with ``f = final_fraction``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t))


class _Factor:
    """Picklable callable for LambdaLR (so scheduler state is plain data)."""

    def __init__(self, total: int, warmup: int, final: float) -> None:
        self.total, self.warmup, self.final = total, warmup, final

    def __call__(self, step: int) -> float:
        return warmup_cosine_factor(step, self.total, self.warmup, self.final)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    final_fraction: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`warmup_cosine_factor`; call ``.step()`` after every optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(total_steps, warmup_steps, final_fraction))
