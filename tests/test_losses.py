"""Tests for repalign.losses against naive loop-based references written here."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from repalign.losses import (
    ContrastiveLoss,
    CrossEntropyLoss,
    ce_loss,
    contrastive_loss,
    contrastive_per_anchor,
    dcl_loss,
    loss_gap_bound,
    nscl_loss,
    ntxent_loss,
    supcon_loss,
)

# ----------------------------------------------------------------------------- naive references


def _sims(z, tau):
    """s[l1][i][l3][j] = cos(z[l1,i], z[l3,j]) / tau as python floats (float64)."""
    K, B, d = z.shape
    v = z.detach().to(torch.float64).tolist()
    norms = [[math.sqrt(sum(x * x for x in v[l][i])) for i in range(B)] for l in range(K)]

    def cos(l1, i, l3, j):
        return sum(a * b for a, b in zip(v[l1][i], v[l3][j])) / (norms[l1][i] * norms[l3][j])

    return [[[[cos(l1, i, l3, j) / tau for j in range(B)] for l3 in range(K)] for i in range(B)] for l1 in range(K)]


def ref_pair_loss(kind, z, labels, tau, include_positive=False):
    """Mean over ordered positive pairs (i, l1, l2 != l1) with explicit loops; empty → skipped."""
    K, B, _ = z.shape
    y = labels.tolist() if labels is not None else [0] * B
    s = _sims(z, tau)
    total, count = 0.0, 0
    for i in range(B):
        for l1 in range(K):
            for l2 in range(K):
                if l2 == l1:
                    continue
                pos = s[l1][i][l2][i]
                terms = []
                for j in range(B):
                    for l3 in range(K):
                        if kind == "ntxent":
                            keep = (j, l3) != (i, l1)
                        elif kind == "dcl":
                            keep = j != i
                        elif kind == "nscl":
                            keep = y[j] != y[i]
                        else:
                            raise AssertionError(kind)
                        if keep:
                            terms.append(math.exp(s[l1][i][l3][j]))
                if include_positive and kind in ("dcl", "nscl"):
                    terms.append(math.exp(pos))
                if not terms:
                    continue
                total += -pos + math.log(sum(terms))
                count += 1
    return total / count if count else 0.0


def ref_supcon(z, labels, tau):
    K, B, _ = z.shape
    y = labels.tolist()
    s = _sims(z, tau)
    total = 0.0
    for i in range(B):
        for l1 in range(K):
            den = math.log(
                sum(math.exp(s[l1][i][l3][j]) for j in range(B) for l3 in range(K) if (j, l3) != (i, l1))
            )
            P = [(j, l3) for j in range(B) for l3 in range(K) if (j, l3) != (i, l1) and y[j] == y[i]]
            total += -sum(s[l1][i][l3][j] - den for (j, l3) in P) / len(P)
    return total / (K * B)


def ref_ce(logits, labels):
    K, B, C = logits.shape
    x = logits.tolist()
    total = 0.0
    for l in range(K):
        for i in range(B):
            row = x[l][i]
            total += -row[int(labels[i])] + math.log(sum(math.exp(v) for v in row))
    return total / (K * B)


def lightly_style_ntxent(z, tau):
    """Second independent NT-Xent reference for K = 2: cross-entropy over the 2B×2B matrix."""
    _, B, _ = z.shape
    out = F.normalize(torch.cat([z[0], z[1]], dim=0), dim=1)
    logits = out @ out.T / tau
    logits = logits.masked_fill(torch.eye(2 * B, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(B) + B, torch.arange(B)])
    return F.cross_entropy(logits, targets)


def _batch(K, B, d, C, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(K, B, d, generator=g, dtype=dtype)
    labels = torch.randint(0, C, (B,), generator=g)
    if B >= 2 and C >= 2:
        labels[:2] = torch.tensor([0, 1])  # at least two classes
    return z, labels


# ----------------------------------------------------------------------------- agreement with references

TAUS = [0.07, 0.5, 1.0]


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize(
    "kind,include_positive",
    [("ntxent", False), ("dcl", False), ("dcl", True), ("nscl", False), ("nscl", True)],
)
def test_pair_losses_match_loop_reference(K, tau, kind, include_positive):
    z, labels = _batch(K, 6, 4, 3, seed=10 * K + int(100 * tau))
    got = contrastive_loss(kind, z, labels, tau, include_positive=include_positive)
    want = ref_pair_loss(kind, z, labels, tau, include_positive)
    assert got.dtype == torch.float64
    assert abs(got.item() - want) < 1e-5 * max(1.0, abs(want)), (got.item(), want)


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("tau", TAUS)
def test_supcon_matches_loop_reference(K, tau):
    z, labels = _batch(K, 7, 5, 3, seed=7 * K + int(100 * tau))
    got = supcon_loss(z, labels, tau)
    assert abs(got.item() - ref_supcon(z, labels, tau)) < 1e-5


@pytest.mark.parametrize("K", [2, 3])
def test_named_wrappers_and_aliases(K):
    z, labels = _batch(K, 5, 3, 2, seed=3)
    tau = 0.3
    assert torch.equal(ntxent_loss(z, None, tau), contrastive_loss("ntxent", z, labels, tau))
    assert torch.equal(dcl_loss(z, labels, tau), contrastive_loss("cl", z, labels, tau))
    assert torch.equal(dcl_loss(z, None, tau, include_positive=True), contrastive_loss("dcl", z, None, tau, True))
    assert torch.equal(nscl_loss(z, labels, tau, True), contrastive_loss("nscl", z, labels, tau, include_positive=True))
    assert torch.equal(supcon_loss(z, labels, tau), contrastive_loss("scl", z, labels, tau))
    assert torch.equal(supcon_loss(z, labels, tau), contrastive_loss("SupCon", z, labels, tau))


@pytest.mark.parametrize("tau", TAUS)
def test_ntxent_matches_lightly_style_cross_entropy(tau):
    z, labels = _batch(2, 9, 6, 3, seed=1)
    assert abs(ntxent_loss(z, labels, tau).item() - lightly_style_ntxent(z, tau).item()) < 1e-10


def test_dcl_with_positive_equals_ntxent_at_k2_only():
    z, _ = _batch(2, 6, 4, 2, seed=5)
    assert torch.allclose(dcl_loss(z, None, 0.2, include_positive=True), ntxent_loss(z, None, 0.2), atol=1e-12)
    z3, _ = _batch(3, 6, 4, 2, seed=5)  # K=3: ntxent also counts the third view as a negative
    assert not torch.allclose(dcl_loss(z3, None, 0.2, include_positive=True), ntxent_loss(z3, None, 0.2))


def test_ce_matches_loop_reference_and_module():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (5,), generator=g)
    got = ce_loss(logits, labels)
    assert abs(got.item() - ref_ce(logits, labels)) < 1e-10
    assert torch.equal(CrossEntropyLoss()(logits, labels), got)


@pytest.mark.parametrize(
    "kind,ip", [("ntxent", False), ("dcl", False), ("dcl", True), ("nscl", False), ("nscl", True), ("supcon", False)]
)
def test_gradients_gradcheck(kind, ip):
    z, labels = _batch(3, 4, 3, 2, seed=11)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: contrastive_loss(kind, x, labels, 0.5, include_positive=ip), (z,))


@pytest.mark.parametrize("kind", ["ntxent", "dcl", "nscl", "supcon"])
def test_per_anchor_slices_sum_to_full_loss(kind):
    z, labels = _batch(2, 8, 4, 3, seed=2)
    full = contrastive_per_anchor(kind, z, labels, 0.4)
    assert full.losses.shape == (2, 8) and full.valid.all() and int(full.num_valid) == 16
    parts = [contrastive_per_anchor(kind, z, labels, 0.4, anchor_range=(a, a + 2)) for a in range(0, 8, 2)]
    assert torch.allclose(torch.cat([p.losses for p in parts], dim=1), full.losses, atol=1e-12)
    assert all(int(p.num_valid) == 16 for p in parts)
    assert torch.allclose(full.losses.mean(), contrastive_loss(kind, z, labels, 0.4), atol=1e-12)


def test_module_without_distributed_equals_functional():
    z, labels = _batch(2, 6, 4, 3, seed=4)
    for obj in ["ntxent", "cl", "nscl", "scl"]:
        for ip in [False, True]:
            m = ContrastiveLoss(obj, 0.2, include_positive=ip)
            assert torch.equal(m(z, labels), contrastive_loss(obj, z, labels, 0.2, include_positive=ip))
    assert ContrastiveLoss("cl", 0.1, gather_distributed=False).gather_distributed is False


# ----------------------------------------------------------------------------- numerics


def _hard_batch(dtype):
    """Large-magnitude near-duplicates plus an antipodal cluster: cos ≈ ±1, |s| ≈ 100 at τ=0.01."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, generator=g) * 1e3
    z = base + 1e-2 * torch.randn(3, 8, 16, generator=g)
    z[:, 4:] = -z[:, 4:]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return z.to(dtype).requires_grad_(True), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "kind,ip", [("ntxent", False), ("dcl", False), ("dcl", True), ("nscl", False), ("nscl", True), ("supcon", False)]
)
def test_finite_at_tiny_temperature(dtype, kind, ip):
    z, labels = _hard_batch(dtype)
    loss = contrastive_loss(kind, z, labels, 0.01, include_positive=ip)
    assert loss.dtype == torch.float32  # bf16 is upcast internally; result in fp32
    assert torch.isfinite(loss)
    loss.backward()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad).all()


def test_ce_finite_bf16_large_logits():
    logits = (torch.randn(2, 4, 5) * 1e4).to(torch.bfloat16).requires_grad_(True)
    loss = ce_loss(logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------- empty denominators


def test_nscl_single_class_batch_is_zero_with_zero_grad():
    z, _ = _batch(2, 5, 4, 2, seed=9)
    z.requires_grad_(True)
    labels = torch.full((5,), 3)
    res = contrastive_per_anchor("nscl", z, labels, 0.1)
    assert not res.valid.any() and int(res.num_valid) == 0
    loss = nscl_loss(z, labels, 0.1)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    # with the positive in the denominator every pair loss is log(e^p / e^p) = 0, anchors stay valid
    z.grad = None
    res = contrastive_per_anchor("nscl", z, labels, 0.1, include_positive=True)
    assert res.valid.all() and int(res.num_valid) == 10
    loss = ContrastiveLoss("nscl", 0.1, include_positive=True)(z, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()
    assert loss_gap_bound(labels, 0.1) == math.inf


def test_single_sample_batch():
    z, _ = _batch(3, 1, 4, 1, seed=0)
    labels = torch.tensor([0])
    assert torch.isfinite(ntxent_loss(z, labels, 0.5))
    assert abs(ntxent_loss(z, labels, 0.5).item() - ref_pair_loss("ntxent", z, labels, 0.5)) < 1e-10
    assert abs(supcon_loss(z, labels, 0.5).item() - ref_supcon(z, labels, 0.5)) < 1e-10
    assert nscl_loss(z, labels, 0.5).item() == 0.0
    with pytest.raises(ValueError, match="dcl needs B >= 2"):
        dcl_loss(z, labels, 0.5)


# ----------------------------------------------------------------------------- gap bound


@pytest.mark.parametrize(
    "C,expected,half_ulp",  # paper-notes §2.1 table, rounded: tolerance = half a unit of the last digit
    [(2, 2.13, 5e-3), (5, 1.05, 5e-3), (10, 0.60, 5e-3), (100, 0.072, 5e-4), (1000, 0.0074, 5e-5)],
)
def test_loss_gap_bound_balanced_closed_form(C, expected, half_ulp):
    labels = torch.arange(C).repeat(3)  # balanced: n_max = N / C
    b = loss_gap_bound(labels, 1.0)
    assert abs(b - math.log1p(math.e**2 / (C - 1))) < 1e-12
    assert abs(b - expected) <= half_ulp


def test_loss_gap_bound_values_and_stability():
    labels = torch.tensor([0, 0, 0, 1, 2])  # n_max = 3, N = 5
    assert abs(loss_gap_bound(labels, 0.5) - math.log(1 + math.exp(4) * 3 / 2)) < 1e-12
    b = loss_gap_bound(labels, 0.01)  # e^200 overflows float32 but not the log-space form
    assert math.isfinite(b) and abs(b - (200 + math.log(1.5))) < 1e-9
    assert math.isfinite(loss_gap_bound(labels, 1e-4))
    assert loss_gap_bound(torch.zeros(4, dtype=torch.long), 1.0) == math.inf


@settings(max_examples=150, deadline=None)
@given(
    K=st.integers(2, 4),
    B=st.integers(2, 10),
    d=st.integers(1, 6),
    C=st.integers(1, 5),
    tau=st.floats(0.05, 2.0),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**31 - 1),
    include_positive=st.booleans(),
)
def test_property_gap_between_dcl_and_nscl_is_bounded(K, B, d, C, tau, scale, seed, include_positive):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(K, B, d, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, C, (B,), generator=g)
    bound = loss_gap_bound(labels, tau)
    dcl = dcl_loss(z, labels, tau, include_positive=include_positive).item()
    nscl = nscl_loss(z, labels, tau, include_positive=include_positive).item()
    gap = dcl - nscl
    if labels.unique().numel() == 1:
        # no negatives for NSCL: the bound is vacuous; without the positive nscl is 0 by convention
        # (so gap = dcl, unbounded below), with the positive every NSCL pair is log(1) = 0
        assert bound == math.inf and nscl == 0.0
        return
    slack = 1e-9 * max(1.0, abs(dcl))
    assert gap >= -slack, (gap, dcl, nscl)
    assert gap <= bound + 1e-9 * max(1.0, bound), (gap, bound)


# ----------------------------------------------------------------------------- validation


def _ok():
    return torch.randn(2, 4, 3), torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: (torch.randn(8, 3), None, 0.1), r"z must have shape \[K, B, d\]"),
        (lambda: (torch.randn(1, 4, 3), None, 0.1), "K >= 2"),
        (lambda: (torch.randn(2, 0, 3), None, 0.1), "B >= 1"),
        (lambda: (torch.randn(2, 4, 0), None, 0.1), "d >= 1"),
        (lambda: (torch.ones(2, 4, 3, dtype=torch.long), None, 0.1), "floating-point"),
        (lambda: (torch.randn(2, 4, 3).index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), None, 0.1), "non-finite"),
        (lambda: (torch.full((2, 4, 3), float("inf")), None, 0.1), "non-finite"),
        (lambda: (_ok()[0], torch.tensor([0, 1, 0]), 0.1), r"labels must have shape \[B\]"),
        (lambda: (_ok()[0], torch.tensor([0.0, 1.0, 0.0, 1.0]), 0.1), "integer dtype"),
        (lambda: (_ok()[0], [0, 1, 0, 1], 0.1), "labels must be an integer torch.Tensor"),
        (lambda: (_ok()[0], _ok()[1], 0.0), "temperature must be finite and > 0"),
        (lambda: (_ok()[0], _ok()[1], -1.0), "temperature must be finite and > 0"),
        (lambda: (_ok()[0], _ok()[1], float("nan")), "temperature must be finite and > 0"),
        (lambda: (_ok()[0], _ok()[1], float("inf")), "temperature must be finite and > 0"),
        (lambda: (_ok()[0], _ok()[1], "0.1"), "temperature must be a real number"),
    ],
)
def test_bad_inputs_raise(make, match):
    z, labels, tau = make()
    with pytest.raises(ValueError, match=match):
        contrastive_loss("supcon", z, labels, tau)


def test_bad_inputs_misc():
    z, labels = _ok()
    with pytest.raises(ValueError, match="objective must be one of"):
        contrastive_loss("simclr", z, labels, 0.1)
    with pytest.raises(ValueError, match="labels is required"):
        nscl_loss(z, None, 0.1)
    with pytest.raises(ValueError, match="labels is required"):
        supcon_loss(z, None, 0.1)
    with pytest.raises(ValueError, match="anchor_range"):
        contrastive_per_anchor("dcl", z, labels, 0.1, anchor_range=(3, 3))
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveLoss("dcl", 0)
    with pytest.raises(ValueError, match="objective"):
        ContrastiveLoss("byol", 0.1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, C\)"):
        ce_loss(torch.randn(2, 4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"logits must have shape \[K, B, C\]"):
        ce_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="logits contains non-finite"):
        ce_loss(torch.full((1, 2, 3), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must have shape"):
        loss_gap_bound(torch.zeros(0, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        loss_gap_bound(labels, -1.0)
