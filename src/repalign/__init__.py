"""repalign: coupled training under shared randomness and representation alignment.

Data flow: config → data/views → models → coupled trainer → run directory → metrics → report.
"""
from __future__ import annotations

__version__ = "0.1.0"

from repalign.config import ConfigError, load_config, resolve_arms, resolve_pairs, validate  # noqa: E402


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
