"""The paper's published values (arXiv 2510.08852, read off its figures/tables), as data.

Source: ``paper-notes §4``. Values marked ≈ in the notes were read off plots (line plots ±0.01–0.02,
heatmap colours ±0.05); Fig 4 and Fig 5 are the paper's stated epoch-300 / epoch-200 numbers.
Every entry is a plain dict so the report can print it beside our measurements:

``{"fig", "dataset", "metric", "pair", "split", "epoch", "value", [grid keys: "tau", "batch_size",
"lr_rule", "num_classes"], "approx": bool, "note"}``

``split`` is ``"train"``, ``"test"`` or ``"both"`` (the paper gives one value for both curves).
"""
from __future__ import annotations

from typing import Any, Iterable

PAPER = "Luthra, Mishra, Galanti (2025), arXiv 2510.08852"

REFERENCE: list[dict[str, Any]] = []


def _add(fig: str, dataset: str, metric: str, value: float, *, pair: str = "cl/nscl", split: str = "both",
         epoch: int | None = None, approx: bool = True, note: str = "", **grid: Any) -> None:
    REFERENCE.append({"fig": fig, "dataset": dataset, "metric": metric, "pair": pair, "split": split,
                      "epoch": epoch, "value": float(value), "approx": approx, "note": note, **grid})


# ---- Fig 1 (teaser, stated): angles between CL and NSCL
_add("fig1", "unspecified", "weight_angle_deg", 85.7, approx=False, note="weight-space angle (stated)")
_add("fig1", "unspecified", "repr_angle_deg", 27.8, approx=False, note="representation-space angle (stated)")

# ---- Fig 2: final (≈ epoch 1200) CKA / RSA of CL vs NSCL, SCL, CE; "a/b" = train/test
_FIG2 = {
    # dataset: {metric: {pair: (train, test) or single}}
    "cifar100": {"linear_cka": {"nscl": (0.77, 0.78), "scl": 0.07, "ce": 0.57},
                 "rsa": {"nscl": (0.69, 0.73), "scl": 0.21, "ce": 0.635}},
    "tiny_imagenet": {"linear_cka": {"nscl": 0.85, "scl": 0.05, "ce": 0.485},
                      "rsa": {"nscl": 0.795, "scl": 0.17, "ce": 0.57}},
    "mini_imagenet": {"linear_cka": {"nscl": (0.55, 0.58), "scl": 0.135, "ce": (0.61, 0.645)},
                      "rsa": {"nscl": (0.71, 0.73), "scl": 0.21, "ce": 0.62}},
}
for _ds, _m in _FIG2.items():
    for _metric, _pairs in _m.items():
        for _b, _v in _pairs.items():
            if isinstance(_v, tuple):
                _add("fig2", _ds, _metric, _v[0], pair=f"cl/{_b}", split="train", epoch=1200)
                _add("fig2", _ds, _metric, _v[1], pair=f"cl/{_b}", split="test", epoch=1200)
            else:
                _add("fig2", _ds, _metric, _v, pair=f"cl/{_b}", epoch=1200, note="midpoint of a range")
# Fig 2 epoch-10 values (CL–NSCL) — every curve starts at 1.0 (shared initialisation)
for _ds, _cka, _rsa in (("cifar100", 0.93, 0.94), ("tiny_imagenet", 0.91, 0.91), ("mini_imagenet", 0.90, 0.92)):
    _add("fig2", _ds, "linear_cka", _cka, epoch=10)
    _add("fig2", _ds, "rsa", _rsa, epoch=10)

# ---- Fig 3: CL–NSCL CKA vs number of classes C (late epochs, ≈ heatmap colours ±0.05)
for _ds, _c, _v, _ep in (("mini_imagenet", 100, 0.65, 1000), ("mini_imagenet", 50, 0.825, 1000),
                         ("mini_imagenet", 10, 0.775, 1000), ("mini_imagenet", 5, 0.7, 1000),
                         ("tiny_imagenet", 200, 0.9, 1000), ("tiny_imagenet", 100, 0.6, 1000),
                         ("tiny_imagenet", 50, 0.575, 1000), ("tiny_imagenet", 10, 0.575, 1000),
                         ("tiny_imagenet", 5, 0.675, 1000), ("imagenet", 1000, 0.9, 100),
                         ("imagenet", 50, 0.9, 100), ("imagenet", 10, 0.8, 100), ("imagenet", 5, 0.825, 100)):
    _add("fig3", _ds, "linear_cka", _v, epoch=_ep, num_classes=_c)
_add("fig3", "tiny_imagenet", "linear_cka", 0.325, epoch=10, num_classes=5, note="lowest cell of the heatmap")

# ---- Fig 4: temperature, epoch 300 (stated), train / test
_FIG4 = {
    ("cifar100", "linear_cka"): {0.1: (0.853, 0.855), 0.5: (0.951, 0.949), 1.0: (0.969, 0.968)},
    ("cifar100", "rsa"): {0.1: (0.855, 0.867), 0.5: (0.970, 0.969), 1.0: (0.977, 0.976)},
    ("tiny_imagenet", "linear_cka"): {0.1: (0.897, 0.902), 0.5: (0.952, 0.951), 1.0: (0.969, 0.968)},
    ("tiny_imagenet", "rsa"): {0.1: (0.806, 0.825), 0.5: (0.947, 0.949), 1.0: (0.956, 0.955)},
    ("mini_imagenet", "linear_cka"): {0.1: (0.750, 0.774), 0.5: (0.944, 0.944), 1.0: (0.960, 0.960)},
    ("mini_imagenet", "rsa"): {0.1: (0.785, 0.796), 0.5: (0.953, 0.956), 1.0: (0.969, 0.970)},
}
for (_ds, _metric), _d in _FIG4.items():
    for _tau, (_tr, _te) in _d.items():
        _add("fig4", _ds, _metric, _tr, split="train", epoch=300, approx=False, tau=_tau)
        _add("fig4", _ds, _metric, _te, split="test", epoch=300, approx=False, tau=_tau)

# ---- Fig 5: mini-ImageNet, epoch 200 (stated), B × lr rule, train / test
_FIG5 = {
    ("linear", "linear_cka"): {256: (0.940, 0.942), 512: (0.914, 0.918), 1024: (0.857, 0.868)},
    ("linear", "rsa"): {256: (0.956, 0.958), 512: (0.926, 0.930), 1024: (0.845, 0.857)},
    ("sqrt", "linear_cka"): {256: (0.977, 0.976), 512: (0.981, 0.982), 1024: (0.980, 0.979)},
    ("sqrt", "rsa"): {256: (0.980, 0.980), 512: (0.9815, 0.982), 1024: (0.9823, 0.9823)},
    ("fourth_root", "linear_cka"): {256: (0.9953, 0.9950), 512: (0.9946, 0.9948), 1024: (0.9958, 0.9956)},
    ("fourth_root", "rsa"): {256: (0.9923, 0.9921), 512: (0.9923, 0.9923), 1024: (0.9937, 0.9938)},
}
for (_rule, _metric), _d in _FIG5.items():
    for _b, _vals in _d.items():
        for _split, _v in zip(("train", "test"), _vals):  # the paper trains fig 5 with LARS
            _add("fig5", "mini_imagenet", _metric, _v, split=_split, epoch=200, approx=False, batch_size=_b,
                 lr_rule=_rule, optimizer="lars")

# ---- loss gap vs C (predecessor arXiv 2506.04411, CIFAR-100, midpoints of read-off ranges)
for _c, _gap in ((2, 0.75), (10, 0.13), (20, 0.065), (40, 0.035), (100, 0.01)):
    _add("lossgap", "cifar100", "gap", _gap, pair="cl", num_classes=_c, note="predecessor paper, τ = 1")

# ---- weights: no published values (qualitative: "diverge significantly as training progresses")


def reference(fig: str | None = None, **filters: Any) -> list[dict[str, Any]]:
    """Entries of :data:`REFERENCE` whose fields equal every given filter (``None`` values ignored)."""
    out = []
    for r in REFERENCE:
        if fig is not None and r["fig"] != fig:
            continue
        if all(v is None or r.get(k) == v for k, v in filters.items()):
            out.append(r)
    return out


def lookup(fig: str, metric: str, split: str = "both", **filters: Any) -> dict[str, float]:
    """``{dataset: value}`` for one figure / metric (split falls back to ``"both"``)."""
    out: dict[str, float] = {}
    for r in reference(fig, metric=metric, **filters):
        if r["split"] in (split, "both") and (r["dataset"] not in out or r["split"] == split):
            out[r["dataset"]] = r["value"]
    return out


DATASET_NAMES = {"cifar100": "CIFAR-100", "tiny_imagenet": "Tiny-ImageNet", "mini_imagenet": "mini-ImageNet",
                 "imagenet": "ImageNet-1k", "unspecified": "paper"}


def format_reference(values: dict[str, float]) -> str:
    """``{"cifar100": 0.77, ...}`` → ``"CIFAR-100 0.77 · Tiny 0.85 · mini 0.55"``."""
    names = {"cifar100": "CIFAR-100", "tiny_imagenet": "Tiny", "mini_imagenet": "mini", "imagenet": "IN-1k",
             "unspecified": "paper"}
    return " · ".join(f"{names.get(k, k)} {v:.3g}" for k, v in values.items()) or "—"


def datasets(entries: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({r["dataset"] for r in entries})
