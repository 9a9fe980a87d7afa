"""What every figure family shares: the common CLI options, model resolution with the offline fallback, the
run metadata every figure's manifest entry records, and the ``Figure`` a family returns."""

from __future__ import annotations

import argparse
import random
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from interp.backends import AVAILABLE_BACKENDS, DEFAULT_BACKEND, TL_VERSION
from interp.inputs import check_folder
from interp.loading import ModelLoadError, load_gpt2_or_bundled, load_model, model_info

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "figures"
DEFAULT_MODEL = "gpt2"  # GPT-2 small; with no --model it falls back to the bundled model (load_gpt2_or_bundled)


class Figure(NamedTuple):
    """What a family's ``figures(result)`` returns, one per figure: its file name, the plot, its data, and any
    static HTML pages that go with it (a relative path inside the folder ``name/`` -> the page)."""

    name: str
    fig: object  # a plotly Figure
    data: dict
    pages: dict | None = None


def out_folder(value: str) -> Path:
    """``--out``'s type: a folder, refused in argparse's one line when a file is there."""
    try:
        return check_folder(value, "the figures")
    except NotADirectoryError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options every run shares, whichever families it runs."""
    parser.add_argument(
        "--model", default=None, metavar="SPEC",
        help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, 'bundled' or a local GPT-2 checkpoint "
        "directory (default: GPT-2 small, falling back to the bundled offline model when GPT-2's weights can't "
        "be had; pass --model gpt2 to insist on GPT-2)",
    )
    parser.add_argument("--backend", choices=AVAILABLE_BACKENDS, default=DEFAULT_BACKEND,
                        help=f"TransformerBridge in compatibility mode, or HookedTransformer (TransformerLens 3.x "
                        f"only; {TL_VERSION} is installed) (default: {DEFAULT_BACKEND})")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="seed for torch, numpy and random (default: 0)")
    parser.add_argument("--out", type=out_folder, default=None,
                        help="output folder (default: figures/ for every family with its default options; "
                        "figures/runs/FAMILIES-HASH, named by the families and options, otherwise)")
    parser.add_argument("--no-images", action="store_true", help="write HTML and JSON only, skip PNG export")
    parser.add_argument("--svg", action="store_true", help="also export SVG (needs kaleido and Chromium)")


def default_out(families: list[str], options: dict, *, everything: bool) -> Path:
    """Where a run writes without ``--out``: the gallery (``figures/``) for every family with its default
    options; otherwise a folder named by the families and the options (never a timestamp), beside it."""
    if everything and not options:
        return DEFAULT_OUT
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return DEFAULT_OUT / "runs" / f"{'-'.join(families) if not everything else 'all'}-{digest}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_model(spec: str | None, *, backend: str = DEFAULT_BACKEND, device: str | None = None):
    """Load ``spec``; with no spec, GPT-2 small, or the bundled model (saying so) when GPT-2 can't be had.

    Raises:
        SystemExit: with the loader's message when a model the user named cannot be loaded.
    """
    try:
        if spec is None:
            return load_gpt2_or_bundled(backend=backend, device=device)
        return load_model(spec, backend=backend, device=device)
    except ModelLoadError as err:
        raise SystemExit(f"error: {err}") from None


@dataclass(frozen=True)
class RunMeta:
    """What the manifest records for every figure of a run."""

    model_spec: str
    model_label: str
    weights: str  # sha256 of the state dict the model runs with, or "architecture only"
    backend: str
    seed: int
    command: str

    def as_dict(self) -> dict:
        from importlib.metadata import version

        import plotly

        import interp

        return {
            "model": {"spec": self.model_spec, "label": self.model_label, "weights": self.weights},
            "backend": self.backend,
            "seed": self.seed,
            "command": self.command,
            "versions": {"interp": interp.__version__, "transformer-lens": version("transformer-lens"),
                         "torch": torch.__version__, "plotly": plotly.__version__},
        }


def command_line() -> str:
    """The command that started this process, as a user would type it."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    prog = f"python -m {spec.name.removesuffix('.__main__')}" if spec else f"python {sys.argv[0]}"
    return " ".join([prog, shlex.join(sys.argv[1:])]).strip()


def run_meta(model, seed: int, command: str | None = None) -> RunMeta:
    info = model_info(model)
    return RunMeta(info.spec, info.label, info.weights_sha256, info.backend, seed, command or command_line())


def log_ticks(low: float, high: float) -> list[float]:
    """Ticks at 1, 2 and 5 times each power of ten from ``low`` to ``high``: a labelled log axis without
    plotly's bare minor digits ("5 6 7 8 9 0.1")."""
    import math

    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        ticks += [m * 10.0 ** exponent for m in (1, 2, 5) if low <= m * 10.0 ** exponent <= high]
    return [float(f"{t:.6g}") for t in ticks]


def title(text: str, label: str) -> str:
    """A figure title that names the model that made it."""
    return f"{text}<br><sup>model: {label}</sup>"


def image_formats(args) -> tuple[str, ...]:
    """The image formats the CLI flags ask for, besides HTML."""
    return () if args.no_images else ("png", "svg") if args.svg else ("png",)
