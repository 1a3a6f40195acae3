"""TensorBoard and W&B mirrors of the ``metrics.jsonl`` rows (``logging.tensorboard``, ``logging.wandb``).

Every row with numeric metrics is sent — ``train``, ``lossgap``, ``align``, ``baseline``, ``weight``,
``eval`` and any other kind, including the step-0 evaluation — under the tags of :func:`scalar_tags`;
TensorBoard tags and W&B keys are the same strings. ``event`` rows and the bookkeeping fields
(:data:`NOT_METRICS`) are never sent as values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from repalign.errors import ConfigError

#: Row fields that are positions or timings, never metric values.
NOT_METRICS = frozenset({"step", "epoch", "wall_s", "samples_per_s"})


def scalar_tags(row: Mapping[str, Any]) -> dict[str, float]:
    """The metric values of one ``metrics.jsonl`` row → ``{tag: value}``.

    ``tag = kind/who[/split][/layer]/metric`` with ``who`` the pair ``<arm_a>_vs_<arm_b>``, else the
    ``arm``, else the ``baseline`` name (``untrained``); ``split`` and ``layer`` when the row has them,
    so ``h`` and ``z`` rows, train and test splits, and ``baseline``/``weight``/``align`` rows never
    share a tag. Booleans, strings, ``None`` and :data:`NOT_METRICS` fields are left out;
    ``event`` rows give ``{}``.
    """
    kind = row.get("kind")
    if kind is None or kind == "event":
        return {}
    parts = [str(kind)]
    if row.get("arm_a") is not None and row.get("arm_b") is not None:
        parts.append(f"{row['arm_a']}_vs_{row['arm_b']}")
    elif row.get("arm") is not None:
        parts.append(str(row["arm"]))
    elif row.get("baseline") is not None:
        parts.append(str(row["baseline"]))
    parts += [str(row[k]) for k in ("split", "layer") if row.get(k) is not None]
    prefix = "/".join(parts)
    return {f"{prefix}/{k}": float(v) for k, v in row.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricLoggers:
    """The optional TensorBoard writer (``RUN_DIR/tensorboard``) and W&B run (``RUN_DIR/wandb``,
    mode ``logging.wandb_mode``) of one run; :meth:`log` sends a row to both, with ``step`` as x."""

    def __init__(self, cfg: Mapping[str, Any], run_path: Path) -> None:
        lg = cfg["logging"]
        self.tb: Any = None
        self.wandb: Any = None
        if lg["tensorboard"]:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("config key 'logging.tensorboard': install the extra "
                                  "`pip install repalign[tensorboard]`") from e
            self.tb = SummaryWriter(str(Path(run_path) / "tensorboard"))
        if lg["wandb"]:
            try:
                import wandb
            except ImportError as e:
                self.close()
                raise ConfigError("config key 'logging.wandb': install the extra `pip install repalign[wandb]`") from e
            self.wandb = wandb.init(project=lg["wandb_project"], dir=str(run_path), mode=lg["wandb_mode"],
                                    config=dict(cfg), name=cfg.get("name"))

    @property
    def active(self) -> bool:
        return self.tb is not None or self.wandb is not None

    def log(self, row: Mapping[str, Any]) -> None:
        values = scalar_tags(row)
        if not values:
            return
        step = int(row.get("step") or 0)
        if self.tb is not None:
            for tag, v in values.items():
                self.tb.add_scalar(tag, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
