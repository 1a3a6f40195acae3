"""Figure helpers count seeds, not rows (issue 17 item 3 audit)."""
from __future__ import annotations

from repalign.experiments.figures.common import Context, _final_table


def _row(seed, step, epoch, cka):
    return {"kind": "align", "dataset": "d", "seed": seed, "step": step, "epoch": epoch, "split": "test", "layer": "h",
            "arm_a": "cl", "arm_b": "nscl", "control": "", "linear_cka": cka, "rsa": cka, "linear_cka_over_chaos": 0.0}


def test_final_table_takes_each_seeds_last_evaluation(tmp_path):
    """Seed 1 ended one evaluation earlier: its last value still counts (n = 2 seeds, both epochs named);
    before, the group's last step was taken over all seeds and seed 1 silently dropped out (n = 1)."""
    ctx = Context("figX", "cpu", tmp_path, [])
    rows = [_row(0, 10, 1, 0.5), _row(0, 20, 2, 0.9), _row(1, 10, 1, 0.7)]
    _final_table(ctx, rows, [], None)
    (row,) = ctx.tables[0]["rows"]
    assert row[4] == "1/2"  # the epochs the seeds ended at
    assert row[5].endswith("(n=2)") and row[5].startswith("0.800")  # mean of 0.9 (seed 0) and 0.7 (seed 1)
