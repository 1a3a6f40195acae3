"""Issue 17, item 4: one class mapping for all splits — the class subset and the labels are decided once,
from the train split, and applied to the test split and the evaluation banks; a class only one split has
is stated in one warning; a source with fewer than 2 classes is refused up front (one line, exit 2)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from repalign.cli import main
from repalign.config import load_config
from repalign.evaluation import knn_accuracy
from repalign.training import CoupledTrainer
from repalign.training.evaluate import make_eval_loaders

pytestmark = pytest.mark.faults

# A plug-in source: 8×8 grey images, class c a bright row c over noise; pixel (0, 0) holds 10·c, so the
# original class of every image can be read back from the image itself.
PLUGIN = '''
import torch


class Rows(torch.utils.data.Dataset):
    def __init__(self, split, train_classes, test_classes, n, test_n, declare):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        self.items = []
        for c in (train_classes if split == "train" else test_classes):
            for _ in range(n if split == "train" else test_n):
                img = torch.randint(0, 30, (1, 8, 8), generator=g, dtype=torch.uint8)
                img[0, c, 1:] += 200
                img[0, 0, 0] = 10 * c
                self.items.append((img, int(c)))
        if declare:
            self.classes = [f"c{k}" for k in range(8)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def rows(split, train_classes=(0, 1, 2, 3, 4), test_classes=(0, 1, 2, 3, 4, 5), n=8, test_n=6, declare=False):
    return Rows(split, list(train_classes), list(test_classes), n, test_n, declare)
'''


@pytest.fixture
def ref(tmp_path) -> str:
    (tmp_path / "rows_data.py").write_text(PLUGIN)
    return f"{tmp_path}/rows_data.py:rows"


def _overrides(ref: str, options: str, **extra) -> list[str]:
    base = {"data.source": ref, "data.max_per_class": "null", "data.test_max_per_class": "null",
            "train.batch_size": 8, "train.epochs": 1, "train.threads": 1, "eval.every": 1,
            "eval.untrained_baseline": False, "eval.layers": "[h]", "eval.knn_k": 3}
    base.update(extra)
    return tiny_overrides(**base) + [f"data.options={options}"]


def _trainer(ref: str, options: str, **extra) -> CoupledTrainer:
    return CoupledTrainer(load_config(None, _overrides(ref, options, **extra)), None, evaluator=None)


def _orig(src) -> list[int]:
    """The original class of each image of ``src``, read from the image."""
    return (src.images[:, 0, 0, 0].long() // 10).tolist()


def _pixel_knn(train, test) -> float:
    return knn_accuracy(train.images.flatten(1).float(), train.labels, test.images.flatten(1).float(), test.labels,
                        k=3)


def _assert_one_mapping(tr: CoupledTrainer) -> None:
    train, test = tr.train_source, tr.test_source
    assert test.original_classes == train.original_classes and test.class_names == train.class_names
    for src in (train, test):  # label k is original class train.original_classes[k] in every split
        assert _orig(src) == [train.original_classes[k] for k in src.labels.tolist()], src.split
    loaders = make_eval_loaders(tr.cfg, train, test, tr.image_size, tr.channels)
    for split, src in (("train", train), ("test", test)):  # the evaluation banks
        for _x, y, idx in loaders[split]:
            assert [train.original_classes[k] for k in y.tolist()] == [_orig(src)[i] for i in idx.tolist()], split


def _warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("repalign: warning:")]


def test_test_only_class_is_dropped_with_one_warning_and_knn_matches_control(ref, capsys):
    # seed 0 draws a different 5 of the test split's 6 classes when each split chooses its own (the bug)
    tr = _trainer(ref, "{}", **{"data.num_classes": 5, "seed": 0})
    err = capsys.readouterr().err
    ctl = _trainer(ref, "{test_classes: [0, 1, 2, 3, 4]}", **{"data.num_classes": 5, "seed": 0})
    assert _warnings(capsys.readouterr().err) == []  # the control: both splits have the same classes
    assert tr.train_source.original_classes == [0, 1, 2, 3, 4]
    _assert_one_mapping(tr)
    assert 5 not in _orig(tr.test_source) and len(tr.test_source) == 5 * 6
    (w,) = _warnings(err)
    assert "class 5 " in w and "6 test images" in w and "rows_data.py:rows" in w, w
    # naive reference: the test split of the control is the same images with the same labels
    assert torch.equal(tr.test_source.images, ctl.test_source.images)
    assert torch.equal(tr.test_source.labels, ctl.test_source.labels)
    acc, acc_ctl = _pixel_knn(tr.train_source, tr.test_source), _pixel_knn(ctl.train_source, ctl.test_source)
    assert acc == acc_ctl == 1.0


def test_tiny_run_knn_on_the_test_split_equals_the_all_classes_control(ref, tmp_path, capsys):
    def knn(options: str, name: str) -> list[float]:
        assert main(["train", "demo", *_overrides(ref, options, **{"data.num_classes": 5, "seed": 0}),
                     "--run-dir", str(tmp_path / name)]) == 0
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        got = [r["knn_acc"] for r in rows if r["kind"] == "eval" and r["split"] == "test"]
        assert got
        return got

    extra = knn("{}", "extra")
    err = capsys.readouterr().err
    assert extra == knn("{test_classes: [0, 1, 2, 3, 4]}", "control")  # same test images, same labels
    assert len(_warnings(err)) == 1


def test_train_only_class_is_stated_in_one_warning(ref, capsys):
    tr = _trainer(ref, "{train_classes: [0, 1, 2, 3, 4, 5], test_classes: [0, 1, 2, 4, 5], declare: true}")
    (w,) = _warnings(capsys.readouterr().err)
    assert "class 3 ('c3')" in w and "no images" in w and "other 5 classes" in w, w
    _assert_one_mapping(tr)
    assert tr.train_source.num_classes == 6 and sorted(set(tr.test_source.labels.tolist())) == [0, 1, 2, 4, 5]


@pytest.mark.parametrize("how", ["plugin", "builtin"])
def test_one_class_source_is_refused_up_front(ref, tmp_path, capsys, how):
    if how == "plugin":
        ov = _overrides(ref, "{train_classes: [3], test_classes: [3, 4]}")
        name = "rows_data.py:rows"
    else:
        ov = tiny_overrides(**{"data.classes": "[3]", "train.batch_size": 8})
        name = "'digits'"
    run = tmp_path / "run"
    assert main(["train", "demo", *ov, "--run-dir", str(run)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and name in lines[0] and "1 class " in lines[0] and "at least 2" in lines[0], lines
    assert not (run / "metrics.jsonl").exists()


def test_mapping_is_identical_across_splits_for_random_class_sets(ref, capsys):
    rng = random.Random(17)
    cases = 0
    for trial in range(12):
        train_cl = sorted(rng.sample(range(8), rng.randint(3, 7)))
        test_cl = list(train_cl) if trial % 4 == 3 else sorted(rng.sample(range(8), rng.randint(3, 8)))
        k = rng.choice([None, 2, len(train_cl) - 1, len(train_cl), "explicit"])
        declare = rng.random() < 0.5
        options = f"{{train_classes: {train_cl}, test_classes: {test_cl}, declare: {str(declare).lower()}}}"
        extra = {"seed": trial, "data.num_classes": "null" if k in (None, "explicit") else k}
        if k == "explicit":  # data.classes: original indices, among the train split's classes
            explicit = sorted(rng.sample(train_cl, 2))
            extra["data.classes"], k = f"[{explicit[0]}, {explicit[1]}]", 2
        keep_from = set(train_cl)
        try:
            tr = _trainer(ref, options, **extra)
        except Exception as e:  # noqa: BLE001 - only when no kept class has a test image
            assert "no images of the train split" in str(e), (options, extra, e)
            continue
        cases += 1
        err = capsys.readouterr().err
        train, test = tr.train_source, tr.test_source
        keep = train.original_classes
        assert set(keep) <= keep_from and len(keep) == (len(train_cl) if k is None else k), (options, extra)
        if "data.classes" in extra:
            assert extra["data.classes"] == f"[{keep[0]}, {keep[1]}]"
        _assert_one_mapping(tr)
        # naive reference: the test split is every test image of a kept class, in the dataset's order
        assert _orig(test) == [c for c in test_cl for _ in range(6) if c in keep], (options, extra)
        want_names = [f"c{c}" if declare else str(c) for c in keep]
        assert train.class_names == want_names and test.class_names == want_names
        only_test, only_train = sorted(set(test_cl) - keep_from), [c for c in keep if c not in test_cl]
        ws = _warnings(err)
        assert len(ws) == bool(only_test) + bool(only_train), (options, extra, ws)
        if only_test:
            n = 6 * len(only_test)
            assert any(f"dropped {n} test image" in w and all(str(c) in w for c in only_test) for w in ws), ws
        if only_train:
            assert any("no images of class" in w and all(str(c) in w for c in only_train) for w in ws), ws
        assert np.array_equal(np.unique(test.labels.numpy()),
                              np.asarray([i for i, c in enumerate(keep) if c in test_cl]))
    assert cases >= 8


def test_sources_given_as_objects_are_conformed_to_the_train_mapping(ref, capsys):
    from repalign.data import ImageSource

    g = torch.Generator().manual_seed(0)

    def split(name: str, orig: list[int]) -> ImageSource:  # labels 0..C-1 of its own original classes
        imgs = torch.randint(0, 30, (6 * len(orig), 1, 8, 8), generator=g, dtype=torch.uint8)
        labels = torch.arange(len(orig)).repeat_interleave(6)
        imgs[:, 0, 0, 0] = 10 * torch.tensor(orig)[labels].to(torch.uint8)
        return ImageSource(name="mine", split=name, images=imgs, labels=labels, class_names=[f"k{c}" for c in orig],
                           channels=1, image_size=8, original_classes=orig)

    cfg = load_config(None, _overrides(ref, "{}"))
    tr = CoupledTrainer(cfg, None, evaluator=None, sources=(split("train", [1, 2, 4]), split("test", [0, 2, 4])))
    _assert_one_mapping(tr)
    assert _orig(tr.test_source) == [2] * 6 + [4] * 6 and tr.test_source.class_names == ["k1", "k2", "k4"]
    ws = _warnings(capsys.readouterr().err)
    assert len(ws) == 2 and any("class 0 " in w and "dropped 6 test images" in w for w in ws), ws
    assert any("no images of class 1 ('k1')" in w for w in ws), ws


def test_imagefolder_test_only_class_dropped_with_a_warning(tmp_path):
    from PIL import Image

    from repalign.data import build_source

    for sp, classes in (("train", "ab"), ("test", "abc")):
        for c in classes:
            (tmp_path / sp / c).mkdir(parents=True)
            for i in range(2):
                Image.new("L", (8, 8), color=40 * (ord(c) - 96) + i).save(tmp_path / sp / c / f"{i}.png")
    train = build_source("imagefolder", "train", root=tmp_path, image_size=8, channels=1)
    with pytest.warns(UserWarning, match=r"class 'c' that the train split lacks; dropped 2 test images") as w:
        test = build_source("imagefolder", "test", root=tmp_path, image_size=8, channels=1)
    assert test.class_names == train.class_names == ["a", "b"] and test.labels.tolist() == [0, 0, 1, 1]
    assert [x.category.__name__ for x in w] == ["DataWarning"]  # the trainer prints it as one line
