"""Models: (h, z) shapes for every encoder, CIFAR stem, projector layout, seeded init."""
import pytest
import torch

from repalign.models import VIT_PRESETS, build_model, seeded_init


def _cfg(**kw):
    base = {"encoder": "small_cnn", "width": None, "norm": "batch", "cifar_stem": False, "vit_preset": None,
            "projector_hidden": 16, "projector_out": 8, "projector_norm": "batch"}
    return {**base, **kw}


@pytest.mark.parametrize("cfg, channels, size, feat", [
    (_cfg(width=4), 1, 28, 32),
    (_cfg(encoder="resnet18", cifar_stem=True), 3, 32, 512),
    (_cfg(encoder="resnet18"), 1, 32, 512),
    (_cfg(encoder="resnet50", cifar_stem=True), 3, 32, 2048),
    (_cfg(encoder="vit", vit_preset="tiny"), 3, 32, 32),
])
def test_forward_shapes(cfg, channels, size, feat):
    m = build_model(cfg, channels, size)
    h, z = m(torch.randn(2, channels, size, size))
    assert h.shape == (2, feat) and z.shape == (2, 8)
    assert m.feature_dim == feat
    assert len(m.blocks()) >= 3


def test_cifar_stem():
    m = build_model(_cfg(encoder="resnet18", cifar_stem=True), 3, 32)
    conv = m.encoder.net.conv1
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert isinstance(m.encoder.net.maxpool, torch.nn.Identity)


def test_vit_presets_follow_paper():
    assert VIT_PRESETS["32"].patch_size == 4 and VIT_PRESETS["32"].hidden_dim == 384
    assert VIT_PRESETS["224"].hidden_dim == 768 and VIT_PRESETS["224"].patch_size == 16


def test_projector_layout():
    m = build_model(_cfg(), 1, 28)
    kinds = [type(x).__name__ for x in m.projector.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert m.projector.net[0].bias is None and m.projector.net[3].bias is None


def test_seeded_init_is_deterministic_and_isolated():
    torch.manual_seed(1)
    with seeded_init(5):
        a = build_model(_cfg(width=4), 1, 28)
    after_a = torch.rand(1)
    torch.manual_seed(1)
    torch.rand(10)  # different global state
    with seeded_init(5):
        b = build_model(_cfg(width=4), 1, 28)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after_a)  # global RNG untouched by seeded_init
    with seeded_init(6):
        c = build_model(_cfg(width=4), 1, 28)
    assert not torch.equal(a.encoder.block1[0].weight, c.encoder.block1[0].weight)


def test_bad_encoder():
    with pytest.raises(ValueError, match="model.encoder"):
        build_model(_cfg(encoder="vgg"), 3, 32)
