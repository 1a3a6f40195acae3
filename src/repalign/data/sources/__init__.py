"""Image sources (package): a registry of datasets with train/test splits and seeded class subsets.

Every source returns an :class:`ImageSource` holding uint8 images ``[N, channels, H, W]``
(``H == W == image_size``) and int64 labels ``[N]`` remapped to ``0..C-1``.

Class subsets (same for every source, see :func:`select_classes`):

- ``classes=[c0, c1, ...]``: exactly these original class indices;
- ``num_classes=C``: ``C`` classes drawn with ``torch.randperm(total, generator(seed, "classes"))[:C]``
  (all classes, without a random draw, when ``C == total``);
- neither: all classes.

Labels are remapped to ``0..C-1`` in sorted order of the original class index. A run decides the
subset once, from the train split, and builds the test split with ``mapping=train.mapping``
(:class:`ClassMapping`), so label ``k`` is one class in every split even when the splits' class
lists differ (a class only the test split has is dropped with a :class:`DataWarning`). ``max_per_class=m`` keeps a seeded subset of
at most ``m`` samples per class (``generator(seed, "subset", split, original_class)``) and
``subset=n`` a seeded subset of ``n`` samples in total (``generator(seed, "subset", split)``);
the kept samples stay in their original order.

Registered sources (``SOURCES``):

========== ======= ======== ===== =========================================================
name       classes channels size  files
========== ======= ======== ===== =========================================================
fashion_mnist 10   1        28    IDX ``.gz`` (Debian ``dataset-fashion-mnist``)
mnist      10      1        28    IDX ``.gz`` (torchvision layout ``MNIST/raw``)
cifar10    10      3        32    ``cifar-10-batches-py`` (python pickles)
cifar100   100     3        32    ``cifar-100-python`` (fine labels)
imagefolder any    3 (kw)   64 (kw) ``root/<split>/<class>/*.png|jpg|jpeg`` (lazy, PIL)
digits     10      1        8     scikit-learn bundled ``load_digits`` (no files)
strokes    any     1 (kw)   32 (kw) procedural (:mod:`repalign.data.strokes`)
========== ======= ======== ===== =========================================================

Root search for file-based sources (first hit wins): the ``root`` argument, ``$REPALIGN_DATA/<dir>``,
``/usr/share/datasets/<dir>``, ``~/.cache/repalign/<dir>``; then, only if ``download=True`` (or the
environment variable ``REPALIGN_DOWNLOAD=1``), a torchvision download into ``root`` or
``~/.cache/repalign``. Otherwise a ``FileNotFoundError`` explains how to obtain the files.

Modules: :mod:`.registry` (``ImageSource``, ``SourceInfo``, ``SOURCES``, ``build_source``),
:mod:`.subsets` (class subsets), :mod:`.download` (file search, torchvision download), one module per
format (:mod:`.idx`, :mod:`.cifar`, :mod:`.imagefolder`, :mod:`.digits`); importing the package
registers them. ``strokes`` registers from :mod:`repalign.data.strokes`.
"""
from __future__ import annotations

from . import cifar, digits, idx, imagefolder  # noqa: F401  (register the built-in sources)
from .digits import digits_split_indices
from .idx import FASHION_MNIST_CLASSES, read_idx, write_idx
from .registry import (SOURCES, ClassMapping, DataWarning, ImageSource, SourceInfo, build_source, default_normalization,
                       register_source, source_info)
from .subsets import in_memory_source, select_classes

__all__ = [
    "ImageSource",
    "ClassMapping",
    "DataWarning",
    "SourceInfo",
    "SOURCES",
    "register_source",
    "build_source",
    "source_info",
    "read_idx",
    "write_idx",
    "select_classes",
    "in_memory_source",
    "digits_split_indices",
    "default_normalization",
    "FASHION_MNIST_CLASSES",
]
