"""RSA, similarity gap and representation angle against naive N×N references (scipy pdist / stats)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings, strategies as st
from scipy.spatial.distance import pdist

from repalign.metrics import (RSAResult, linear_cka, representation_angle, representation_metrics, rsa,
                              similarity_gap)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def naive_rsa(X, Y, rdm, corr):
    dx, dy = pdist(X, rdm), pdist(Y, rdm)
    f = scipy.stats.pearsonr if corr == "pearson" else scipy.stats.spearmanr
    return float(f(dx, dy)[0])


def naive_cos_sim(X):
    n = np.linalg.norm(X, axis=1, keepdims=True)
    U = np.where(n > 0, X / np.where(n > 0, n, 1), 0.0)
    return U @ U.T


def naive_gap(X, Y):
    SX, SY = naive_cos_sim(X), naive_cos_sim(Y)
    N = X.shape[0]
    H = np.eye(N) - 1.0 / N
    ab = np.linalg.norm(SX - SY)
    cab = np.linalg.norm(H @ (SX - SY) @ H)
    return {"abs": ab, "rel": ab / np.linalg.norm(SY), "rel_sym": ab / (0.5 * (np.linalg.norm(SX) + np.linalg.norm(SY))),
            "per_entry": ab / N, "centred_abs": cab, "centred_rel": cab / np.linalg.norm(H @ SY @ H)}


def naive_angle(X, Y, centred=True):
    SX, SY = naive_cos_sim(X), naive_cos_sim(Y)
    if centred:
        H = np.eye(len(X)) - 1.0 / len(X)
        SX, SY = H @ SX @ H, H @ SY @ H
    c = (SX * SY).sum() / (np.linalg.norm(SX) * np.linalg.norm(SY))
    return math.degrees(math.acos(min(1.0, c)))


@pytest.fixture(params=[0, 10**9], ids=["scipy-blas", "torch-mm"])
def blas_threshold(request, monkeypatch):
    import importlib
    monkeypatch.setattr(importlib.import_module("repalign.metrics.moments"), "_BLAS_MIN_DIM", request.param)
    return request.param


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((150, 12)) + np.linspace(0, 2, 12)
    Y = np.maximum(X @ rng.standard_normal((12, 9)), 0) + 0.5 * rng.standard_normal((150, 9))
    return X, Y


@pytest.mark.parametrize("rdm", ["cosine", "correlation", "euclidean"])
@pytest.mark.parametrize("corr", ["pearson", "spearman"])
def test_rsa_matches_naive(data, rdm, corr):
    X, Y = data
    ref = naive_rsa(X, Y, rdm, corr)
    for tile in (2048, 17):
        r = rsa(t(X), t(Y), rdm, corr, tile=tile)
        assert isinstance(r, RSAResult) and r.exact and r.stderr == 0.0 and r.n_pairs == 150 * 149 // 2
        assert r.value == pytest.approx(ref, abs=1e-9)
        assert float(r) == r.value
    # float32 inputs agree to 1e-6
    assert rsa(t(X).float(), t(Y).float(), rdm, corr).value == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("rdm", ["cosine", "correlation"])
def test_rsa_pearson_feature_backends(data, rdm, blas_threshold):
    X, Y = data
    assert rsa(t(X), t(Y), rdm, chunk_size=40).value == pytest.approx(naive_rsa(X, Y, rdm, "pearson"), abs=1e-10)


@pytest.mark.parametrize("rdm", ["cosine", "correlation"])
def test_rsa_pearson_gram_path(data, rdm):
    X, Y = data
    X, Y = X[:12], Y[:12]  # d > N: "auto" uses the N×N form
    ref = naive_rsa(X, Y, rdm, "pearson")
    for method in ("auto", "features", "gram"):
        assert rsa(t(X), t(Y), rdm, method=method).value == pytest.approx(ref, abs=1e-10)


def test_doubled_ranks_handle_ties(monkeypatch):
    import importlib
    rsa_mod = importlib.import_module("repalign.metrics.rsa")
    rng = np.random.default_rng(1)
    v = rng.integers(0, 50, size=5000).astype(np.float64)
    v[:7] = 1e9  # a tie group at the top, another spanning chunk boundaries below
    for chunk in (1 << 22, 64, 7):
        monkeypatch.setattr(rsa_mod, "_RANK_CHUNK", chunk)
        got = rsa_mod._doubled_ranks(t(v.copy()))
        assert got.dtype == torch.int32
        np.testing.assert_array_equal(got.numpy(), (2 * scipy.stats.rankdata(v)).astype(np.int64))


def test_spearman_with_exact_ties_matches_scipy():
    # integer features with integer column means: centred squared distances are exact integers, so
    # ties are exact for both implementations (many duplicated rows and repeated distances)
    rng = np.random.default_rng(2)
    base = rng.integers(0, 3, size=(40, 3)).astype(np.float64)
    Y0 = base + rng.integers(0, 2, size=base.shape)
    X = np.concatenate([base, -base, base, -base])  # column means exactly 0
    Y = np.concatenate([Y0, -Y0, Y0, -Y0])
    ref = naive_rsa(X, Y, "euclidean", "spearman")
    assert rsa(t(X), t(Y), "euclidean", "spearman", tile=13).value == pytest.approx(ref, abs=1e-12)


def test_spearman_subsampling_estimator(data):
    X, Y = data
    exact = rsa(t(X), t(Y), "cosine", "spearman").value
    r = rsa(t(X), t(Y), "cosine", "spearman", max_exact_n=100, n_pairs=20_000, seed=3)
    assert not r.exact and r.n_pairs == 20_000 and 0 < r.stderr < 0.05
    assert abs(r.value - exact) < 5 * r.stderr + 1e-3
    assert rsa(t(X), t(Y), "cosine", "spearman", max_exact_n=100, n_pairs=20_000, seed=3) == r  # seeded
    assert rsa(t(X), t(Y), "cosine", "spearman", max_exact_n=100, n_pairs=20_000, seed=4).value != r.value


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 30), d1=st.integers(1, 8), d2=st.integers(1, 8),
       rdm=st.sampled_from(["cosine", "correlation", "euclidean"]), corr=st.sampled_from(["pearson", "spearman"]))
def test_rsa_symmetric(seed, n, d1, d2, rdm, corr):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d1, generator=g, dtype=torch.float64)
    Y = torch.randn(n, d2, generator=g, dtype=torch.float64) + X[:, :1]
    a, b = rsa(X, Y, rdm, corr).value, rsa(Y, X, rdm, corr).value
    assert a == pytest.approx(b, abs=1e-12)
    assert math.isfinite(a) and -1 - 1e-12 <= a <= 1 + 1e-12
    assert rsa(X, X, rdm, corr).value == pytest.approx(1.0, abs=1e-9) or rsa(X, X, rdm, corr).value == 1.0


def test_rsa_degenerate_rdms():
    X = torch.randn(10, 4, dtype=torch.float64)
    C = torch.ones(10, 4, dtype=torch.float64) * torch.arange(1, 11, dtype=torch.float64)[:, None]  # all cos = 1
    for corr in ("pearson", "spearman"):
        assert rsa(C, X, "cosine", corr).value == 0.0
        assert rsa(C, 2 * C, "cosine", corr).value == 1.0
    S = torch.eye(5, dtype=torch.float64)  # all distances equal
    assert rsa(S, torch.randn(5, 3), "euclidean").value == 0.0
    assert rsa(S, 3 * S, "euclidean", "spearman").value == 1.0


# ---------------------------------------------------------------------------------------------
# similarity gap / angle
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["features", "gram"])
def test_similarity_gap_matches_naive(data, method, blas_threshold):
    X, Y = data
    Y = Y.copy()
    Y[3] = 0.0  # a zero row: cosine 0 with everything including itself
    got = similarity_gap(t(X), t(Y), method=method, chunk_size=16)
    ref = naive_gap(X, Y)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k
    assert got["n"] == 150
    assert similarity_gap(t(X).float(), t(Y).float())["abs"] == pytest.approx(ref["abs"], rel=1e-6)


def test_similarity_gap_identical_and_collapsed():
    X = torch.randn(30, 5, dtype=torch.float64)
    g = similarity_gap(X, 3 * X)
    assert g["abs"] == pytest.approx(0.0, abs=1e-6) and g["centred_rel"] == pytest.approx(0.0, abs=1e-6)
    Z = torch.zeros(30, 5)
    assert similarity_gap(X, Z)["rel"] == math.inf and similarity_gap(Z, Z)["rel"] == 0.0
    C = torch.ones(30, 2)
    assert similarity_gap(X, C)["centred_rel"] == math.inf and similarity_gap(C, 2 * C)["centred_rel"] == 0.0


def test_representation_angle(data):
    X, Y = data
    for centred in (True, False):
        assert representation_angle(t(X), t(Y), centred=centred) == pytest.approx(naive_angle(X, Y, centred), abs=1e-7)
    # arccos near 1 resolves ~sqrt(eps) rad ≈ 1e-6°
    assert representation_angle(t(X), t(X) * 5) == pytest.approx(0.0, abs=1e-4)
    assert representation_angle(t(X), t(X)) == pytest.approx(0.0, abs=1e-4)
    # = arccos of linear CKA on unit rows
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    V = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    assert math.cos(math.radians(representation_angle(t(X), t(Y)))) == pytest.approx(linear_cka(t(U), t(V)), abs=1e-10)
    C = torch.ones(20, 3)
    assert representation_angle(C, torch.randn(20, 3)) == 90.0 and representation_angle(C, 2 * C) == 0.0


def test_representation_metrics_consistent(data, blas_threshold):
    X, Y = t(data[0]), t(data[1])
    m = representation_metrics(X, Y)
    gap = similarity_gap(X, Y)
    assert m["linear_cka"] == pytest.approx(linear_cka(X, Y), abs=1e-12)
    assert m["debiased_cka"] == pytest.approx(linear_cka(X, Y, debiased=True), abs=1e-12)
    assert m["rsa"] == pytest.approx(rsa(X, Y).value, abs=1e-12)
    assert m["sim_gap"] == pytest.approx(gap["abs"]) and m["sim_gap_rel"] == pytest.approx(gap["rel"])
    assert m["sim_gap_per_entry"] == pytest.approx(gap["per_entry"])
    assert m["repr_angle_deg"] == pytest.approx(representation_angle(X, Y), abs=1e-9)


@pytest.mark.parametrize("call", [
    lambda: rsa(torch.randn(5, 2), torch.randn(5, 2), rdm="manhattan"),
    lambda: rsa(torch.randn(5, 2), torch.randn(5, 2), corr="kendall"),
    lambda: rsa(torch.randn(2, 2), torch.randn(2, 2)),                         # N < 3
    lambda: rsa(torch.randn(5, 2), torch.randn(6, 2)),
    lambda: rsa(torch.randn(5, 2), torch.randn(5, 2), corr="spearman", max_exact_n=10**6),
    lambda: rsa(torch.randn(5, 2), torch.randn(5, 2), n_pairs=0),
    lambda: rsa(torch.randn(5, 2), torch.randn(5, 2), tile=0),
    lambda: rsa(torch.randn(5, 2), torch.randn(5, 2), seed="a"),
    lambda: rsa(torch.full((5, 2), float("nan")), torch.randn(5, 2)),
    lambda: similarity_gap(torch.randn(5, 2), torch.randn(4, 2)),
    lambda: similarity_gap(torch.randn(1, 2), torch.randn(1, 2)),
    lambda: similarity_gap(torch.randn(5), torch.randn(5)),
    lambda: similarity_gap(torch.randn(5, 2), torch.tensor([[1.0, float("inf")]] * 5)),
    lambda: representation_angle(torch.randn(5, 2), torch.randn(5, 3, 1)),
    lambda: representation_metrics(torch.randn(5, 2), torch.randn(6, 2)),
])
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
