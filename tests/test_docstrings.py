"""Every ``>>>`` example in interp's docstrings runs, on the bundled model, and prints what it says it prints:
what a researcher pastes from ``help()`` works. Each docstring's examples run in order, in its module's
namespace plus the names they assume (``model``, ``tokens``, prompt pairs, a metric); paths in them point into
a temporary folder, and ``load_model`` gets ``device="cpu"``."""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
import types
from pathlib import Path

import pytest
import torch

import interp

# Examples that need what a test cannot have: a figure with its run's metadata, or GPT-2's own weights.
SKIP = {"interp.figures.FigureWriter": "needs a plotly figure and a run's metadata",
        "interp.loading.load_gpt2_or_bundled": "loads GPT-2's weights where they are cached"}


def _docstring_tests() -> dict[str, doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = {}
    for info in pkgutil.iter_modules(interp.__path__):
        module = importlib.import_module(f"interp.{info.name}")
        for test in finder.find(module):
            if test.examples and test.name not in SKIP:
                found[test.name] = test
    return found


TESTS = _docstring_tests()


def test_the_examples_are_found():
    assert len(TESTS) >= 25 and "interp.patching" in TESTS and "interp.sae.splice" in TESTS


@pytest.mark.parametrize("name", sorted(TESTS))
def test_the_docstring_example_runs_and_prints_what_it_says(name, tmp_path, monkeypatch):
    from interp.harvest import harvest

    monkeypatch.chdir(tmp_path)  # "harvest/json" and the like land here
    # The detector example registers one, in a copy of the registry that the test's end puts back.
    monkeypatch.setattr(interp.heads, "DETECTORS", dict(interp.heads.DETECTORS))
    model = interp.load_model("bundled", device="cpu")
    prompt = "When Mary and John went to the store, John gave a drink to"
    mary = model.to_single_token(" Mary")
    clean = interp.to_tokens(model, prompt)
    corrupted = interp.to_tokens(model, prompt.replace("store, John", "store, Mary"))
    corpus = str(Path(json.__file__).parent)
    namespace = {
        **TESTS[name].globs,  # the module's namespace
        "interp": interp, "torch": torch, "Path": Path, "model": model, "tokens": clean, "clean": clean,
        "corrupt": corrupted, "corrupted": corrupted, "clean_texts": [prompt],
        "corrupt_texts": [prompt.replace("store, John", "store, Mary")], "token": mary,
        "metric": lambda logits: logits[:, -1, mary], "sae": interp.sae.load("bundled"),
        "generate": interp.sampling.generate, "ablate_heads": interp.interventions.ablate_heads,
        "hf_gpt2_small": interp.architecture("gpt2"),  # the weightless skeleton: shapes are all it shows
        "gpt2_small": types.SimpleNamespace(cfg=types.SimpleNamespace(n_layers=12, n_heads=12)),
    }
    if name in ("interp.harvest.Stream", "interp.heads.corpus_head_scores"):  # rows of a corpus, not one prompt
        harvest(model, corpus, hooks=["blocks.1.hook_resid_pre"], out="harvest/json", pattern="**/*.py",
                progress=False)
        namespace["tokens"] = interp.harvest.open("harvest/json").tokens
    replacements = {'load_model("bundled")': 'load_model("bundled", device="cpu")',
                    '"/usr/lib/python3.11/json"': repr(corpus), '"/tmp/tiny"': repr(str(tmp_path / "tiny")),
                    "'/tmp/tiny'": repr(str(tmp_path / "tiny")), '"path/to/sae"': '"bundled"',
                    'd_sae=4096)': 'd_sae=4096, steps=2, batch_size=64, progress=False)',
                    # GPT-2 small's layers, in the bundled model's two
                    "[(5, 1), (5, 5)]": "[(1, 1), (1, 0)]", "layer=6": "layer=1"}
    checker = doctest.OutputChecker()
    for example in TESTS[name].examples:
        source, want = example.source, example.want
        for old, new in replacements.items():
            source, want = source.replace(old, new), want.replace(old, new)
        code = compile(source, f"{name} example", "exec")
        if "# ValueError" in source:
            with pytest.raises(ValueError):
                exec(code, namespace)  # noqa: S102 - our own docstrings
            continue
        if not want:
            exec(code, namespace)  # noqa: S102
            continue
        got = repr(eval(compile(source, f"{name} example", "eval"), namespace))
        assert checker.check_output(want, got + "\n", doctest.ELLIPSIS), f"{source.strip()}: {got}, not {want}"
