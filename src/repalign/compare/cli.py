"""``repalign compare A B --data SOURCE …`` (registered by :mod:`repalign.cli`; torch is imported only
inside the command, so ``repalign --help`` stays fast)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "cmd_compare"]

DEFAULT_METRICS = ("linear_cka", "rsa")


def register(sub: Any) -> None:
    c = sub.add_parser(
        "compare", help="layer-by-layer CKA/RSA between any two models (runs, exports, torchvision:/timm:)",
        description="Compare two models layer by layer on the same samples: exact streamed linear/debiased CKA "
                    "and RSA (plus RBF CKA, Spearman RSA, torch_cka's minibatch CKA), with an optional bootstrap "
                    "interval and re-initialised baseline. A and B: RUN_DIR:ARM[@EPOCH], an export folder, or "
                    "torchvision:NAME / timm:NAME with --weights-a/--weights-b. Writes compare.csv, compare.png "
                    "and compare.html into --out and prints the table. Guide: docs/compare.md.")
    c.add_argument("model_a", metavar="A", help="RUN_DIR:ARM[@EPOCH], export folder, torchvision:NAME or timm:NAME")
    c.add_argument("model_b", metavar="B", help="same forms as A")
    c.add_argument("--data", required=True, help="data source: a built-in name (digits, cifar10, …) or plug-in "
                   "reference (torchvision:CIFAR10, hf:…, pkg.mod:fn), as data.source in configs")
    c.add_argument("--split", default="test", choices=["train", "test"], help="split of --data (default test)")
    c.add_argument("--max-per-class", type=int, default=None, help="at most this many samples per class (seeded)")
    c.add_argument("--data-root", default=None, help="data directory searched first (data.root)")
    c.add_argument("--weights-a", default=None, help="state_dict (.pt, weights_only) or .safetensors for A")
    c.add_argument("--weights-b", default=None, help="state_dict (.pt, weights_only) or .safetensors for B")
    c.add_argument("--layers-a", nargs="+", default=None, help="layer names of A (named_modules / graph nodes), "
                   "'auto' (default: top-level blocks + output) or 'all'")
    c.add_argument("--layers-b", nargs="+", default=None, help="layer names of B (as --layers-a)")
    c.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS),
                   help="metrics (default: linear_cka rsa); also debiased_cka, rbf_cka, rsa_spearman, "
                        "rsa_correlation, rsa_euclidean, minibatch_cka, sim_gap_rel, repr_angle_deg")
    c.add_argument("--pool", default="flatten", choices=["flatten", "avg", "none"],
                   help="layer output → feature row: flatten (default), avg (spatial/token mean), none (2-D only)")
    c.add_argument("--max-samples", type=int, default=None, help="compare at most N samples")
    c.add_argument("--batch-size", type=int, default=256, help="batch size of the forward passes (default 256)")
    c.add_argument("--device", default=None, help="device, e.g. cuda (default: cpu, where loaded models live)")
    c.add_argument("--ci", default=None, choices=["bootstrap"], help="bootstrap interval over samples")
    c.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (default 200)")
    c.add_argument("--baseline", default=None, choices=["reinit"], help="also compare re-initialised copies")
    c.add_argument("--seed", type=int, default=0, help="seed of the class subset, bootstrap and re-initialisation")
    c.add_argument("--out", default="compare_out", help="output directory (default ./compare_out)")
    c.add_argument("--no-progress", action="store_true", help="no progress output")
    c.add_argument("--trust-code", action="store_true",
                   help="import the plug-in encoder (a file or module reference) that a RUN_DIR:ARM's config.yaml or an "
                        "export's JSON names, to rebuild it; same as REPALIGN_TRUST_CODE=1. Built-in, torchvision: and "
                        "timm: encoders need no consent. Only for runs and exports you trust")
    c.set_defaults(func=cmd_compare)


def _layers(v: list[str] | None) -> Any:
    if v is None:
        return "auto"
    return v[0] if len(v) == 1 and v[0] in ("auto", "all") else v


def cmd_compare(args: argparse.Namespace) -> int:
    import torch

    from repalign.data import build_source, eval_transform
    from repalign.errors import UserError

    from .api import compare
    from .models import load_model

    try:
        src = build_source(args.data, args.split, root=args.data_root, seed=args.seed,
                           max_per_class=args.max_per_class)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"--data {args.data!r}: {' '.join(str(e).split())}") from None
    tf = eval_transform(src.image_size, src.channels, mean=src.mean, std=src.std)

    class _Eval(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(src)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return tf(src[i]), src.labels[i]

    trust = getattr(args, "trust_code", False)
    ma, da = load_model(args.model_a, src.channels, args.weights_a, "--weights-a", trust_code=trust)
    if args.model_b == args.model_a and args.weights_b == args.weights_a:
        mb, db = ma, da
    else:
        mb, db = load_model(args.model_b, src.channels, args.weights_b, "--weights-b", trust_code=trust)
    loader = torch.utils.data.DataLoader(_Eval(), batch_size=args.batch_size, shuffle=False)
    try:
        res = compare(ma, mb, loader, layers_a=_layers(args.layers_a), layers_b=_layers(args.layers_b),
                      metrics=args.metrics, pool=args.pool, max_samples=args.max_samples,
                      batch_size=args.batch_size, device=args.device, progress=not args.no_progress, seed=args.seed,
                      ci=args.ci, n_boot=args.n_boot, baseline=args.baseline)
    except ValueError as e:
        raise UserError(" ".join(str(e).split())) from None
    except RuntimeError as e:  # e.g. a model that does not accept the data's shape
        raise UserError(f"forward pass failed (does the data fit the models?): {' '.join(str(e).split())[:300]}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.settings.update({"A": da, "B": db, "data": f"{args.data} ({args.split}, {len(src)} samples available)"})
    res.to_csv(out / "compare.csv")
    res.plot(out / "compare.png")
    res.to_html(out / "compare.html")
    print(f"A: {da}\nB: {db}\ndata: {args.data} {args.split}, n = {res.n}, pool = {args.pool}\n")
    print(res.table())
    print(f"\nwrote {out / 'compare.csv'}, {out / 'compare.png'}, {out / 'compare.html'}")
    return 0
