"""The coupled trainer: several arms trained in lockstep under shared randomness.

One base model is built from the run seed and deep-copied per arm, so every arm starts from
bitwise-identical weights (an arm whose model settings change shapes shares only the tensors whose
names and shapes agree; ``meta.json`` lists them). Each step, every data stream (normally one)
produces one batch of K augmented views; the very same tensor is fed to every arm of that stream.
Each arm has its own optimiser, schedule and AMP scaler. Under ``torchrun`` the global batch is
sharded across ranks and each arm is wrapped in DDP.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from repalign import distributed as dist_utils
from repalign.config import Arm, resolve_arms, resolve_pairs
from repalign.config import ConfigError
from repalign.errors import DataError
from repalign.faults import fault_point
from repalign.data import MultiViewTransform, SeededBatchSampler, build_source, make_train_loader
from repalign.losses import dcl_loss, loss_gap_bound, nscl_loss
from repalign.losses.functional import unchecked_inputs
from repalign.models import ContrastiveNet, LinearHead, build_model, perturb_weights, seeded_init
from repalign.objectives import get_objective, make_loss
from repalign.seeding import derive_seed
from repalign.training.checkpoint import load_latest, save_checkpoint
from repalign.training.optim import build_optimizer, scaled_lr
from repalign.training.lock import RunLock
from repalign.training.rundir import RunDir
from repalign.training.schedule import build_scheduler



class NonFiniteError(RuntimeError):
    """Raised when ``train.on_nonfinite: stop_run`` and an arm's embeddings, logits, loss or gradient
    norm is non-finite; ``checkpoints/last.pt`` then holds the state before that step (the CLI
    exits with code 3)."""

    exit_code = 3


class ArmModule(nn.Module):
    """An arm's trainable module: the shared-architecture net plus (for CE) a linear head.

    ``forward(x) → (h, z, logits)``; ``logits`` is ``None`` for contrastive arms.
    """

    def __init__(self, net: ContrastiveNet, head: LinearHead | None = None) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        h, z = self.net(x)
        return h, z, (self.head(z) if self.head is not None else None)


@dataclass
class ArmState:
    arm: Arm
    module: ArmModule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: Callable[..., torch.Tensor] | None
    stream: str
    peak_lr: float
    active: bool = True
    stop_reason: str | None = None
    wrapped: nn.Module | None = None  # DDP wrapper when distributed
    shared_params: list[str] = field(default_factory=list)
    unshared_params: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.arm.name

    def net(self) -> ContrastiveNet:
        return self.module.net


def _device(cfg: Mapping[str, Any]) -> torch.device:
    want = cfg["train"]["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("config key 'train.device': cuda requested but no CUDA device is available")
        return torch.device("cuda", dist_utils.local_rank())
    return torch.device("cpu")


def _autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _source_kwargs(cfg: Mapping[str, Any], split: str) -> dict[str, Any]:
    d = cfg["data"]
    kw = dict(d.get("options") or {})
    if d.get("image_size") and d["source"] in ("imagefolder", "strokes"):
        kw.setdefault("image_size", d["image_size"])
    if d.get("download"):
        kw["download"] = True
    per_class = d["max_per_class"] if split == "train" else d["test_max_per_class"]
    return dict(root=d["root"], num_classes=d["num_classes"], classes=d["classes"], seed=cfg["seed"],
                max_per_class=per_class, **kw)


def check_data_root(cfg: Mapping[str, Any]) -> None:
    """A ``data.root`` that does not exist is an error (not silently ignored by sources that do not
    read files), unless ``data.download`` will create it."""
    root = cfg["data"].get("root")
    if root is not None and not cfg["data"].get("download") and not Path(root).expanduser().exists():
        raise DataError(f"config key 'data.root': {root!r} does not exist (set data.download=true to download into it)")


def _build_source(cfg: Mapping[str, Any], split: str) -> Any:
    """``build_source`` for one split of ``cfg["data"]``; a missing or unreadable dataset becomes a
    one-line :class:`~repalign.errors.DataError` naming the source and what to set."""
    name = cfg["data"]["source"]
    check_data_root(cfg)
    try:
        return build_source(name, split, **_source_kwargs(cfg, split))
    except DataError:
        raise
    except (FileNotFoundError, OSError, RuntimeError) as e:
        msg = " ".join(str(e).split())
        raise DataError(f"config key 'data.source': {name!r} ({split} split) is not available: {msg}") from e


def _recipe(augment: str, image_size: int) -> str:
    """``auto``: SimCLR's CIFAR recipe below 96 px, its ImageNet recipe (with blur) above; the data
    module turns either into its grayscale variant for 1-channel images."""
    if augment != "auto":
        return augment
    return "simclr_cifar" if image_size < 96 else "simclr_imagenet"


def _all_finite(tensors: list[torch.Tensor], true: torch.Tensor) -> torch.Tensor:
    """Device-side bool: every entry of every tensor is finite (max |x| per tensor in one foreach
    kernel; unlike a 2-norm it cannot overflow on finite values)."""
    if not tensors:
        return true
    return torch.isfinite(torch.stack(torch._foreach_norm(tensors, float("inf")))).all()


class _ArmSnapshot:
    """A copy of one arm's parameters and optimiser state taken before each tentative update, so a
    step that turns out non-finite can be undone exactly. Buffers are allocated once and refreshed
    with device-to-device copies (no host sync); memory: one more copy of the parameters and of the
    optimiser state per arm."""

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.keys: list[tuple[int, str]] = []
        self.saved: list[torch.Tensor] = []
        self.other: dict[tuple[int, str], Any] = {}
        self.had_state: set[int] = set()

    def take(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        params = [p.detach() for p in module.parameters()]
        if len(self.params) != len(params) or any(a.shape != b.shape for a, b in zip(self.params, params)):
            self.params = [p.clone() for p in params]
        elif params:
            torch._foreach_copy_(self.params, params)
        keys, live, other, had = [], [], {}, set()
        for i, p in enumerate(module.parameters()):
            st = optimizer.state.get(p)
            if not st:
                continue
            had.add(i)
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    keys.append((i, k))
                    live.append(v)
                else:
                    other[(i, k)] = copy.deepcopy(v)
        if keys != self.keys or any(a.shape != b.shape or a.device != b.device for a, b in zip(self.saved, live)):
            self.keys, self.saved = keys, [v.detach().clone() for v in live]
        elif live:
            torch._foreach_copy_(self.saved, [v.detach() for v in live])
        self.other, self.had_state = other, had

    def restore(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        params = list(module.parameters())
        with torch.no_grad():
            if params:
                torch._foreach_copy_([p.detach() for p in params], self.params)
        for i, p in enumerate(params):
            if i not in self.had_state:
                optimizer.state.pop(p, None)
        for (i, k), v in zip(self.keys, self.saved):
            optimizer.state[params[i]][k] = v.clone()
        for (i, k), v in self.other.items():
            optimizer.state[params[i]][k] = copy.deepcopy(v)


class CoupledTrainer:
    """Train all arms of a resolved config in lockstep; write the run directory.

    Parameters: ``cfg`` — a resolved config (:func:`repalign.config.validate`); ``run_dir`` — the
    run directory (``None``: don't write anything); ``resume`` — continue from the run directory's
    last checkpoint. ``evaluator`` — ``"default"`` builds :class:`~repalign.training.evaluate.Evaluator`
    when ``eval.every``/``eval.schedule`` schedule anything, ``None`` disables evaluation, or any
    callable ``(trainer, epoch) → None`` run at the scheduled epochs. ``sources`` — optional
    pre-built ``(train, test)`` sources instead of building them from ``cfg["data"]``.
    """

    def __init__(self, cfg: Mapping[str, Any], run_dir: str | Path | None = None, resume: bool = False,
                 evaluator: Callable[["CoupledTrainer", int], None] | None = "default",  # type: ignore[assignment]
                 sources: tuple[Any, Any] | None = None) -> None:
        self.cfg = copy.deepcopy(dict(cfg))
        self.seed = int(cfg["seed"])
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.is_main = self.rank == 0
        self.device = _device(cfg)
        if cfg["train"]["threads"]:
            torch.set_num_threads(cfg["train"]["threads"])
        self.arms_cfg = resolve_arms(self.cfg)
        self.pairs = resolve_pairs(self.cfg, self.arms_cfg)
        # ---- data
        d = cfg["data"]
        if sources is None:
            self.train_source = _build_source(cfg, "train")
            self.test_source = _build_source(cfg, "test")
        else:
            self.train_source, self.test_source = sources
        self.channels = self.train_source.channels
        self.image_size = d["image_size"] or self.train_source.image_size
        self.num_classes = self.train_source.num_classes
        self.num_views = d["views"]
        self.batch_size = cfg["train"]["batch_size"]
        if self.batch_size % self.world:
            raise ConfigError(f"config key 'train.batch_size': {self.batch_size} is not divisible by the world size {self.world}")
        if self.batch_size > len(self.train_source):
            raise ConfigError(f"config key 'train.batch_size': {self.batch_size} exceeds the {len(self.train_source)} training samples")
        self.streams: dict[str, dict[str, Any]] = {}
        for a in self.arms_cfg:
            key = self._stream_key(a)
            if key not in self.streams:
                dseed = self.seed if a.data_seed is None else derive_seed(a.data_seed, "data")
                self.streams[key] = {
                    "seed": dseed,
                    "sampler": SeededBatchSampler(self.train_source.labels, self.batch_size, seed=dseed,
                                                  balanced=d["balanced"], drop_last=True),
                    "transform": MultiViewTransform(
                        _recipe(d["augment"], self.image_size), self.image_size, self.channels, self.num_views,
                        seed=dseed, mean=self.train_source.mean, std=self.train_source.std),
                }
        self.steps_per_epoch = len(self.streams["shared" if "shared" in self.streams else next(iter(self.streams))]["sampler"])
        if self.steps_per_epoch < 1:
            raise ConfigError("config key 'train.batch_size': larger than the training set; no full batch")
        self.epochs = cfg["train"]["epochs"]
        self.total_steps = self.epochs * self.steps_per_epoch
        if cfg["train"]["max_steps"]:
            self.total_steps = min(self.total_steps, cfg["train"]["max_steps"])
        # ---- models
        self.arm_states = self._build_arms()
        self.step = 0
        self.epoch = 0
        self.pos_in_epoch = 0
        self._saved_step = -1
        self._snapshots: dict[str, _ArmSnapshot] = {}  # per arm, for undoing a non-finite step
        self._t0 = time.perf_counter()
        self.evaluator = self._default_evaluator() if evaluator == "default" else evaluator
        self._loggers: Any = None  # training.loggers.MetricLoggers while fit() runs
        # The run directory is locked and written only once data and models are built, so a
        # failed start leaves nothing behind; its lock is released at the end of fit() (or close()).
        self.run = RunDir(run_dir, write=self.is_main) if run_dir is not None else None
        try:
            if resume:
                self._resume()
            elif self.run is not None:
                self.run.write_config(self.cfg)
                self.run.write_meta(self._meta())
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ building
    @staticmethod
    def _stream_key(arm: Arm) -> str:
        return "shared" if arm.data_seed is None else f"data_seed={arm.data_seed}"

    def _build_arms(self) -> list[ArmState]:
        model_cfg = self.cfg["model"]
        with seeded_init(derive_seed(self.seed, "init")):
            base = build_model(model_cfg, self.channels, self.image_size)
        states = []
        for a in self.arms_cfg:
            mcfg = a.model_cfg(model_cfg)
            shared: list[str]
            unshared: list[str] = []
            if a.init_seed is not None:
                with seeded_init(derive_seed(a.init_seed, "init")):
                    net = build_model(mcfg, self.channels, self.image_size)
                shared = []
                unshared = [k for k in net.state_dict()]
            elif mcfg == dict(model_cfg):
                net = copy.deepcopy(base)
                shared = list(net.state_dict())
            else:
                with seeded_init(derive_seed(self.seed, "init", a.name)):
                    net = build_model(mcfg, self.channels, self.image_size)
                base_sd = base.state_dict()
                sd = net.state_dict()
                shared = [k for k, v in sd.items() if k in base_sd and base_sd[k].shape == v.shape]
                unshared = [k for k in sd if k not in shared]
                net.load_state_dict({**sd, **{k: base_sd[k] for k in shared}})
            perturbed: dict[str, float] = {}
            if a.init_perturb:  # chaos-floor control: shared init + seeded relative noise per tensor
                perturbed = perturb_weights(net, a.init_perturb, derive_seed(self.seed, "init_perturb", a.name))
                shared = [k for k in shared if f"{k}" not in perturbed]
                unshared = unshared + sorted(perturbed)
            head = None
            obj = get_objective(a.objective, f"arms.{a.name}.objective")
            if obj.needs_head:
                with seeded_init(derive_seed(self.seed, "head")):
                    head = LinearHead(mcfg["projector_out"], self.num_classes)
            module = ArmModule(net, head).to(self.device)
            if self.world > 1 and self.cfg["model"]["sync_bn"]:
                module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            peak = scaled_lr(a.get("optim.lr"), self.batch_size, a.get("optim.lr_rule"))
            opt = build_optimizer(module, a.settings, peak)
            warm = int(round(a.get("optim.warmup_epochs") * self.steps_per_epoch))
            sched = build_scheduler(opt, self.total_steps, warm, a.get("optim.final_lr_fraction"))
            prec = a.get("train.precision")
            scaler = torch.amp.GradScaler(self.device.type, enabled=prec == "fp16")
            loss_fn = make_loss(obj, a.settings)
            st = ArmState(a, module, opt, sched, scaler, loss_fn, self._stream_key(a), peak,
                          shared_params=shared, unshared_params=unshared)
            if self.world > 1:
                ids = [self.device.index] if self.device.type == "cuda" else None
                st.wrapped = nn.parallel.DistributedDataParallel(module, device_ids=ids)
            states.append(st)
        return states

    def _meta(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "world_size": self.world, "device": str(self.device),
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "num_classes": self.num_classes, "class_names": list(self.train_source.class_names),
            "train_size": len(self.train_source), "test_size": len(self.test_source),
            "image_size": self.image_size, "channels": self.channels,
            "streams": {k: {"seed": v["seed"]} for k, v in self.streams.items()},
            "pairs": [list(p) for p in self.pairs],
            "arms": {s.name: {**s.arm.to_dict(), **self._objective_meta(s.arm), "peak_lr": s.peak_lr, "stream": s.stream,
                              "shares_all_initial_weights": not s.unshared_params,
                              "unshared_params": s.unshared_params,
                              "num_params": sum(p.numel() for p in s.module.parameters())}
                     for s in self.arm_states},
        }

    @staticmethod
    def _objective_meta(arm: Arm) -> dict[str, Any]:
        """The objective's display name (a plug-in's own name) and, for a plug-in, its reference."""
        obj = get_objective(arm.objective, f"arms.{arm.name}.objective")
        return {"objective": obj.name, "objective_reference": obj.reference, "needs_labels": obj.needs_labels,
                "needs_head": obj.needs_head}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": self.epoch, "pos_in_epoch": self.pos_in_epoch,
            "arms": {s.name: {"module": s.module.state_dict(), "optimizer": s.optimizer.state_dict(),
                              "scheduler": s.scheduler.state_dict(), "scaler": s.scaler.state_dict(),
                              "active": s.active, "stop_reason": s.stop_reason or ""}
                     for s in self.arm_states},
            "rng": {"torch": torch.get_rng_state()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step, self.epoch, self.pos_in_epoch = state["step"], state["epoch"], state["pos_in_epoch"]
        for s in self.arm_states:
            if s.name not in state["arms"]:
                raise ValueError(f"checkpoint has no arm {s.name!r} (arms: {list(state['arms'])})")
            a = state["arms"][s.name]
            s.module.load_state_dict(a["module"])
            s.optimizer.load_state_dict(a["optimizer"])
            s.scheduler.load_state_dict(a["scheduler"])
            s.scaler.load_state_dict(a["scaler"])
            s.active = bool(a["active"])
            s.stop_reason = a["stop_reason"] or None
        torch.set_rng_state(state["rng"]["torch"])

    def save(self) -> None:
        """Write ``checkpoints/last.pt`` atomically (the previous one is kept as ``last.prev.pt``)."""
        if self.run is not None and self.is_main:
            self.run.sync()  # the rows this checkpoint covers reach the disk first
            save_checkpoint(self.state_dict(), self.run.ckpt_dir / "last.pt")
        self._saved_step = self.step

    def save_models(self, epoch: int | float) -> Path | None:
        """Weights of every arm at an evaluation (for ``repalign align``): ``epoch_XXXX.pt`` at an
        epoch boundary, ``step_XXXXXXXX.pt`` mid-epoch."""
        if self.run is None or not self.is_main:
            return None
        name = f"epoch_{epoch:04d}.pt" if isinstance(epoch, int) else f"step_{self.step:08d}.pt"
        path = self.run.ckpt_dir / name
        save_checkpoint({"epoch": epoch, "step": self.step,
                         "arms": {s.name: s.module.state_dict() for s in self.arm_states}}, path,
                        keep_previous=False)
        return path

    def _resume(self) -> None:
        assert self.run is not None
        # loaded on the CPU (verified there); load_state_dict copies to the device
        state, used, problems = load_latest(self.run.ckpt_dir / "last.pt", map_location="cpu")
        for p in problems:
            print(f"repalign: warning: {p}; using {used.name}", file=sys.stderr)
        self.load_state_dict(state)
        self._saved_step = self.step
        self.run.truncate_metrics_after(self.step)
        self.run.log({"kind": "event", "step": self.step, "arm": None,
                      "message": f"resumed from {used.name} at step {self.step}"})

    # ------------------------------------------------------------------ training
    def _batches(self, stream: dict[str, Any], epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches of ``epoch`` from position ``start``: ``(views [K,B,C,H,W], labels [B], indices [B])``
        (under DDP ``B`` is this rank's share of the global batch)."""
        sampler: SeededBatchSampler = stream["sampler"]
        sampler.load_state_dict({"epoch": epoch, "consumed": start})
        loader = make_train_loader(self.train_source, stream["transform"], sampler,
                                   num_workers=self.cfg["data"]["num_workers"],
                                   shard=(self.rank, self.world) if self.world > 1 else None)
        return iter(loader)

    def _eval_steps(self) -> set[int]:
        from repalign.training.evaluate import eval_steps
        return eval_steps(self.cfg["eval"], self.epochs, self.steps_per_epoch, self.total_steps)

    def _default_evaluator(self) -> Callable[["CoupledTrainer", int], None] | None:
        from repalign.training.evaluate import Evaluator
        return Evaluator(self, log=self.log_row) if self._eval_steps() else None

    def _evaluate(self) -> None:
        """Evaluation after ``self.step`` steps: save every arm's weights, then log align/eval rows.
        Runs before any checkpoint of the same step, so a run killed while evaluating redoes it."""
        from repalign.training.evaluate import epoch_of
        epoch = epoch_of(self.step, self.steps_per_epoch)
        self.save_models(epoch)
        assert self.evaluator is not None
        self.evaluator(self, epoch)

    def _log_weight_gaps(self) -> None:
        """``kind: weight`` rows (weight gap of every pair, no features) — ``eval.weight_every``."""
        from repalign.training.evaluate import epoch_of, weight_rows
        if not self.is_main:
            return
        nets = {s.name: s.module.net for s in self.arm_states}
        for row in weight_rows(nets, self.pairs, epoch_of(self.step, self.steps_per_epoch), self.step):
            self.log_row(row)

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train until ``train.epochs`` (or ``train.max_steps``); return a summary dict.

        Evaluations happen after the global steps of :func:`~repalign.training.evaluate.eval_steps`
        (epoch boundaries, log-spaced steps, explicit steps — possibly mid-epoch), weight-gap rows
        every ``eval.weight_every`` steps. ``stop_after``: checkpoint and return once the global step
        reaches this value (as a killed or pre-empted run would); ``--resume`` continues it
        bit-identically, with no evaluation row missing or repeated.
        """
        log_every = self.cfg["train"]["log_every"]
        eval_at = self._eval_steps()
        weight_every = self.cfg["eval"].get("weight_every")
        t_start = time.perf_counter()
        end = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        self._hold_lock()
        bar = None
        try:
            self._open_loggers()  # before the step-0 rows, so TensorBoard/W&B get them too
            if self.step == 0:
                if weight_every:
                    self._log_weight_gaps()
                if self.evaluator is not None and 0 in eval_at:
                    self._evaluate()
            bar = self._progress()
            while self.step < end and any(s.active for s in self.arm_states):
                iters = {k: self._batches(v, self.epoch, self.pos_in_epoch) for k, v in self.streams.items()}
                while self.pos_in_epoch < self.steps_per_epoch and self.step < end:
                    batches = {k: next(it) for k, it in iters.items()}
                    rows = self.train_step(batches, log=(self.step % log_every == 0))
                    self.step += 1
                    self.pos_in_epoch += 1
                    if bar is not None:
                        bar.update(1)
                        if rows:
                            bar.set_postfix({r["arm"]: f"{r['loss']:.3f}" for r in rows if r["kind"] == "train"})
                    if weight_every and self.step % weight_every == 0:
                        self._log_weight_gaps()
                    # before the checkpoint of this step: a run killed while evaluating redoes it
                    if self.evaluator is not None and self.step in eval_at:
                        self._evaluate()
                    if not any(s.active for s in self.arm_states):
                        break
                if self.pos_in_epoch < self.steps_per_epoch:
                    break  # stopped mid-epoch (stop_after, max_steps or every arm stopped)
                self.epoch += 1
                self.pos_in_epoch = 0
                if self.epoch % self.cfg["train"]["checkpoint_every"] == 0:
                    self.save()
            if self._saved_step != self.step:
                self.save()
        finally:
            if bar is not None:
                bar.close()
            self._close_loggers()
            self.close()
        return {"steps": self.step, "epochs": self.epoch, "seconds": time.perf_counter() - t_start,
                "arms": {s.name: {"active": s.active, "stop_reason": s.stop_reason} for s in self.arm_states}}

    def train_step(self, batches: Mapping[str, tuple[torch.Tensor, ...]], log: bool = False) -> list[dict[str, Any]]:
        """One optimiser step of every active arm on its stream's batch; returns logged rows.

        Watching for non-finite values costs one device→host transfer per step rather than one per
        arm: (1) every active arm runs its forward and backward pass and records, on the device,
        whether its embeddings, logits, loss and gradient norm are finite; (2) it takes its optimiser
        step tentatively — parameters and optimiser state are first copied into a preallocated
        snapshot (device-to-device) — and records whether its parameters are still finite; (3) one
        transfer of all flags and losses (one all-reduce under DDP) decides. An arm with any
        non-finite value gets its parameters, optimiser state and BN buffers back from before the
        step, so it stays at its last good state, and ``train.on_nonfinite`` decides whether it stops
        alone (``stop_arm``) or the run stops (``stop_run``: every arm is put back, a checkpoint of
        the state before this step is written, :class:`NonFiniteError` is raised).
        """
        rows: list[dict[str, Any]] = []
        epoch_f = self.step / self.steps_per_epoch
        inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key, (views, labels, _idx) in batches.items():
            x = views.to(self.device, non_blocking=True).flatten(0, 1)  # [K·B, C, H, W], view-major
            inputs[key] = (x, labels.to(self.device))
        pending: list[dict[str, Any]] = []
        for s in self.arm_states:
            if not s.active:
                continue
            x, labels = inputs[s.stream]
            t0 = time.perf_counter()
            # BN running statistics change in the forward pass; keep a copy so a non-finite step
            # leaves the arm exactly at its last good state (buffers are small: a few vectors).
            buffers = list(s.module.buffers())
            saved = [b.clone() for b in buffers]
            loss, z, logits = self._forward_loss(s, x, labels)
            s.optimizer.zero_grad(set_to_none=True)
            s.scaler.scale(loss).backward()
            s.scaler.unscale_(s.optimizer)
            clip = s.arm.get("train.grad_clip")
            gnorm = torch.nn.utils.clip_grad_norm_(s.module.parameters(), clip if clip else float("inf"))
            true = torch.ones((), dtype=torch.bool, device=loss.device)
            checks = [
                torch.isfinite(z).all(),
                torch.isfinite(logits).all() if logits is not None else true,
                torch.isfinite(loss.detach()),
                # with an fp16 scaler, inf gradients are expected: the scaler skips the step itself
                torch.isfinite(gnorm.to(loss.device)) if not s.scaler.is_enabled() else true,
                _all_finite([b for b in buffers if b.is_floating_point()], true),  # BN running statistics
            ]
            pending.append({"s": s, "buffers": buffers, "saved": saved, "loss": loss.detach().float(), "z": z,
                            "logits": logits, "gnorm": gnorm, "checks": checks, "labels": labels,
                            "dt": time.perf_counter() - t0})
        if not pending:
            return rows
        fault_point("step.forward")
        for i, p in enumerate(pending):  # tentative updates, undone below where anything is non-finite
            s = p["s"]
            t0 = time.perf_counter()
            snap = self._snapshots.setdefault(s.name, _ArmSnapshot())
            snap.take(s.module, s.optimizer)
            s.scaler.step(s.optimizer)
            p["checks"].append(_all_finite([q.detach() for q in s.module.parameters()], p["checks"][0].new_ones(())))
            p["snap"] = snap
            p["dt"] += time.perf_counter() - t0
            if i == 0:
                fault_point("step.update")
        # one transfer (one all-reduce under DDP) for every arm: bad counts and losses
        n_checks = len(pending[0]["checks"])
        vec = torch.cat([torch.stack([(~torch.stack(p["checks"])).float() for p in pending]).flatten(),
                         torch.stack([p["loss"] for p in pending])])
        vals = dist_utils.all_reduce_mean(vec).tolist()
        n = len(pending)
        what_of = ("embeddings", "logits", "loss", "gradient norm", "BN running statistics", "weights after the update")
        bad: list[tuple[dict[str, Any], str, str]] = []
        for i, p in enumerate(pending):
            p["loss_val"] = vals[n_checks * n + i]
            flags = vals[n_checks * i: n_checks * (i + 1)]
            if any(f > 0 for f in flags):
                what = what_of[next(j for j, f in enumerate(flags) if f > 0)]
                bad.append((p, what, self._nonfinite_value(p, what)))
        if bad and self.cfg["train"]["on_nonfinite"] == "stop_run":
            for p in pending:  # nobody takes this step: the checkpoint holds the state before it
                self._undo_step(p)
            for p, what, value in bad:
                self._nonfinite(p["s"], what, value)
            self.save()
            where = self.run.ckpt_dir / "last.pt" if self.run is not None else "no run directory"
            others = f" (and {len(bad) - 1} more arm(s); see the event rows)" if len(bad) > 1 else ""
            raise NonFiniteError(f"{bad[0][0]['s'].stop_reason}{others}; run stopped (train.on_nonfinite=stop_run), "
                                 f"checkpoint of step {self.step}: {where}")
        reasons = {id(p["s"]): (what, value) for p, what, value in bad}
        for p in pending:
            s = p["s"]
            if id(s) in reasons:
                self._undo_step(p)
                self._nonfinite(s, *reasons[id(s)])
                continue
            s.scaler.update()
            s.scheduler.step()
            if log:
                lr = s.optimizer.param_groups[0]["lr"]
                rows.append({"kind": "train", "step": self.step, "epoch": epoch_f, "arm": s.name,
                             "objective": get_objective(s.arm.objective).name, "loss": p["loss_val"], "lr": lr,
                             "grad_norm": float(p["gnorm"]), "samples_per_s": self.batch_size / max(p["dt"], 1e-9)})
                if get_objective(s.arm.objective).loss_gap:
                    rows.append(self._loss_gap_row(s, p["z"], p["labels"], epoch_f))
        for r in rows:
            self.log_row(r)
        return rows

    @staticmethod
    def _undo_step(p: Mapping[str, Any]) -> None:
        """Put an arm back to its state before this step: parameters and optimiser state from the
        snapshot (when the update was taken), BN buffers, no gradients."""
        s = p["s"]
        if "snap" in p:
            p["snap"].restore(s.module, s.optimizer)
        if p["buffers"]:
            torch._foreach_copy_(p["buffers"], p["saved"])
        s.optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def _nonfinite_value(p: Mapping[str, Any], what: str) -> str:
        """What was non-finite, for the event message (a host sync, only on the rare bad path)."""
        if what in ("embeddings", "logits"):
            t = p["z"] if what == "embeddings" else p["logits"]
            return f"{int((~torch.isfinite(t)).sum())} of {t.numel()} entries"
        if what in ("weights after the update", "BN running statistics"):
            params = list(p["s"].module.parameters()) if what.startswith("weights") else \
                [b for b in p["s"].module.buffers() if b.is_floating_point()]
            return f"{sum(int((~torch.isfinite(q)).sum()) for q in params)} of {sum(q.numel() for q in params)} entries"
        return str(float(p["loss"] if what == "loss" else p["gnorm"]))

    def _forward_loss(self, s: ArmState, x: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Forward pass and loss of one arm → ``(loss, z [K, B, d], logits [K, B, C] or None)``.

        The loss functions' own input checks (non-finite entries, label range) need a host sync
        each; they are skipped here because :meth:`train_step` checks every arm's values itself."""
        s.module.train()
        model = s.wrapped if s.wrapped is not None else s.module
        dtype = _autocast_dtype(s.arm.get("train.precision"))
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            _h, z, logits = model(x)
        k = self.num_views
        z = z.float().reshape(k, -1, z.shape[-1])
        with unchecked_inputs():
            assert s.loss_fn is not None
            if logits is not None:  # an objective with a classifier head gets the logits [K, B, C]
                logits = logits.float().reshape(k, -1, logits.shape[-1])
                loss = s.loss_fn(logits, labels)
            else:
                loss = s.loss_fn(z, labels)
        return loss, z, logits

    def _loss_gap_row(self, s: ArmState, z: torch.Tensor, labels: torch.Tensor, epoch_f: float) -> dict[str, Any]:
        """Per-batch DCL − NSCL of a CL arm on its own (global) embeddings, and the bound."""
        with torch.no_grad():
            zg, yg = dist_utils.gather_no_grad(z.detach(), dim=1), dist_utils.gather_no_grad(labels, dim=0)
            tau = s.arm.get("loss.temperature")
            dcl = float(dcl_loss(zg, yg, tau))
            nscl = float(nscl_loss(zg, yg, tau))
            bound = float(loss_gap_bound(yg, tau))
        return {"kind": "lossgap", "step": self.step, "epoch": epoch_f, "arm": s.name, "dcl": dcl,
                "nscl": nscl, "gap": dcl - nscl, "bound": bound}

    def _nonfinite(self, s: ArmState, what: str, value: str) -> None:
        """Stop arm ``s`` (its last good weights, optimiser and BN state are kept) and log the event.
        Under ``stop_run`` nothing is printed here: the run ends with one error line of its own."""
        msg = (f"arm {s.name!r} (objective {s.arm.objective}) stopped at step {self.step}: "
               f"non-finite {what} ({value}); its last good weights are kept")
        s.active = False
        s.stop_reason = msg
        if self.is_main and self.cfg["train"]["on_nonfinite"] != "stop_run":
            print(f"repalign: {msg}", file=sys.stderr)
        self.log_row({"kind": "event", "step": self.step, "arm": s.name, "message": msg})

    def close(self) -> None:
        """Release the run directory's lock (:meth:`fit` does this when it ends; idempotent)."""
        if self.run is not None:
            self.run.close()

    def _hold_lock(self) -> None:
        if self.run is not None and self.run.write and self.run.lock is None:
            self.run.lock = RunLock(self.run.path).acquire()

    # ------------------------------------------------------------------ logging
    def log_row(self, row: Mapping[str, Any]) -> None:
        """Append one row to ``metrics.jsonl`` (with ``wall_s``, seconds since this process started)
        and send its metric values to the TensorBoard/W&B loggers when they are open."""
        row = {**row, "wall_s": round(time.perf_counter() - self._t0, 3)}
        if self.run is not None:
            self.run.log(row)
        if self._loggers is not None:
            self._loggers.log(row)

    def _progress(self):
        if not (self.is_main and self.cfg["logging"]["progress"]):
            return None
        from tqdm import tqdm
        return tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                    file=sys.stderr)

    def _open_loggers(self) -> None:
        if self.is_main and self.run is not None and self._loggers is None and \
                (self.cfg["logging"]["tensorboard"] or self.cfg["logging"]["wandb"]):
            from repalign.training.loggers import MetricLoggers
            self._loggers = MetricLoggers(self.cfg, self.run.path)

    def _close_loggers(self) -> None:
        if self._loggers is not None:
            self._loggers.close()
            self._loggers = None
