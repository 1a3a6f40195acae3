"""Command line: one-line config errors, train/resume flags, summary table."""
from __future__ import annotations

import json

from conftest import tiny_overrides

from repalign.cli import main


def test_bad_key_is_one_line_exit_2(capsys, tmp_path):
    assert main(["train", "demo", "loss.temperature=-1", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "loss.temperature" in err


def test_train_resume_if_possible_and_overwrite(capsys, tmp_path):
    run = tmp_path / "run"
    args = ["train", "demo", *tiny_overrides(**{"train.epochs": 1}), "--run-dir", str(run)]
    assert main(args + ["--resume-if-possible"]) == 0  # nothing to resume: starts afresh
    out = capsys.readouterr().out
    assert "cl vs nscl" in out and "kNN acc" in out and "run directory" in out
    n_rows = len((run / "metrics.jsonl").read_text().splitlines())
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert main(args + ["--resume-if-possible"]) == 0  # finished run: resumes, trains nothing more
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == n_rows + 1 and rows[-1]["kind"] == "event" and "resumed" in rows[-1]["message"]
    assert main(args + ["--overwrite"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == n_rows
