"""The walkthrough notebook runs top to bottom, offline, headless, and its saved figures need no CDN.

Figures are saved as plotly's MIME bundle (``application/vnd.plotly.v1+json``), which JupyterLab, Notebook 7
and VS Code draw with their own plotly.js; plotly's "notebook" renderer would add a MathJax script from a
CDN, and "notebook_connected" plotly.js itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "gpt2_walkthrough.ipynb"


def _remote_scripts(text: str) -> list[str]:
    """Script tags, or require.js paths, that load code from the network (quotes may be JSON-escaped)."""
    return re.findall(r'<script[^>]*src=\\?["\']https?://[^"\'\\]*', text) + \
        re.findall(r"paths:\s*\{[^}]*https?://[^}]*\}", text)


def test_the_committed_notebook_has_outputs_and_no_cdn():
    text = NOTEBOOK.read_text()
    notebook = json.loads(text)
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(c.get("outputs") is not None for c in code)
    assert sum(bool(c["outputs"]) for c in code) >= len(code) - 1, "committed with its outputs"
    assert not _remote_scripts(text), "nothing may be fetched from the network"
    assert text.count("application/vnd.plotly.v1+json") >= 2, "both figures are saved inline, as plotly data"


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
    assert not _remote_scripts(outputs)
    assert "bundled" in outputs, "offline, the notebook says which model it used"
