"""The one column schema of ``align``/``baseline`` rows: every alignment metric once, with its label,
table header, number format, direction, and which derived columns it gets.

Everything that writes or reads these columns derives its list from :data:`ALIGN_METRICS`:

* the row writer (:func:`repalign.training.evaluate.pair_metrics`, ``add_relative_and_margins``) —
  :func:`representation_names`, :func:`relative_names`;
* ``alignment.csv`` of ``repalign align`` — :func:`align_fields`;
* the figure CSVs of ``repalign reproduce`` — :func:`figure_columns`;
* the seed aggregation (``aggregate.csv``; it aggregates every numeric column except
  :func:`setting_columns`) and the report's per-pair table — :func:`report_columns`;
* plot axis labels — :func:`metric_label`.

Derived columns of a metric ``m`` with ``relative=True``::

    m_rel             = (m − u) / (1 − u)          u: the untrained baseline of the split/layer
    m_over_<control>  = m(a, b) − m(a, c)          c: the control arm of kind <control> of arm a

with ``<control>`` ∈ :data:`CONTROL_KINDS`. A new representation metric is one :class:`Metric`
entry here with ``compute=`` (or :func:`register_metric` in-process); see docs/extending.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Metric", "ALIGN_METRICS", "CONTROL_KINDS", "ROW_ID", "register_metric", "representation_names",
           "relative_names", "derived_columns", "align_fields", "figure_columns", "setting_columns",
           "report_columns", "report_cell", "metric_label"]

#: control-pair kinds (the ``control`` column; ``<metric>_over_<kind>`` margins)
CONTROL_KINDS = ("chaos", "noise_data", "noise_seed")
_CONTROL_SHORT = {"chaos": "chaos floor", "noise_data": "noise floor", "noise_seed": "noise floor (seed)"}
#: identity columns at the start of an ``align``/``baseline`` row in ``alignment.csv``
ROW_ID = ("kind", "baseline", "epoch", "step", "split", "layer", "arm_a", "arm_b", "control")


@dataclass(frozen=True)
class Metric:
    """One alignment metric (a column of ``align``/``baseline`` rows).

    ``label``: plot axis label; ``header``: report table header; ``stem``: prefix of the derived
    columns' labels (default ``header``); ``digits``: significant digits in tables;
    ``higher_is_aligned``: direction (True: larger means more aligned, e.g. CKA; False: e.g. a gap or an
    angle). ``source``: ``"representation"`` (features of both arms; computed by ``compute(x, y) →
    float`` with ``x, y [N, d]`` the features of the same N samples, or by
    :func:`repalign.metrics.representation_metrics` when ``compute`` is None) or ``"weight"`` (the
    weight rows). ``relative``: gets ``_rel`` and ``_over_<control>`` columns. ``settings``: columns
    recording how it was computed, written right after it. ``report`` / ``figures``: which of its
    columns go to the report's per-pair table / the reproduce figure CSVs — parts ``"value"``,
    ``"rel"``, ``"over_<control>"`` and, in the table only, ``"over_noise"`` (the noise floor of
    either kind)."""

    name: str
    label: str
    header: str
    higher_is_aligned: bool
    source: str = "representation"
    relative: bool = False
    stem: str | None = None
    digits: int = 3
    settings: tuple[str, ...] = ()
    report: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()
    compute: Callable[[Any, Any], float] | None = None


_ALL_OVER = tuple(f"over_{k}" for k in CONTROL_KINDS)

#: the alignment metrics in column order
ALIGN_METRICS: list[Metric] = [
    Metric("linear_cka", "linear CKA", "linear CKA", True, relative=True, stem="CKA",
           report=("value", "rel", "over_chaos", "over_noise"), figures=("value", "rel", *_ALL_OVER)),
    Metric("debiased_cka", "debiased CKA", "debiased CKA", True, figures=("value",)),
    Metric("rsa", "RSA (Pearson r of RDMs)", "RSA", True, relative=True, settings=("rsa_rdm", "rsa_corr"),
           report=("value", "rel"), figures=("value", "rel", "over_chaos")),
    Metric("sim_gap", "similarity gap ‖Σ_a − Σ_b‖_F", "sim gap", False, report=("value",), figures=("value",)),
    Metric("sim_gap_rel", "relative similarity gap ρ", "ρ", False, report=("value",), figures=("value",)),
    Metric("sim_gap_per_entry", "similarity gap per entry ‖Σ_a − Σ_b‖_F / N", "sim gap / N", False),
    Metric("sim_gap_centred_rel", "centred relative similarity gap", "centred ρ", False),
    Metric("repr_angle_deg", "representation angle (degrees)", "repr. angle", False, figures=("value",)),
    Metric("weight_gap_mean", "weight gap (mean rel. Frobenius)", "weight gap", False, source="weight",
           report=("value",), figures=("value",)),
    Metric("weight_gap_sum", "weight gap (sum rel. Frobenius)", "weight gap (sum)", False, source="weight"),
    Metric("weight_rel_l2", "relative L2 weight distance", "rel. L2", False, source="weight"),
    Metric("weight_angle_deg", "weight-space angle (degrees)", "weight angle", False, source="weight",
           figures=("value",)),
    Metric("displacement_angle_deg", "displacement angle (degrees)", "displacement angle", False, source="weight",
           figures=("value",)),
]

#: axis labels of columns outside the align schema
_OTHER_LABELS = {"knn_acc": "kNN test accuracy (fraction)", "loss": "training loss (nats)"}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`ALIGN_METRICS` (in-process; after the built-ins, before the weight
    metrics so that representation columns stay together). Its name must be new."""
    if not isinstance(metric, Metric):
        raise ValueError(f"register_metric takes a repalign.schema.Metric, got {type(metric).__name__}")
    if any(m.name == metric.name for m in ALIGN_METRICS):
        raise ValueError(f"metric {metric.name!r} is already in the schema")
    if metric.source not in ("representation", "weight"):
        raise ValueError(f"metric {metric.name!r}: source must be 'representation' or 'weight', got {metric.source!r}")
    if metric.source == "representation" and not callable(metric.compute):
        raise ValueError(f"metric {metric.name!r}: a new representation metric needs compute=(x, y) -> float")
    at = next((i for i, m in enumerate(ALIGN_METRICS) if m.source == "weight"), len(ALIGN_METRICS))
    ALIGN_METRICS.insert(at if metric.source == "representation" else len(ALIGN_METRICS), metric)
    return metric


def _column(m: Metric, part: str) -> str:
    return m.name if part == "value" else f"{m.name}_{part}"


def representation_names() -> tuple[str, ...]:
    """Names of the representation metrics, in column order (the keys of ``pair_metrics``)."""
    return tuple(m.name for m in ALIGN_METRICS if m.source == "representation")


def relative_names() -> tuple[str, ...]:
    """Metrics that get ``_rel`` and ``_over_<control>`` columns."""
    return tuple(m.name for m in ALIGN_METRICS if m.relative)


def derived_columns(m: Metric) -> list[str]:
    """All columns of one metric in row order: value, ``_rel``, ``_over_<control>`` …, settings."""
    parts = ["value", "rel", *_ALL_OVER] if m.relative else ["value"]
    return [_column(m, p) for p in parts] + list(m.settings)


def align_fields() -> list[str]:
    """Header of ``alignment.csv``: :data:`ROW_ID` then every metric's columns."""
    return [*ROW_ID, *(c for m in ALIGN_METRICS for c in derived_columns(m))]


def setting_columns() -> set[str]:
    """Columns that record settings, not values (never aggregated)."""
    return {c for m in ALIGN_METRICS for c in m.settings}


def figure_columns() -> list[str]:
    """Metric columns of the reproduce figure CSVs (after their identity columns)."""
    return [_column(m, p) for m in ALIGN_METRICS for p in m.figures]


def _stem(m: Metric) -> str:
    return m.stem or m.header


def report_columns() -> list[tuple[str, str, Metric, int]]:
    """The report's per-pair table: ``(header, part, metric, digits)`` per column, in order."""
    out = []
    for m in ALIGN_METRICS:
        for p in m.report:
            if p == "value":
                h = m.header
            elif p == "rel":
                h = f"{_stem(m)} rel. untrained"
            elif p == "over_noise":
                h = f"{_stem(m)} − noise floor"
            else:
                h = f"{_stem(m)} − {_CONTROL_SHORT[p[len('over_'):]]}"
            out.append((h, p, m, m.digits))
    return out


def report_cell(row: dict[str, Any] | Any, part: str, m: Metric, baseline: bool = False) -> Any:
    """Value of one report-table cell of ``row``; on the untrained baseline row ``_rel`` is 0 and the
    margins are empty."""
    if baseline:
        return row.get(m.name) if part == "value" else (0.0 if part == "rel" else None)
    if part == "over_noise":
        return row.get(f"{m.name}_over_noise_data", row.get(f"{m.name}_over_noise_seed"))
    return row.get(_column(m, part))


def metric_label(name: str) -> str:
    """Axis label of a column (a metric, one of its derived columns, ``knn_acc``, ``loss``); the name
    itself when unknown."""
    for m in ALIGN_METRICS:
        if name == m.name:
            return m.label
        if m.relative and name == f"{m.name}_rel":
            return f"{_stem(m)} relative to untrained"
        if m.relative and name.startswith(f"{m.name}_over_") and name[len(m.name) + 6:] in CONTROL_KINDS:
            return f"{_stem(m)} − {_CONTROL_SHORT[name[len(m.name) + 6:]]}"
    return _OTHER_LABELS.get(name, name)
