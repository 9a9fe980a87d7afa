"""The walkthrough notebook runs top to bottom, offline, headless, and its saved figures need no CDN.

(plotly.js itself mentions cdn.plot.ly for map data; what must be absent is a script that fetches plotly.js
from it, ``cdn.plot.ly/plotly-<version>.min.js``, which the "notebook_connected" renderer would write.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "gpt2_walkthrough.ipynb"


def test_the_committed_notebook_has_outputs_and_no_cdn():
    text = NOTEBOOK.read_text()
    notebook = json.loads(text)
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(c.get("outputs") is not None for c in code)
    assert sum(bool(c["outputs"]) for c in code) >= len(code) - 1, "committed with its outputs"
    assert "cdn.plot.ly/plotly" not in text and "cdn.jsdelivr" not in text  # plotly.js is embedded, not fetched


def test_the_notebook_runs_offline_top_to_bottom(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel inherits it: GPT-2 falls back to the bundled model
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    outputs = json.dumps([c.outputs for c in notebook.cells if c.cell_type == "code"])
    assert "cdn.plot.ly/plotly" not in outputs
    assert "bundled" in outputs, "offline, the notebook says which model it used"
