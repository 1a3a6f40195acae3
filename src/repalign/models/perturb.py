"""Seeded relative perturbation of a model's weights — the *chaos-floor* control.

An arm with ``init_perturb: ε`` starts from the shared initial weights ``w`` plus, per parameter
tensor, ``δ = ε · ‖w‖_F · n / ‖n‖_F`` with ``n ~ N(0, I)`` drawn from a generator seeded by
``derive_seed(seed, "init_perturb", name)``. So ``‖δ‖_F / ‖w‖_F = ε`` exactly (up to float
rounding) for every tensor with ``‖w‖ > 0``; tensors with ``‖w‖ = 0`` (e.g. freshly initialised
biases and BN β) have no scale to be relative to and stay unchanged, and so do buffers (BN running
statistics). Training such an arm next to its unperturbed twin on the very same batches and views
measures how far the training dynamics alone carry two almost identical models apart.
"""
from __future__ import annotations

import torch
from torch import nn

from repalign.seeding import generator

__all__ = ["perturbation", "perturb_weights"]


def perturbation(w: torch.Tensor, eps: float, seed: int, name: str) -> torch.Tensor:
    """The noise ``δ`` (same shape/dtype/device as ``w``) with ``‖δ‖_F = eps · ‖w‖_F``.

    ``w``: a floating-point tensor; ``eps`` ≥ 0; ``seed``/``name`` select the generator
    (``derive_seed(seed, "init_perturb", name)``). Returns zeros when ``eps == 0`` or ``‖w‖ = 0``.
    """
    if not w.is_floating_point():
        raise ValueError(f"perturbation: tensor {name!r} must be floating point, got {w.dtype}")
    if not eps >= 0:
        raise ValueError(f"perturbation: eps must be >= 0, got {eps!r}")
    w64 = w.detach().to(torch.float64, copy=True).cpu()
    norm = float(w64.norm())
    if eps == 0 or norm == 0.0:
        return torch.zeros_like(w)
    n = torch.randn(w.shape, generator=generator(seed, "init_perturb", name), dtype=torch.float64)
    nn_ = float(n.norm())
    if nn_ == 0.0:  # pragma: no cover - a zero Gaussian draw
        return torch.zeros_like(w)
    return (n * (eps * norm / nn_)).to(dtype=w.dtype, device=w.device)


@torch.no_grad()
def perturb_weights(module: nn.Module, eps: float, seed: int) -> dict[str, float]:
    """Add :func:`perturbation` to every floating-point parameter of ``module`` in place.

    Returns ``{name: ‖δ‖/‖w‖}`` measured on the tensors actually changed (for ``meta.json``).
    ``eps == 0`` leaves the module bitwise unchanged (no arithmetic at all).
    """
    out: dict[str, float] = {}
    if eps == 0:
        return out
    for name, p in module.named_parameters():
        if not p.is_floating_point():
            continue
        d = perturbation(p, eps, seed, name)
        w_norm = float(p.detach().double().norm())
        if w_norm == 0.0:
            continue
        p.add_(d)
        out[name] = float(d.double().norm()) / w_norm
    return out
