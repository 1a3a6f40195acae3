"""CUDA correctness checks (``pytest -m cuda``; run by ``make gpu-check``).

Every test is skipped, with the reason, when ``torch.cuda.is_available()`` is False, so CPU CI never
fails on them. ``REPALIGN_CUDA_TEST_DEVICE=cpu`` runs the same code on the CPU (the device side of each
comparison is then the CPU too): ``benchmarks/gpu_check.py --dry-run`` does that so these tests cannot rot
on machines without a GPU — it proves the code paths run, not that CUDA agrees.

Tolerances (stated here, asserted below):

* trainer CUDA vs CPU, fp32, TF32 off, cuDNN deterministic, 3 steps of a small CNN with BatchNorm: losses within
  rtol 1e-4 / atol 1e-5, weights within rtol 1e-3 / atol 1e-4 (float summation order differs
  between devices and grows through the steps; any real bug is orders of magnitude larger);
* kill/resume on CUDA vs uninterrupted on CUDA: rtol 1e-5 / atol 1e-6 (same device, same kernels; room
  for the last-bit nondeterminism of atomics that deterministic cuDNN does not cover);
* metrics (float64 accumulation) CUDA vs CPU: 1e-9 absolute;
* SyncBatchNorm in a one-process group vs BatchNorm: outputs and gradients within 1e-5.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import tiny_overrides

DEVICE = os.environ.get("REPALIGN_CUDA_TEST_DEVICE") or "cuda"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: torch.cuda.is_available() is False (run `make gpu-check` on a GPU "
                              "machine; REPALIGN_CUDA_TEST_DEVICE=cpu runs the code paths on the CPU)"),
]
OBJECTIVES = ("cl", "ntxent", "nscl", "scl", "ce")
LOSS_TOL = dict(rel=1e-4, abs=1e-5)
WEIGHT_TOL = dict(rtol=1e-3, atol=1e-4)


@pytest.fixture
def deterministic():
    """fp32 without TF32, deterministic cuDNN; restores the previous settings."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
           torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
     torch.backends.cudnn.benchmark) = old


def _cfg(device: str, **extra):
    from repalign.config import SCHEMA, load_config

    over = {"data.max_per_class": 8, "train.epochs": 2, "train.device": device, "train.threads": 2, **extra}
    if "data.augment_device" in SCHEMA:  # views made on the CPU on both sides: the comparison is of training
        over["data.augment_device"] = "cpu"
    return load_config(None, tiny_overrides(**over) +
                       ["arms={cl: {objective: cl}, nscl: {objective: nscl}, ce: {objective: ce}}"])


# ------------------------------------------------------------------ objectives under mixed precision
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_finite_at_low_temperature_in_mixed_precision(name, precision):
    """Each objective at τ = 0.1 under autocast: finite loss and finite unscaled gradients. fp16 runs
    with a GradScaler as the trainer does: a step whose scaled gradients overflow is skipped and the
    scale halved (expected: SupCon overflows once at the default 2^16); within 8 steps the gradients
    must be finite, and the loss is finite at every step."""
    from repalign.models.projector import LinearHead
    from repalign.objectives import REGISTRY, make_loss

    dev = torch.device(DEVICE)
    obj = REGISTRY[name]
    g = torch.Generator().manual_seed(0)
    K, B, d, C = 2, 128, 32, 10
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, d)).to(dev)
    head = LinearHead(d, C).to(dev) if obj.needs_head else None
    params = list(net.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.SGD(params, lr=0.01)
    # large inputs: similarities near 1/τ = 10 stress exp() and the sums in half precision
    x = (torch.randn(K * B, 64, generator=g) * 8).to(dev)
    labels = (torch.arange(B) % C).to(dev)
    loss_fn = make_loss(obj, {"loss.temperature": 0.1, "loss.include_positive": False, "loss.options": {}})
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    finite = False
    for step in range(8 if precision == "fp16" else 1):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype):
            z = net(x).view(K, B, d)
            out = head(z) if head is not None else z
            loss = loss_fn(out, labels)
        assert torch.isfinite(loss), f"{name} {precision} step {step}: loss {loss}"
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        finite = all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in params)
        scaler.step(opt)
        scaler.update()
        if finite:
            break
    assert finite, f"{name} {precision}: gradients still non-finite at scale {scaler.get_scale()}"
    assert any(p.grad.abs().sum() > 0 for p in params)


# ------------------------------------------------------------------ trainer: device vs CPU, kill/resume
def _run(cfg, steps: int, run_dir: Path | None = None):
    from repalign.training import CoupledTrainer

    tr = CoupledTrainer(cfg, run_dir, evaluator=None)
    rows: list[tuple] = []
    orig = tr.log_row
    tr.log_row = lambda row: (rows.append((row["step"], row.get("arm"), row.get("loss")))
                              if row.get("kind") == "train" else None, orig(row))
    tr.fit(stop_after=steps)
    state = {s.name: {k: v.detach().cpu() for k, v in s.module.state_dict().items()} for s in tr.arm_states}
    return rows, state


def _compare(a, b, loss_tol, weight_tol) -> None:
    rows_a, state_a = a
    rows_b, state_b = b
    assert len(rows_a) == len(rows_b) > 0
    for x, y in zip(rows_a, rows_b):
        assert x[:2] == y[:2] and x[2] == pytest.approx(y[2], **loss_tol), (x, y)
    for arm, sd in state_b.items():
        for k, v in sd.items():
            torch.testing.assert_close(state_a[arm][k], v, **weight_tol, msg=f"{arm}:{k}")


def test_trainer_on_device_equals_cpu(deterministic):
    dev = _run(_cfg(DEVICE), 3)
    cpu = _run(_cfg("cpu"), 3)
    _compare(dev, cpu, LOSS_TOL, WEIGHT_TOL)
    assert any(not torch.equal(v, _run(_cfg("cpu"), 0)[1]["cl"][k]) for k, v in cpu[1]["cl"].items())  # weights moved


def test_kill_resume_on_device_equals_uninterrupted(tmp_path, deterministic):
    from repalign.training import CoupledTrainer

    cfg = _cfg(DEVICE)  # 80 images, B = 32: 2 steps per epoch, 4 in all
    full = _run(cfg, 10 ** 6, tmp_path / "full")
    part_dir = tmp_path / "part"
    first = _run(cfg, 3, part_dir)  # stopped mid-epoch after 3 steps (checkpointed, as a killed run), then resumed
    tr = CoupledTrainer(cfg, part_dir, resume=True, evaluator=None)
    assert tr.step == 3 and tr.total_steps == 4
    rows: list[tuple] = []
    orig = tr.log_row
    tr.log_row = lambda row: (rows.append((row["step"], row.get("arm"), row.get("loss")))
                              if row.get("kind") == "train" else None, orig(row))
    tr.fit()
    state = {s.name: {k: v.detach().cpu() for k, v in s.module.state_dict().items()} for s in tr.arm_states}
    _compare((first[0] + rows, state), full, dict(rel=1e-5, abs=1e-6), dict(rtol=1e-5, atol=1e-6))


# ------------------------------------------------------------------ metrics
def test_metrics_on_device_equal_cpu():
    from repalign import metrics as M

    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 96, generator=g)
    Y = X @ torch.randn(96, 64, generator=g) + 0.5 * torch.randn(2000, 64, generator=g)
    dev = torch.device(DEVICE)
    Xd, Yd = X.to(dev), Y.to(dev)
    assert M.linear_cka(Xd, Yd) == pytest.approx(M.linear_cka(X, Y), abs=1e-9)
    assert M.linear_cka(Xd, Yd, debiased=True) == pytest.approx(M.linear_cka(X, Y, debiased=True), abs=1e-9)
    assert M.rsa(Xd, Yd).value == pytest.approx(M.rsa(X, Y).value, abs=1e-9)
    assert 0.3 < M.linear_cka(X, Y) < 1.0


# ------------------------------------------------------------------ SyncBatchNorm
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_batchnorm_conversion_in_one_process_group(monkeypatch):
    """``model.sync_bn`` converts with ``nn.SyncBatchNorm.convert_sync_batchnorm``; in a one-process
    group (nccl on CUDA, gloo on the CPU) the converted ResNet block computes what BatchNorm computes.
    SyncBatchNorm's training forward needs an accelerator: on the CPU only conversion and eval are checked."""
    import torch.distributed as dist

    import copy

    from repalign.config import load_config
    from repalign.models import build_model

    dev = torch.device(DEVICE)
    torch.manual_seed(0)
    mcfg = load_config(None, ["model.encoder=resnet18", "model.cifar_stem=true",
                              "model.projector_hidden=16", "model.projector_out=8"])["model"]
    net = build_model(mcfg, 3, 8).to(dev)
    conv = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(net)).to(dev)
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
               for m in net.modules())
    assert n_bn > 0 and sum(isinstance(m, nn.SyncBatchNorm) for m in conv.modules()) == n_bn
    assert not any(type(m) is nn.BatchNorm2d for m in conv.modules())
    x = torch.randn(16, 3, 8, 8, device=dev)
    made = False
    if not dist.is_initialized():
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(_free_port()))
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=0, world_size=1,
                                timeout=timedelta(seconds=60))
        made = True
    try:
        if dev.type == "cuda":
            net.train()
            conv.train()
            ha, za = net(x)
            hb, zb = conv(x)
            torch.testing.assert_close(hb, ha, rtol=1e-5, atol=1e-5)
            (za.square().sum()).backward()
            (zb.square().sum()).backward()
            for (n, pa), (_, pb) in zip(net.named_parameters(), conv.named_parameters()):
                torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-5, msg=n)
        net.eval()
        conv.eval()
        with torch.no_grad():
            torch.testing.assert_close(conv(x)[0], net(x)[0], rtol=1e-5, atol=1e-5)
    finally:
        if made:
            dist.destroy_process_group()
