"""Feature extraction from frozen models, plus the input checks shared by the evaluators.

``extract_features`` runs every model once over a loader (one forward per batch per model,
in eval mode, under ``torch.no_grad``) and returns CPU feature matrices in loader order.
Models follow the ``ContrastiveNet`` contract: ``forward(x [B, C, H, W]) -> (h [B, feat], z [B, proj_out])``
where ``z`` is the *un-normalised* projector output.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterable, Mapping

import torch
from torch import nn

__all__ = ["extract_features", "FeatureCache", "check_features", "check_labels", "check_features_labels"]

_LAYER_INDEX = {"h": 0, "z": 1}


# ----------------------------------------------------------------------------------------------
# input validation shared by knn / probe / fewshot / cdnv
# ----------------------------------------------------------------------------------------------
def check_features(x: Any, name: str = "x") -> torch.Tensor:
    """Validate a feature matrix ``[N, d]`` (floating point, finite, N ≥ 1, d ≥ 1).

    Returns it unchanged (half/bfloat16 promoted to float32). Raises ``ValueError`` naming ``name``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [N, d], got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape [N, d], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def check_labels(y: Any, n: int, name: str = "y", nonnegative: bool = True) -> torch.Tensor:
    """Validate an integer label vector ``[n]``; returns it as int64."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [N], got {type(y).__name__}")
    if y.dim() != 1:
        raise ValueError(f"{name} must have shape [N], got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but the features have {n} rows")
    if nonnegative and y.numel() > 0 and int(y.min()) < 0:
        raise ValueError(f"{name} must contain non-negative class indices, got min {int(y.min())}")
    return y.long()


def check_features_labels(x: Any, y: Any, xname: str = "x", yname: str = "y",
                          nonnegative: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    x = check_features(x, xname)
    y = check_labels(y, x.shape[0], yname, nonnegative=nonnegative)
    return x, y.to(x.device)


# ----------------------------------------------------------------------------------------------
# extraction
# ----------------------------------------------------------------------------------------------
def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("loader must yield (images, labels) or (images, labels, indices), "
                         f"got {type(batch).__name__}"
                         + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    images, labels = batch[0], batch[1]
    indices = batch[2] if len(batch) == 3 else None
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError("loader batch: images and labels must be tensors")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"loader batch: labels shape {tuple(labels.shape)} does not match "
                         f"images batch size {images.shape[0]}")
    return images, labels, indices


def extract_features(models: Mapping[str, nn.Module], loader: Iterable, layers: Iterable[str] = ("h",),
                     device: str | torch.device = "cpu", amp: bool = False, return_indices: bool = False):
    """Run each model once over ``loader`` and collect its features.

    Args:
        models: ``{name: module}``; ``module(images) -> (h [B, feat], z [B, proj_out])``. Models are not
            moved; they must already live on ``device``.
        loader: iterable yielding ``(images, labels)`` or ``(images, labels, indices)``. It is iterated
            exactly once; every model sees every batch exactly once (one forward per batch per model).
        layers: subset of ``("h", "z")``; "h" is the encoder output, "z" the projector output before
            normalisation.
        device: where images are sent.
        amp: run the forward under ``torch.autocast`` (bfloat16 on CPU, float16 on CUDA); features are
            returned as float32.
        return_indices: also return the concatenated dataset indices (``None`` when the loader does
            not yield them).

    Returns:
        ``(features, labels)`` — ``features[name][layer]`` is a float CPU tensor ``[N, d]`` in loader
        order, ``labels`` a LongTensor ``[N]``; with ``return_indices=True`` a third element
        ``indices`` (LongTensor ``[N]`` or ``None``).

    Each model is put in eval mode during the pass; the ``training`` flag of every submodule is
    restored afterwards (also on error).
    """
    if not isinstance(models, Mapping) or len(models) == 0:
        raise ValueError("models must be a non-empty mapping name -> nn.Module")
    for name, m in models.items():
        if not isinstance(m, nn.Module):
            raise ValueError(f"models[{name!r}] must be an nn.Module, got {type(m).__name__}")
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    if len(layers) == 0:
        raise ValueError("layers must name at least one of 'h', 'z'")
    for layer in layers:
        if layer not in _LAYER_INDEX:
            raise ValueError(f"unknown layer {layer!r}; expected one of {sorted(_LAYER_INDEX)}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers contains duplicates: {layers}")
    device = torch.device(device)

    saved_modes = {name: [(mod, mod.training) for mod in m.modules()] for name, m in models.items()}
    chunks: dict[str, dict[str, list[torch.Tensor]]] = {n: {l: [] for l in layers} for n in models}
    label_chunks: list[torch.Tensor] = []
    index_chunks: list[torch.Tensor] = []
    saw_indices: bool | None = None

    if amp:
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        autocast: Callable[[], Any] = lambda: torch.autocast(device_type=device.type, dtype=amp_dtype)
    else:
        autocast = contextlib.nullcontext
    try:
        for m in models.values():
            m.eval()
        with torch.no_grad():
            for batch in loader:
                images, labels, indices = _split_batch(batch)
                has_idx = indices is not None
                if saw_indices is None:
                    saw_indices = has_idx
                elif saw_indices != has_idx:
                    raise ValueError("loader batches inconsistently include indices")
                images = images.to(device, non_blocking=True)
                for name, m in models.items():
                    with autocast():
                        out = m(images)
                    if not isinstance(out, (tuple, list)) or len(out) != 2:
                        raise ValueError(f"model {name!r} must return (h, z), got {type(out).__name__}")
                    for layer in layers:
                        feat = out[_LAYER_INDEX[layer]]
                        if not isinstance(feat, torch.Tensor) or feat.shape[0] != images.shape[0]:
                            raise ValueError(f"model {name!r} layer {layer!r}: output batch size does not "
                                             f"match images ({images.shape[0]})")
                        chunks[name][layer].append(feat.detach().reshape(feat.shape[0], -1).float().cpu())
                label_chunks.append(labels.detach().long().cpu())
                if has_idx:
                    index_chunks.append(torch.as_tensor(indices).long().cpu())
    finally:
        for pairs in saved_modes.values():
            for mod, mode in pairs:
                mod.training = mode

    if not label_chunks:
        raise ValueError("loader yielded no batches")
    features = {n: {l: torch.cat(chunks[n][l], 0) for l in layers} for n in models}
    labels_all = torch.cat(label_chunks, 0)
    if return_indices:
        return features, labels_all, (torch.cat(index_chunks, 0) if saw_indices else None)
    return features, labels_all


class FeatureCache:
    """Tiny LRU cache for extracted features keyed by ``(checkpoint_id, split)``.

    ``get_or_compute(ckpt_id, split, fn)`` returns the cached value or stores ``fn()``.
    """

    def __init__(self, max_entries: int = 8):
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive int, got {max_entries!r}")
        self.max_entries = max_entries
        self._store: OrderedDict[tuple[Hashable, str], Any] = OrderedDict()

    def __contains__(self, key: tuple[Hashable, str]) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def get(self, checkpoint_id: Hashable, split: str, default: Any = None) -> Any:
        key = (checkpoint_id, split)
        if key not in self._store:
            return default
        self._store.move_to_end(key)
        return self._store[key]

    def put(self, checkpoint_id: Hashable, split: str, value: Any) -> None:
        key = (checkpoint_id, split)
        self._store[key] = value
        self._store.move_to_end(key)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)

    def get_or_compute(self, checkpoint_id: Hashable, split: str, fn: Callable[[], Any]) -> Any:
        key = (checkpoint_id, split)
        if key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        value = fn()
        self.put(checkpoint_id, split, value)
        return value

    def clear(self) -> None:
        self._store.clear()
