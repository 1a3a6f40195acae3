"""Optimisers, LR rules and schedules."""
import math

import pytest
import torch
from torch import nn

from repalign.training.optim import LARS, build_optimizer, param_groups, scaled_lr
from repalign.training.schedule import build_scheduler, warmup_cosine_factor


def test_lr_rules():
    assert scaled_lr(0.3, 1024, "linear") == pytest.approx(1.2)
    assert scaled_lr(0.3, 1024, "sqrt") == pytest.approx(0.0375)
    assert scaled_lr(0.3, 256, "sqrt") == pytest.approx(0.01875)
    assert scaled_lr(0.3, 1024, "fourth_root") == pytest.approx(0.3 * 1024 ** 0.25 / 256)
    assert scaled_lr(0.3, 1024, "none") == 0.3
    with pytest.raises(ValueError, match="lr_rule"):
        scaled_lr(0.3, 8, "cube")


def test_warmup_cosine():
    T, W = 100, 10
    f = [warmup_cosine_factor(t, T, W) for t in range(T)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    s = build_scheduler(opt, T, W)
    lrs = []
    for _ in range(T):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert lrs == pytest.approx([2.0 * x for x in f])
    s2 = build_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0), T, W)
    s2.load_state_dict(s.state_dict())
    assert s2.last_epoch == s.last_epoch


def _lars_reference(w, g, buf, lr, wd, mom, eta, adapt):
    g = g + wd * w
    if adapt:
        wn, gn = w.norm(), g.norm()
        r = eta * wn / gn if (wn > 0 and gn > 0) else 1.0
        g = g * r
    buf = g.clone() if buf is None else mom * buf + g
    return w - lr * buf, buf


def test_lars_matches_reference_and_excludes_bn_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    groups = param_groups(model, weight_decay=0.1, exclude_bn_bias=True)
    assert len(groups[0]["params"]) == 1 and len(groups[1]["params"]) == 3  # W vs b, γ, β
    opt = LARS(groups, lr=0.5, momentum=0.9, trust_coefficient=0.01)
    ref = {id(p): (p.detach().clone(), None) for p in model.parameters()}
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).sum().backward()
        for gi, g in enumerate(opt.param_groups):
            for p in g["params"]:
                w, buf = ref[id(p)]
                ref[id(p)] = _lars_reference(w, p.grad, buf, 0.5, g["weight_decay"], 0.9, 0.01, g["lars_adapt"])
        opt.step()
        for p in model.parameters():
            assert torch.allclose(p, ref[id(p)][0], atol=1e-6)


def test_lars_zero_grad_no_nan():
    p = nn.Parameter(torch.zeros(3))
    q = nn.Parameter(torch.ones(3))
    opt = LARS([p, q], lr=1.0, weight_decay=0.0)
    p.grad, q.grad = torch.zeros(3), torch.zeros(3)
    opt.step()
    assert torch.isfinite(p).all() and torch.isfinite(q).all()
    assert torch.equal(q, torch.ones(3))


@pytest.mark.parametrize("kind, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("lars", LARS)])
def test_build_optimizer(kind, cls):
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    settings = {"optim.type": kind, "optim.weight_decay": 1e-4, "optim.exclude_bn_bias": True,
                "optim.momentum": 0.9, "optim.trust_coefficient": 1e-3}
    opt = build_optimizer(m, settings, lr=0.1)
    assert isinstance(opt, cls)
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[0]["weight_decay"] == 1e-4
