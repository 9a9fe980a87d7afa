"""The README's Python blocks run top to bottom, in order, on the bundled model: what a new user pastes works
offline, with ``"gpt2"`` swapped for ``"bundled"`` as the README says it can be."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_python_block_of_the_readme_runs_on_the_bundled_model():
    blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)]
    assert len(blocks) >= 4
    namespace: dict = {}
    for i, block in enumerate(blocks):
        code = (block.replace('interp.load_model("gpt2")', 'interp.load_model("bundled", device="cpu")')
                .replace('interp.load_model("bundled")', 'interp.load_model("bundled", device="cpu")'))
        assert "load_model(\"gpt2\"" not in code
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["model"].cfg.n_layers == 2, "the blocks ran on the bundled model"
