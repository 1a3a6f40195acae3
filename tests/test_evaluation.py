"""Tests for repalign.evaluation: kNN, linear probe, few-shot NCC, CDNV, feature extraction."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from repalign.evaluation import (
    FeatureCache,
    cdnv,
    cdnv_matrices,
    directional_cdnv,
    extract_features,
    fewshot_ncc,
    knn_accuracy,
    knn_predict,
    linear_probe,
)
from repalign.seeding import derive_seed, generator


# ----------------------------------------------------------------------------------------------
# synthetic data
# ----------------------------------------------------------------------------------------------
def gaussian_clusters(num_classes=10, per_class=60, dim=16, sep=4.0, noise=1.0, seed=0, key="train",
                      dtype=torch.float32):
    """Class means ~ N(0, sep²/dim·I)·√dim-ish far apart; rows = mean + noise·N(0, I)."""
    g = generator(seed, "clusters", "means")
    means = torch.randn(num_classes, dim, generator=g, dtype=torch.float64) * sep
    g2 = generator(seed, "clusters", key)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    x = means[y] + noise * torch.randn(y.numel(), dim, generator=g2, dtype=torch.float64)
    return x.to(dtype), y


def shuffled(y, seed):
    return y[torch.randperm(y.numel(), generator=generator(seed, "shuffle"))]


@pytest.fixture(scope="module")
def clusters():
    xtr, ytr = gaussian_clusters(key="train", per_class=60)
    xte, yte = gaussian_clusters(key="test", per_class=100)
    return xtr, ytr, xte, yte


# ----------------------------------------------------------------------------------------------
# separable clusters → ~100 %; labels independent of features → ~chance
# ----------------------------------------------------------------------------------------------
def test_separable_clusters_high_accuracy(clusters):
    xtr, ytr, xte, yte = clusters
    assert knn_accuracy(xtr, ytr, xte, yte, k=20) >= 0.95
    probe = linear_probe(xtr, ytr, xte, yte, epochs=100, seed=0)
    assert probe["train_acc"] >= 0.95 and probe["test_acc"] >= 0.95
    fs = fewshot_ncc(xtr, ytr, xte, yte, shots=(1, 5, 10), episodes=3, seed=0)
    for m in (1, 5, 10):
        assert fs[m][0] >= 0.95


def test_shuffled_labels_near_chance(clusters):
    xtr, ytr, xte, yte = clusters
    C = 10
    ytr_s, yte_s = shuffled(ytr, 1), shuffled(yte, 2)
    n_test = yte.numel()
    std = math.sqrt((1 / C) * (1 - 1 / C) / n_test)  # binomial std of a chance classifier (0.0095)
    tol = 5 * std
    assert abs(knn_accuracy(xtr, ytr_s, xte, yte_s, k=20) - 1 / C) < tol
    assert abs(linear_probe(xtr, ytr_s, xte, yte_s, epochs=100)["test_acc"] - 1 / C) < tol
    fs = fewshot_ncc(xtr, ytr_s, xte, yte_s, shots=(5,), episodes=5, seed=0)
    assert abs(fs[5][0] - 1 / C) < tol


# ----------------------------------------------------------------------------------------------
# kNN vs naive reference
# ----------------------------------------------------------------------------------------------
def naive_knn(train_x, train_y, test_x, k, T, C, exclude_self=False):
    preds = []
    for i in range(test_x.shape[0]):
        q = test_x[i]
        sims = []
        for n in range(train_x.shape[0]):
            if exclude_self and n == i:
                continue
            t = train_x[n]
            s = float(q @ t) / (float(q.norm()) * float(t.norm()))
            sims.append((s, n))
        sims.sort(key=lambda p: -p[0])
        votes = [0.0] * C
        for s, n in sims[:k]:
            votes[int(train_y[n])] += math.exp(s / T)
        preds.append(max(range(C), key=lambda c: (votes[c], -c)))
    return torch.tensor(preds)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_matches_naive_reference(exclude_self):
    g = generator(0, "test", "knn", int(exclude_self))
    C = 4
    train_x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    train_y = torch.randint(0, C, (60,), generator=g)
    if exclude_self:
        test_x, test_y = train_x, train_y
    else:
        test_x = torch.randn(25, 5, generator=g, dtype=torch.float64)
        test_y = torch.randint(0, C, (25,), generator=g)
    for k, T in [(1, 0.07), (7, 0.07), (15, 0.5)]:
        ref = naive_knn(train_x, train_y, test_x, k, T, C, exclude_self)
        got = knn_predict(train_x, train_y, test_x, k=k, temperature=T, chunk=7, exclude_self=exclude_self)
        assert torch.equal(got, ref), (k, T)
        acc = knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=T, chunk=3,
                           exclude_self=exclude_self)
        assert acc == pytest.approx(float((ref == test_y).double().mean()))
    # leave-one-out on duplicated points must not look at itself: with exclude_self, k=1 on a set
    # where every point has a twin of the same class gives 100 %.
    if exclude_self:
        x2 = torch.cat([train_x, train_x])
        y2 = torch.cat([train_y, train_y])
        assert knn_accuracy(x2, y2, x2, y2, k=1, exclude_self=True) == 1.0


# ----------------------------------------------------------------------------------------------
# CDNV
# ----------------------------------------------------------------------------------------------
def naive_cdnv(x, y):
    """Double loop over ordered class pairs; returns (cdnv, directional, V dict, Vd dict)."""
    x = x.double()
    classes = sorted(set(y.tolist()))
    mu = {c: x[y == c].mean(0) for c in classes}
    var = {c: ((x[y == c] - mu[c]) ** 2).sum(1).mean() for c in classes}
    V, Vd = {}, {}
    for i in classes:
        for j in classes:
            if i == j:
                continue
            diff = mu[i] - mu[j]
            dist2 = float(diff @ diff)
            u = diff / diff.norm()
            proj = (x[y == i] - mu[i]) @ u
            sigma_ij = float(proj.var(unbiased=False))
            V[i, j] = float(var[i]) / dist2
            Vd[i, j] = sigma_ij / dist2
    return sum(V.values()) / len(V), sum(Vd.values()) / len(Vd), V, Vd


def test_cdnv_matches_naive_reference():
    g = generator(0, "test", "cdnv")
    labels_pool = torch.tensor([3, 7, 11, -2, 5])
    sizes = [1, 4, 9, 13, 20]  # includes a singleton class
    y = torch.cat([labels_pool[i].repeat(s) for i, s in enumerate(sizes)])
    perm = torch.randperm(y.numel(), generator=g)
    y = y[perm]
    scale = torch.rand(6, generator=g, dtype=torch.float64) * 3  # anisotropic noise
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)[torch.searchsorted(labels_pool.sort().values,
                                                                               y)]
    x = x + 0.5 * torch.randn(y.numel(), 6, generator=g, dtype=torch.float64) * scale
    ref_v, ref_vd, V, Vd = naive_cdnv(x, y)
    assert cdnv(x, y) == pytest.approx(ref_v, rel=1e-10)
    assert directional_cdnv(x, y) == pytest.approx(ref_vd, rel=1e-10)
    mats = cdnv_matrices(x, y)
    cls = mats["classes"].tolist()
    assert cls == sorted(labels_pool.tolist())
    for a, i in enumerate(cls):
        for b, j in enumerate(cls):
            if i != j:
                assert float(mats["cdnv"][a, b]) == pytest.approx(V[i, j], rel=1e-10)
                assert float(mats["directional_cdnv"][a, b]) == pytest.approx(Vd[i, j], rel=1e-10)
    # float32 input gives the same (computed in float64)
    assert cdnv(x.float(), y) == pytest.approx(ref_v, rel=1e-5)
    # plain CDNV over ordered pairs == symmetric form over unordered pairs
    sym = [(float(mats["sigma2"][a]) + float(mats["sigma2"][b])) / (2 * float(mats["sqdist"][a, b]))
           for a in range(5) for b in range(a + 1, 5)]
    assert cdnv(x, y) == pytest.approx(sum(sym) / len(sym), rel=1e-10)


def test_cdnv_shrinks_with_cluster_noise():
    vals, dvals = [], []
    for noise in (1.0, 0.1, 0.01):
        x, y = gaussian_clusters(num_classes=6, per_class=30, dim=8, noise=noise, seed=3)
        vals.append(cdnv(x, y))
        dvals.append(directional_cdnv(x, y))
    assert vals[0] > vals[1] > vals[2]
    assert dvals[0] > dvals[1] > dvals[2]
    assert vals[2] < 1e-3 and dvals[2] < 1e-3


@pytest.mark.parametrize("seed", range(4))
def test_directional_cdnv_le_cdnv(seed):
    g = generator(seed, "test", "dcdnv")
    C, d = 7, 12
    y = torch.randint(0, C, (300,), generator=g)
    y[:C] = torch.arange(C)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)  # correlated, anisotropic noise
    x = torch.randn(C, d, generator=g, dtype=torch.float64)[y] + torch.randn(300, d, generator=g,
                                                                             dtype=torch.float64) @ mix
    mats = cdnv_matrices(x, y)
    assert bool((mats["directional_cdnv"] <= mats["cdnv"] + 1e-12).all())
    assert directional_cdnv(x, y) <= cdnv(x, y)


def test_cdnv_coincident_means_raise_naming_classes():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [5.0, 5.0], [6.0, 5.0]])
    y = torch.tensor([5, 5, 9, 9, 2, 2])
    for fn in (cdnv, directional_cdnv):
        with pytest.raises(ValueError, match=r"classes 5 and 9"):
            fn(x, y)


# ----------------------------------------------------------------------------------------------
# few-shot
# ----------------------------------------------------------------------------------------------
def test_fewshot_deterministic_and_follows_seed_contract():
    xtr, ytr = gaussian_clusters(num_classes=5, per_class=20, dim=6, sep=1.0, noise=1.0, seed=5, key="tr")
    xte, yte = gaussian_clusters(num_classes=5, per_class=40, dim=6, sep=1.0, noise=1.0, seed=5, key="te")
    a = fewshot_ncc(xtr, ytr, xte, yte, shots=(1, 2, 20), episodes=4, seed=11)
    b = fewshot_ncc(xtr, ytr, xte, yte, shots=(1, 2, 20), episodes=4, seed=11)
    assert a == b
    assert set(a) == {1, 2, 20}
    for m, (mean, std) in a.items():
        assert 0.0 <= mean <= 1.0 and std >= 0.0
    assert a[1][1] > 0  # noisy 1-shot episodes differ
    assert a[20][1] == 0.0  # all 20 samples of every class: every episode identical
    c = fewshot_ncc(xtr, ytr, xte, yte, shots=(1,), episodes=4, seed=12)
    assert c[1] != a[1]
    # reference: episode e of m draws randperm(n_c, generator(seed, "fewshot", m, e))[:m] per class
    m, seed, accs = 2, 11, []
    for e in range(4):
        g = torch.Generator().manual_seed(derive_seed(seed, "fewshot", m, e))
        centres = []
        for cls in range(5):
            rows = (ytr == cls).nonzero().squeeze(1)
            centres.append(xtr[rows[torch.randperm(rows.numel(), generator=g)[:m]]].mean(0))
        centres = torch.stack(centres)
        pred = torch.cdist(xte, centres).argmin(1)
        accs.append(float((pred == yte).double().mean()))
    mean = sum(accs) / 4
    std = math.sqrt(sum((q - mean) ** 2 for q in accs) / 3)
    assert a[2][0] == pytest.approx(mean, abs=1e-12)
    assert a[2][1] == pytest.approx(std, abs=1e-12)
    # single episode → std 0.0 (not NaN)
    assert fewshot_ncc(xtr, ytr, xte, yte, shots=(1,), episodes=1)[1][1] == 0.0


def test_fewshot_shots_exceeding_smallest_class_raise():
    xtr, ytr = gaussian_clusters(num_classes=3, per_class=5, dim=4)
    ytr = ytr.clone()
    ytr[0] = 1  # class 0 now has 4 samples
    with pytest.raises(ValueError, match="smallest"):
        fewshot_ncc(xtr, ytr, xtr, ytr, shots=(1, 5))
    fewshot_ncc(xtr, ytr, xtr, ytr, shots=(4,))  # exactly the minimum is fine


# ----------------------------------------------------------------------------------------------
# linear probe
# ----------------------------------------------------------------------------------------------
def test_probe_deterministic_and_options(clusters):
    xtr, ytr, xte, yte = clusters
    a = linear_probe(xtr, ytr, xte, yte, epochs=30, seed=3)
    b = linear_probe(xtr, ytr, xte, yte, epochs=30, seed=3)
    assert a == b
    assert set(a) >= {"train_acc", "test_acc"}
    mb = linear_probe(xtr, ytr, xte, yte, epochs=10, batch_size=64, seed=3, bias=True, weight_decay=1e-4)
    assert mb == linear_probe(xtr, ytr, xte, yte, epochs=10, batch_size=64, seed=3, bias=True,
                              weight_decay=1e-4)
    assert mb["test_acc"] >= 0.95
    raw = linear_probe(xtr, ytr, xte, yte, epochs=100, lr=3e-3, standardize=False)
    assert raw["test_acc"] >= 0.95


# ----------------------------------------------------------------------------------------------
# feature extraction
# ----------------------------------------------------------------------------------------------
class Dummy(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.scale = scale
        self.calls = 0
        self.modes = []

    def forward(self, x):
        self.calls += 1
        self.modes.append((self.training, torch.is_grad_enabled()))
        flat = x.reshape(x.shape[0], -1)
        h = flat[:, :3] * self.scale
        z = self.bn(self.lin(h))
        return h, z


def make_loader(with_indices=True, n_batches=4, bs=5):
    g = generator(0, "test", "loader")
    perm = torch.randperm(n_batches * bs, generator=g)
    imgs = torch.randn(n_batches * bs, 1, 1, 3, generator=g)
    labels = torch.randint(0, 3, (n_batches * bs,), generator=g)
    batches = []
    for i in range(n_batches):
        idx = perm[i * bs:(i + 1) * bs]
        b = (imgs[idx], labels[idx], idx) if with_indices else (imgs[idx], labels[idx])
        batches.append(b)
    return batches, imgs, labels, perm


def test_extract_features_one_pass_order_and_modes():
    batches, imgs, labels, perm = make_loader()
    m1, m2 = Dummy(1.0), Dummy(2.0)
    m1.train()
    m1.bn.eval()  # a submodule frozen by the caller must stay frozen
    m2.eval()
    feats, labs, idx = extract_features({"a": m1, "b": m2}, batches, layers=("h", "z"), return_indices=True)
    assert m1.calls == 4 and m2.calls == 4  # one forward per batch per model
    assert all(mode == (False, False) for mode in m1.modes + m2.modes)  # eval, no_grad
    assert m1.training and not m1.bn.training and m1.lin.training
    assert not m2.training
    assert torch.equal(idx, perm)
    assert torch.equal(labs, labels[perm])
    flat = imgs[perm].reshape(20, 3)
    assert torch.allclose(feats["a"]["h"], flat)
    assert torch.allclose(feats["b"]["h"], 2 * flat)
    m2.calls = 0
    with torch.no_grad():
        z_ref = m2(imgs[perm])[1]
    assert torch.allclose(feats["b"]["z"], z_ref)
    assert feats["a"]["z"].shape == (20, 4) and not feats["a"]["z"].requires_grad

    batches2, *_ = make_loader(with_indices=False)
    feats2, labs2 = extract_features({"a": m1}, batches2)
    assert set(feats2["a"]) == {"h"} and torch.equal(labs2, labs)


def test_extract_features_amp_returns_float32():
    batches, imgs, labels, perm = make_loader()
    m = Dummy(1.0).eval()
    feats, labs = extract_features({"m": m}, batches, layers=("z", "h"), amp=True)
    assert feats["m"]["z"].dtype == torch.float32 and feats["m"]["z"].shape == (20, 4)
    assert m.calls == 4 and torch.equal(labs, labels[perm])


def test_extract_features_restores_mode_on_error():
    class Broken(nn.Module):
        def forward(self, x):
            return x  # not (h, z)

    m = Broken().train()
    batches, *_ = make_loader()
    with pytest.raises(ValueError, match="must return"):
        extract_features({"m": m}, batches)
    assert m.training


def test_feature_cache():
    cache = FeatureCache(max_entries=2)
    calls = []
    f = lambda v: (lambda: calls.append(v) or v)  # noqa: E731
    assert cache.get_or_compute("ck1", "test", f(1)) == 1
    assert cache.get_or_compute("ck1", "test", f(99)) == 1
    cache.put("ck2", "test", 2)
    cache.put("ck3", "test", 3)  # evicts ck1
    assert ("ck1", "test") not in cache and cache.get("ck3", "test") == 3 and len(cache) == 2
    assert calls == [1]


# ----------------------------------------------------------------------------------------------
# bad input → ValueError
# ----------------------------------------------------------------------------------------------
_X = torch.randn(12, 3)
_Y = torch.arange(3).repeat(4)
_NAN = _X.clone()
_NAN[0, 0] = float("nan")
_INF = _X.clone()
_INF[1, 1] = float("inf")

BAD = {
    "knn_shape_mismatch": lambda: knn_accuracy(_X, _Y[:-1], _X, _Y),
    "knn_dim_mismatch": lambda: knn_accuracy(_X, _Y, _X[:, :2], _Y),
    "knn_nan": lambda: knn_accuracy(_NAN, _Y, _X, _Y),
    "knn_inf_test": lambda: knn_accuracy(_X, _Y, _INF, _Y),
    "knn_k0": lambda: knn_accuracy(_X, _Y, _X, _Y, k=0),
    "knn_k_neg": lambda: knn_accuracy(_X, _Y, _X, _Y, k=-3),
    "knn_k_too_big": lambda: knn_accuracy(_X, _Y, _X, _Y, k=13),
    "knn_k_too_big_loo": lambda: knn_accuracy(_X, _Y, _X, _Y, k=12, exclude_self=True),
    "knn_temp": lambda: knn_accuracy(_X, _Y, _X, _Y, k=3, temperature=0.0),
    "knn_chunk": lambda: knn_accuracy(_X, _Y, _X, _Y, k=3, chunk=0),
    "knn_float_labels": lambda: knn_accuracy(_X, _Y.float(), _X, _Y, k=3),
    "knn_neg_labels": lambda: knn_accuracy(_X, _Y - 1, _X, _Y, k=3),
    "knn_num_classes": lambda: knn_accuracy(_X, _Y, _X, _Y, k=3, num_classes=2),
    "knn_1d_x": lambda: knn_accuracy(_X[:, 0], _Y, _X, _Y, k=3),
    "knn_empty": lambda: knn_accuracy(_X[:0], _Y[:0], _X, _Y, k=3),
    "knn_loo_size": lambda: knn_accuracy(_X, _Y, _X[:5], _Y[:5], k=3, exclude_self=True),
    "knn_not_tensor": lambda: knn_accuracy(_X.numpy(), _Y, _X, _Y, k=3),
    "probe_shape": lambda: linear_probe(_X, _Y, _X, _Y[:3]),
    "probe_nan": lambda: linear_probe(_X, _Y, _NAN, _Y),
    "probe_epochs": lambda: linear_probe(_X, _Y, _X, _Y, epochs=0),
    "probe_lr": lambda: linear_probe(_X, _Y, _X, _Y, lr=-1.0),
    "probe_wd": lambda: linear_probe(_X, _Y, _X, _Y, weight_decay=-0.1),
    "probe_bs": lambda: linear_probe(_X, _Y, _X, _Y, batch_size=0),
    "probe_one_class": lambda: linear_probe(_X, torch.zeros(12, dtype=torch.long), _X,
                                            torch.zeros(12, dtype=torch.long)),
    "probe_dim": lambda: linear_probe(_X, _Y, _X[:, :1], _Y),
    "fewshot_shots_too_big": lambda: fewshot_ncc(_X, _Y, _X, _Y, shots=(5,)),
    "fewshot_shots_zero": lambda: fewshot_ncc(_X, _Y, _X, _Y, shots=(0,)),
    "fewshot_episodes": lambda: fewshot_ncc(_X, _Y, _X, _Y, shots=(1,), episodes=0),
    "fewshot_unknown_test_class": lambda: fewshot_ncc(_X, _Y, _X, _Y + 1, shots=(1,)),
    "fewshot_nan": lambda: fewshot_ncc(_NAN, _Y, _X, _Y, shots=(1,)),
    "fewshot_one_class": lambda: fewshot_ncc(_X, torch.zeros(12, dtype=torch.long), _X,
                                             torch.zeros(12, dtype=torch.long), shots=(1,)),
    "fewshot_dim": lambda: fewshot_ncc(_X, _Y, _X[:, :2], _Y, shots=(1,)),
    "cdnv_shape": lambda: cdnv(_X, _Y[:5]),
    "cdnv_nan": lambda: cdnv(_NAN, _Y),
    "cdnv_inf": lambda: directional_cdnv(_INF, _Y),
    "cdnv_one_class": lambda: cdnv(_X, torch.zeros(12, dtype=torch.long)),
    "cdnv_int_features": lambda: cdnv(torch.ones(12, 3, dtype=torch.long), _Y),
    "cdnv_2d_labels": lambda: directional_cdnv(_X, _Y.reshape(3, 4)),
    "extract_bad_layer": lambda: extract_features({"a": Dummy(1.0)}, make_loader()[0], layers=("q",)),
    "extract_no_models": lambda: extract_features({}, make_loader()[0]),
    "extract_not_module": lambda: extract_features({"a": lambda x: x}, make_loader()[0]),
    "extract_empty_loader": lambda: extract_features({"a": Dummy(1.0)}, []),
    "extract_bad_batch": lambda: extract_features({"a": Dummy(1.0)}, [(torch.randn(2, 3),)]),
    "cache_size": lambda: FeatureCache(max_entries=0),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_inputs_raise_value_error(name):
    with pytest.raises(ValueError):
        BAD[name]()


def test_resolve_num_classes():
    from repalign.evaluation.knn import resolve_num_classes

    y = torch.tensor([0, 2, 1])
    assert resolve_num_classes(None, y) == 3
    assert resolve_num_classes(5, y, torch.tensor([4])) == 5
    with pytest.raises(ValueError, match="num_classes=2"):
        resolve_num_classes(2, y)
    with pytest.raises(ValueError, match="positive int"):
        resolve_num_classes(True, y)
