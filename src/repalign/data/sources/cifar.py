"""CIFAR-10 / CIFAR-100 in torchvision's python-pickle layout (``cifar-10-batches-py``,
``cifar-100-python``, fine labels)."""
from __future__ import annotations

import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from . import download as files
from .registry import SourceInfo, default_normalization, register_source, reject_kwargs
from .subsets import in_memory_source

__all__: list[str] = []

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
    dirs = files.candidate_dirs(root, (fold, f"cifar/{fold}", f"{name}/{fold}"))
    for d in dirs:
        if all((d / f).is_file() for f in need):
            return d
    if files.want_download(download):
        target = files.torchvision_download(name, tv_name, split, root)
        if all((target / fold / f).is_file() for f in need):
            return target / fold
    raise FileNotFoundError(
        f"{name}: could not find folder {fold!r} with {need} in any of {[str(d) for d in dirs]}. "
        f"To get it: set data.root=DIR (root=DIR in Python) to a folder containing {fold}/ (torchvision's "
        f"python-pickle layout), or set REPALIGN_DATA=DIR, or set data.download=true (download=True in Python, "
        f"or REPALIGN_DOWNLOAD=1) to download with torchvision into data.root or {files.cache_dir()}.")


def _cifar_info(name):
    def info(**kw):
        mean, std = default_normalization(name, 3)
        return SourceInfo(name, _CIFAR[name][6], 3, 32, mean, std)
    return info


def _make_cifar_builder(name):
    def build(split, root, num_classes, classes, seed, max_per_class, subset=None,
              download=None, **kw):
        folder = _locate_cifar(name, split, root, download)
        reject_kwargs(name, kw)
        stamp = tuple((f.name, f.stat().st_mtime_ns) for f in sorted(folder.iterdir())
                      if f.is_file())
        imgs, lbls, names = _load_cifar_cached(name, str(folder), split, stamp)
        return in_memory_source(name, split, imgs, lbls, names, num_classes=num_classes,
                                 classes=classes, seed=seed, max_per_class=max_per_class,
                                 subset=subset, meta={"folder": str(folder)})
    return build


for _n in _CIFAR:
    register_source(_n, info=_cifar_info(_n))(_make_cifar_builder(_n))
