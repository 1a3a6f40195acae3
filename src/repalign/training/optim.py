"""Optimisers (SGD, AdamW, LARS), parameter groups and batch-size learning-rate rules."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from repalign.errors import ConfigError


def scaled_lr(base_lr: float, batch_size: int, rule: str) -> float:
    """Peak learning rate from the batch-size rule.

    ``linear``: η = base·B/256; ``sqrt``: η = base·√B/256; ``fourth_root``: η = base·B^{1/4}/256
    (the paper's Fig 5 rules, not anchored at a reference batch); ``none``: η = base.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size) / 256
    if rule == "fourth_root":
        return base_lr * batch_size ** 0.25 / 256
    if rule == "none":
        return base_lr
    raise ConfigError(f"config key 'optim.lr_rule': must be linear, sqrt, fourth_root or none, got {rule!r}")


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) with SGD momentum, as used by SimCLR.

    For each parameter ``w`` with gradient ``g`` in a group with ``lars_adapt=True``::

        g ← g + wd·w
        ratio = η_trust·‖w‖ / ‖g‖     if ‖w‖ > 0 and ‖g‖ > 0 else 1
        v ← μ·v + ratio·g ;  w ← w − lr·v

    Groups with ``lars_adapt=False`` (BN and biases by default) skip the adaptation (and get
    ``weight_decay=0`` from :func:`param_groups`). The trust ratio is computed with
    ``torch.where`` on device, so a zero gradient gives ratio 1 (never NaN) and there is no
    per-parameter host synchronisation.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars_adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, mom, eta = group["weight_decay"], group["momentum"], group["trust_coefficient"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd != 0:
                    g = g.add(p, alpha=wd)
                if group["lars_adapt"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm.clamp_min(1e-30),
                                        torch.ones_like(w_norm))
                    g = g * ratio
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(mom).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool) -> list[dict[str, Any]]:
    """Split parameters: tensors with ``ndim <= 1`` (BN γ/β, biases) get no weight decay and no LARS
    adaptation when ``exclude_bn_bias``; everything else gets ``weight_decay``."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if (exclude_bn_bias and p.ndim <= 1) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars_adapt": True}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_adapt": False})
    return groups


def build_optimizer(model: nn.Module, settings: Mapping[str, Any], lr: float) -> torch.optim.Optimizer:
    """Build the optimiser of one arm from its resolved settings (``optim.*`` keys) at peak ``lr``."""
    kind = settings["optim.type"]
    groups = param_groups(model, settings["optim.weight_decay"], settings["optim.exclude_bn_bias"])
    if kind == "sgd":
        for g in groups:
            g.pop("lars_adapt")
        return torch.optim.SGD(groups, lr=lr, momentum=settings["optim.momentum"])
    if kind == "adamw":
        for g in groups:
            g.pop("lars_adapt")
        return torch.optim.AdamW(groups, lr=lr)
    if kind == "lars":
        return LARS(groups, lr=lr, momentum=settings["optim.momentum"],
                    trust_coefficient=settings["optim.trust_coefficient"])
    raise ConfigError(f"config key 'optim.type': must be sgd, adamw or lars, got {kind!r}")
