"""``repalign.compare(model_a, model_b, data)``: layer-by-layer CKA / RSA between any two models.

See docs/compare.md for the user guide (layers, pooling, metrics, memory, torch_cka translation).
The numerics live in :mod:`repalign.compare.engine`; this module resolves layers, iterates the
data, runs the forward passes (hooks removed and modes restored even on error) and builds the
:class:`Comparison`.
"""
from __future__ import annotations

import copy
import csv
import difflib
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from repalign.metrics.moments import F64, gram_matrix
from repalign.metrics._validate import rows_all_equal

from . import engine as E

__all__ = ["compare", "Comparison", "resolve_layers", "reinit"]

#: dict-batch keys tried (in order) for the input when ``input_key`` is None
INPUT_KEYS = ("x", "input", "inputs", "image", "images", "img", "pixel_values")
#: keys whose tensors identify the samples of a batch (checked between ``data`` and ``data_b``)
ORDER_KEYS = ("index", "indices", "idx", "label", "labels", "y", "target", "targets")
OUTPUT = "output"
CI_METHODS = (None, "bootstrap")
BASELINES = (None, "reinit")
METHODS = ("auto", "moments", "gram")


# ==============================================================================================
# result
# ==============================================================================================
@dataclass
class Comparison:
    """Result of :func:`compare`.

    ``rows``: one dict per (metric, layer_a, layer_b) with keys ``layer_a, layer_b, metric, value,
    ci_low, ci_high, n`` (``ci_*`` None without ``ci``) and ``baseline`` (the value between the
    re-initialised models, None without ``baseline``). ``names_a`` / ``names_b``: the layers in
    order; ``metrics``; ``n``: samples compared; ``settings``: how it was computed."""

    rows: list[dict[str, Any]]
    names_a: list[str]
    names_b: list[str]
    metrics: list[str]
    n: int
    settings: dict[str, Any] = field(default_factory=dict)

    def matrix(self, metric: str, column: str = "value") -> np.ndarray:
        """``[La, Lb]`` float64 array of ``column`` (``value``, ``ci_low``, ``ci_high``, ``baseline``)."""
        if metric not in self.metrics:
            raise ValueError(f"metric {metric!r} is not in this comparison (metrics: {', '.join(self.metrics)})")
        ia = {n: i for i, n in enumerate(self.names_a)}
        ib = {n: j for j, n in enumerate(self.names_b)}
        M = np.full((len(self.names_a), len(self.names_b)), np.nan)
        for r in self.rows:
            if r["metric"] == metric and r.get(column) is not None:
                M[ia[r["layer_a"]], ib[r["layer_b"]]] = r[column]
        return M

    def to_csv(self, path: str | Path) -> Path:
        """Write :attr:`rows` as CSV (atomically); returns the path."""
        from repalign.training.checkpoint import write_atomic

        buf = io.StringIO()
        cols = ["metric", "layer_a", "layer_b", "value", "ci_low", "ci_high", "baseline", "n"]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float) else r[k]))
                        for k in cols})
        return write_atomic(Path(path), buf.getvalue().encode())

    def plot(self, path: str | Path) -> Path:
        """One heatmap per metric (rows: layers of A, columns: layers of B), colour bar, values printed
        on grids up to 12 × 12; PNG written atomically."""
        from .html import plot_comparison

        return plot_comparison(self, Path(path))

    def to_html(self, path: str | Path) -> Path:
        """A self-contained HTML page (the run report's style): settings, heatmaps, tables."""
        from .html import html_page

        return html_page(self, Path(path))

    def table(self, metric: str | None = None, digits: int = 3) -> str:
        """Plain-text ``[La × Lb]`` table(s) (with CIs / baseline when present)."""
        out = []
        for m in ([metric] if metric else self.metrics):
            M, lo, hi, base = (self.matrix(m, c) for c in ("value", "ci_low", "ci_high", "baseline"))
            w = max(12, *(len(n) for n in self.names_b)) + 2
            wa = max(8, *(len(n) for n in self.names_a))
            out.append(f"{m} (rows: A layers, columns: B layers; n = {self.n})")
            out.append(" " * wa + "".join(f"{n:>{w}}" for n in self.names_b))
            for i, na in enumerate(self.names_a):
                cells = []
                for j in range(len(self.names_b)):
                    s = f"{M[i, j]:.{digits}f}"
                    if not np.isnan(lo[i, j]):
                        s += f" [{lo[i, j]:.2f},{hi[i, j]:.2f}]"
                    if not np.isnan(base[i, j]):
                        s += f" (0:{base[i, j]:.2f})"
                    cells.append(f"{s:>{w}}")
                out.append(f"{na:<{wa}}" + "".join(cells))
            out.append("")
        return "\n".join(out).rstrip()

    def __repr__(self) -> str:
        return (f"Comparison(metrics={self.metrics}, layers {len(self.names_a)}×{len(self.names_b)}, n={self.n}, "
                f"pool={self.settings.get('pool')!r}, ci={self.settings.get('ci')!r})")


# ==============================================================================================
# layers
# ==============================================================================================
def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _fx_nodes(model: nn.Module) -> list[str]:
    try:
        from torchvision.models.feature_extraction import get_graph_node_names
    except ImportError:
        return []
    try:
        return list(get_graph_node_names(model)[1])
    except Exception:  # noqa: BLE001 - a model fx cannot trace: no node names to offer
        return []


def resolve_layers(model: nn.Module, layers: Any, what: str) -> tuple[list[tuple[str, nn.Module | None]], bool, bool]:
    """``([(name, module or None)], use_fx, auto)`` for ``layers`` of ``model``.

    * ``"auto"``: ``model.blocks()`` when the model has it (repalign encoders / nets), else its
      top-level children that have parameters (so ReLU / pooling / dropout children are left out),
      plus ``"output"`` (the model's return value; its first tensor if it returns a tuple) unless
      the last block's output is that same tensor;
    * ``"all"``: every entry of ``named_modules()`` except the root, plus ``"output"``;
    * a list of names: entries of ``named_modules()``, ``"output"``, or node names of torchvision's
      ``get_graph_node_names`` (e.g. ``"layer1.0.add"``; then ``create_feature_extractor`` runs the
      model). Unknown names: one-line error with the closest names.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"{what} must be an nn.Module, got {type(model).__name__}")
    mods = dict(model.named_modules())
    side = "layers_a" if what == "model_a" else "layers_b"
    if isinstance(layers, str) and layers == "auto":
        if callable(getattr(model, "blocks", None)):
            out: list[tuple[str, nn.Module | None]] = [(n, m) for n, m in model.blocks()]
        else:
            out = [(n, m) for n, m in model.named_children() if _has_params(m)]
        return out + [(OUTPUT, None)], False, True
    if isinstance(layers, str) and layers == "all":
        return [(n, m) for n, m in mods.items() if n] + [(OUTPUT, None)], False, False
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"{side} must be 'auto', 'all' or a non-empty list of layer names, got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{side}: duplicate layer names in {list(layers)}")
    out, fx, nodes = [], False, None
    for n in layers:
        if n == OUTPUT:
            out.append((n, None))
        elif n in mods and n:
            out.append((n, mods[n]))
        else:
            nodes = _fx_nodes(model) if nodes is None else nodes
            if n in nodes:
                out.append((n, None))
                fx = True
            else:
                close = difflib.get_close_matches(n, list(dict.fromkeys([m for m in mods if m] + nodes + [OUTPUT])),
                                                n=5, cutoff=0.5)
                hint = f"; closest: {', '.join(close)}" if close else f"; top-level: {', '.join(n for n, _ in model.named_children())}"
                raise ValueError(f"{side}: {what} has no layer {n!r}{hint}")
    if fx and any(n == OUTPUT for n, _ in out):
        raise ValueError(f"{side}: 'output' cannot be combined with graph-node names; name the output node instead")
    return out, fx, False


class _Tap:
    """Runs one model and returns the raw outputs of its named layers (forward hooks, or torchvision's
    feature extractor for graph-node names); :meth:`close` removes every hook."""

    def __init__(self, model: nn.Module, layers: list[tuple[str, nn.Module | None]], fx: bool) -> None:
        self.model, self.names = model, [n for n, _ in layers]
        self.feats: dict[str, Any] = {}
        self.handles: list[Any] = []
        self.extractor = None
        if fx:
            from torchvision.models.feature_extraction import create_feature_extractor

            self.extractor = create_feature_extractor(model, return_nodes={n: n for n in self.names})
        else:
            for n, m in layers:
                if m is not None:
                    self.handles.append(m.register_forward_hook(self._hook(n)))

    def _hook(self, name: str):
        def fn(_mod: nn.Module, _inp: Any, out: Any) -> None:
            self.feats[name] = out
        return fn

    def run(self, x: torch.Tensor) -> dict[str, Any]:
        self.feats = {}
        if self.extractor is not None:
            return dict(self.extractor(x))
        out = self.model(x)
        if OUTPUT in self.names:
            self.feats[OUTPUT] = out
        missing = [n for n in self.names if n not in self.feats]
        if missing:
            raise ValueError(f"layers {missing} were not called during the forward pass")
        feats, self.feats = self.feats, {}
        return feats

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _first_tensor(out: Any) -> Any:
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), None)
    return out


# ==============================================================================================
# data
# ==============================================================================================
def _input_of(batch: Any, input_key: str | None) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)):
        if not batch or not isinstance(batch[0], torch.Tensor):
            raise ValueError("data: a tuple batch must start with the input tensor (x, y, …)")
        return batch[0]
    if isinstance(batch, dict):
        key = input_key if input_key is not None else next((k for k in INPUT_KEYS if k in batch), None)
        if key is None or key not in batch:
            raise ValueError(f"data: dict batch has no input key {input_key or INPUT_KEYS!r} "
                             f"(keys: {', '.join(map(str, batch))}); pass input_key=")
        if not isinstance(batch[key], torch.Tensor):
            raise ValueError(f"data: batch[{key!r}] is {type(batch[key]).__name__}, expected a tensor")
        return batch[key]
    raise ValueError(f"data must yield tensors, (x, y, …) tuples or dicts, got {type(batch).__name__}")


def _order_of(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    if isinstance(batch, dict):
        for k in ORDER_KEYS:
            if isinstance(batch.get(k), torch.Tensor):
                return batch[k]
    return None


def _as_iterable(data: Any, batch_size: int) -> tuple[Iterable[Any], int | None]:
    """(iterable of batches, number of batches or None)."""
    if isinstance(data, torch.Tensor):
        if data.dim() < 1 or data.shape[0] == 0:
            raise ValueError(f"data: a tensor of inputs must be [N, ...] with N ≥ 1, got {tuple(data.shape)}")
        return [data[a:a + batch_size] for a in range(0, data.shape[0], batch_size)], math.ceil(data.shape[0] / batch_size)
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, DataLoader):
        try:
            return data, len(data)
        except TypeError:
            return data, None
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")
                                     and not isinstance(data, (list, tuple, dict))):
        return DataLoader(data, batch_size=batch_size, shuffle=False), math.ceil(len(data) / batch_size)
    if isinstance(data, (list, tuple)) or hasattr(data, "__iter__"):
        try:
            return data, len(data)  # type: ignore[arg-type]
        except TypeError:
            return data, None
    raise ValueError(f"data must be a DataLoader, a Dataset, an iterable of batches or a tensor, got {type(data).__name__}")


def _batches(data: Any, data_b: Any, batch_size: int, input_key: str | None,
             max_samples: int | None) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor | None]], int | None]:
    it_a, nb = _as_iterable(data, batch_size)
    it_b = _as_iterable(data_b, batch_size)[0] if data_b is not None else None
    if max_samples is not None and nb is not None:
        nb = min(nb, math.ceil(max_samples / batch_size)) if isinstance(data, torch.Tensor) else nb

    def gen() -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        seen = 0
        src_b = iter(it_b) if it_b is not None else None
        for k, batch in enumerate(it_a):
            if max_samples is not None and seen >= max_samples:
                return
            xa = _input_of(batch, input_key)
            xb = None
            if src_b is not None:
                try:
                    bb = next(src_b)
                except StopIteration:
                    raise ValueError(f"data_b ran out of batches at batch {k} (data has more)") from None
                xb = _input_of(bb, input_key)
                if xb.shape[0] != xa.shape[0]:
                    raise ValueError(f"data_b batch {k} has {xb.shape[0]} samples, data has {xa.shape[0]}: "
                                     f"the two must yield the same samples in the same order")
                oa, ob = _order_of(batch), _order_of(bb)
                if oa is not None and ob is not None and (oa.shape != ob.shape or not torch.equal(oa.cpu(), ob.cpu())):
                    raise ValueError(f"data_b batch {k}: its labels/indices differ from data's: the two must "
                                     f"yield the same samples in the same order (shuffle=False)")
            if max_samples is not None and seen + xa.shape[0] > max_samples:
                keep = max_samples - seen
                xa = xa[:keep]
                xb = xb[:keep] if xb is not None else None
            seen += xa.shape[0]
            yield xa, xb
    return gen(), nb


class _Progress:
    """tqdm on a terminal; otherwise one line per finished batch on stderr; nothing when disabled."""

    def __init__(self, enabled: bool, total: int | None, desc: str) -> None:
        self.enabled, self.total, self.desc, self.k, self.bar = enabled, total, desc, 0, None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False)

    def update(self, n: int) -> None:
        self.k += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(samples=n)
        else:
            tot = f"/{self.total}" if self.total else ""
            print(f"{self.desc}: batch {self.k}{tot} done ({n} samples)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ==============================================================================================
# models
# ==============================================================================================
def _model_device(m: nn.Module) -> torch.device:
    for t in m.parameters():
        return t.device
    for t in m.buffers():
        return t.device
    return torch.device("cpu")


def reinit(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` with every parameter re-initialised from ``seed`` (CPU RNG forked):
    each module's own ``reset_parameters()`` (BatchNorm also resets its running statistics);
    parameters of modules without one (e.g. ViT class tokens, position embeddings) get
    ``normal(0, 0.02)``."""
    from repalign.models import seeded_init

    m = copy.deepcopy(model)
    done: set[int] = set()
    with seeded_init(seed):
        for mod in m.modules():
            if callable(getattr(mod, "reset_parameters", None)):
                mod.reset_parameters()
                done.update(id(p) for p in mod.parameters(recurse=False))
            if callable(getattr(mod, "reset_running_stats", None)):
                mod.reset_running_stats()
        with torch.no_grad():
            for p in m.parameters():
                if id(p) not in done:
                    p.normal_(0.0, 0.02)
    return m


# ==============================================================================================
# compare
# ==============================================================================================
def compare(model_a: nn.Module, model_b: nn.Module, data: Any, *, layers_a: Any = "auto", layers_b: Any = "auto",
            metrics: Sequence[str] = ("linear_cka", "rsa"), pool: str = "flatten", max_samples: int | None = None,
            batch_size: int = 256, device: str | torch.device | None = None, progress: bool = True, seed: int = 0,
            data_b: Any = None, input_key: str | None = None, ci: str | None = None, n_boot: int = 200,
            ci_level: float = 0.95, baseline: str | None = None, rbf_sigma: float = 0.8, method: str = "auto",
            max_dim: int = 16384, train_mode: bool = False) -> Comparison:
    """Every metric between every layer of ``model_a`` and every layer of ``model_b`` on the same samples.

    ``data``: a DataLoader, a Dataset, an iterable of batches or a tensor of inputs ``[N, ...]``;
    batches are tensors, ``(x, y, …)`` tuples or dicts (input under ``input_key``, default the first
    of :data:`INPUT_KEYS`). ``data_b``: the same samples for ``model_b`` (another transform), same
    order — checked batch by batch on labels/indices when both carry them. ``max_samples``: stop
    after that many samples. Layers: :func:`resolve_layers`. ``pool``: :func:`engine.pool_output`.
    ``metrics``: :data:`engine.BUILTIN` names and plug-in metrics of :data:`repalign.schema.ALIGN_METRICS`.

    Models run under ``torch.no_grad`` in eval mode (``train_mode=True``: train mode) on ``device``
    (default: where their parameters are); their modes and devices are restored afterwards and every
    hook is removed, also on error. Passing the same model twice runs one forward per batch.

    ``ci="bootstrap"``: percentile interval (``ci_level``) over ``n_boot`` resamples of the samples,
    drawn once from ``derive_seed(seed, "compare", "bootstrap")`` and shared by every layer pair and
    metric (paired); computed exactly on N×N Grams, so it keeps the features and one float64 Gram per
    layer and mode (``(La + Lb)·N²·8`` bytes per mode). ``minibatch_cka`` resamples whole batches.
    ``baseline="reinit"``: the same metrics between :func:`reinit` copies of A and B (seeds
    ``derive_seed(seed, "reinit", 0 | 1)``), reported per row as ``baseline``.
    ``method``: ``"auto"`` (streamed moments; Grams when ``ci`` is set), ``"moments"``, ``"gram"``.
    """
    t0 = time.perf_counter()
    metrics = list(metrics) if not isinstance(metrics, str) else [metrics]
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics: duplicate names in {metrics}")
    kinds = {m: E.metric_kind(m) for m in metrics}
    if pool not in E.POOLS:
        raise ValueError(f"pool must be one of {E.POOLS}, got {pool!r}")
    if ci not in CI_METHODS:
        raise ValueError(f"ci must be None or 'bootstrap', got {ci!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be None or 'reinit', got {baseline!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "moments" and ci is not None:
        raise ValueError("ci='bootstrap' needs the N×N Grams: use method='auto' or 'gram'")
    for nm, v, lo in (("batch_size", batch_size, 1), ("n_boot", n_boot, 2), ("max_dim", max_dim, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{nm} must be an int ≥ {lo}, got {v!r}")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 2):
        raise ValueError(f"max_samples must be None or an int ≥ 2, got {max_samples!r}")
    if not (0 < ci_level < 1):
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    la, fxa, auto_a = resolve_layers(model_a, layers_a, "model_a")
    lb, fxb, auto_b = resolve_layers(model_b, layers_b, "model_b")
    dev = torch.device(device) if device is not None else None

    res = _run(model_a, model_b, la, lb, fxa, fxb, (auto_a, auto_b), data, data_b, metrics, kinds, pool,
               max_samples, batch_size, dev, progress, seed, input_key, ci, n_boot, ci_level, rbf_sigma, method,
               max_dim, train_mode, "compare")
    names_a, names_b = res["names_a"], res["names_b"]
    base = None
    if baseline == "reinit":
        from repalign.seeding import derive_seed

        ra, rb = reinit(model_a, derive_seed(seed, "reinit", 0)), reinit(model_b, derive_seed(seed, "reinit", 1))
        la2 = _same_layers_in(model_a, ra, la, names_a)
        lb2 = _same_layers_in(model_b, rb, lb, names_b)
        base = _run(ra, rb, la2, lb2, fxa, fxb, (False, False), data, data_b, metrics, kinds, pool, max_samples,
                    batch_size, dev, progress, seed, input_key, None, n_boot, ci_level, rbf_sigma,
                    "moments" if method == "auto" else method, max_dim, train_mode, "compare (reinit baseline)")
    rows = []
    for m in metrics:
        V = res["values"][m]
        for i, na in enumerate(names_a):
            for j, nb in enumerate(names_b):
                rows.append({"layer_a": na, "layer_b": nb, "metric": m, "value": float(V[i, j]),
                             "ci_low": None if ci is None else float(res["ci"][m][0][i, j]),
                             "ci_high": None if ci is None else float(res["ci"][m][1][i, j]),
                             "baseline": None if base is None else float(base["values"][m][i, j]),
                             "n": int(res["n_used"][m])})
    settings = {"pool": pool, "ci": ci, "n_boot": n_boot if ci else None, "ci_level": ci_level if ci else None,
                "baseline": baseline, "seed": seed, "method": res["method"], "batches": res["batches"],
                "skipped_batches": res["skipped"], "rbf_sigma": rbf_sigma if "rbf_cka" in metrics else None,
                "model_a": type(model_a).__name__, "model_b": type(model_b).__name__, "same_model": model_a is model_b,
                "train_mode": train_mode, "seconds": round(time.perf_counter() - t0, 3)}
    return Comparison(rows=rows, names_a=names_a, names_b=names_b, metrics=metrics, n=res["n"], settings=settings)


def _same_layers_in(model: nn.Module, copy_: nn.Module, layers: list[tuple[str, nn.Module | None]],
                    names: list[str]) -> list[tuple[str, nn.Module | None]]:
    """The layers of ``model`` (those kept in ``names``) as the corresponding modules of its deep copy."""
    qual = {id(m): q for q, m in model.named_modules()}
    return [(n, None if m is None else copy_.get_submodule(qual[id(m)])) for n, m in layers if n in names]


def _run(model_a, model_b, la, lb, fxa, fxb, autos, data, data_b, metrics, kinds, pool, max_samples, batch_size,
         dev, progress, seed, input_key, ci, n_boot, ci_level, rbf_sigma, method, max_dim, train_mode, desc):
    same_model = model_a is model_b and data_b is None and fxa == fxb
    models = [model_a] if model_a is model_b else [model_a, model_b]
    modes = [m.training for m in models]
    devices = [_model_device(m) for m in models]
    taps: list[_Tap] = []
    use_gram = method == "gram" or (method == "auto" and ci is not None)
    modes_needed = sorted({mode for m, (k, mode) in kinds.items() if k == "moments"})
    keep = use_gram or any(k == "features" for k, _ in kinds.values())
    want_batch = any(k == "batch" for k, _ in kinds.values())
    st: dict[str, Any] = {"moments": {}, "feats_a": None, "feats_b": None, "batch": E.BatchState(), "n": 0,
                          "batches": 0}
    names_a, names_b = [n for n, _ in la], [n for n, _ in lb]
    same_layers = same_model and names_a == names_b
    try:
        for m in models:
            if dev is not None:
                m.to(dev)
            m.train(train_mode)
        if same_model:
            union = list(dict.fromkeys(la + lb))
            tap_a = _Tap(model_a, union, fxa)
            taps.append(tap_a)
            tap_b = tap_a
        else:
            tap_a = _Tap(model_a, la, fxa)
            taps.append(tap_a)
            tap_b = _Tap(model_b, lb, fxb)
            taps.append(tap_b)
        batches, total = _batches(data, data_b, batch_size, input_key, max_samples)
        n_bound = _n_bound(data, max_samples)
        prog = _Progress(progress, total, desc)
        da, db = _model_device(model_a), _model_device(model_b)
        try:
            with torch.no_grad():
                for xa, xb in batches:
                    ra = tap_a.run(xa.to(da))
                    rb = ra if (same_model and xb is None) else tap_b.run((xb if xb is not None else xa).to(db))
                    if st["batches"] == 0:
                        names_a = _dedupe_output(names_a, ra, autos[0])
                        names_b = _dedupe_output(names_b, rb, autos[1])
                        same_layers = same_model and names_a == names_b
                    fa = [E.pool_output(_first_tensor(ra[n]) if n == OUTPUT else ra[n], pool, n) for n in names_a]
                    fb = fa if same_layers else [E.pool_output(_first_tensor(rb[n]) if n == OUTPUT else rb[n], pool, n)
                                                 for n in names_b]
                    d0 = fa[0].device
                    fb = [f.to(d0) for f in fb]
                    b = fa[0].shape[0]
                    if any(f.shape[0] != b for f in fa + fb):
                        bad = next(n for n, f in zip(names_a + names_b, fa + fb) if f.shape[0] != b)
                        raise ValueError(f"layer {bad!r} returned a batch of a different size than the input "
                                         f"({b} samples); every layer output must be [B, ...]")
                    if st["batches"] == 0 and method == "auto" and not use_gram and n_bound is not None:
                        # the N×N form is the smaller one (as metrics.moments.pair_stats decides)
                        da_, db_ = [f.shape[1] for f in fa], [f.shape[1] for f in fb]
                        feat_cost = sum(d * d for d in da_) + (0 if same_layers else sum(d * d for d in db_)) \
                            + sum(da_) * sum(db_)
                        use_gram = feat_cost > 3 * (len(fa) + len(fb)) * n_bound * n_bound
                        keep = keep or use_gram
                    if not use_gram:
                        for mode in modes_needed:
                            if mode not in st["moments"]:
                                st["moments"][mode] = E.MomentState(mode, fa, fb, names_a, names_b, same_layers, max_dim)
                            st["moments"][mode].update(fa, fb)
                    if keep:
                        if st["feats_a"] is None:
                            st["feats_a"] = [[] for _ in fa]
                            st["feats_b"] = None if same_layers else [[] for _ in fb]
                        for lst, f in zip(st["feats_a"], fa):
                            lst.append(f.to("cpu", F64))
                        if not same_layers:
                            for lst, f in zip(st["feats_b"], fb):
                                lst.append(f.to("cpu", F64))
                    if want_batch:
                        st["batch"].update(fa, fb, same_layers)
                    st["n"] += b
                    st["batches"] += 1
                    prog.update(st["n"])
        finally:
            prog.close()
    finally:
        for t in taps:
            t.close()
        for m, t, d in zip(models, modes, devices):
            m.train(t)
            if dev is not None:
                m.to(d)
    if st["batches"] == 0:
        raise ValueError("data yielded no batches")
    n = st["n"]
    if n < 2:
        raise ValueError(f"compare needs at least 2 samples, got {n}")
    return _finish(st, metrics, kinds, names_a, names_b, same_layers, use_gram, modes_needed, ci, n_boot, ci_level,
                   seed, rbf_sigma, "gram" if use_gram else "moments")


def _n_bound(data: Any, max_samples: int | None) -> int | None:
    """An upper bound on the number of samples when it is known before iterating."""
    n = None
    if isinstance(data, torch.Tensor):
        n = data.shape[0]
    else:
        ds = getattr(data, "dataset", data)
        try:
            n = len(ds)
        except TypeError:
            n = None
        if n is not None and ds is data and not hasattr(data, "__getitem__"):
            n = None  # a plain iterable of batches: len counts batches
    if max_samples is not None:
        n = max_samples if n is None else min(n, max_samples)
    return n


def _dedupe_output(names: list[str], raw: dict[str, Any], auto: bool) -> list[str]:
    """Under ``"auto"``, drop ``"output"`` when the last block's output is the model's output tensor."""
    if not auto or OUTPUT not in names or len(names) < 2:
        return names
    last = names[-2]
    if _first_tensor(raw[last]) is _first_tensor(raw[OUTPUT]):
        return [n for n in names if n != OUTPUT]
    return names


def _finish(st, metrics, kinds, names_a, names_b, same, use_gram, modes_needed, ci, n_boot, ci_level, seed,
            rbf_sigma, method) -> dict[str, Any]:
    from repalign.seeding import generator

    n, La, Lb = st["n"], len(names_a), len(names_b)
    values: dict[str, torch.Tensor] = {m: torch.zeros(La, Lb, dtype=F64) for m in metrics}
    reps: dict[str, torch.Tensor] = {m: torch.zeros(n_boot, La, Lb, dtype=F64) for m in metrics} if ci else {}
    n_used = {m: n for m in metrics}
    Xa = [torch.cat(l) for l in st["feats_a"]] if st["feats_a"] is not None else None
    Xb = (Xa if same else [torch.cat(l) for l in st["feats_b"]]) if Xa is not None else None
    idx = None
    if ci:
        idx = torch.randint(0, n, (n_boot, n), generator=generator(seed, "compare", "bootstrap"))
    mom_metrics = [m for m in metrics if kinds[m][0] == "moments"]
    # -- moments metrics
    if mom_metrics and not use_gram:
        for mode in modes_needed:
            sa, sb, cross = st["moments"][mode].stats()
            for m in mom_metrics:
                if kinds[m][1] != mode:
                    continue
                for i in range(La):
                    for j in range(Lb):
                        values[m][i, j] = E.finish_stats(m, sa[i], sb[j], cross[i][j])
    elif mom_metrics:
        for mode in modes_needed:
            ms = [m for m in mom_metrics if kinds[m][1] == mode]
            Ga = [gram_matrix(X, mode) for X in Xa]
            Gb = Ga if same else [gram_matrix(X, mode) for X in Xb]
            ca = [mode == "center" and rows_all_equal(X) for X in Xa]
            cb = ca if same else [mode == "center" and rows_all_equal(X) for X in Xb]
            ones = torch.ones(n, dtype=F64)
            for r in range(-1, n_boot if ci else 0):
                w = ones if r < 0 else torch.bincount(idx[r], minlength=n).to(F64)
                sa, sb, cross = E.weighted_stats(Ga, None if same else Gb, mode, w, ca, cb)
                pairs = None if r < 0 else (n * n - float(w @ w)) / 2
                for m in ms:
                    tgt = values[m] if r < 0 else reps[m][r]
                    for i in range(La):
                        for j in range(Lb):
                            tgt[i, j] = E.finish_stats(m, sa[i], sb[j], cross[i][j], pairs)
    # -- feature metrics
    if ci and "rbf_cka" in metrics:
        # RBF CKA is linear CKA of the RBF Grams (bandwidth from the full sample): the same weighted,
        # copy-pair-free resamples as the moment metrics
        from repalign.metrics.cka import gram_rbf

        Ra = [gram_rbf(X, rbf_sigma) for X in Xa]
        Rb = None if same else [gram_rbf(X, rbf_sigma) for X in Xb]
        ca = [rows_all_equal(X) for X in Xa]
        cb = ca if same else [rows_all_equal(X) for X in Xb]
        for r in range(-1, n_boot):
            w = torch.ones(n, dtype=F64) if r < 0 else torch.bincount(idx[r], minlength=n).to(F64)
            sa, sb, cross = E.weighted_stats(Ra, Rb, "center", w, ca, cb)
            tgt = values["rbf_cka"] if r < 0 else reps["rbf_cka"][r]
            for i in range(La):
                for j in range(Lb):
                    tgt[i, j] = E.finish_stats("linear_cka", sa[i], sb[j], cross[i][j])
        del Ra, Rb
    for m in metrics:
        if kinds[m][0] != "features" or (ci and m == "rbf_cka"):
            continue
        f = E.feature_metric(m, rbf_sigma)
        for i in range(La):
            for j in range(Lb):
                if same and j < i:
                    values[m][i, j] = values[m][j, i]
                    if ci:
                        reps[m][:, i, j] = reps[m][:, j, i]
                    continue
                values[m][i, j] = f(Xa[i], Xb[j])
                for r in range(n_boot if ci else 0):
                    reps[m][r, i, j] = f(Xa[i][idx[r]], Xb[j][idx[r]])
    # -- minibatch
    if any(kinds[m][0] == "batch" for m in metrics):
        bs: E.BatchState = st["batch"]
        values["minibatch_cka"] = bs.value()
        n_used["minibatch_cka"] = bs.n
        if ci:
            nb = len(bs.xy)
            bidx = torch.randint(0, nb, (n_boot, nb), generator=generator(seed, "compare", "bootstrap", "batches"))
            for r in range(n_boot):
                reps["minibatch_cka"][r] = bs.value(torch.bincount(bidx[r], minlength=nb))
    out: dict[str, Any] = {"values": values, "names_a": names_a, "names_b": names_b, "n": n, "n_used": n_used,
                           "batches": st["batches"], "skipped": st["batch"].skipped, "method": method}
    for m, V in values.items():
        if not bool(torch.isfinite(V).all()):
            raise ValueError(f"metric {m!r} gave a non-finite value (non-finite features?)")
    if ci:
        a = (1 - ci_level) / 2
        out["ci"] = {}
        for m in metrics:
            R = reps[m]
            lo, hi = torch.zeros(La, Lb, dtype=F64), torch.zeros(La, Lb, dtype=F64)
            for i in range(La):
                for j in range(Lb):
                    lo[i, j] = E.percentile(R[:, i, j], a)
                    hi[i, j] = E.percentile(R[:, i, j], 1 - a)
            out["ci"][m] = (lo, hi)
            V = values[m]
            outside = int(((V < lo - 1e-12) | (V > hi + 1e-12)).sum())
            if outside:
                import warnings

                warnings.warn(f"compare: {outside} of {La * Lb} {m} values lie outside their bootstrap interval "
                              f"(resamples repeat samples, which inflates biased CKA/RSA when features are wide "
                              f"relative to N; see docs/compare.md, 'Uncertainty')", stacklevel=3)
    return out
