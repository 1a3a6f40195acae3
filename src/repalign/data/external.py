"""Plug-in data sources: ``data.source`` as an import reference or an adapter.

Contract: a callable ``(split, **data.options) → dataset`` with ``split`` ``"train"`` or ``"test"``,
returning an :class:`~repalign.data.sources.ImageSource` or any map-style dataset of
``(image, label)`` pairs — ``image`` a uint8 tensor ``[C, H, W]`` or a PIL image (all of one size),
``label`` an int. A dataset is read once into memory; its class names are ``dataset.classes`` when it
has that attribute, else ``"0"``..``str(max(label))``. The run's class subset (``data.num_classes`` /
``data.classes``) is chosen once, among the classes the train split has, and the test split is built
with the train split's mapping (``mapping=``): label ``k`` is one original class in every split, a
class only the test split has is dropped from it with one warning; ``max_per_class`` applies as for
the built-in sources.

Adapters: ``torchvision:<DatasetClass>`` (``torchvision.datasets.<DatasetClass>(root, train=… or
split=…, download=data.download)``; root ``data.root`` or ``~/.cache/repalign/torchvision``);
``hf:<dataset>`` (extra ``hf``: ``datasets.load_dataset(<dataset>, split=…)`` from a local directory
or the cache; columns ``image``/``img`` and ``label``/``labels``; no download unless ``data.download``).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from repalign.data.sources import ImageSource, in_memory_source
from repalign.data.sources.registry import ClassMapping
from repalign.data.sources.subsets import conform

KEY = "data.source"


def _error(msg: str) -> Exception:
    from repalign.errors import DataError

    return DataError(f"config key {KEY!r}: {msg}")


def _to_uint8(img: Any, i: int, ref: str) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        t = img
    elif isinstance(img, np.ndarray):
        t = torch.from_numpy(img)
        if t.ndim == 3 and t.shape[-1] in (1, 3) and t.shape[0] not in (1, 3):
            t = t.permute(2, 0, 1)
    elif hasattr(img, "convert") and hasattr(img, "mode"):  # PIL image
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        a = np.asarray(img)
        t = torch.from_numpy(a.copy())
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    else:
        raise _error(f"{ref!r}: item {i} image is a {type(img).__name__}, expected a uint8 tensor [C, H, W] or a PIL image")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.dtype != torch.uint8 or t.ndim != 3:
        raise _error(f"{ref!r}: item {i} image must be uint8 [C, H, W], got {t.dtype} {list(t.shape)}")
    return t


def dataset_to_source(ds: Any, ref: str, split: str, *, num_classes: int | None = None,
                      classes: Sequence[int] | None = None, seed: int = 0, max_per_class: int | None = None,
                      name: str | None = None, mapping: ClassMapping | None = None) -> ImageSource:
    """Read a map-style dataset of ``(image, label)`` into an in-memory :class:`ImageSource`.

    Without ``mapping`` the class subset is chosen among the classes this split has (a train split);
    with it (``train.mapping``) the split gets exactly those classes and labels."""
    if isinstance(ds, ImageSource):
        return ds if mapping is None else conform(ds, mapping, name or ref)
    if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
        raise _error(f"{ref!r} returned a {type(ds).__name__}: expected an ImageSource or a map-style dataset "
                     "of (image, label)")
    n = len(ds)
    if n == 0:
        raise _error(f"{ref!r} returned an empty {split} dataset")
    imgs, labels = [], []
    for i in range(n):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise _error(f"{ref!r}: item {i} must be (image, label), got {type(item).__name__}")
        img, lab = item[0], item[1]
        t = _to_uint8(img, i, ref)
        if imgs and t.shape != imgs[0].shape:
            raise _error(f"{ref!r}: item {i} has shape {list(t.shape)}, item 0 {list(imgs[0].shape)}; all images "
                         "must have one size")
        if isinstance(lab, torch.Tensor):
            lab = lab.item()
        if isinstance(lab, bool) or not isinstance(lab, (int, np.integer)) or lab < 0:
            raise _error(f"{ref!r}: item {i} label must be an int >= 0, got {lab!r}")
        imgs.append(t)
        labels.append(int(lab))
    c, h, w = imgs[0].shape
    if h != w:
        raise _error(f"{ref!r}: images must be square, got {h}×{w}")
    names = getattr(ds, "classes", None)
    if not (isinstance(names, (list, tuple)) and len(names) > max(labels)):
        names = [str(k) for k in range(max(labels) + 1)]
    return in_memory_source(name or ref, split, torch.stack(imgs), np.asarray(labels, np.int64),
                            [str(x) for x in names], num_classes=num_classes, classes=classes, seed=seed,
                            max_per_class=max_per_class, meta={"reference": ref}, candidates=sorted(set(labels)),
                            mapping=mapping)


def _torchvision_factory(cls_name: str, root: str | None, download: bool) -> Callable[..., Any]:
    def make(split: str, **options: Any) -> Any:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name, None)
        if cls is None:
            raise _error(f"torchvision.datasets has no dataset {cls_name!r}")
        where = Path(root).expanduser() if root else Path.home() / ".cache" / "repalign" / "torchvision"
        params = inspect.signature(cls).parameters
        kw: dict[str, Any] = dict(options)
        if "train" in params:
            kw.setdefault("train", split == "train")
        elif "split" in params:
            kw.setdefault("split", split)
        try:
            return cls(str(where), download=download, **kw)
        except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
            raise _error(f"torchvision:{cls_name} ({split}) not found under {str(where)!r}"
                         f"{'' if download else ' (set data.download=true to download it)'}: "
                         f"{' '.join(str(e).split())}") from None
    return make


def _hf_factory(name: str, root: str | None, download: bool) -> Callable[..., Any]:
    def make(split: str, **options: Any) -> Any:
        try:
            import datasets as hfd
        except ImportError:
            raise _error("install the extra `pip install repalign[hf]` for hf:<dataset> sources") from None
        src = str(Path(root).expanduser() / name) if root and (Path(root).expanduser() / name).exists() else name
        mode = None if download else hfd.DownloadMode.REUSE_DATASET_IF_EXISTS
        try:
            d = hfd.load_dataset(src, split=options.pop("split_name", {"train": "train", "test": "test"}[split]),
                                 download_mode=mode, **options)
        except Exception as e:  # noqa: BLE001
            raise _error(f"hf:{name} ({split}) is not available locally: {' '.join(str(e).split())}") from None
        img_col = "image" if "image" in d.column_names else "img"
        lab_col = "label" if "label" in d.column_names else "labels"

        class _Rows:
            classes = getattr(d.features.get(lab_col), "names", None)

            def __len__(self) -> int:
                return len(d)

            def __getitem__(self, i: int) -> tuple[Any, int]:
                r = d[int(i)]
                return r[img_col], int(r[lab_col])

        return _Rows()
    return make


def build_external_source(ref: str, split: str, *, root: str | None = None, num_classes: int | None = None,
                          classes: Sequence[int] | None = None, seed: int = 0, max_per_class: int | None = None,
                          download: bool = False, mapping: ClassMapping | None = None, **options: Any) -> ImageSource:
    """Build split ``split`` of a plug-in source (see the module docstring)."""
    from repalign.plugins import adapter_of, load_reference

    kind = adapter_of(ref)
    if kind == "torchvision":
        factory = _torchvision_factory(ref.split(":", 1)[1], root, download)
    elif kind == "hf":
        factory = _hf_factory(ref.split(":", 1)[1], root, download)
    else:
        factory = load_reference(ref, KEY)
        if not callable(factory):
            raise _error(f"{ref!r} is a {type(factory).__name__}, not a callable (split, **options) → dataset")
    try:
        ds = factory(split, **options)
    except Exception as e:  # noqa: BLE001 - user code: one line
        from repalign.errors import DataError

        if isinstance(e, DataError):
            raise
        raise _error(f"{ref!r} failed for split {split!r}: {type(e).__name__}: {' '.join(str(e).split())}") from None
    src = dataset_to_source(ds, ref, split, num_classes=num_classes, classes=classes, seed=seed,
                            max_per_class=max_per_class, mapping=mapping)
    if isinstance(ds, ImageSource) and (num_classes is not None or classes is not None or max_per_class):
        raise _error(f"{ref!r} returned an ImageSource: select classes and subsets inside it, not with "
                     "data.num_classes / data.classes / data.max_per_class")
    return src


__all__ = ["build_external_source", "dataset_to_source"]
