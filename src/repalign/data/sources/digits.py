"""``digits``: scikit-learn's bundled 8×8 digits (no files), with a seeded stratified train/test split."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from repalign.errors import ConfigError
from repalign.seeding import generator

from .registry import SourceInfo, register_source, reject_kwargs
from .subsets import in_memory_source

__all__ = ["digits_split_indices"]


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
    reject_kwargs("digits", kw)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"config key 'data.options.test_fraction': test_fraction must lie in (0, 1), "
                          f"got {test_fraction!r}")
    x, y = _load_digits_cached()
    tr, te = digits_split_indices(seed, test_fraction)
    idx = tr if split == "train" else te
    return in_memory_source("digits", split, x.index_select(0, torch.from_numpy(idx)), y[idx],
                             [str(i) for i in range(10)], num_classes=num_classes,
                             classes=classes, seed=seed, max_per_class=max_per_class,
                             subset=subset, meta={"test_fraction": test_fraction})
