"""Where file-based sources look for their files, and the one torchvision download helper.

Search order (first hit wins): the ``root`` argument, ``$REPALIGN_DATA/<dir>``,
``/usr/share/datasets/<dir>`` (:func:`system_dirs`), ``~/.cache/repalign/<dir>`` (:func:`cache_dir`);
then, only if ``download=True`` (or ``REPALIGN_DOWNLOAD=1``, :func:`want_download`),
:func:`torchvision_download` into ``root`` or the cache.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

__all__ = ["system_dirs", "cache_dir", "want_download", "candidate_dirs", "find_file", "torchvision_download"]


def system_dirs() -> list[Path]:
    """Shared system data roots (monkeypatched in tests)."""
    return [Path("/usr/share/datasets")]


def cache_dir() -> Path:
    return Path(os.path.expanduser("~/.cache/repalign"))


def want_download(download: bool | None) -> bool:
    d = download
    if d is None:
        d = os.environ.get("REPALIGN_DOWNLOAD", "").lower() in ("1", "true", "yes")
    return bool(d)


def candidate_dirs(root, subdirs: Sequence[str]) -> list[Path]:
    """Directories to search, in order, for a source whose files live in one of ``subdirs``."""
    out: list[Path] = []
    if root is not None:
        r = Path(root).expanduser()
        out.append(r)
        out += [r / s for s in subdirs]
    env = os.environ.get("REPALIGN_DATA")
    if env:
        out += [Path(env).expanduser() / s for s in subdirs]
    for d in system_dirs():
        out += [d / s for s in subdirs]
    out += [cache_dir() / s for s in subdirs]
    seen, uniq = set(), []
    for p in out:
        if str(p) not in seen:
            seen.add(str(p))
            uniq.append(p)
    return uniq


def find_file(d: Path, stem: str) -> Path | None:
    for cand in (d / (stem + ".gz"), d / stem):
        if cand.is_file():
            return cand
    return None


def torchvision_download(name: str, tv_name: str, split: str, root) -> Path:
    """Download split ``split`` of ``torchvision.datasets.<tv_name>`` into ``root`` (or
    :func:`cache_dir`); returns that folder. Any failure → ``RuntimeError`` naming the source."""
    target = Path(root).expanduser() if root is not None else cache_dir()
    try:
        import torchvision.datasets as tvd

        getattr(tvd, tv_name)(root=str(target), train=(split == "train"), download=True)
    except Exception as e:  # network errors etc.
        raise RuntimeError(f"{name}: torchvision download into {target} failed: {e!r}") from e
    return target
