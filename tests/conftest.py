"""Shared fixtures: tiny coupled-run configs on sklearn's digits (fast on CPU)."""
from __future__ import annotations

import os

# before torch initialises OpenMP (it reads the variable once): the suite's processes share the cores, and
# spinning OpenMP threads made 2-thread runs ≈ 2x slower on a loaded 2-core machine (the Makefile's test
# target sets it too, for the subprocesses started before this file is read)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_overrides(**extra: object) -> list[str]:
    """key=value overrides for a seconds-long coupled run on digits with small_cnn."""
    base = {
        "data.source": "digits", "data.max_per_class": 16, "data.test_max_per_class": 8,
        "data.augment": "simclr_gray", "model.encoder": "small_cnn", "model.width": 4,
        "model.projector_hidden": 16, "model.projector_out": 8, "train.epochs": 2, "train.batch_size": 32,
        "train.log_every": 1, "train.device": "cpu", "logging.progress": False, "optim.lr": 0.5,
        "optim.warmup_epochs": 0, "eval.max_train": 64, "eval.max_test": 40, "eval.batch_size": 64,
        "eval.knn_k": 5,
        "data.num_classes": "null", "data.options": "{}",  # the demo base uses 100 strokes classes
    }
    base.update(extra)
    out = []
    for k, v in base.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        out.append(f"{k}={v}")
    return out


@pytest.fixture
def tiny_cfg():
    from repalign.config import load_config

    def make(**extra):
        return load_config(None, tiny_overrides(**extra))

    return make


def assert_same_state(a: object, b: object, where: str = "", ordered_keys: bool = True) -> None:
    """Bitwise equality of two nested states (tensors equal in dtype and value, NaN == NaN for scalars).
    ``ordered_keys``: dict keys must also come in the same order (else only the same set)."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        same = list(a) == list(b) if ordered_keys else sorted(map(str, a)) == sorted(map(str, b))
        assert isinstance(b, dict) and same, where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}", ordered_keys)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]", ordered_keys)
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"
