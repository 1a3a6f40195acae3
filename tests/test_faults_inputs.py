"""Issue 17, items 3 and 7 (weaker cases): duplicated rows, unreadable run configs — each ends in one
line or is read correctly, never a traceback or a second "seed"."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from repalign.cli import main
from repalign.config import ConfigError, load_config, resolve_config_path
from repalign.results import latest_rows, read_config, read_rows
from repalign.training import CoupledTrainer

pytestmark = pytest.mark.faults

FAST = {"train.epochs": 1, "eval.every": 1, "train.threads": 1, "eval.untrained_baseline": False,
        "eval.layers": "[h]"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs") / "run"
    torch.manual_seed(0)
    CoupledTrainer(load_config(resolve_config_path("demo"), tiny_overrides(**FAST)), d).fit()
    return d


def test_metrics_appended_to_itself_reads_once_with_a_warning(run, tmp_path):
    dup = tmp_path / "dup"
    shutil.copytree(run, dup)
    m = dup / "metrics.jsonl"
    text = m.read_text()
    m.write_text(text + text)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        rows = read_rows(dup)
    assert rows == read_rows(run)  # naive reference: the file as written once
    assert len(rows) == len([ln for ln in text.splitlines() if ln.strip()])
    msg = [str(x.message) for x in w if "duplicate" in str(x.message)]
    assert len(msg) == 1 and str(m) in msg[0] and "kind" in msg[0]
    key = lambda r: (r.get("kind"), r.get("arm"), r.get("pair"), r.get("split"), r.get("layer"),  # noqa: E731
                     r.get("metric"))
    assert len(latest_rows(rows, key)) == len(latest_rows(read_rows(run), key))


def test_report_of_doubled_run_is_single_seed(run, tmp_path, capsys):
    dup = tmp_path / "dup"
    shutil.copytree(run, dup)
    m = dup / "metrics.jsonl"
    m.write_text(m.read_text() * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["report", str(dup)]) == 0
    html = "\n".join(p.read_text(errors="replace") for p in dup.rglob("*.html"))
    assert "n = 2" not in html and "n=2" not in html


@pytest.mark.parametrize("bad", ["a: [1, 2\n", "- just\n- a list\n", b"\xff\xfe: 1\n"])
def test_invalid_yaml_config_is_one_line(run, tmp_path, capsys, bad):
    d = tmp_path / "bad"
    shutil.copytree(run, d)
    p = d / "config.yaml"
    p.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
    with pytest.raises(ConfigError, match="config.yaml"):
        read_config(d)
    rc = main(["report", str(d)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "config.yaml" in err, err
