"""repalign.results: the one reader of run and sweep directories, and "last row per key"."""
from __future__ import annotations

import json

import pytest

from repalign.errors import RunDirError
from repalign.results import (DONE, is_run_dir, last_steps, latest_rows, load_sweep_state, parse_cell, point_status,
                              read_config, read_meta, read_rows, read_summary, rows_at_last_step)

ROWS = [
    {"kind": "align", "arm_a": "cl", "arm_b": "nscl", "step": 0, "v": 1},
    {"kind": "align", "arm_a": "cl", "arm_b": "scl", "step": 0, "v": 2},
    {"kind": "align", "arm_a": "cl", "arm_b": "nscl", "step": 10, "v": 3},
    {"kind": "align", "arm_a": "cl", "arm_b": "nscl", "step": 10, "v": 4},
    {"kind": "align", "arm_a": "cl", "arm_b": "scl", "step": 5, "v": 5},
]


def test_latest_rows_highest_step_later_row_wins_ties():
    got = latest_rows(ROWS, key=lambda r: (r["arm_a"], r["arm_b"]))
    assert list(got) == [("cl", "nscl"), ("cl", "scl")]
    assert got[("cl", "nscl")]["v"] == 4 and got[("cl", "scl")]["v"] == 5
    assert latest_rows([], key=lambda r: None) == {}
    assert latest_rows([{"epoch": 2, "x": 1}, {"epoch": 1, "x": 2}], key=lambda r: 0, step="epoch")[0]["x"] == 1


def test_last_steps_and_rows_at_last_step():
    key = lambda r: r["arm_b"]  # noqa: E731
    assert last_steps(ROWS, key) == {"nscl": 10, "scl": 5}
    assert [r["v"] for r in rows_at_last_step(ROWS, key)] == [3, 4, 5]


def test_run_directory_readers(tmp_path):
    assert read_rows(tmp_path) == [] and read_config(tmp_path) == {} and read_meta(tmp_path) == {}
    assert not is_run_dir(tmp_path)
    rows = [r for r in ROWS if r["v"] != 4]  # a run's rows: (kind, step, pair) unique
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "tr')
    (tmp_path / "config.yaml").write_text("seed: 3\n")
    (tmp_path / "meta.json").write_text('{"num_classes": 10}')
    assert is_run_dir(tmp_path)
    assert read_rows(tmp_path) == rows  # the torn last line is dropped
    assert read_rows(tmp_path, "train") == []
    assert read_config(tmp_path) == {"seed": 3} and read_meta(tmp_path) == {"num_classes": 10}
    # two rows of one identity with different values (v = 3, 4 at step 10): refused, one line (issue 17)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with pytest.raises(RunDirError, match=r"metrics\.jsonl: two rows with the same identity .*'step': 10"):
        read_rows(tmp_path)


def test_sweep_directory_readers(tmp_path):
    pt = tmp_path / "points" / "a"
    assert point_status(pt) == "new"
    pt.mkdir(parents=True)
    (pt / "log.txt").write_text("x")
    assert point_status(pt) == "stale"
    (pt / "checkpoints").mkdir()
    (pt / "checkpoints" / "last.pt").write_bytes(b"")
    assert point_status(pt) == "partial"
    (pt / DONE).write_text("{}")
    assert point_status(pt) == "done"
    assert load_sweep_state(tmp_path) == {"spec": {}, "grid_keys": [], "points": []}
    (tmp_path / "sweep.json").write_text('{"grid_keys": ["seed"]}')
    assert load_sweep_state(tmp_path)["grid_keys"] == ["seed"]
    (tmp_path / "summary.csv").write_text("point,seed,linear_cka,ok,note\na,0,0.5,True,\nb,1,1e-3,False,x\n")
    assert read_summary(tmp_path / "summary.csv") == [
        {"point": "a", "seed": 0, "linear_cka": 0.5, "ok": True, "note": None},
        {"point": "b", "seed": 1, "linear_cka": 1e-3, "ok": False, "note": "x"}]
    assert parse_cell("") is None and parse_cell("7") == 7 and parse_cell("nan") != parse_cell("nan")
