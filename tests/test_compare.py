"""repalign.compare / repalign compare: values against independent N×N computations written here."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import repalign
from repalign.compare import compare

torchvision = pytest.importorskip("torchvision")


# ---------------------------------------------------------------------------------------------
# naive references (N×N, float64, written from the definitions)
# ---------------------------------------------------------------------------------------------
def naive_pool(t: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "avg" and t.dim() == 4:
        return t.mean(dim=(2, 3))
    return t.reshape(t.shape[0], -1)


def naive_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    X, Y = X.double(), Y.double()
    n = X.shape[0]
    H = torch.eye(n, dtype=torch.float64) - 1.0 / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return float((K * L).sum() / (K.norm() * L.norm()))


def naive_hsic1(K: torch.Tensor, L: torch.Tensor) -> float:
    """Song et al.'s unbiased HSIC, elementwise from its definition (zero diagonals)."""
    n = K.shape[0]
    K, L = K.clone().fill_diagonal_(0), L.clone().fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=torch.float64)
    t = torch.trace(K @ L) + float(one.T @ K @ one) * float(one.T @ L @ one) / ((n - 1) * (n - 2)) \
        - 2.0 / (n - 2) * float(one.T @ K @ L @ one)
    return float(t / (n * (n - 3)))


def naive_debiased_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    X, Y = X.double(), Y.double()
    K, L = X @ X.T, Y @ Y.T
    return naive_hsic1(K, L) / math.sqrt(naive_hsic1(K, K) * naive_hsic1(L, L))


def naive_rsa(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Pearson r between the upper triangles of the cosine RDMs."""
    def rdm(Z):
        Z = Z.double()
        Z = Z / Z.norm(dim=1, keepdim=True)
        D = 1 - Z @ Z.T
        i, j = torch.triu_indices(Z.shape[0], Z.shape[0], 1)
        return D[i, j]
    a, b = rdm(X), rdm(Y)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def naive_minibatch_cka(batches_x: list[torch.Tensor], batches_y: list[torch.Tensor]) -> float:
    xy = xx = yy = 0.0
    for X, Y in zip(batches_x, batches_y):
        K, L = X.double().flatten(1) @ X.double().flatten(1).T, Y.double().flatten(1) @ Y.double().flatten(1).T
        xy += naive_hsic1(K, L)
        xx += naive_hsic1(K, K)
        yy += naive_hsic1(L, L)
    return xy / math.sqrt(xx * yy)


def features_of(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Layer outputs by plain hooks (independent of repalign's capture)."""
    out: dict[str, torch.Tensor] = {}
    hs = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o.detach()))
          for n in names]
    try:
        with torch.no_grad():
            model.eval()
            model(x)
    finally:
        for h in hs:
            h.remove()
    return out


def small_net(seed: int, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1),
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 5)).to(dtype)


LAYERS = ["0", "1", "2", "4"]


@pytest.fixture(scope="module")
def data64():
    g = torch.Generator().manual_seed(3)
    return torch.randn(64, 3, 8, 8, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["flatten", "avg"])
@pytest.mark.parametrize("method", ["moments", "gram"])
def test_values_equal_naive_nxn(data64, pool, method):
    a, b = small_net(0), small_net(1)
    c = compare(a, b, data64, layers_a=LAYERS, layers_b=LAYERS, metrics=("linear_cka", "debiased_cka", "rsa"),
                pool=pool, batch_size=24, progress=False, method=method)
    fa, fb = features_of(a, data64, LAYERS), features_of(b, data64, LAYERS)
    assert c.names_a == LAYERS and c.n == 64
    for i, na in enumerate(LAYERS):
        for j, nb in enumerate(LAYERS):
            X, Y = naive_pool(fa[na], pool), naive_pool(fb[nb], pool)
            assert c.matrix("linear_cka")[i, j] == pytest.approx(naive_cka(X, Y), abs=1e-6)
            assert c.matrix("debiased_cka")[i, j] == pytest.approx(naive_debiased_cka(X, Y), abs=1e-6)
            assert c.matrix("rsa")[i, j] == pytest.approx(naive_rsa(X, Y), abs=1e-6)
    assert {r["n"] for r in c.rows} == {64}
    assert set(c.rows[0]) >= {"layer_a", "layer_b", "metric", "value", "ci_low", "ci_high", "n"}


def test_top_level_export():
    """``repalign.compare`` is callable (the subpackage is callable) and exports the result type."""
    a = nn.Linear(4, 3).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    c = repalign.compare(a, a, x, layers_a=["output"], layers_b=["output"], progress=False)
    assert isinstance(c, repalign.Comparison) and c.matrix("linear_cka")[0, 0] == pytest.approx(1.0)
    assert repalign.compare.compare is compare


def test_pools_differ_and_none_refuses(data64):
    a, b = small_net(0), small_net(1)
    f = compare(a, b, data64, layers_a=["2"], layers_b=["2"], pool="flatten", metrics=("linear_cka",), progress=False)
    v = compare(a, b, data64, layers_a=["2"], layers_b=["2"], pool="avg", metrics=("linear_cka",), progress=False)
    assert abs(f.matrix("linear_cka")[0, 0] - v.matrix("linear_cka")[0, 0]) > 1e-3
    with pytest.raises(ValueError, match="pool='none'.*'2'|layer '2'"):
        compare(a, b, data64, layers_a=["2"], layers_b=["2"], pool="none", progress=False)
    ok = compare(a, b, data64, layers_a=["4"], layers_b=["4"], pool="none", metrics=("linear_cka",), progress=False)
    assert ok.matrix("linear_cka")[0, 0] == pytest.approx(f.matrix("linear_cka")[0, 0] * 0 + naive_cka(
        features_of(a, data64, ["4"])["4"], features_of(b, data64, ["4"])["4"]), abs=1e-9)


def test_symmetric_when_a_is_b(data64):
    a = small_net(0)
    c = compare(a, a, data64, layers_a=LAYERS, layers_b=LAYERS, metrics=("linear_cka", "rsa", "debiased_cka"),
                progress=False)
    for m in c.metrics:
        M = c.matrix(m)
        assert np.array_equal(M, M.T)
        assert np.allclose(np.diag(M), 1.0, atol=1e-9)


def test_minibatch_cka_equals_naive_and_torch_cka():
    a, b = small_net(0, torch.float32), small_net(1, torch.float32)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(48, 3, 8, 8, generator=g)
    y = torch.arange(48)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)
    c = compare(a, b, loader, layers_a=LAYERS, layers_b=LAYERS, metrics=("minibatch_cka", "linear_cka"), progress=False)
    fa = [features_of(a, x[k:k + 16], LAYERS) for k in range(0, 48, 16)]
    fb = [features_of(b, x[k:k + 16], LAYERS) for k in range(0, 48, 16)]
    for i, na in enumerate(LAYERS):
        for j, nb in enumerate(LAYERS):
            ref = naive_minibatch_cka([f[na] for f in fa], [f[nb] for f in fb])
            assert c.matrix("minibatch_cka")[i, j] == pytest.approx(ref, abs=1e-6)
    tc = pytest.importorskip("torch_cka", reason="torch-cka not installed (pip install torch-cka)")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tc.CKA(a, b, model1_name="a", model2_name="b", model1_layers=LAYERS, model2_layers=LAYERS, device="cpu")
        ref.compare(loader)
    theirs = ref.export()["CKA"].double().numpy()
    # torch_cka registers hooks in named_modules() order, which is our LAYERS order here; float32 sums
    assert np.allclose(c.matrix("minibatch_cka"), theirs, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# data forms, hooks, modes
# ---------------------------------------------------------------------------------------------
def test_dict_and_tuple_batches_give_the_same(data64):
    a, b = small_net(0), small_net(1)
    y = torch.arange(64)
    ref = compare(a, b, data64, layers_a=LAYERS, layers_b=LAYERS, progress=False, batch_size=16)
    tup = [(data64[k:k + 16], y[k:k + 16]) for k in range(0, 64, 16)]
    dic = [{"label": y[k:k + 16], "pixels": data64[k:k + 16]} for k in range(0, 64, 16)]
    c1 = compare(a, b, tup, layers_a=LAYERS, layers_b=LAYERS, progress=False)
    c2 = compare(a, b, dic, layers_a=LAYERS, layers_b=LAYERS, progress=False, input_key="pixels")
    ds = torch.utils.data.TensorDataset(data64, y)
    c3 = compare(a, b, ds, layers_a=LAYERS, layers_b=LAYERS, progress=False, batch_size=10)
    for c in (c1, c2, c3):
        for m in ref.metrics:
            assert np.allclose(c.matrix(m), ref.matrix(m), atol=1e-10)
    with pytest.raises(ValueError, match="input_key|keys: label, pixels"):
        compare(a, b, dic, layers_a=LAYERS, layers_b=LAYERS, progress=False)
    # data_b: same samples in another order is refused (labels checked)
    shuffled = [(data64[k:k + 16], y.flip(0)[k:k + 16]) for k in range(0, 64, 16)]
    with pytest.raises(ValueError, match="same order"):
        compare(a, b, tup, data_b=shuffled, layers_a=LAYERS, layers_b=LAYERS, progress=False)
    c4 = compare(a, b, tup, data_b=list(tup), layers_a=LAYERS, layers_b=LAYERS, progress=False)
    assert np.allclose(c4.matrix("linear_cka"), ref.matrix("linear_cka"), atol=1e-10)
    c5 = compare(a, b, data64, layers_a=LAYERS, layers_b=LAYERS, progress=False, max_samples=40)
    assert c5.n == 40


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.lin(x)
        if self.calls == 2:
            raise RuntimeError("boom")
        return h


def test_hooks_removed_and_modes_restored_after_exception():
    a, b = Boom(), nn.Sequential(nn.Linear(4, 3))
    a.train()
    b.eval()
    with pytest.raises(RuntimeError, match="boom"):
        compare(a, b, torch.randn(40, 4), layers_a=["lin"], layers_b=["0"], batch_size=10, progress=False)
    for m in list(a.modules()) + list(b.modules()):
        assert not m._forward_hooks
    assert a.training and not b.training
    with pytest.raises(ValueError, match=r"no layer 'lim'; closest: lin$"):
        compare(a, b, torch.randn(8, 4), layers_a=["lim"], progress=False)


def test_auto_layers_resnet18_and_graph_nodes():
    a, b = torchvision.models.resnet18(weights=None), torchvision.models.resnet18(weights=None)
    x = torch.randn(12, 3, 16, 16)
    c = compare(a, b, x, metrics=("linear_cka",), progress=False, pool="avg")
    # top-level children with parameters; 'output' is fc's own tensor, so it is not repeated
    assert c.names_a == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    g = compare(a, b, x, layers_a=["layer1.0.add", "layer4"], layers_b=["layer1"], metrics=("linear_cka",),
                progress=False, pool="avg")
    assert g.names_a == ["layer1.0.add", "layer4"]
    f4, f1 = features_of(a, x, ["layer4"])["layer4"], features_of(b, x, ["layer1"])["layer1"]
    assert g.matrix("linear_cka")[1, 0] == pytest.approx(naive_cka(naive_pool(f4, "avg"), naive_pool(f1, "avg")), abs=1e-5)
    assert 0 < g.matrix("linear_cka")[0, 0] <= 1


# ---------------------------------------------------------------------------------------------
# uncertainty
# ---------------------------------------------------------------------------------------------
def test_bootstrap_reproducible_and_contains_point():
    # a moderately aligned pair (B = A with perturbed weights) and N ≫ d: the regime where the
    # percentile interval is centred (near CKA = 0 or with d ≳ N, resampled duplicates inflate the
    # resampled values and compare() warns that a point lies outside its interval)
    a, b = small_net(0), small_net(0)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype))
    g = torch.Generator().manual_seed(9)
    x = torch.randn(160, 3, 8, 8, generator=g, dtype=torch.float64)
    kw = dict(layers_a=["2", "4"], layers_b=["2", "4"],
              metrics=("linear_cka", "debiased_cka", "rsa", "rbf_cka", "minibatch_cka"),
              pool="avg", progress=False, ci="bootstrap", n_boot=60, batch_size=32)
    c1 = compare(a, b, x, seed=4, **kw)
    c2 = compare(a, b, x, seed=4, **kw)
    c3 = compare(a, b, x, seed=5, **kw)
    assert c1.rows == c2.rows
    assert any(r1["ci_low"] != r3["ci_low"] for r1, r3 in zip(c1.rows, c3.rows))
    for r in c1.rows:
        assert r["ci_low"] <= r["value"] <= r["ci_high"], r
        assert r["ci_low"] < r["ci_high"]
    # the Gram-path point value is the streamed exact one
    p = compare(a, b, x, **{**kw, "ci": None, "metrics": ("linear_cka", "rsa", "rbf_cka")})
    for m in p.metrics:
        assert np.allclose(c1.matrix(m), p.matrix(m), atol=1e-10)


def test_bootstrap_wide_features_small_n_contains_point():
    """d ≫ N (flattened conv maps, N = 48): the copy pairs of a resample are left out, so the
    resampled CKA/RSA are not inflated and the interval holds the point value."""
    a, b = small_net(0), small_net(1)
    x = torch.randn(48, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with _no_warning():
        c = compare(a, b, x, layers_a=["0", "2"], layers_b=["0", "2"], metrics=("linear_cka", "rsa", "rbf_cka"),
                    progress=False, ci="bootstrap", n_boot=100)
    for r in c.rows:
        assert r["ci_low"] <= r["value"] <= r["ci_high"], r


def test_weighted_resample_stats_match_a_copy_free_resample():
    """The weighted statistics equal sums over a materialised resample with copy pairs removed."""
    from repalign.compare.engine import weighted_stats
    from repalign.metrics.moments import gram_matrix

    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(20, 7, generator=g, dtype=torch.float64), torch.randn(20, 5, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 20, (20,), generator=g)
    w = torch.bincount(idx, minlength=20).double()
    sa, sb, cr = weighted_stats([gram_matrix(X, "center")], [gram_matrix(Y, "center")], "center", w, [False], [False])
    Xr, Yr = X[idx], Y[idx]
    Xr, Yr = Xr - Xr.mean(0), Yr - Yr.mean(0)
    K, L = Xr @ Xr.T, Yr @ Yr.T
    keep = (idx[:, None] != idx[None, :]) | torch.eye(20, dtype=torch.bool)   # drop copy pairs p ≠ q
    assert sa[0].centred_frob_sq == pytest.approx(float((K * K)[keep].sum()), rel=1e-10)
    assert cr[0][0].centred_inner == pytest.approx(float((K * L)[keep].sum()), rel=1e-10)
    assert sa[0].centred_trace == pytest.approx(float(torch.trace(K)), rel=1e-10)
    assert cr[0][0].centred_diag_inner == pytest.approx(float((torch.diagonal(K) * torch.diagonal(L)).sum()), rel=1e-10)


class _no_warning:
    def __enter__(self):
        import warnings

        self.cm = warnings.catch_warnings()
        self.cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


def test_reinit_baseline_seeded():
    a, b = small_net(0), small_net(1)
    x = torch.randn(32, 3, 8, 8, dtype=torch.float64)
    c = compare(a, b, x, layers_a=LAYERS, layers_b=LAYERS, baseline="reinit", seed=1, progress=False)
    d = compare(a, b, x, layers_a=LAYERS, layers_b=LAYERS, baseline="reinit", seed=1, progress=False)
    assert [r["baseline"] for r in c.rows] == [r["baseline"] for r in d.rows]
    assert all(r["baseline"] is not None for r in c.rows)
    # the originals are untouched; the baseline differs from the value
    assert torch.equal(a[0].weight, small_net(0)[0].weight)
    assert any(abs(r["baseline"] - r["value"]) > 1e-3 for r in c.rows)


def test_outputs_csv_png_html(tmp_path, data64):
    a, b = small_net(0), small_net(1)
    c = compare(a, b, data64, layers_a=LAYERS, layers_b=LAYERS, progress=False)
    c.to_csv(tmp_path / "c.csv")
    c.plot(tmp_path / "c.png")
    c.to_html(tmp_path / "c.html")
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0].startswith("metric,layer_a,layer_b,value") and len(lines) == 1 + 2 * 16
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    html = (tmp_path / "c.html").read_text()
    assert "data:image/png;base64," in html and "<style>" in html
    assert "linear_cka" in c.table()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _rn18_1ch(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = torchvision.models.resnet18(weights=None)
    m.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    return m


def test_cli_two_torchvision_resnet18(tmp_path, capsys):
    from repalign.cli import main

    wa, wb = tmp_path / "a.pt", tmp_path / "b.pt"
    ma, mb = _rn18_1ch(0), _rn18_1ch(1)
    torch.save(ma.state_dict(), wa)
    torch.save(mb.state_dict(), wb)
    out = tmp_path / "out"
    rc = main(["compare", "torchvision:resnet18", "torchvision:resnet18", "--weights-a", str(wa), "--weights-b",
               str(wb), "--data", "digits", "--max-samples", "48", "--layers-a", "layer1", "layer4", "--layers-b",
               "layer1", "layer4", "--pool", "avg", "--out", str(out), "--no-progress", "--batch-size", "16"])
    assert rc == 0
    for f in ("compare.csv", "compare.png", "compare.html"):
        assert (out / f).is_file()
    printed = capsys.readouterr().out
    assert "linear_cka" in printed and "layer4" in printed
    # the CLI's number is the API's on the same data
    from repalign.data import build_source, eval_transform

    src = build_source("digits", "test")
    tf = eval_transform(src.image_size, src.channels, src.mean, src.std)
    x = torch.stack([tf(src[i]) for i in range(48)])
    c = compare(ma, mb, x, layers_a=["layer1", "layer4"], layers_b=["layer1", "layer4"], pool="avg", progress=False)
    rows = [l.split(",") for l in (out / "compare.csv").read_text().splitlines()[1:]]
    got = {(r[0], r[1], r[2]): float(r[3]) for r in rows}
    assert got[("linear_cka", "layer1", "layer4")] == pytest.approx(c.matrix("linear_cka")[0, 1], abs=1e-9)
    # errors: one line, exit 2
    rc = main(["compare", "torchvision:resnet18", "torchvision:resnet18", "--weights-a", str(tmp_path / "nope.pt"),
               "--data", "digits", "--out", str(out)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["compare", "torchvision:resnet18", "torchvision:resnet18", "--weights-a", str(wa), "--weights-b",
               str(wb), "--data", "digits", "--layers-a", "layer5", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(r"no layer 'layer5'.*closest: layer", err) and err.count("\n") == 1
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "rgb.pt")
    rc = main(["compare", "torchvision:resnet18", "torchvision:resnet18", "--weights-a", str(tmp_path / "rgb.pt"),
               "--data", "digits", "--out", str(out), "--no-progress"])
    assert rc == 2 and "shape mismatch for conv1.weight" in capsys.readouterr().err


def test_cli_on_a_repalign_run(tmp_path, capsys, tiny_cfg):
    from repalign.cli import main
    from repalign.training import train

    cfg = tiny_cfg(**{"train.epochs": 1})
    run = tmp_path / "run"
    train(cfg, run_dir=run)
    wb = tmp_path / "ext.pt"
    torch.save(_rn18_1ch(2).state_dict(), wb)
    out = tmp_path / "out"
    rc = main(["compare", f"{run}:cl", "torchvision:resnet18", "--weights-b", str(wb), "--data", "digits",
               "--max-samples", "40", "--layers-b", "layer2", "avgpool", "--pool", "avg", "--out", str(out),
               "--no-progress", "--metrics", "linear_cka", "debiased_cka"])
    assert rc == 0, capsys.readouterr().err
    rows = (out / "compare.csv").read_text().splitlines()
    assert len(rows) > 1 and all("nan" not in r for r in rows)


# ---------------------------------------------------------------------------------------------
# docs/compare.md examples run
# ---------------------------------------------------------------------------------------------
DOC = Path(__file__).resolve().parents[1] / "docs" / "compare.md"


def test_docs_compare_examples_run(tmp_path, monkeypatch, tiny_cfg, capsys):
    from repalign.training import train

    blocks = re.findall(r"<!-- run -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    train(tiny_cfg(**{"train.epochs": 1}), run_dir=tmp_path / "runs" / "demo")
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {"__name__": "__doc_example__"})
    out = capsys.readouterr().out
    assert "layer1 vs layer1: flatten" in out and "untrained:" in out
    assert (tmp_path / "compare_resnets.html").is_file()


def test_progress_lines_and_silence(capsys, data64):
    a, b = small_net(0), small_net(1)
    compare(a, b, data64, layers_a=["4"], layers_b=["4"], batch_size=32, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err == ["compare: batch 1/2 done (32 samples)", "compare: batch 2/2 done (64 samples)"]
    compare(a, b, data64, layers_a=["4"], layers_b=["4"], batch_size=32, progress=False)
    assert capsys.readouterr().err == ""


def test_bad_inputs_one_line(data64):
    a, b = small_net(0), small_net(1)
    with pytest.raises(ValueError, match="max_dim=10"):
        compare(a, b, data64, layers_a=["0"], layers_b=["4"], max_dim=10, method="moments", progress=False)
    with pytest.raises(ValueError, match="unknown metric 'cca'"):
        compare(a, b, data64, metrics=["cca"], progress=False)
    with pytest.raises(ValueError, match="pool must be one of"):
        compare(a, b, data64, pool="max", progress=False)
