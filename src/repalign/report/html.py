"""Self-contained HTML report for a run directory, a sweep directory or a ``reproduce`` output.

Everything is embedded: PNGs as ``data:image/png;base64`` URIs, inline CSS, no scripts, no fonts,
no external links — the file opens with no network access. The PNGs are also written next to the
report (``DIR/report/*.png``) so they can be pasted into a paper.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from repalign.errors import PathError
from repalign.report import plots
from repalign.report import reference as ref
from repalign.results import (is_run_dir, last_steps, latest_rows, load_sweep_state, read_config, read_meta, read_rows,
                              read_summary)
from repalign.schema import report_cell, report_columns

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.5em;border-bottom:2px solid #0072B2;padding-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;color:#0072B2}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}
th{background:#eef3f8}td.l,th.l{text-align:left}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#444}
.note{background:#fff8e1;border-left:4px solid #E69F00;padding:.5em .8em;font-size:.9em}
.ctrl{color:#666;font-style:italic}tr.ctrl td{background:#f3f3f3;color:#555}tr.base td{background:#fafafa;color:#555}
.findings{background:#eef6ee;border-left:4px solid #009E73;padding:.4em 1em .4em 1.6em;margin:.6em 0}
.findings li{margin:.3em 0;font-size:.92em}h3{font-size:.95em;margin:1em 0 .2em}.findings h3{font-size:1em;margin:.6em 0 .2em -0.6em;color:#1b5e20}
.v-higher{color:#1b5e20;font-weight:600}.v-lower{color:#b71c1c;font-weight:600}.v-undecided{color:#8d6e00;font-weight:600}
.v-single{color:#333}dl.gloss dt{font-weight:600;margin-top:.4em}dl.gloss dd{margin-left:1.2em;font-size:.9em}
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: ``digits`` significant digits; ±∞ — a float, or the ``"inf"`` string metrics.jsonl
    stores for it (the loss-gap bound of a one-class batch) — as ``∞`` / ``−∞``."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, str) and v.strip().lower() in ("inf", "+inf", "-inf", "infinity", "-infinity"):
        v = float(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def img_tag(png: Path, caption: str = "") -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(Path(png).stem)}" src="data:image/png;base64,{data}">{cap}</figure>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    h = "".join(f'<th class="{"l" if i < left else ""}">{esc(c)}</th>' for i, c in enumerate(header))
    body = []
    for r in rows:
        body.append("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{esc(fmt(c))}</td>'
                                     for i, c in enumerate(r)) + "</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


_TABLE = re.compile(r"<table>(.*?)</table>", re.S)
_ROW = re.compile(r"<tr>(.*?)</tr>", re.S)
_CELL = re.compile(r"<t[hd][^>]*>(.*?)</t[hd]>", re.S)
_TAG = re.compile(r"<[^>]+>")


def table_csv(table_html: str) -> str:
    """The CSV text of one ``<table>`` as shown (header row first; tags stripped, entities unescaped)."""
    import csv
    import html as _html
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in _ROW.findall(table_html):
        w.writerow([_html.unescape(_TAG.sub("", c)).strip() for c in _CELL.findall(row)])
    return buf.getvalue()


def with_csv_links(body: str, stem: str = "table") -> str:
    """Every table of ``body`` followed by a link that downloads it as CSV (a ``data:text/csv`` URI, so
    the page stays one self-contained file; issue 20)."""
    count = [0]

    def add(m: re.Match[str]) -> str:
        count[0] += 1
        data = base64.b64encode(table_csv(m.group(0)).encode("utf-8")).decode("ascii")
        return (f'{m.group(0)}<p class="csv"><a download="{esc(stem)}_{count[0]}.csv" '
                f'href="data:text/csv;charset=utf-8;base64,{data}">download this table as CSV</a></p>')

    return _TABLE.sub(add, body)


def page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A complete HTML document; ``sections`` = ``[(heading, inner html), ...]``; every table gets a
    CSV download link (:func:`with_csv_links`)."""
    parts = [f"<h2>{esc(h)}</h2>\n{body}" if h else body for h, body in sections]
    parts = [with_csv_links("\n".join(parts))]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>\n" + "\n".join(parts) +
            f'<p style="font-size:.75em;color:#777">generated by repalign on {esc(time.strftime("%Y-%m-%d %H:%M"))}'
            "</p></body></html>")


def _read_json(p: Path) -> dict[str, Any]:
    return json.loads(p.read_text()) if p.exists() else {}


def _arm_objectives(cfg: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, spec in (cfg.get("arms") or {}).items():
        if isinstance(spec, Mapping):
            if "objective" in spec:
                out[name] = spec["objective"]
            elif "same_as" in spec and isinstance((cfg.get("arms") or {}).get(spec["same_as"]), Mapping):
                out[name] = cfg["arms"][spec["same_as"]].get("objective", "?")
    return out


def _is_control(cfg: Mapping[str, Any], arm: str) -> bool:
    spec = (cfg.get("arms") or {}).get(arm) or {}
    return isinstance(spec, Mapping) and any(k in spec for k in ("init_seed", "data_seed", "init_perturb"))


def final_align(rows: Sequence[Mapping[str, Any]], split: str, layer: str = "h") -> dict[tuple[str, str], dict[str, Any]]:
    """Last ``align`` row per arm pair for a split/layer."""
    return latest_rows((r for r in rows if r.get("kind") == "align" and r.get("split") == split
                        and r.get("layer", "h") == layer), key=lambda r: (r["arm_a"], r["arm_b"]))


def _final_baseline(rows: Sequence[Mapping[str, Any]], split: str, layer: str) -> Mapping[str, Any] | None:
    return latest_rows((r for r in rows if r.get("kind") == "baseline" and r.get("split") == split
                        and r.get("layer", "h") == layer), key=lambda r: None).get(None)


CONTROL_LABEL = {"chaos": "chaos floor", "noise_data": "noise floor (own data)", "noise_seed": "noise floor (own seed)"}


CONTROL_SHORT = {"chaos": "chaos floor", "noise_data": "noise floor", "noise_seed": "noise floor (seed)"}


def _pair_rows_html(rows: Sequence[Mapping[str, Any]], split: str, layer: str) -> tuple[str, str] | None:
    fin = final_align(rows, split, layer)
    if not fin:
        return None
    cols = report_columns()  # the metric columns, from the one column schema
    entries = []
    for (a, b), r in fin.items():
        kind = r.get("control")
        entries.append(("ctrl" if kind else "", r.get("linear_cka") or 0.0, [
            f"{a}–{b}", CONTROL_SHORT.get(kind, kind) if kind else "objective",
            *(report_cell(r, part, m) for _h, part, m, _d in cols)]))
    u = _final_baseline(rows, split, layer)
    if u is not None:
        entries.append(("base", u.get("linear_cka") or 0.0, [
            "untrained–untrained", "baseline", *(report_cell(u, part, m, baseline=True) for _h, part, m, _d in cols)]))
    entries.sort(key=lambda e: -e[1])
    header = ["pair", "role", *(h for h, _p, _m, _d in cols)]
    digits = [3, 3, *(d for _h, _p, _m, d in cols)]
    h = "".join(f'<th class="{"l" if i < 2 else ""}">{esc(c)}</th>' for i, c in enumerate(header))
    trs = []
    for cls, _v, cells in entries:
        tds = "".join(f'<td class="{"l" if i < 2 else ""}">'
                      f'{esc(fmt(c, digits[i]) if isinstance(c, float) else fmt(c))}</td>' for i, c in enumerate(cells))
        trs.append(f'<tr class="{cls}">{tds}</tr>')
    any_row = next(iter(fin.values()))
    when = f"step {any_row['step']}, epoch {any_row['epoch']}"
    return when, f"<table><tr>{h}</tr>{''.join(trs)}</table>"


def pair_table(rows: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any]) -> str:
    """Final alignment of every pair with its baselines, per layer (test split first; train split
    folded): value, value relative to the untrained baseline, margins over the chaos and noise floors;
    controls and the baseline are shaded reference rows, sorted into the order by linear CKA."""
    parts = []
    for layer in ("h", "z"):
        for split in ("test", "train"):
            got = _pair_rows_html(rows, split, layer)
            if got is None:
                continue
            when, t = got
            title = f"{split} split, layer {layer} — final evaluation ({when})"
            parts.append(f"<h3>{esc(title)}</h3>{t}" if split == "test"
                         else f"<details><summary>{esc(title)}</summary>{t}</details>")
    if not parts:
        return "<p>No alignment rows (evaluation disabled?).</p>"
    return ("".join(parts) + "<p style='font-size:.8em;color:#555'>Rows sorted by linear CKA; shaded rows are "
            "references (controls, untrained baseline). Columns are explained under <em>Column legend</em>.</p>")


def weight_gap_caption(fits: Mapping[tuple[str, str], Any]) -> str:
    """The weight-gap figure's caption, true to what is drawn: the dotted fits when some resolved, else
    why none is (the fitted rates and statuses are in the section "Weight-gap growth", above the figures)."""
    head = ("Weight gap between the reference arm and each other arm against the optimiser step (log y), next to "
            "the representation alignment; controls grey, dashed, shaded as in every panel.")
    ok = [f"{a}–{b}" for (a, b), f in fits.items() if f is not None and f.resolved]
    if ok:
        return head + (f" Dotted: the exponential-phase fit over its window for {', '.join(ok)} (rates in the "
                       "section Weight-gap growth above).")
    if not fits:
        return head + " No weight-gap rows, so no exponential-phase fit."
    return head + (" No dotted fit: no pair's exponential phase was resolved (why, per pair: section Weight-gap "
                   "growth above).")


#: The note under a table whose bounded intervals were clipped (issue 20; docs/report.md).
CLIP_NOTE = ("† The 95 % Student-t interval crossed the metric's range (linear CKA lies in [0, 1]) and is shown "
             "clipped to it. With few seeds (n < 5) the symmetric t-interval is wide and unreliable near a bound: "
             "read it as 'not decided', and add seeds to narrow it.")


def growth_table(fits: Mapping[tuple[str, str], Any]) -> str:
    """Exponential-phase fits of the weight gap, one row per pair (see repalign.analysis.growth)."""
    out = []
    for (a, b), f in fits.items():
        if f is None:
            out.append([f"{a}–{b}", None, None, "—", None, "too few points"])
            continue
        status = "exponential phase" if f.resolved else ("no exponential phase" if f.dense else "not resolved")
        out.append([f"{a}–{b}", f.rate_per_step if f.resolved else None,
                    f.rate_per_epoch if f.resolved else None, f"{f.start_step:g}–{f.end_step:g} ({f.n_points} pts)",
                    f.r2, status + (", then saturates" if f.resolved and f.saturates else "")])
    if not out:
        return ""
    why = "".join(f"<li>{esc(a)}–{esc(b)}: {esc(f.text())}</li>" for (a, b), f in fits.items()
                  if f is not None and not f.resolved)
    return (table(["pair", "rate / step", "rate / epoch", "fitted window (steps)", "R²", "status"], out)
            + (f"<p>Why a fit is not drawn:</p><ul>{why}</ul>" if why else "")
            + "<p style='font-size:.8em;color:#555'>Window rule: start with the first 3 points with a positive gap; "
              "extend while no two successive points fall more than 20 % below the window's exponential fit. "
              "Resolved: ≥ 4 points, positive rate, R² ≥ 0.9. 'No exponential phase': sampled every step, yet the "
              "log-gap bends from the start.</p>")


GLOSSARY = [
    ("linear CKA", "Centred kernel alignment of the two arms' features on the same N evaluation images "
                   "(Kornblith et al. 2019): 1 = identical up to rotation and scale; unitless."),
    ("CKA rel. untrained", "(v − u)/(1 − u) with u the CKA between two untrained models of this architecture on "
                           "the same data: 0 = no more aligned than two random networks, 1 = identical."),
    ("CKA − chaos floor", "This pair's CKA minus the CKA between the reference arm and its chaos-floor twin "
                          "(init_perturb: same arm, same batches and views, initial weights perturbed by a relative "
                          "ε). Positive: the objective keeps the representation closer than training noise alone does."),
    ("CKA − noise floor", "The same margin against the noise-floor twin (data_seed: own batches and augmentations; "
                          "init_seed: also its own initialisation)."),
    ("RSA", "Pearson correlation of the two representational dissimilarity matrices (1 − cosine similarity "
            "between every pair of evaluation images)."),
    ("sim gap", "‖Σ_a − Σ_b‖_F: Frobenius norm of the difference of the two N×N cosine-similarity matrices "
                "(the quantity the paper's bound controls)."),
    ("ρ", "Relative similarity gap ‖Σ_a − Σ_b‖_F / ‖Σ_b‖_F (uncentred). Not the ρ of the paper's Cor. 1: that one is "
          "centred, ‖H(Σ_a − Σ_b)H‖_F / ‖HΣ_bH‖_F, and bounds the cosine-kernel CKA ≥ (1 − ρ)/(1 + ρ) — a bound only "
          "where ρ < 1 (theory overlay)."),
    ("weight gap", "Mean over encoder weight tensors of ‖W_a − W_b‖_F / ‖W_a‖_F (conv/linear weights and BN γ)."),
    ("weight angle / repr angle", "Angle (degrees) between the two arms' flattened encoder weights / between "
                                  "their centred Gram matrices (arccos of CKA-like cosine)."),
    ("layer h / z", "h: encoder output (what the paper compares); z: projector output L2-normalised, i.e. the "
                    "embedding the contrastive losses act on."),
    ("step (epoch)", "Optimiser steps done at the evaluation, and the corresponding (possibly fractional) epoch."),
]


def glossary() -> str:
    return "<dl class='gloss'>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in GLOSSARY) + "</dl>"


def findings_html(groups: Sequence[tuple[str, Sequence[Any]]], extra: Sequence[str] = ()) -> str:
    """The Findings section: one list item per sentence, verdict words coloured; ``groups`` from
    :func:`repalign.analysis.findings`."""
    parts = []
    for label, fs in groups:
        if not fs:
            continue
        items = []
        for f in fs:
            cls = f" class='v-{f.verdict}'" if f.verdict else ""
            items.append(f"<li><span{cls}>{esc(f.text)}</span></li>")
        head = f"<h3>{esc(label)}</h3>" if label else ""
        parts.append(head + "<ul>" + "".join(items) + "</ul>")
    parts += [f"<p>{esc(e)}</p>" for e in extra]
    if not parts:
        return "<p>No alignment rows to draw findings from (evaluation disabled?).</p>"
    return "<div class='findings'>" + "".join(parts) + "</div>"


def paper_section(rows: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any]) -> str:
    """The paper's published Fig 2 values for the objective pairs present, in their own table,
    labelled with the paper's dataset, model and epoch — never beside a short CPU run's numbers."""
    objs = _arm_objectives(cfg)
    pairs = sorted({(r["arm_a"], r["arm_b"]) for r in rows if r.get("kind") == "align" and not r.get("control")})
    out = []
    for a, b in pairs:
        refpair = f"{objs.get(a, a)}/{objs.get(b, b)}"
        for metric in ("linear_cka", "rsa"):
            for split in ("train", "test"):
                vals = ref.lookup("fig2", metric, split, pair=refpair, epoch=1200)
                for ds, v in (vals or {}).items():
                    out.append([f"{a} vs {b} ({refpair})", ref.DATASET_NAMES.get(ds, ds), "ResNet-50", 1200, split,
                                metric.replace("_", " "), v])
    if not out:
        return "<p>The paper publishes no values for these pairs.</p>"
    return (table(["our pair (objectives)", "paper dataset", "paper model", "paper epoch", "split", "metric",
                   "paper value (≈, read off Fig 2)"], out, left=2)
            + "<p class='note'>From arXiv 2510.08852, Fig 2 (τ = 0.1, ≈ 1,200 epochs of ResNet-50). Different "
              "dataset, model and training length from this run: compare orderings and trends, not values.</p>")


def arm_table(rows: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    last_loss: dict[str, Mapping[str, Any]] = {}
    knn: dict[str, float] = {}
    for r in rows:
        if r.get("kind") == "train":
            last_loss[r["arm"]] = r
        elif r.get("kind") == "eval" and "knn_acc" in r:
            knn[r["arm"]] = r["knn_acc"]
    arms_meta = meta.get("arms") or {}
    out = []
    for name in (cfg.get("arms") or last_loss):
        m = arms_meta.get(name, {})
        ctrl = []
        if m.get("init_seed") is not None:
            ctrl.append(f"init_seed={m['init_seed']}")
        if m.get("data_seed") is not None:
            ctrl.append(f"data_seed={m['data_seed']}")
        if m.get("init_perturb") is not None:
            ctrl.append(f"init_perturb={m['init_perturb']:g} (chaos floor of {m.get('same_as')})")
        out.append([name, m.get("objective", _arm_objectives(cfg).get(name, "?")),
                    ", ".join(f"{k}={v}" for k, v in (m.get("overrides") or {}).items()) or "—",
                    "; ".join(ctrl) or "shared", m.get("shares_all_initial_weights", "?"),
                    m.get("peak_lr"), (last_loss.get(name) or {}).get("loss"), knn.get(name)])
    return table(["arm", "objective", "overrides", "randomness", "shares all init weights", "peak lr",
                  "last train loss", "last kNN acc"], out)


def provenance(cfg: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    vers = meta.get("versions") or {}
    items = [("git revision", meta.get("git_revision")), ("started", meta.get("started")),
             ("command", " ".join(meta.get("argv") or [])), ("world size", meta.get("world_size")),
             ("device", meta.get("device")), ("seed", meta.get("seed", cfg.get("seed"))),
             ("classes", meta.get("num_classes")), ("train / test size",
                                                     f"{meta.get('train_size')} / {meta.get('test_size')}"),
             ("steps per epoch", meta.get("steps_per_epoch"))] + [(k, v) for k, v in vers.items()]
    t = table(["item", "value"], [(k, v) for k, v in items if v is not None], left=2)
    return t + f"<details><summary>resolved config.yaml</summary><pre>{esc(yaml.safe_dump(dict(cfg), sort_keys=False))}</pre></details>"


def _emit(fig: Any, out_dir: Path, name: str) -> Path:
    import matplotlib.pyplot as plt  # noqa: F401  (Agg selected by plots)

    p = plots.save_figure(fig, out_dir / f"{name}.png")
    return p


def _atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text under a temp name, then rename. A path that is not valid UTF-8 (a directory
    named with bytes such as ``b"run\\xff"``, which Python holds as surrogate escapes) is shown with
    U+FFFD for each bad byte instead of failing the whole report."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(displayable(text), encoding="utf-8")
    tmp.replace(path)


def displayable(text: str) -> str:
    """``text`` encodable as UTF-8: the surrogate escapes of undecodable bytes (a non-UTF-8 file name)
    become U+FFFD, one per byte; any other lone surrogate too."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def run_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Report of one run directory → ``out_dir/report.html`` (default ``RUN_DIR/report/``)."""
    from repalign.analysis import findings
    from repalign.analysis.theory import THEORY_NOTE, theory_rows

    d = Path(run_dir)
    if not is_run_dir(d):
        raise PathError(f"run_dir {str(d)!r} holds no metrics.jsonl (not a run directory)")
    out = Path(out_dir) if out_dir is not None else d / "report"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    cfg, meta, rows = read_config(d), read_meta(d), read_rows(d)
    align = [r for r in rows if r.get("kind") in ("align", "baseline")]
    figs: list[tuple[str, str, Any]] = [
        ("alignment", "Alignment between arm pairs over training, layer h (encoder output): train (solid) and test "
                      "(dashed) split. Grey dashed with shading: control pairs (chaos / noise floor); dotted black: "
                      "untrained baseline.", plots.plot_alignment(align)),
    ]
    if any(r.get("layer") == "z" for r in align):
        figs.append(("alignment_z", "The same for layer z (projector output, L2-normalised as the loss sees it).",
                     plots.plot_alignment(align, layer="z")))
    fits = plots.weight_growth_fits(rows)
    figs += [
        ("weight_gap", weight_gap_caption(fits), plots.plot_weight_gap(rows)),
        ("angles", "Weight-space vs representation-space angle (Fig 1 of the paper).", plots.plot_angles(align)),
        ("loss_gap", "Per-batch loss gap L_DCL − L_NSCL of each CL arm against its bound over steps.",
         plots.plot_loss_gap(rows)),
        ("train_loss", "Per-arm training loss.", plots.plot_train_loss(rows)),
        ("knn", "kNN accuracy per arm (test split).", plots.plot_knn(rows)),
    ]
    th: list[dict[str, Any]] = []
    theory_caption = ("Similarity gap with the main bound's shape (normalised at the first evaluation after step 0; "
                      "constants unknown, so trend only), and Cor. 1: the cosine-kernel CKA with (1 − ρ)/(1 + ρ), ρ the "
                      "centred relative gap ‖H(Σ_a − Σ_b)H‖_F / ‖HΣ_bH‖_F, drawn only where ρ < 1 (vacuous elsewhere).")
    try:
        th = theory_rows(rows, cfg, meta) if [r for r in align if r.get("kind") == "align"] and cfg else []
    except (ValueError, KeyError) as e:  # incomplete config/meta: report without the overlay
        th = []
        figs.append(("theory", f"Theory overlay unavailable: {e}", plots.plot_theory([])))
    if th:
        figs.append(("theory", theory_caption, plots.plot_theory(th)))
    imgs = []
    for name, cap, fig in figs:
        imgs.append(img_tag(_emit(fig, out, name), cap))
    for lw in sorted(d.glob("layerwise_*.png")):  # written by `repalign align --layerwise`
        imgs.append(img_tag(lw, f"Layer-wise linear CKA ({lw.stem[len('layerwise_'):].replace('_', ' vs ', 1)}, "
                                "block by block, last checkpoint, test split; repalign align --layerwise; numbers "
                                f"in {lw.stem}.csv)."))
    name = cfg.get("name") or d.name
    seed = meta.get("seed", cfg.get("seed"))
    fnd = findings([dict(r, seed=seed) for r in align])
    extra = ["One run is one seed: the margins above have no confidence interval. For uncertainty, run the same "
             "config over seeds (repalign sweep CONFIG seed=[0,1,2,3]); its report states the intervals."]
    sections = [
        ("", f"<p>Run directory <code>{esc(d.resolve())}</code>. Coupled arms share initial weights, mini-batches "
             f"and augmented views unless marked as a control (own <code>init_seed</code>/<code>data_seed</code>, or "
             f"perturbed initial weights <code>init_perturb</code>).</p>"),
        ("Findings", findings_html(fnd, extra)),
        ("Final alignment with baselines", pair_table(rows, cfg)),
        ("Weight-gap growth", growth_table(fits) or "<p>No weight-gap rows.</p>"),
        ("Arms", arm_table(rows, cfg, meta)),
        ("Figures", "\n".join(imgs)),
        ("Theory overlay", f"<p class='note'>{esc(THEORY_NOTE)}</p>" if th else "<p>No theory overlay for this run.</p>"),
        ("Column legend", glossary()),
        ("Published values (the paper, for orientation)", paper_section(rows, cfg)),
        ("Provenance", provenance(cfg, meta)),
    ]
    path = out / "report.html"
    _atomic_write_text(path, page(f"repalign report — {name}", sections))
    return path


def sweep_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Report of a sweep directory (``summary.csv`` + ``points/``) → ``SWEEP/report/report.html``:
    Findings per condition (seeds pooled, with 95 % intervals), final values with CIs, figures with
    mean ± CI bands, controls shaded."""
    from repalign.analysis import findings, summarize

    d = Path(sweep_dir)
    out = Path(out_dir) if out_dir is not None else d / "report"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    state = load_sweep_state(d)
    keys = list(state.get("grid_keys", []))
    rows = read_summary(d / "summary.csv") if (d / "summary.csv").exists() else []
    align = [r for r in rows if r.get("kind") in ("align", "baseline")]
    varying = [c for c in keys if c != "seed"]
    from repalign.analysis.aggregate import check_one_config

    check_one_config(rows, varying, f"report {str(d)!r}")  # seeds of different configs are never pooled (issue 17)
    group = varying[0] if len(varying) == 1 else ("condition" if varying else None)
    if group == "condition":
        for r in align:
            r["condition"] = ",".join(f"{k.split('.')[-1]}={r.get(k)}" for k in varying)
    imgs = []
    pairs = plots._pairs_of([r for r in align if r.get("kind") == "align"])
    for a, b in pairs:
        sel = [r for r in align if r.get("kind") == "baseline" or (r.get("arm_a"), r.get("arm_b")) == (a, b)]
        fig = plots.plot_alignment(sel, group_key=group, title=f"{a} vs {b}")
        imgs.append(img_tag(_emit(fig, out, f"alignment_{a}_vs_{b}"), f"{a} vs {b} per {group or 'run'}; "
                            "mean and 95 % CI band over seeds (n in the legend); dotted: untrained baseline."))
    if align:
        imgs.append(img_tag(_emit(plots.plot_weight_gap(rows), out, "weight_gap"),
                            "Weight gap (all conditions pooled per pair) with the exponential-phase fit."))
    # final values per condition × pair (test split, layer h): mean [95 % CI] over seeds
    fin = []
    last_step = last_steps((r for r in align if r.get("kind") == "align"),
                           key=lambda r: tuple(r.get(c) for c in varying) + (r.get("seed"),))
    from repalign.analysis.aggregate import put_seed

    cells: dict[tuple, dict[Any, float]] = {}  # per cell {seed: value}: n counts seeds, never rows
    for r in align:
        if r.get("split") != "test" or r.get("layer", "h") != "h" or r.get("linear_cka") is None:
            continue
        if r["step"] != last_step.get(tuple(r.get(c) for c in varying) + (r.get("seed"),)):
            continue
        pair = f"{r['arm_a']} vs {r['arm_b']}" if r.get("kind") == "align" else "untrained baseline"
        role = (CONTROL_LABEL.get(r.get("control"), "objective") if r.get("kind") == "align" else "reference")
        k = tuple(r.get(c) for c in varying) + (pair, role)
        put_seed(cells.setdefault(k, {}), r.get("seed"), float(r["linear_cka"]),
                 f"report {str(d)!r}: final linear CKA of {', '.join(map(str, k))}")
    clipped_any = False
    for k, by_seed in cells.items():
        sm = summarize(list(by_seed.values()))
        lo, hi, clipped = plots.clip_interval("linear_cka", sm.lo, sm.hi)
        clipped_any |= clipped
        txt = (f"{sm.mean:.3f} [{lo:.3f}, {hi:.3f}]†" if clipped else sm.text())
        fin.append([*k, txt, sm.n])
    fnd = findings(rows, group_keys=varying)
    spec_txt = esc(yaml.safe_dump(state.get("spec", {}), sort_keys=False))
    sections = [
        ("", f"<p>Sweep directory <code>{esc(d.resolve())}</code>: {len(state.get('points', []))} points, "
             f"{sum(1 for p in state.get('points', []) if p.get('done'))} finished. Seed aggregation: "
             f"<code>aggregate.csv</code> (mean, std, n, 95 % CI), paired comparisons: <code>comparisons.csv</code>.</p>"),
        ("Findings", findings_html(fnd)),
        ("Final linear CKA per condition (test split, layer h; mean [95 % CI] over seeds)",
         table(varying + ["pair", "role", "linear CKA", "n"], fin, left=len(varying) + 2)
         + (f"<p class='note'>{esc(CLIP_NOTE)}</p>" if clipped_any else "")
         if fin else "<p>No finished points yet.</p>"),
        ("Figures", "\n".join(imgs) or "<p>No alignment rows.</p>"),
        ("Column legend", glossary()),
        ("Sweep spec", f"<pre>{spec_txt}</pre>"),
    ]
    path = out / "report.html"
    _atomic_write_text(path, page(f"repalign sweep report — {d.name}", sections))
    return path


def manifest_report(out_dir: str | Path) -> Path:
    """Report of a ``repalign reproduce`` output (``reproduce.json`` manifest listing its PNGs):
    Findings first, then our tables, figures, notes, the paper's values in their own section, settings."""
    from repalign.analysis.findings import Finding

    d = Path(out_dir)
    man = _read_json(d / "reproduce.json")
    imgs = [img_tag(d / p["file"], p.get("caption", "")) for p in man.get("figures", []) if (d / p["file"]).exists()]
    sections: list[tuple[str, str]] = [("", f"<p>{esc(man.get('description', ''))}</p>")]
    fnd = [(g["label"], [Finding(f["text"], f.get("kind", ""), f.get("verdict")) for f in g["items"]])
           for g in man.get("findings", [])]
    sections.append(("Findings", findings_html(fnd)))
    paper_tables = []
    for t in man.get("tables", []):
        html_t = table(t["header"], t["rows"]) + (f"<p class='note'>{esc(t['note'])}</p>" if t.get("note") else "")
        if t.get("paper"):
            paper_tables.append((t["title"], html_t))
        else:
            sections.append((t["title"], html_t))
    sections.append(("Figures", "\n".join(imgs)))
    for n in man.get("notes", []):
        sections.append(("", f"<p class='note'>{esc(n)}</p>"))
    sections.append(("Column legend", glossary()))
    for title, html_t in paper_tables:
        sections.append((f"Published values — {title}", html_t))
    sections.append(("Settings", f"<pre>{esc(yaml.safe_dump(man.get('settings', {}), sort_keys=False))}</pre>"))
    path = d / "report.html"
    _atomic_write_text(path, page(man.get("title", f"repalign reproduce — {d.name}"), sections))
    return path


def write_report(path: str | Path) -> Path:
    """Write the report of a run directory, a sweep directory or a reproduce output; return report.html."""
    d = Path(path)
    if not d.exists():
        raise PathError(f"report path {str(d)!r} does not exist (give a run directory, a sweep directory or a "
                        "reproduce output)")
    if not d.is_dir():
        raise PathError(f"report path {str(d)!r} is not a directory")
    if (d / "reproduce.json").exists():
        return manifest_report(d)
    from repalign.training.rundir import write_locked_output  # one writer; a failure keeps the old report/

    if is_run_dir(d):
        return write_locked_output(d, "report", run_report)
    if (d / "sweep.json").exists() or (d / "summary.csv").exists() or (d / "points").is_dir():
        return write_locked_output(d, "report", sweep_report)
    raise PathError(f"report path {str(d)!r} is neither a run directory (metrics.jsonl), a sweep directory "
                     "(sweep.json / summary.csv) nor a reproduce output (reproduce.json)")
