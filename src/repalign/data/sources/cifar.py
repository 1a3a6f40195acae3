"""CIFAR-10 / CIFAR-100 in torchvision's python-pickle layout (``cifar-10-batches-py``,
``cifar-100-python``, fine labels).

The batches are pickles; they are read with a restricted unpickler (:class:`_BatchUnpickler`: numpy
arrays, bytes, str, int, list, dict), never ``pickle.load``, so a crafted batch in a ``data.root`` is
refused with one line instead of run."""
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


def _latin1_encode(obj: object, encoding: str = "utf-8", *rest: object) -> bytes:
    """``_codecs.encode`` as Python 3's protocol-2 pickles use it for ``bytes`` — latin-1 only."""
    import codecs

    if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1") or rest:
        raise pickle.UnpicklingError(f"_codecs.encode({type(obj).__name__}, {encoding!r}) is not a bytes literal")
    return codecs.encode(obj, "latin1")


def _plain_dtype(*args: object) -> np.dtype:
    dt = np.dtype(*args)  # type: ignore[call-overload]
    if dt.hasobject:  # an object array would unpickle arbitrary elements
        raise pickle.UnpicklingError(f"numpy dtype {dt} holds Python objects")
    return dt


def _allowed_globals() -> dict[tuple[str, str], object]:
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer

    out: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _plain_dtype,
                                          ("_codecs", "encode"): _latin1_encode}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = _reconstruct
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        out[(mod, "_frombuffer")] = _frombuffer
    return out


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: numpy arrays (of plain dtypes), bytes, str, int, float,
    list, tuple and dict. Any other global — ``os.system``, ``builtins.eval``, a class — is refused
    before it is looked up, so a crafted file runs nothing (issue 17)."""

    def __init__(self, f: object) -> None:
        super().__init__(f, encoding="latin1")  # type: ignore[arg-type]
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        fn = self._allowed.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}")
        return fn


def _unpickle(path: Path) -> dict:
    """A CIFAR batch or meta file as a dict with ``str`` keys, read by :class:`_BatchUnpickler`; a file
    that is not one (crafted, truncated) is a one-line :class:`~repalign.errors.DataError` naming it."""
    from repalign.errors import DataError

    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, MemoryError) as e:
        raise DataError(f"config key 'data.source': {str(path)!r} is not a CIFAR batch file — refused, nothing in "
                        f"it was run ({' '.join(str(e).split()) or type(e).__name__}; a CIFAR batch holds only numpy "
                        "arrays, bytes, str, int, list and dict); replace it with the original file") from None
    if not isinstance(d, dict):
        raise DataError(f"config key 'data.source': {str(path)!r} is not a CIFAR batch file (it holds a "
                        f"{type(d).__name__}, not a dict)")
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
