"""Experiments: sweeps (:mod:`.sweep`), figure reproduction (:mod:`.reproduce`, :mod:`.figures`, :mod:`.cost`),
theory overlays (:mod:`.theory`).

Imports are lazy so that the command line's ``--help`` does not load torch or matplotlib.
"""
from __future__ import annotations

import importlib
from typing import Any

#: The reproducible paper figures, in order (``repalign reproduce FIG``): each names its module
#: ``experiments/figures/<name>.py``, from which :data:`.figures.FIGS` is built (driver: :mod:`.reproduce`).
FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "weights", "lossgap", "granularity", "alpha")

_LAZY = {"SweepSpec": "experiments.sweep", "expand": "experiments.sweep", "load_spec": "experiments.sweep",
         "run_sweep": "experiments.sweep", "write_summary": "experiments.sweep",
         # the theory overlay lives in repalign.analysis.theory (kept importable from here)
         "cka_lower_bound": "analysis.theory", "cumulative_lr": "analysis.theory",
         "log_bound_shape": "analysis.theory", "theory_rows": "analysis.theory"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"repalign.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'repalign.experiments' has no attribute {name!r}")


__all__ = ["FIGURES", *_LAZY]
