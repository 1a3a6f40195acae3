"""Seed derivation: every random choice in repalign derives from the run seed.

A *derived seed* is a 63-bit integer computed by hashing the run seed together with
a tuple of keys (strings or integers) that name the purpose, e.g.
``derive_seed(seed, "view", epoch, index, view)``. It depends only on its arguments,
never on global RNG state, worker count, process rank or the number of models.
"""
from __future__ import annotations

import hashlib
import random
from typing import Union

import numpy as np
import torch

Key = Union[int, str]


def derive_seed(seed: int, *keys: Key) -> int:
    """Return a deterministic 63-bit seed from ``seed`` and ``keys``.

    Uses BLAKE2b over the textual form of the arguments, so distinct key tuples give
    (with overwhelming probability) independent seeds: ``derive_seed(1, "a", 2)`` is
    unrelated to ``derive_seed(1, "a", 3)``.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(int(seed)).encode())
    for k in keys:
        if isinstance(k, (bool,)) or not isinstance(k, (int, np.integer, str)):
            raise ValueError(f"seed key must be int or str, got {k!r}")
        h.update(b"\x1f" + (f"i{int(k)}" if not isinstance(k, str) else f"s{k}").encode())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: Key, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``derive_seed(seed, *keys)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


def numpy_rng(seed: int, *keys: Key) -> np.random.Generator:
    """A NumPy ``Generator`` seeded with ``derive_seed(seed, *keys)``."""
    return np.random.default_rng(derive_seed(seed, *keys))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global RNGs (for third-party code we do not control)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
