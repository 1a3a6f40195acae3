"""Coupled training: arms in lockstep under shared randomness, run directory, checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from repalign.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from repalign.training.optim import LARS, build_optimizer, param_groups, scaled_lr
from repalign.training.rundir import RunDir, read_metrics
from repalign.training.schedule import build_scheduler, warmup_cosine_factor
from repalign.training.trainer import ArmModule, CoupledTrainer, NonFiniteError


def default_run_dir(cfg: Mapping[str, Any]) -> Path:
    return Path(cfg["out_dir"]) / (cfg.get("name") or "run")


def train(cfg: Mapping[str, Any], run_dir: str | Path | None = None, resume: bool = False) -> CoupledTrainer:
    """Train a resolved config (see :func:`repalign.config.load_config`); return the trainer."""
    from repalign import distributed

    distributed.init_from_env()
    trainer = CoupledTrainer(cfg, run_dir if run_dir is not None else default_run_dir(cfg), resume=resume)
    trainer.summary = trainer.fit()  # type: ignore[attr-defined]
    return trainer


__all__ = ["CoupledTrainer", "ArmModule", "NonFiniteError", "train", "default_run_dir", "RunDir", "read_metrics",
           "save_checkpoint", "load_checkpoint", "CheckpointError", "LARS", "build_optimizer", "param_groups",
           "scaled_lr", "build_scheduler", "warmup_cosine_factor"]
