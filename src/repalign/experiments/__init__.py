"""Experiments: sweeps (:mod:`.sweep`), figure reproduction (:mod:`.reproduce`), theory overlays (:mod:`.theory`)."""
from repalign.experiments.sweep import SweepSpec, expand, load_spec, run_sweep, write_summary
from repalign.experiments.theory import cka_lower_bound, cumulative_lr, log_bound_shape, theory_rows

__all__ = ["SweepSpec", "expand", "load_spec", "run_sweep", "write_summary", "cka_lower_bound", "cumulative_lr",
           "log_bound_shape", "theory_rows"]
