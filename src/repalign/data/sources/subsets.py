"""Seeded class subsets shared by every source (rules in the :mod:`repalign.data.sources` docstring)."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from repalign.errors import ConfigError
from repalign.seeding import generator

from .registry import ClassMapping, DataWarning, ImageSource

__all__ = ["select_classes", "choose_classes", "subset_indices", "remap_labels", "in_memory_source",
           "conform", "class_list", "warn_test_only", "require_classes", "check_test_split"]


def select_classes(total: int, num_classes: int | None, classes: Sequence[int] | None,
                   seed: int, source: str = "") -> list[int]:
    """Sorted original class indices to keep (rules in the :mod:`repalign.data.sources` docstring)."""
    where = f" for source {source!r}" if source else ""
    if classes is not None:
        cl = [int(c) for c in classes]
        if not cl:
            raise ConfigError(f"config key 'data.classes': classes must not be empty{where}")
        bad = [c for c in cl if not 0 <= c < total]
        if bad:
            raise ConfigError(f"config key 'data.classes': classes {bad} do not exist{where} (valid: 0..{total - 1})")
        if len(set(cl)) != len(cl):
            raise ConfigError(f"config key 'data.classes': classes contains duplicates: {cl}")
        return sorted(cl)
    if num_classes is None or num_classes == total:
        return list(range(total))
    if num_classes > total:
        raise ConfigError(f"config key 'data.num_classes': num_classes={num_classes} exceeds the {total} classes "
                          f"available{where}")
    perm = torch.randperm(total, generator=generator(seed, "classes"))
    return sorted(perm[:num_classes].tolist())


def choose_classes(total: int, candidates: Sequence[int], num_classes: int | None,
                   classes: Sequence[int] | None, seed: int, source: str = "") -> list[int]:
    """Sorted original classes to keep out of ``candidates`` (the classes the train split has, sorted;
    original indices ``< total``). When ``candidates`` is ``0..total-1`` this is :func:`select_classes`
    (the same draw); otherwise ``num_classes`` are drawn among the candidates with the same generator."""
    cand = [int(c) for c in candidates]
    if cand == list(range(total)):
        return select_classes(total, num_classes, classes, seed, source)
    if classes is not None:
        cl = select_classes(total, None, classes, seed, source)
        lacking = [c for c in cl if c not in set(cand)]
        if lacking:
            where = f" of source {source!r}" if source else ""
            raise ConfigError(f"config key 'data.classes': classes {lacking} have no images in the train split"
                              f"{where} (its classes: {cand[:20]}{' ...' if len(cand) > 20 else ''})")
        return cl
    return [cand[p] for p in select_classes(len(cand), num_classes, None, seed, source)]


def class_list(classes: Sequence[int], names: Sequence[str]) -> str:
    """``3, 5 ('truck')``: original class indices, with their names where a name is not the index."""
    return ", ".join(str(c) if names[c] == str(c) else f"{c} ({names[c]!r})" for c in classes)


def warn_test_only(orig_labels: np.ndarray, mapping: ClassMapping, names: Sequence[str], source: str,
                   split: str) -> None:
    """One :class:`DataWarning` naming the classes of ``split`` (original labels ``orig_labels``)
    that the train split lacks (outside ``mapping.candidates``) and how many images they drop."""
    if mapping.candidates is None:
        return
    orig = np.asarray(orig_labels, dtype=np.int64)
    extra = sorted(set(np.unique(orig).tolist()) - set(mapping.candidates))
    if not extra:
        return
    n = int(np.isin(orig, np.asarray(extra)).sum())
    names = list(names) + [str(k) for k in range(len(names), max(extra) + 1)]
    warnings.warn(f"data source {source!r}: the {split} split has class{'es' if len(extra) > 1 else ''} "
                  f"{class_list(extra, names)} that the train split lacks; dropped {n} {split} image"
                  f"{'s' if n != 1 else ''} (labels follow the train split's classes)", DataWarning, stacklevel=3)


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
            raise ConfigError(f"config key 'data.options.subset': subset must be a positive int, got {subset!r}")
        if subset < len(idx):
            p = torch.randperm(len(idx), generator=generator(seed, "subset", split))
            idx = np.sort(idx[p[:subset].numpy()])
    return idx


def remap_labels(orig_labels: np.ndarray, keep_classes: list[int]) -> torch.Tensor:
    """Labels ``0..K-1`` of original labels that all lie in ``keep_classes`` (sorted)."""
    lut = np.full(int(max(keep_classes)) + 1, -1, dtype=np.int64)
    lut[np.asarray(keep_classes)] = np.arange(len(keep_classes))
    return torch.from_numpy(lut[np.asarray(orig_labels, dtype=np.int64)])


def in_memory_source(name, split, images: torch.Tensor, orig_labels: np.ndarray,
                      all_class_names: list[str], *, num_classes, classes, seed, max_per_class,
                      subset=None, meta=None, candidates: Sequence[int] | None = None,
                      mapping: ClassMapping | None = None) -> ImageSource:
    """In-memory :class:`ImageSource` of ``images`` (uint8 ``[N, C, H, W]``) with original labels
    ``orig_labels [N]`` and class names ``all_class_names``, after the class subset
    (``num_classes``/``classes``/``seed``, chosen among ``candidates``, default all classes — or
    ``mapping``'s classes, those of the train split) and the ``max_per_class``/``subset`` draws; labels
    remapped to ``0..C-1``. ``images`` is never handed out itself (copied or indexed)."""
    total = len(all_class_names)
    if mapping is not None:
        keep, kept_names = list(mapping.original), list(mapping.names)
        cand = mapping.candidates
        warn_test_only(orig_labels, mapping, all_class_names, name, split)
    else:
        cand = list(range(total)) if candidates is None else [int(c) for c in candidates]
        keep = choose_classes(total, cand, num_classes, classes, seed, name)
        kept_names = [all_class_names[c] for c in keep]
    idx = subset_indices(orig_labels, keep, seed, split, max_per_class, subset)
    if len(idx) == len(orig_labels):
        imgs = images.clone()  # never hand out the cached tensor itself
    else:
        imgs = images.index_select(0, torch.from_numpy(idx))
    labels = remap_labels(np.asarray(orig_labels)[idx], keep)
    return ImageSource(name=name, split=split, images=imgs.contiguous(), labels=labels,
                       class_names=kept_names,
                       channels=imgs.shape[1], image_size=imgs.shape[2],
                       original_classes=keep, candidate_classes=cand, meta=meta)


class _Reindexed:
    """Loader of a lazy source restricted to some of its rows (picklable, for DataLoader workers)."""

    def __init__(self, src: ImageSource, rows: np.ndarray) -> None:
        self.src, self.rows = src, rows

    def __call__(self, i: int) -> torch.Tensor:
        return self.src[int(self.rows[i])]


def conform(src: ImageSource, mapping: ClassMapping, source: str = "") -> ImageSource:
    """``src`` (any split, already built) relabelled with ``mapping`` — the train split's: samples of
    classes outside it are dropped (a class the train split lacks with one :class:`DataWarning`).
    ``src`` itself when it already has the mapping's classes."""
    if tuple(src.original_classes) == mapping.original:
        return src
    if mapping.candidates is None:  # an ImageSource given as it is: its classes are all its train split has
        mapping = ClassMapping(mapping.original, mapping.names, mapping.original)
    orig = np.asarray(src.original_classes, dtype=np.int64)[src.labels.numpy()]
    names = {c: n for c, n in zip(src.original_classes, src.class_names)}
    top = max([*src.original_classes, *(mapping.candidates or ()), 0]) + 1
    warn_test_only(orig, mapping, [names.get(k, str(k)) for k in range(top)], source or src.name, src.split)
    lab = mapping.lookup(orig)
    rows = np.nonzero(lab >= 0)[0]
    kw: dict = dict(name=src.name, split=src.split, labels=torch.from_numpy(lab[rows]), class_names=mapping.names,
                    channels=src.channels, image_size=src.image_size, original_classes=mapping.original,
                    candidate_classes=mapping.candidates, mean=src.mean, std=src.std, meta=src.meta)
    if src.images is not None:
        kw["images"] = src.images.index_select(0, torch.from_numpy(rows)).contiguous()
    else:
        kw["loader"] = _Reindexed(src, rows)
    return ImageSource(**kw)



def require_classes(train: ImageSource, source: str) -> None:
    """A run needs at least 2 classes with training images: one line (``DataError``) otherwise."""
    n = int(torch.unique(train.labels).numel())
    if n < 2:
        from repalign.errors import DataError

        raise DataError(f"config key 'data.source': {source!r} has {n} class{'' if n == 1 else 'es'} with training "
                        "images (after data.num_classes / data.classes / data.max_per_class); a run needs at least 2")


def check_test_split(train: ImageSource, test: ImageSource, source: str) -> None:
    """The test split built with the train split's mapping: one :class:`DataWarning` naming the train
    split's classes it has no image of; a ``DataError`` when it has none of them at all."""
    present = set(torch.unique(test.labels).tolist())
    if not present:
        from repalign.errors import DataError

        raise DataError(f"config key 'data.source': {source!r}: the test split has no images of the train split's "
                        f"{train.num_classes} classes")
    missing = [k for k in range(train.num_classes) if k not in present]
    if missing:
        orig = [train.original_classes[k] for k in missing]
        names = {c: n for c, n in zip(train.original_classes, train.class_names)}
        listed = class_list(orig, [names.get(k, str(k)) for k in range(max(orig) + 1)])
        warnings.warn(f"data source {source!r}: the test split has no images of class{'es' if len(orig) > 1 else ''} "
                      f"{listed} of the train split; test metrics cover the other {train.num_classes - len(orig)} "
                      "classes", DataWarning, stacklevel=2)
