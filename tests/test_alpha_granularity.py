"""Issue 18: the nscl_alpha objective (α-family between DCL and NSCL) and its loss-gap bound."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repalign.losses.functional import (
    dcl_loss,
    loss_gap_bound,
    loss_gap_bound_alpha,
    nscl_alpha_loss,
    nscl_loss,
)
from repalign.objectives import get_objective, make_loss


def naive_alpha(z: torch.Tensor, y: torch.Tensor, tau: float, alpha: float) -> torch.Tensor:
    """Loop reference: weight 1 for other-class, 1 − α for same-class negatives (j ≠ i)."""
    K, B, _ = z.shape
    zn = torch.nn.functional.normalize(z.double(), dim=-1)
    total = zn.new_zeros(())
    for i in range(B):
        for l1 in range(K):
            a = zn[l1, i]
            den = zn.new_zeros(())
            for j in range(B):
                if j == i:
                    continue
                w = 1.0 if y[j] != y[i] else 1.0 - alpha
                for l3 in range(K):
                    den = den + w * torch.exp(a @ zn[l3, j] / tau)
            pos = sum(a @ zn[l2, i] / tau for l2 in range(K) if l2 != l1) / (K - 1)
            total = total + torch.log(den) - pos
    return total / (K * B)


def _batch(seed: int, K: int = 2, B: int = 8, d: int = 5, C: int = 3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(K, B, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    y[0], y[1] = 0, 1  # multi-class
    return z, y


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.75, 1.0])
def test_nscl_alpha_matches_naive_reference(alpha):
    z, y = _batch(1, K=3)
    assert torch.allclose(nscl_alpha_loss(z, y, 0.5, alpha), naive_alpha(z, y, 0.5, alpha), atol=1e-10)


@pytest.mark.parametrize("alpha,ref", [(0.0, dcl_loss), (1.0, nscl_loss)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nscl_alpha_endpoints_equal_cl_and_nscl_loss_and_gradient(alpha, ref, seed):
    z, y = _batch(seed)
    z1 = z.clone().requires_grad_(True)
    z2 = z.clone().requires_grad_(True)
    la = nscl_alpha_loss(z1, y, 0.3, alpha)
    lr = ref(z2, y, 0.3)
    la.backward()
    lr.backward()
    assert torch.allclose(la, lr, atol=1e-12)
    assert torch.allclose(z1.grad, z2.grad, atol=1e-12)


def test_nscl_alpha_single_class_at_alpha_one_is_zero_like_nscl():
    z = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(4, dtype=torch.long)
    out = nscl_alpha_loss(z, y, 0.5, 1.0)
    assert float(out.detach()) == 0.0 == float(nscl_loss(z.detach(), y, 0.5))
    out.backward()
    assert torch.all(z.grad == 0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.0, 1.0), tau=st.sampled_from([0.1, 0.5, 1.0]),
       C=st.integers(1, 4))
def test_alpha_gap_nonnegative_and_below_bound(seed, alpha, tau, C):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (6,), generator=g)
    gap = float(dcl_loss(z, y, tau) - nscl_alpha_loss(z, y, tau, alpha))
    bound = loss_gap_bound_alpha(y, tau, alpha)
    assert gap >= -1e-12
    assert gap <= bound + 1e-9
    # the bound is monotone in α and equals the existing bound at α = 1
    assert loss_gap_bound_alpha(y, tau, 1.0) == loss_gap_bound(y, tau)
    assert bound <= loss_gap_bound(y, tau) + 1e-12
    if not math.isinf(loss_gap_bound(y, tau)):
        r = math.exp(2 / tau) * int(torch.bincount(y).max()) / (6 - int(torch.bincount(y).max()))
        assert bound == pytest.approx(math.log((1 + r) / (1 + (1 - alpha) * r)), rel=1e-9)
        assert bound <= math.log1p(alpha * r) + 1e-12


def test_alpha_bound_closed_form_single_class():
    y = torch.zeros(5, dtype=torch.long)
    assert loss_gap_bound_alpha(y, 0.5, 0.5) == pytest.approx(math.log(2.0))
    assert math.isinf(loss_gap_bound_alpha(y, 0.5, 1.0))
    assert loss_gap_bound_alpha(y, 0.5, 0.0) == 0.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, "x", True, float("nan")])
def test_alpha_refused_in_one_line(bad):
    z, y = _batch(0)
    with pytest.raises(ValueError, match="alpha must be a real number in \\[0, 1\\]"):
        nscl_alpha_loss(z, y, 0.5, bad)


def test_nscl_alpha_registered_objective_uses_options():
    obj = get_objective("nscl_alpha")
    assert obj.needs_labels and not obj.needs_head
    z, y = _batch(3)
    fn = make_loss(obj, {"loss.temperature": 0.5, "loss.include_positive": False, "loss.options": {"alpha": 0.25}})
    assert torch.allclose(fn(z, y), naive_alpha(z, y, 0.5, 0.25), atol=1e-10)
    with pytest.raises(Exception, match="loss.options.alpha is required"):  # refused when the loss is built
        make_loss(obj, {"loss.temperature": 0.5, "loss.include_positive": False, "loss.options": {}})(z, y)


def test_control_streams_derive_from_the_run_seed():
    """Issue 18 item 7: cl_data's stream (and cl_seed's init) differ between run seeds and from the shared stream."""
    from conftest import tiny_overrides
    from repalign.config import load_config
    from repalign.training import CoupledTrainer

    arms = "arms={cl: {objective: cl}, cl_data: {same_as: cl, data_seed: 1002}}"
    seeds = {}
    for run_seed in (0, 1):
        tr = CoupledTrainer(load_config(None, tiny_overrides() + [arms, f"seed={run_seed}"]), None)
        seeds[run_seed] = sorted(v["seed"] for v in tr.streams.values())
        assert len(seeds[run_seed]) == 2 and run_seed in seeds[run_seed]
    control = [set(seeds[r]) - {r} for r in (0, 1)]
    assert control[0] != control[1]


def test_nscl_alpha_arm_trains_in_a_coupled_run(tmp_path):
    from conftest import tiny_overrides
    from repalign.config import load_config
    from repalign.training import CoupledTrainer

    cfg = load_config(None, tiny_overrides(**{"eval.every": "null"})
                      + ["arms={cl: {objective: cl}, a: {objective: nscl_alpha, loss.options: {alpha: 0.5}}}"])
    tr = CoupledTrainer(cfg, tmp_path / "run")
    tr.fit()
    assert tr.step > 0
    for s in tr.arm_states:
        assert all(bool(torch.isfinite(p).all()) for p in s.module.parameters())


def test_contrastive_loss_module_alpha_only_for_nscl_alpha():
    from repalign.losses import ContrastiveLoss

    with pytest.raises(ValueError, match="alpha is required for objective 'nscl_alpha'"):
        ContrastiveLoss("nscl_alpha", 0.5)
    with pytest.raises(ValueError, match="applies to it only"):
        ContrastiveLoss("nscl", 0.5, alpha=0.5)
    z, y = _batch(5)
    assert torch.allclose(ContrastiveLoss("nscl_alpha", 0.5, alpha=0.4)(z, y), naive_alpha(z, y, 0.5, 0.4), atol=1e-10)
