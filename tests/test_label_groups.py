"""Issue 18 item 1: label granularity as an arm setting (``label_groups: K``, ``label_map: FILE``)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import tiny_overrides
from repalign.config import ConfigError, load_config
from repalign.data.label_groups import balanced_groups, load_label_map
from repalign.losses import dcl_loss, nscl_loss
from repalign.losses.functional import loss_gap_bound_from_counts, nscl_alpha_loss
from repalign.results import read_rows


@given(c=st.integers(2, 60), k=st.integers(2, 60), seed=st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_balanced_groups_partition_sizes(c, k, seed):
    if k > c:
        with pytest.raises(ConfigError, match="label_groups"):
            balanced_groups(c, k, seed)
        return
    lut = balanced_groups(c, k, seed)
    sizes = torch.bincount(lut, minlength=k)
    assert lut.shape == (c,) and int(lut.min()) == 0 and int(lut.max()) == k - 1
    assert int(sizes.sum()) == c and int(sizes.max()) - int(sizes.min()) <= 1  # ⌈C/K⌉ or ⌊C/K⌋
    assert torch.equal(lut, balanced_groups(c, k, seed))  # seeded


def test_partition_differs_between_seeds():
    assert not torch.equal(balanced_groups(100, 10, 1), balanced_groups(100, 10, 2))


def _fit(tmp_path, arms: str, name: str, **extra):
    from repalign.training import CoupledTrainer

    cfg = load_config(None, tiny_overrides(**{"eval.every": "null", **extra}) + [arms])
    tr = CoupledTrainer(cfg, tmp_path / name)
    tr.fit()
    return tr


def test_label_groups_C_is_bitwise_the_plain_arm(tmp_path):
    """``label_groups: C`` (digits: C = 10) trains bitwise the same weights as the plain NSCL arm."""
    tr = _fit(tmp_path, "arms={cl: {objective: cl}, a: {objective: nscl}, b: {objective: nscl, label_groups: 10}}", "r")
    a, b = (dict(s.module.named_parameters()) for s in tr.arm_states[1:])
    assert tr.num_classes == 10 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and K < C does change the weights (the arm's labels are mapped)
    tr2 = _fit(tmp_path, "arms={cl: {objective: cl}, a: {objective: nscl}, b: {objective: nscl, label_groups: 2}}", "r2")
    a2, b2 = (dict(s.module.named_parameters()) for s in tr2.arm_states[1:])
    assert any(not torch.equal(a2[k], b2[k]) for k in a2)


def test_label_groups_2_raises_the_logged_gap(tmp_path):
    """The X rows: L_DCL − L_NSCL(K) on CL's embeddings, recomputed here from the recorded mapping; K = 2 has a
    larger gap than the CL arm's own (C = 10) row on every logged step, and stays below its own bound."""
    tr = _fit(tmp_path, "arms={cl: {objective: cl}, k2: {objective: nscl, label_groups: 2}}", "r")
    rows = read_rows(tmp_path / "r")
    own = {r["step"]: r for r in rows if r["kind"] == "lossgap" and r["arm"] == "cl"}
    k2 = {r["step"]: r for r in rows if r["kind"] == "lossgap" and r["arm"] == "k2"}
    assert own and own.keys() == k2.keys()
    for step, r in k2.items():
        assert r["embeddings"] == "cl" and r["label_groups"] == 2
        assert own[step]["dcl"] == pytest.approx(r["dcl"], rel=1e-12)  # the same CL embeddings
        assert r["gap"] > own[step]["gap"] >= 0
        assert r["gap"] <= r["bound"]
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    lut = meta["arms"]["k2"]["label_lookup"]
    assert sorted(set(lut)) == [0, 1] and len(lut) == 10
    assert "label_lookup" not in meta["arms"]["cl"] and meta["arms"]["k2"]["label_groups"] == 2
    from repalign.cli import summary_table

    assert "loss gap DCL−NSCL of cl:" in summary_table(tmp_path / "r")  # the summary names the CL arm's own row


def test_gap_row_recomputed_naively(tmp_path, monkeypatch):
    """One logged step's X row equals DCL − NSCL on the CL arm's z with the mapped labels, computed here."""
    from repalign.training import trainer as T

    seen = {}
    orig = T.CoupledTrainer._arm_gap_rows

    def spy(self, pending, epoch_f, gaps):
        out = orig(self, pending, epoch_f, gaps)
        if out and "z" not in seen:
            cl = next(p for p in pending if p["s"].name == "cl")
            x = next(p for p in pending if p["s"].name == "k2")
            seen.update(z=cl["z"].detach().clone(), y=x["labels"].clone(), step=self.step)
        return out

    monkeypatch.setattr(T.CoupledTrainer, "_arm_gap_rows", spy)
    _fit(tmp_path, "arms={cl: {objective: cl}, k2: {objective: nscl, label_groups: 3}}", "r")
    z, y = seen["z"], seen["y"]
    assert int(y.max()) <= 2
    row = next(r for r in read_rows(tmp_path / "r")
               if r["kind"] == "lossgap" and r["arm"] == "k2" and r["step"] == seen["step"])
    want = float(dcl_loss(z.double(), y, 0.5) - nscl_loss(z.double(), y, 0.5))
    assert row["gap"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    n_max = int(torch.bincount(y).max())
    assert row["bound"] == pytest.approx(loss_gap_bound_from_counts(int(y.numel()), n_max, 0.5))


def test_alpha_arm_gets_a_gap_row_between_zero_and_nscl(tmp_path):
    tr = _fit(tmp_path, "arms={cl: {objective: cl}, a: {objective: nscl_alpha, options: {alpha: 0.5}}}", "r")
    rows = read_rows(tmp_path / "r")
    own = {r["step"]: r for r in rows if r["kind"] == "lossgap" and r["arm"] == "cl"}
    xa = {r["step"]: r for r in rows if r["kind"] == "lossgap" and r["arm"] == "a"}
    assert xa and xa.keys() == own.keys()
    for step, r in xa.items():
        assert r["alpha"] == 0.5 and r["embeddings"] == "cl"
        assert 0 <= r["gap"] <= own[step]["gap"] + 1e-9  # the α-gap lies between DCL (0) and NSCL's
        assert r["gap"] <= r["bound"] <= own[step]["bound"] + 1e-12


def test_label_map_file(tmp_path):
    f = tmp_path / "map.json"
    f.write_text(json.dumps(["odd" if c % 2 else "even" for c in range(10)]))
    lut = load_label_map(f, 10)
    assert lut.tolist() == [0 if c % 2 == 0 else 1 for c in range(10)]
    tr = _fit(tmp_path, f"arms={{cl: {{objective: cl}}, p: {{objective: nscl, label_map: {f}}}}}", "r")
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["arms"]["p"]["label_lookup"] == lut.tolist() and meta["arms"]["p"]["label_map"] == str(f)
    from repalign.fingerprint import payload

    p1 = payload(load_config(tmp_path / "r" / "config.yaml"))
    f.write_text(json.dumps([c % 3 for c in range(10)]))
    p2 = payload(load_config(tmp_path / "r" / "config.yaml"))
    assert p1 != p2  # the map's content is in the fingerprint


@pytest.mark.parametrize("spec, msg", [
    ("{objective: nscl, label_groups: 1}", "label_groups': must be an integer K >= 2"),
    ("{objective: nscl, label_groups: true}", "label_groups': must be an integer K >= 2"),
    ("{objective: nscl, label_groups: 2.5}", "label_groups': must be an integer K >= 2"),
    ("{objective: nscl, label_groups: 2, label_map: m.json}", "give label_groups or label_map, not both"),
])
def test_bad_label_groups_refused_in_one_line(spec, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        load_config(None, tiny_overrides() + [f"arms={{cl: {{objective: cl}}, x: {spec}}}"])
    assert "\n" not in str(e.value) and "arms.x" in str(e.value)


def test_K_above_C_refused(tmp_path):
    with pytest.raises(ConfigError, match="exceeds data.num_classes = 5"):
        load_config(None, tiny_overrides(**{"data.num_classes": 5}) + ["arms={x: {objective: nscl, label_groups: 6}}"])
    with pytest.raises(ConfigError, match=r"K = 11 exceeds the run's C = 10"):  # C known only from the data
        _fit(tmp_path, "arms={cl: {objective: cl}, x: {objective: nscl, label_groups: 11}}", "r")


def test_label_groups_on_a_label_free_objective_refused(tmp_path):
    with pytest.raises(ConfigError, match="'arms.x.label_groups': objective 'cl' uses no labels"):
        _fit(tmp_path, "arms={cl: {objective: cl}, x: {objective: cl, label_groups: 2}}", "r")


@pytest.mark.parametrize("content, msg", [
    ("[0, 1]", "has 2 entries, the run has C = 10"),
    ("[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]", "maps every class to one group"),
    ("{a: 1}", "must hold a list"),
    ("[0, 1, 0, 1, 0, 1, 0, 1, 0, 1.5]", "entry 9 is 1.5"),
])
def test_bad_label_map_refused(tmp_path, content, msg):
    f = tmp_path / "m.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=msg):
        load_label_map(f, 10, "arms.x.label_map")


def test_permuted_labels_give_bitwise_the_same_nscl_loss():
    """Why K = C may be the identity: NSCL / α-losses depend on labels only through equality."""
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2, 24, 6, generator=g), dim=-1)
    y = torch.randint(0, 5, (24,), generator=g)
    perm = torch.randperm(5, generator=g)
    assert torch.equal(nscl_loss(z, y, 0.5), nscl_loss(z, perm[y], 0.5))
    assert torch.equal(nscl_alpha_loss(z, y, 0.5, 0.3), nscl_alpha_loss(z, perm[y], 0.5, 0.3))
    assert math.isfinite(float(nscl_loss(z, y, 0.5)))


def test_bundled_cifar100_coarse_map():
    """``repalign:cifar100_coarse``: 100 fine classes → 20 superclasses of 5 (the dataset's coarse labels);
    spot checks against the published hierarchy; an unknown bundled name is one line naming the bundled ones."""
    lut = load_label_map("repalign:cifar100_coarse", 100)
    assert torch.bincount(lut).tolist() == [5] * 20
    # beaver 4, dolphin 30, otter 55, seal 72, whale 95 are the aquatic mammals (superclass 0)
    assert [int(lut[i]) for i in (4, 30, 55, 72, 95)] == [0] * 5
    assert (lut == 0).nonzero().flatten().tolist() == [4, 30, 55, 72, 95]
    assert int(lut[0]) == 4 and int(lut[1]) == 1 and int(lut[8]) == 18  # apple: fruit/veg, aquarium fish, bicycle
    with pytest.raises(ConfigError, match="no bundled label map 'repalign:nope' \\(bundled: repalign:cifar100_coarse"):
        load_label_map("repalign:nope", 100, "arms.x.label_map")
