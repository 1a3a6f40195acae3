"""Source registry: :class:`ImageSource`, :class:`SourceInfo`, ``SOURCES``, :func:`register_source`,
:func:`build_source`, :func:`source_info` and the per-source default normalisation (package
docstring: :mod:`repalign.data.sources`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from repalign.errors import ConfigError

__all__ = ["ImageSource", "SourceInfo", "SourceEntry", "SOURCES", "register_source", "build_source", "source_info",
           "default_normalization", "reject_kwargs", "ClassMapping", "DataWarning"]


class DataWarning(UserWarning):
    """Something about the data a run should know but that does not stop it (a class of one split
    missing from the other, ...); the trainer prints it as one ``repalign: warning:`` line."""


@dataclass(frozen=True)
class ClassMapping:
    """A run's class subset and label mapping, decided once from the train split (or the source's
    declared class list) and applied to every split: label ``k`` is original class ``original[k]``.

    ``original``: the kept original class indices, sorted; ``names``: their names; ``candidates``:
    the classes the subset was chosen from (the train split's classes), ``None`` where the source
    does not say (a class of another split outside ``candidates`` is a class the train split lacks).
    """

    original: tuple[int, ...]
    names: tuple[str, ...]
    candidates: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "original", tuple(int(c) for c in self.original))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if self.candidates is not None:
            object.__setattr__(self, "candidates", tuple(int(c) for c in self.candidates))

    def lookup(self, orig_labels: Sequence[int] | np.ndarray) -> np.ndarray:
        """int64 labels ``0..K-1`` of original labels, ``-1`` for classes outside the mapping."""
        orig = np.asarray(orig_labels, dtype=np.int64)
        top = max(int(orig.max()) if orig.size else 0, max(self.original, default=0)) + 1
        lut = np.full(top, -1, dtype=np.int64)
        lut[np.asarray(self.original, dtype=np.int64)] = np.arange(len(self.original))
        return lut[orig]

#: Per-source default normalisation (mean, std) per channel, in [0, 1] pixel units.
#: Known published statistics of the training splits; 0.5/0.5 for procedural/small sources.
_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet statistics
    "digits": ((0.5,), (0.5,)),
    "strokes": ((0.5,), (0.5,)),
}


def default_normalization(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Default ``(mean, std)`` tuples of length ``channels`` for source ``name``.

    Hard-coded training-set statistics for the standard datasets (Fashion-MNIST 0.2860/0.3530,
    MNIST 0.1307/0.3081, CIFAR-10/100 the usual per-channel values, imagefolder the ImageNet
    values), 0.5/0.5 for ``digits``, ``strokes`` and unknown names. A 3-channel entry used with
    ``channels == 1`` is averaged; a 1-channel entry is repeated for ``channels == 3``.
    """
    mean, std = _NORMALIZATION.get(name, ((0.5,), (0.5,)))
    if len(mean) == channels:
        return tuple(mean), tuple(std)
    if len(mean) == 1:
        return tuple(mean) * channels, tuple(std) * channels
    m, s = float(np.mean(mean)), float(np.mean(std))
    return (m,) * channels, (s,) * channels


# ----------------------------------------------------------------------------------------------
# ImageSource
# ----------------------------------------------------------------------------------------------
class ImageSource:
    """A labelled image dataset split.

    Attributes:
        name, split: source name and ``"train"``/``"test"``.
        images: uint8 ``[N, channels, H, W]`` for in-memory sources, ``None`` for lazy ones.
        labels: int64 ``[N]`` in ``0..C-1``.
        class_names: ``C`` names, index = remapped label.
        original_classes: ``C`` original class indices (sorted), ``original_classes[label]``.
        candidate_classes: the original classes the subset was chosen from, or ``None``.
        mapping: :class:`ClassMapping` of the above (what the test split of a run is built with).
        channels, image_size: image shape ``[channels, image_size, image_size]``.
        mean, std: default normalisation (tuples of length ``channels``).
        meta: free-form provenance (root directory, kwargs ...).
    """

    def __init__(
        self,
        *,
        name: str,
        split: str,
        labels: torch.Tensor,
        class_names: Sequence[str],
        channels: int,
        image_size: int,
        images: torch.Tensor | None = None,
        loader: Callable[[int], torch.Tensor] | None = None,
        original_classes: Sequence[int] | None = None,
        candidate_classes: Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        meta: dict | None = None,
    ) -> None:
        if (images is None) == (loader is None):
            raise ValueError("ImageSource needs exactly one of images= or loader=")
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
        if images is not None:
            if images.dtype != torch.uint8 or images.ndim != 4:
                raise ValueError(
                    f"images must be uint8 [N,C,H,W], got {images.dtype} {tuple(images.shape)}")
            if images.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"images has {images.shape[0]} rows but labels has {labels.shape[0]}")
            if tuple(images.shape[1:]) != (channels, image_size, image_size):
                raise ValueError(
                    f"images shape {tuple(images.shape[1:])} != (channels, image_size, image_size)"
                    f" = {(channels, image_size, image_size)}")
        self.name = name
        self.split = split
        self.images = images
        self._loader = loader
        self.labels = labels
        self.class_names = list(class_names)
        self.channels = int(channels)
        self.image_size = int(image_size)
        self.original_classes = (list(original_classes) if original_classes is not None
                                 else list(range(len(self.class_names))))
        self.candidate_classes = None if candidate_classes is None else [int(c) for c in candidate_classes]
        dm, ds = default_normalization(name, self.channels)
        self.mean = tuple(mean) if mean is not None else dm
        self.std = tuple(std) if std is not None else ds
        self.meta = dict(meta or {})
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(self.class_names)):
            raise ValueError(f"labels must lie in 0..{len(self.class_names) - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def mapping(self) -> ClassMapping:
        """This split's class subset and label mapping (pass it as ``build_source(..., mapping=)``)."""
        return ClassMapping(tuple(self.original_classes), tuple(self.class_names),
                            None if self.candidate_classes is None else tuple(self.candidate_classes))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        """uint8 ``[channels, H, W]`` image ``i``."""
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for source of length {len(self)}")
        if self.images is not None:
            return self.images[i]
        return self._check_item(i, self._loader(i))

    def _check_item(self, i: int, img: object) -> torch.Tensor:
        """A lazy loader's item must be what the source declares — uint8 ``[channels, image_size,
        image_size]`` — else one :class:`~repalign.errors.DataError` line naming the source, the index,
        what was expected and what came (a float image, another size or channel count would otherwise
        fail deep in the transforms or, for a size, be resized silently)."""
        want = (self.channels, self.image_size, self.image_size)
        if isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and tuple(img.shape) == want:
            return img
        from repalign.errors import DataError

        got = (f"{str(img.dtype).replace('torch.', '')} {list(img.shape)}" if isinstance(img, torch.Tensor)
               else type(img).__name__)
        raise DataError(f"data source {self.name!r} ({self.split}): item {i} of its loader is {got}; expected a "
                        f"uint8 tensor [channels, H, W] = {list(want)} (channels = {self.channels}, image_size = "
                        f"{self.image_size} as the source declares)")

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, channels, H, W]`` for the given indices."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.images is not None:
            return self.images.index_select(0, idx)
        if idx.numel() == 0:
            return torch.empty(0, self.channels, self.image_size, self.image_size,
                               dtype=torch.uint8)
        return torch.stack([self[int(i)] for i in idx])

    def __repr__(self) -> str:
        return (f"ImageSource(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes}, shape=[{self.channels},{self.image_size},"
                f"{self.image_size}], lazy={self.images is None})")


@dataclass(frozen=True)
class SourceInfo:
    """Static facts about a source, available without loading it.

    ``num_classes`` is the number of available classes; ``None`` means unbounded (``strokes``) or
    unknown without scanning files (``imagefolder`` without ``root``).
    """

    name: str
    num_classes: int | None
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: tuple[str, ...] = ("train", "test")
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourceEntry:
    build: Callable[..., ImageSource]
    info: Callable[..., SourceInfo]


#: name -> registry entry (``.build(split, root, num_classes, classes, seed, max_per_class, **kw)``
#: and ``.info(**kw)``).
SOURCES: dict[str, SourceEntry] = {}


def register_source(name: str, info: Callable[..., SourceInfo]):
    """Decorator registering ``fn(split, root, num_classes, classes, seed, max_per_class, **kw)``.

    ``info(**kw) -> SourceInfo`` must not load data.
    """

    def deco(fn):
        if name in SOURCES:
            raise ValueError(f"source {name!r} already registered")
        SOURCES[name] = SourceEntry(fn, info)
        return fn

    return deco


def _check_name(name: str) -> SourceEntry:
    if name not in SOURCES:
        raise ValueError(f"unknown source name {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name]


def source_info(name: str, **kw) -> SourceInfo:
    """Number of classes / channels / image size / default normalisation of source ``name``.

    Does not load images. ``kw`` as for :func:`build_source` where it changes the answer
    (``image_size``/``channels`` for strokes and imagefolder, ``root`` for imagefolder).
    """
    return _check_name(name).info(**kw)


def build_source(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    num_classes: int | None = None,
    classes: Sequence[int] | None = None,
    seed: int = 0,
    max_per_class: int | None = None,
    mapping: ClassMapping | None = None,
    **kw,
) -> ImageSource:
    """Build split ``split`` (``"train"`` or ``"test"``) of source ``name``.

    Args:
        root: data directory searched first (file-based sources).
        num_classes: draw this many classes with ``generator(seed, "classes")``.
        classes: explicit original class indices (mutually exclusive with ``num_classes``).
        seed: seed for class / subset draws (and for procedural sources their content).
        max_per_class: keep at most this many samples per class (seeded choice).
        mapping: the class subset and labels of another split (``train.mapping``), used instead of
            ``num_classes``/``classes``: a run builds its train split, then every other split with the
            train split's mapping, so label ``k`` is one class everywhere. Classes outside it are dropped
            (a class the train split lacks with a :class:`DataWarning`). Without it a split decides its
            classes from itself (the same for the built-in sources, whose class lists are fixed).
        **kw: source specific (``subset``, ``download``, ``image_size``, ``samples_per_class`` ...).
    """
    from repalign.plugins import is_reference

    if is_reference(name):  # plug-in: import reference or adapter (torchvision:, hf:)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        from repalign.data.external import build_external_source

        return build_external_source(name, split, root=None if root is None else str(root), num_classes=num_classes,
                                     classes=classes, seed=seed, max_per_class=max_per_class, mapping=mapping, **kw)
    entry = _check_name(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if num_classes is not None and classes is not None:
        raise ValueError("pass either num_classes or classes, not both")
    if num_classes is not None and (not isinstance(num_classes, (int, np.integer))
                                    or isinstance(num_classes, bool) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if max_per_class is not None and (not isinstance(max_per_class, (int, np.integer))
                                      or max_per_class < 1):
        raise ValueError(f"max_per_class must be a positive int, got {max_per_class!r}")
    if mapping is not None:  # the same keep list as the draw it came from: the same samples, bitwise
        num_classes, classes = None, list(mapping.original)
    src = entry.build(split=split, root=root, num_classes=num_classes, classes=classes,
                      seed=seed, max_per_class=max_per_class, **kw)
    if mapping is not None and tuple(src.original_classes) != mapping.original:
        raise ValueError(f"source {name!r} ({split} split) built classes {list(src.original_classes)[:10]} "
                         f"instead of the train split's {list(mapping.original)[:10]}")
    return src


def reject_kwargs(name: str, kw: dict) -> None:
    """Stop on source-specific keywords that source ``name`` does not take (they come from the
    config's ``data.options``)."""
    if kw:
        raise ConfigError(f"config key 'data.options': source {name!r} got unexpected keyword(s) {sorted(kw)}")
