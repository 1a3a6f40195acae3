"""Compare any two models layer by layer: :func:`compare` → :class:`Comparison` (docs/compare.md).

``api`` (the call, layers, data, models' modes and hooks), ``engine`` (metrics: streamed moments,
Grams for the bootstrap, minibatch HSIC), ``models`` (model specs of the CLI: run:arm[@epoch],
export folder, torchvision:/timm: with weights), ``html`` (heatmaps, the HTML page), ``cli`` (the
``repalign compare`` subcommand; importing it does not import torch).
"""
from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["compare", "Comparison", "reinit", "resolve_layers"]


def __getattr__(name: str) -> Any:  # lazy: `repalign.compare.cli` must not import torch
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'repalign.compare' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """``repalign.compare`` is both this package and the function: calling the module calls
    :func:`repalign.compare.api.compare` (the subpackage shadows the attribute once imported)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .api import compare

        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
