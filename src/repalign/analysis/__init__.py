"""Analysis of metric rows: uncertainty over seeds, exponential-phase growth fits, seed aggregation,
paired comparisons and the Findings sentences of every report. Pure functions on plain rows."""
from repalign.analysis.aggregate import aggregate_rows, comparison_rows, pair_values
from repalign.analysis.findings import Finding, findings
from repalign.analysis.growth import GrowthFit, fit_exponential_phase
from repalign.analysis.stats import Summary, bootstrap_interval, paired_difference, summarize, t_interval, verdict

__all__ = ["aggregate_rows", "comparison_rows", "pair_values", "Finding", "findings", "GrowthFit",
           "fit_exponential_phase", "Summary", "bootstrap_interval", "paired_difference", "summarize", "t_interval",
           "verdict"]
