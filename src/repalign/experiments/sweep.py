"""Sweeps: a grid of coupled runs, resumable, aggregated into ``summary.csv``.

Spec (YAML file or mapping)::

    base: configs/demo.yaml          # config path or bundled name
    overrides: [train.epochs=4]      # fixed key=value overrides for every point
    grid: {data.num_classes: [5, 10], seed: [0, 1]}
    product: true                    # cartesian product (false: zip the lists, equal lengths)
    out: runs/sweeps/classes         # OUT
    processes: 1                     # > 1: that many local `python -m repalign train` subprocesses
    launcher: auto                   # auto (inline if processes == 1 else local) | inline | local | slurm
    threads_per_process: null        # train.threads of every point; unset: local workers get OMP_NUM_THREADS =
                                     # cores // processes. Always processes × threads ≤ cores (a larger train.threads
                                     # is clamped, one warning line) and OMP_WAIT_POLICY=PASSIVE unless set
                                     # (benchmarks/results/cpu_config.md)
    slurm: {slurm_partition: gpu, timeout_min: 600, gpus_per_node: 4}   # launcher slurm (extra `slurm`): one job
                                     # per point, one process per GPU, requeued on pre-emption (submit_slurm)

Layout::

    OUT/sweep.json                   spec, grid keys, points and their state
    OUT/configs/<slug>.yaml          resolved config of each point
    OUT/points/<slug>/               the point's run directory (+ DONE marker once training finished)
    OUT/logs/<slug>.log              stdout/stderr of a subprocess point
    OUT/summary.csv                  align / baseline / eval / lossgap / weight rows of every point, one column
                                     per grid key
    OUT/aggregate.csv                per condition (grid point without its seed) × kind × pair × split × layer ×
                                     evaluation step × metric: n, mean, std, 95 % CI over seeds
    OUT/comparisons.csv              paired per-seed differences between pairs (objective vs control pairs,
                                     vs other objectives, vs the untrained baseline) with CI and verdict

A point with a ``DONE`` marker is skipped on re-run; a point with a checkpoint but no marker is
resumed (``--resume``, bitwise-exact continuation by the trainer); a point directory without a
checkpoint is restarted from scratch. A finished or partial point whose run was made with another config
than the spec asks for (config fingerprint, :mod:`repalign.fingerprint`) is neither: the sweep stops before
running anything, naming the points and keys, unless ``--redo-stale`` (then they are re-run).
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import product as iproduct
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from repalign.config import ConfigError, dump_config, load_config, parse_override, resolve_config_path
from repalign.errors import UserError
from repalign.results import DONE, load_sweep_state, point_status, read_rows, read_summary
from repalign.training.lock import describe as describe_holder
from repalign.training.lock import holder as lock_holder
from repalign.training.rundir import clear_run_dir

SUMMARY_KINDS = ("align", "baseline", "eval", "lossgap", "weight")
FIRST_COLUMNS = ["kind", "epoch", "step", "split", "layer", "arm_a", "arm_b", "arm"]
SPEC_KEYS = {"base", "overrides", "grid", "product", "out", "processes", "launcher", "slurm", "name",
             "threads_per_process"}


@dataclass
class SweepSpec:
    base: str
    grid: dict[str, list[Any]]
    overrides: list[str] = field(default_factory=list)
    product: bool = True
    out: str = "runs/sweep"
    processes: int = 1
    launcher: str = "auto"
    slurm: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    threads_per_process: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Point:
    values: dict[str, Any]
    slug: str

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={_yaml_value(v)}" for k, v in self.values.items()]


def _yaml_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, str)) and not _plain(v) else str(v).lower() \
        if isinstance(v, bool) else str(v)


def _plain(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", v) is not None


def _resolve_base(base: str, rel_to: Path | None) -> str:
    if rel_to is not None and not Path(base).is_absolute() and (rel_to / base).exists():
        return str((rel_to / base).resolve())
    p = resolve_config_path(base)
    return str(Path(p).resolve()) if Path(p).exists() else p


def load_spec(spec: str | Path | Mapping[str, Any] | None = None, grid_args: Sequence[str] = (),
              out: str | None = None, processes: int | None = None, launcher: str | None = None) -> SweepSpec:
    """Build a :class:`SweepSpec` from a YAML spec file / mapping, or from a config path plus CLI
    grid strings (``key=[v1,v2]`` varies, ``key=v`` is a fixed override)."""
    raw: dict[str, Any]
    rel: Path | None = None
    if isinstance(spec, Mapping):
        raw = dict(spec)
    elif spec is not None and Path(spec).is_file() and _looks_like_spec(Path(spec)):
        raw = yaml.safe_load(Path(spec).read_text()) or {}
        rel = Path(spec).resolve().parent
    elif spec is not None:
        raw = {"base": str(spec), "grid": {}}
    else:
        raise ConfigError("sweep: give a spec file or a base config")
    bad = set(raw) - SPEC_KEYS
    if bad:
        raise ConfigError(f"sweep spec key {sorted(bad)[0]!r}: unknown (allowed: {', '.join(sorted(SPEC_KEYS))})")
    if "base" not in raw:
        raise ConfigError("sweep spec key 'base': missing (a config path or bundled name)")
    _check_spec_types(raw)
    grid = dict(raw.get("grid") or {})
    overrides = list(raw.get("overrides") or [])
    for a in grid_args:
        k, v = parse_override(a)
        if isinstance(v, list):
            grid[k] = v
        else:
            overrides.append(a)
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"sweep spec key 'grid.{k}': must be a non-empty list of values, got {v!r}")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("sweep spec key 'overrides': must be a list of 'key=value' strings")
    s = SweepSpec(base=_resolve_base(str(raw["base"]), rel), grid=grid, overrides=overrides,
                  product=bool(raw.get("product", True)), out=str(out or raw.get("out") or "runs/sweep"),
                  processes=int(processes or raw.get("processes") or 1),
                  launcher=str(launcher or raw.get("launcher") or "auto"), slurm=dict(raw.get("slurm") or {}),
                  name=raw.get("name"), threads_per_process=raw.get("threads_per_process"))
    if s.launcher not in ("auto", "inline", "local", "slurm"):
        raise ConfigError(f"sweep spec key 'launcher': must be auto, inline, local or slurm, got {s.launcher!r}")
    if s.processes < 1:
        raise ConfigError(f"sweep spec key 'processes': must be >= 1, got {s.processes}")
    if not s.product:
        lens = {k: len(v) for k, v in grid.items()}
        if len(set(lens.values())) > 1:
            raise ConfigError(f"sweep spec key 'product': false zips the grid lists, which need equal lengths, got {lens}")
    return s


def _check_spec_types(raw: Mapping[str, Any]) -> None:
    """One-line errors for spec values of the wrong type (before anything is converted)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    checks = {
        "grid": (lambda v: isinstance(v, Mapping), "a mapping of key → list of values"),
        "overrides": (lambda v: isinstance(v, list), "a list of 'key=value' strings"),
        "processes": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        "threads_per_process": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        "product": (lambda v: isinstance(v, bool), "true or false"),
        "slurm": (lambda v: isinstance(v, Mapping), "a mapping of submitit parameters"),
        "out": (lambda v: isinstance(v, str), "a folder path"),
        "base": (lambda v: isinstance(v, str), "a config path or bundled name"),
    }
    for key, (ok, want) in checks.items():
        if raw.get(key) is not None and not ok(raw[key]):
            raise ConfigError(f"sweep spec key {key!r}: must be {want}, got {raw[key]!r}")


def _looks_like_spec(p: Path) -> bool:
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(d, Mapping) and "base" in d


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    short = {k: k.split(".")[-1] for k in keys}
    if len(set(short.values())) < len(keys):
        return {k: k.replace(".", "-") for k in keys}
    return short


def slug_of(values: Mapping[str, Any], short: Mapping[str, str] | None = None) -> str:
    """Directory name of a point from its varying values: ``num_classes=5__seed=0``."""
    if not values:
        return "base"
    short = short or _short_names(list(values))
    parts = []
    for k, v in values.items():
        sv = json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else str(v)
        parts.append(f"{short[k]}={sv}")
    return re.sub(r"[^A-Za-z0-9._=,+-]", "-", "__".join(parts))


def expand(spec: SweepSpec) -> list[Point]:
    """The grid points in order (cartesian product, or zipped lists when ``product: false``)."""
    keys = list(spec.grid)
    if not keys:
        return [Point({}, "base")]
    combos = iproduct(*(spec.grid[k] for k in keys)) if spec.product else zip(*(spec.grid[k] for k in keys))
    short = _short_names(keys)
    pts = [Point(dict(zip(keys, c)), "") for c in combos]
    for p in pts:
        p.slug = slug_of(p.values, short)
    if len({p.slug for p in pts}) != len(pts):
        raise ConfigError("sweep spec key 'grid': two points map to the same directory (repeated values?)")
    return pts


def point_overrides(spec: SweepSpec, point: Point) -> list[str]:
    extra = []
    if spec.threads_per_process:
        extra.append(f"train.threads={int(spec.threads_per_process)}")
    return list(spec.overrides) + point.overrides + extra


def point_config(spec: SweepSpec, point: Point) -> dict[str, Any]:
    """The resolved config of a point (raises :class:`ConfigError` naming the bad key)."""
    try:
        return load_config(spec.base, point_overrides(spec, point))
    except ConfigError as e:
        raise ConfigError(f"sweep point {point.slug!r}: {e}") from None


def check_data_root(cfg: Mapping[str, Any]) -> None:
    from repalign.training.trainer import check_data_root as check

    check(cfg)


def _mark_done(run_dir: Path, point: Point, seconds: float) -> None:
    (run_dir / DONE).write_text(json.dumps({"values": point.values, "seconds": round(seconds, 3),
                                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def run_point_inline(config_path: str, run_dir: str, resume: bool) -> float:
    """Train one point in this process (also what each task of a SLURM job runs); returns seconds."""
    from repalign.training import train

    t0 = time.perf_counter()
    cfg = load_config(config_path)  # on resume the trainer refuses a config other than the run's own
    train(cfg, run_dir, resume=resume)
    return time.perf_counter() - t0


def _src_root() -> str:
    import repalign

    return str(Path(repalign.__file__).resolve().parents[1])


def train_command(config_path: str | Path, run_dir: str | Path, resume: bool, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "repalign", "train", str(config_path), "--run-dir", str(run_dir),
            "--resume" if resume else "--overwrite"]


PARENT_ENV = "REPALIGN_PARENT_PID"


class SweepPointError(UserError):
    """A sweep point's training process failed (one line: the point, its exit code, the log's last line)."""


def die_with_parent(parent_pid: int) -> None:
    """In a sweep worker: terminate when the sweep process ``parent_pid`` that started it dies, so a
    killed sweep leaves no orphan trainer writing on. Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``;
    elsewhere a watchdog thread polls the parent pid once a second."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover
            pass
        else:
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch() -> None:  # pragma: no cover - non-Linux
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    import threading

    threading.Thread(target=watch, name="repalign-parent-watch", daemon=True).start()  # pragma: no cover


def worker_env(threads: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a sweep worker: this process's, plus ``PYTHONPATH`` (this source tree), the
    parent pid (:func:`die_with_parent`), ``OMP_NUM_THREADS=threads`` (the worker's share of the cores,
    replacing an inherited value) and ``OMP_WAIT_POLICY=PASSIVE`` unless already set: workers share the
    cores, and spinning OpenMP threads made 2-thread runs ≈ 2× slower on a loaded 2-core machine
    (benchmarks/results/cpu_config.md)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = _src_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[PARENT_ENV] = str(os.getpid())
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def thread_budget(processes: int, launcher: str, cores: int | None = None) -> tuple[int, int]:
    """``(processes, threads per process)`` of a local sweep on ``cores`` CPUs (default ``os.cpu_count()``):
    never more processes than cores, threads = cores // processes, so processes × threads ≤ cores. The
    inline launcher runs one point at a time (all cores); slurm's cores are the nodes' (not limited here)."""
    cores = cores or os.cpu_count() or 1
    if launcher == "slurm":
        return processes, 0
    procs = min(processes, cores) if launcher == "local" else 1
    return procs, max(1, cores // procs)


def run_point_subprocess(config_path: str, run_dir: str, resume: bool, log_path: Path,
                         threads: int | None = None) -> float:
    """Train one point in a ``python -m repalign train`` subprocess that dies with this process
    (environment: :func:`worker_env`)."""
    env = worker_env(threads)
    t0 = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        rc = subprocess.run(train_command(config_path, run_dir, resume), stdout=log, stderr=subprocess.STDOUT,
                            env=env).returncode
    if rc != 0:
        lines = [x for x in log_path.read_text().splitlines() if x.strip()]
        errs = [x for x in lines if x.startswith("repalign: error:")]
        last = (errs or lines or ["(no output)"])[-1].strip()
        raise SweepPointError(f"sweep point {Path(run_dir).name!r} failed (exit {rc}): {last} (log: {log_path})")
    return time.perf_counter() - t0


@dataclass
class SweepResult:
    out: Path
    summary: Path
    ran: list[str]
    skipped: list[str]
    resumed: list[str]
    submitted: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # held by another live process: not started


def _state(spec: SweepSpec, points: Sequence[Point], out: Path) -> dict[str, Any]:
    return {"spec": spec.to_dict(), "grid_keys": list(spec.grid),
            "points": [{"slug": p.slug, "values": p.values, "done": point_status(out / "points" / p.slug) == "done"}
                       for p in points]}


def write_state(spec: SweepSpec, points: Sequence[Point], out: Path) -> None:
    (out / "sweep.json").write_text(json.dumps(_state(spec, points, out), indent=2))


def run_sweep(spec: SweepSpec, log: Callable[[str], None] = print, dry_run: bool = False,
              redo_stale: bool = False) -> SweepResult:
    """Run every unfinished point of ``spec`` and (re)write ``OUT/summary.csv`` (see
    :func:`_run_sweep`), holding ``OUT``'s lock so that one sweep at a time writes there."""
    from repalign.training.lock import RunLock

    with RunLock(spec.out):
        return _run_sweep(spec, log, dry_run, redo_stale)


class StalePointsError(ConfigError):
    """Finished or partial points of a sweep were run with another config than the spec asks for."""


def stale_points(out: Path, points: Sequence[Point], cfgs: Mapping[str, Mapping[str, Any]]
                 ) -> list[tuple[str, list[tuple[str, Any, Any]]]]:
    """``(slug, differing keys)`` of every point whose run directory holds a run (``done`` or ``partial``)
    made with a config other than ``cfgs[slug]`` (:func:`repalign.fingerprint.config_diff` of the point's
    ``config.yaml``, with the plug-in file hashes of its meta.json, against the spec's config)."""
    from repalign.fingerprint import config_diff, payload, run_payload

    stale = []
    for p in points:
        rd = out / "points" / p.slug
        if point_status(rd) not in ("done", "partial") or not (rd / "config.yaml").exists():
            continue
        diff = config_diff(run_payload(rd), payload(cfgs[p.slug]))
        if diff:
            stale.append((p.slug, diff))
    return stale


def _stale_message(out: Path, stale: Sequence[tuple[str, list[tuple[str, Any, Any]]]]) -> str:
    from repalign.fingerprint import describe_diff

    shown = "; ".join(f"{slug} ({describe_diff(d, 'point has', 'spec asks', limit=3)})" for slug, d in stale[:4])
    more = f"; … {len(stale) - 4} more" if len(stale) > 4 else ""
    return (f"sweep {str(out)!r}: {len(stale)} point(s) were run with another config than the spec asks for: "
            f"{shown}{more}; pass --redo-stale to re-run them, or use another --out")


def _run_sweep(spec: SweepSpec, log: Callable[[str], None] = print, dry_run: bool = False,
               redo_stale: bool = False) -> SweepResult:
    """Run every unfinished point of ``spec`` and (re)write ``OUT/summary.csv``.

    Finished points (``DONE``) are skipped, partial ones resumed, stale ones restarted. Every point's
    config is resolved before anything runs, so a bad grid value fails fast (one-line error). A finished
    or partial point whose run was made with another config (:func:`stale_points`) is not done: the sweep
    stops before writing anything, naming the points and keys (:class:`StalePointsError`), unless
    ``redo_stale`` — then those points are cleared and run again.
    ``dry_run``: write configs + sweep.json, print the commands, train nothing.
    """
    out = Path(spec.out)
    points = expand(spec)
    launcher = spec.launcher
    if launcher == "auto":
        launcher = "inline" if spec.processes == 1 else "local"
    cores = os.cpu_count() or 1
    processes, threads = thread_budget(spec.processes, launcher, cores)
    if processes < spec.processes:
        log(f"  warning: {spec.processes} processes on {cores} cores would oversubscribe them; running {processes}")
    over: set[int] = set()
    cfgs: dict[str, dict[str, Any]] = {}
    for p in points:  # every point is validated before any runs (one-line error naming the point)
        cfg = point_config(spec, p)
        if threads and (cfg["train"].get("threads") or 0) > threads:  # processes × threads ≤ cores
            over.add(cfg["train"]["threads"])
            cfg["train"]["threads"] = threads  # recorded in the point's config (and fingerprint)
        if not dry_run:
            try:
                check_data_root(cfg)
                from repalign.objectives import check_objectives

                check_objectives(cfg)  # the user's own spec: its plug-ins are imported and probed up front
            except (UserError, ConfigError) as e:
                raise ConfigError(f"sweep point {p.slug!r}: {e}") from None
        cfgs[p.slug] = cfg
    if over:
        src = "threads_per_process" if spec.threads_per_process else "train.threads"
        log(f"  warning: {processes} process(es) × {src}={max(over)} on {cores} cores would oversubscribe them; "
            f"points run with train.threads={threads}")
    stale = stale_points(out, points, cfgs)
    stale_slugs = {slug for slug, _ in stale}
    if stale and not redo_stale:
        raise StalePointsError(_stale_message(out, stale))
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "points").mkdir(exist_ok=True)
    for slug, _diff in stale:
        rd = out / "points" / slug
        if not dry_run and lock_holder(rd) is None:
            log(f"  stale {slug}: run with another config; cleared, to run again (--redo-stale)")
            clear_run_dir(rd)  # only what repalign wrote; other files make it refuse
    cfg_paths: dict[str, Path] = {}
    for p in points:
        cfg = cfgs[p.slug]
        path = out / "configs" / f"{p.slug}.yaml"
        text = dump_config(cfg)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        cfg_paths[p.slug] = path
    (out / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    write_state(spec, points, out)
    todo, skipped, resumed, busy_points = [], [], [], []
    for p in points:
        rd = out / "points" / p.slug
        st = point_status(rd)
        if st == "done" and p.slug not in stale_slugs:
            skipped.append(p.slug)
            continue
        busy = lock_holder(rd)
        if busy is not None:  # a live process (e.g. an orphan of a killed sweep) is training it
            log(f"  busy {p.slug}: in use by {describe_holder(busy)}; not started")
            busy_points.append(p.slug)
            continue
        if st == "stale":
            clear_run_dir(rd)  # only what repalign wrote; other files make it refuse
        if st == "partial":
            resumed.append(p.slug)
        todo.append((p, st == "partial"))
    log(f"sweep {out}: {len(points)} points, {len(skipped)} done, {len(todo)} to run "
        f"({len(resumed)} resumed) with launcher={launcher}"
        + (f", {processes} processes × {threads} thread(s)" if launcher == "local" else ""))
    if dry_run:
        for p, res in todo:
            log("  " + " ".join(train_command(cfg_paths[p.slug], out / "points" / p.slug, res, "python")))
        return SweepResult(out, out / "summary.csv", [], skipped, resumed, busy=busy_points)
    ran: list[str] = []
    submitted: list[str] = []
    import threading
    import time as _time

    from repalign.progress import progress_line
    t_start, n_done, done_lock = _time.perf_counter(), [0], threading.Lock()

    def one(item: tuple[Point, bool]) -> str:
        p, res = item
        rd = out / "points" / p.slug
        log(f"  {'resume' if res else 'run'} {p.slug}")
        if launcher == "inline":
            secs = run_point_inline(str(cfg_paths[p.slug]), str(rd), res)
        else:
            secs = run_point_subprocess(str(cfg_paths[p.slug]), str(rd), res, out / "logs" / f"{p.slug}.log",
                                        min(threads, spec.threads_per_process or threads))
        _mark_done(rd, p, secs)
        with done_lock:  # point N/M, elapsed, ETA from the finished points (repalign.progress)
            n_done[0] += 1
            line = progress_line("point", n_done[0], len(todo), _time.perf_counter() - t_start,
                                 label=f"{p.slug}, {secs:.1f} s")
        log(f"  done {line}")
        return p.slug

    if launcher == "slurm":
        submitted = submit_slurm(spec, [(p, res, cfg_paths[p.slug]) for p, res in todo], out, log)
    elif launcher == "inline" or processes == 1:  # one point at a time: torch's thread count is process-wide
        for item in todo:
            ran.append(one(item))
            write_state(spec, points, out)
    else:
        with ThreadPoolExecutor(processes) as ex:
            for slug in ex.map(one, todo):
                ran.append(slug)
    write_state(spec, points, out)
    summary = write_summary(out, points, list(spec.grid))
    return SweepResult(out, summary, ran, skipped, resumed, submitted, busy_points)


#: Keys of the spec's ``slurm`` mapping read by repalign itself; every other key is a submitit
#: parameter (``timeout_min``, ``gpus_per_node``, ``tasks_per_node``, ``nodes``, ``cpus_per_task``, ``mem_gb``,
#: ``slurm_partition``, ``slurm_account``, ...; see ``submitit.AutoExecutor.update_parameters``).
SLURM_OWN_KEYS = {"cluster": "slurm", "wait": False, "max_num_timeout": 3, "backend": None}


def slurm_settings(spec: SweepSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the spec's ``slurm`` mapping into repalign's own settings and submitit parameters.

    Own settings: ``cluster`` (``slurm``; ``local`` / ``debug`` run the same jobs on this machine
    through submitit's local executors — what the tests use), ``wait`` (block until every job ended,
    then write the summary; default false: submit and return), ``max_num_timeout`` (how often a job may
    be requeued after a time-out, pre-emptions are not counted), ``backend`` (torch.distributed backend;
    default nccl on CUDA, else gloo). Parameter defaults: one node; ``tasks_per_node`` =
    ``gpus_per_node`` (one process per GPU) or 1. On ``cluster: slurm`` ``timeout_min`` (or
    ``slurm_time``) is required, because submitit's default is 5 minutes.
    """
    raw = dict(spec.slurm)
    own = {k: raw.pop(k, d) for k, d in SLURM_OWN_KEYS.items()}
    if own["cluster"] not in ("slurm", "local", "debug"):
        raise ConfigError(f"sweep spec key 'slurm.cluster': must be slurm, local or debug, got {own['cluster']!r}")
    if not isinstance(own["wait"], bool):
        raise ConfigError(f"sweep spec key 'slurm.wait': must be true or false, got {own['wait']!r}")
    if not isinstance(own["max_num_timeout"], int) or own["max_num_timeout"] < 0:
        raise ConfigError(f"sweep spec key 'slurm.max_num_timeout': must be an integer >= 0, got {own['max_num_timeout']!r}")
    if own["backend"] not in (None, "gloo", "nccl"):
        raise ConfigError(f"sweep spec key 'slurm.backend': must be gloo or nccl, got {own['backend']!r}")
    for k in ("nodes", "tasks_per_node", "gpus_per_node", "timeout_min"):
        v = raw.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "gpus_per_node" else 1)):
            raise ConfigError(f"sweep spec key 'slurm.{k}': must be a positive integer, got {v!r}")
    raw.setdefault("nodes", 1)
    raw.setdefault("tasks_per_node", raw.get("gpus_per_node") or 1)
    if own["cluster"] == "slurm" and raw.get("timeout_min") is None and raw.get("slurm_time") is None:
        raise ConfigError("sweep spec key 'slurm.timeout_min': required on cluster slurm (submitit's default is 5 minutes)")
    if own["cluster"] != "slurm":
        raw.setdefault("timeout_min", 60)  # the local executor's default is 2 minutes
    return own, raw


def submit_slurm(spec: SweepSpec, items: Sequence[tuple[Point, bool, Path]], out: Path,
                 log: Callable[[str], None]) -> list[str]:
    """Submit every unfinished point as one submitit job (extra ``slurm``); return the job ids.

    Each job runs ``nodes × tasks_per_node`` processes (by default one per GPU); every process sets up
    ``torch.distributed`` from submitit's job environment and trains the point as ``repalign train
    --resume-if-possible`` would (:class:`SlurmPoint`). On pre-emption or time-out, SLURM signals the job
    (``USR2``), submitit calls :meth:`SlurmPoint.checkpoint` and requeues the same call,
    which resumes from the point's last checkpoint (``train.checkpoint_every``). ``DONE`` is written on
    the compute node. Without ``slurm.wait`` this returns after submitting: re-run the sweep once the jobs
    ended to aggregate (finished points are skipped). With ``wait`` it blocks until every job ended and
    raises :class:`SweepPointError` naming the first failed point. Job folders: ``OUT/slurm/``.
    """
    own, params = slurm_settings(spec)
    try:
        import submitit
    except ImportError:  # pragma: no cover - optional extra
        raise ConfigError("sweep spec key 'launcher': slurm needs the extra `pip install repalign[slurm]` (submitit)") from None
    ex = submitit.AutoExecutor(folder=str(out / "slurm"), cluster=own["cluster"],
                              slurm_max_num_timeout=own["max_num_timeout"])
    params.setdefault("name", f"repalign-{spec.name or out.name}")
    try:
        ex.update_parameters(**params)
    except (ValueError, TypeError, AssertionError) as e:
        raise ConfigError(f"sweep spec key 'slurm': {one_line_error(e)}") from None
    fns = [SlurmPoint(str(c), str(out / "points" / p.slug), p.values, own["backend"]) for p, _, c in items]
    if not fns:
        return []
    jobs = ex.submit_array(fns)
    ids = [str(j.job_id) for j in jobs]
    log(f"submitted {len(ids)} {own['cluster']} job(s) with {params['nodes']}×{params['tasks_per_node']} process(es) "
        f"each: {', '.join(ids)} (folder {out / 'slurm'})")
    if own["wait"]:
        for (p, _, _), job in zip(items, jobs):
            try:
                secs = job.results()[0]  # rank 0's return value (every task returns)
            except Exception as e:  # submitit wraps the job's traceback
                raise SweepPointError(f"sweep point {p.slug!r} failed in job {job.job_id}: {_job_error(job, e)} "
                                      f"(log: {job.paths.stderr})") from None
            log(f"  done {p.slug} ({float(secs):.1f} s)")
    return ids


_ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[A-Za-z_][\w.]*(?:Error|Exception|Interrupt))\b.*|repalign: error:.*)$")


def _job_error(job: Any, e: BaseException) -> str:
    """The last exception line of a failed job's rank-0 log, else of submitit's error."""
    texts = [str(e)]
    try:
        texts.insert(0, Path(job.paths.stderr).read_text())
    except (OSError, AttributeError):
        pass
    for text in texts:
        hits = [m.group(1).strip() for m in map(_ERROR_LINE.match, text.splitlines()) if m]
        if hits:
            return hits[-1]
    return type(e).__name__


def one_line_error(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class SlurmPoint:
    """The callable submitted for one sweep point (pickled by submitit; see :func:`submit_slurm`).

    Calling it in each task of a job: exports ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``/
    ``LOCAL_RANK`` from ``submitit.helpers.TorchDistributedEnvironment`` (job with more than one task),
    so that :func:`repalign.distributed.init_from_env` sets up the process group; then trains as
    ``repalign train CONFIG --run-dir RUN_DIR --resume-if-possible``: resume when the run directory has a
    checkpoint, else clear what repalign wrote there and start afresh. Rank 0 holds the run directory's
    lock and writes ``DONE``; returns the training seconds. When each task sees only its own GPU
    (SLURM binding GPUs per task), ``LOCAL_RANK`` is set to 0 so the trainer takes that GPU.

    ``checkpoint`` (= ``__submitit_checkpoint__``): submitit calls it on pre-emption / time-out (rank 0
    only) and requeues the returned call — the same point, which resumes from its last checkpoint.
    """

    def __init__(self, config_path: str, run_dir: str, values: dict[str, Any], backend: str | None = None) -> None:
        self.config_path = config_path
        self.run_dir = run_dir
        self.values = dict(values)
        self.backend = backend

    def __call__(self) -> float:
        import torch

        from repalign import distributed

        if os.environ.get("SUBMITIT_EXECUTOR"):  # a submitit job (slurm / local); the debug executor runs here
            from submitit import JobEnvironment
            from submitit.helpers import TorchDistributedEnvironment

            job = JobEnvironment()
            if job.num_tasks > 1:
                env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
                if torch.cuda.is_available() and torch.cuda.device_count() < env.local_world_size:
                    os.environ["LOCAL_RANK"] = "0"  # one GPU visible per task: it is cuda:0
        rank = int(os.environ.get("RANK", "0"))
        secs = 0.0
        if (Path(self.run_dir) / DONE).exists():
            return secs
        try:
            distributed.init_from_env(self.backend)
            secs = self._train(rank == 0)
            if rank == 0:
                _mark_done(Path(self.run_dir), Point(self.values, Path(self.run_dir).name), secs)
            if distributed.is_dist():
                torch.distributed.barrier()  # no rank tears the group down while another still uses it
        finally:
            if distributed.is_dist():
                torch.distributed.destroy_process_group()
        return secs

    def _train(self, main: bool) -> float:
        from repalign.training.lock import RunLock

        run_dir = Path(self.run_dir)
        lock = RunLock(run_dir).acquire() if main else None
        try:
            ck = run_dir / "checkpoints"
            resume = (ck / "last.pt").exists() or (ck / "last.prev.pt").exists()
            if not resume and main and run_dir.exists():
                clear_run_dir(run_dir)  # only what repalign wrote (a killed first attempt)
            return run_point_inline(self.config_path, self.run_dir, resume)
        finally:
            if lock is not None:
                lock.release()

    def checkpoint(self) -> Any:
        """Requeue this same point; it continues from its last checkpoint (``--resume-if-possible``).
        submitit looks for ``checkpoint`` to decide that a job is requeueable, and calls
        ``__submitit_checkpoint__`` (the same method) when present."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)

    __submitit_checkpoint__ = checkpoint


def _cell(v: Any) -> Any:
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    if v is None:
        return ""
    return v


#: Per-row timing fields of metrics.jsonl (machine-dependent): left out of summary.csv.
TIMING_KEYS = frozenset({"wall_s", "samples_per_s"})


def summary_rows(out: Path, points: Sequence[Point], grid_keys: Sequence[str]) -> list[dict[str, Any]]:
    """``align``/``eval``/``lossgap`` rows of every finished point, each with ``point``, the grid values and
    ``config_fingerprint`` (the point's config fingerprint without its seed, from its ``config.yaml``).
    Points of one condition (same grid values apart from ``seed``) whose configs differ are refused with
    one line naming the points and keys (:class:`~repalign.analysis.aggregate.MixedConfigError`)."""
    from repalign.analysis.aggregate import FINGERPRINT, MixedConfigError
    from repalign.fingerprint import config_diff, describe_diff, fingerprint, run_payload

    rows: list[dict[str, Any]] = []
    first: dict[tuple, tuple[str, dict[str, Any]]] = {}
    for p in points:
        rd = out / "points" / p.slug
        if point_status(rd) != "done" or not (rd / "metrics.jsonl").exists():
            continue
        fp = None
        if (rd / "config.yaml").exists():
            pl = run_payload(rd, seed=False)
            fp = fingerprint(of=pl, seed=False)
            cond = tuple(p.values.get(k) for k in grid_keys if k != "seed")
            if cond not in first:
                first[cond] = (p.slug, pl)
            else:
                diff = config_diff(first[cond][1], pl)
                if diff:
                    raise MixedConfigError(
                        f"sweep {str(out)!r}: points {first[cond][0]!r} and {p.slug!r} of one condition were run "
                        f"with different configs ({describe_diff(diff, 'first has', 'second has', limit=3)}); their "
                        "seeds cannot be pooled — re-run the stale points (--redo-stale)")
        prow = sorted((r for r in read_rows(rd) if r.get("kind") in SUMMARY_KINDS),
                      key=lambda r: r.get("step", 0))
        for r in prow:
            r = {k: v for k, v in r.items() if k not in TIMING_KEYS}  # keep the summary deterministic
            rows.append({"point": p.slug, **{k: p.values.get(k) for k in grid_keys}, **r, FINGERPRINT: fp})
    return rows


def write_summary(out: str | Path, points: Sequence[Point] | None = None, grid_keys: Sequence[str] | None = None) -> Path:
    """(Re)write ``OUT/summary.csv`` from the finished points, and the seed aggregation
    ``aggregate.csv`` / ``comparisons.csv`` (:func:`write_aggregates`); deterministic given the points'
    metrics. Each file is written to a temporary name and renamed."""
    out = Path(out)
    if points is None or grid_keys is None:
        st = load_sweep_state(out)
        grid_keys = st["grid_keys"]
        points = [Point(dict(p["values"]), p["slug"]) for p in st["points"]]
    rows = summary_rows(out, points, grid_keys)
    rest = sorted({k for r in rows for k in r} - set(grid_keys) - set(FIRST_COLUMNS) - {"point"})
    cols = ["point", *grid_keys, *FIRST_COLUMNS, *rest]
    path = out / "summary.csv"
    _write_csv(path, rows, cols)
    write_aggregates(out, rows, [k for k in grid_keys if k != "seed"])
    return path


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(cols), extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: _cell(r.get(k)) for k in cols})
        os.replace(tmp, path)
    except OSError as e:  # a full disk: the one line names the CSV being written
        from repalign.errors import name_file

        tmp.unlink(missing_ok=True)
        raise name_file(e, path)


def write_aggregates(out: Path, rows: Sequence[Mapping[str, Any]], group_keys: Sequence[str]) -> tuple[Path, Path]:
    """``aggregate.csv`` (mean, std, n, 95 % CI over seeds per condition × pair × split × layer ×
    evaluation point × metric) and ``comparisons.csv`` (paired differences between pairs)."""
    from repalign.analysis import aggregate_rows, comparison_rows
    from repalign.analysis.aggregate import AGG_ID

    agg = aggregate_rows(rows, group_keys)
    p1 = out / "aggregate.csv"
    _write_csv(p1, agg, [*group_keys, *AGG_ID, "metric", "n", "mean", "std", "ci_lo", "ci_hi", "level", "method"])
    comp = comparison_rows(rows, group_keys)
    p2 = out / "comparisons.csv"
    _write_csv(p2, comp, [*group_keys, "split", "layer", "step", "metric", "pair", "versus", "versus_role", "n",
                          "diff_mean", "diff_std", "ci_lo", "ci_hi", "level", "verdict"])
    return p1, p2
