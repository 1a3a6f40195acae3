"""The reproducible figures: one module per figure, each holding its plans (``plans_<fig>(scale)``), its
maker (``make_<fig>(ctx)``) and its :class:`~repalign.experiments.figures.common.FigureDef` as ``FIGURE``;
shared settings and helpers live in :mod:`.common`, paper-scale cost in :mod:`repalign.experiments.cost`.

:data:`FIGS` is built from the module names in :data:`repalign.experiments.FIGURES` (kept there, import-free,
so that ``repalign reproduce --help`` does not load torch or matplotlib). Adding a figure: write
``figures/<name>.py`` with ``FIGURE = FigureDef("<name>", ...)`` and add ``"<name>"`` to ``FIGURES``.

:data:`FIGS` is built on first access, so that :mod:`.common` (which :mod:`repalign.experiments.cost` imports)
loads without the figure modules (which import :mod:`~repalign.experiments.cost`).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from repalign.experiments import FIGURES
from repalign.experiments.figures.common import FigureDef


def _load(name: str) -> FigureDef:
    fig = import_module(f"{__name__}.{name}").FIGURE
    if fig.name != name:
        raise RuntimeError(f"figures/{name}.py: FIGURE.name is {fig.name!r}, expected {name!r}")
    return fig


def __getattr__(name: str) -> Any:
    if name == "FIGS":  # figure name → its definition, in the order of repalign.experiments.FIGURES
        figs: dict[str, FigureDef] = {n: _load(n) for n in FIGURES}
        globals()["FIGS"] = figs
        return figs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FIGS", "FigureDef"]
