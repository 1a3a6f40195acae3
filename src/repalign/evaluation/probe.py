"""Linear probe (multinomial logistic regression) on frozen features."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..seeding import generator
from .features import check_features_labels
from .knn import resolve_num_classes

__all__ = ["linear_probe"]


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 epochs: int = 100, lr: float = 1e-2, weight_decay: float = 0.0, batch_size: int | None = None,
                 seed: int = 0, standardize: bool = True, bias: bool = False,
                 num_classes: int | None = None) -> dict:
    """Train a linear classifier ``logits = x̃ W^T (+ b)`` with cross-entropy and report accuracies.

    Optimiser: Adam (``torch.optim.Adam``, betas (0.9, 0.999)), full batch by default (one step per
    epoch, as in the main paper's code: full-batch Adam, bias-free, no weight decay; they used lr 3e-3 for
    300 epochs on raw h). Here features are standardised by default (``x̃ = (x − mean_train) / std_train``,
    per dimension; zero-std dimensions are left unscaled), which makes lr 1e-2 × 100 epochs converge on
    typical encoder features. ``weight_decay`` is Adam's L2 term (added to the gradient) on W (and b).
    ``batch_size`` (int) switches to mini-batch Adam with a per-epoch permutation from
    ``generator(seed, "probe", "epoch", e)``.

    Init: ``W ~ U(−1/√d, 1/√d)`` drawn from ``generator(seed, "probe", "init")``; b = 0. Deterministic for a
    given seed (CPU). Shapes: ``train_x [N, d]``, ``train_y [N]`` (0..C-1), ``test_x [M, d]``, ``test_y [M]``.

    Returns ``{"train_acc": float, "test_acc": float, "train_loss": float}`` (final training loss,
    evaluated on the full training set without the weight-decay term).
    """
    train_x, train_y = check_features_labels(train_x, train_y, "train_x", "train_y")
    test_x, test_y = check_features_labels(test_x, test_y, "test_x", "test_y")
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"feature dimension mismatch: train_x has d={train_x.shape[1]}, "
                         f"test_x has d={test_x.shape[1]}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a non-negative finite number, got {weight_decay!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be None (full batch) or a positive int, got {batch_size!r}")
    C = resolve_num_classes(num_classes, train_y, test_y)
    if C < 2:
        raise ValueError(f"linear_probe needs at least 2 classes, got num_classes={C}")

    device = train_x.device
    dtype = torch.float64 if train_x.dtype == torch.float64 else torch.float32
    xtr = train_x.to(dtype)
    xte = test_x.to(dtype=dtype, device=device)
    ytr, yte = train_y, test_y.to(device)
    if standardize:
        mean = xtr.mean(0, keepdim=True)
        std = xtr.std(0, unbiased=False, keepdim=True)
        std = torch.where(std > 0, std, torch.ones_like(std))
        xtr = (xtr - mean) / std
        xte = (xte - mean) / std

    N, d = xtr.shape
    g = generator(seed, "probe", "init")
    bound = 1.0 / math.sqrt(d)
    W = ((torch.rand(C, d, generator=g, dtype=torch.float64) * 2 - 1) * bound).to(dtype=dtype, device=device)
    W.requires_grad_(True)
    params = [W]
    b = None
    if bias:
        b = torch.zeros(C, dtype=dtype, device=device, requires_grad=True)
        params.append(b)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    def logits(x: torch.Tensor) -> torch.Tensor:
        out = x @ W.T
        return out + b if b is not None else out

    for epoch in range(epochs):
        if batch_size is None or batch_size >= N:
            batches = [None]
        else:
            perm = torch.randperm(N, generator=generator(seed, "probe", "epoch", epoch)).to(device)
            batches = [perm[i:i + batch_size] for i in range(0, N, batch_size)]
        for idx in batches:
            xb, yb = (xtr, ytr) if idx is None else (xtr[idx], ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(logits(xb), yb)
            loss.backward()
            opt.step()

    with torch.no_grad():
        out_tr = logits(xtr)
        train_loss = float(F.cross_entropy(out_tr, ytr))
        if not math.isfinite(train_loss):
            raise ValueError(f"linear_probe diverged (non-finite loss) with lr={lr}")
        train_acc = float((out_tr.argmax(1) == ytr).double().mean())
        test_acc = float((logits(xte).argmax(1) == yte).double().mean())
    return {"train_acc": train_acc, "test_acc": test_acc, "train_loss": train_loss}
