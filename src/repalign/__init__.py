"""repalign: coupled training under shared randomness and representation alignment.

Data flow: config → data/views → models → coupled trainer → run directory → metrics → report.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import TYPE_CHECKING

try:  # one source: the version in pyproject.toml, read back from the installed package's metadata
    __version__: str = _dist_version("repalign")
except _PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

from repalign.config import ConfigError, load_config, resolve_arms, resolve_pairs, validate  # noqa: E402

if TYPE_CHECKING:  # what mypy/pyright see for the lazy names below (runtime: __getattr__)
    from repalign import data, evaluation, losses, metrics, models, training  # noqa: F401
    from repalign.api import train  # noqa: F401
    from repalign.compare.api import Comparison  # noqa: F401
    from repalign.compare.api import compare  # noqa: F401  (the callable package at run time)
    from repalign.data import build_source  # noqa: F401
    from repalign.export import load_encoder  # noqa: F401
    from repalign.losses import (ContrastiveLoss, ce_loss, dcl_loss, loss_gap_bound, nscl_loss,  # noqa: F401
                                 ntxent_loss, supcon_loss)
    from repalign.metrics import linear_cka, rsa, similarity_gap, weight_gap  # noqa: F401
    from repalign.models import build_model  # noqa: F401
    from repalign.seeding import derive_seed  # noqa: F401
    from repalign.training import CoupledTrainer  # noqa: F401


def __getattr__(name: str):  # lazy re-exports keep `import repalign` light
    import importlib

    lazy = {
        "losses": "repalign.losses", "data": "repalign.data", "models": "repalign.models",
        "training": "repalign.training", "metrics": "repalign.metrics", "evaluation": "repalign.evaluation",
        "CoupledTrainer": ("repalign.training", "CoupledTrainer"), "train": ("repalign.api", "train"),
        "load_encoder": ("repalign.export", "load_encoder"),
        "compare": "repalign.compare",  # the package; calling it calls repalign.compare.api.compare
        "Comparison": ("repalign.compare.api", "Comparison"),
        "build_model": ("repalign.models", "build_model"), "build_source": ("repalign.data", "build_source"),
        "linear_cka": ("repalign.metrics", "linear_cka"), "rsa": ("repalign.metrics", "rsa"),
        "similarity_gap": ("repalign.metrics", "similarity_gap"), "weight_gap": ("repalign.metrics", "weight_gap"),
        "ntxent_loss": ("repalign.losses", "ntxent_loss"), "dcl_loss": ("repalign.losses", "dcl_loss"),
        "nscl_loss": ("repalign.losses", "nscl_loss"), "supcon_loss": ("repalign.losses", "supcon_loss"),
        "ce_loss": ("repalign.losses", "ce_loss"), "loss_gap_bound": ("repalign.losses", "loss_gap_bound"),
        "ContrastiveLoss": ("repalign.losses", "ContrastiveLoss"),
        "derive_seed": ("repalign.seeding", "derive_seed"),
    }
    if name not in lazy:
        raise AttributeError(f"module 'repalign' has no attribute {name!r}")
    target = lazy[name]
    if isinstance(target, str):
        return importlib.import_module(target)
    return getattr(importlib.import_module(target[0]), target[1])


__all__ = ["__version__", "ConfigError", "load_config", "validate", "resolve_arms", "resolve_pairs", "derive_seed",
           "CoupledTrainer", "train", "build_model", "build_source", "linear_cka", "rsa", "similarity_gap",
           "weight_gap", "ntxent_loss", "dcl_loss", "nscl_loss", "supcon_loss", "ce_loss", "loss_gap_bound",
           "ContrastiveLoss", "compare", "Comparison"]
