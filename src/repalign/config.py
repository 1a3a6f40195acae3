"""Run configuration: YAML + ``key=value`` overrides → a validated, fully resolved nested dict.

The schema below is the single source of truth for keys, types, defaults and allowed values.
Every error is a one-line :class:`ConfigError` that names the offending key.

A coupled run is a set of **arms** (``arms:``): each arm is an objective plus overrides of
loss / optimiser / schedule / model / precision settings. All arms share the initial weights
(where their architectures agree), the mini-batches and the augmented views. Keys that would
change the data stream for one arm only are refused (they belong to separate runs or a sweep),
except the two control keys ``init_seed`` and ``data_seed`` that break sharing on purpose.
"""
from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from repalign.errors import ConfigError  # the one class; defined where plug-ins and data need not import config

_OPT = object()  # marker: value may be None


def __getattr__(name: str) -> Any:
    if name == "OBJECTIVES":  # the registered objective names (repalign.objectives is the one vocabulary)
        from repalign.objectives import objective_names

        return objective_names()
    raise AttributeError(f"module 'repalign.config' has no attribute {name!r}")


@dataclass(frozen=True)
class Key:
    """Schema entry: ``types`` accepted, ``default``, optional ``check(value) -> error or None``."""

    types: tuple
    default: Any
    check: Callable[[Any], str | None] | None = None
    nullable: bool = False
    doc: str = ""


def _choice(*opts: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in opts else f"must be one of {', '.join(map(repr, opts))}, got {v!r}"


def _ge(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo}, got {v!r}"


def _gt(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if (v > lo and math.isfinite(v)) else f"must be > {lo} and finite, got {v!r}"


def _check_every(v: Any) -> str | None:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return None
    return f"must be 'auto' or an integer >= 1, got {v!r}"


def _int_list(v: Any) -> str | None:
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return f"must be a list of integers, got {v!r}"
    return None


INT, FLOAT, BOOL, STR, LIST, DICT = (int,), (int, float), (bool,), (str,), (list,), (dict,)

SCHEMA: dict[str, Key] = {
    "seed": Key(INT, 0, _ge(0), doc="run seed; every random choice derives from it"),
    "name": Key(STR, None, nullable=True, doc="run name (default: config file stem)"),
    "out_dir": Key(STR, "runs", doc="parent folder of run directories"),
    # data
    "data.source": Key(STR, "fashion_mnist", doc="source registered in repalign.data, an adapter "
                       "(torchvision:<DatasetClass>, hf:<dataset>) or an import reference package.module:name / "
                       "path/to/file.py:name of a callable (split, **data.options) → dataset"),
    "data.root": Key(STR, None, nullable=True),
    "data.download": Key(BOOL, False, doc="allow torchvision downloads (never in tests/demo)"),
    "data.num_classes": Key(INT, None, _ge(2), nullable=True, doc="C classes chosen by seed"),
    "data.classes": Key(LIST, None, _int_list, nullable=True, doc="explicit class list"),
    "data.max_per_class": Key(INT, None, _ge(1), nullable=True, doc="seeded train subset per class"),
    "data.test_max_per_class": Key(INT, None, _ge(1), nullable=True),
    "data.augment": Key(STR, "auto", _choice("auto", "simclr_cifar", "simclr_imagenet", "simclr_gray", "none")),
    "data.augment_device": Key(STR, "auto", _choice("auto", "cpu", "cuda", "batched"),
                               doc="where training views are augmented: cpu = per sample in the DataLoader workers "
                                   "(or the main process); cuda = batched on the GPU from the raw uint8 batch, the "
                                   "workers only load images and draw each view's random parameters, identical to "
                                   "cpu's (same (seed, epoch, index, view) generators); pixels differ only by the "
                                   "resized crop's float32 interpolation (≤ 1 grey level after the crop, a few after "
                                   "the colour ops); auto = cuda when the training device is CUDA, else cpu; batched "
                                   "= the cuda code on the training device, whatever it is (CPU tests)"),
    "data.views": Key(INT, 2, _ge(2), doc="K views per sample"),
    "data.image_size": Key(INT, None, _ge(4), nullable=True),
    "data.balanced": Key(BOOL, False, doc="class-balanced batches"),
    "data.num_workers": Key(INT, 0, _ge(0)),
    "data.pin_memory": Key((str, bool), "auto", lambda v: None if v in ("auto", True, False) else
                           f"must be auto, true or false, got {v!r}",
                           doc="page-locked host batches for asynchronous (non_blocking) host→GPU copies: auto = "
                               "when the device is CUDA; true requires a CUDA device; false never"),
    "data.persistent_workers": Key(BOOL, True, doc="keep the data.num_workers > 0 loader processes alive across "
                                                   "epochs (no re-fork per epoch); batches are identical either way"),
    "data.options": Key(DICT, {}, doc="extra keyword arguments for the source (e.g. strokes knobs)"),
    # model
    "model.encoder": Key(STR, "small_cnn", lambda v: _encoder_check(v),
                         doc="small_cnn, resnet18, resnet50, vit, an adapter (torchvision:<name>, timm:<name>) or "
                             "an import reference of a callable (channels, image_size, **model.options) → nn.Module"),
    "model.options": Key(DICT, {}, doc="keyword arguments for a plug-in encoder"),
    "model.width": Key(INT, None, _ge(1), nullable=True,
                       doc="small_cnn base width (default 16) / resnet50 width multiplier (default 1)"),
    "model.norm": Key(STR, "batch", _choice("batch", "group", "none")),
    "model.cifar_stem": Key(BOOL, False),
    "model.vit_preset": Key(STR, None, nullable=True),
    "model.projector_hidden": Key(INT, 512, _ge(1)),
    "model.projector_out": Key(INT, 128, _ge(1)),
    "model.projector_norm": Key(STR, "batch", _choice("batch", "none")),
    "model.sync_bn": Key(BOOL, False, doc="convert BN to SyncBatchNorm under DDP"),
    # training
    "train.epochs": Key(INT, 10, _ge(1)),
    "train.batch_size": Key(INT, 256, _ge(2), doc="global batch size B"),
    "train.max_steps": Key(INT, None, _ge(1), nullable=True, doc="stop after this many steps"),
    "train.precision": Key(STR, "fp32", _choice("fp32", "bf16", "fp16")),
    "train.grad_clip": Key(FLOAT, None, _gt(0), nullable=True),
    "train.log_every": Key(INT, 10, _ge(1), doc="steps between metrics.jsonl train rows"),
    "train.checkpoint_every": Key(INT, 1, _ge(1), doc="epochs between checkpoints"),
    "train.on_nonfinite": Key(STR, "stop_arm", _choice("stop_arm", "stop_run")),
    "train.nonfinite_check_every": Key((int, str), "auto", lambda v: _check_every(v),
                                       doc="steps between reads of the device-side non-finite flags (one device→host "
                                           "transfer each; also read before every evaluation, checkpoint and epoch "
                                           "end). auto = train.log_every on CUDA, 1 on CPU. The result is the same "
                                           "for every value: an arm is frozen on the device at its first bad step "
                                           "(under stop_run every arm is), so the read finds it at its last good "
                                           "state and names that step; only the wasted compute grows with it"),
    "train.channels_last": Key(BOOL, False, doc="models and input batches in channels_last memory format (faster "
                                                "convolutions on GPUs with tensor cores; same state_dict names)"),
    "train.compile": Key(BOOL, False, doc="run each arm's forward through torch.compile (off until measured; "
                                          "checkpoints and exports keep the original module's names)"),
    "train.device": Key(STR, "auto", _choice("auto", "cpu", "cuda")),
    "train.threads": Key(INT, None, _ge(1), nullable=True, doc="torch CPU threads"),
    # loss
    "loss.temperature": Key(FLOAT, 0.5, _gt(0)),
    "loss.include_positive": Key(BOOL, False, doc="NSCL: positive also in the denominator"),
    "loss.options": Key(DICT, {}, doc="keyword arguments for a plug-in objective's loss (per arm: options)"),
    # optimiser + schedule
    "optim.type": Key(STR, "sgd", _choice("sgd", "adamw", "lars")),
    "optim.lr": Key(FLOAT, 0.3, _gt(0), doc="base lr, scaled by lr_rule"),
    "optim.lr_rule": Key(STR, "linear", _choice("linear", "sqrt", "fourth_root", "none")),
    "optim.weight_decay": Key(FLOAT, 1e-6, _ge(0)),
    "optim.momentum": Key(FLOAT, 0.9, lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v!r}"),
    "optim.trust_coefficient": Key(FLOAT, 1e-3, _gt(0)),
    "optim.exclude_bn_bias": Key(BOOL, True, doc="no weight decay / LARS adaptation for BN and biases"),
    "optim.warmup_epochs": Key(FLOAT, 1, _ge(0)),
    "optim.final_lr_fraction": Key(FLOAT, 0.0, _ge(0)),
    # evaluation
    "eval.every": Key(INT, None, _ge(1), nullable=True, doc="evaluate every N epochs"),
    "eval.schedule": Key((str, list), None, nullable=True,
                         doc="'paper', 'log' (≈ eval.log_points log-spaced steps) or a list of epochs"),
    "eval.steps": Key(LIST, None, _int_list, nullable=True, doc="extra evaluations at these global steps"),
    "eval.log_points": Key(INT, 30, _ge(2), doc="number of log-spaced steps of eval.schedule: log"),
    "eval.weight_every": Key(INT, None, _ge(1), nullable=True,
                             doc="log the weight gap of every pair every N steps (cheap: no features)"),
    "eval.untrained_baseline": Key(BOOL, True, doc="align two independently seeded untrained models at "
                                                   "every evaluation (the zero point of CKA/RSA)"),
    "eval.max_train": Key(INT, 2000, _ge(4), doc="fixed seeded train evaluation subset size"),
    "eval.max_test": Key(INT, 2000, _ge(4)),
    "eval.layers": Key(LIST, ["h", "z"], lambda v: None if v and set(v) <= {"h", "z"} else f"must be a non-empty subset of ['h', 'z'], got {v!r}"),
    "eval.batch_size": Key(INT, 512, _ge(1)),
    "eval.rsa_rdm": Key(STR, "cosine", _choice("cosine", "correlation", "euclidean")),
    "eval.rsa_corr": Key(STR, "pearson", _choice("pearson", "spearman")),
    "eval.knn_k": Key(INT, 20, _ge(1)),
    "eval.knn_temperature": Key(FLOAT, 0.07, _gt(0)),
    # logging
    "logging.progress": Key(BOOL, True),
    "logging.tensorboard": Key(BOOL, False),
    "logging.wandb": Key(BOOL, False, doc="log to Weights & Biases (mode: logging.wandb_mode)"),
    "logging.wandb_mode": Key(STR, "offline", _choice("offline", "online", "disabled"),
                              doc="W&B mode; offline (default) writes RUN_DIR/wandb/ for a later `wandb sync`"),
    "logging.wandb_project": Key(STR, "repalign"),
    # arms + pairs
    "arms": Key(DICT, None, nullable=True, doc="arm name → {objective, overrides}"),
    "pairs": Key(LIST, None, nullable=True, doc="arm pairs compared by alignment metrics"),
}

#: The arms of a config without ``arms`` (issue 20: deliberately no controls — a chaos floor and a noise
#: floor are two more full arms, +50 % compute on every default run; the bundled ``demo`` and the figure
#: configs carry them, and ``configs/arms/noise_floor.yaml`` shows how to add them: ``cl_eps: {same_as: cl,
#: init_perturb: 1.0e-6}``, ``cl_data: {same_as: cl, data_seed: 1002}``).
DEFAULT_ARMS: dict[str, dict[str, Any]] = {
    "cl": {"objective": "cl"}, "nscl": {"objective": "nscl"},
    "scl": {"objective": "scl"}, "ce": {"objective": "ce"},
}

#: Per-arm keys: short alias → dotted schema key.
ARM_KEYS: dict[str, str] = {
    "temperature": "loss.temperature", "include_positive": "loss.include_positive", "options": "loss.options",
    "optimizer": "optim.type", "lr": "optim.lr", "lr_rule": "optim.lr_rule",
    "weight_decay": "optim.weight_decay", "momentum": "optim.momentum",
    "trust_coefficient": "optim.trust_coefficient", "exclude_bn_bias": "optim.exclude_bn_bias",
    "warmup_epochs": "optim.warmup_epochs", "final_lr_fraction": "optim.final_lr_fraction",
    "projector_hidden": "model.projector_hidden", "projector_out": "model.projector_out",
    "projector_norm": "model.projector_norm", "width": "model.width",
    "precision": "train.precision", "grad_clip": "train.grad_clip",
}
ARM_SECTIONS_ALLOWED = {v for v in ARM_KEYS.values()}
#: Short names of keys an arm may NOT set (mapped so the refusal names the reason).
REFUSED_ALIASES: dict[str, str] = {
    "batch_size": "train.batch_size", "views": "data.views", "epochs": "train.epochs",
    "max_steps": "train.max_steps", "source": "data.source", "dataset": "data.source",
    "num_classes": "data.num_classes", "classes": "data.classes", "augment": "data.augment",
    "augmentation": "data.augment", "encoder": "model.encoder",
}
ARM_CONTROL_KEYS = ("init_seed", "data_seed", "same_as", "init_perturb")
_REFUSED_WHY = {
    "data.": "it changes the data stream",
    "train.batch_size": "it changes the mini-batches",
    "train.epochs": "it changes the data stream length",
    "train.max_steps": "it changes the data stream length",
    "seed": "it changes every random choice; use init_seed or data_seed for a control arm",
    "model.encoder": "a different encoder shares no weights; use a separate run",
}


#: keys whose mapping values are kept whole (not flattened into dotted keys)
_WHOLE = ("arms", "data.options", "model.options", "loss.options")


def _encoder_check(v: Any) -> str | None:
    from repalign.plugins import is_reference

    builtin = ("small_cnn", "resnet18", "resnet50", "vit")
    if v in builtin or is_reference(v):
        return None
    return (f"must be one of {', '.join(map(repr, builtin))}, an adapter 'torchvision:<name>' / 'timm:<name>' or an "
            f"import reference 'package.module:name' / 'path/to/file.py:name', got {v!r}")


def _refusal(dotted: str) -> str | None:
    for prefix, why in _REFUSED_WHY.items():
        if dotted == prefix or (prefix.endswith(".") and dotted.startswith(prefix)):
            return why
    return None


def _type_ok(spec: Key, value: Any) -> bool:
    if value is None:
        return spec.nullable
    if isinstance(value, bool) and bool not in spec.types:
        return False
    if spec.types == FLOAT and isinstance(value, (int, float)):
        return True
    return isinstance(value, spec.types)


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_value(key: str, value: Any) -> Any:
    """Validate one dotted key's value against :data:`SCHEMA`; return it (ints → float where float)."""
    if key not in SCHEMA:
        raise ConfigError(f"unknown config key {key!r}{_suggest(key, list(SCHEMA))}")
    spec = SCHEMA[key]
    if not _type_ok(spec, value):
        tnames = "/".join(t.__name__ for t in spec.types)
        raise ConfigError(f"config key {key!r}: expected {tnames}{' or null' if spec.nullable else ''}, "
                          f"got {type(value).__name__} {value!r}")
    if value is not None and spec.check is not None:
        err = spec.check(value)
        if err:
            raise ConfigError(f"config key {key!r}: {err}")
    if value is not None and spec.types == FLOAT:
        value = float(value)
    return value


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} → {"a.b": 1}``; the values of ``arms``, ``pairs``, ``data.options`` stay whole."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key not in _WHOLE:
            if not v and key in {s.split(".")[0] for s in SCHEMA if "." in s}:
                continue
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        parts = k.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = copy.deepcopy(v)
    return out


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e9``, ``1e-3``, ``-2E+5`` as floats (YAML 1.2; YAML 1.1
    wants a dot in the mantissa and would give the string ``"1e9"``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _yaml_error(e: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a PyYAML error, on one line."""
    if isinstance(e, yaml.reader.ReaderError):
        return f"at byte {e.position}: unacceptable character {chr(e.character)!r}" if isinstance(e.character, int) \
            else f"at byte {e.position}: {e.reason}"
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e)
    return where + " ".join(str(problem).split())


def parse_override(text: str) -> tuple[str, Any]:
    """``"loss.temperature=0.1"`` → ``("loss.temperature", 0.1)``; the value is parsed as YAML
    (``1e9`` and ``1e-3`` are floats)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"config key {key!r}: cannot parse value {raw!r}: {_yaml_error(e)}") from None
    return key, value


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """Parse a YAML file; every problem (unreadable, not UTF-8 text, broken YAML with its line and
    column) is a one-line :class:`ConfigError` naming the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} {str(p)!r} does not exist")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(p)!r} is not YAML text: byte {e.object[e.start]:#04x} at offset {e.start} "
                          "is not UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {e.strerror}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML: {_yaml_error(e)}") from None


@dataclass
class Arm:
    """One arm of a coupled run: an objective and its resolved settings.

    ``settings`` holds every per-arm dotted key (see :data:`ARM_KEYS`) after the arm's
    overrides; ``overrides`` only what the arm changed. ``init_seed`` / ``data_seed`` are
    ``None`` when the arm shares the run's initial weights / data stream. ``init_perturb``
    (``None`` or ε ≥ 0): the arm starts from the shared initial weights plus seeded Gaussian noise
    of relative size ε per tensor — the *chaos-floor* control. ``same_as``: the arm it repeats.
    ``label_groups`` (K, 2 ≤ K ≤ C) / ``label_map`` (a JSON/YAML file holding a list of length C): the
    arm's objective sees the C labels mapped to K superclasses (:mod:`repalign.data.label_groups`);
    CL never sees labels, so this changes that arm's objective alone (issue 18).
    """

    name: str
    objective: str
    settings: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    init_seed: int | None = None
    data_seed: int | None = None
    init_perturb: float | None = None
    same_as: str | None = None
    label_groups: int | None = None
    label_map: str | None = None

    @property
    def control(self) -> str | None:
        """Kind of control arm: ``"chaos"`` (``init_perturb``), ``"noise_seed"`` (own initialisation),
        ``"noise_data"`` (own batches and views only) or ``None`` for an ordinary arm."""
        if self.init_seed is not None:
            return "noise_seed"
        if self.data_seed is not None:
            return "noise_data"
        if self.init_perturb is not None:
            return "chaos"
        return None

    def get(self, dotted: str) -> Any:
        return self.settings[dotted]

    def model_cfg(self, base_model: Mapping[str, Any]) -> dict[str, Any]:
        m = dict(base_model)
        for k, v in self.settings.items():
            if k.startswith("model."):
                m[k.split(".", 1)[1]] = v
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "settings": self.settings, "overrides": self.overrides,
                "init_seed": self.init_seed, "data_seed": self.data_seed, "init_perturb": self.init_perturb,
                "same_as": self.same_as, "control": self.control, "label_groups": self.label_groups,
                "label_map": self.label_map}


def _resolve_arm(name: str, spec: Any, flat: Mapping[str, Any], arms_raw: Mapping[str, Any]) -> Arm:
    where = f"arms.{name}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"config key {where!r}: expected a mapping like {{objective: cl}}, got {spec!r}")
    spec = dict(spec)
    same_as = None
    if "same_as" in spec:  # control arm: repeat another arm's settings
        other = spec.pop("same_as")
        if other not in arms_raw or other == name:
            raise ConfigError(f"config key '{where}.same_as': unknown arm {other!r}")
        if not isinstance(arms_raw[other], Mapping):
            raise ConfigError(f"config key 'arms.{other}': expected a mapping like {{objective: cl}}, got {arms_raw[other]!r}")
        base = dict(arms_raw[other])
        for k in ARM_CONTROL_KEYS:
            base.pop(k, None)
        spec = {**base, **spec}
        same_as = other
    from repalign.objectives import objective_names  # the built-in registry only: imports no plug-in
    from repalign.plugins import is_reference, normalise_reference

    if "objective" not in spec:
        raise ConfigError(f"config key '{where}.objective': missing (one of {', '.join(objective_names())} or an "
                          "import reference package.module:name)")
    objective = spec.pop("objective")
    if isinstance(objective, str):
        objective = normalise_reference(objective)
    # by name only (issue 17): a built-in name, or a reference whose syntax is checked here and whose file
    # validate() checks; the plug-in is imported (and probed) only by the trainer, never by reading a config
    if not (isinstance(objective, str) and (objective in objective_names() or is_reference(objective))):
        raise ConfigError(f"config key '{where}.objective': must be one of {', '.join(objective_names())} or an "
                          f"import reference 'package.module:name' / 'path/to/file.py:name', got {objective!r}")
    seeds: dict[str, int | None] = {"init_seed": None, "data_seed": None}
    for s in ("init_seed", "data_seed"):
        if s in spec:
            v = spec.pop(s)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"config key '{where}.{s}': must be an integer >= 0, got {v!r}")
            seeds[s] = v
    perturb = None
    if "init_perturb" in spec:
        v = spec.pop("init_perturb")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"config key '{where}.init_perturb': must be a finite number >= 0 "
                              f"(relative size of the initial-weight noise), got {v!r}")
        if seeds["init_seed"] is not None:
            raise ConfigError(f"config key '{where}.init_perturb': perturbs the shared initialisation, "
                              "so it cannot be combined with init_seed")
        perturb = float(v)
    groups, label_map = _label_grouping(where, spec, flat)
    settings = {k: flat[k] for k in ARM_SECTIONS_ALLOWED}
    overrides: dict[str, Any] = {}
    for k, v in _flatten_arm(spec).items():
        dotted = ARM_KEYS.get(k, REFUSED_ALIASES.get(k, k))
        why = _refusal(dotted)
        if why:
            raise ConfigError(f"config key '{where}.{k}': cannot differ between arms because {why}; use a separate run or a sweep")
        if dotted not in ARM_SECTIONS_ALLOWED:
            raise ConfigError(f"config key '{where}.{k}': not a per-arm setting"
                              f"{_suggest(k, [*ARM_KEYS, 'label_groups', 'label_map'])}; arms may set objective, "
                              f"{', '.join(ARM_CONTROL_KEYS)}, label_groups, label_map, {', '.join(ARM_KEYS)}")
        try:
            settings[dotted] = check_value(dotted, v)
        except ConfigError as e:  # name the arm's key, not the run-level key it maps to
            raise ConfigError(str(e).replace(f"config key {dotted!r}", f"config key '{where}.{k}'", 1)) from None
        overrides[dotted] = settings[dotted]
    return Arm(name, objective, settings, overrides, seeds["init_seed"], seeds["data_seed"], perturb, same_as,
               groups, label_map)


def _label_grouping(where: str, spec: dict[str, Any], flat: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """Pop and check an arm's ``label_groups`` (an integer K >= 2, at most ``data.num_classes`` when that is
    set; the trainer checks K <= C again once the data are loaded) and ``label_map`` (a file name; read and
    checked by the trainer, hashed by the fingerprint). At most one of the two."""
    groups = spec.pop("label_groups", None)
    label_map = spec.pop("label_map", None)
    if groups is not None:
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 2:
            raise ConfigError(f"config key '{where}.label_groups': must be an integer K >= 2 (the number of "
                              f"superclasses the arm's objective sees), got {groups!r}")
        c = flat.get("data.num_classes")
        if isinstance(c, int) and not isinstance(c, bool) and groups > c:
            raise ConfigError(f"config key '{where}.label_groups': K = {groups} exceeds data.num_classes = {c}")
    if label_map is not None:
        if not isinstance(label_map, str) or not label_map.strip():
            raise ConfigError(f"config key '{where}.label_map': must be a file name (a JSON/YAML list of length C), "
                              f"got {label_map!r}")
        if groups is not None:
            raise ConfigError(f"config key '{where}': give label_groups or label_map, not both")
    return groups, label_map


def _flatten_arm(spec: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in spec.items():
        if isinstance(v, Mapping) and k not in ("options", "loss.options"):
            for kk, vv in _flatten_arm(v).items():
                out[f"{k}.{kk}"] = vv
        else:
            out[k] = v
    return out


def resolve_arms(cfg: Mapping[str, Any]) -> list[Arm]:
    """Resolve ``cfg["arms"]`` (or the default four) into :class:`Arm` objects, in config order.

    Names only: an objective is a built-in name or a reference string; nothing is imported and no
    file is read (reports and summaries call this on run directories they did not write)."""
    flat = flatten(cfg)
    arms_raw = cfg.get("arms") or DEFAULT_ARMS
    if not isinstance(arms_raw, Mapping) or not arms_raw:
        raise ConfigError("config key 'arms': must be a non-empty mapping of arm name → settings")
    out = []
    for name, spec in arms_raw.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"config key 'arms': arm name {name!r} must be alphanumeric (with _ or -)")
        out.append(_resolve_arm(name, spec, flat, arms_raw))
    return out


def resolve_pairs(cfg: Mapping[str, Any], arms: list[Arm]) -> list[tuple[str, str]]:
    """Arm pairs for the alignment metrics; default: the first arm against each other arm."""
    names = [a.name for a in arms]
    raw = cfg.get("pairs")
    if raw is None:
        return [(names[0], n) for n in names[1:]]
    pairs = []
    for p in raw:
        if isinstance(p, str):
            p = p.split("/") if "/" in p else p.split(",")
        if not isinstance(p, (list, tuple)) or len(p) != 2 or not all(isinstance(x, str) for x in p):
            raise ConfigError(f"config key 'pairs': each pair must be [arm_a, arm_b] or 'arm_a/arm_b', got {p!r}")
        for x in p:
            if x not in names:
                raise ConfigError(f"config key 'pairs': unknown arm {x!r} (arms: {', '.join(names)})")
        pairs.append((p[0], p[1]))
    return pairs


def _source_classes(source: str) -> int | None:
    from repalign.plugins import is_reference

    if is_reference(source):  # a plug-in source: its classes are known once it is built
        return None
    try:
        from repalign.data import source_info
    except ImportError:  # pragma: no cover
        return None
    try:
        info = source_info(source)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"config key 'data.source': {e}".splitlines()[0]) from None
    n = info.get("num_classes") if isinstance(info, Mapping) else getattr(info, "num_classes", None)
    return n


def code_references(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, reference)`` of every plug-in of a (resolved) config — ``model.encoder``, ``data.source``,
    ``arms.<name>.objective`` — that is an import or file reference (adapters and built-in names left
    out): the code a command rebuilding the run would import. Reads names only."""
    from repalign.plugins import is_code_reference

    out = [(k, cfg.get(k.split(".")[0], {}).get(k.split(".")[1])) for k in ("model.encoder", "data.source")]
    out += [(f"arms.{a.name}.objective", a.objective) for a in resolve_arms(cfg)]
    return [(k, v) for k, v in out if is_code_reference(v)]


def check_references(cfg: Mapping[str, Any]) -> None:
    """Every plug-in reference of a resolved config checked by name and file (syntax, the file exists, the
    module is on the import path other than the current directory), importing nothing
    (:func:`repalign.plugins.check_reference`)."""
    from repalign.plugins import check_reference

    for key, ref in code_references(cfg):
        check_reference(ref, key)


#: Arguments of ``build_source`` that come from other keys (``data.options`` may not set them).
_SOURCE_ARGS = {"root": "data.root", "num_classes": "data.num_classes", "classes": "data.classes", "seed": "seed",
                "max_per_class": "data.max_per_class / data.test_max_per_class", "mapping": None, "split": None,
                "name": "data.source"}


def validate(cfg: Mapping[str, Any], check_files: bool = True) -> dict[str, Any]:
    """Check every key of a nested config, fill defaults, resolve arms; return the resolved config.

    Imports no plug-in, objective or data-source code: plug-in references are checked by name and, with
    ``check_files`` (default), by file (:func:`check_references`); ``check_files=False`` is for commands
    that read a received run and need none of its plug-ins (``export`` of a built-in encoder)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config must be a mapping, got {type(cfg).__name__}")
    flat_in = flatten(cfg)
    flat = {k: copy.deepcopy(s.default) for k, s in SCHEMA.items()}
    for k, v in flat_in.items():
        flat[k] = check_value(k, v)
    if flat["arms"] is None:
        flat["arms"] = copy.deepcopy(DEFAULT_ARMS)
    from repalign.plugins import normalise_reference

    for k in ("model.encoder", "data.source"):  # file references stored with an absolute path
        flat[k] = normalise_reference(flat[k])
    sched = flat["eval.schedule"]
    if isinstance(sched, str) and sched not in ("paper", "log"):
        raise ConfigError(f"config key 'eval.schedule': must be 'paper', 'log' or a list of epochs, got {sched!r}")
    if isinstance(sched, list) and _int_list(sched):
        raise ConfigError(f"config key 'eval.schedule': {_int_list(sched)}")
    if flat["data.num_classes"] is not None and flat["data.classes"] is not None:
        raise ConfigError("config key 'data.classes': set either data.num_classes or data.classes, not both")
    for k in flat["data.options"] or {}:  # the trainer passes these itself: a duplicate keyword otherwise
        if k in _SOURCE_ARGS:
            raise ConfigError(f"config key 'data.options': {k!r} is not a source option; "
                              f"{'set ' + _SOURCE_ARGS[k] if _SOURCE_ARGS[k] else 'the trainer sets it'}")
    n_src = _source_classes(flat["data.source"])
    want = flat["data.num_classes"] if flat["data.num_classes"] is not None else None
    if n_src is not None and want is not None and want > n_src:
        raise ConfigError(f"config key 'data.num_classes': source {flat['data.source']!r} has {n_src} classes, asked for {want}")
    if n_src is not None and flat["data.classes"] is not None:
        bad = [c for c in flat["data.classes"] if not 0 <= c < n_src]
        if bad:
            raise ConfigError(f"config key 'data.classes': classes {bad} not in source {flat['data.source']!r} (0..{n_src - 1})")
    if flat["eval.knn_k"] > flat["eval.max_train"]:  # the kNN bank is at most eval.max_train images
        raise ConfigError(f"config key 'eval.knn_k': {flat['eval.knn_k']} exceeds the kNN bank size (at most "
                          f"eval.max_train = {flat['eval.max_train']} train evaluation images); set eval.knn_k <= "
                          f"{flat['eval.max_train']} or raise eval.max_train")
    out = unflatten(flat)
    arms = resolve_arms(out)
    resolve_pairs(out, arms)
    for a in arms:  # an objective's file reference is stored with its absolute path
        spec = out["arms"].get(a.name)
        if isinstance(spec, dict) and isinstance(spec.get("objective"), str) and spec["objective"] != a.objective:
            spec["objective"] = a.objective
    if check_files:
        check_references(out)
    for a in arms:
        if a.settings["train.precision"] == "fp16" and flat["train.device"] == "cpu":
            raise ConfigError(f"config key 'arms.{a.name}.precision': fp16 needs a CUDA device (use bf16 on CPU)")
    return out


def bundled_config_dir() -> Path:
    """The folder of the configs shipped with the package (``repalign/configs``; in a source
    checkout a link to the repository's ``configs/``)."""
    return Path(__file__).resolve().parent / "configs"


def bundled_configs() -> dict[str, Path]:
    """Bundled config names → files, e.g. ``{"demo": .../configs/demo.yaml, "arms/temperature": ...}``
    (sweep specs under ``sweeps/`` included; names are paths relative to the folder without ``.yaml``)."""
    base = bundled_config_dir()
    if not base.is_dir():
        return {}
    return {str(f.relative_to(base).with_suffix("")): f for f in sorted(base.rglob("*.yaml"))}


def resolve_config_path(path: str | Path) -> str:
    """A config path as given if it exists; else a config name looked up in ``./configs`` and then in
    the bundled configs (``demo`` → ``configs/demo.yaml``, ``arms/temperature`` → ``configs/arms/temperature.yaml``).
    An unknown name is returned unchanged (the loader then names it)."""
    p = Path(path)
    if p.exists():
        return str(p)
    for base in (Path.cwd() / "configs", bundled_config_dir()):
        for cand in (base / p, base / f"{p}.yaml"):
            if cand.is_file():
                return str(cand)
    return str(path)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                check_files: bool = True) -> dict[str, Any]:
    """Load YAML (or defaults when ``path`` is None), apply ``key=value`` overrides, validate.

    ``path`` is a file or the name of a bundled config (``load_config("demo")``; see
    :func:`bundled_configs`). Imports no plug-in (``check_files``: see :func:`validate`)."""
    cfg: dict[str, Any] = {}
    if path is not None:
        p = Path(resolve_config_path(path))
        loaded = read_yaml_file(p)
        if loaded is None or loaded == {}:  # refuse: it would silently start a default (hours-long) run
            raise ConfigError(f"config file {str(p)!r} is empty: it sets no key (give at least data.source, or "
                              "use a bundled config such as demo)")
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys at top level, "
                              f"got {type(loaded).__name__}")
        cfg = dict(loaded)
        cfg.setdefault("name", p.stem)
    flat = flatten(cfg)
    for o in overrides or []:
        k, v = parse_override(o)
        if k.startswith("arms."):
            parts = k.split(".")
            node = cfg.setdefault("arms", copy.deepcopy(DEFAULT_ARMS) if cfg.get("arms") is None else cfg["arms"])
            for p_ in parts[1:-1]:
                node = node.setdefault(p_, {})
            node[parts[-1]] = v
            flat = flatten(cfg)
            continue
        if k == "arms" and isinstance(v, list):  # arms=[cl,nscl]: select the config's arms by name, in order
            cfg = _select_arms(unflatten(flat), v)
            flat = flatten(cfg)
            continue
        if k not in SCHEMA:
            raise ConfigError(f"unknown config key {k!r}{_suggest(k, list(SCHEMA))}")
        flat[k] = v
        cfg = unflatten(flat)
    return validate(unflatten(flatten(cfg)) if overrides else cfg, check_files=check_files)


def _select_arms(cfg: dict[str, Any], names: list[Any]) -> dict[str, Any]:
    """The override ``arms=[a,b,...]`` (issue 20): keep only those arms of the config (or of the default
    four), in that order, with their settings; ``pairs`` naming a dropped arm are dropped. An unknown name
    is one line listing the arms there are."""
    have = cfg.get("arms") or copy.deepcopy(DEFAULT_ARMS)
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError("config key 'arms': a list override must name arms, e.g. arms=[cl,nscl]")
    unknown = [n for n in names if n not in have]
    if unknown:
        raise ConfigError(f"config key 'arms': no arm {unknown[0]!r} in the config (arms: {', '.join(have)}); "
                          "to define one, use arms.<name>.objective=<objective>")
    out = dict(cfg)
    out["arms"] = {n: have[n] for n in names}
    for n in names:
        ref = (have[n] or {}).get("same_as") if isinstance(have[n], Mapping) else None
        if ref is not None and ref not in out["arms"]:
            raise ConfigError(f"config key 'arms': arm {n!r} is a control of {ref!r} (same_as); select {ref!r} too")
    if isinstance(out.get("pairs"), list):
        out["pairs"] = [p for p in out["pairs"] if all(a in out["arms"] for a in p)] or None
    return out


def dump_config(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False)
