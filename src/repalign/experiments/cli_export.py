"""repalign export RUN_DIR --arm NAME [--epoch N] [--format pt|safetensors]: an arm's encoder weights."""
from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    from repalign.export import export_encoder

    path = export_encoder(args.run_dir, args.arm, epoch=args.epoch, fmt=args.format, out=args.out,
                          trust_code=args.trust_code)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write one arm's encoder weights with plain key names (+ a JSON description)",
                       description="Write the encoder of one arm (no projector, head or optimiser state) with plain "
                                   "key names, loadable into torchvision for ResNet and torchvision: encoders, and a "
                                   "JSON file describing the architecture. Python: repalign.load_encoder(RUN_DIR, arm).")
    p.add_argument("run_dir", help="run directory written by 'repalign train'")
    p.add_argument("--arm", required=True, help="arm whose encoder to export")
    p.add_argument("--epoch", type=int, default=None,
                   help="the evaluation checkpoint epoch_XXXX.pt of this epoch (default: the last checkpoint)")
    p.add_argument("--format", choices=["pt", "safetensors"], default="pt",
                   help="pt (torch.save of a state dict) or safetensors (extra safetensors)")
    p.add_argument("--out", default=None, help="output path without suffix (default: RUN_DIR/export/ARM)")
    p.add_argument("--trust-code", action="store_true",
                   help="import the run's plug-in encoder (a file or module reference in config.yaml) to rebuild it; "
                        "same as REPALIGN_TRUST_CODE=1. Built-in encoders need no consent, and the run's objectives "
                        "are never imported")
    p.set_defaults(func=cmd_export)
