"""Moment engine (repalign.metrics.moments): every named statistic equals its N×N definition on both
paths (feature space, Gram) and both accumulation back-ends; the public finalisers built on it."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from repalign.metrics import linear_cka, rsa
from repalign.metrics.cka import cka_from_stats, debiased_hsic
from repalign.metrics.moments import (CrossMoments, CrossStats, SideMoments, SideStats, feed, gram_stats,
                                      pair_stats, ratio)
from repalign.metrics.rsa import pearson_from_stats


def _transform(X: np.ndarray, mode: str) -> np.ndarray:
    if mode == "center":
        return X - X.mean(axis=0)
    if mode == "correlation":
        X = X - X.mean(axis=1, keepdims=True)
    nrm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(nrm > 0, nrm, 1.0)


def _reference(X: np.ndarray, Y: np.ndarray, mode: str) -> tuple[dict, dict, dict]:
    """The named statistics straight from their definitions, with N×N Grams."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = (_transform(Z, mode) @ _transform(Z, mode).T for Z in (X, Y))
    Kc, Lc = H @ K @ H, H @ L @ H

    def side(G, Gc):
        return {"centred_frob_sq": (Gc * Gc).sum(), "centred_trace": np.trace(Gc),
                "centred_diag_sq": (np.diag(Gc) ** 2).sum(), "frob_sq": (G * G).sum(), "trace": np.trace(G),
                "diag_sq": (np.diag(G) ** 2).sum(), "total": G.sum()}

    cross = {"centred_inner": (Kc * Lc).sum(), "centred_diag_inner": (np.diag(Kc) * np.diag(Lc)).sum(),
             "inner": (K * L).sum(), "diag_inner": (np.diag(K) * np.diag(L)).sum()}
    return side(K, Kc), side(L, Lc), cross


@pytest.fixture(params=[0, 10**9], ids=["scipy-blas", "torch-mm"])
def backend(request, monkeypatch):
    monkeypatch.setattr(importlib.import_module("repalign.metrics.moments"), "_BLAS_MIN_DIM", request.param)


@pytest.mark.parametrize("mode", ["center", "cosine", "correlation"])
@pytest.mark.parametrize("method", ["features", "gram"])
def test_named_statistics_match_their_definitions(mode, method, backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(23, 5)) + 3.0
    Y = X[:, :3] @ rng.normal(size=(3, 4)) + 0.5 * rng.normal(size=(23, 4))
    sx, sy, xy = pair_stats(torch.from_numpy(X), torch.from_numpy(Y), mode, method, chunk_size=7)
    rx, ry, rxy = _reference(X, Y, mode)
    assert isinstance(sx, SideStats) and isinstance(xy, CrossStats) and sx.n == 23
    for got, want in ((sx, rx), (sy, ry), (xy, rxy)):
        for name, value in want.items():
            v = getattr(got, name)
            if mode == "center" and name in ("frob_sq", "trace", "diag_sq", "total", "inner", "diag_inner"):
                assert v is None, name
            else:
                assert v == pytest.approx(value, rel=1e-9, abs=1e-9), name
    assert (sx.terms is None) == (method == "gram")


def test_streamed_moments_equal_one_pass_and_track_constant_sides():
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(40, 3, generator=g, dtype=torch.float64)
    whole = pair_stats(X, Y, "center", "features")
    sx, sy = SideMoments(6, X.device, "center", "X"), SideMoments(3, Y.device, "center", "Y")
    cr = CrossMoments(sx, sy)
    feed(sx, sy, cr, X, Y, rows=9)
    a, b = sx.stats(False), sy.stats(False)
    c = cr.stats(a, b, False)
    assert a.centred_frob_sq == pytest.approx(whole[0].centred_frob_sq, rel=1e-12)
    assert c.centred_inner == pytest.approx(whole[2].centred_inner, rel=1e-12)
    assert c.centred_diag_inner == pytest.approx(whole[2].centred_diag_inner, rel=1e-12)
    assert not a.constant
    const = pair_stats(torch.ones(8, 2), torch.randn(8, 2, generator=g), "center", "features")
    assert const[0].constant and not const[1].constant
    assert gram_stats(torch.ones(8, 2), torch.ones(8, 2), "center")[1].constant


def test_finalisers_equal_the_metric_functions():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(4, 5, generator=g, dtype=torch.float64) + torch.randn(30, 5, generator=g, dtype=torch.float64)
    sx, sy, xy = pair_stats(X, Y, "center")
    assert cka_from_stats(sx, sy, xy, False) == linear_cka(X, Y)
    assert cka_from_stats(sx, sy, xy, True) == linear_cka(X, Y, debiased=True)
    cx, cy, cxy = pair_stats(X, Y, "cosine")
    assert pearson_from_stats(cx, cy, cxy, 30) == rsa(X, Y).value
    n = 30
    assert debiased_hsic(2.0, 1.0, 3.0, 4.0, n) == pytest.approx(2.0 - n / (n - 2) + 12.0 / ((n - 1) * (n - 2)))


def test_ratio_conventions():
    assert ratio(0.0, 0.0, 0.0, True, True, clip=False) == 1.0
    assert ratio(5.0, 1.0, 1.0, True, False, clip=False) == 0.0
    assert ratio(1.0, -1.0, 1.0, False, False, clip=False) == 0.0
    assert ratio(1.0, float("inf"), 1.0, False, False, clip=False) == 0.0
    assert ratio(3.0, 4.0, 1.0, False, False, clip=False) == 1.5
    assert ratio(3.0, 4.0, 1.0, False, False, clip=True) == 1.0
    assert ratio(-3.0, 4.0, 1.0, False, False, clip=True) == 0.0
