"""Issue 18, one-off: re-plot docs/figures/cpu/FIG/FIG_theory.{png,csv} from the committed CSVs with the issue-18 theory panel:
cka_cos = cos(repr_angle_deg) joined from FIG.csv (same seed, step, condition, test split, layer h, cl vs nscl;
not for fig5, whose theory CSV pools LARS and SGD rows under the same keys); the centred rho was not recorded in
these CSVs, so cka_lower_bound is blanked and bound_status = 'rho not recorded' (the old column was the wrong,
uncentred bound). Idempotent. Usage: PYTHONPATH=src python benchmarks/replot_theory_issue18.py [OUT_DIR]
(default: in place, docs/figures/cpu). A re-run of the figures makes the real panel (with the centred rho)."""
import csv, math, sys
from pathlib import Path
sys.path.insert(0, "src")
from repalign.results import read_summary
from repalign.report import plots
from repalign.experiments.figures.common import THEORY_COLS

root = Path("docs/figures/cpu")
for fig, key, extra in (("fig3", "num_classes", []), ("fig4", "tau", []), ("fig5", "batch_size", ["lr_rule"])):
    th = read_summary(root / fig / f"{fig}_theory.csv")
    rows = read_summary(root / fig / f"{fig}.csv")
    setting = [key] + extra + (["optimizer"] if fig == "fig5" else [])
    ang = {}
    for r in rows:
        if r.get("kind") == "align" and r.get("split") == "test" and r.get("layer") == "h" and r.get("arm_b") == "nscl":
            k = (r["seed"], r["step"], *(r.get(x) for x in [key] + extra))
            if fig == "fig5":
                continue  # fig5's theory CSV mixes LARS and SGD rows under the same keys (no optimizer column): no join
            ang.setdefault(k, []).append(r["repr_angle_deg"])
    n_join = 0
    for t in th:
        k = (t["seed"], t["step"], *(t.get(x) for x in [key] + extra))
        a = ang.get(k)
        t["cka_cos"] = math.cos(math.radians(a[0])) if a and len(a) == 1 and isinstance(a[0], (int, float)) else None
        n_join += t["cka_cos"] is not None
        t["cka_lower_bound"] = None
        t["bound_status"] = "rho not recorded"
        t["sim_gap_centred_rel"] = None
    print(fig, len(th), "theory rows;", n_join, "joined")
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/figures/cpu") / fig
    out.mkdir(parents=True, exist_ok=True)
    plots.save_figure(plots.plot_theory(th, group_key=key), out / f"{fig}_theory.png")
    cols = THEORY_COLS + (["lr_rule"] if fig == "fig5" else [])
    with open(out / f"{fig}_theory.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in th:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
