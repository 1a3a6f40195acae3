"""Weighted k-nearest-neighbour accuracy on cosine similarity (InstDisc / DINO style)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import check_features, check_features_labels

__all__ = ["knn_predict", "knn_accuracy", "resolve_num_classes"]


def resolve_num_classes(num_classes: int | None, *ys: torch.Tensor) -> int:
    """``num_classes`` checked against the labels ``ys`` (each int ``[N]`` in ``0..C-1``), or, when
    ``None``, the number observed (largest label + 1)."""
    observed = max(int(y.max()) for y in ys) + 1
    if num_classes is None:
        return observed
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if observed > num_classes:
        raise ValueError(f"labels contain class {observed - 1} but num_classes={num_classes}")
    return num_classes


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024,
                exclude_self: bool = False) -> torch.Tensor:
    """Predicted labels ``[N_test]`` of the weighted cosine kNN classifier.

    For a test row ``q`` with unit-normalised features, let ``s_n = <q̂, x̂_n>`` over training rows,
    ``N_k(q)`` the ``k`` rows with largest ``s_n``. Class score ``S_c = Σ_{n ∈ N_k(q), y_n = c} exp(s_n / T)``
    and the prediction is ``argmax_c S_c`` (lowest class index on ties). Scores are computed as
    ``exp((s_n - max_n s_n) / T)`` — the same argmax, no overflow for small ``T``.

    Shapes: ``train_x [N, d]``, ``train_y [N]`` (int, 0..C-1), ``test_x [M, d]``. Work is chunked over test
    rows: memory O(chunk × N). ``exclude_self=True`` (leave-one-out, requires ``M == N`` and test == train
    row-by-row) removes training row ``i`` from the neighbours of test row ``i``.
    """
    train_x, train_y = check_features_labels(train_x, train_y, "train_x", "train_y")
    test_x = check_features(test_x, "test_x")
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"feature dimension mismatch: train_x has d={train_x.shape[1]}, "
                         f"test_x has d={test_x.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    n_train = train_x.shape[0] - (1 if exclude_self else 0)
    if k > n_train:
        raise ValueError(f"k={k} exceeds the number of available training neighbours ({n_train})")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and temperature < float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if exclude_self and test_x.shape[0] != train_x.shape[0]:
        raise ValueError(f"exclude_self=True needs test_x and train_x with the same rows, got "
                         f"{test_x.shape[0]} and {train_x.shape[0]}")
    C = resolve_num_classes(num_classes, train_y)

    dtype = torch.promote_types(train_x.dtype, test_x.dtype)
    tr = F.normalize(train_x.to(dtype), dim=1)
    te = F.normalize(test_x.to(dtype=dtype, device=train_x.device), dim=1)
    preds = torch.empty(te.shape[0], dtype=torch.long, device=tr.device)
    for start in range(0, te.shape[0], chunk):
        q = te[start:start + chunk]
        sim = q @ tr.T  # [b, N]
        if exclude_self:
            rows = torch.arange(q.shape[0], device=sim.device)
            sim[rows, rows + start] = float("-inf")
        top_sim, top_idx = sim.topk(k, dim=1)  # [b, k]
        w = torch.exp((top_sim - top_sim[:, :1]) / temperature)
        votes = torch.zeros(q.shape[0], C, dtype=dtype, device=sim.device)
        votes.scatter_add_(1, train_y[top_idx], w)
        preds[start:start + chunk] = votes.argmax(dim=1)
    return preds


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024,
                 exclude_self: bool = False) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_predict` against ``test_y [M]``."""
    test_x, test_y = check_features_labels(test_x, test_y, "test_x", "test_y")
    train_x, train_y = check_features_labels(train_x, train_y, "train_x", "train_y")
    resolve_num_classes(num_classes, train_y, test_y)
    preds = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=num_classes,
                        chunk=chunk, exclude_self=exclude_self)
    return float((preds == test_y.to(preds.device)).double().mean())
