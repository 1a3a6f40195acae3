"""CKA: published values, feature-space vs N×N forms, streaming, invariances, degenerate/bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from repalign.metrics import (MinibatchCKA, StreamingLinearCKA, cka_from_grams, linear_cka, rbf_cka,
                              unbiased_hsic)


# ---------------------------------------------------------------------------------------------
# naive references: Kornblith et al.'s demo notebook functions, verbatim in numpy (N×N forms)
# ---------------------------------------------------------------------------------------------
def ref_gram_linear(x):
    return x.dot(x.T)


def ref_gram_rbf(x, threshold=1.0):
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold ** 2 * sq_median_distance))


def ref_center_gram(gram, unbiased=False):
    gram = gram.copy()
    if unbiased:
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0, dtype=np.float64)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def ref_cka(gram_x, gram_y, debiased=False):
    gram_x = ref_center_gram(gram_x, unbiased=debiased)
    gram_y = ref_center_gram(gram_y, unbiased=debiased)
    scaled_hsic = gram_x.ravel().dot(gram_y.ravel())
    return scaled_hsic / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


def ref_hsic1(K, L):
    """Song et al. unbiased HSIC, written out term by term."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + one @ Kt @ one * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ Kt @ Lt @ one) / (n * (n - 3))


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.fixture(params=[0, 12, 10**9], ids=["scipy-blas", "mixed", "torch-mm"])
def blas_threshold(request, monkeypatch):
    """Exercise both accumulation back-ends (scipy dsyrk/dgemm and torch matmul) on small inputs."""
    import importlib
    monkeypatch.setattr(importlib.import_module("repalign.metrics.moments"), "_BLAS_MIN_DIM", request.param)
    return request.param


@pytest.fixture(scope="module")
def kornblith_demo():
    np.random.seed(1337)
    X = np.random.randn(100, 10)
    Y = np.random.randn(100, 10) + X
    return X, Y


# ---------------------------------------------------------------------------------------------
def test_published_demo_values(kornblith_demo):
    X, Y = kornblith_demo
    assert round(linear_cka(t(X), t(Y)), 5) == 0.55761
    assert round(linear_cka(t(X), t(Y), debiased=True), 5) == 0.51346
    assert round(rbf_cka(t(X), t(Y), sigma=0.5), 5) == 0.65483
    # and agreement with the verbatim reference to float64 precision
    assert linear_cka(t(X), t(Y)) == pytest.approx(ref_cka(ref_gram_linear(X), ref_gram_linear(Y)), abs=1e-12)
    assert rbf_cka(t(X), t(Y), 0.5, debiased=True) == pytest.approx(
        ref_cka(ref_gram_rbf(X, 0.5), ref_gram_rbf(Y, 0.5), debiased=True), abs=1e-12)


@pytest.mark.parametrize("shape", [(60, 7, 11), (40, 90, 3), (5, 2, 3)])
@pytest.mark.parametrize("method", ["features", "gram", "auto"])
def test_feature_space_equals_gram_form(shape, method, blas_threshold):
    n, d1, d2 = shape
    rng = np.random.default_rng(n + d1)
    X = rng.standard_normal((n, d1)) * rng.uniform(0.1, 5, d1) + 3.0
    Y = X[:, :1] * rng.standard_normal((1, d2)) + rng.standard_normal((n, d2))
    for deb in (False, True):
        if deb and n < 4:
            continue
        ref = ref_cka(ref_gram_linear(X), ref_gram_linear(Y), debiased=deb)
        assert linear_cka(t(X), t(Y), deb, method=method, chunk_size=7) == pytest.approx(ref, abs=1e-10)
        # float32 inputs (cast per chunk to float64) agree to 1e-6
        assert linear_cka(t(X).float(), t(Y).float(), deb, method=method) == pytest.approx(ref, abs=1e-6)


def test_large_offset_is_handled_exactly(blas_threshold):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 8)) + 1e6
    Y = rng.standard_normal((500, 5)) + X[:, :5] - 1e6
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    for deb in (False, True):
        ref = ref_cka(ref_gram_linear(Xc), ref_gram_linear(Yc), deb)
        assert linear_cka(t(X), t(Y), deb) == pytest.approx(ref, abs=1e-9)
        s = StreamingLinearCKA(debiased=deb)
        for a in range(0, 500, 97):
            s.update(t(X[a:a + 97]), t(Y[a:a + 97]))
        assert s.compute() == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("rbf_sigma", [0.3, 0.8, 2.0])
def test_rbf_cka_matches_reference(rbf_sigma):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((51, 6))  # odd N² → plain median
    Y = np.tanh(X @ rng.standard_normal((6, 4))) + 0.3 * rng.standard_normal((51, 4))
    for deb in (False, True):
        ref = ref_cka(ref_gram_rbf(X, rbf_sigma), ref_gram_rbf(Y, rbf_sigma), deb)
        assert rbf_cka(t(X), t(Y), rbf_sigma, deb) == pytest.approx(ref, abs=1e-10)


def test_streaming_exact_equals_one_shot(blas_threshold):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((333, 12)).astype(np.float32) * 4 + 2
    Y = np.maximum(X @ rng.standard_normal((12, 20)).astype(np.float32), 0)
    s = StreamingLinearCKA()
    cuts = [0, 1, 5, 64, 200, 333]
    for a, b in zip(cuts[:-1], cuts[1:]):
        s.update(t(X[a:b]), t(Y[a:b]))
    res = s.result()
    assert res["n"] == 333
    assert res["linear_cka"] == pytest.approx(linear_cka(t(X), t(Y)), abs=1e-12)
    assert res["debiased_cka"] == pytest.approx(linear_cka(t(X), t(Y), debiased=True), abs=1e-12)
    assert s.compute(debiased=True) == res["debiased_cka"]
    s.reset()
    assert s.n == 0


def test_minibatch_cka_matches_reference():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((96, 9))
    Y = X @ rng.standard_normal((9, 4)) + rng.standard_normal((96, 4))
    m = MinibatchCKA()
    xy = xx = yy = 0.0
    for a in range(0, 96, 32):
        x, y = X[a:a + 32], Y[a:a + 32]
        m.update(t(x), t(y))
        K, L = ref_gram_linear(x), ref_gram_linear(y)
        assert float(unbiased_hsic(t(K), t(L))) == pytest.approx(ref_hsic1(K, L), rel=1e-10)
        xy, xx, yy = xy + ref_hsic1(K, L), xx + ref_hsic1(K, K), yy + ref_hsic1(L, L)
    assert m.compute() == pytest.approx(xy / np.sqrt(xx * yy), abs=1e-12)
    # with one batch it is exactly debiased CKA of that batch
    one = MinibatchCKA().update(t(X), t(Y)).compute()
    assert one == pytest.approx(ref_cka(ref_gram_linear(X), ref_gram_linear(Y), debiased=True), abs=1e-12)


def test_cka_from_grams_matches_reference():
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((30, 4)), rng.standard_normal((30, 6))
    K, L = ref_gram_rbf(X), ref_gram_linear(Y)
    for deb in (False, True):
        assert cka_from_grams(t(K), t(L), deb) == pytest.approx(ref_cka(K, L, deb), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------
def _data(seed, n, d1, d2):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d1, generator=g, dtype=torch.float64) * (1 + 3 * torch.rand(d1, generator=g, dtype=torch.float64))
    Y = X @ torch.randn(d1, d2, generator=g, dtype=torch.float64) + torch.randn(n, d2, generator=g, dtype=torch.float64)
    return X, Y, g


_props = settings(max_examples=25, deadline=None)
_seeds = st.integers(0, 2**31 - 1)


@_props
@given(seed=_seeds, n=st.integers(6, 40), d1=st.integers(1, 12), d2=st.integers(1, 12),
       deb=st.booleans(), scale=st.floats(1e-3, 1e3), shift=st.floats(-100, 100))
def test_cka_invariances(seed, n, d1, d2, deb, scale, shift):
    X, Y, g = _data(seed, n, d1, d2)
    base = linear_cka(X, Y, deb)
    Q, _ = torch.linalg.qr(torch.randn(d1, d1, generator=g, dtype=torch.float64))
    assert linear_cka(X @ Q, Y, deb) == pytest.approx(base, abs=1e-9)           # orthogonal
    assert linear_cka(X * scale, Y, deb) == pytest.approx(base, abs=1e-9)       # isotropic scaling
    assert linear_cka(X + shift, Y - shift, deb) == pytest.approx(base, abs=1e-9)  # translation
    assert linear_cka(Y, X, deb) == pytest.approx(base, abs=1e-12)              # symmetry
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert 0.0 <= base <= 1.0 or deb


@_props
@given(seed=_seeds, n=st.integers(30, 60), d=st.integers(3, 8))
def test_cka_not_invariant_to_anisotropic_maps(seed, n, d):
    X, _, g = _data(seed, n, d, 1)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.tensor([30.0] + [1.0] * (d - 1), dtype=torch.float64)) @ Q.T  # invertible
    assert linear_cka(X @ A, X) < 1.0 - 1e-3
    assert linear_cka(X @ A, X, debiased=True) < 1.0 - 1e-3


# ---------------------------------------------------------------------------------------------
# degenerate and bad inputs
# ---------------------------------------------------------------------------------------------
def test_constant_features_convention():
    X = torch.randn(20, 5, dtype=torch.float64)
    C = torch.full((20, 3), 0.1, dtype=torch.float64)  # 0.1 is inexact: its float64 mean is not 0.1
    C2 = torch.ones(20, 7)
    for deb in (False, True):
        assert linear_cka(X, C, deb) == 0.0 and linear_cka(C, X, deb) == 0.0
        assert linear_cka(C, C2, deb) == 1.0
        for meth in ("features", "gram"):
            assert linear_cka(C, X, deb, method=meth) == 0.0 and linear_cka(C, C2, deb, method=meth) == 1.0
    assert rbf_cka(X, C) == 0.0 and rbf_cka(C, C2) == 1.0
    s = StreamingLinearCKA()
    s.update(C[:7], X[:7]).update(C[7:], X[7:])
    assert s.compute() == 0.0
    m = MinibatchCKA().update(C[:10], C2[:10]).update(C[10:], C2[10:])
    assert m.compute() == 1.0
    # zero rows / all-zero matrix count as constant too; nothing returns NaN
    Z = torch.zeros(20, 4)
    assert linear_cka(Z, X) == 0.0 and linear_cka(Z, Z, True) == 1.0


def test_rbf_median_zero_fallback_is_finite():
    X = torch.zeros(9, 2, dtype=torch.float64)
    X[0, 0] = 1.0  # > half of the pairwise distances are 0
    Y = torch.randn(9, 3, dtype=torch.float64)
    v = rbf_cka(X, Y)
    assert np.isfinite(v) and 0.0 <= v <= 1.0


@pytest.mark.parametrize("call", [
    lambda: linear_cka(torch.randn(10, 3), torch.randn(11, 3)),                  # N mismatch
    lambda: linear_cka(torch.randn(3, 3), torch.randn(3, 3), debiased=True),    # N < 4 for debiased
    lambda: linear_cka(torch.randn(1, 3), torch.randn(1, 3)),                   # N < 2
    lambda: linear_cka(torch.randn(10), torch.randn(10)),                       # ndim
    lambda: linear_cka(torch.randn(10, 3, 2), torch.randn(10, 3)),              # ndim
    lambda: linear_cka(torch.tensor([[0.0, 1.0], [float("nan"), 2.0], [1.0, 1.0]]), torch.randn(3, 2)),
    lambda: linear_cka(torch.randn(3, 2), torch.tensor([[0.0, 1.0], [float("inf"), 2.0], [1.0, 1.0]])),
    lambda: linear_cka(torch.randn(5, 0), torch.randn(5, 2)),                   # empty
    lambda: linear_cka([[1.0, 2.0]], torch.randn(1, 2)),                        # not a tensor
    lambda: linear_cka(torch.randn(5, 2), torch.randn(5, 2), method="magic"),
    lambda: linear_cka(torch.randn(5, 2), torch.randn(5, 2), chunk_size=0),
    lambda: rbf_cka(torch.randn(5, 2), torch.randn(5, 2), sigma=0.0),
    lambda: rbf_cka(torch.randn(5, 2), torch.randn(5, 2), sigma=float("nan")),
    lambda: rbf_cka(torch.randn(3, 2), torch.randn(3, 2), debiased=True),
    lambda: cka_from_grams(torch.randn(4, 3), torch.randn(4, 3)),
    lambda: StreamingLinearCKA().compute(),
    lambda: StreamingLinearCKA().update(torch.randn(4, 2), torch.randn(4, 3)).update(torch.randn(4, 3), torch.randn(4, 3)),
    lambda: StreamingLinearCKA(debiased=True).update(torch.randn(3, 2), torch.randn(3, 3)).compute(),
    lambda: MinibatchCKA().update(torch.randn(3, 2), torch.randn(3, 2)),
    lambda: MinibatchCKA().compute(),
    lambda: unbiased_hsic(torch.eye(3), torch.eye(3)),
])
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
