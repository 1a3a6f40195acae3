"""Command line: repalign train CONFIG [key=value ...], repalign align RUN_DIR, ...

Every error the user can fix prints one line ``repalign: error: ...`` naming the key, file or
path; exit codes (see :mod:`repalign.errors`): 2 bad input, 3 stopped on non-finite values
(``train.on_nonfinite=stop_run``), 4 run directory in use by another process, 130 interrupted,
143 / 138 stopped by SIGTERM / SIGUSR1 after a checkpoint (:mod:`repalign.training.signals`).
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Sequence

from repalign.config import ConfigError, load_config, resolve_config_path
from repalign.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, Interrupted, UserError, one_line

#: --trust-code (issue 17; docs/design.md, "Trust model")
TRUST_HELP = ("import the plug-in code (objectives, encoder, data source given as file or module references) that "
              "this run's config.yaml names; needed to rebuild a plug-in run (align, export of a plug-in encoder, "
              "resume from the run's own config.yaml); same as REPALIGN_TRUST_CODE=1. Only for runs you trust")

# Kept for callers of the old private name; the resolver lives in repalign.config.
_resolve_config_path = resolve_config_path

DESCRIPTION = ("Coupled training of several contrastive objectives under shared randomness, and the "
               "alignment of their representations. Commands: train, align, sweep, reproduce, report, export, compare, configs.")


def summary_table(run_dir: str | Path) -> str:
    """Plain-text summary: per arm the last loss and kNN accuracy; per compared pair the last
    test-split alignment (layer h); the CL arm's last per-batch loss gap and its bound."""
    from repalign.results import latest_rows, read_rows

    rows = read_rows(run_dir)
    last_train = latest_rows((r for r in rows if r["kind"] == "train"), key=lambda r: r["arm"])
    knn = {arm: r["knn_acc"] for arm, r in latest_rows(
        (r for r in rows if r["kind"] == "eval" and r.get("split") == "test" and "knn_acc" in r),
        key=lambda r: r["arm"]).items()}
    align = latest_rows((r for r in rows if r["kind"] == "align" and r.get("split") == "test"
                         and r.get("layer", "h") == "h"), key=lambda r: (r["arm_a"], r["arm_b"]))
    fmt = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    head = f"{'arm':<12} {'objective':<9} {'loss':>8} {'kNN acc':>8}"
    lines = [head, "-" * len(head)]
    for arm, r in last_train.items():
        lines.append(f"{arm:<12} {r['objective']:<9} {fmt(r['loss']):>8} {fmt(knn.get(arm)):>8}")
    if align:
        head = f"{'pair':<24} {'role':<12} {'epoch':>5} {'CKA':>7} {'rel.':>6} {'RSA':>7} {'w-gap':>7}"
        lines += ["", head, "-" * len(head)]
        for (a, b), r in sorted(align.items(), key=lambda kv: -(kv[1].get("linear_cka") or 0)):
            role = {"chaos": "chaos floor", "noise_data": "noise floor", "noise_seed": "noise (seed)"}.get(
                r.get("control") or "", "objective")
            lines.append(f"{a + ' vs ' + b:<24} {role:<12} {r['epoch']:>5} {fmt(r.get('linear_cka')):>7} "
                         f"{fmt(r.get('linear_cka_rel')):>6} {fmt(r.get('rsa')):>7} {fmt(r.get('weight_gap_mean')):>7}")
        base = [r for r in rows if r["kind"] == "baseline" and r.get("split") == "test" and r.get("layer", "h") == "h"]
        if base:
            lines.append(f"{'untrained baseline':<24} {'reference':<12} {'':>5} {fmt(base[-1].get('linear_cka')):>7}")
        lines.append("(alignment: test split, layer h, last evaluation; rel. = (CKA − untrained)/(1 − untrained))")
        from repalign.analysis import findings

        fnd = [f for _lab, fs in findings([r for r in rows if r["kind"] in ("align", "baseline")], layers=("h",))
               for f in fs if f.kind == "margin"]
        if fnd:
            lines += ["", "Findings (details and intervals: repalign report RUN_DIR):"] + [f"- {f.text}" for f in fnd]
    gaps = [r for r in rows if r["kind"] == "lossgap" and not r.get("embeddings")]  # the CL arms' own rows
    if gaps:
        g = gaps[-1]  # a one-class batch has bound ∞ (stored as "inf"): shown, never a crash
        lines.append(f"last batch loss gap DCL−NSCL of {g['arm']}: {format_number(g.get('gap'))} ≤ bound "
                     f"{format_number(g.get('bound'))}")
    return "\n".join(lines)


def format_number(v: object, digits: int = 4) -> str:
    """A metric value for a text table: ``digits`` decimals; ±∞ (a float or the ``"inf"`` string that
    metrics.jsonl stores for it, e.g. the loss-gap bound of a one-class batch) as ``∞`` / ``−∞``, NaN as
    ``nan``, anything that is not a number as ``-``."""
    import math

    if isinstance(v, bool) or v is None:
        return "-"
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def cmd_train(args: argparse.Namespace) -> int:
    from repalign.training import default_run_dir, train
    from repalign.training.lock import RunLock
    from repalign.training.rundir import clear_run_dir

    cfg = load_config(resolve_config_path(args.config), args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    main_rank = os.environ.get("RANK", "0") == "0"
    # One writer per run directory: the lock is taken before anything is looked at or deleted
    # (and the trainer takes it again); if this start fails, no empty run folder is left behind.
    lock = RunLock(run_dir).acquire() if main_rank else None
    try:
        ckpts = run_dir / "checkpoints"
        has_ckpt = (ckpts / "last.pt").exists() or (ckpts / "last.prev.pt").exists()
        resume = args.resume or (args.resume_if_possible and has_ckpt)
        if resume and not has_ckpt:
            raise ConfigError(f"--resume: no checkpoint in {str(run_dir)!r}")
        if not resume:
            if (run_dir / "metrics.jsonl").exists() and not (args.overwrite or args.resume_if_possible):
                raise ConfigError(f"run directory {str(run_dir)!r} already holds a run; pass --resume to continue it or --overwrite")
            if (args.overwrite or args.resume_if_possible) and main_rank:
                clear_run_dir(run_dir, everything=args.overwrite == "all")  # only what repalign wrote
        if resume:  # what was asked (config + overrides) must be the run's own config.yaml (issue 17)
            from repalign.fingerprint import check_resume

            check_resume(run_dir, cfg)
        from repalign.plugins import guard, require_trust

        # Training a config the user wrote is consent to import its plug-ins; resuming from the run
        # directory's own config.yaml (a run possibly received from someone else) needs --trust-code.
        own = not (resume and _same_file(resolve_config_path(args.config), run_dir / "config.yaml"))
        if not own:
            from repalign.config import code_references

            require_trust(code_references(cfg), args.trust_code, "repalign train --resume", run_dir)
        with guard(run_dir, own or args.trust_code, "repalign train --resume"):
            trainer = train(cfg, run_dir, resume=resume)
    finally:
        if lock is not None:
            lock.release()
    if trainer.is_main:
        print(summary_table(run_dir))
        print(f"run directory: {run_dir}")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from repalign.training.align import align_run
    from repalign.training.lock import RunLock

    if not (Path(args.run_dir) / "config.yaml").is_file():
        raise UserError(f"{str(args.run_dir)!r} is not a run directory (no config.yaml)")
    with RunLock(args.run_dir):  # align writes alignment.csv (+ quality.csv, layerwise_*)
        out = align_run(args.run_dir, max_train=args.max_train, max_test=args.max_test, layers=args.layers,
                        rsa_corr=args.rsa_corr, quality=args.quality, layerwise=args.layerwise,
                        trust_code=args.trust_code, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    from repalign.config import bundled_configs

    for name, path in bundled_configs().items():
        first = ""
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                first = line.lstrip("# ").strip()
                break
        print(f"{name:<34} {first}" if args.describe else name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; building it imports neither torch nor matplotlib (``--help`` is instant)."""
    p = argparse.ArgumentParser(prog="repalign", description=DESCRIPTION)
    from repalign import __version__  # the installed package's metadata (pyproject.toml's version)

    p.add_argument("--version", action="version", version=f"repalign {__version__}",
                   help="print the version of repalign and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = sub.add_parser("train", help="train the arms of CONFIG in lockstep",
                       description="Train the arms of a config in lockstep (shared initial weights, batches and "
                                   "views) and write a run directory: config.yaml, meta.json, metrics.jsonl, "
                                   "checkpoints.")
    t.add_argument("config", help="YAML config path or bundled name (see 'repalign configs'), e.g. demo")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss.temperature=0.1")
    t.add_argument("--run-dir", help="run directory (default: OUT_DIR/NAME)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    t.add_argument("--resume-if-possible", action="store_true",
                   help="resume when the run directory has a checkpoint, else start afresh (for launchers)")
    t.add_argument("--overwrite", nargs="?", const="run", choices=["run", "all"], default=None,
                   help="replace an existing run: delete what repalign wrote there (refused if the directory "
                        "holds other files); --overwrite=all deletes everything in it")
    t.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    t.set_defaults(func=cmd_train)
    a = sub.add_parser("align", help="recompute alignment metrics from a run's checkpoints into alignment.csv",
                       description="Recompute the alignment metrics of every compared pair at every saved "
                                   "evaluation checkpoint of a run and write RUN_DIR/alignment.csv (optionally "
                                   "quality.csv and layer-wise CKA maps).")
    a.add_argument("run_dir", help="run directory written by 'repalign train'")
    a.add_argument("--max-train", type=int, default=None,
                   help="train evaluation samples (default: eval.max_train of the run)")
    a.add_argument("--max-test", type=int, default=None,
                   help="test evaluation samples (default: eval.max_test of the run)")
    a.add_argument("--layers", nargs="+", default=None, choices=["h", "z"],
                   help="layers to compare: h (encoder output), z (normalised projection); default: eval.layers")
    a.add_argument("--rsa-corr", default=None, choices=["pearson", "spearman"],
                   help="correlation of the RSA between dissimilarity matrices (default: eval.rsa_corr)")
    a.add_argument("--quality", action="store_true",
                   help="also write quality.csv: linear probe, few-shot NCC, CDNV per arm and checkpoint")
    a.add_argument("--layerwise", action="store_true",
                   help="also write layerwise_<a>_<b>.csv/.png: block-by-block CKA at the last checkpoint")
    a.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    a.add_argument("--quiet", action="store_true",
                   help="no progress (default: a bar per checkpoint on a terminal, else one line per checkpoint)")
    a.set_defaults(func=cmd_align)
    c = sub.add_parser("configs", help="list the bundled configs (names usable in place of a path)",
                       description="List the configs shipped with repalign; each name works wherever a config "
                                   "path is expected (repalign train demo, sweep base: demo, load_config('demo')).")
    c.add_argument("--describe", action="store_true", help="also print the first comment line of each config")
    c.set_defaults(func=cmd_configs)
    for extra in ("sweep", "reproduce", "report", "export"):
        try:
            mod = __import__(f"repalign.experiments.cli_{extra}", fromlist=["register"])
        except ImportError:
            continue
        mod.register(sub)
    from repalign.compare.cli import register as register_compare  # imports no torch

    register_compare(sub)
    return p


#: What to do after freeing space, per command (only train has --resume; issue 17).
AFTER_DISK_FULL = {
    "train": "continue with --resume",
    "sweep": "run the same repalign sweep again (finished points are kept, the others resume)",
    "reproduce": "run the same repalign reproduce again (finished sweep points are kept)",
    "report": "run repalign report again (the previous report was kept)",
    "align": "run repalign align again",
    "export": "run repalign export again",
    "compare": "run repalign compare again",
}


def _describe_oserror(e: OSError, command: str | None = None) -> str:
    what = f"{e.strerror or e}"
    where = f" {e.filename!s}" if e.filename else ""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        where = where or " (the file was not named)"
        return f"no space left writing{where} ({what}); free space, then " + AFTER_DISK_FULL.get(
            command or "", "run the command again")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write{where}: {what} (is the run directory read-only?)"
    return f"{what}:{where}" if where else what


def main(argv: Sequence[str] | None = None) -> int:
    # before torch (hence OpenMP) starts: idle OpenMP threads sleep instead of spinning, so runs that share
    # the cores (sweep workers, a figure beside other jobs) do not slow each other down (≈ 2x)
    # (benchmarks/results/cpu_config.md); OMP_WAIT_POLICY=ACTIVE in the environment keeps spinning
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # a bare --overwrite must not swallow the key=value after it as its optional value
    argv = ["--overwrite=run" if a == "--overwrite" else a for a in argv]
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides given after an option (argparse does not intermix positionals)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if os.environ.get("REPALIGN_PARENT_PID", "").isdigit():  # a sweep worker: die with the sweep
        from repalign.experiments.sweep import die_with_parent

        die_with_parent(int(os.environ.pop("REPALIGN_PARENT_PID")))
    from repalign.training.checkpoint import CheckpointError
    from repalign.training.trainer import NonFiniteError

    # The rule (docs/design.md, "Errors"): our own error classes (repalign.errors and the few that
    # subclass them) are input the user can fix → one line and their exit code; every other exception,
    # a bare ValueError included, is a bug and keeps its traceback. User-reachable checks raise one of
    # those classes where they are made (ConfigError, DataError, PathError are ValueErrors too).
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UserError, CheckpointError, NonFiniteError) as e:
        print(f"repalign: error: {one_line(e)}", file=sys.stderr)
        return int(getattr(e, "exit_code", EXIT_BAD_INPUT))
    except OSError as e:  # a read-only or full run directory, a file that vanished
        print(f"repalign: error: {_describe_oserror(e, getattr(args, 'command', None))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as e:  # SIGTERM / SIGUSR1 (before KeyboardInterrupt, its base class)
        print(f"repalign: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("repalign: interrupted; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
