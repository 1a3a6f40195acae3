"""Seeded, resumable batch sampler (plain or class-balanced) and a DDP shard helper.

Epoch ``e`` is fully determined by ``derive_seed(seed, "sampler", e)``:

- ``balanced=False``: ``perm = randperm(N)``; batches are consecutive chunks of ``perm``.
- ``balanced=True`` (stratified): each class's indices are shuffled into a queue; the queues are
  interleaved round-robin in a per-epoch random class order ``pi`` (sample ``j`` of class ``c`` gets
  the key ``j * C + position(c in pi)``; the sequence is sorted by key). With ``B >= C`` the order
  ``pi`` is fixed for the whole epoch, so every run of ``B`` consecutive samples -- in particular
  every batch -- holds ``floor(B/C)`` or ``ceil(B/C)`` samples of each class *while all classes
  still have samples left*. With ``B < C`` a fresh class order is drawn for each round (so the same
  classes do not always share a batch); a batch then holds at most 2 samples of one class.
  **Imbalanced data**: when a class's queue is exhausted it simply drops out of the round-robin;
  the remaining classes stay interleaved (balanced among themselves), so the end of the epoch
  consists of the larger classes only. Every sample is still visited exactly once per epoch
  (except the ``N mod B`` samples of the last partial batch when ``drop_last=True``).

Resuming: ``state_dict()`` holds the epoch and the number of batches already consumed in it;
after ``load_state_dict`` the next ``__iter__`` yields exactly the remaining batches of that
epoch. ``__iter__`` counts the batches it has yielded (exact when iterated directly or by a
``num_workers=0`` DataLoader); a loader that prefetches must set ``consumed`` to the number of
batches actually delivered (``repalign.data.loader.TrainLoader`` does this).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from repalign.seeding import generator

__all__ = ["SeededBatchSampler", "shard", "epoch_order"]


def epoch_order(labels: torch.Tensor, seed: int, epoch: int, balanced: bool,
                batch_size: int) -> torch.Tensor:
    """The epoch's visiting order (a permutation of ``0..N-1``), int64 ``[N]``."""
    N = labels.shape[0]
    g = generator(seed, "sampler", int(epoch))
    perm = torch.randperm(N, generator=g)
    if not balanced or N == 0:
        return perm
    classes, lab = torch.unique(labels, return_inverse=True)
    C = classes.numel()
    # shuffled per-class queues: stable sort of the permuted labels keeps the random order
    lab_p = lab[perm]
    order = torch.sort(lab_p, stable=True).indices
    q = perm[order]  # indices grouped by class, shuffled within class
    qlab = lab_p[order]
    counts = torch.bincount(qlab, minlength=C)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(N) - starts[qlab]  # position within its class queue
    R = int(counts.max())
    if batch_size >= C:
        pos = torch.argsort(torch.rand(C, generator=g)).argsort()  # position of class in pi
        key = rank * C + pos[qlab]
    else:
        pos = torch.argsort(torch.rand(R, C, generator=g), dim=1).argsort(dim=1)  # [R, C]
        key = rank * C + pos[rank, qlab]
    return q[torch.argsort(key)]


class SeededBatchSampler:
    """Batches of indices, one seeded permutation per epoch.

    Args:
        labels: int ``[N]`` (only used when ``balanced``; its length defines ``N``).
        batch_size: ``B``.
        seed: run seed (epoch ``e`` uses ``derive_seed(seed, "sampler", e)``).
        balanced: stratified batches (see module docstring).
        drop_last: drop the final ``N mod B`` samples.

    ``__iter__`` yields ``list[int]`` batches of the current epoch starting after the
    ``consumed`` batches; ``__len__`` is the number of batches of a full epoch.
    """

    def __init__(self, labels: Sequence[int] | torch.Tensor, batch_size: int, seed: int,
                 balanced: bool = False, drop_last: bool = True):
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if drop_last and batch_size > labels.shape[0]:
            raise ValueError(f"batch_size={batch_size} exceeds the {labels.shape[0]} samples with "
                             f"drop_last=True (no batch would be produced)")
        self.labels = labels
        self.batch_size = batch_size
        self.seed = int(seed)
        self.balanced = bool(balanced)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.consumed = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``; a different epoch restarts at its first batch, the same epoch
        (e.g. right after ``load_state_dict``) keeps the position."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == e:
            return self._cache[1]
        order = epoch_order(self.labels, self.seed, e, self.balanced, self.batch_size).tolist()
        B = self.batch_size
        out = [order[s:s + B] for s in range(0, len(self) * B, B)]
        self._cache = (e, out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        start = self.consumed if 0 <= self.consumed < len(batches) else 0
        for k in range(start, len(batches)):
            self.consumed = k + 1
            yield list(batches[k])

    def remaining(self) -> int:
        """Batches left in the current epoch (a full epoch if it was completed)."""
        return len(self) - self.consumed if self.consumed < len(self) else len(self)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "batch_size": self.batch_size, "balanced": self.balanced,
                "drop_last": self.drop_last, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        for k in ("seed", "batch_size", "balanced", "drop_last", "num_samples"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"sampler state {k}={state[k]!r} does not match this sampler's "
                                 f"{k}={getattr(self, k)!r}")
        consumed = int(state["consumed"])
        if not 0 <= consumed <= len(self):
            raise ValueError(f"sampler state consumed={consumed} outside 0..{len(self)}")
        self.epoch = int(state["epoch"])
        self.consumed = consumed


def shard(batch, rank: int, world_size: int):
    """Rank ``rank``'s contiguous slice ``batch[rank*m:(rank+1)*m]`` with ``m = len(batch) /
    world_size`` (list, tuple or tensor along dim 0)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    n = len(batch)
    if n % world_size:
        raise ValueError(f"batch size {n} is not divisible by world_size={world_size}")
    m = n // world_size
    return batch[rank * m:(rank + 1) * m]
