"""TensorBoard / W&B mirrors of metrics.jsonl rows (issue 11 §5): tags, step-0 evaluation, no timings."""
from __future__ import annotations

import importlib.util
import sys
import types
from collections import defaultdict

import pytest

from repalign.training.loggers import NOT_METRICS, MetricLoggers, scalar_tags

ALIGN_H = {"kind": "align", "epoch": 0, "step": 0, "split": "test", "layer": "h", "arm_a": "cl", "arm_b": "nscl",
           "control": None, "linear_cka": 0.9, "rsa": 0.8, "wall_s": 1.5}


def test_scalar_tags_name_kind_pair_split_layer():
    assert scalar_tags(ALIGN_H) == {"align/cl_vs_nscl/test/h/linear_cka": 0.9, "align/cl_vs_nscl/test/h/rsa": 0.8}
    z = scalar_tags({**ALIGN_H, "layer": "z"})
    assert set(z) == {"align/cl_vs_nscl/test/z/linear_cka", "align/cl_vs_nscl/test/z/rsa"}
    base = {"kind": "baseline", "baseline": "untrained", "epoch": 0, "step": 0, "split": "test", "layer": "h",
            "linear_cka": 0.5}
    assert scalar_tags(base) == {"baseline/untrained/test/h/linear_cka": 0.5}
    weight = {"kind": "weight", "epoch": 0.5, "step": 3, "arm_a": "cl", "arm_b": "ce", "weight_gap_mean": 0.1}
    assert scalar_tags(weight) == {"weight/cl_vs_ce/weight_gap_mean": 0.1}
    train = {"kind": "train", "step": 3, "epoch": 0.5, "arm": "cl", "objective": "cl", "loss": 2.0, "lr": 0.1,
             "grad_norm": 1.0, "samples_per_s": 900.0, "wall_s": 2.0}
    assert scalar_tags(train) == {"train/cl/loss": 2.0, "train/cl/lr": 0.1, "train/cl/grad_norm": 1.0}
    assert scalar_tags({"kind": "event", "step": 3, "arm": "cl", "message": "stopped"}) == {}
    assert scalar_tags({"kind": "eval", "step": 0, "arm": "cl", "split": "test", "layer": "h", "knn_acc": 0.5,
                        "flag": True}) == {"eval/cl/test/h/knn_acc": 0.5}


def test_wandb_gets_the_same_keys_and_the_configured_mode(monkeypatch, tmp_path):
    calls: dict[str, list] = defaultdict(list)
    fake = types.ModuleType("wandb")

    class Run:
        def log(self, values, step):
            calls["log"].append((values, step))

        def finish(self):
            calls["finish"].append(True)

    def init(**kw):
        calls["init"].append(kw)
        return Run()

    fake.init = init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = {"name": "t", "logging": {"tensorboard": False, "wandb": True, "wandb_project": "p",
                                    "wandb_mode": "disabled"}}
    lg = MetricLoggers(cfg, tmp_path)
    lg.log(ALIGN_H)
    lg.log({"kind": "event", "step": 0, "arm": None, "message": "x"})
    lg.close()
    assert calls["init"][0]["mode"] == "disabled" and calls["init"][0]["dir"] == str(tmp_path)
    assert calls["log"] == [(scalar_tags(ALIGN_H), 0)] and calls["finish"] == [True]


def test_tags_of_a_run_never_collide(tiny_cfg, tmp_path):
    """Every metric of every row of a run has its own tag at its step (no row overwrites another)."""
    from repalign.training import CoupledTrainer
    from repalign.training.rundir import read_metrics

    cfg = tiny_cfg(**{"train.epochs": 1, "eval.every": 1, "eval.weight_every": 2})
    CoupledTrainer(cfg, tmp_path / "run").fit()
    seen: dict[int, set[str]] = defaultdict(set)
    kinds = set()
    for row in read_metrics(tmp_path / "run" / "metrics.jsonl"):
        tags = scalar_tags(row)
        kinds.add(row["kind"])
        assert not (set(tags) & seen[row["step"]]), row
        seen[row["step"]] |= set(tags)
    assert {"train", "lossgap", "align", "baseline", "weight", "eval"} <= kinds


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed (pip install repalign[tensorboard])")
def test_tensorboard_gets_the_step0_evaluation(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from repalign.training import CoupledTrainer

    cfg = tiny_cfg(**{"train.epochs": 1, "eval.every": 1, "eval.weight_every": 2, "logging.tensorboard": True})
    CoupledTrainer(cfg, tmp_path / "run").fit()
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for layer in ("h", "z"):
        tag = f"align/cl_vs_nscl/test/{layer}/linear_cka"
        assert tag in tags
        at0 = [e for e in acc.Scalars(tag) if e.step == 0]
        assert len(at0) == 1 and at0[0].value == pytest.approx(1.0)  # shared init and inputs at step 0
        assert 0 in {e.step for e in acc.Scalars(f"baseline/untrained/test/{layer}/linear_cka")}
    assert any(t.startswith("weight/cl_vs_nscl/") for t in tags)
    assert any(t.startswith("eval/cl/") for t in tags) and any(t.startswith("train/cl/") for t in tags)
    assert not [t for t in tags if t.rsplit("/", 1)[-1] in NOT_METRICS]
    assert not [t for t in tags if t.endswith("wall_s")]
