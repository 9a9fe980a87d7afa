"""The figure pipeline end to end on the tiny checkpoint: every file, the manifest, determinism, offline
rendering in headless Chromium, and clean CLI errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile

import pytest

from experiments import parameter_breakdown, runner, temperature
from experiments.registry import FAMILY_NAMES, families
from interp.backends import DEFAULT_BACKEND

FIGURES = ("parameter_breakdown", "head_attention_patterns", "head_scores", "head_attention_explorer",
           "temperature_next_token", "temperature_entropy", "temperature_samples", "temperature_coherence",
           "mechanisms_repetition", "mechanisms_patching", "mechanisms_steering", "circuits_graph",
           "circuits_faithfulness", "circuits_scatter", "features")


# The smallest settings that still exercise every figure: one sample per temperature and prompt, short
# continuations, two seeds (error bars need two), a coarse sweep, two prompt pairs.
SMALL = ["--samples", "1", "--new-tokens", "6", "--seeds", "2", "--dense", "8", "--pairs", "2", "--steps", "2",
         "--seq-len", "6", "--batch", "2", "--rows", "16", "--pages", "3"]


@pytest.fixture(scope="module")
def run_dirs(tiny_checkpoint, tmp_path_factory):
    """Two runs of every family with the same seed, model and small settings, into two folders."""
    dirs = []
    for name in ("first", "second"):
        out = tmp_path_factory.mktemp(name)
        assert runner.main(["--model", str(tiny_checkpoint), "--out", str(out), "--no-images", "--seed", "3",
                            "--device", "cpu", *SMALL]) == 0
        dirs.append(out)
    return dirs


def test_every_figure_is_written_with_its_data_and_manifest(run_dirs, tiny_checkpoint):
    out = run_dirs[0]
    manifest = json.loads((out / "manifest.json").read_text())["figures"]
    assert set(manifest) == set(FIGURES)
    assert {entry["family"] for entry in manifest.values()} == set(FAMILY_NAMES), "every registered family ran"
    for name in FIGURES:
        assert (out / f"{name}.html").exists() and (out / f"{name}.json").exists()
        entry = manifest[name]
        assert set(entry) >= {"model", "backend", "versions", "seed", "command", "params", "wall_seconds", "files"}
        assert set(entry["versions"]) == {"interp", "transformer-lens", "torch", "plotly"}
        if name != "parameter_breakdown":
            assert entry["model"]["spec"] == str(tiny_checkpoint) and len(entry["model"]["weights"]) == 64
            assert entry["seed"] == 3 and entry["backend"] == DEFAULT_BACKEND
            assert "random-weight" in (out / f"{name}.html").read_text(), "the title must name the model"
    assert manifest["parameter_breakdown"]["model"]["weights"] == "architecture only"
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"


def test_same_seed_same_data_and_the_same_html(run_dirs):
    """A regenerated gallery shows no diff when nothing changed: the data, and the HTML too (fixed div ids)."""
    first, second = run_dirs
    for name in FIGURES:
        assert (first / f"{name}.json").read_bytes() == (second / f"{name}.json").read_bytes(), name
        assert (first / f"{name}.html").read_bytes() == (second / f"{name}.html").read_bytes(), name
    pages = sorted(p.name for p in (first / "features").iterdir())
    assert "index.html" in pages and len(pages) == 4, "the index and --pages 3 feature pages"
    for page in pages:
        assert (first / "features" / page).read_bytes() == (second / "features" / page).read_bytes(), page


def test_a_run_without_image_export_removes_the_images_it_could_not_remake(tmp_path):
    from experiments.common import DEFAULT_OUT, default_out
    from interp.figures import FigureWriter

    (tmp_path / "parameter_breakdown.png").write_bytes(b"an old image")
    from interp.architecture import architecture

    result = parameter_breakdown.compute(architecture("gpt2"), parameter_breakdown.Config())
    figure = parameter_breakdown.figures(result)[0]
    with FigureWriter(tmp_path, {"model": "test"}, formats=()) as writer:
        writer.save(figure.fig, "parameter_breakdown", figure.data)
    assert not (tmp_path / "parameter_breakdown.png").exists()
    assert [p.name for p in writer.removed] == ["parameter_breakdown.png"]
    assert default_out(list(FAMILY_NAMES), {}, everything=True) == DEFAULT_OUT
    partial = default_out(["temperature"], {"temperatures": (0.5,)}, everything=False)
    assert partial.parent == DEFAULT_OUT / "runs" and partial.name.startswith("temperature-")
    assert partial == default_out(["temperature"], {"temperatures": (0.5,)}, everything=False), "named, not timed"


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _offline_dom(page, budget_ms: int = 10000) -> str:
    """The page's DOM after headless Chromium has run it, with every host unreachable."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
             "--proxy-server=http://127.0.0.1:9", f"--virtual-time-budget={budget_ms}", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        ).stdout


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("name", FIGURES)
def test_figure_draws_offline_in_headless_chromium(run_dirs, name, monkeypatch):
    page = run_dirs[0] / f"{name}.html"
    dom = _offline_dom(page)
    assert dom.count("main-svg") > 0, f"plotly did not draw {page.name} offline"


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_feature_dashboards_render_offline_in_headless_chromium(run_dirs):
    """The dashboard pages reference nothing outside themselves, and Chromium renders them with the network
    unreachable: the index lists the latents, and a feature page shows its shaded contexts."""
    folder = run_dirs[0] / "features"
    for page in folder.iterdir():
        text = page.read_text()
        assert "http://" not in text and "https://" not in text and " src=" not in text, page.name
    index = folder / "index.html"
    feature = next(p for p in sorted(folder.iterdir()) if p.name.startswith("feature-"))
    for page, expected in ((index, "Features, by density"), (feature, "Top-activating held-out contexts")):
        dom = _offline_dom(page, budget_ms=5000)
        assert expected in dom, page.name
        if page == feature:
            assert dom.count('class="ctx"') >= 1 and "background:rgba(255,140,0," in dom
    assert feature.name.removeprefix("feature-").removesuffix(".html").lstrip("0") in index.read_text()


def test_a_missing_sae_folder_is_a_one_line_error_before_any_model_loads(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.features", "--sae", str(tmp_path / "none"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: features: --sae {tmp_path / 'none'}: no SAELens")
    assert not (tmp_path / "out").exists()


def test_bad_temperature_is_a_one_line_error_not_a_traceback():
    for bad in ("-1", "nan"):
        proc = subprocess.run([sys.executable, "-m", "experiments.temperature", "--temperatures", bad],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: temperature: temperature must be 0 (greedy) or a finite number >= 0.0001, got {float(bad)}"]


def test_named_model_that_cannot_load_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(SystemExit, match="Ways out"):
        runner.main(["--model", "gpt2", "--out", str(tmp_path / "figs")])
    assert not (tmp_path / "figs").exists()


def test_an_out_that_is_a_file_is_a_one_line_error_before_any_model_loads(tmp_path, capsys):
    taken = tmp_path / "figures.txt"
    taken.write_text("")
    with pytest.raises(SystemExit):
        runner.main(["parameter_breakdown", "--out", str(taken)])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"error: argument --out: {str(taken)!r} is a file, not a folder (for the figures)")


def test_unknown_family(tmp_path):
    with pytest.raises(SystemExit, match="choose from parameter_breakdown"):
        runner.main(["temprature", "--out", str(tmp_path)])


def test_bad_counts_fail_before_any_model_loads(tmp_path):
    with pytest.raises(SystemExit, match="at least 1"):
        temperature.main(["--samples", "0", "--model", "gpt2", "--out", str(tmp_path)])
    assert not tmp_path.joinpath("manifest.json").exists()


def test_list_names_every_family(capsys):
    assert runner.main(["--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(FAMILY_NAMES)
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines), "each family has a description"


def test_every_family_declares_the_contract():
    for name, family in families().items():
        assert isinstance(family.DESCRIPTION, str) and isinstance(family.NEEDS_WEIGHTS, bool), name
        config = family.Config()
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.seed = 1
        for attr in ("compute", "figures", "summary", "main"):
            assert callable(getattr(family, attr)), (name, attr)


@pytest.mark.parametrize("order", ["family first", "shared first"])
def test_family_options_pass_through_the_runner(tiny_checkpoint, tmp_path, order):
    family_args = ["temperature", "--temperatures", "0.5", "1", "2", "--samples", "1", "--new-tokens", "3"]
    shared = ["--model", str(tiny_checkpoint), "--out", str(tmp_path), "--no-images", "--device", "cpu"]
    assert runner.main(family_args + shared if order == "family first" else shared + family_args) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())["figures"]
    assert set(manifest) == {"temperature_next_token", "temperature_entropy", "temperature_samples",
                             "temperature_coherence"}
    assert manifest["temperature_samples"]["params"]["temperatures"] == [0.5, 1.0, 2.0]
    data = json.loads((tmp_path / "temperature_samples.json").read_text())
    assert list(data["samples"]) == ["0.5", "1.0", "2.0"]


def test_an_option_no_selected_family_takes_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="--temperatures: no selected family"):
        runner.main(["head_attention", "--temperatures", "1", "--out", str(tmp_path)])


def test_runner_and_standalone_draw_the_same_breakdown(tmp_path):
    """For the same --model, with no weights: gpt2-medium's published config."""
    assert runner.main(["parameter_breakdown", "--model", "gpt2-medium", "--out", str(tmp_path / "a"),
                        "--no-images"]) == 0
    assert parameter_breakdown.main(["--model", "gpt2-medium", "--out", str(tmp_path / "b"), "--no-images"]) == 0
    a, b = (json.loads((tmp_path / d / "parameter_breakdown.json").read_text()) for d in "ab")
    assert a == b and a["tied_total"] == 354_823_168 and a["spec"] == "gpt2-medium"


def _plotly_layout(html: str) -> dict:
    """The layout argument of the ``Plotly.newPlot(id, data, layout, config)`` call in a figure's HTML."""
    decoder = json.JSONDecoder()
    rest = html[html.index("Plotly.newPlot(") + len("Plotly.newPlot("):].lstrip()
    _, end = decoder.raw_decode(rest)  # the div id
    rest = rest[end:].lstrip()[1:].lstrip()
    _, end = decoder.raw_decode(rest)  # the data
    rest = rest[end:].lstrip()[1:].lstrip()
    return decoder.raw_decode(rest)[0]


@pytest.mark.parametrize("name", FIGURES)
def test_shared_axes_have_one_type(run_dirs, name):
    """Axes that plotly ties together (``matches``) share their tick labels, so they must share their type: a
    log axis matched to a linear one cannot be read against its ticks."""
    layout = _plotly_layout((run_dirs[0] / f"{name}.html").read_text())
    axes = {key: value for key, value in layout.items() if key.startswith(("xaxis", "yaxis"))}
    for key, axis in axes.items():
        target = axis.get("matches")
        if target is None:
            continue
        other = axes.get(target[0] + "axis" + target[1:], {})
        assert axis.get("type", "-") == other.get("type", "-"), f"{name}: {key} matches {target} but has another type"


def test_benchmark_rows_pair_repetitions_and_bound_their_ratio():
    """Each repetition's ratio is its own subject over its own baseline: a slow spell that hits both leaves every
    ratio at 2, so the interval is [2, 2] (resampling subject and baseline apart would widen it)."""
    from experiments.benchmark import row

    baseline = [1.0, 1.0, 3.0, 3.0, 3.0]  # a slow spell from the third repetition on
    r = row("x", {"a": [2 * b for b in baseline], "b": baseline}, "a", "b", "goal")
    assert r["ratio_paired"] == pytest.approx(2.0) and r["ratio_paired_95"] == pytest.approx([2.0, 2.0])
    noisy = row("x", {"a": [1.0, 1.2, 1.1, 1.3, 1.0], "b": [1.0] * 5}, "a", "b", "goal")
    low, high = noisy["ratio_paired_95"]
    assert 1.0 <= low < noisy["ratio_paired"] < high <= 1.3
    # the verdict against a limit on the ratio: met below the interval's top, missed above its bottom
    verdicts = [row("x", {"a": [1.0, 1.2, 1.1, 1.3, 1.0], "b": [1.0] * 5}, "a", "b", "goal", limit)["verdict"]
                for limit in (high * 1.01, (low + high) / 2, low * 0.99, None)]
    assert verdicts == ["met", "undecided", "missed", None]


def test_atomic_write_leaves_the_old_file_or_the_whole_new_one(tmp_path):
    """A writer function (as the harvest passes safetensors' ``save_file``) that fails halfway leaves the file
    as it was and no temporary file, its own included; one that succeeds replaces it whole, readable by others."""
    from interp.figures import atomic_write

    path = tmp_path / "shard.safetensors"
    atomic_write(path, b"old")

    def half(tmp):  # as safetensors' save_file does: its own temporary file beside its target
        (tmp.parent / ".tmpAbC123").write_bytes(b"new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, half)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o644
