"""Issue 20, item 6: the report read as a person reads it — every table downloadable as CSV (data URI
decoding to the table shown), bounded intervals within their range, layer-wise maps included when
present, the weight-gap text true to what is drawn, legends outside the data area."""
from __future__ import annotations

import base64
import csv
import io
import re

import numpy as np
from scipy import stats

from repalign.report import html as rh
from repalign.report import plots, write_report
from test_report import make_run


def _links(page: str) -> list[tuple[str, str]]:
    return re.findall(r'<table>(.*?)</table><p class="csv"><a download="[^"]+" '
                      r'href="data:text/csv;charset=utf-8;base64,([A-Za-z0-9+/=]+)"', page, re.S)


def test_every_table_has_a_csv_link_decoding_to_it(tmp_path):
    page = write_report(make_run(tmp_path / "run")).read_text()
    n_tables = page.count("<table>")
    links = _links(page)
    assert n_tables >= 3 and len(links) == n_tables
    for body, data in links:
        got = list(csv.reader(io.StringIO(base64.b64decode(data).decode("utf-8"))))
        # naive reference: the cells of the table as shown, tags stripped
        rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
        want = [[re.sub(r"<[^>]+>", "", c).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
                 .replace("&quot;", '"').replace("&#x27;", "'").strip()
                 for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)] for r in rows]
        assert got == want
    assert any("nscl" in base64.b64decode(d).decode() for _b, d in links)


def test_cka_interval_within_its_range_for_two_seeds():
    v = [0.40, 0.95]  # two seeds: the t-interval (df = 1, q = 12.7) runs far past 1 and below 0
    m, se = np.mean(v), np.std(v, ddof=1) / np.sqrt(2)
    q = stats.t.ppf(0.975, 1)
    raw_lo, raw_hi = m - q * se, m + q * se
    assert raw_hi > 1 and raw_lo < 0
    lo, hi, clipped = plots.clip_interval("linear_cka", raw_lo, raw_hi)
    assert clipped and (lo, hi) == (0.0, 1.0)
    assert plots.clip_interval("linear_cka", 0.2, 0.9) == (0.2, 0.9, False)
    assert plots.clip_interval("sim_gap", -1.0, 5.0) == (-1.0, 5.0, False)  # unbounded metric untouched
    rows = [{"step": 10, "linear_cka": x} for x in v]
    _xs, mean, blo, bhi, n = plots.aggregate(rows, "step", "linear_cka")
    assert n == 2 and mean[0] == m and 0.0 <= blo[0] <= bhi[0] <= 1.0
    assert "clipped" in rh.CLIP_NOTE and "n < 5" in rh.CLIP_NOTE


def test_layerwise_maps_included_when_present(tmp_path):
    run = make_run(tmp_path / "run")
    page = write_report(run).read_text()
    assert "Layer-wise linear CKA" not in page
    fig, _ax = plots.new_figure()
    plots.save_figure(fig, run / "layerwise_cl_nscl.png")
    page = write_report(run).read_text()
    assert "Layer-wise linear CKA (cl vs nscl" in page and 'alt="layerwise_cl_nscl"' in page


def test_weight_gap_text_says_what_is_drawn():
    class F:
        def __init__(self, resolved):
            self.resolved, self.dense = resolved, False

        def text(self):
            return "exponential phase not resolved by the sampling"

    cap = rh.weight_gap_caption({("cl", "nscl"): F(True), ("cl", "ce"): F(False)})
    assert "Dotted" in cap and "cl–nscl" in cap and "cl–ce" not in cap and "above" in cap and "below" not in cap
    cap = rh.weight_gap_caption({("cl", "ce"): F(False)})
    assert "No dotted fit" in cap and "above" in cap and "below" not in cap
    assert "No weight-gap rows" in rh.weight_gap_caption({})


def test_legends_outside_the_axes():
    rows = [{"kind": "align", "arm_a": "cl", "arm_b": b, "control": c, "split": s, "layer": "h", "epoch": e,
             "step": e * 5, "linear_cka": 0.9, "rsa": 0.8} for b, c in (("nscl", None), ("cl_eps", "chaos"))
            for s in ("train", "test") for e in range(3)]
    fig = plots.plot_alignment(rows)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    r = FigureCanvasAgg(fig).get_renderer()
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None:
            continue
        lb, ab = leg.get_window_extent(r), ax.get_window_extent(r)
        assert lb.x0 >= ab.x1 - 1  # to the right of the data area, never over it
