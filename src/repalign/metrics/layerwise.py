"""Layer-wise CKA between every pair of blocks of two models, one forward pass per batch per model.

Blocks are ``(name, module)`` pairs: given explicitly (or as submodule names), else
``model.blocks()`` when the model has it (``ContrastiveNet.blocks()``, see docs/design.md), else
the model's top-level children. A forward hook on each block captures its output
(``out[0]`` if the output is a tuple/list), which is turned into one feature row per sample:

* ``pool="avg"``: conv maps ``[B, C, H, W]`` → spatial mean ``[B, C]``; token sequences
  ``[B, T, D]`` (transformer layout) → mean over tokens ``[B, D]``; ``[B, D]`` unchanged;
  higher-rank outputs → mean over all dims after the second.
* ``pool="flatten"``: ``[B, ...]`` → ``[B, prod(...)]``.

``estimator="exact"`` accumulates the float64 moments of :class:`~repalign.metrics.StreamingLinearCKA`
for every block and every block pair, so the result equals :func:`~repalign.metrics.linear_cka` on the
concatenated features of the whole loader (memory ``Σ_i d_i² + Σ_j d_j² + (Σ_i d_i)(Σ_j d_j)`` float64;
each block's width must be ≤ ``max_dim``). ``estimator="minibatch"`` uses Nguyen et al.'s
:class:`~repalign.metrics.MinibatchCKA` (memory O(batch²) per block, any width; batches with fewer
than 4 samples are skipped and counted). Models run in eval mode under ``torch.no_grad`` and their
train/eval flags are restored afterwards.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ._validate import check_positive_int
from .cka import cka_from_stats, gram_linear, unbiased_hsic
from .moments import F64, CrossMoments, SideMoments, ratio

__all__ = ["layerwise_cka", "resolve_blocks", "POOLS", "ESTIMATORS"]

POOLS = ("avg", "flatten")
ESTIMATORS = ("exact", "minibatch")


def resolve_blocks(model: nn.Module, blocks: Sequence[Any] | None = None, what: str = "model") -> list[tuple[str, nn.Module]]:
    """``blocks`` as ``[(name, module)]`` (items may be names of submodules); default
    ``model.blocks()`` if available, else ``model.named_children()``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"{what} must be an nn.Module, got {type(model).__name__}")
    if blocks is None:
        blocks = model.blocks() if callable(getattr(model, "blocks", None)) else list(model.named_children())
    out: list[tuple[str, nn.Module]] = []
    for item in blocks:
        if isinstance(item, str):
            try:
                out.append((item, model.get_submodule(item)))
            except AttributeError as e:
                raise ValueError(f"{what} has no submodule named {item!r}") from e
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) \
                and isinstance(item[1], nn.Module):
            out.append((item[0], item[1]))
        else:
            raise ValueError(f"blocks for {what} must be (name, nn.Module) pairs or submodule names, got {item!r}")
    if not out:
        raise ValueError(f"no blocks to compare for {what}")
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"block names for {what} must be unique, got {names}")
    return out


def _pool(out: Any, pool: str, name: str) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0] if out else None
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"block {name!r} produced {type(out).__name__}, expected a tensor [B, ...]")
    out = out.detach()
    if out.dim() < 2:
        out = out.reshape(out.shape[0] if out.dim() else 1, -1)
    if pool == "avg":
        if out.dim() == 3:
            out = out.mean(dim=1)
        elif out.dim() >= 4:
            out = out.flatten(2).mean(dim=2)
    out = out.reshape(out.shape[0], -1)
    return out


def _images(batch: Any) -> torch.Tensor:
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("loader yielded an empty tuple")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise ValueError(f"loader must yield tensors or tuples whose first element is the input batch, "
                         f"got {type(batch).__name__}")
    return batch


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class _Capture:
    def __init__(self, blocks: list[tuple[str, nn.Module]], pool: str) -> None:
        self.feats: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(n, pool)) for n, m in blocks]
        self.names = [n for n, _ in blocks]

    def _hook(self, name: str, pool: str):
        def fn(_mod, _inp, out):
            self.feats[name] = _pool(out, pool, name)
        return fn

    def take(self) -> list[torch.Tensor]:
        missing = [n for n in self.names if n not in self.feats]
        if missing:
            raise ValueError(f"blocks {missing} were not called during the forward pass")
        out = [self.feats[n] for n in self.names]
        self.feats = {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def layerwise_cka(model_a: nn.Module, model_b: nn.Module, loader: Iterable[Any],
                  blocks_a: Sequence[Any] | None = None, blocks_b: Sequence[Any] | None = None,
                  max_batches: int | None = None, *, pool: str = "avg", estimator: str = "exact",
                  debiased: bool = False, max_dim: int = 16384) -> dict[str, Any]:
    """Linear CKA between every block of ``model_a`` and every block of ``model_b``.

    Returns ``{"matrix": float64 CPU tensor [n_blocks_a, n_blocks_b], "names_a", "names_b",
    "n_samples", "batches", "skipped_batches", "estimator", "pool", "debiased"}``; ``matrix[i, j]``
    is CKA(block i of A, block j of B). ``debiased`` applies to the exact estimator (the
    minibatch estimator is always built on unbiased HSIC). ``max_batches`` limits the batches read.
    Passing the same model twice runs one forward per batch.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if max_batches is not None:
        max_batches = check_positive_int(max_batches, "max_batches")
    max_dim = check_positive_int(max_dim, "max_dim")
    ba = resolve_blocks(model_a, blocks_a, "model_a")
    bb = resolve_blocks(model_b, blocks_b, "model_b")
    same = model_a is model_b and [m for _, m in ba] == [m for _, m in bb]
    na, nb = len(ba), len(bb)

    models = [model_a] if model_a is model_b else [model_a, model_b]
    modes = [m.training for m in models]
    cap_a = _Capture(ba, pool)
    cap_b = cap_a if same else _Capture(bb, pool)
    state: dict[str, Any] = {"n": 0, "batches": 0, "skipped": 0}
    try:
        for m in models:
            m.eval()
        with torch.no_grad():
            for bi, batch in enumerate(loader):
                if max_batches is not None and bi >= max_batches:
                    break
                x = _images(batch)
                model_a(x.to(_device(model_a)))
                fa = cap_a.take()
                if same:
                    fb = fa
                else:
                    model_b(x.to(_device(model_b)))
                    fb = cap_b.take()
                dev = fa[0].device
                fb = [f.to(dev) for f in fb]
                for f in fa + fb:
                    if f.shape[0] != fa[0].shape[0]:
                        raise ValueError("blocks returned different batch sizes within one batch")
                if estimator == "exact":
                    _exact_update(state, fa, fb, ba, bb, max_dim)
                else:
                    _minibatch_update(state, fa, fb)
    finally:
        cap_a.remove()
        if cap_b is not cap_a:
            cap_b.remove()
        for m, t in zip(models, modes):
            m.train(t)

    if state["batches"] == 0:
        raise ValueError("loader yielded no usable batch (minibatch estimator needs ≥ 4 samples per batch)"
                         if state["skipped"] else "loader yielded no batches")
    M = torch.zeros(na, nb, dtype=F64)
    if estimator == "exact":
        if state["n"] < (4 if debiased else 2):
            raise ValueError(f"layerwise_cka needs at least {4 if debiased else 2} samples, got {state['n']}")
        sa = [m.stats(False) for m in state["ma"]]
        sb = [m.stats(False) for m in state["mb"]]
        for i in range(na):
            for j in range(nb):
                xy = state["cr"][i][j].stats(sa[i], sb[j], False, i, j)
                M[i, j] = cka_from_stats(sa[i], sb[j], xy, debiased)
    else:
        for i in range(na):
            for j in range(nb):
                M[i, j] = ratio(state["xy"][i][j], state["xx"][i], state["yy"][j],
                                 state["ca"][i], state["cb"][j], clip=False)
    return {"matrix": M, "names_a": [n for n, _ in ba], "names_b": [n for n, _ in bb],
            "n_samples": state["n"], "batches": state["batches"], "skipped_batches": state["skipped"],
            "estimator": estimator, "pool": pool, "debiased": bool(debiased) if estimator == "exact" else True}


def _exact_update(st: dict, fa: list[torch.Tensor], fb: list[torch.Tensor], ba, bb, max_dim: int) -> None:
    if "ma" not in st:
        for (name, _), f in list(zip(ba, fa)) + list(zip(bb, fb)):
            if f.shape[1] > max_dim:
                raise ValueError(f"block {name!r} has {f.shape[1]} features > max_dim={max_dim}: the exact "
                                 f"estimator needs d×d float64 moments; use pool='avg', estimator='minibatch' "
                                 f"or raise max_dim")
        dev = fa[0].device
        na, nb = len(fa), len(fb)
        st["ma"] = [SideMoments(f.shape[1], dev, "center", f"block {n!r} of model_a", k=nb) for (n, _), f in zip(ba, fa)]
        st["mb"] = [SideMoments(f.shape[1], dev, "center", f"block {n!r} of model_b", k=na) for (n, _), f in zip(bb, fb)]
        st["cr"] = [[CrossMoments(x, y) for y in st["mb"]] for x in st["ma"]]
    elif [f.shape[1] for f in fa] != [m.d for m in st["ma"]] or [f.shape[1] for f in fb] != [m.d for m in st["mb"]]:
        raise ValueError("block feature widths changed between batches (variable input size with pool='flatten'?)")
    pa = [m.prepare(f) for m, f in zip(st["ma"], fa)]
    pb = [m.prepare(f) for m, f in zip(st["mb"], fb)]
    for m in st["ma"]:
        m.set_partners(pb)
        m.accumulate()
    for m in st["mb"]:
        m.set_partners(pa)
        m.accumulate()
    for i, x in enumerate(st["ma"]):
        for j, y in enumerate(st["mb"]):
            st["cr"][i][j].update(x, y)
    st["n"] += fa[0].shape[0]
    st["batches"] += 1


def _minibatch_update(st: dict, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> None:
    b = fa[0].shape[0]
    if b < 4:
        st["skipped"] += 1
        return
    if "xx" not in st:
        st["xx"], st["yy"] = [0.0] * len(fa), [0.0] * len(fb)
        st["xy"] = [[0.0] * len(fb) for _ in fa]
        st["first_a"] = [f[:1].clone() for f in fa]
        st["first_b"] = [f[:1].clone() for f in fb]
        st["ca"], st["cb"] = [True] * len(fa), [True] * len(fb)
    if [f.shape[1] for f in fa] != [f.shape[1] for f in st["first_a"]] or \
            [f.shape[1] for f in fb] != [f.shape[1] for f in st["first_b"]]:
        raise ValueError("block feature widths changed between batches (variable input size with pool='flatten'?)")
    for k, f in enumerate(fa + fb):
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"block {k} produced NaN or inf features")
    Ka, Kb = [gram_linear(f) for f in fa], [gram_linear(f) for f in fb]
    for i, K in enumerate(Ka):
        st["xx"][i] += float(unbiased_hsic(K, K))
        st["ca"][i] = st["ca"][i] and bool((fa[i] == st["first_a"][i]).all())
    for j, L in enumerate(Kb):
        st["yy"][j] += float(unbiased_hsic(L, L))
        st["cb"][j] = st["cb"][j] and bool((fb[j] == st["first_b"][j]).all())
    for i, K in enumerate(Ka):
        for j, L in enumerate(Kb):
            st["xy"][i][j] += float(unbiased_hsic(K, L))
    st["n"] += b
    st["batches"] += 1
