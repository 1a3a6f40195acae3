"""Experiments: sweeps (:mod:`.sweep`), figure reproduction (:mod:`.reproduce`, :mod:`.figures`, :mod:`.cost`),
theory overlays (:mod:`.theory`).

Imports are lazy so that the command line's ``--help`` does not load torch or matplotlib.
"""
from __future__ import annotations

import importlib
from typing import Any

#: The reproducible paper figures, in order (``repalign reproduce FIG``): each names its module
#: ``experiments/figures/<name>.py``, from which :data:`.figures.FIGS` is built (driver: :mod:`.reproduce`).
FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "weights", "lossgap")

_LAZY = {"SweepSpec": "sweep", "expand": "sweep", "load_spec": "sweep", "run_sweep": "sweep",
         "write_summary": "sweep", "cka_lower_bound": "theory", "cumulative_lr": "theory",
         "log_bound_shape": "theory", "theory_rows": "theory"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"repalign.experiments.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'repalign.experiments' has no attribute {name!r}")


__all__ = ["FIGURES", *_LAZY]
