"""repalign report DIR: self-contained report.html for a run, a sweep or a reproduce output."""
from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from repalign.report import write_report
    from repalign.report.html import displayable

    print(displayable(str(write_report(args.dir))))  # a non-UTF-8 directory name prints with U+FFFD
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a self-contained report.html (figures embedded) for DIR",
                       description="Write DIR/report/report.html: Findings, final table, figures and the paper's "
                                   "published values, one file with the figures embedded (no network needed).")
    p.add_argument("dir", help="run directory, sweep directory or reproduce output")
    p.set_defaults(func=cmd_report)
