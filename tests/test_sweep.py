"""Sweeps: spec parsing, grid expansion, resumable runs and an identical summary.csv after a kill."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import tiny_overrides
from repalign.config import ConfigError
from repalign.experiments import sweep as sw


def tiny_spec(out: Path, **kw) -> sw.SweepSpec:
    raw = {"base": "configs/demo.yaml",
           "overrides": tiny_overrides() + ["arms={cl: {objective: cl}, nscl: {objective: nscl}}", "eval.every=1",
                                            "train.threads=1"],
           "grid": {"loss.temperature": [0.2, 0.5, 1.0]}, "out": str(out)}
    raw.update(kw)
    return sw.load_spec(raw)


def test_grid_expansion_product_zip_and_slugs(tmp_path):
    s = sw.load_spec({"base": "demo", "grid": {"data.num_classes": [5, 10], "seed": [0, 1]}, "out": str(tmp_path)})
    pts = sw.expand(s)
    assert [p.slug for p in pts] == ["num_classes=5__seed=0", "num_classes=5__seed=1", "num_classes=10__seed=0",
                                     "num_classes=10__seed=1"]
    assert pts[0].overrides == ["data.num_classes=5", "seed=0"]
    z = sw.load_spec({"base": "demo", "grid": {"train.batch_size": [64, 128], "optim.lr": [0.1, 0.2]},
                      "product": False, "out": str(tmp_path)})
    assert [p.values for p in sw.expand(z)] == [{"train.batch_size": 64, "optim.lr": 0.1},
                                                {"train.batch_size": 128, "optim.lr": 0.2}]
    # same short name for two keys → full dotted names in the slug
    c = sw.load_spec({"base": "demo", "grid": {"optim.lr": [0.1], "arms.cl.lr": [0.2]}, "out": str(tmp_path)})
    assert sw.expand(c)[0].slug == "optim-lr=0.1__arms-cl-lr=0.2"


def test_cli_grid_strings_and_spec_errors(tmp_path):
    s = sw.load_spec("demo", ["data.num_classes=[5,10]", "train.epochs=1", "seed=[0,1]"], out=str(tmp_path))
    assert s.grid == {"data.num_classes": [5, 10], "seed": [0, 1]} and s.overrides == ["train.epochs=1"]
    assert s.base.endswith("configs/demo.yaml")
    with pytest.raises(ConfigError, match="'grid.seed'"):
        sw.load_spec({"base": "demo", "grid": {"seed": []}})
    with pytest.raises(ConfigError, match="'bogus'"):
        sw.load_spec({"base": "demo", "bogus": 1})
    with pytest.raises(ConfigError, match="equal lengths"):
        sw.load_spec({"base": "demo", "grid": {"seed": [0, 1], "optim.lr": [0.1]}, "product": False})
    bad = sw.load_spec({"base": "demo", "grid": {"loss.temperture": [0.1]}, "out": str(tmp_path / "b")})
    with pytest.raises(ConfigError, match="loss.temperture"):
        sw.run_sweep(bad, log=lambda s: None)


def test_spec_file_relative_base(tmp_path):
    (tmp_path / "c.yaml").write_text(Path("configs/demo.yaml").read_text())
    (tmp_path / "s.yaml").write_text("base: c.yaml\ngrid: {seed: [0, 1]}\nout: o\n")
    s = sw.load_spec(str(tmp_path / "s.yaml"))
    assert Path(s.base) == (tmp_path / "c.yaml").resolve() and s.grid == {"seed": [0, 1]}


def _read(p: Path) -> list[dict]:
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_killed_midway_resumes_to_identical_summary(tmp_path, monkeypatch):
    from repalign.training.trainer import CoupledTrainer

    full = sw.run_sweep(tiny_spec(tmp_path / "A"), log=lambda s: None)
    assert len(full.ran) == 3 and not full.skipped
    rows = _read(full.summary)
    assert {"point", "loss.temperature", "kind", "epoch", "arm_a", "arm_b", "linear_cka", "gap"} <= set(rows[0])
    assert {r["loss.temperature"] for r in rows} == {"0.2", "0.5", "1.0"}
    assert {r["kind"] for r in rows} == {"align", "baseline", "eval", "lossgap", "weight"}  # demo: weight_every

    spec_b = tiny_spec(tmp_path / "B")
    victim = sw.expand(spec_b)[1].slug
    orig = CoupledTrainer.train_step

    def killing(self, batches, log=False):
        if self.run is not None and self.run.path.name == victim and self.step == 7:
            raise KeyboardInterrupt  # the sweep process dies in the middle of point 2
        return orig(self, batches, log)

    monkeypatch.setattr(CoupledTrainer, "train_step", killing)
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(spec_b, log=lambda s: None)
    monkeypatch.setattr(CoupledTrainer, "train_step", orig)
    pts = tmp_path / "B" / "points"
    assert sw.point_status(pts / sw.expand(spec_b)[0].slug) == "done"
    assert sw.point_status(pts / victim) == "partial"
    assert not (pts / sw.expand(spec_b)[2].slug).exists()

    again = sw.run_sweep(tiny_spec(tmp_path / "B"), log=lambda s: None)
    assert again.skipped == [sw.expand(spec_b)[0].slug] and again.resumed == [victim]
    assert again.ran == [victim, sw.expand(spec_b)[2].slug]
    assert again.summary.read_text() == full.summary.read_text()
    for name in ("aggregate.csv", "comparisons.csv"):
        assert (tmp_path / "B" / name).read_text() == (tmp_path / "A" / name).read_text()
    # a third run trains nothing and rewrites the same summary
    third = sw.run_sweep(tiny_spec(tmp_path / "B"), log=lambda s: None)
    assert third.ran == [] and len(third.skipped) == 3
    assert third.summary.read_text() == full.summary.read_text()


def test_two_seed_sweep_aggregates_with_confidence_intervals(tmp_path):
    import math

    from repalign.analysis import t_interval

    arms = ("arms={cl: {objective: cl}, nscl: {objective: nscl}, cl_eps: {same_as: cl, init_perturb: 1.0e-6}, "
            "cl_data: {same_as: cl, data_seed: 5}}")
    spec = tiny_spec(tmp_path / "S", grid={"loss.temperature": [0.5, 1.0], "seed": [0, 1]},
                     overrides=tiny_overrides(**{"train.epochs": 1}) + [arms, "eval.every=1", "train.threads=1"])
    res = sw.run_sweep(spec, log=lambda s: None)
    agg = _read(tmp_path / "S" / "aggregate.csv")
    assert {"loss.temperature", "kind", "split", "layer", "arm_a", "arm_b", "control", "step", "metric", "n", "mean",
            "std", "ci_lo", "ci_hi", "level", "method"} <= set(agg[0])
    assert "seed" not in agg[0]
    summary = _read(res.summary)
    for tau in ("0.5", "1.0"):
        cell = next(r for r in agg if r["loss.temperature"] == tau and r["kind"] == "align" and r["arm_b"] == "nscl"
                    and r["split"] == "test" and r["layer"] == "h" and r["metric"] == "linear_cka"
                    and r["step"] == max(r2["step"] for r2 in agg))
        vals = [float(r["linear_cka"]) for r in summary if r["loss.temperature"] == tau and r["kind"] == "align"
                and r["arm_b"] == "nscl" and r["split"] == "test" and r["layer"] == "h" and r["step"] == cell["step"]]
        assert int(cell["n"]) == 2 == len(vals)
        lo, hi = t_interval(vals)
        assert float(cell["mean"]) == pytest.approx(sum(vals) / 2)
        assert float(cell["ci_lo"]) == pytest.approx(lo) and float(cell["ci_hi"]) == pytest.approx(hi)
        assert math.isfinite(float(cell["std"]))
    base = [r for r in agg if r["kind"] == "baseline" and r["metric"] == "linear_cka"]
    assert base and all(r["n"] == "2" for r in base)
    comp = _read(tmp_path / "S" / "comparisons.csv")
    kinds = {(r["pair"], r["versus"], r["versus_role"]) for r in comp}
    assert ("cl/nscl", "cl/cl_eps", "chaos") in kinds and ("cl/nscl", "cl/cl_data", "noise_data") in kinds
    assert ("cl/nscl", "untrained/untrained", "untrained") in kinds
    assert {r["verdict"] for r in comp} <= {"higher", "lower", "undecided"}


def test_sweep_local_processes_match_inline(tmp_path):
    grid = {"loss.temperature": [0.5, 1.0]}
    a = sw.run_sweep(tiny_spec(tmp_path / "inline", grid=grid), log=lambda s: None)
    b = sw.run_sweep(tiny_spec(tmp_path / "local", grid=grid, processes=2), log=lambda s: None)
    assert len(b.ran) == 2 and (tmp_path / "local" / "logs").is_dir()
    assert b.summary.read_text() == a.summary.read_text()


def test_sweep_cli_dry_run(tmp_path, capsys):
    from repalign.cli import main

    rc = main(["sweep", "demo", "seed=[0,1]", "train.epochs=1", "--out", str(tmp_path / "s"), "--dry-run"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 to run" in out and "--run-dir" in out and "seed=1" in out
    assert (tmp_path / "s" / "configs" / "seed=0.yaml").exists() and (tmp_path / "s" / "sweep.json").exists()
