"""Batched (device) augmentation vs the per-sample CPU path, on CPU tensors.

``data.augment_device: cuda`` runs :class:`~repalign.data.batched_views.BatchedViews` on the GPU;
here the same code runs on CPU tensors (``augment_device: batched`` in the trainer).
"""
from __future__ import annotations

import os

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from repalign.data import MultiViewTransform, SeededBatchSampler, make_train_loader
from repalign.data.batched_views import MAX_LEVEL_DIFF, PARAM_KEYS, BatchedViews, batch_params
from repalign.data.views import _hflip, normalize_uint8

RECIPE_CASES = [  # recipe, channels, source side H, output side S
    ("simclr_cifar", 3, 32, 32),
    ("simclr_imagenet", 3, 48, 40),  # downscaling crops + blur
    ("simclr_gray", 1, 28, 28),
    ("simclr_cifar", 1, 28, 32),  # one channel -> simclr_gray, upscaling
    ("crop_flip", 3, 40, 32),
    ("none", 3, 32, 32),
    ("none", 3, 36, 32),
]


def _images(B: int, C: int, H: int, W: int | None = None, seed: int = 0) -> torch.Tensor:
    """uint8 [B, C, H, W]: smooth random images with a grey (r = g = b) upper half, where
    saturation/hue/contrast blends are most sensitive to rounding."""
    g = torch.Generator().manual_seed(seed)
    W = H if W is None else W
    base = torch.randint(0, 256, (B, C, 8, 8), generator=g, dtype=torch.uint8).float()
    x = torch.nn.functional.interpolate(base, size=(H, W), mode="bilinear").round()
    x = x.clamp(0, 255).to(torch.uint8)
    x[:, :, : H // 2] = x[:, :1, : H // 2]
    return x


def _levels(a: torch.Tensor, b: torch.Tensor, std: float = 0.5) -> torch.Tensor:
    """|a - b| of normalised views in grey levels (1/255 of the unnormalised range)."""
    return (a - b).abs() * std * 255


@pytest.mark.parametrize("recipe,C,H,S", RECIPE_CASES)
def test_params_identical_to_per_sample_path(recipe, C, H, S):
    tf = MultiViewTransform(recipe, S, C, num_views=3, seed=7)
    idx = [5, 0, 17, 3]
    p = batch_params(tf, idx, 4, H, H)
    assert set(p) == set(PARAM_KEYS) and all(v.device.type == "cpu" for v in p.values())
    B = len(idx)
    for k in range(3):
        for b, i in enumerate(idx):
            n = k * B + b
            ref = tf.params(i, 4, k, H, H)
            assert tuple(p["crop"][n].tolist()) == ref.get("crop", (0, 0, H, H))
            assert bool(p["flip"][n]) == ref["flip"]
            assert bool(p["gray"][n]) == ref.get("gray", False)
            assert float(p["blur"][n]) == ref.get("blur", 0.0)
            ops = [(q, float(p["jitter_factor"][n, q])) for q in p["jitter_order"][n].tolist() if q >= 0]
            assert ops == ref.get("jitter", [])  # same ops, same order, same float64 factors


@pytest.mark.parametrize("recipe,C,H,S", RECIPE_CASES)
def test_colour_flip_normalise_bitwise_equal(recipe, C, H, S):
    """Without interpolation (images already S x S, crop box = whole image) the batched path
    is bitwise equal to torchvision's per-image kernels with the same parameters."""
    tf = MultiViewTransform(recipe, S, C, num_views=2, seed=3)
    B, idx = 40, list(range(100, 140))
    imgs = _images(B, C, S, seed=1)
    p = batch_params(tf, idx, 2, S, S)
    p["crop"][:] = torch.tensor([0, 0, S, S])
    out = BatchedViews(tf)(imgs, p)
    ref = []
    for k in range(2):
        for b, i in enumerate(idx):
            q = tf.params(i, 2, k, S, S)
            q.pop("crop", None)
            y = tf._one(imgs[b], q)
            ref.append(_hflip(y) if q["flip"] else y)
    ref = normalize_uint8(torch.stack(ref), tf.mean, tf.std).view_as(out)
    assert torch.equal(out, ref)
    if recipe == "simclr_imagenet":  # every op was exercised
        assert p["blur"].gt(0).any() and p["gray"].any() and (p["jitter_order"] == 3).any()


@pytest.mark.parametrize("H,W,S", [(32, 32, 32), (28, 28, 32), (64, 64, 32), (40, 30, 24)])
def test_resized_crop_matches_torchvision(H, W, S):
    """Batched crop = torchvision's float resized_crop (<= 1e-4 before rounding, as torchvision
    rounds uint8 on CUDA); vs the CPU uint8 kernel at most 1 grey level."""
    tf = MultiViewTransform("crop_flip", S, 3, num_views=2, seed=11)
    B = 64
    imgs = _images(B, 3, H, W, seed=2)
    p = batch_params(tf, range(B), 0, H, W)
    bv = BatchedViews(tf)
    out_f, out = bv.crop_float(imgs, p["crop"]), bv.crop(imgs, p["crop"])
    boxes = p["crop"].tolist()
    ref_f = torch.stack([F.resized_crop_image(imgs[n % B].float(), *boxes[n], [S, S], antialias=True)
                         for n in range(2 * B)])
    ref_u = torch.stack([F.resized_crop_image(imgs[n % B], *boxes[n], [S, S], antialias=True)
                         for n in range(2 * B)])
    assert float((out_f - ref_f).abs().max()) <= 1e-4
    assert torch.equal(out, out_f.round().clamp(0, 255).to(torch.uint8))
    d = (out.int() - ref_u.int()).abs()
    assert int(d.max()) <= 1
    if H >= S + 5 and W >= S + 5:  # a crop of exactly S x S is a plain slice, in both paths
        box = torch.tensor([[3, 5, S, S]]).repeat(2 * B, 1)
        assert torch.equal(bv.crop(imgs, box), imgs[:, :, 3:3 + S, 5:5 + S].repeat(2, 1, 1, 1))


@pytest.mark.parametrize("recipe,C,H,S", RECIPE_CASES)
def test_whole_pipeline_within_tolerance(recipe, C, H, S):
    """The only pixel difference is the crop's rounding (propagated): >= 95% of the values within
    1 grey level, >= 99.5% within 3, none above MAX_LEVEL_DIFF."""
    tf = MultiViewTransform(recipe, S, C, num_views=2, seed=5)
    B, idx = 96, list(range(1000, 1096))
    imgs = _images(B, C, H, seed=3)
    out = BatchedViews(tf)(imgs, batch_params(tf, idx, 1, H, H))
    ref = tf.apply_batch(imgs, idx, 1)
    assert out.shape == ref.shape == (2, B, C, S, S) and out.dtype == torch.float32
    d = _levels(out, ref).round()
    assert float(d.max()) <= MAX_LEVEL_DIFF, float(d.max())
    assert float((d <= 1).float().mean()) >= 0.95
    assert float((d <= 3).float().mean()) >= 0.995
    if (H, S) == (32, 32) and recipe == "none":
        assert torch.equal(out, ref)


def test_batched_independent_of_batch_composition():
    """A view depends only on (seed, epoch, index, view) and its image: the same sample in a
    different batch (other neighbours, other order, other size) gets bitwise the same views."""
    tf = MultiViewTransform("simclr_imagenet", 32, 3, num_views=2, seed=9)
    N = 24
    imgs = _images(N, 3, 32, seed=4)
    bv = BatchedViews(tf)
    big = bv(imgs, batch_params(tf, range(N), 3, 32, 32))  # [2, 24, ...]
    sub = [17, 2, 9, 23, 0]
    small = bv(imgs[sub], batch_params(tf, sub, 3, 32, 32))
    for j, i in enumerate(sub):
        assert torch.equal(small[:, j], big[:, i])
    single = bv(imgs[9:10], batch_params(tf, [9], 3, 32, 32))
    assert torch.equal(single[:, 0], big[:, 9])
    # another epoch gives other views
    assert not torch.equal(bv(imgs, batch_params(tf, range(N), 4, 32, 32)), big)


def test_raw_loader_same_params_any_workers_and_resume():
    """The raw loader (augment_device cuda/batched) delivers images + parameters; with 0 or 2
    workers and from a mid-epoch resume point they are the same, and applying them gives the
    per-sample loader's views within tolerance."""
    from repalign.data import build_source

    src = build_source("digits", "train", max_per_class=12, seed=0)
    tf = MultiViewTransform("simclr_gray", 8, 1, num_views=2, seed=4)

    def collect(workers, start=0, raw=True):
        s = SeededBatchSampler(src.labels, 16, seed=4)
        s.load_state_dict({"epoch": 1, "consumed": start})
        return list(make_train_loader(src, tf, s, num_workers=workers, raw=raw))

    a, b = collect(0), collect(2)
    assert len(a) == len(b) == len(src) // 16
    for x, y in zip(a, b):
        assert torch.equal(x[0], y[0]) and torch.equal(x[2], y[2]) and torch.equal(x[3], y[3])
        assert all(torch.equal(x[1][k], y[1][k]) for k in PARAM_KEYS)
    resumed = collect(0, start=2)
    for x, y in zip(a[2:], resumed):
        assert torch.equal(x[3], y[3]) and all(torch.equal(x[1][k], y[1][k]) for k in PARAM_KEYS)
    cpu = collect(0, raw=False)
    bv = BatchedViews(tf)
    for (imgs, p, lab, idx), (views, lab2, idx2) in zip(a, cpu):
        assert torch.equal(idx, idx2) and torch.equal(lab, lab2)
        assert float(_levels(bv(imgs, p), views).max()) <= MAX_LEVEL_DIFF


def test_batched_rejects_bad_input():
    tf = MultiViewTransform("crop_flip", 8, 3, num_views=2, seed=0)
    p = batch_params(tf, [0, 1], 0, 8, 8)
    with pytest.raises(ValueError, match="uint8"):
        BatchedViews(tf)(torch.zeros(2, 3, 8, 8), p)
    with pytest.raises(ValueError, match="channels"):
        BatchedViews(tf)(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), p)
    with pytest.raises(ValueError, match="views"):
        BatchedViews(tf)(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), p)


# ---------------------------------------------------------------------------------------------
# config + trainer
# ---------------------------------------------------------------------------------------------
def test_augment_device_config(tiny_cfg, monkeypatch):
    from repalign.config import ConfigError, load_config
    from repalign.training import CoupledTrainer
    from repalign.training.trainer import _augment_device

    assert tiny_cfg()["data"]["augment_device"] == "auto"
    with pytest.raises(ConfigError, match="data.augment_device"):
        load_config(None, ["data.augment_device=gpu"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    cfg = tiny_cfg(**{"data.augment_device": "auto"})
    assert _augment_device(cfg, cpu) is None and _augment_device(cfg, cuda) == cuda
    assert _augment_device(tiny_cfg(**{"data.augment_device": "cpu"}), cuda) is None
    assert _augment_device(tiny_cfg(**{"data.augment_device": "batched"}), cpu) == cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        CoupledTrainer(tiny_cfg(**{"data.augment_device": "cuda"}), None, evaluator=None)
    msg = str(e.value)
    assert "\n" not in msg and "data.augment_device" in msg and "no CUDA device" in msg
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="data.augment_device.*training device is cpu"):
        _augment_device(tiny_cfg(**{"data.augment_device": "cuda"}), cpu)


def _inputs_and_weights(cfg, run_dir, stop_after=None, resume=False):
    from repalign.training import CoupledTrainer

    tr = CoupledTrainer(cfg, run_dir, resume=resume, evaluator=None)
    seen: list[torch.Tensor] = []
    tr.arm_states[0].module.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    tr.fit(stop_after=stop_after)
    return tr, seen


def test_trainer_batched_path_deterministic_and_resumable(tiny_cfg, tmp_path):
    """augment_device=batched (the cuda code on CPU tensors): two runs are bit-identical, a run
    killed mid-epoch and resumed ends bit-identical to the uninterrupted one, and its inputs are
    the per-sample path's views within the stated tolerance."""
    cfg = tiny_cfg(**{"data.augment_device": "batched", "train.epochs": 2, "train.max_steps": 7})
    full, seen_full = _inputs_and_weights(cfg, tmp_path / "full")
    assert full.augment_device == torch.device("cpu") and full.steps_per_epoch == 5
    again, seen_again = _inputs_and_weights(cfg, tmp_path / "again")
    assert len(seen_full) == len(seen_again) == 7
    assert all(torch.equal(a, b) for a, b in zip(seen_full, seen_again))
    k = full.steps_per_epoch + 1  # stop mid-epoch
    part, seen_part = _inputs_and_weights(cfg, tmp_path / "part", stop_after=k)
    resumed, seen_res = _inputs_and_weights(cfg, tmp_path / "part", resume=True)
    assert resumed.step == full.step
    assert all(torch.equal(a, b) for a, b in zip(seen_full, seen_part + seen_res))
    for f, a, r in zip(full.arm_states, again.arm_states, resumed.arm_states):
        sf, sa, sr = f.module.state_dict(), a.module.state_dict(), r.module.state_dict()
        assert all(torch.equal(sf[n], sa[n]) and torch.equal(sf[n], sr[n]) for n in sf), f.name
    # same views as the per-sample CPU path, up to the crop's rounding
    cpu, seen_cpu = _inputs_and_weights(tiny_cfg(**{"data.augment_device": "cpu", "train.max_steps": 2}), None)
    assert cpu.augment_device is None
    for a, b in zip(seen_cpu, seen_full[:2]):
        d = _levels(a, b, std=full.train_source.std[0]).round()
        assert float(d.max()) <= MAX_LEVEL_DIFF and float((d <= 1).float().mean()) >= 0.95


# ---------------------------------------------------------------------------------------------
# on the GPU (pytest -m cuda, run by make gpu-check; REPALIGN_CUDA_TEST_DEVICE=cpu runs the code)
# ---------------------------------------------------------------------------------------------
_DEVICE = os.environ.get("REPALIGN_CUDA_TEST_DEVICE", "cuda")


@pytest.mark.cuda
@pytest.mark.skipif(_DEVICE == "cuda" and not torch.cuda.is_available(),
                    reason="needs a CUDA GPU: torch.cuda.is_available() is False")
def test_batched_on_device_matches_cpu_and_is_deterministic():
    """The batched path on the device vs the same code on the CPU: crops before rounding within
    1e-3 (float summation order), whole views within MAX_LEVEL_DIFF with >= 99% of the values
    equal up to 1 grey level; bitwise repeatable and batch-composition independent on the
    device; unaffected by the global TF32 switch (restored afterwards)."""
    dev = torch.device(_DEVICE)
    for recipe, C, H, S in RECIPE_CASES:
        tf = MultiViewTransform(recipe, S, C, num_views=2, seed=13)
        B = 64
        imgs = _images(B, C, H, seed=6)
        p = batch_params(tf, range(B), 0, H, H)
        bv = BatchedViews(tf)
        on_cpu = bv(imgs, p)
        on_dev = bv(imgs.to(dev), p)
        assert on_dev.device.type == dev.type
        crop_cpu, crop_dev = bv.crop_float(imgs, p["crop"]), bv.crop_float(imgs.to(dev), p["crop"]).cpu()
        assert float((crop_cpu - crop_dev).abs().max()) <= 1e-3
        d = _levels(on_dev.cpu(), on_cpu).round()
        assert float(d.max()) <= MAX_LEVEL_DIFF and float((d <= 1).float().mean()) >= 0.99, recipe
        assert torch.equal(bv(imgs.to(dev), p), on_dev)
        sub = [9, 3, 40]
        small = bv(imgs[sub].to(dev), batch_params(tf, sub, 0, H, H))
        assert all(torch.equal(small[:, j], on_dev[:, i]) for j, i in enumerate(sub))
        if dev.type == "cuda":
            before = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                assert torch.equal(bv(imgs.to(dev), p), on_dev)
                assert torch.backends.cuda.matmul.allow_tf32 is True
            finally:
                torch.backends.cuda.matmul.allow_tf32 = before
