"""IDX files (MNIST, Fashion-MNIST): :func:`read_idx`, :func:`write_idx` and the ``fashion_mnist`` /
``mnist`` sources."""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from repalign.errors import DataError

from . import download as files
from .registry import SourceInfo, default_normalization, register_source, reject_kwargs
from .subsets import in_memory_source

__all__ = ["read_idx", "write_idx", "FASHION_MNIST_CLASSES"]

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

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
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt download
            raise DataError(f"{path}: corrupt gzip data ({' '.join(str(e).split()) or type(e).__name__})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    count = int(np.prod(shape)) if ndim else 1
    start = 4 + 4 * ndim
    if len(raw) - start != count * dtype.itemsize:
        raise DataError(f"{path}: IDX payload has {len(raw) - start} bytes, expected "
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
        raise DataError(f"{img_path}: expected uint8 images [N,H,W], got {tuple(imgs.shape)}")
    if imgs.shape[0] != lbls.shape[0]:
        raise DataError(f"{img_path}: {imgs.shape[0]} images but {lbls.shape[0]} labels")
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
    dirs = files.candidate_dirs(root, subdirs)
    for d in dirs:
        ip, lp = files.find_file(d, img_stem), files.find_file(d, lbl_stem)
        if ip is not None and lp is not None:
            return ip, lp
    if files.want_download(download):
        target = files.torchvision_download(name, tv_name, split, root)
        d = target / tv_name / "raw"
        ip, lp = files.find_file(d, img_stem), files.find_file(d, lbl_stem)
        if ip is not None and lp is not None:
            return ip, lp
    how = []
    if apt:
        pkg = apt.split()[-1]
        how.append(f"install the Debian package {pkg} (`sudo {apt}`; it fills /usr/share/datasets/{subdirs[0]})")
    how += [f"set data.root=DIR (root=DIR in Python) to a folder with {img_stem}.gz / {lbl_stem}.gz",
            f"set REPALIGN_DATA=DIR (searched as DIR/{subdirs[0]})",
            "set data.download=true (download=True in Python, or REPALIGN_DOWNLOAD=1) to download with "
            f"torchvision into data.root or {files.cache_dir()}"]
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
        reject_kwargs(name, kw)
        imgs, lbls = _load_idx_pair(ip, lp)
        return in_memory_source(name, split, imgs, lbls, list(_IDX_SOURCES[name][2]),
                                 num_classes=num_classes, classes=classes, seed=seed,
                                 max_per_class=max_per_class, subset=subset,
                                 meta={"files": [str(ip), str(lp)]})
    return build


for _n in _IDX_SOURCES:
    register_source(_n, info=_idx_info(_n))(_make_idx_builder(_n))
