"""Tests for repalign.data: sources, strokes, views, sampler, loaders (CPU, no downloads)."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from repalign.data import (
    MultiViewTransform,
    SeededBatchSampler,
    ViewBatchDataset,
    build_source,
    eval_transform,
    extract_loader,
    make_train_loader,
    read_idx,
    shard,
    source_info,
)
from repalign.data.sources import download as source_files

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _idx_bytes(arr: np.ndarray) -> bytes:
    """Naive IDX writer (uint8 only), independent of the library's writer."""
    assert arr.dtype == np.uint8
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape) \
        + arr.tobytes()


def _write_fake_mnist(d: Path, n_train=40, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for pre, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        (d / f"{pre}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(x)))
        (d / f"{pre}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(y)))
        out[pre] = (x, y)
    return out


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    monkeypatch.setattr(source_files, "system_dirs", lambda: [])
    monkeypatch.setattr(source_files, "cache_dir", lambda: tmp_path / "empty-cache")
    monkeypatch.delenv("REPALIGN_DATA", raising=False)
    monkeypatch.delenv("REPALIGN_DOWNLOAD", raising=False)


# ---------------------------------------------------------------------------------------------
# IDX / fashion_mnist / mnist
# ---------------------------------------------------------------------------------------------
def test_read_idx_plain_and_gz(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(x))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx_bytes(x)))
    for p in ("a.idx", "a.idx.gz"):
        y = read_idx(tmp_path / p)
        assert y.dtype == np.uint8 and y.shape == (2, 3, 4)
        np.testing.assert_array_equal(y, x)
    # int32 big-endian payload
    v = np.array([1, -2, 70000], dtype=">i4")
    raw = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + v.tobytes()
    (tmp_path / "b.idx").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "b.idx"), [1, -2, 70000])
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="IDX"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(_idx_bytes(x)[:-3])
    with pytest.raises(ValueError, match="bytes"):
        read_idx(tmp_path / "short.idx")


def test_fashion_mnist_from_root(tmp_path, no_system_data):
    ref = _write_fake_mnist(tmp_path / "fm")
    tr = build_source("fashion_mnist", "train", root=tmp_path / "fm")
    te = build_source("fashion_mnist", "test", root=tmp_path / "fm")
    assert len(tr) == 40 and len(te) == 20
    assert tr.images.shape == (40, 1, 28, 28) and tr.images.dtype == torch.uint8
    assert tr[3].shape == (1, 28, 28)
    np.testing.assert_array_equal(tr.images[:, 0].numpy(), ref["train"][0])
    np.testing.assert_array_equal(tr.labels.numpy(), ref["train"][1])
    assert tr.num_classes == 10 and tr.class_names[0] == "T-shirt/top"
    # REPALIGN_DATA/fashion-mnist is searched too
    os.environ["REPALIGN_DATA"] = str(tmp_path)
    (tmp_path / "fashion-mnist").symlink_to(tmp_path / "fm")
    try:
        assert len(build_source("fashion_mnist", "test")) == 20
    finally:
        del os.environ["REPALIGN_DATA"]
    # torchvision layout for mnist
    _write_fake_mnist(tmp_path / "tv" / "MNIST" / "raw", 30, 10)
    assert len(build_source("mnist", "train", root=tmp_path / "tv")) == 30


def test_download_flag(tmp_path, no_system_data, monkeypatch):
    """download=True calls torchvision's downloader (faked here: no network in tests)."""
    import torchvision.datasets as tvd

    _write_fake_mnist(tmp_path / "fm")
    assert len(build_source("fashion_mnist", "test", root=tmp_path / "fm", download=False)) == 20
    with pytest.raises(ValueError, match="bogus_kw"):
        build_source("fashion_mnist", "test", root=tmp_path / "fm", bogus_kw=1)
    calls = []

    class FakeFM:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            _write_fake_mnist(Path(root) / "FashionMNIST" / "raw", 12, 6)

    monkeypatch.setattr(tvd, "FashionMNIST", FakeFM)
    with pytest.raises(FileNotFoundError):
        build_source("fashion_mnist", "train", root=tmp_path / "dl")
    assert calls == []
    src = build_source("fashion_mnist", "train", root=tmp_path / "dl", download=True)
    assert len(src) == 12 and calls == [(str(tmp_path / "dl"), True, True)]


def test_missing_files_error_explains(tmp_path, no_system_data):
    with pytest.raises(FileNotFoundError) as e:
        build_source("fashion_mnist", "train", root=tmp_path / "nothing")
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg
    assert "root=" in msg


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    tr = build_source("fashion_mnist", "train")
    te = build_source("fashion_mnist", "test")
    assert len(tr) == 60000 and len(te) == 10000
    assert tr.num_classes == 10 and tr[0].shape == (1, 28, 28) and tr[0].dtype == torch.uint8
    assert torch.bincount(tr.labels).tolist() == [6000] * 10
    m = tr.images[:5000].float().div(255)
    assert abs(m.mean().item() - tr.mean[0]) < 0.02 and abs(m.std().item() - tr.std[0]) < 0.02


def test_source_info():
    i = source_info("fashion_mnist")
    assert (i.num_classes, i.channels, i.image_size) == (10, 1, 28)
    assert (source_info("cifar100").num_classes, source_info("cifar10").channels) == (100, 3)
    assert source_info("digits").image_size == 8
    s = source_info("strokes", image_size=48)
    assert s.num_classes is None and s.image_size == 48
    with pytest.raises(ValueError, match="nope"):
        source_info("nope")


# ---------------------------------------------------------------------------------------------
# class subsets, digits
# ---------------------------------------------------------------------------------------------
def test_class_subsets_digits():
    full = build_source("digits", "train", seed=3)
    a = build_source("digits", "train", num_classes=4, seed=3)
    b = build_source("digits", "train", num_classes=4, seed=3)
    t = build_source("digits", "test", num_classes=4, seed=3)
    c = build_source("digits", "train", num_classes=4, seed=4)
    assert a.original_classes == b.original_classes == t.original_classes
    assert a.original_classes == sorted(a.original_classes) and len(a.original_classes) == 4
    assert torch.equal(a.images, b.images)
    assert sorted(set(a.labels.tolist())) == [0, 1, 2, 3] and a.num_classes == 4
    # each remapped label holds exactly the images of its original class
    for lab, orig in enumerate(a.original_classes):
        assert torch.equal(a.images[a.labels == lab], full.images[full.labels == orig])
    assert a.class_names == [str(c) for c in a.original_classes]
    # different seed -> (almost surely) different classes
    seeds = {tuple(build_source("digits", "train", num_classes=4, seed=s).original_classes)
             for s in range(6)}
    assert len(seeds) > 1 and c.num_classes == 4
    # explicit list, remapped in sorted order
    e = build_source("digits", "train", classes=[7, 2], seed=3)
    assert e.original_classes == [2, 7]
    assert torch.equal(e.images[e.labels == 0], full.images[full.labels == 2])
    with pytest.raises(ValueError, match="num_classes"):
        build_source("digits", "train", num_classes=11)
    with pytest.raises(ValueError, match="classes"):
        build_source("digits", "train", classes=[3, 10])
    with pytest.raises(ValueError, match="either"):
        build_source("digits", "train", classes=[3], num_classes=1)


def test_max_per_class_and_subset():
    a = build_source("digits", "train", max_per_class=5, seed=1)
    b = build_source("digits", "train", max_per_class=5, seed=1)
    assert torch.bincount(a.labels).tolist() == [5] * 10 and torch.equal(a.images, b.images)
    c = build_source("digits", "train", max_per_class=5, seed=2)
    assert not torch.equal(a.images, c.images)
    s = build_source("digits", "train", subset=100, seed=1)
    assert len(s) == 100


def test_digits_split():
    from sklearn.datasets import load_digits

    y = load_digits().target
    tr = build_source("digits", "train", seed=0)
    te = build_source("digits", "test", seed=0)
    expect_test = sum(int(np.floor((y == c).sum() * 0.25 + 0.5)) for c in range(10))
    assert len(te) == expect_test and len(tr) + len(te) == 1797
    assert tr.images.shape[1:] == (1, 8, 8) and tr.images.max() == 255
    for c in range(10):  # stratified
        assert abs(int((te.labels == c).sum()) - 0.25 * (y == c).sum()) <= 1
    # train and test are disjoint and together the full dataset (compare as byte rows)
    rows = {bytes(r) for r in tr.images.flatten(1).numpy()} | \
        {bytes(r) for r in te.images.flatten(1).numpy()}
    full = np.rint(load_digits().images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    assert rows == {bytes(r) for r in full}
    assert torch.equal(te.images, build_source("digits", "test", seed=0).images)
    assert not torch.equal(te.images, build_source("digits", "test", seed=1).images)


# ---------------------------------------------------------------------------------------------
# cifar / imagefolder (tiny generated files)
# ---------------------------------------------------------------------------------------------
def test_cifar10_pickle_folder(tmp_path, no_system_data):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    allx = []
    for i in range(1, 6):
        x = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        allx.append(x)
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": x, b"labels": [i % 10, 3, 4, 5]}, f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": allx[0], b"labels": [0, 1, 2, 3]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}" for i in range(10)]}, f)
    tr = build_source("cifar10", "train", root=tmp_path)
    assert tr.images.shape == (20, 3, 32, 32) and tr.class_names[3] == "c3"
    np.testing.assert_array_equal(tr.images[0].numpy(), allx[0][0].reshape(3, 32, 32))
    te = build_source("cifar10", "test", root=tmp_path, classes=[1, 3])
    assert len(te) == 2 and te.labels.tolist() == [0, 1]


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("b_cls", "a_cls", "c_cls"):
            (tmp_path / split / cls).mkdir(parents=True)
            for k in range(n):
                arr = rng.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / cls / f"{k}.png")
    assert source_info("imagefolder", root=tmp_path).num_classes == 3
    tr = build_source("imagefolder", "train", root=tmp_path, image_size=16)
    assert tr.images is None and len(tr) == 9 and tr.class_names == ["a_cls", "b_cls", "c_cls"]
    x = tr[4]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8
    te = build_source("imagefolder", "test", root=tmp_path, image_size=8, classes=[2],
                      channels=1)
    assert len(te) == 2 and te.class_names == ["c_cls"] and te[0].shape == (1, 8, 8)
    assert te.get_batch([0, 1]).shape == (2, 1, 8, 8)


# ---------------------------------------------------------------------------------------------
# strokes
# ---------------------------------------------------------------------------------------------
def test_strokes_deterministic_prefix_and_balance():
    kw = dict(samples_per_class=6, test_per_class=3, seed=5)
    a = build_source("strokes", "train", num_classes=20, **kw)
    b = build_source("strokes", "train", num_classes=20, **kw)
    big = build_source("strokes", "train", num_classes=100, **kw)
    assert a.images.shape == (120, 1, 32, 32) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images)
    assert torch.equal(big.images[:120], a.images)  # prefix property, bitwise
    assert torch.equal(big.labels[:120], a.labels)
    assert torch.bincount(big.labels).tolist() == [6] * 100
    # explicit classes render the same templates/samples
    e = build_source("strokes", "train", classes=[3, 17], **kw)
    assert torch.equal(e.images, torch.cat([a.images[a.labels == 3], a.images[a.labels == 17]]))
    # test split has its own samples; another seed gives other classes
    te = build_source("strokes", "test", num_classes=20, **kw)
    assert len(te) == 60 and not torch.equal(te.images[:3], a.images[:3])
    o = build_source("strokes", "train", num_classes=20, samples_per_class=6, seed=6)
    assert not torch.equal(o.images, a.images)
    # samples vary within a class, images are not blank
    assert not torch.equal(a.images[0], a.images[1]) and a.images.float().mean() > 5
    c3 = build_source("strokes", "train", num_classes=2, samples_per_class=2, channels=3,
                      image_size=24, seed=5)
    assert c3.images.shape == (4, 3, 24, 24)


def test_strokes_many_classes_fast():
    t = time.perf_counter()
    s = build_source("strokes", "train", num_classes=1000, samples_per_class=2, seed=0)
    assert len(s) == 2000 and s.num_classes == 1000
    assert time.perf_counter() - t < 10.0


def _ncm_accuracy(tr, te):
    xtr, xte = tr.images.flatten(1).float(), te.images.flatten(1).float()
    means = torch.stack([xtr[tr.labels == c].mean(0) for c in range(tr.num_classes)])
    pred = torch.cdist(xte, means).argmin(1)
    return (pred == te.labels).float().mean().item()


def test_strokes_classes_separable():
    kw = dict(num_classes=20, samples_per_class=30, test_per_class=10, seed=1)
    tr = build_source("strokes", "train", within_class=0.2, **kw)
    te = build_source("strokes", "test", within_class=0.2, **kw)
    acc_easy = _ncm_accuracy(tr, te)
    assert acc_easy > 0.8  # chance = 0.05
    # more within-class variation / more shared base shape -> harder
    tr2 = build_source("strokes", "train", within_class=1.0, between_class=0.8, **kw)
    te2 = build_source("strokes", "test", within_class=1.0, between_class=0.8, **kw)
    assert _ncm_accuracy(tr2, te2) < acc_easy
    # mean within-class distance < mean between-class distance
    x = tr.images.flatten(1).float()
    d = torch.cdist(x, x)
    same = tr.labels[:, None] == tr.labels[None, :]
    assert d[same].mean() < 0.8 * d[~same].mean()


# ---------------------------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe,channels,size", [("simclr_cifar", 1, 28),
                                                  ("simclr_cifar", 3, 32),
                                                  ("simclr_imagenet", 3, 32),
                                                  ("simclr_imagenet", 1, 24)])
def test_views_deterministic(recipe, channels, size):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (3, channels, size, size), dtype=torch.uint8, generator=g)
    tf = MultiViewTransform(recipe, size, channels, num_views=3, seed=11)
    torch.manual_seed(1)
    a = tf(imgs[0], index=5, epoch=2)
    torch.manual_seed(999)
    _ = tf(imgs[1], index=6, epoch=2)  # other calls in between
    _ = torch.rand(100)
    b = tf(imgs[0], index=5, epoch=2)
    assert a.shape == (3, channels, size, size) and a.dtype == torch.float32
    assert torch.equal(a, b)
    # a fresh transform object with the same seed agrees; different views/epochs/seeds differ
    tf2 = MultiViewTransform(recipe, size, channels, num_views=3, seed=11)
    assert torch.equal(tf2(imgs[0], 5, 2), a)
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])
    assert not torch.equal(tf(imgs[0], 5, 3), a)
    assert not torch.equal(tf(imgs[0], 4, 2), a)
    tf3 = MultiViewTransform(recipe, size, channels, num_views=3, seed=12)
    assert not torch.equal(tf3(imgs[0], 5, 2), a)
    # batch application == per-sample application (bitwise)
    batch = tf.apply_batch(imgs, [5, 6, 7], 2)
    assert batch.shape == (3, 3, channels, size, size)
    for j, i in enumerate([5, 6, 7]):
        assert torch.equal(batch[:, j], tf(imgs[j], i, 2))
    assert torch.isfinite(batch).all()


def test_views_recipes_and_normalisation():
    img = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(0))
    assert MultiViewTransform("simclr_cifar", 28, 1, 2, 0).effective_recipe == "simclr_gray"
    assert MultiViewTransform("simclr_cifar", 32, 3, 2, 0).effective_recipe == "simclr_cifar"
    none = MultiViewTransform("none", 28, 1, 2, 0, mean=[0.3], std=[0.2])
    v = none(img, 0, 0)
    ref = (img.float() / 255 - 0.3) / 0.2
    torch.testing.assert_close(v[0], ref)
    assert torch.equal(v[0], v[1])
    ev = eval_transform(28, 1, [0.3], [0.2])
    assert torch.equal(ev(img), v[0])
    assert eval_transform(14, 1)(img).shape == (1, 14, 14)
    up = MultiViewTransform("crop_flip", 32, 1, 2, 0)(img, 0, 0)
    assert up.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="recipe"):
        MultiViewTransform("bogus", 28, 1, 2, 0)
    with pytest.raises(ValueError, match="channels"):
        MultiViewTransform("simclr_cifar", 28, 3, 2, 0)(img, 0, 0)


def test_views_augment_distribution():
    """Crops really vary: fraction of flipped views ~ 0.5, views differ from the original."""
    img = torch.zeros(1, 16, 16, dtype=torch.uint8)
    img[:, :, :4] = 255  # bright left band
    tf = MultiViewTransform("crop_flip", 16, 1, 1, seed=0, mean=[0.0], std=[1.0])
    v = tf.apply_batch(img.expand(400, 1, 16, 16).contiguous(), list(range(400)), 0)[0]
    left, right = v[:, 0, :, :8].mean((1, 2)), v[:, 0, :, 8:].mean((1, 2))
    frac_flipped = (right > left).float().mean().item()
    assert 0.3 < frac_flipped < 0.7


# ---------------------------------------------------------------------------------------------
# sampler
# ---------------------------------------------------------------------------------------------
def test_sampler_permutation_and_epochs():
    labels = torch.arange(103) % 7
    s = SeededBatchSampler(labels, 10, seed=0, drop_last=False)
    e0 = list(s)
    assert len(e0) == len(s) == 11 and [len(b) for b in e0] == [10] * 10 + [3]
    assert sorted(i for b in e0 for i in b) == list(range(103))
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(i for b in e1 for i in b) == list(range(103)) and e1 != e0
    s.set_epoch(0)
    assert list(s) == e0  # epoch fully determines the order
    d = SeededBatchSampler(labels, 10, seed=0, drop_last=True)
    bd = list(d)
    assert len(bd) == len(d) == 10 and all(len(b) == 10 for b in bd)
    assert len({i for b in bd for i in b}) == 100
    assert list(SeededBatchSampler(labels, 10, seed=1, drop_last=True)) != bd


@pytest.mark.parametrize("B,C", [(64, 10), (30, 7), (16, 16), (100, 3)])
def test_sampler_balanced(B, C):
    N = C * 37
    labels = torch.randperm(N, generator=torch.Generator().manual_seed(0)) % C
    s = SeededBatchSampler(labels, B, seed=3, balanced=True, drop_last=False)
    for e in range(2):
        s.set_epoch(e)
        batches = list(s)
        assert sorted(i for b in batches for i in b) == list(range(N))
        for b in batches:
            if len(b) < B:
                continue
            counts = torch.bincount(labels[b], minlength=C)
            # while all classes last (balanced data: all full batches)
            assert counts.min() >= B // C and counts.max() <= -(-B // C), counts


def test_sampler_balanced_imbalanced_data():
    labels = torch.tensor([0] * 50 + [1] * 20 + [2] * 10)
    s = SeededBatchSampler(labels, 12, seed=0, balanced=True, drop_last=False)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(80))
    first = torch.bincount(labels[batches[0]], minlength=3)
    assert first.tolist() == [4, 4, 4]
    # B < C: at most 2 per class per batch, all visited
    labels = torch.arange(200) % 20
    s = SeededBatchSampler(labels, 8, seed=0, balanced=True)
    for b in s:
        assert torch.bincount(labels[b]).max() <= 2


def test_sampler_resume():
    labels = torch.arange(50) % 5
    s = SeededBatchSampler(labels, 8, seed=2, balanced=True)
    s.set_epoch(3)
    full = list(s)
    s2 = SeededBatchSampler(labels, 8, seed=2, balanced=True)
    s2.set_epoch(3)
    it = iter(s2)
    got = [next(it), next(it)]
    state = s2.state_dict()
    assert state["epoch"] == 3 and state["consumed"] == 2
    s3 = SeededBatchSampler(labels, 8, seed=2, balanced=True)
    s3.load_state_dict(state)
    s3.set_epoch(3)  # same epoch keeps the position
    assert got + list(s3) == full
    s3.set_epoch(4)
    assert len(list(s3)) == len(s3)
    with pytest.raises(ValueError, match="batch_size"):
        SeededBatchSampler(labels, 4, seed=2, balanced=True).load_state_dict(state)


def test_shard():
    b = list(range(12))
    assert shard(b, 0, 3) == [0, 1, 2, 3] and shard(b, 2, 3) == [8, 9, 10, 11]
    assert torch.equal(shard(torch.arange(12), 1, 4), torch.tensor([3, 4, 5]))
    assert sum((shard(b, r, 4) for r in range(4)), []) == b
    with pytest.raises(ValueError, match="world_size"):
        shard(b, 0, 5)


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------
def _collect(loader, n):
    out = []
    for k, batch in enumerate(loader):
        out.append(batch)
        if k + 1 == n:
            break
    return out


def test_train_loader_workers_identical():
    src = build_source("strokes", "train", num_classes=5, samples_per_class=20, image_size=16,
                       seed=0)
    tf = MultiViewTransform("simclr_cifar", 16, 1, 2, seed=7, mean=src.mean, std=src.std)
    res = {}
    for nw in (0, 2):
        s = SeededBatchSampler(src.labels, 16, seed=7, balanced=True)
        ld = make_train_loader(src, tf, s, num_workers=nw)
        ld.set_epoch(1)
        res[nw] = list(ld)
        assert len(res[nw]) == 6
    for (v0, l0, i0), (v2, l2, i2) in zip(res[0], res[2]):
        assert v0.shape == (2, 16, 1, 16, 16) and v0.dtype == torch.float32
        assert torch.equal(v0, v2) and torch.equal(l0, l2) and torch.equal(i0, i2)
        assert torch.equal(l0, src.labels[i0])
    # views equal the transform applied directly; dataset indexing by (epoch, indices) or by
    # indices with the epoch attribute
    v, l, i = res[0][0]
    assert torch.equal(v[:, 3], tf(src[int(i[3])], int(i[3]), 1))
    ds = ViewBatchDataset(src, tf)
    assert torch.equal(ds[(1, i.tolist())][0], v)
    ds.epoch = 1
    assert torch.equal(ds[i.tolist()][0], v)


def test_train_loader_resume_mid_epoch():
    src = build_source("digits", "train", seed=0, max_per_class=8)
    tf = MultiViewTransform("simclr_cifar", 8, 1, 2, seed=1)
    s = SeededBatchSampler(src.labels, 10, seed=1)
    ld = make_train_loader(src, tf, s, num_workers=2)
    ld.set_epoch(0)
    full = list(ld)
    s_a = SeededBatchSampler(src.labels, 10, seed=1)
    ld_a = make_train_loader(src, tf, s_a, num_workers=2, prefetch_factor=4)
    it = iter(ld_a)
    first = [next(it) for _ in range(3)]
    state = ld_a.state_dict()  # prefetching workers ran ahead; state counts delivered batches
    assert state["consumed"] == 3
    del it
    s_b = SeededBatchSampler(src.labels, 10, seed=1)
    ld_b = make_train_loader(src, tf, s_b)
    ld_b.load_state_dict(state)
    rest = list(ld_b)
    got = first + rest
    assert len(got) == len(full) == len(s)
    for (va, la, ia), (vb, lb, ib) in zip(got, full):
        assert torch.equal(ia, ib) and torch.equal(va, vb)


def test_train_loader_persistent_workers_across_epochs_and_resume():
    """One loader with persistent workers (num_workers=2) for several epochs — as the trainer keeps one per
    stream —, left mid-epoch and resumed from its state: every batch equals num_workers=0's."""
    src = build_source("digits", "train", seed=0, max_per_class=8)
    tf = MultiViewTransform("simclr_cifar", 8, 1, 2, seed=1)
    ref_s = SeededBatchSampler(src.labels, 10, seed=1)
    ref = make_train_loader(src, tf, ref_s, num_workers=0)
    want = {}
    for e in (0, 1, 2):
        ref.set_epoch(e)
        want[e] = list(ref)
    s = SeededBatchSampler(src.labels, 10, seed=1)
    ld = make_train_loader(src, tf, s, num_workers=2, persistent_workers=True)
    assert ld.loader.persistent_workers
    got = {}
    for e in (0, 1):  # across an epoch boundary with the same worker processes
        ld.set_epoch(e)
        got[e] = list(ld)
    workers = ld.loader._iterator._workers
    ld.set_epoch(2)
    it = iter(ld)
    got[2] = [next(it) for _ in range(3)]
    assert ld.loader._iterator._workers is workers  # the processes were kept, not re-forked
    state = ld.state_dict()
    assert state == {**state, "epoch": 2, "consumed": 3}
    ld.close()
    ld.close()  # idempotent
    ld.load_state_dict(state)  # resume mid-epoch on the same loader: new workers
    got[2] += list(ld)
    ld.close()
    for e in want:
        assert len(got[e]) == len(want[e]) == len(ref_s)
        for (va, la, ia), (vb, lb, ib) in zip(got[e], want[e]):
            assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(va, vb)


def test_extract_loader_order():
    src = build_source("digits", "test", seed=0)
    ev = eval_transform(8, 1, src.mean, src.std)
    batches = list(extract_loader(src, ev, batch_size=100))
    idx = torch.cat([b[2] for b in batches])
    assert torch.equal(idx, torch.arange(len(src)))
    x = torch.cat([b[0] for b in batches])
    assert x.shape == (len(src), 1, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x, (src.images.float() / 255 - 0.5) / 0.5)
    assert torch.equal(torch.cat([b[1] for b in batches]), src.labels)
