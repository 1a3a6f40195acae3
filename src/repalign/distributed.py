"""Small ``torch.distributed`` helpers.

All helpers degrade gracefully when ``torch.distributed`` is unavailable or not
initialised: ``is_dist()`` is then ``False``, ``rank() == 0``, ``world_size() == 1`` and the
gather functions return their input unchanged.
"""
from __future__ import annotations

import os
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["is_dist", "rank", "world_size", "local_rank", "gather_with_grad", "gather_no_grad", "all_reduce_mean",
           "init_from_env"]


def is_dist() -> bool:
    """``True`` iff ``torch.distributed`` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    """Rank of this process on its node: ``$LOCAL_RANK`` (set by torchrun), else 0."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError(f"environment variable LOCAL_RANK must be an int, got {os.environ['LOCAL_RANK']!r}") from None


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group from torchrun-style environment variables.

    Does nothing (returns ``is_dist()``) when a group already exists or when ``$WORLD_SIZE`` is unset
    or 1. Otherwise calls ``init_process_group(backend, init_method="env://")`` using
    ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``; ``backend`` defaults to "nccl" when CUDA
    is available (and then selects ``cuda:LOCAL_RANK``), else "gloo". Returns ``True`` iff distributed.
    """
    if is_dist():
        return True
    ws = os.environ.get("WORLD_SIZE")
    if ws is None or int(ws) <= 1:
        return False
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={ws} but torch.distributed is not available in this torch build")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return True


def _check_dim(x: torch.Tensor, dim: int) -> int:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension to be gathered (got a 0-d tensor)")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} out of range for x of shape {tuple(x.shape)}")
    return dim % x.dim()


def gather_with_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """All-gather ``x`` from every rank and concatenate along ``dim`` in rank order, keeping gradients.

    Uses ``torch.distributed.nn.functional.all_gather``: in the backward pass the gradient for the
    local ``x`` is the **sum over ranks** of the gradients flowing into this rank's slice of the
    output (reduce-scatter with SUM). Every rank must pass a tensor of the same shape.

    Shapes: ``x [..., n, ...]`` → ``[..., world_size * n, ...]`` (``n`` = size along ``dim``).
    Returns ``x`` itself when not distributed or when ``world_size() == 1``.
    """
    dim = _check_dim(x, dim)
    if not is_dist() or world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # Deprecated in favour of the (private) functional collectives in recent torch; still the
        # documented autograd-aware all_gather and available on every supported torch version.
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*", category=FutureWarning)
        parts = all_gather(x.contiguous())
    return torch.cat(parts, dim=dim)


def gather_no_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """All-gather ``x`` (no autograd) and concatenate along ``dim`` in rank order.

    Every rank must pass a tensor of the same shape. Returns ``x`` when not distributed.
    """
    dim = _check_dim(x, dim)
    if not is_dist() or world_size() == 1:
        return x
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=dim)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (no autograd; returns a new tensor). Returns ``x`` when not distributed."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not is_dist() or world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / world_size()
