"""Weight gap / angles (hand-computed values) and layer-wise CKA."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from repalign.metrics import layerwise_cka, linear_cka, select_parameters, weight_angle, weight_gap


def T(*v):
    return torch.tensor(v, dtype=torch.float32)


@pytest.fixture()
def dicts():
    a = {"encoder.conv.weight": T(3, 4), "encoder.bn.weight": T(1, 0), "encoder.bn.bias": T(5, 5),
         "encoder.bn.running_mean": T(9, 9), "encoder.bn.num_batches_tracked": torch.tensor(3),
         "encoder.fc.weight": T(1, 2), "projector.weight": T(7)}
    b = {"encoder.conv.weight": T(0, 5), "encoder.bn.weight": T(0, 1), "encoder.bn.bias": T(0, 0),
         "encoder.bn.running_mean": T(0, 0), "encoder.bn.num_batches_tracked": torch.tensor(3),
         "encoder.fc.weight": T(1, 2, 3), "encoder.extra.weight": T(1), "projector.weight": T(-7)}
    return a, b


def test_weight_gap_hand_computed(dicts):
    a, b = dicts
    g = weight_gap(a, b)
    r_conv = math.sqrt(10) / 5  # ‖(3,-1)‖ / ½(5 + 5)
    r_bn = math.sqrt(2) / 1.0   # ‖(1,-1)‖ / ½(1 + 1)
    assert list(g["per_layer"]) == ["encoder.conv.weight", "encoder.bn.weight"]
    assert g["per_layer"]["encoder.conv.weight"] == pytest.approx(r_conv)
    assert g["per_layer"]["encoder.bn.weight"] == pytest.approx(r_bn)
    assert g["mean"] == pytest.approx((r_conv + r_bn) / 2) and g["sum"] == pytest.approx(r_conv + r_bn)
    assert g["n_layers"] == 2 and g["n_params"] == 4
    # θ_a = (3,4,1,0), θ_b = (0,5,0,1): ‖θ_a−θ_b‖ = √12, ‖θ‖ = √26 each, cos = 20/26
    assert g["rel_l2"] == pytest.approx(math.sqrt(12) / math.sqrt(26))
    assert g["angle_deg"] == pytest.approx(math.degrees(math.acos(20 / 26)))
    assert g["displacement_angle_deg"] is None
    assert sorted(g["skipped"]) == ["encoder.extra.weight", "encoder.fc.weight"]
    assert "shape" in g["skip_reasons"]["encoder.fc.weight"]
    assert "missing in model_a" == g["skip_reasons"]["encoder.extra.weight"]


def test_displacement_angle(dicts):
    a, b = dicts
    init = {"encoder.conv.weight": T(0, 4), "encoder.bn.weight": T(1, 1)}
    # Δa = (3,0,0,-1), Δb = (0,1,-1,0): orthogonal
    g = weight_gap(a, b, init)
    assert g["displacement_angle_deg"] == pytest.approx(90.0)
    assert weight_angle(a, b, init) == pytest.approx(90.0)
    assert weight_angle(a, b) == pytest.approx(math.degrees(math.acos(20 / 26)))
    init2 = {"encoder.conv.weight": T(0, 3), "encoder.bn.weight": T(1, -1)}
    # Δa = (3,1,0,1), Δb = (0,2,-1,2): cos = 4 / (√11·3)
    assert weight_gap(a, b, init2)["displacement_angle_deg"] == pytest.approx(math.degrees(math.acos(4 / (3 * math.sqrt(11)))))
    # a model that has not moved: zero displacement → 0.0, never NaN
    assert weight_gap(a, b, {k: v.clone() for k, v in a.items()})["displacement_angle_deg"] == 0.0
    # init lacking a tensor → that tensor is skipped
    g = weight_gap(a, b, {"encoder.conv.weight": T(0, 4)})
    assert g["n_layers"] == 1 and g["skip_reasons"]["encoder.bn.weight"] == "missing in init"


def test_selection_options(dicts):
    a, b = dicts
    assert set(weight_gap(a, b, include_bias=True)["per_layer"]) == {"encoder.conv.weight", "encoder.bn.weight",
                                                                      "encoder.bn.bias"}
    g = weight_gap(a, b, prefix=None)
    assert "projector.weight" in g["per_layer"] and g["per_layer"]["projector.weight"] == pytest.approx(2.0)
    g = weight_gap(a, b, include=lambda name, w: name == "projector.weight")
    assert list(g["per_layer"]) == ["projector.weight"]
    assert "encoder.bn.running_mean" not in select_parameters(a, prefix=None, include_bias=True)


def _mlp_net():
    return nn.ModuleDict({"encoder": nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)),
                          "projector": nn.Linear(3, 2)})


def test_identical_models_are_zero_and_modules_accepted():
    torch.manual_seed(0)
    m = _mlp_net()
    g = weight_gap(m, copy.deepcopy(m), init=m.state_dict())
    assert g["mean"] == 0.0 and g["sum"] == 0.0 and g["rel_l2"] == 0.0
    assert g["angle_deg"] == 0.0 and g["displacement_angle_deg"] == 0.0
    assert set(g["per_layer"]) == {"encoder.0.weight", "encoder.1.weight", "encoder.2.weight"} and not g["skipped"]
    m2 = copy.deepcopy(m)
    with torch.no_grad():
        m2["encoder"][0].weight.mul_(-1)
    assert weight_gap(m, m2)["per_layer"]["encoder.0.weight"] == pytest.approx(2.0)
    assert weight_gap(m, m.state_dict())["mean"] == 0.0  # module vs state_dict


def test_resnet50_encoder_selects_106_tensors():
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Identity()
    model = nn.ModuleDict({"encoder": net, "projector": nn.Linear(2048, 128)})
    sel = select_parameters(model)
    assert len(sel) == 106
    assert sum(1 for k in sel if k.endswith("weight") and sel[k].dim() == 4) == 53


@pytest.mark.parametrize("call", [
    lambda: weight_gap({"a.weight": T(1)}, {"b.weight": T(1)}, prefix=""),       # nothing in common
    lambda: weight_gap({"encoder.w": T(1)}, {"encoder.w": T(1, 2)}),               # only mismatch
    lambda: weight_gap({"x.weight": T(1)}, {"x.weight": T(1)}),                    # prefix selects nothing
    lambda: weight_gap([1, 2], {"encoder.w": T(1)}),                               # wrong type
    lambda: weight_gap({"encoder.w": [1.0]}, {"encoder.w": T(1)}),                 # non-tensor value
    lambda: weight_gap({"encoder.w": T(1)}, {"encoder.w": T(1)}, init=3),
    lambda: weight_gap({"encoder.w": T(1)}, {"encoder.w": T(1)}, prefix=3),
    lambda: weight_gap({"encoder.w": T(1)}, {"encoder.w": T(1)}, include="yes"),
])
def test_weight_bad_inputs(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------------------------------------
# layer-wise CKA
# ---------------------------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def blocks(self):
        return [("b1", self.b1), ("b2", self.b2), ("head", self.head)]

    def forward(self, x):
        h = self.b2(self.b1(x)).mean(dim=(2, 3))
        return h, self.head(h)


@pytest.fixture()
def loader():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(b, 2, 8, 8, generator=g) for b in (16, 16, 7)]
    return [(x, torch.zeros(len(x))) for x in xs]


def test_layerwise_self_is_diagonal_one(loader):
    torch.manual_seed(0)
    m = Tiny().train()
    for est in ("exact", "minibatch"):
        r = layerwise_cka(m, m, loader, estimator=est)
        assert r["names_a"] == ["b1", "b2", "head"] and r["matrix"].shape == (3, 3)
        assert torch.allclose(torch.diagonal(r["matrix"]), torch.ones(3, dtype=torch.float64), atol=1e-9)
        assert torch.allclose(r["matrix"], r["matrix"].T, atol=1e-9)
    assert m.training  # mode restored
    # a distinct-but-identical copy gives the same matrix (two forwards)
    r2 = layerwise_cka(m, copy.deepcopy(m), loader)
    assert torch.allclose(torch.diagonal(r2["matrix"]), torch.ones(3, dtype=torch.float64), atol=1e-9)
    assert r2["n_samples"] == 39 and r2["batches"] == 3


@pytest.mark.parametrize("blas_min_dim", [0, 10**9])
def test_layerwise_exact_equals_linear_cka(loader, blas_min_dim, monkeypatch):
    import importlib
    monkeypatch.setattr(importlib.import_module("repalign.metrics.moments"), "_BLAS_MIN_DIM", blas_min_dim)
    torch.manual_seed(1)
    a, b = Tiny(), Tiny()
    for pool in ("avg", "flatten"):
        r = layerwise_cka(a, b, loader, blocks_a=["b1", "b2"], blocks_b=[("z", b.head)], pool=pool,
                          max_batches=2, debiased=True)
        assert r["n_samples"] == 32
        with torch.no_grad():
            x = torch.cat([loader[0][0], loader[1][0]])
            a.eval(), b.eval()
            f1 = a.b1(x)
            f2 = a.b2(f1)
            z = b(x)[1]
        if pool == "avg":
            f1, f2 = f1.mean(dim=(2, 3)), f2.mean(dim=(2, 3))
        f1, f2 = f1.flatten(1), f2.flatten(1)
        assert r["matrix"][0, 0] == pytest.approx(linear_cka(f1, z, debiased=True), abs=1e-9)
        assert r["matrix"][1, 0] == pytest.approx(linear_cka(f2, z, debiased=True), abs=1e-9)


def test_layerwise_default_children_and_tensor_loader():
    seq = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    xs = [torch.randn(10, 5) for _ in range(2)]
    r = layerwise_cka(seq, seq, xs)
    assert r["names_a"] == ["0", "1", "2"]
    assert torch.allclose(torch.diagonal(r["matrix"]), torch.ones(3, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("kw", [dict(pool="max"), dict(estimator="cca"), dict(max_batches=0),
                                dict(blocks_a=["nope"]), dict(blocks_a=[]), dict(blocks_a=[3]),
                                dict(pool="flatten", max_dim=10)])
def test_layerwise_bad_inputs(loader, kw):
    m = Tiny()
    with pytest.raises(ValueError):
        layerwise_cka(m, m, loader, **kw)


def test_layerwise_bad_loader():
    m = Tiny()
    with pytest.raises(ValueError):
        layerwise_cka(m, m, [{"x": torch.randn(4, 2, 8, 8)}])
    with pytest.raises(ValueError):
        layerwise_cka(m, m, [])
    with pytest.raises(ValueError):
        layerwise_cka(m, m, [torch.randn(3, 2, 8, 8)], estimator="minibatch")  # only batch < 4
