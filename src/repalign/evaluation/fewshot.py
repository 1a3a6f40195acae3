"""Nearest-class-centre (NCC / NCCC) few-shot evaluation."""
from __future__ import annotations

import math
from typing import Iterable

import torch

from ..seeding import generator
from .features import check_features_labels

__all__ = ["ncc_predict", "fewshot_ncc"]


def ncc_predict(centres: torch.Tensor, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index of the nearest centre (Euclidean) for each row: ``argmin_c ‖x − μ_c‖²``.

    ``centres [C, d]``, ``x [M, d]`` → LongTensor ``[M]``. Uses ``‖μ_c‖² − 2⟨x, μ_c⟩`` (the ``‖x‖²`` term is
    constant per row), chunked over rows; ties go to the lowest index.
    """
    c2 = (centres * centres).sum(1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], chunk):
        out[s:s + chunk] = (c2.unsqueeze(0) - 2 * x[s:s + chunk] @ centres.T).argmin(1)
    return out


def fewshot_ncc(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                shots: Iterable[int] = (1, 5, 10), episodes: int = 5, seed: int = 0) -> dict:
    """m-shot nearest-class-centre accuracy, mean ± std over seeded episodes.

    For each ``m`` in ``shots`` and each episode ``e`` in ``range(episodes)``: with
    ``g = generator(seed, "fewshot", m, e)`` (i.e. ``derive_seed(seed, "fewshot", m, e)``), for every
    class ``c`` present in ``train_y`` (in increasing label order) draw ``m`` training rows of class ``c``
    without replacement (``torch.randperm(n_c, generator=g)[:m]``); centres ``μ_c`` = mean of those rows;
    every test row is assigned the class of its nearest centre (Euclidean); accuracy over the test set.

    Returns ``{m: (mean_acc, std_acc)}`` where std is the sample standard deviation (ddof = 1) over
    episodes, and 0.0 when ``episodes == 1``.

    Raises ``ValueError`` when ``m`` exceeds the smallest training class, when test labels contain a class
    absent from training, or on malformed inputs. Labels may be any integers (not necessarily 0..C-1).
    """
    train_x, train_y = check_features_labels(train_x, train_y, "train_x", "train_y", nonnegative=False)
    test_x, test_y = check_features_labels(test_x, test_y, "test_x", "test_y", nonnegative=False)
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"feature dimension mismatch: train_x has d={train_x.shape[1]}, "
                         f"test_x has d={test_x.shape[1]}")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if isinstance(shots, int):
        shots = (shots,)
    shots = tuple(shots)
    if len(shots) == 0:
        raise ValueError("shots must contain at least one shot count")
    for m in shots:
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"shots must be positive ints, got {m!r}")

    classes, inverse, counts = torch.unique(train_y, sorted=True, return_inverse=True, return_counts=True)
    if classes.numel() < 2:
        raise ValueError(f"fewshot_ncc needs at least 2 classes in train_y, got {classes.numel()}")
    min_count = int(counts.min())
    for m in shots:
        if m > min_count:
            smallest = int(classes[counts.argmin()])
            raise ValueError(f"shots m={m} exceeds the smallest training class (class {smallest} has "
                             f"{min_count} samples)")
    known = torch.isin(test_y, classes)
    if not bool(known.all()):
        missing = sorted(set(test_y[~known].tolist()))[:10]
        raise ValueError(f"test_y contains classes absent from train_y: {missing}")
    test_target = torch.searchsorted(classes, test_y)

    counts = counts.cpu()
    order = torch.argsort(inverse, stable=True).cpu()  # rows grouped by class
    starts = torch.cumsum(counts, 0) - counts
    dtype = torch.float64 if train_x.dtype == torch.float64 else torch.float32
    xtr = train_x.to(dtype)
    xte = test_x.to(dtype=dtype, device=train_x.device)
    test_target = test_target.to(train_x.device)
    C, d = classes.numel(), xtr.shape[1]

    results: dict = {}
    for m in shots:
        accs = []
        for e in range(episodes):
            g = generator(seed, "fewshot", m, e)
            picks = []
            for c in range(C):
                n_c = int(counts[c])
                sel = torch.randperm(n_c, generator=g)[:m] + int(starts[c])
                picks.append(order[sel])
            idx = torch.cat(picks).to(xtr.device)  # [C*m], class-major
            centres = xtr[idx].reshape(C, m, d).mean(1)
            pred = ncc_predict(centres, xte)
            accs.append(float((pred == test_target).double().mean()))
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        results[m] = (mean, std)
    return results
