"""Issue 17, item 7 (weak cases, part A): each ends in one line on stderr with exit 2, or works —
an ∞ loss-gap bound in summaries and sweeps, lazy plug-in sources returning the wrong images,
``eval.knn_k`` above the kNN bank, ``report`` / ``align`` on the wrong path, a non-UTF-8 run
directory name — and the rule of ``cli.main``: our error classes are one line, anything else (a bare
``ValueError`` included) is a bug with its traceback (docs/design.md, "Which errors are one line").

Every test here failed on the code before its fix."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from repalign.cli import main
from repalign.config import ConfigError, load_config, resolve_config_path
from repalign.errors import DataError
from repalign.results import read_rows
from repalign.training import CoupledTrainer

pytestmark = pytest.mark.faults

FAST = {"train.epochs": 1, "eval.every": 1, "train.threads": 1, "eval.untrained_baseline": False,
        "eval.layers": "[h]"}
ARMS = "arms={cl: {objective: cl}, nscl: {objective: nscl}}"
# Two classes, 4 images each, batches of 2: half the batches hold one class, whose loss-gap bound is
# log(1 + e^{2/τ}·n_max/(N − n_max)) = ∞ (stored as "inf"). With seed 1 the last logged batch is one.
ONE_CLASS = {**FAST, "data.classes": "[0,1]", "train.batch_size": 2, "data.max_per_class": 4,
             "data.test_max_per_class": 4, "eval.knn_k": 1, "eval.max_train": 8, "eval.max_test": 8}


def one_class_overrides() -> list[str]:
    return tiny_overrides(**ONE_CLASS) + [ARMS, "seed=1"]


def last_bound(run_dir: Path) -> object:
    gaps = [r for r in read_rows(run_dir) if r["kind"] == "lossgap"]
    return gaps[-1]["bound"]


def one_line_err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("repalign: error: "), err
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weak") / "run"
    torch.manual_seed(0)
    CoupledTrainer(load_config(resolve_config_path("demo"), one_class_overrides()), d).fit()
    assert last_bound(d) == "inf", "precondition: the fixture's last batch holds one class"
    return d


# ---------------------------------------------------------------------------------------------- 1: ∞ bound
def test_train_summary_shows_infinite_bound(tmp_path, capsys):
    rd = tmp_path / "r"
    rc = main(["train", "demo", *one_class_overrides(), "--run-dir", str(rd)])
    out = capsys.readouterr().out
    assert last_bound(rd) == "inf", "precondition: the last logged batch holds one class"
    assert rc == 0
    line = [ln for ln in out.splitlines() if ln.startswith("last batch loss gap")]
    assert len(line) == 1 and line[0].endswith("≤ bound ∞"), out


def test_summary_and_report_tables_render_infinity(run):
    from repalign.cli import format_number, summary_table
    from repalign.report.html import fmt

    assert summary_table(run).splitlines()[-1].endswith("≤ bound ∞")
    assert [format_number(v) for v in ("inf", float("inf"), "-inf", float("nan"), 1.23456, None, "x")] == \
        ["∞", "∞", "−∞", "nan", "1.2346", "-", "-"]
    assert [fmt(v) for v in ("inf", float("inf"), float("-inf"), "-inf", 0.5, "cl")] == ["∞", "∞", "−∞", "−∞", "0.5", "cl"]


def test_sweep_point_with_infinite_bound_finishes(tmp_path, capsys):
    """A point run as a ``repalign train`` subprocess (the local launcher) whose last batch has one
    class: it finishes, summary.csv holds the ∞ bound and reads back as inf, the sweep report works."""
    from repalign.experiments import sweep as sw
    from repalign.results import read_summary

    out = tmp_path / "sw"
    spec = sw.load_spec({"base": "demo", "overrides": tiny_overrides(**ONE_CLASS) + [ARMS], "grid": {"seed": [1]},
                         "out": str(out), "launcher": "local", "processes": 1})
    res = sw.run_sweep(spec, log=lambda s: None)
    assert res.ran == ["seed=1"]
    assert last_bound(out / "points" / "seed=1") == "inf"
    with open(res.summary, newline="") as f:
        bounds = [r["bound"] for r in csv.DictReader(f) if r["kind"] == "lossgap"]
    assert bounds and bounds[-1] == "inf"
    gaps = [r for r in read_summary(res.summary) if r.get("kind") == "lossgap"]
    assert gaps[-1]["bound"] == float("inf")
    assert main(["report", str(out)]) == 0


# ---------------------------------------------------------------------------------- 2: lazy plug-in sources
LAZY = '''
import os
import torch
from repalign.data.sources import ImageSource


def _img(i):
    g = torch.Generator().manual_seed(i)
    img = torch.randint(0, 255, (1, 8, 8), generator=g, dtype=torch.uint8)
    mode = os.environ.get("LAZY_MODE", "ok")
    if mode == "float":
        return img.float() / 255
    if mode == "size":
        return torch.randint(0, 255, (1, 12, 12), generator=g, dtype=torch.uint8)
    if mode == "channels":
        return img.expand(3, 8, 8).contiguous()
    if mode == "numpy":
        return img.numpy()
    return img


def lazy(split, n=32):
    return ImageSource(name="lazy", split=split, labels=torch.arange(n) % 4, class_names=["a", "b", "c", "d"],
                       channels=1, image_size=8, loader=_img)
'''
BAD_ITEMS = {"float": "float32 [1, 8, 8]", "size": "uint8 [1, 12, 12]", "channels": "uint8 [3, 8, 8]",
             "numpy": "ndarray"}


@pytest.fixture
def lazy_file(tmp_path) -> Path:
    p = tmp_path / "lazy_src.py"
    p.write_text(LAZY)
    return p


@pytest.mark.parametrize("mode", sorted(BAD_ITEMS))
def test_lazy_source_wrong_item_is_one_line(lazy_file, monkeypatch, mode):
    import importlib.util

    monkeypatch.setenv("LAZY_MODE", mode)
    spec = importlib.util.spec_from_file_location("lazy_src_test", lazy_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = mod.lazy("train")
    with pytest.raises(DataError) as e:
        src[5]
    msg = str(e.value)
    assert "\n" not in msg and "'lazy'" in msg and "item 5" in msg and "[1, 8, 8]" in msg and BAD_ITEMS[mode] in msg
    with pytest.raises(DataError, match="item 0"):
        src.get_batch([0, 1])
    monkeypatch.setenv("LAZY_MODE", "ok")
    assert src[5].dtype == torch.uint8 and tuple(src[5].shape) == (1, 8, 8)


def test_lazy_source_float_images_stop_training_with_one_line(lazy_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAZY_MODE", "float")
    ov = tiny_overrides(**FAST, **{"data.source": f"{lazy_file}:lazy", "data.max_per_class": "null",
                                   "data.test_max_per_class": "null", "train.batch_size": 16, "eval.knn_k": 3,
                                   "eval.max_train": 32, "eval.max_test": 32})
    rc = main(["train", "demo", *ov, ARMS, "--run-dir", str(tmp_path / "r")])
    err = one_line_err(capsys)
    assert rc == 2 and "'lazy'" in err and "float32" in err and "uint8" in err, err


# ---------------------------------------------------------------------------------------- 3: eval.knn_k
def test_knn_k_above_max_train_is_a_config_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"'eval\.knn_k': 100 exceeds .*eval\.max_train = 64"):
        load_config(None, tiny_overrides(**{"eval.knn_k": 100, "eval.max_train": 64}))
    rc = main(["train", "demo", *tiny_overrides(**FAST, **{"eval.knn_k": 100}), ARMS, "--run-dir", str(tmp_path / "r")])
    err = one_line_err(capsys)
    assert rc == 2 and "eval.knn_k" in err and "100" in err and "64" in err, err


def test_knn_k_above_train_set_is_one_line_before_training(tmp_path, capsys):
    # eval.max_train = 1000 allows k = 500, but digits with 16 images per class has 160: the bank is 160
    rd = tmp_path / "r"
    rc = main(["train", "demo", *tiny_overrides(**FAST, **{"eval.knn_k": 500, "eval.max_train": 1000}), ARMS,
               "--run-dir", str(rd)])
    err = one_line_err(capsys)
    assert rc == 2 and "eval.knn_k" in err and "500" in err and "bank size 160" in err, err
    assert not (rd / "checkpoints" / "last.pt").exists()  # refused before any step


# ------------------------------------------------------------------------------------ 4, 5: wrong paths
def test_report_on_missing_or_foreign_path_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["report", str(missing)]) == 2
    assert str(missing) in one_line_err(capsys)
    (tmp_path / "f.txt").write_text("x")
    assert main(["report", str(tmp_path / "f.txt")]) == 2
    assert "not a directory" in one_line_err(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "neither a run directory" in one_line_err(capsys)


def test_align_without_evaluation_checkpoints_is_one_line(run, tmp_path, capsys):
    bare = tmp_path / "bare"  # a run that stopped before its first evaluation: config.yaml only
    bare.mkdir()
    shutil.copy(run / "config.yaml", bare / "config.yaml")
    assert main(["align", str(bare), "--quiet"]) == 2
    err = one_line_err(capsys)
    assert str(bare) in err and "no evaluation checkpoints" in err, err
    pruned = tmp_path / "pruned"  # evaluation checkpoints deleted, last.pt kept
    shutil.copytree(run, pruned)
    for p in list((pruned / "checkpoints").glob("epoch_*.pt")) + list((pruned / "checkpoints").glob("step_*.pt")):
        p.unlink()
    assert (pruned / "checkpoints" / "last.pt").exists()
    assert main(["align", str(pruned), "--quiet"]) == 2
    assert "no evaluation checkpoints" in one_line_err(capsys)


# ------------------------------------------------------------------------------ 6: non-UTF-8 directory name
def test_report_of_non_utf8_run_directory_name(run, tmp_path, capsys):
    d = os.fsencode(tmp_path) + b"/run\xff"
    try:
        shutil.copytree(os.fsencode(run), d)
    except OSError as e:  # a file system that refuses such names
        pytest.skip(f"cannot create a non-UTF-8 name here: {e}")
    path = os.fsdecode(d)
    assert main(["report", path]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("report.html") and "\ufffd" in out
    html = (Path(path) / "report" / "report.html").read_bytes().decode("utf-8")  # valid UTF-8
    assert "run\ufffd" in html


# --------------------------------------------------------------------------------------- 7: the rule
def test_rule_our_classes_are_one_line_other_value_errors_are_bugs(monkeypatch, tmp_path, capsys):
    import repalign.experiments.cli_report as cli_report
    from repalign.training.evaluate import eval_epochs

    # a check made where the value is used raises ConfigError (still a ValueError for library callers)
    with pytest.raises(ConfigError, match="eval.schedule"):
        eval_epochs({"schedule": [99], "every": 1}, 2)
    # a bare ValueError is a bug: its traceback stays, whatever its message looks like
    def boom(args):
        raise ValueError("config key 'x': looks like a config error but is a bug")

    monkeypatch.setattr(cli_report, "cmd_report", boom)
    with pytest.raises(ValueError, match="looks like"):
        main(["report", str(tmp_path)])

    def user(args):
        raise DataError("data source 'x': bad item")

    monkeypatch.setattr(cli_report, "cmd_report", user)
    assert main(["report", str(tmp_path)]) == 2
    assert one_line_err(capsys) == "repalign: error: data source 'x': bad item"
