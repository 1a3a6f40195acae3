"""Input checks shared by the metrics (every failure is a ``ValueError`` naming the argument).

Feature matrices are ``[N, d]`` tensors (numpy arrays are accepted and wrapped without a copy).
Integer / bool inputs are promoted to float64; floating inputs keep their dtype (the metrics cast
chunk by chunk to float64, so no full float64 copy of a large float32 matrix is ever made).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["as_features", "check_pair", "check_finite", "check_positive_int", "row_chunks",
           "default_chunk_rows", "rows_all_equal"]

#: target size in bytes of one float64 chunk of rows (rows × d × 8)
CHUNK_BYTES = 64 * 2**20


def as_features(x: Any, name: str = "X") -> torch.Tensor:
    """Validate ``x`` as a feature matrix ``[N, d]`` with N ≥ 1, d ≥ 1; return it as a tensor."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (or numpy array) of shape [N, d], got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D with shape [N, d], got ndim={x.dim()} shape {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    return x.detach()


def default_chunk_rows(d: int, chunk_size: int | None = None) -> int:
    """Rows per chunk: ``chunk_size`` if given, else ≈64 MiB of float64 rows (at least 256)."""
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
        return int(chunk_size)
    return max(256, CHUNK_BYTES // (8 * max(int(d), 1)))


def row_chunks(n: int, rows: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, rows):
        yield a, min(n, a + rows)


def check_finite(x: torch.Tensor, name: str = "X", chunk_rows: int | None = None) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or ±inf (checked chunk-wise, no full-size temporary)."""
    rows = default_chunk_rows(x.shape[1] if x.dim() > 1 else 1, chunk_rows)
    for a, b in row_chunks(x.shape[0], rows):
        if not bool(torch.isfinite(x[a:b]).all()):
            raise ValueError(f"{name} contains NaN or inf values")


def check_positive_int(v: Any, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {v!r}")
    return int(v)


def check_pair(x: Any, y: Any, min_samples: int = 2, what: str = "this metric",
               names: tuple[str, str] = ("X", "Y"), finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two feature matrices with the same number of rows N ≥ ``min_samples``, on the same
    device, and (``finite=True``) free of NaN/inf — callers that stream the rows anyway pass
    ``finite=False`` and check per chunk. Returns them as tensors (dtype kept, see module docstring)."""
    x = as_features(x, names[0])
    y = as_features(y, names[1])
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same number of samples N (rows), got "
                         f"{names[0]} {tuple(x.shape)} and {names[1]} {tuple(y.shape)}")
    if x.shape[0] < min_samples:
        raise ValueError(f"{what} needs at least {min_samples} samples, got N={x.shape[0]}")
    if x.device != y.device:
        raise ValueError(f"{names[0]} and {names[1]} must be on the same device, got {x.device} and {y.device}")
    if finite:
        check_finite(x, names[0])
        check_finite(y, names[1])
    return x, y


def rows_all_equal(x: torch.Tensor, chunk_rows: int | None = None) -> bool:
    """True iff every row of ``x`` equals the first row exactly (the features are constant, i.e.
    the column-centred matrix is exactly zero)."""
    first = x[:1]
    rows = default_chunk_rows(x.shape[1], chunk_rows)
    for a, b in row_chunks(x.shape[0], rows):
        if not bool((x[a:b] == first).all()):
            return False
    return True
