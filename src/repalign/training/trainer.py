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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from repalign import distributed as dist_utils
from repalign.config import Arm, resolve_arms, resolve_pairs
from repalign.config import ConfigError
from repalign.errors import DataError, Interrupted
from repalign.faults import fault_point
from repalign.data import MultiViewTransform, SeededBatchSampler, build_source, make_train_loader
from repalign.data.batched_views import BatchedViews
from repalign.data.sources.registry import DataWarning
from repalign.data.sources.subsets import check_test_split, conform, require_classes
from repalign.data.label_groups import arm_label_lookup
from repalign.losses import dcl_loss, nscl_loss
from repalign.losses.functional import (
    loss_gap_bound_alpha_from_counts, loss_gap_bound_from_counts, nscl_alpha_loss,
)
from repalign.losses.functional import unchecked_inputs
from repalign.models import ContrastiveNet, LinearHead, build_model, perturb_weights, seeded_init
from repalign.objectives import get_objective, make_loss
from repalign.seeding import derive_seed
from repalign.training.checkpoint import load_latest, save_checkpoint
from repalign.training.optim import build_optimizer, scaled_lr
from repalign.training.lock import RunLock
from repalign.training.rundir import RunDir
from repalign.training.signals import StopSignals
from repalign.training.schedule import build_scheduler



class NonFiniteError(RuntimeError):
    """Raised when ``train.on_nonfinite: stop_run`` and an arm's embeddings, logits, loss or gradient
    norm is non-finite; ``checkpoints/last.pt`` then holds the state before that step (the CLI
    exits with code 3), whatever ``train.nonfinite_check_every`` is."""

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
    compiled: nn.Module | None = None  # torch.compile of (wrapped or module) when train.compile
    shared_params: list[str] = field(default_factory=list)
    unshared_params: list[str] = field(default_factory=list)
    label_lut: torch.Tensor | None = None  # [C] int64 on the device: the labels the objective sees (label_groups)

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
            raise ConfigError("config key 'train.device': cuda requested but no CUDA device is available")
        return torch.device("cuda", dist_utils.local_rank())
    return torch.device("cpu")


def _augment_device(cfg: Mapping[str, Any], device: torch.device) -> torch.device | None:
    """Where training views are augmented (``data.augment_device``): the training device for the
    batched path, ``None`` for the per-sample CPU path in the loader."""
    want = cfg["data"].get("augment_device", "auto")
    if want == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("config key 'data.augment_device': cuda requested but no CUDA device is available")
        if device.type != "cuda":
            raise ConfigError(f"config key 'data.augment_device': cuda needs CUDA training, but the training device is {device.type}")
        return device
    return device if want == "batched" or (want == "auto" and device.type == "cuda") else None


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


def _build_source(cfg: Mapping[str, Any], split: str, mapping: Any = None) -> Any:
    """``build_source`` for one split of ``cfg["data"]`` (with ``mapping``: the train split's classes and
    labels); a missing or unreadable dataset becomes a one-line :class:`~repalign.errors.DataError`
    naming the source and what to set."""
    name = cfg["data"]["source"]
    check_data_root(cfg)
    try:
        return build_source(name, split, mapping=mapping, **_source_kwargs(cfg, split))
    except DataError:
        raise
    except (FileNotFoundError, OSError, RuntimeError) as e:
        msg = " ".join(str(e).split())
        raise DataError(f"config key 'data.source': {name!r} ({split} split) is not available: {msg}") from e


def _build_sources(cfg: Mapping[str, Any], sources: tuple[Any, Any] | None, is_main: bool) -> tuple[Any, Any]:
    """The train split, refused with fewer than 2 classes, then the test split with the train split's
    class mapping (decided once; ``sources`` given as objects: the test split conformed to it), so label
    ``k`` is one class in every split and evaluation bank. Data warnings (a class of one split missing
    from the other) are printed as one ``repalign: warning:`` line each, on the main rank."""
    name = cfg["data"]["source"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        if sources is None:
            train = _build_source(cfg, "train")
            require_classes(train, name)
            test = _build_source(cfg, "test", mapping=train.mapping)
        else:
            train, test = sources
            require_classes(train, name)
            test = conform(test, train.mapping, name)
        check_test_split(train, test, name)
    for w in caught:
        if not issubclass(w.category, DataWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif is_main:
            print(f"repalign: warning: {w.message}", file=sys.stderr)
    return train, test


def _recipe(augment: str, image_size: int) -> str:
    """``auto``: SimCLR's CIFAR recipe below 96 px, its ImageNet recipe (with blur) above; the data
    module turns either into its grayscale variant for 1-channel images."""
    if augment != "auto":
        return augment
    return "simclr_cifar" if image_size < 96 else "simclr_imagenet"


def _nonfinite_count(tensors: list[torch.Tensor], zero: torch.Tensor) -> torch.Tensor:
    """Device-side float64 scalar: the number of non-finite entries in all of ``tensors`` (no host sync).

    ``x − x`` is 0 for a finite ``x`` and NaN for ±inf/NaN, and the 0-"norm" counts non-zero (NaN
    included) entries: two foreach kernels for any number of tensors. ``zero`` is returned for ``[]``."""
    if not tensors:
        return zero
    return torch.stack(torch._foreach_norm(torch._foreach_sub(tensors, tensors), 0)).double().sum()


#: what the columns 0..5 of a step record count, in the order the first non-zero one is reported
_CHECKS = ("embeddings", "logits", "loss", "gradient norm", "BN running statistics", "weights after the update")
_LOSS, _GNORM, _REC = 6, 7, 8  # record columns: loss value, gradient norm value; record width


class _ArmSnapshot:
    """One arm's state before its tentative update, and the device-side masking that undoes the update.

    :meth:`take_buffers` (before the forward pass: BN running statistics) and :meth:`take` (before the
    optimiser step: parameters and the optimiser's tensors on the parameters' device) refresh
    preallocated copies with device-to-device copies; :meth:`keep_if` then puts every one of them back
    where a device-side bool says so (``torch.where``: no host sync, bitwise exact either way).
    Optimiser state that lives elsewhere (non-tensor values, tensors on another device — e.g. Adam's
    CPU step counts) and which parameters had state at all are recorded on the host by :meth:`take`
    (``had_state``, ``keys``, ``other``) and put back by :meth:`CoupledTrainer._restore_host` when the
    flags are read. Memory: one more copy of the parameters, the optimiser state and the buffers per arm.
    """

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.keys: list[tuple[int, str]] = []
        self.saved: list[torch.Tensor] = []
        self.other: dict[tuple[int, str], Any] = {}
        self.had_state: set[int] = set()
        self.buffers: list[torch.Tensor] = []
        self.saved_buffers: list[torch.Tensor] = []

    @staticmethod
    def _refresh(dst: list[torch.Tensor], src: list[torch.Tensor]) -> list[torch.Tensor]:
        """``dst`` refreshed from ``src`` in place (reallocated when the shapes/dtypes/devices changed)."""
        if len(dst) != len(src) or any(a.shape != b.shape or a.dtype != b.dtype or a.device != b.device
                                       for a, b in zip(dst, src)):
            return [t.detach().clone() for t in src]
        if src:
            torch._foreach_copy_(dst, [t.detach() for t in src])
        return dst

    def take_buffers(self, module: nn.Module) -> None:
        """Copy the module's buffers (BN running statistics change in the forward pass)."""
        self.buffers = list(module.buffers())
        self.saved_buffers = self._refresh(self.saved_buffers, self.buffers)

    def take(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Copy parameters and optimiser state before the optimiser step."""
        params = list(module.parameters())
        self.params = self._refresh(self.params, params)
        keys, live, other, had = [], [], {}, set()
        for i, p in enumerate(params):
            st = optimizer.state.get(p)
            if not st:
                continue
            had.add(i)
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.device == p.device:
                    keys.append((i, k))
                    live.append(v)
                else:
                    other[(i, k)] = copy.deepcopy(v)
        if keys != self.keys:
            self.saved = []
        self.keys, self.saved = keys, self._refresh(self.saved, live)
        self.other, self.had_state = other, had

    def keep_if(self, frozen: torch.Tensor, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Where the device bool ``frozen`` is true, put parameters, optimiser tensors (those present
        before the step) and buffers back to the copies; else leave them as they are."""
        params = list(module.parameters())
        live = [p.detach() for p in params] + [optimizer.state[params[i]][k] for i, k in self.keys] + self.buffers
        saved = self.params + self.saved + self.saved_buffers
        with torch.no_grad():
            for a, b in zip(saved, live):
                torch.where(frozen, a, b, out=a)
            if live:
                torch._foreach_copy_(live, saved)


class _EpochLines:
    """The non-TTY stand-in of the train bar (``update``/``set_postfix``/``close``): one line per finished
    epoch, the ETA from the steps done in this process."""

    def __init__(self, total: int, initial: int, steps_per_epoch: int) -> None:
        self.total, self.step, self.spe = int(total), int(initial), max(1, int(steps_per_epoch))
        self.start, self._t0, self.post = int(initial), time.perf_counter(), ""

    def update(self, n: int = 1) -> None:
        from repalign.progress import fmt_seconds

        self.step += n
        if self.step % self.spe == 0 or self.step == self.total:
            el = time.perf_counter() - self._t0
            done = self.step - self.start
            eta = f" · ETA {fmt_seconds(el / done * (self.total - self.step))}" if 0 < done and self.step < self.total else ""
            print(f"train epoch {-(-self.step // self.spe)}/{-(-self.total // self.spe)} · step {self.step}/{self.total}"
                  f"{' · ' + self.post if self.post else ''} · {fmt_seconds(el)} elapsed{eta}", file=sys.stderr, flush=True)

    def set_postfix(self, d: Mapping[str, Any]) -> None:
        self.post = " ".join(f"{k} {v}" for k, v in d.items())

    def close(self) -> None:
        pass


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
        t = cfg["train"]
        every = t.get("nonfinite_check_every", "auto")
        #: steps between reads of the device-side non-finite flags (see :meth:`train_step`)
        self.nonfinite_check_every = (t["log_every"] if self.device.type == "cuda" else 1) if every == "auto" else int(every)
        self.channels_last = bool(t.get("channels_last", False))
        self.compile = bool(t.get("compile", False))
        pin = cfg["data"].get("pin_memory", "auto")
        if pin is True and self.device.type != "cuda":
            raise ConfigError(f"config key 'data.pin_memory': true needs a CUDA device (pinned memory serves "
                              f"host→GPU copies; the device is {self.device.type}); use auto")
        self.pin_memory = self.device.type == "cuda" and pin is not False
        self.persistent_workers = bool(cfg["data"].get("persistent_workers", True))
        if cfg["train"]["threads"]:
            torch.set_num_threads(cfg["train"]["threads"])
        self.arms_cfg = resolve_arms(self.cfg)
        self.pairs = resolve_pairs(self.cfg, self.arms_cfg)
        # ---- data
        d = cfg["data"]
        self.train_source, self.test_source = _build_sources(cfg, sources, self.is_main)
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
                # issue 18: a control stream is derived from the run seed too, so its batch order differs per seed
                dseed = self.seed if a.data_seed is None else derive_seed(self.seed, "data", a.data_seed)
                self.streams[key] = {
                    "seed": dseed,
                    "sampler": SeededBatchSampler(self.train_source.labels, self.batch_size, seed=dseed,
                                                  balanced=d["balanced"], drop_last=True),
                    "transform": MultiViewTransform(
                        _recipe(d["augment"], self.image_size), self.image_size, self.channels, self.num_views,
                        seed=dseed, mean=self.train_source.mean, std=self.train_source.std),
                }
        #: device of the batched view augmentation (None: per sample on the CPU, in the loader)
        self.augment_device = _augment_device(cfg, self.device)
        for st in self.streams.values():
            st["batched"] = BatchedViews(st["transform"]) if self.augment_device is not None else None
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
        self._pending: list[dict[str, Any]] = []  # step records not yet read from the device (train_step)
        self._frozen: dict[str, torch.Tensor] = {}  # per arm: device bool, non-finite since the last read
        self._frozen_all: torch.Tensor | None = None  # stop_run: any arm non-finite since the last read
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
                with seeded_init(derive_seed(self.seed, "init", a.init_seed)):  # per run seed (issue 18)
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
            lut = arm_label_lookup(a, self.num_classes, self.seed)
            if (a.label_groups is not None or a.label_map is not None) and not obj.needs_labels:
                key = "label_groups" if a.label_groups is not None else "label_map"
                raise ConfigError(f"config key 'arms.{a.name}.{key}': objective {obj.name!r} uses no labels")
            if obj.needs_head:
                with seeded_init(derive_seed(self.seed, "head")):
                    head = LinearHead(mcfg["projector_out"], self.num_classes if lut is None else int(lut.max()) + 1)
            module = ArmModule(net, head).to(self.device)
            if self.channels_last:
                module = module.to(memory_format=torch.channels_last)
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
                          shared_params=shared, unshared_params=unshared,
                          label_lut=None if lut is None else lut.to(self.device))
            if self.world > 1:
                ids = [self.device.index] if self.device.type == "cuda" else None
                st.wrapped = nn.parallel.DistributedDataParallel(module, device_ids=ids)
            if self.compile:  # forward only: checkpoints and exports read st.module, names unchanged
                st.compiled = torch.compile(st.wrapped if st.wrapped is not None else module)
            states.append(st)
        return states

    def _meta(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "world_size": self.world, "device": str(self.device),
            "speed": {"nonfinite_check_every": self.nonfinite_check_every, "channels_last": self.channels_last,
                      "compile": self.compile, "pin_memory": self.pin_memory,
                      "persistent_workers": self.persistent_workers},
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "num_classes": self.num_classes, "class_names": list(self.train_source.class_names),
            "train_size": len(self.train_source), "test_size": len(self.test_source),
            "image_size": self.image_size, "channels": self.channels,
            "streams": {k: {"seed": v["seed"]} for k, v in self.streams.items()},
            "pairs": [list(p) for p in self.pairs],
            "arms": {s.name: {**s.arm.to_dict(), **self._objective_meta(s.arm), "peak_lr": s.peak_lr, "stream": s.stream,
                              "shares_all_initial_weights": not s.unshared_params,
                              "unshared_params": s.unshared_params,
                              **({"label_lookup": s.label_lut.tolist()} if s.label_lut is not None else {}),
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
        """Write ``checkpoints/last.pt`` atomically (the previous one is kept as ``last.prev.pt``), after
        reading the pending non-finite flags (:meth:`check_nonfinite`), so it never holds a bad state."""
        self.check_nonfinite()
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
        # a resumed run is the uninterrupted run of its config.yaml: any other config is refused (issue 17)
        from repalign.fingerprint import check_resume

        check_resume(self.run.path, self.cfg)
        # loaded on the CPU (verified there); load_state_dict copies to the device
        state, used, problems = load_latest(self.run.ckpt_dir / "last.pt", map_location="cpu")
        from repalign.training.checkpoint import fallback_warning

        msg = fallback_warning(problems, used, state.get("step"))
        if msg:
            print(msg, file=sys.stderr)
        self.load_state_dict(state)
        self._saved_step = self.step
        self.run.recreate_meta(self._meta, used, self.step, state.get("config_fingerprint"))  # deleted meta.json (issue 17)
        self.run.truncate_metrics_after(self.step)
        self.run.log({"kind": "event", "step": self.step, "arm": None,
                      "message": f"resumed from {used.name} at step {self.step}"})

    # ------------------------------------------------------------------ training
    def _batches(self, stream: dict[str, Any], epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches of ``epoch`` from position ``start``: ``(views [K,B,C,H,W], labels [B], indices [B])``
        (under DDP ``B`` is this rank's share of the global batch)."""
        sampler: SeededBatchSampler = stream["sampler"]
        sampler.load_state_dict({"epoch": epoch, "consumed": start})
        loader = stream.get("loader")
        if loader is None:  # one loader per stream for the whole run: persistent workers survive epochs
            nw = self.cfg["data"]["num_workers"]
            loader = stream["loader"] = make_train_loader(
                self.train_source, stream["transform"], sampler, num_workers=nw, pin_memory=self.pin_memory,
                raw=stream["batched"] is not None,
                persistent_workers=self.persistent_workers and nw > 0,
                shard=(self.rank, self.world) if self.world > 1 else None)
        if stream["batched"] is None:
            return iter(loader)
        return (self._device_views(stream, b) for b in loader)

    def _device_views(self, stream: dict[str, Any], batch: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw loader batch ``(images uint8 [B,C,H,W], params, labels [B], indices [B])`` →
        ``(views float32 [K,B,C,S,S] on the augment device, labels, indices)``: the views are made
        batched on the device (``data.augment_device``) with the parameters the workers drew."""
        imgs, params, labels, idx = batch
        return stream["batched"](imgs.to(self.augment_device, non_blocking=True), params), labels, idx

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
        self.check_nonfinite()
        epoch = epoch_of(self.step, self.steps_per_epoch)
        self.save_models(epoch)
        assert self.evaluator is not None
        self.evaluator(self, epoch)

    def _log_weight_gaps(self) -> None:
        """``kind: weight`` rows (weight gap of every pair, no features) — ``eval.weight_every``."""
        from repalign.training.evaluate import epoch_of, weight_rows
        self.check_nonfinite()
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

        ``SIGTERM`` / ``SIGUSR1`` (main thread only, :mod:`repalign.training.signals`) stop the same way at
        the end of the step in progress, then raise :class:`~repalign.errors.Interrupted`; under DDP the ranks
        agree on the stop where they read the non-finite flags (every ``train.nonfinite_check_every`` steps).
        """
        log_every = self.cfg["train"]["log_every"]
        eval_at = self._eval_steps()
        weight_every = self.cfg["eval"].get("weight_every")
        t_start = time.perf_counter()
        end = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        self._hold_lock()
        bar = None
        stop, self._stop_signum = StopSignals().install(), None
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
                    if self.step < end and self._stop_requested(stop):
                        break  # SIGTERM/SIGUSR1: checkpoint this step boundary, then stop
                    if not any(s.active for s in self.arm_states):
                        break
                self.check_nonfinite()  # at every epoch end (a stop_run rewind stays within the epoch)
                if self.pos_in_epoch < self.steps_per_epoch:
                    break  # stopped mid-epoch (stop_after, max_steps or every arm stopped)
                self.epoch += 1
                self.pos_in_epoch = 0
                if self.epoch % self.cfg["train"]["checkpoint_every"] == 0:
                    self.save()
                if self._stop_signum is not None:
                    break
            if self._saved_step != self.step:
                self.save()
            if self._stop_signum is not None:
                raise Interrupted(self._stop_signum, self.step, self._run_dir_str())
        except Interrupted as e:
            if not e.checkpointed and e.step is None and self._saved_step >= 0:  # a second signal
                e.step, e.run_dir = self._saved_step, self._run_dir_str()
            raise
        finally:
            stop.restore()
            if bar is not None:
                bar.close()
            self._close_loggers()
            self.close()
        return {"steps": self.step, "epochs": self.epoch, "seconds": time.perf_counter() - t_start,
                "arms": {s.name: {"active": s.active, "stop_reason": s.stop_reason} for s in self.arm_states}}

    def _stop_requested(self, stop: StopSignals) -> bool:
        """Whether a stop signal asks to end the run at this step boundary (sets ``_stop_signum``). Under
        DDP the ranks agree (one all-reduce of the largest signal number, every
        ``nonfinite_check_every`` steps), so that all of them checkpoint the same step and none waits on
        the others in a collective."""
        signum = stop.signum
        if self.world > 1 and dist_utils.is_dist():
            if self.step % self.nonfinite_check_every:
                return False
            t = torch.tensor([signum or 0], dtype=torch.int64, device=self.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            signum = int(t.item()) or None
        self._stop_signum = signum
        return signum is not None

    def _run_dir_str(self) -> str | None:
        return str(self.run.path) if self.run is not None else None

    def train_step(self, batches: Mapping[str, tuple[torch.Tensor, ...]], log: bool = False) -> list[dict[str, Any]]:
        """One optimiser step of every active arm on its stream's batch; returns the rows logged by
        this call (under deferred checking those of earlier steps, see below).

        No host synchronisation in the step. (1) Every active arm runs its forward and backward pass
        and records on the device how many of its embeddings, logits, loss, gradient norm and BN
        running statistics are non-finite; (2) it takes its optimiser step tentatively — parameters
        and optimiser state are first copied into a preallocated snapshot (device to device) — and
        counts the non-finite weights; (3) the record ``[n_arms, 8]`` (six counts, loss, gradient
        norm; one all-reduce under DDP, never a host read) sets a device bool per arm, *frozen*, once
        any count is non-zero, and ``torch.where`` puts a frozen arm's parameters, optimiser state and
        BN buffers back from the snapshot. A frozen arm therefore sits exactly at its last good state
        from its first bad step on, however long nobody looks. Under ``train.on_nonfinite: stop_run``
        one flag freezes every arm, so all arms sit at the state before the first bad step.

        The records (and the train/loss-gap row values of logged steps) reach the host in **one**
        transfer every ``train.nonfinite_check_every`` steps and before every evaluation, weight
        row, checkpoint and epoch end (:meth:`check_nonfinite`). The read replays the steps in order:
        an arm's first bad step ``t`` stops it with an event naming step ``t`` (its host-side state —
        learning-rate schedule, non-device optimiser state — is put back to before ``t``), rows of
        later steps of that arm are dropped; under ``stop_run`` the run rewinds to step ``t``, writes
        the checkpoint of the state before it and raises :class:`NonFiniteError`. Rows, events,
        checkpoints and weights are therefore the same for every ``nonfinite_check_every`` (1 reads
        every step). Only the global RNG state (unused by the built-in models) and the compute spent
        on frozen arms until the read differ.
        """
        epoch_f = self.step / self.steps_per_epoch
        inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key, (views, labels, _idx) in batches.items():
            x = views.to(self.device, non_blocking=True).flatten(0, 1)  # [K·B, C, H, W], view-major
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            inputs[key] = (x, labels.to(self.device, non_blocking=True))
        pending: list[dict[str, Any]] = []
        for s in self.arm_states:
            if not s.active:
                continue
            x, labels = inputs[s.stream]
            if s.label_lut is not None:
                labels = s.label_lut[labels]
            t0 = time.perf_counter()
            snap = self._snapshots.setdefault(s.name, _ArmSnapshot())
            snap.take_buffers(s.module)  # BN running statistics change in the forward pass
            loss, z, logits = self._forward_loss(s, x, labels)
            s.optimizer.zero_grad(set_to_none=True)
            s.scaler.scale(loss).backward()
            s.scaler.unscale_(s.optimizer)
            clip = s.arm.get("train.grad_clip")
            gnorm = torch.nn.utils.clip_grad_norm_(s.module.parameters(), clip if clip else float("inf"))
            zero = torch.zeros((), dtype=torch.float64, device=loss.device)
            loss_v = loss.detach().double()
            gnorm_v = gnorm.detach().to(loss.device).double()
            counts = [
                _nonfinite_count([z.detach()], zero),
                _nonfinite_count([logits.detach()], zero) if logits is not None else zero,
                (~torch.isfinite(loss_v)).double(),
                # with an fp16 scaler, inf gradients are expected: the scaler skips the step itself
                (~torch.isfinite(gnorm_v)).double() if not s.scaler.is_enabled() else zero,
                _nonfinite_count([b for b in snap.buffers if b.is_floating_point()], zero),  # BN statistics
            ]
            numel = [z.numel(), logits.numel() if logits is not None else 0, 1, 1,
                     sum(b.numel() for b in snap.buffers if b.is_floating_point())]
            pending.append({"s": s, "snap": snap, "counts": counts, "numel": numel, "loss": loss_v,
                            "gnorm": gnorm_v, "z": z, "labels": labels, "dt": time.perf_counter() - t0})
        if not pending:
            return self.check_nonfinite()
        fault_point("step.forward")
        for i, p in enumerate(pending):  # tentative updates, masked below where anything is non-finite
            s, snap = p["s"], p["snap"]
            t0 = time.perf_counter()
            snap.take(s.module, s.optimizer)
            p["host"] = self._host_state(s, snap)
            s.scaler.step(s.optimizer)
            params = [q.detach() for q in s.module.parameters()]
            p["counts"].append(_nonfinite_count(params, p["counts"][0].new_zeros(())))
            p["numel"].append(sum(q.numel() for q in params))
            p["dt"] += time.perf_counter() - t0
            if i == 0:
                fault_point("step.update")
        # [n_arms, 8]: six non-finite counts, loss, gradient norm (mean over ranks: every rank agrees)
        rec = dist_utils.all_reduce_mean(torch.stack([torch.stack(p["counts"] + [p["loss"], p["gnorm"]])
                                                      for p in pending]))
        bad_now = (rec[:, :_LOSS] > 0).any(dim=1)
        stop_run = self.cfg["train"]["on_nonfinite"] == "stop_run"
        if stop_run:
            self._frozen_all = bad_now.any() if self._frozen_all is None else self._frozen_all | bad_now.any()
        record: dict[str, Any] = {"step": self.step, "arms": [p["s"].name for p in pending], "rec": rec,
                                  "host": {}, "numel": {}, "rows": [], "gaps": []}
        for i, p in enumerate(pending):
            s = p["s"]
            frozen = self._frozen_all if stop_run else \
                (bad_now[i] if s.name not in self._frozen else self._frozen[s.name] | bad_now[i])
            assert frozen is not None
            self._frozen[s.name] = frozen
            p["snap"].keep_if(frozen, s.module, s.optimizer)
            self._scaler_update(s, frozen)
            s.scheduler.step()
            record["host"][s.name], record["numel"][s.name] = p["host"], p["numel"]
            if log:
                record["rows"].append({"kind": "train", "step": self.step, "epoch": epoch_f, "arm": s.name,
                                       "objective": get_objective(s.arm.objective).name, "loss": (i, _LOSS),
                                       "lr": s.optimizer.param_groups[0]["lr"], "grad_norm": (i, _GNORM),
                                       "samples_per_s": self.batch_size / max(p["dt"], 1e-9)})
                if get_objective(s.arm.objective).loss_gap:
                    record["rows"].append(self._loss_gap_row(s, p["z"], p["labels"], epoch_f, record["gaps"]))
        if log:
            record["rows"] += self._arm_gap_rows(pending, epoch_f, record["gaps"])
        self._pending.append(record)
        if (self.step + 1) % self.nonfinite_check_every == 0:
            return self.check_nonfinite()
        return []

    @staticmethod
    def _host_state(s: ArmState, snap: _ArmSnapshot) -> dict[str, Any]:
        """What :meth:`_restore_host` needs to put an arm's host-side state back to before this
        step: optimiser state off the device (``snap``), param-group settings, the LR schedule."""
        return {"had_state": snap.had_state, "keys": set(snap.keys), "other": snap.other,
                "groups": [{k: v for k, v in g.items() if k != "params"} for g in s.optimizer.param_groups],
                "scheduler": s.scheduler.state_dict()}

    @staticmethod
    def _restore_host(s: ArmState, host: Mapping[str, Any]) -> None:
        """Host-side half of undoing an arm's steps from a bad one on (the device half, :meth:`_ArmSnapshot.keep_if`,
        already ran): optimiser state that did not exist before that step is dropped, non-device values
        are put back, as are the param groups' settings (learning rate) and the schedule; no gradients."""
        params = list(s.module.parameters())
        for i, p in enumerate(params):
            if i not in host["had_state"]:
                s.optimizer.state.pop(p, None)
                continue
            st = s.optimizer.state[p]
            for k in [k for k in st if (i, k) not in host["keys"] and (i, k) not in host["other"]]:
                del st[k]
        for (i, k), v in host["other"].items():
            s.optimizer.state[params[i]][k] = copy.deepcopy(v)
        for g, saved in zip(s.optimizer.param_groups, host["groups"]):
            g.update(saved)
        s.scheduler.load_state_dict(host["scheduler"])
        s.optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def _scaler_update(s: ArmState, frozen: torch.Tensor) -> None:
        """``scaler.update()``, its scale and growth tracker kept where ``frozen`` (device-side; fp16 only)."""
        if not s.scaler.is_enabled():
            s.scaler.update()
            return
        tensors = [t for t in (getattr(s.scaler, "_scale", None), getattr(s.scaler, "_growth_tracker", None))
                   if isinstance(t, torch.Tensor)]
        saved = [t.clone() for t in tensors]
        s.scaler.update()  # updates both tensors in place
        with torch.no_grad():
            for t, b in zip(tensors, saved):
                t.copy_(torch.where(frozen, b, t))

    def check_nonfinite(self) -> list[dict[str, Any]]:
        """Read the device-side non-finite records of the steps since the last read (one transfer),
        act on them as :meth:`train_step` describes and log the deferred rows; returns those rows.
        Nothing pending: no transfer. Called by :meth:`train_step` every ``train.nonfinite_check_every``
        steps and before every evaluation, weight row, checkpoint and epoch end."""
        pending, self._pending = self._pending, []
        self._frozen, self._frozen_all = {}, None
        if not pending:
            return []
        parts = [r["rec"].flatten() for r in pending] + [g for r in pending for g in r["gaps"]]
        vals = torch.cat(parts).tolist()  # the one device→host transfer
        off = 0
        for r in pending:
            n = len(r["arms"])
            r["vals"] = [vals[off + i * _REC: off + (i + 1) * _REC] for i in range(n)]
            off += n * _REC
        for r in pending:
            r["gap_vals"] = []
            for _ in r["gaps"]:
                r["gap_vals"].append(vals[off: off + 3])
                off += 3
        by_name = {s.name: s for s in self.arm_states}
        stopped: set[str] = set()
        rows: list[dict[str, Any]] = []
        for r in pending:
            bad = []
            for i, name in enumerate(r["arms"]):
                v = r["vals"][i]
                if name not in stopped and any(c > 0 for c in v[:_LOSS]):
                    j = next(j for j, c in enumerate(v[:_LOSS]) if c > 0)
                    bad.append((by_name[name], _CHECKS[j], self._nonfinite_value(j, v, r["numel"][name][j])))
            if bad and self.cfg["train"]["on_nonfinite"] == "stop_run":
                # every arm has been frozen on the device since this step: put the host side back too
                for name in r["arms"]:
                    self._restore_host(by_name[name], r["host"][name])
                self.pos_in_epoch -= self.step - r["step"]
                self.step = r["step"]
                for s, what, value in bad:
                    self._nonfinite(s, what, value, r["step"])
                self.save()  # nobody takes this step: the checkpoint holds the state before it
                where = self.run.ckpt_dir / "last.pt" if self.run is not None else "no run directory"
                others = f" (and {len(bad) - 1} more arm(s); see the event rows)" if len(bad) > 1 else ""
                raise NonFiniteError(f"{bad[0][0].stop_reason}{others}; run stopped (train.on_nonfinite=stop_run), "
                                     f"checkpoint of step {self.step}: {where}")
            for s, what, value in bad:
                self._restore_host(s, r["host"][s.name])
                self._nonfinite(s, what, value, r["step"])
                stopped.add(s.name)
            for row in r["rows"]:
                if row["arm"] in stopped:
                    continue
                i = r["arms"].index(row["arm"])
                if row["kind"] == "train":
                    row = {**row, "loss": r["vals"][i][_LOSS], "grad_norm": r["vals"][i][_GNORM]}
                else:
                    row = self._finish_loss_gap_row(row, r["gap_vals"][row.pop("gap")])
                self.log_row(row)
                rows.append(row)
        return rows

    def _nonfinite_value(self, j: int, v: list[float], numel: int) -> str:
        """What was non-finite (check ``j`` of :data:`_CHECKS`), for the event message. Counts of the
        embeddings/logits are summed over ranks (``v`` holds means), of the weights/buffers per copy."""
        if _CHECKS[j] in ("loss", "gradient norm"):
            return str(v[_LOSS if _CHECKS[j] == "loss" else _GNORM])
        scale = self.world if _CHECKS[j] in ("embeddings", "logits") else 1
        return f"{round(v[j] * scale)} of {numel * scale} entries"

    def _forward_loss(self, s: ArmState, x: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Forward pass and loss of one arm → ``(loss, z [K, B, d], logits [K, B, C] or None)``.

        The loss functions' own input checks (non-finite entries, label range) need a host sync
        each; they are skipped here because :meth:`train_step` checks every arm's values itself."""
        s.module.train()
        model = s.compiled if s.compiled is not None else s.wrapped if s.wrapped is not None else s.module
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

    def _loss_gap_row(self, s: ArmState, z: torch.Tensor, labels: torch.Tensor, epoch_f: float,
                      gaps: list[torch.Tensor]) -> dict[str, Any]:
        """Per-batch DCL − NSCL of a CL arm on its own (global) embeddings, and the bound — a row whose
        values stay on the device (appended to ``gaps`` as ``[DCL, NSCL, n_max]`` float64, ``n_max``
        the largest class count) until :meth:`check_nonfinite` reads them (:meth:`_finish_loss_gap_row`)."""
        with torch.no_grad():
            zg, yg = dist_utils.gather_no_grad(z.detach(), dim=1), dist_utils.gather_no_grad(labels, dim=0)
            tau = s.arm.get("loss.temperature")
            with unchecked_inputs():  # the checks would sync; a frozen arm's row is dropped anyway
                dcl, nscl = dcl_loss(zg, yg, tau), nscl_loss(zg, yg, tau)
            counts = torch.zeros(self.num_classes, dtype=torch.float64, device=yg.device)
            counts.scatter_add_(0, yg.long(), torch.ones(yg.shape, dtype=torch.float64, device=yg.device))
            gaps.append(torch.stack([dcl.detach().double(), nscl.detach().double(), counts.max()]))
        return {"kind": "lossgap", "step": self.step, "epoch": epoch_f, "arm": s.name, "gap": len(gaps) - 1,
                "n": int(yg.numel()), "tau": tau}

    def _arm_gap_rows(self, pending: list[dict[str, Any]], epoch_f: float,
                      gaps: list[torch.Tensor]) -> list[dict[str, Any]]:
        """Loss-gap rows of the arms between CL and NSCL (issue 18): for every arm X whose objective is
        ``nscl`` on mapped labels (``label_groups`` / ``label_map``) or ``nscl_alpha``, the per-batch
        ``L_DCL − L_X`` on the embeddings of the run's CL arm (the first non-control arm of a loss-gap
        objective on X's stream, so the same batch), with X's labels and τ — the gap the theorem bounds,
        measured where the pilot of issue 18 measured it. The row names X as ``arm`` and the CL arm as
        ``embeddings``; its ``nscl`` column holds ``L_X``. A plain NSCL arm needs no row: the CL arm's own
        row is its gap."""
        ref: dict[str, dict[str, Any]] = {}
        for p in pending:
            s = p["s"]
            if s.arm.control is None and get_objective(s.arm.objective).loss_gap and s.stream not in ref:
                ref[s.stream] = p
        rows: list[dict[str, Any]] = []
        for p in pending:
            s = p["s"]
            obj = get_objective(s.arm.objective)
            alpha = None
            if obj.name == "nscl_alpha":
                alpha = float(s.arm.get("loss.options")["alpha"])
            elif not (obj.name == "nscl" and s.label_lut is not None):
                continue
            if s.stream not in ref:
                continue
            c = ref[s.stream]
            with torch.no_grad():
                zg = dist_utils.gather_no_grad(c["z"].detach(), dim=1)
                yg = dist_utils.gather_no_grad(p["labels"], dim=0)  # X's labels (mapped) of the same batch
                tau = s.arm.get("loss.temperature")
                with unchecked_inputs():
                    dcl = dcl_loss(zg, yg, tau)
                    lx = nscl_loss(zg, yg, tau) if alpha is None else nscl_alpha_loss(zg, yg, tau, alpha)
                k = int(s.label_lut.max()) + 1 if s.label_lut is not None else self.num_classes
                counts = torch.zeros(k, dtype=torch.float64, device=yg.device)
                counts.scatter_add_(0, yg.long(), torch.ones(yg.shape, dtype=torch.float64, device=yg.device))
                gaps.append(torch.stack([dcl.detach().double(), lx.detach().double(), counts.max()]))
            row: dict[str, Any] = {"kind": "lossgap", "step": self.step, "epoch": epoch_f, "arm": s.name,
                                   "gap": len(gaps) - 1, "n": int(yg.numel()), "tau": tau,
                                   "embeddings": c["s"].name}
            if alpha is not None:
                row["alpha"] = alpha
            if s.arm.label_groups is not None or s.label_lut is not None:
                row["label_groups"] = k
            rows.append(row)
        return rows

    @staticmethod
    def _finish_loss_gap_row(row: Mapping[str, Any], vals: list[float]) -> dict[str, Any]:
        """The ``lossgap`` row of :meth:`_loss_gap_row` / :meth:`_arm_gap_rows` with its values read: dcl,
        nscl (the X arm's loss for an X row), gap, bound (the α-bound for an ``nscl_alpha`` row)."""
        dcl, nscl, n_max = vals
        if row.get("alpha") is not None:
            bound = loss_gap_bound_alpha_from_counts(row["n"], int(n_max), row["tau"], row["alpha"])
        else:
            bound = loss_gap_bound_from_counts(row["n"], int(n_max), row["tau"])
        out = {"kind": "lossgap", "step": row["step"], "epoch": row["epoch"], "arm": row["arm"], "dcl": dcl,
               "nscl": nscl, "gap": dcl - nscl, "bound": bound}
        for k in ("embeddings", "alpha", "label_groups"):
            if k in row:
                out[k] = row[k]
        return out

    def _nonfinite(self, s: ArmState, what: str, value: str, step: int) -> None:
        """Stop arm ``s`` (its last good weights, optimiser and BN state are kept) and log the event of
        its first bad step ``step``. Under ``stop_run`` nothing is printed here: the run ends with one
        error line of its own."""
        msg = (f"arm {s.name!r} (objective {s.arm.objective}) stopped at step {step}: "
               f"non-finite {what} ({value}); its last good weights are kept")
        s.active = False
        s.stop_reason = msg
        if self.is_main and self.cfg["train"]["on_nonfinite"] != "stop_run":
            print(f"repalign: {msg}", file=sys.stderr)
        self.log_row({"kind": "event", "step": step, "arm": s.name, "message": msg})

    def close(self) -> None:
        """Release the run directory's lock and the data loaders' worker processes (:meth:`fit` does
        this when it ends; idempotent)."""
        for stream in self.streams.values():
            loader = stream.pop("loader", None)
            if loader is not None:
                loader.close()
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
        """A tqdm bar on a terminal; elsewhere (logs, pipes) one line per finished epoch
        (``train epoch E/N · step s/S · elapsed · ETA``, :mod:`repalign.progress`)."""
        if not (self.is_main and self.cfg["logging"]["progress"]):
            return None
        if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
            return _EpochLines(self.total_steps, self.step, self.steps_per_epoch)
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
