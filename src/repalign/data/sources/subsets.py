"""Seeded class subsets shared by every source (rules in the :mod:`repalign.data.sources` docstring)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from repalign.seeding import generator

from .registry import ImageSource

__all__ = ["select_classes", "subset_indices", "remap_labels", "in_memory_source"]


def select_classes(total: int, num_classes: int | None, classes: Sequence[int] | None,
                   seed: int, source: str = "") -> list[int]:
    """Sorted original class indices to keep (rules in the :mod:`repalign.data.sources` docstring)."""
    where = f" for source {source!r}" if source else ""
    if classes is not None:
        cl = [int(c) for c in classes]
        if not cl:
            raise ValueError(f"classes must not be empty{where}")
        bad = [c for c in cl if not 0 <= c < total]
        if bad:
            raise ValueError(f"classes {bad} do not exist{where} (valid: 0..{total - 1})")
        if len(set(cl)) != len(cl):
            raise ValueError(f"classes contains duplicates: {cl}")
        return sorted(cl)
    if num_classes is None or num_classes == total:
        return list(range(total))
    if num_classes > total:
        raise ValueError(f"num_classes={num_classes} exceeds the {total} classes available{where}")
    perm = torch.randperm(total, generator=generator(seed, "classes"))
    return sorted(perm[:num_classes].tolist())


def subset_indices(orig_labels: np.ndarray, keep_classes: list[int], seed: int, split: str,
                    max_per_class: int | None, subset: int | None) -> np.ndarray:
    """Indices (ascending) of samples whose class is kept, after per-class / total subsetting."""
    orig_labels = np.asarray(orig_labels)
    mask = np.isin(orig_labels, np.asarray(keep_classes))
    idx = np.nonzero(mask)[0]
    if max_per_class is not None:
        parts = []
        for c in keep_classes:
            ic = idx[orig_labels[idx] == c]
            if len(ic) > max_per_class:
                p = torch.randperm(len(ic), generator=generator(seed, "subset", split, int(c)))
                ic = np.sort(ic[p[:max_per_class].numpy()])
            parts.append(ic)
        idx = np.sort(np.concatenate(parts)) if parts else idx
    if subset is not None:
        if not isinstance(subset, (int, np.integer)) or subset < 1:
            raise ValueError(f"subset must be a positive int, got {subset!r}")
        if subset < len(idx):
            p = torch.randperm(len(idx), generator=generator(seed, "subset", split))
            idx = np.sort(idx[p[:subset].numpy()])
    return idx


def remap_labels(orig_labels: np.ndarray, keep_classes: list[int]) -> torch.Tensor:
    lut = np.full(int(max(keep_classes)) + 1, -1, dtype=np.int64)
    lut[np.asarray(keep_classes)] = np.arange(len(keep_classes))
    return torch.from_numpy(lut[np.asarray(orig_labels, dtype=np.int64)])


def in_memory_source(name, split, images: torch.Tensor, orig_labels: np.ndarray,
                      all_class_names: list[str], *, num_classes, classes, seed, max_per_class,
                      subset=None, meta=None) -> ImageSource:
    """In-memory :class:`ImageSource` of ``images`` (uint8 ``[N, C, H, W]``) with original labels
    ``orig_labels [N]`` and class names ``all_class_names``, after the class subset
    (``num_classes``/``classes``/``seed``) and the ``max_per_class``/``subset`` draws; labels remapped
    to ``0..C-1``. ``images`` is never handed out itself (copied or indexed)."""
    keep = select_classes(len(all_class_names), num_classes, classes, seed, name)
    idx = subset_indices(orig_labels, keep, seed, split, max_per_class, subset)
    if len(idx) == len(orig_labels):
        imgs = images.clone()  # never hand out the cached tensor itself
    else:
        imgs = images.index_select(0, torch.from_numpy(idx))
    labels = remap_labels(np.asarray(orig_labels)[idx], keep)
    return ImageSource(name=name, split=split, images=imgs.contiguous(), labels=labels,
                       class_names=[all_class_names[c] for c in keep],
                       channels=imgs.shape[1], image_size=imgs.shape[2],
                       original_classes=keep, meta=meta)

