"""The data.sources package: import paths kept, its public helpers (class subsets in memory, file
search order, the one torchvision download helper)."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

import repalign.data.sources as sources
from repalign.data.sources import download, in_memory_source


def test_package_keeps_the_module_api_and_registers_the_built_ins():
    for name in ["ImageSource", "SourceInfo", "SOURCES", "register_source", "build_source", "source_info",
                 "read_idx", "write_idx", "select_classes", "digits_split_indices", "default_normalization",
                 "FASHION_MNIST_CLASSES"]:
        assert hasattr(sources, name), name
    assert {"fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder", "digits", "strokes"} <= set(sources.SOURCES)


def test_in_memory_source_subsets_and_remaps():
    images = torch.arange(12 * 4, dtype=torch.uint8).reshape(12, 1, 2, 2)
    labels = np.array([0, 1, 2, 3] * 3)
    src = in_memory_source("toy", "train", images, labels, ["a", "b", "c", "d"], num_classes=None,
                           classes=[3, 1], seed=0, max_per_class=2)
    assert src.class_names == ["b", "d"] and src.original_classes == [1, 3]
    kept = (src.images[:, 0, 0, 0] // 4).tolist()  # original index of each kept image
    assert kept == sorted(kept) and len(kept) == 4
    assert src.labels.tolist() == [{1: 0, 3: 1}[int(labels[i])] for i in kept]
    assert sorted(src.labels.tolist()) == [0, 0, 1, 1]
    whole = in_memory_source("toy", "test", images, labels, ["a", "b", "c", "d"], num_classes=None, classes=None,
                             seed=0, max_per_class=None)
    assert torch.equal(whole.images, images) and whole.images.data_ptr() != images.data_ptr()


def test_candidate_dirs_order(tmp_path, monkeypatch):
    monkeypatch.setenv("REPALIGN_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(download, "system_dirs", lambda: [tmp_path / "sys"])
    monkeypatch.setattr(download, "cache_dir", lambda: tmp_path / "cache")
    got = download.candidate_dirs(tmp_path / "root", ["x"])
    assert got == [tmp_path / "root", tmp_path / "root" / "x", tmp_path / "env" / "x", tmp_path / "sys" / "x",
                   tmp_path / "cache" / "x"]
    (tmp_path / "f.gz").write_bytes(b"")
    assert download.find_file(tmp_path, "f") == tmp_path / "f.gz" and download.find_file(tmp_path, "g") is None


def test_torchvision_download_returns_the_target_and_names_the_source_on_failure(tmp_path, monkeypatch):
    calls = []

    class Good:
        def __init__(self, root, train, download):
            calls.append((root, train, download))

    class Bad:
        def __init__(self, **kw):
            raise OSError("no network")

    fake = types.ModuleType("torchvision.datasets")
    fake.Good, fake.Bad = Good, Bad
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    monkeypatch.setattr(sys.modules["torchvision"], "datasets", fake, raising=False)
    assert download.torchvision_download("toy", "Good", "test", tmp_path) == tmp_path
    assert calls == [(str(tmp_path), False, True)]
    monkeypatch.setattr(download, "cache_dir", lambda: tmp_path / "cache")
    with pytest.raises(RuntimeError, match=r"toy: torchvision download into .*cache failed"):
        download.torchvision_download("toy", "Bad", "train", None)
