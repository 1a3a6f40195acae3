"""``imagefolder``: ``root/<split>/<class>/*.png|jpg`` (Tiny-ImageNet, mini-ImageNet, ImageNet-1k ...),
read lazily with PIL."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from repalign.errors import ConfigError

from .registry import DataWarning, ImageSource, SourceInfo, default_normalization, register_source, reject_kwargs
from .subsets import remap_labels, select_classes, subset_indices

__all__: list[str] = []


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
    reject_kwargs("imagefolder", kw)
    if root is None:
        env = os.environ.get("REPALIGN_DATA")
        root = env if env else None
    if root is None or not Path(root).expanduser().is_dir():
        raise FileNotFoundError(
            f"imagefolder: root={root!r} is not a directory; pass root=DIR laid out as "
            f"DIR/train/<class>/*.jpg and DIR/val|test/<class>/*.jpg")
    if channels not in (1, 3):
        raise ConfigError(f"config key 'data.options.channels': channels must be 1 or 3, got {channels}")
    root = Path(root).expanduser()
    names = _imagefolder_classes(root, split)
    if not names:
        raise FileNotFoundError(f"imagefolder: no class folders under {root}/train")
    cidx = {n: i for i, n in enumerate(names)}
    d = _split_dir(root, split)
    paths, lbls = [], []
    unknown: dict[str, int] = {}  # classes of this split that the train folder lacks: images dropped
    ann = d / "val_annotations.txt"
    if ann.is_file():  # Tiny-ImageNet val layout: val/images/*.JPEG + annotations
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in cidx:
                paths.append(str(d / "images" / parts[0]))
                lbls.append(cidx[parts[1]])
            elif len(parts) >= 2:
                unknown[parts[1]] = unknown.get(parts[1], 0) + 1
        order = np.lexsort((np.asarray(paths), np.asarray(lbls)))
        paths, lbls = [paths[i] for i in order], [lbls[i] for i in order]
    else:
        for n in _class_dirs(d):
            if n not in cidx:
                unknown[n] = len(_list_images(d / n)) or len(_list_images(d / n / "images"))
                continue
            cd = d / n
            files = _list_images(cd)
            if not files and (cd / "images").is_dir():  # Tiny-ImageNet train layout
                files = _list_images(cd / "images")
            paths += [str(p) for p in files]
            lbls += [cidx[n]] * len(files)
    if not paths:
        raise FileNotFoundError(f"imagefolder: no images found under {d}")
    if unknown:
        k = sorted(unknown)
        warnings.warn(f"data source 'imagefolder': the {split} split ({d}) has class{'es' if len(k) > 1 else ''} "
                      f"{', '.join(map(repr, k[:10]))}{' ...' if len(k) > 10 else ''} that the train split lacks; "
                      f"dropped {sum(unknown.values())} {split} images (labels follow the train split's classes)",
                      DataWarning, stacklevel=2)
    orig = np.asarray(lbls, dtype=np.int64)
    keep = select_classes(len(names), num_classes, classes, seed, "imagefolder")
    idx = subset_indices(orig, keep, seed, split, max_per_class, subset)
    sel_paths = [paths[i] for i in idx]
    return ImageSource(name="imagefolder", split=split, labels=remap_labels(orig[idx], keep),
                       class_names=[names[c] for c in keep], channels=channels,
                       image_size=image_size, loader=_PILLoader(sel_paths, image_size, channels),
                       original_classes=keep, meta={"root": str(root), "split_dir": str(d),
                                                    "paths": sel_paths})
