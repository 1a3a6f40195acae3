"""Issue 17, item 7 (follow-up): a bad value a user can put in a config (``data.options``,
``data.classes``, ``data.num_classes``, ``model.*``) or a corrupt data file raises one of our error
classes where the check is made, so ``repalign train`` prints one line naming the key or the file and
exits 2 — before, these were bare ``ValueError``s (or a ``TypeError``) and ended in a traceback
(docs/design.md, "Which errors are one line").

Every ``train`` case here failed on the code before the change (a traceback: ``main`` re-raised)."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides

from repalign.cli import main
from repalign.errors import ConfigError, DataError

pytestmark = pytest.mark.faults

FAST = {"train.epochs": 1, "train.max_steps": 1, "eval.every": 1, "train.threads": 1,
        "eval.untrained_baseline": False, "eval.layers": "[h]"}
ARMS = "arms={cl: {objective: cl}}"
STROKES = {"data.source": "strokes", "data.num_classes": 4, "data.max_per_class": 8, "data.test_max_per_class": 4,
           "train.batch_size": 8, "eval.knn_k": 3, "eval.max_train": 32, "eval.max_test": 16}


def train_err(tmp_path, capsys, **extra: object) -> tuple[int, str]:
    """``repalign train`` of the tiny config with ``extra`` overrides: exit code and the stderr line
    (exactly one, ``repalign: error: …``)."""
    rc = main(["train", "demo", *tiny_overrides(**FAST, **extra), ARMS, "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("repalign: error: "), err
    return rc, err


# ------------------------------------------------------------------- strokes knobs (data.options.<knob>)
STROKES_KNOBS = [
    ("{within_class: 2}", "data.options.within_class", "within_class must lie in [0, 1], got 2"),
    ("{between_class: -1}", "data.options.between_class", "between_class must lie in [0, 1], got -1"),
    ("{channels: 2}", "data.options.channels", "channels must be 1 or 3, got 2"),
    ("{image_size: 2}", "data.options.image_size", "image_size must be >= 4, got 2"),
    ("{samples_per_class: -1}", "data.options.samples_per_class", "samples_per_class must be >= 0, got -1"),
    ("{test_per_class: -1}", "data.options.test_per_class", "test_per_class must be >= 0, got -1"),
    ("{within_class: abc}", "data.options.within_class", "within_class must lie in [0, 1], got 'abc'"),  # TypeError before
]


@pytest.mark.parametrize("options,key,text", STROKES_KNOBS, ids=[k for _o, k, _t in STROKES_KNOBS])
def test_strokes_option_out_of_range_is_one_line(tmp_path, capsys, options, key, text):
    rc, err = train_err(tmp_path, capsys, **STROKES, **{"data.options": options})
    assert rc == 2 and err == f"repalign: error: config key '{key}': {text}", err
    assert not (tmp_path / "r" / "checkpoints").exists()  # refused while building the data


def test_strokes_generator_keeps_value_errors_for_library_callers():
    from repalign.data import generate_strokes, make_templates

    with pytest.raises(ValueError, match=r"within_class must lie in \[0, 1\], got 2") as e:
        generate_strokes([0, 1], "train", within_class=2)
    assert not isinstance(e.value, ConfigError)  # no config key: the caller passed an argument
    with pytest.raises(ValueError, match=r"between_class must lie in \[0, 1\], got 1.5"):
        make_templates([0], 0, between_class=1.5)


# ----------------------------------------------------------------------- other source options (data.options)
@pytest.mark.parametrize("extra,key,text", [
    ({**STROKES, "data.options": "{bogus: 1}"}, "data.options", "source 'strokes' got unexpected keyword(s) ['bogus']"),
    ({"data.options": "{bogus: 1}"}, "data.options", "source 'digits' got unexpected keyword(s) ['bogus']"),
    ({"data.options": "{test_fraction: 2}"}, "data.options.test_fraction", "test_fraction must lie in (0, 1), got 2"),
    ({"data.options": "{subset: 0}"}, "data.options.subset", "subset must be a positive int, got 0"),
    # the trainer passes these itself: a TypeError (duplicate keyword) before
    ({"data.options": "{num_classes: 3}"}, "data.options", "'num_classes' is not a source option; set data.num_classes"),
    ({"data.options": "{seed: 3}"}, "data.options", "'seed' is not a source option; set seed"),
], ids=["strokes-unknown", "digits-unknown", "test_fraction", "subset", "num_classes", "seed"])
def test_bad_source_option_is_one_line(tmp_path, capsys, extra, key, text):
    rc, err = train_err(tmp_path, capsys, **extra)
    assert rc == 2 and err == f"repalign: error: config key '{key}': {text}", err


def test_reserved_source_option_is_refused_at_config_time():
    from repalign.config import load_config

    with pytest.raises(ConfigError, match=r"config key 'data.options': 'root' is not a source option; set data.root"):
        load_config(None, tiny_overrides(**{"data.options": "{root: /tmp}"}))


# --------------------------------------------------------------------------------------- data.classes
@pytest.mark.parametrize("extra,text", [
    ({**STROKES, "data.num_classes": "null", "data.classes": "[1,1]"},
     "classes must be distinct non-negative ints, got [1, 1]"),
    ({**STROKES, "data.num_classes": "null", "data.classes": "[]"}, "classes must be distinct non-negative ints, got []"),
    ({"data.classes": "[1,1]"}, "classes contains duplicates: [1, 1]"),
    ({"data.classes": "[]"}, "classes must not be empty for source 'digits'"),
], ids=["strokes-duplicates", "strokes-empty", "digits-duplicates", "digits-empty"])
def test_bad_class_list_is_one_line(tmp_path, capsys, extra, text):
    rc, err = train_err(tmp_path, capsys, **extra)
    assert rc == 2 and err == f"repalign: error: config key 'data.classes': {text}", err


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """An imagefolder root with 2 classes of 4 tiny PNGs per split."""
    from PIL import Image

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_imagefolder_bad_channels_and_too_many_classes_are_one_line(image_folder, tmp_path, capsys):
    base = {"data.source": "imagefolder", "data.root": str(image_folder), "data.image_size": 8,
            "data.max_per_class": "null", "data.test_max_per_class": "null", "train.batch_size": 4, "eval.knn_k": 2}
    rc, err = train_err(tmp_path, capsys, **base, **{"data.options": "{channels: 2}"})
    assert rc == 2 and err == "repalign: error: config key 'data.options.channels': channels must be 1 or 3, got 2", err
    rc, err = train_err(tmp_path, capsys, **base, **{"data.num_classes": 3})
    assert rc == 2 and err == ("repalign: error: config key 'data.num_classes': num_classes=3 exceeds the 2 classes "
                               "available for source 'imagefolder'"), err


# ------------------------------------------------------------------------------------------- model.*
@pytest.mark.parametrize("extra,key,text", [
    ({"model.encoder": "resnet18", "model.width": 2}, "model.width",
     "must be 1 for resnet18 (torchvision BasicBlock has fixed width), got 2"),
    ({"model.encoder": "resnet18", "model.width": "null", "model.norm": "none"}, "model.norm",
     "must be 'batch' or 'group' for resnet18, got 'none'"),
    ({"model.encoder": "vit", "model.vit_preset": "bogus"}, "model.vit_preset",
     "must be one of ['224', '32', '64', 'tiny'], got 'bogus'"),
    ({"model.encoder": "vit"}, "model.vit_preset",  # digits are 8 px: no preset of that name
     "must be one of ['224', '32', '64', 'tiny'], got '8' (the default: the image size)"),
    ({**STROKES, "data.image_size": 30, "model.encoder": "vit", "model.vit_preset": "tiny"}, "data.image_size",
     "image size 30 is not divisible by ViT patch size 4 (model.vit_preset 'tiny')"),
], ids=["resnet18-width", "resnet18-norm", "vit-preset", "vit-default-preset", "vit-patch"])
def test_bad_model_setting_is_one_line(tmp_path, capsys, extra, key, text):
    rc, err = train_err(tmp_path, capsys, **extra)
    assert rc == 2 and err == f"repalign: error: config key '{key}': {text}", err


def test_config_named_library_checks_are_config_errors():
    """Checks the schema makes first (so no config reaches them) but that name a key: ConfigError too."""
    from repalign.models import build_encoder
    from repalign.models.projector import Projector
    from repalign.training.optim import scaled_lr

    with pytest.raises(ConfigError, match=r"config key 'optim.lr_rule': must be linear"):
        scaled_lr(0.1, 256, "cubic")
    with pytest.raises(ConfigError, match=r"config key 'model.projector_norm': must be 'batch' or 'none'"):
        Projector(4, 4, 4, norm="layer")
    with pytest.raises(ConfigError, match=r"config key 'model.encoder': must be one of"):
        build_encoder({"encoder": "vgg"}, 3, 32)


# ---------------------------------------------------------------------------------- corrupt IDX files
def _idx_root(tmp_path: Path, fault: str) -> Path:
    from repalign.data import write_idx

    root = tmp_path / "fm"
    root.mkdir()
    rng = np.random.default_rng(0)
    for pre, n in (("train", 40), ("t10k", 20)):
        write_idx(root / f"{pre}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{pre}-labels-idx1-ubyte", (np.arange(n - (fault == "count" and pre == "train")) % 10)
                  .astype(np.uint8))
    img = root / "train-images-idx3-ubyte"
    raw = img.read_bytes()
    if fault == "magic":
        img.write_bytes(b"<html>not found</html>")
    elif fault == "payload":
        img.write_bytes(raw[:-10])
    elif fault == "gzip":  # a download cut short
        img.unlink()
        (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:200])
    return root


@pytest.mark.parametrize("fault,text", [
    ("magic", "not an IDX file (bad magic b'<htm')"),
    ("payload", "IDX payload has 31350 bytes, expected 31360 for shape (40, 28, 28)"),
    ("gzip", "corrupt gzip data"),
    ("count", "40 images but 39 labels"),
])
def test_corrupt_idx_file_is_one_line_naming_it(tmp_path, capsys, fault, text):
    root = _idx_root(tmp_path, fault)
    rc, err = train_err(tmp_path, capsys, **{"data.source": "fashion_mnist", "data.root": str(root),
                                             "data.max_per_class": 4, "data.test_max_per_class": 2,
                                             "train.batch_size": 8, "eval.knn_k": 3})
    assert rc == 2 and str(root / "train-images-idx3-ubyte") in err and text in err, err
    from repalign.data import read_idx

    bad = next(p for p in root.iterdir() if p.name.startswith("train-images"))
    if fault != "count":
        with pytest.raises(DataError):  # still a ValueError for library callers
            read_idx(bad)


# ------------------------------------------------------------------------------- end to end, one process
def test_subprocess_train_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "repalign", "train", "demo",
                        *tiny_overrides(**FAST, **STROKES, **{"data.options": "{within_class: 1.5}"}), ARMS,
                        "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "repalign: error: config key 'data.options.within_class': within_class must lie in [0, 1], got 1.5"], p.stderr
