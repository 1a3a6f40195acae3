"""Image sources: a registry of datasets with train/test splits and seeded class subsets.

Every source returns an :class:`ImageSource` holding uint8 images ``[N, channels, H, W]``
(``H == W == image_size``) and int64 labels ``[N]`` remapped to ``0..C-1``.

Class subsets (same for every source, see :func:`select_classes`):

- ``classes=[c0, c1, ...]``: exactly these original class indices;
- ``num_classes=C``: ``C`` classes drawn with ``torch.randperm(total, generator(seed, "classes"))[:C]``
  (all classes, without a random draw, when ``C == total``);
- neither: all classes.

Labels are remapped to ``0..C-1`` in sorted order of the original class index, so the train and
test splits of one ``(seed, num_classes)`` pair agree. ``max_per_class=m`` keeps a seeded subset of
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
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from repalign.seeding import generator

__all__ = [
    "ImageSource",
    "SourceInfo",
    "SOURCES",
    "register_source",
    "build_source",
    "source_info",
    "read_idx",
    "write_idx",
    "select_classes",
    "digits_split_indices",
    "default_normalization",
    "FASHION_MNIST_CLASSES",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

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
        dm, ds = default_normalization(name, self.channels)
        self.mean = tuple(mean) if mean is not None else dm
        self.std = tuple(std) if std is not None else ds
        self.meta = dict(meta or {})
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(self.class_names)):
            raise ValueError(f"labels must lie in 0..{len(self.class_names) - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

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
        return self._loader(i)

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
class _Entry:
    build: Callable[..., ImageSource]
    info: Callable[..., SourceInfo]


#: name -> registry entry (``.build(split, root, num_classes, classes, seed, max_per_class, **kw)``
#: and ``.info(**kw)``).
SOURCES: dict[str, _Entry] = {}


def register_source(name: str, info: Callable[..., SourceInfo]):
    """Decorator registering ``fn(split, root, num_classes, classes, seed, max_per_class, **kw)``.

    ``info(**kw) -> SourceInfo`` must not load data.
    """

    def deco(fn):
        if name in SOURCES:
            raise ValueError(f"source {name!r} already registered")
        SOURCES[name] = _Entry(fn, info)
        return fn

    return deco


def _check_name(name: str) -> _Entry:
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
    **kw,
) -> ImageSource:
    """Build split ``split`` (``"train"`` or ``"test"``) of source ``name``.

    Args:
        root: data directory searched first (file-based sources).
        num_classes: draw this many classes with ``generator(seed, "classes")``.
        classes: explicit original class indices (mutually exclusive with ``num_classes``).
        seed: seed for class / subset draws (and for procedural sources their content).
        max_per_class: keep at most this many samples per class (seeded choice).
        **kw: source specific (``subset``, ``download``, ``image_size``, ``samples_per_class`` ...).
    """
    from repalign.plugins import is_reference

    if is_reference(name):  # plug-in: import reference or adapter (torchvision:, hf:)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        from repalign.data.external import build_external_source

        return build_external_source(name, split, root=None if root is None else str(root), num_classes=num_classes,
                                     classes=classes, seed=seed, max_per_class=max_per_class, **kw)
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
    return entry.build(split=split, root=root, num_classes=num_classes, classes=classes,
                       seed=seed, max_per_class=max_per_class, **kw)


# ----------------------------------------------------------------------------------------------
# class subsets
# ----------------------------------------------------------------------------------------------
def select_classes(total: int, num_classes: int | None, classes: Sequence[int] | None,
                   seed: int, source: str = "") -> list[int]:
    """Sorted original class indices to keep (see module docstring)."""
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


def _subset_indices(orig_labels: np.ndarray, keep_classes: list[int], seed: int, split: str,
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


def _remap(orig_labels: np.ndarray, keep_classes: list[int]) -> torch.Tensor:
    lut = np.full(int(max(keep_classes)) + 1, -1, dtype=np.int64)
    lut[np.asarray(keep_classes)] = np.arange(len(keep_classes))
    return torch.from_numpy(lut[np.asarray(orig_labels, dtype=np.int64)])


def _in_memory_source(name, split, images: torch.Tensor, orig_labels: np.ndarray,
                      all_class_names: list[str], *, num_classes, classes, seed, max_per_class,
                      subset=None, meta=None) -> ImageSource:
    keep = select_classes(len(all_class_names), num_classes, classes, seed, name)
    idx = _subset_indices(orig_labels, keep, seed, split, max_per_class, subset)
    if len(idx) == len(orig_labels):
        imgs = images.clone()  # never hand out the cached tensor itself
    else:
        imgs = images.index_select(0, torch.from_numpy(idx))
    labels = _remap(np.asarray(orig_labels)[idx], keep)
    return ImageSource(name=name, split=split, images=imgs.contiguous(), labels=labels,
                       class_names=[all_class_names[c] for c in keep],
                       channels=imgs.shape[1], image_size=imgs.shape[2],
                       original_classes=keep, meta=meta)


# ----------------------------------------------------------------------------------------------
# file search / download
# ----------------------------------------------------------------------------------------------
def _system_dirs() -> list[Path]:
    """Shared system data roots (monkeypatched in tests)."""
    return [Path("/usr/share/datasets")]


def _cache_dir() -> Path:
    return Path(os.path.expanduser("~/.cache/repalign"))


def _want_download(download: bool | None) -> bool:
    d = download
    if d is None:
        d = os.environ.get("REPALIGN_DOWNLOAD", "").lower() in ("1", "true", "yes")
    return bool(d)


def _candidate_dirs(root, subdirs: Sequence[str]) -> list[Path]:
    """Directories to search, in order, for a source whose files live in one of ``subdirs``."""
    out: list[Path] = []
    if root is not None:
        r = Path(root).expanduser()
        out.append(r)
        out += [r / s for s in subdirs]
    env = os.environ.get("REPALIGN_DATA")
    if env:
        out += [Path(env).expanduser() / s for s in subdirs]
    for d in _system_dirs():
        out += [d / s for s in subdirs]
    out += [_cache_dir() / s for s in subdirs]
    seen, uniq = set(), []
    for p in out:
        if str(p) not in seen:
            seen.add(str(p))
            uniq.append(p)
    return uniq


def _find_file(d: Path, stem: str) -> Path | None:
    for cand in (d / (stem + ".gz"), d / stem):
        if cand.is_file():
            return cand
    return None


# ----------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# ----------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
              np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed, detected by magic bytes) into a NumPy array.

    Format: 2 zero bytes, dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), ndim; then ``ndim`` big-endian uint32 sizes; then the data
    (big-endian, C order).
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    count = int(np.prod(shape)) if ndim else 1
    start = 4 + 4 * ndim
    if len(raw) - start != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX payload has {len(raw) - start} bytes, expected "
                         f"{count * dtype.itemsize} for shape {shape}")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=start).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip when ``compress`` or the path ends with ``.gz``)."""
    path = Path(path)
    a = np.asarray(array)
    dt = a.dtype.newbyteorder(">") if a.dtype.itemsize > 1 else a.dtype
    if np.dtype(dt) not in _IDX_CODES:
        raise ValueError(f"dtype {a.dtype} not representable in IDX")
    header = bytes([0, 0, _IDX_CODES[np.dtype(dt)], a.ndim]) + struct.pack(">" + "I" * a.ndim,
                                                                          *a.shape)
    data = header + a.astype(dt).tobytes()
    if compress or (compress is None and path.suffix == ".gz"):
        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)


@lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> torch.Tensor:
    return torch.from_numpy(read_idx(path))


def _load_idx_pair(img_path: Path, lbl_path: Path) -> tuple[torch.Tensor, np.ndarray]:
    def rd(p: Path):
        st = p.stat()
        return _read_idx_cached(str(p), st.st_mtime_ns, st.st_size)

    imgs = rd(img_path)
    lbls = rd(lbl_path).numpy().astype(np.int64)
    if imgs.ndim != 3 or imgs.dtype != torch.uint8:
        raise ValueError(f"{img_path}: expected uint8 images [N,H,W], got {tuple(imgs.shape)}")
    if imgs.shape[0] != lbls.shape[0]:
        raise ValueError(f"{img_path}: {imgs.shape[0]} images but {lbls.shape[0]} labels")
    return imgs.unsqueeze(1), lbls


_IDX_SOURCES = {
    # name: (subdirs searched, torchvision class name, class names, apt hint)
    "fashion_mnist": (("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"), "FashionMNIST",
                      FASHION_MNIST_CLASSES, "apt-get install dataset-fashion-mnist"),
    "mnist": (("mnist", "MNIST/raw"), "MNIST", [str(i) for i in range(10)], None),
}


def _idx_files(split: str) -> tuple[str, str]:
    pre = "train" if split == "train" else "t10k"
    return f"{pre}-images-idx3-ubyte", f"{pre}-labels-idx1-ubyte"


def _locate_idx(name: str, split: str, root, download: bool | None) -> tuple[Path, Path]:
    subdirs, tv_name, _, apt = _IDX_SOURCES[name]
    img_stem, lbl_stem = _idx_files(split)
    dirs = _candidate_dirs(root, subdirs)
    for d in dirs:
        ip, lp = _find_file(d, img_stem), _find_file(d, lbl_stem)
        if ip is not None and lp is not None:
            return ip, lp
    if _want_download(download):
        target = Path(root).expanduser() if root is not None else _cache_dir()
        try:
            import torchvision.datasets as tvd

            getattr(tvd, tv_name)(root=str(target), train=(split == "train"), download=True)
        except Exception as e:  # network errors etc.
            raise RuntimeError(f"{name}: torchvision download into {target} failed: {e!r}") from e
        d = target / tv_name / "raw"
        ip, lp = _find_file(d, img_stem), _find_file(d, lbl_stem)
        if ip is not None and lp is not None:
            return ip, lp
    how = []
    if apt:
        pkg = apt.split()[-1]
        how.append(f"install the Debian package {pkg} (`sudo {apt}`; it fills /usr/share/datasets/{subdirs[0]})")
    how += [f"set data.root=DIR (root=DIR in Python) to a folder with {img_stem}.gz / {lbl_stem}.gz",
            f"set REPALIGN_DATA=DIR (searched as DIR/{subdirs[0]})",
            "set data.download=true (download=True in Python, or REPALIGN_DOWNLOAD=1) to download with "
            f"torchvision into data.root or {_cache_dir()}"]
    raise FileNotFoundError(
        f"{name}: could not find {img_stem}[.gz] and {lbl_stem}[.gz] in any of "
        f"{[str(d) for d in dirs]}. To get them: " + "; or ".join(how) + ".")


def _idx_info(name):
    def info(**kw):
        mean, std = default_normalization(name, 1)
        return SourceInfo(name, 10, 1, 28, mean, std)
    return info


def _make_idx_builder(name):
    def build(split, root, num_classes, classes, seed, max_per_class, subset=None,
              download=None, **kw):
        ip, lp = _locate_idx(name, split, root, download)
        _reject_kw(name, kw)
        imgs, lbls = _load_idx_pair(ip, lp)
        return _in_memory_source(name, split, imgs, lbls, list(_IDX_SOURCES[name][2]),
                                 num_classes=num_classes, classes=classes, seed=seed,
                                 max_per_class=max_per_class, subset=subset,
                                 meta={"files": [str(ip), str(lp)]})
    return build


def _reject_kw(name: str, kw: dict) -> None:
    if kw:
        raise ValueError(f"source {name!r} got unexpected keyword(s) {sorted(kw)}")


for _n in _IDX_SOURCES:
    register_source(_n, info=_idx_info(_n))(_make_idx_builder(_n))


# ----------------------------------------------------------------------------------------------
# CIFAR (python pickle format)
# ----------------------------------------------------------------------------------------------
_CIFAR = {
    # name: (folder, train files, test files, meta file, label key, names key, classes, tv name)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names", 10, "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels",
                 "fine_label_names", 100, "CIFAR100"),
}


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


@lru_cache(maxsize=4)
def _load_cifar_cached(name: str, folder: str, split: str, stamp: tuple):
    fold, train_files, test_files, meta_file, lkey, nkey, ncls, _ = _CIFAR[name]
    files = train_files if split == "train" else test_files
    datas, labels = [], []
    for fn in files:
        d = _unpickle(Path(folder) / fn)
        datas.append(np.asarray(d["data"], dtype=np.uint8))
        labels.append(np.asarray(d[lkey], dtype=np.int64))
    data = np.concatenate(datas).reshape(-1, 3, 32, 32)
    meta_path = Path(folder) / meta_file
    if meta_path.is_file():
        names = [str(n) for n in _unpickle(meta_path)[nkey]]
    else:
        names = [str(i) for i in range(ncls)]
    return torch.from_numpy(data), np.concatenate(labels), names


def _locate_cifar(name: str, split: str, root, download: bool | None) -> Path:
    fold, train_files, test_files, *_rest, tv_name = _CIFAR[name]
    need = train_files if split == "train" else test_files
    dirs = _candidate_dirs(root, (fold, f"cifar/{fold}", f"{name}/{fold}"))
    for d in dirs:
        if all((d / f).is_file() for f in need):
            return d
    if _want_download(download):
        target = Path(root).expanduser() if root is not None else _cache_dir()
        try:
            import torchvision.datasets as tvd

            getattr(tvd, tv_name)(root=str(target), train=(split == "train"), download=True)
        except Exception as e:
            raise RuntimeError(f"{name}: torchvision download into {target} failed: {e!r}") from e
        if all((target / fold / f).is_file() for f in need):
            return target / fold
    raise FileNotFoundError(
        f"{name}: could not find folder {fold!r} with {need} in any of {[str(d) for d in dirs]}. "
        f"To get it: set data.root=DIR (root=DIR in Python) to a folder containing {fold}/ (torchvision's "
        f"python-pickle layout), or set REPALIGN_DATA=DIR, or set data.download=true (download=True in Python, "
        f"or REPALIGN_DOWNLOAD=1) to download with torchvision into data.root or {_cache_dir()}.")


def _cifar_info(name):
    def info(**kw):
        mean, std = default_normalization(name, 3)
        return SourceInfo(name, _CIFAR[name][6], 3, 32, mean, std)
    return info


def _make_cifar_builder(name):
    def build(split, root, num_classes, classes, seed, max_per_class, subset=None,
              download=None, **kw):
        folder = _locate_cifar(name, split, root, download)
        _reject_kw(name, kw)
        stamp = tuple((f.name, f.stat().st_mtime_ns) for f in sorted(folder.iterdir())
                      if f.is_file())
        imgs, lbls, names = _load_cifar_cached(name, str(folder), split, stamp)
        return _in_memory_source(name, split, imgs, lbls, names, num_classes=num_classes,
                                 classes=classes, seed=seed, max_per_class=max_per_class,
                                 subset=subset, meta={"folder": str(folder)})
    return build


for _n in _CIFAR:
    register_source(_n, info=_cifar_info(_n))(_make_cifar_builder(_n))


# ----------------------------------------------------------------------------------------------
# imagefolder (Tiny-ImageNet, mini-ImageNet, ImageNet-1k ...)
# ----------------------------------------------------------------------------------------------
_IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in _IMG_EXT)


def _class_dirs(d: Path) -> list[str]:
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_dir(root: Path, split: str) -> Path:
    """``root/train`` for train; ``root/test`` (if labelled) else ``root/val`` for test."""
    cands = ["train"] if split == "train" else ["test", "val", "valid", "validation"]
    for c in cands:
        d = root / c
        if not d.is_dir():
            continue
        if (d / "val_annotations.txt").is_file():
            return d
        sub = _class_dirs(d)
        if sub and sub != ["images"]:  # Tiny-ImageNet's unlabelled test/images is skipped
            return d
    raise FileNotFoundError(
        f"imagefolder: no labelled split folder for split {split!r} under {root} "
        f"(looked for {cands}); expected root/<split>/<class>/*.png|jpg")


def _imagefolder_classes(root: Path, split: str) -> list[str]:
    # the train folder defines the class list so train/test labels agree
    if (root / "train").is_dir() and _class_dirs(root / "train"):
        return _class_dirs(root / "train")
    return _class_dirs(_split_dir(root, split))


def _imagefolder_info(root=None, image_size: int = 64, channels: int = 3, **kw) -> SourceInfo:
    n = None
    if root is not None and Path(root).expanduser().is_dir():
        try:
            n = len(_imagefolder_classes(Path(root).expanduser(), "train"))
        except FileNotFoundError:
            n = None
    mean, std = default_normalization("imagefolder", channels)
    return SourceInfo("imagefolder", n, channels, image_size, mean, std)


class _PILLoader:
    """Load ``paths[i]`` with PIL, convert to RGB/L, resize the shorter side to ``size`` and
    centre-crop to ``size x size`` (torchvision v2 functional ops, antialiased)."""

    def __init__(self, paths: list[str], size: int, channels: int):
        self.paths, self.size, self.channels = paths, size, channels

    def __call__(self, i: int) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.v2 import functional as F

        try:
            with Image.open(self.paths[i]) as im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                t = F.pil_to_tensor(im)
        except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError, truncated data, ...
            from repalign.errors import DataError

            msg = " ".join(str(e).split()) or type(e).__name__
            raise DataError(f"imagefolder: cannot read image {self.paths[i]}: {msg}") from None
        if t.shape[-2:] != (self.size, self.size):
            t = F.resize(t, [self.size], antialias=True)
            t = F.center_crop(t, [self.size, self.size])
        return t.contiguous()


@register_source("imagefolder", info=_imagefolder_info)
def _build_imagefolder(split, root, num_classes, classes, seed, max_per_class, subset=None,
                       image_size: int = 64, channels: int = 3, **kw):
    kw.pop("download", None)
    _reject_kw("imagefolder", kw)
    if root is None:
        env = os.environ.get("REPALIGN_DATA")
        root = env if env else None
    if root is None or not Path(root).expanduser().is_dir():
        raise FileNotFoundError(
            f"imagefolder: root={root!r} is not a directory; pass root=DIR laid out as "
            f"DIR/train/<class>/*.jpg and DIR/val|test/<class>/*.jpg")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    root = Path(root).expanduser()
    names = _imagefolder_classes(root, split)
    if not names:
        raise FileNotFoundError(f"imagefolder: no class folders under {root}/train")
    cidx = {n: i for i, n in enumerate(names)}
    d = _split_dir(root, split)
    paths, lbls = [], []
    ann = d / "val_annotations.txt"
    if ann.is_file():  # Tiny-ImageNet val layout: val/images/*.JPEG + annotations
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in cidx:
                paths.append(str(d / "images" / parts[0]))
                lbls.append(cidx[parts[1]])
        order = np.lexsort((np.asarray(paths), np.asarray(lbls)))
        paths, lbls = [paths[i] for i in order], [lbls[i] for i in order]
    else:
        for n in _class_dirs(d):
            if n not in cidx:
                continue
            cd = d / n
            files = _list_images(cd)
            if not files and (cd / "images").is_dir():  # Tiny-ImageNet train layout
                files = _list_images(cd / "images")
            paths += [str(p) for p in files]
            lbls += [cidx[n]] * len(files)
    if not paths:
        raise FileNotFoundError(f"imagefolder: no images found under {d}")
    orig = np.asarray(lbls, dtype=np.int64)
    keep = select_classes(len(names), num_classes, classes, seed, "imagefolder")
    idx = _subset_indices(orig, keep, seed, split, max_per_class, subset)
    sel_paths = [paths[i] for i in idx]
    return ImageSource(name="imagefolder", split=split, labels=_remap(orig[idx], keep),
                       class_names=[names[c] for c in keep], channels=channels,
                       image_size=image_size, loader=_PILLoader(sel_paths, image_size, channels),
                       original_classes=keep, meta={"root": str(root), "split_dir": str(d),
                                                    "paths": sel_paths})


# ----------------------------------------------------------------------------------------------
# digits (scikit-learn bundled 8x8)
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _load_digits_cached() -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255)
    return torch.from_numpy(x.astype(np.uint8)).unsqueeze(1), np.asarray(d.target, np.int64)


def digits_split_indices(seed: int, test_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test split of the 1797 digits: per class ``c`` (in order) the class's
    indices are permuted with one generator ``generator(seed, "digits-split")`` and the first
    ``floor(n_c * test_fraction + 0.5)`` go to test. Returns ascending (train_idx, test_idx)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    _, y = _load_digits_cached()
    g = generator(seed, "digits-split")
    tr, te = [], []
    for c in range(10):
        ic = np.nonzero(y == c)[0]
        p = torch.randperm(len(ic), generator=g).numpy()
        nt = int(np.floor(len(ic) * test_fraction + 0.5))
        te.append(ic[p[:nt]])
        tr.append(ic[p[nt:]])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))


@register_source("digits", info=lambda **kw: SourceInfo("digits", 10, 1, 8, (0.5,), (0.5,)))
def _build_digits(split, root, num_classes, classes, seed, max_per_class, subset=None,
                  test_fraction: float = 0.25, **kw):
    kw.pop("download", None)
    _reject_kw("digits", kw)
    x, y = _load_digits_cached()
    tr, te = digits_split_indices(seed, test_fraction)
    idx = tr if split == "train" else te
    return _in_memory_source("digits", split, x.index_select(0, torch.from_numpy(idx)), y[idx],
                             [str(i) for i in range(10)], num_classes=num_classes,
                             classes=classes, seed=seed, max_per_class=max_per_class,
                             subset=subset, meta={"test_fraction": test_fraction})
