"""The tutorial notebook, docs/tutorial.ipynb: committed without outputs, and executed end to end
(nbclient + ipykernel) — a failing cell fails the test."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "tutorial.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    for i, c in enumerate(code):
        assert c.get("outputs") == [] and c.get("execution_count") is None, f"code cell {i} has outputs: strip them"
    assert not any(k in nb.get("metadata", {}) for k in ("widgets", "varInspector")), "notebook metadata not stripped"


def _execute(nb, tmp_path: Path, monkeypatch, timeout: int = 180):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's tempfile.mkdtemp lands here
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # kernel "python3": ipykernel's spec starts `python`, which jupyter_client replaces by this interpreter
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    return client.execute()


def test_tutorial_runs_end_to_end(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    _execute(nb, tmp_path, monkeypatch)
    wall = time.perf_counter() - t0
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.get("output_type") == "stream")
    # each step produced what it says: rows, the paired interval, comparison rows, the layer-wise table
    assert "repalign " in text and "untrained baseline CKA:" in text
    assert "CKA(CL, NSCL) − CKA(CL, noise floor) = " in text and "95 % t-interval, n = 3 seeds" in text
    assert "cl/nscl vs cl/cl_data" in text
    assert "linear_cka (rows: A layers, columns: B layers" in text and "diagonal (same block in both):" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the plot and the heatmap are displayed"
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    run_dirs = list(tmp_path.glob("repalign-tutorial-*/seed*"))
    assert len(run_dirs) == 3 and all((d / "metrics.jsonl").is_file() for d in run_dirs)
    assert wall < 170, f"tutorial took {wall:.0f} s (budget: 90 s on 2 idle cores)"


def test_a_broken_cell_fails_the_run(tmp_path, monkeypatch):
    """The execution check can fail: a cell that raises stops the run with CellExecutionError."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import repalign\nx = 1"),
                nbformat.v4.new_code_cell("repalign.no_such_name")]
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="no_such_name"):
        _execute(nb, tmp_path, monkeypatch, timeout=60)
