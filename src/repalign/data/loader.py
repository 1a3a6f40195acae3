"""DataLoaders producing multi-view training batches and un-augmented evaluation batches.

Training: the batch sampler's index lists are tagged with the sampler's current epoch in the main
process (``(epoch, indices)``) and handed to :class:`ViewBatchDataset`, whose ``__getitem__`` builds
the whole batch at once: ``views float [K, B, C, H, W]``, ``labels int64 [B]``, ``indices int64
[B]``. Because the epoch travels with the indices (not as a dataset attribute copied into
workers) and views depend only on ``(seed, epoch, index, view)``, the output is identical for any
``num_workers`` and for persistent workers.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from repalign.data.sampler import SeededBatchSampler, shard
from repalign.data.sources import ImageSource
from repalign.data.batched_views import batch_params
from repalign.data.views import EvalTransform, MultiViewTransform

__all__ = ["ViewBatchDataset", "EvalBatchDataset", "TrainLoader", "make_train_loader",
           "extract_loader"]


def _passthrough(x):
    return x


class ViewBatchDataset(Dataset):
    """Map-style dataset whose items are whole batches.

    ``ds[(epoch, indices)]`` (or ``ds[indices]`` using the attribute ``ds.epoch``) returns
    ``(views float32 [K, B, C, S, S], labels int64 [B], indices int64 [B])``. With ``raw=True``
    (``data.augment_device: cuda``) the views are left to the consumer:
    ``(images uint8 [B, C, H, W], params, labels, indices)`` with ``params`` from
    :func:`~repalign.data.batched_views.batch_params` (the same per-view parameters), to be
    applied batched on the device by :class:`~repalign.data.batched_views.BatchedViews`.
    """

    def __init__(self, source: ImageSource, transform: MultiViewTransform, raw: bool = False):
        if source.channels != transform.channels:
            raise ValueError(f"source has {source.channels} channels, transform expects "
                             f"channels={transform.channels}")
        self.source = source
        self.transform = transform
        self.raw = bool(raw)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        if (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], int)
                and (isinstance(key[1], (list, tuple, range)) or torch.is_tensor(key[1]))):
            epoch, indices = key
        else:
            epoch, indices = self.epoch, key
        idx = torch.as_tensor(list(indices) if not torch.is_tensor(indices) else indices,
                              dtype=torch.long)
        imgs = self.source.get_batch(idx)
        if self.raw:
            params = batch_params(self.transform, idx, int(epoch), *imgs.shape[-2:])
            return imgs, params, self.source.labels.index_select(0, idx), idx
        views = self.transform.apply_batch(imgs, idx, int(epoch))
        return views, self.source.labels.index_select(0, idx), idx


class _EpochTagged:
    """Iterable over ``(epoch, batch)`` from a :class:`SeededBatchSampler` (main process).

    With ``shard=(rank, world_size)`` each global batch is replaced by this rank's contiguous slice
    (:func:`~repalign.data.sampler.shard`), so a DDP rank produces only its own views.
    """

    def __init__(self, sampler: SeededBatchSampler, shard_spec: tuple[int, int] | None = None):
        self.sampler = sampler
        self.shard_spec = shard_spec

    def __iter__(self):
        for b in self.sampler:
            yield (self.sampler.epoch, b if self.shard_spec is None else shard(b, *self.shard_spec))

    def __len__(self) -> int:
        return self.sampler.remaining()


class TrainLoader:
    """Iterable over training batches ``(views [K,B,C,H,W], labels [B], indices [B])``.

    Wraps a DataLoader; after every delivered batch it sets ``sampler.consumed`` to the number
    of batches actually handed out in this epoch (correct even when workers prefetch), so
    ``state_dict()`` / ``sampler.state_dict()`` can be saved between steps and resumed.
    """

    def __init__(self, dataset: ViewBatchDataset, sampler: SeededBatchSampler,
                 num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, prefetch_factor: int | None = None,
                 multiprocessing_context=None, shard: tuple[int, int] | None = None):
        self.dataset, self.sampler = dataset, sampler
        kw = {}
        if num_workers > 0:
            kw["persistent_workers"] = persistent_workers
            if prefetch_factor is not None:
                kw["prefetch_factor"] = prefetch_factor
            if multiprocessing_context is not None:
                kw["multiprocessing_context"] = multiprocessing_context
        self.loader = DataLoader(dataset, sampler=_EpochTagged(sampler, shard), batch_size=None,
                                 collate_fn=_passthrough, num_workers=num_workers,
                                 pin_memory=pin_memory, **kw)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        s = self.sampler
        start = s.consumed if 0 <= s.consumed < len(s) else 0
        delivered = 0
        for batch in self.loader:
            delivered += 1
            s.consumed = start + delivered
            yield batch

    def __len__(self) -> int:
        return self.sampler.remaining()

    def close(self) -> None:
        """Shut the worker processes down now (persistent workers otherwise live until garbage
        collection — and a forked worker holds whatever file locks its parent held). Idempotent;
        iterating again starts new workers."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def make_train_loader(source: ImageSource, transform: MultiViewTransform,
                      sampler: SeededBatchSampler, num_workers: int = 0, raw: bool = False,
                      **kw) -> TrainLoader:
    """Training loader (``raw``: see :class:`ViewBatchDataset`); ``kw``: ``pin_memory``,
    ``persistent_workers``, ``prefetch_factor``, ``multiprocessing_context``,
    ``shard=(rank, world_size)`` (DDP: this rank's slice of every global batch). Call
    ``loader.set_epoch(e)`` (or ``sampler.set_epoch``) before each epoch."""
    if sampler.num_samples != len(source):
        raise ValueError(f"sampler covers {sampler.num_samples} samples but source has "
                         f"{len(source)}")
    return TrainLoader(ViewBatchDataset(source, transform, raw=raw), sampler,
                       num_workers=num_workers, **kw)


class EvalBatchDataset(Dataset):
    """``ds[indices] -> (images float32 [B,C,S,S], labels int64 [B], indices int64 [B])``."""

    def __init__(self, source: ImageSource, transform: EvalTransform):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return (self.transform(self.source.get_batch(idx)),
                self.source.labels.index_select(0, idx), idx)


class _Chunks:
    """Consecutive chunks of ``indices`` (default ``0..n-1``), ``b`` at a time."""

    def __init__(self, indices: list[int], b: int):
        self.indices, self.b = indices, b

    def __iter__(self):
        for s in range(0, len(self.indices), self.b):
            yield self.indices[s:s + self.b]

    def __len__(self) -> int:
        return -(-len(self.indices) // self.b)


def extract_loader(source: ImageSource, eval_transform: EvalTransform, batch_size: int = 512,
                   num_workers: int = 0, indices=None) -> DataLoader:
    """Un-augmented batches ``(images float [B,C,S,S], labels [B], indices [B])`` of ``source[indices]``
    (default: every sample) in the given order (last batch may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(source))) if indices is None else [int(i) for i in indices]
    if order and not 0 <= min(order) <= max(order) < len(source):
        raise ValueError(f"indices must lie in 0..{len(source) - 1}")
    return DataLoader(EvalBatchDataset(source, eval_transform),
                      sampler=_Chunks(order, batch_size), batch_size=None,
                      collate_fn=_passthrough, num_workers=num_workers)
