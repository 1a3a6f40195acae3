"""repalign.schema: the one column schema of align rows — the lists derived from it keep today's
columns, and a metric added to it reaches the row writer, alignment.csv, the aggregate and the report."""
from __future__ import annotations

import csv

import pytest
import torch

from repalign import schema
from repalign.schema import Metric

#: alignment.csv header before the schema existed (training/evaluate.ALIGN_FIELDS)
ALIGN_FIELDS_BEFORE = [
    "kind", "baseline", "epoch", "step", "split", "layer", "arm_a", "arm_b", "control", "linear_cka",
    "linear_cka_rel", "linear_cka_over_chaos", "linear_cka_over_noise_data", "linear_cka_over_noise_seed",
    "debiased_cka", "rsa", "rsa_rel", "rsa_over_chaos", "rsa_over_noise_data", "rsa_over_noise_seed",
    "rsa_rdm", "rsa_corr", "sim_gap", "sim_gap_rel", "sim_gap_per_entry", "sim_gap_centred_rel",
    "repr_angle_deg", "weight_gap_mean", "weight_gap_sum", "weight_rel_l2", "weight_angle_deg",
    "displacement_angle_deg"]


def test_derived_lists_keep_the_columns():
    assert schema.align_fields() == ALIGN_FIELDS_BEFORE
    assert schema.representation_names() == ("linear_cka", "debiased_cka", "rsa", "sim_gap", "sim_gap_rel",
                                             "sim_gap_per_entry", "sim_gap_centred_rel", "repr_angle_deg")
    assert schema.relative_names() == ("linear_cka", "rsa")
    assert schema.setting_columns() == {"rsa_rdm", "rsa_corr"}
    assert set(schema.figure_columns()) == {
        "linear_cka", "linear_cka_rel", "linear_cka_over_chaos", "linear_cka_over_noise_data",
        "linear_cka_over_noise_seed", "debiased_cka", "rsa", "rsa_rel", "rsa_over_chaos", "sim_gap", "sim_gap_rel",
        "weight_gap_mean", "weight_angle_deg", "repr_angle_deg", "displacement_angle_deg"}
    assert [h for h, *_ in schema.report_columns()] == [
        "linear CKA", "CKA rel. untrained", "CKA − chaos floor", "CKA − noise floor", "RSA", "RSA rel. untrained",
        "sim gap", "ρ", "weight gap"]
    assert schema.metric_label("linear_cka_rel") == "CKA relative to untrained"
    assert schema.metric_label("rsa") == "RSA (Pearson r of RDMs)"
    assert schema.metric_label("knn_acc") == "kNN test accuracy (fraction)"
    assert schema.metric_label("unknown_thing") == "unknown_thing"


def test_register_metric_rejects_bad_entries():
    with pytest.raises(ValueError, match="already in the schema"):
        schema.register_metric(Metric("linear_cka", "x", "x", True, compute=lambda x, y: 0.0))
    with pytest.raises(ValueError, match="needs compute"):
        schema.register_metric(Metric("new_metric", "x", "x", True))
    with pytest.raises(ValueError, match="source"):
        schema.register_metric(Metric("new_metric", "x", "x", True, source="pixels", compute=lambda x, y: 0.0))


def _norm_ratio(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(x.double().norm(dim=1).mean() / y.double().norm(dim=1).mean())


@pytest.fixture
def norm_ratio():
    m = schema.register_metric(Metric("norm_ratio", "mean feature-norm ratio", "norm ratio", True, relative=True,
                                      report=("value", "rel"), compute=_norm_ratio))
    try:
        yield m
    finally:
        schema.ALIGN_METRICS.remove(m)


def test_a_metric_added_to_the_schema_reaches_rows_csv_aggregate_and_report(tmp_path, tiny_cfg, norm_ratio):
    from repalign import train
    from repalign.analysis import aggregate_rows
    from repalign.report import write_report
    from repalign.results import read_rows
    from repalign.training.align import align_run

    assert schema.align_fields()[-6:-5] == ["norm_ratio_over_noise_seed"]  # before the weight columns
    run = train(tiny_cfg(**{"train.epochs": 1, "eval.every": 1}), run_dir=tmp_path / "run")
    rows = read_rows(run)
    align = [r for r in rows if r["kind"] == "align"]
    base = [r for r in rows if r["kind"] == "baseline"]
    assert align and base and all(isinstance(r["norm_ratio"], float) for r in align + base)
    assert all("norm_ratio_rel" in r for r in align)
    # the writer of alignment.csv (repalign align)
    with open(align_run(run)) as f:
        got = list(csv.DictReader(f))
    assert got and all(r["norm_ratio"] != "" for r in got)
    # the seed aggregation
    metrics = {r["metric"] for r in aggregate_rows(rows)}
    assert {"norm_ratio", "norm_ratio_rel"} <= metrics
    # the report's per-pair table
    html = write_report(run).read_text()
    assert "<th class=\"\">norm ratio</th>" in html and "norm ratio rel. untrained" in html
