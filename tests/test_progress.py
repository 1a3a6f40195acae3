"""Issue 20, item 5: progress on a non-TTY — one line per finished unit with N/M, elapsed and ETA —
from align (checkpoints) and sweep (points); nothing with progress off."""
from __future__ import annotations

import io
import re

from conftest import tiny_overrides
from repalign.progress import Progress, fmt_seconds, progress_line

NM = re.compile(r"(\d+)/(\d+)")


def test_progress_line_eta_from_finished_units():
    # 2 of 5 done in 10 s: 5 s per unit, 3 left → ETA 15 s (the mean of the finished ones)
    assert progress_line("point", 2, 5, 10.0) == "point 2/5 · 10 s elapsed · ETA 15 s"
    assert "ETA" not in progress_line("point", 5, 5, 10.0)
    assert fmt_seconds(125) == "2 min 05 s" and fmt_seconds(3720) == "1 h 02 min"
    buf = io.StringIO()  # not a TTY: lines, no bar
    with Progress("align", 3, unit="checkpoints", file=buf) as p:
        for s in (0, 4, 8):
            p.done(f"step {s}")
    lines = buf.getvalue().splitlines()
    assert [NM.search(ln).groups() for ln in lines] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert "(step 8)" in lines[-1] and "\r" not in buf.getvalue()
    quiet = io.StringIO()
    q = Progress("align", 3, file=quiet, enabled=False)
    q.done()
    assert quiet.getvalue() == "" and q.n == 1


def test_align_and_sweep_print_n_of_m(tmp_path, capsys):
    from repalign.experiments import sweep as sw
    from repalign.training import train
    from repalign.config import load_config
    from repalign.training.align import align_run

    cfg = load_config(None, tiny_overrides(**{"eval.every": 1, "train.epochs": 2}))
    train(cfg, tmp_path / "run")
    capsys.readouterr()
    align_run(tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("align ")]
    # the checkpoints at epochs 0, 1, 2: three lines 1/3, 2/3, 3/3
    assert [NM.search(ln).groups() for ln in lines] == [("1", "3"), ("2", "3"), ("3", "3")], err
    assert "ETA" in lines[0] and "elapsed" in lines[-1]
    align_run(tmp_path / "run", progress=False)
    assert "align " not in capsys.readouterr().err

    spec = sw.load_spec({"base": "configs/demo.yaml",
                         "overrides": tiny_overrides(**{"train.epochs": 1}) + ["arms={cl: {objective: cl}}",
                                                                              "train.threads=1"],
                         "grid": {"seed": [0, 1]}, "out": str(tmp_path / "sw")})
    logged: list[str] = []
    sw.run_sweep(spec, log=logged.append)
    done = [ln for ln in logged if ln.strip().startswith("done point")]
    assert [NM.search(ln).groups() for ln in done] == [("1", "2"), ("2", "2")], logged
    assert "ETA" in done[0] and "elapsed" in done[1]


def test_train_non_tty_prints_one_line_per_epoch(tmp_path, capsys):
    from repalign.config import load_config
    from repalign.training import train

    cfg = load_config(None, tiny_overrides(**{"train.epochs": 2, "logging.progress": True}))
    train(cfg, tmp_path / "run")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("train epoch")]
    assert [NM.search(ln).groups() for ln in lines] == [("1", "2"), ("2", "2")], lines
    assert "ETA" in lines[0] and "ETA" not in lines[1] and "\r" not in "".join(lines)
