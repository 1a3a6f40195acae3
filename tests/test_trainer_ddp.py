"""Coupled trainer under DDP (gloo, 2 CPU processes) == one process on the same global batches.

Normalisation layers are disabled (``model.norm=none``, ``model.projector_norm=none``): per-rank
BatchNorm statistics legitimately differ from global ones, and torch's SyncBatchNorm needs CUDA.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import tiny_overrides

pytestmark = pytest.mark.ddp
STEPS = 3


def _cfg():
    from repalign.config import load_config

    return load_config(None, tiny_overrides(**{"model.norm": "none", "model.projector_norm": "none",
                                               "train.epochs": 1, "optim.type": "lars"}))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        from repalign.training import CoupledTrainer

        tr = CoupledTrainer(_cfg(), None, evaluator=None)
        losses = []
        orig = tr.log_row
        tr.log_row = lambda row: (losses.append((row["kind"], row["step"], row.get("arm"), row.get("loss"), row.get("gap"))),
                                  orig(row))
        tr.fit(stop_after=STEPS)
        if rank == 0:
            torch.save({"state": {s.name: s.module.state_dict() for s in tr.arm_states}, "rows": losses}, out)
        dist.barrier()  # no rank tears gloo down while another still has a collective in flight
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process(tmp_path):
    from repalign.training import CoupledTrainer

    out = str(tmp_path / "ddp.pt")
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    ddp = torch.load(out, weights_only=True)
    single = CoupledTrainer(_cfg(), None, evaluator=None)
    rows = []
    orig = single.log_row
    single.log_row = lambda row: (rows.append((row["kind"], row["step"], row.get("arm"), row.get("loss"), row.get("gap"))),
                                  orig(row))
    single.fit(stop_after=STEPS)
    assert len(rows) == len(ddp["rows"]) > 0
    for a, b in zip(rows, ddp["rows"]):
        assert a[:3] == b[:3]
        for x, y in zip(a[3:], b[3:]):
            if x is not None:
                assert x == pytest.approx(y, rel=1e-5, abs=1e-6)
    for s in single.arm_states:
        want, got = s.module.state_dict(), ddp["state"][s.name]
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=f"{s.name}:{k}")
        assert any(not torch.equal(want[k], v) for k, v in CoupledTrainer(_cfg(), None, evaluator=None)
                   .arm_states[0].module.state_dict().items() if k in want)  # weights did move
