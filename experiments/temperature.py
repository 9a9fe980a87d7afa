"""How temperature reshapes the next-token distribution, and what that does to sampled text.

The lecture's claims, measured: about 0.1 repeats itself, about 1 is balanced, 10 and above is chaos, and
coherence decays over long continuations. Writes four figures (each with its JSON data):

  temperature_next_token   top-k next-token probabilities at each chosen T, side by side
  temperature_entropy      entropy, effective vocabulary and top-1 mass over a dense sweep of T
  temperature_samples      sampled continuations per T, with distinct-2 and the repeated-4-gram fraction
  temperature_coherence    mean log-prob (under T=1) of each generated token against its position

    python -m experiments.temperature --temperatures 0.1,0.5,1,2,10 --samples 4 --new-tokens 40
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import common
from interp.figures import FigureWriter
from interp.loading import model_info
from interp.sampling import (
    check_temperatures,
    continuation_logprobs,
    distinct_n,
    generate,
    repeated_ngram_fraction,
    temperature_sweep,
)

DEFAULT_PROMPT = "The following example shows how to"


@dataclass(frozen=True)
class Config:
    prompt: str = DEFAULT_PROMPT
    temperatures: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 10.0)  # the lecture's regimes, and two in between
    samples: int = 4  # continuations per temperature
    new_tokens: int = 40  # long enough for loops (low T) and drift (high T) to show
    top_k: int = 10  # tokens shown per temperature in the next-token figure
    dense: int = 60  # points in the log-spaced sweep from 0.05 to 20
    seed: int = 0


@dataclass(frozen=True)
class Result:
    model: str
    config: dict
    chosen: dict  # per chosen T: top tokens, probs, metrics
    dense: dict  # T -> entropy_bits, effective_vocab, top1_mass, ...
    samples: dict  # T -> list of {text, distinct_1, distinct_2, repeated_4gram, mean_logprob}
    coherence: dict  # T -> mean log-prob per position (over samples)


def dense_temperatures(n: int) -> list[float]:
    return [round(float(t), 6) for t in np.geomspace(0.05, 20, n)]


def compute(model, config: Config, progress=print) -> Result:
    chosen = check_temperatures(config.temperatures)
    dense = dense_temperatures(config.dense)
    sweep = temperature_sweep(model, config.prompt, list(chosen) + dense, k=config.top_k)  # one forward pass
    frame = sweep.to_frame()
    metric_names = ["entropy_bits", "effective_vocab", "top1_mass", "top5_mass", "top50_mass", "kl_from_t1",
                    "greedy_prob"]
    chosen_out = {
        str(t): {"top_tokens": list(sweep.top_strings[i]), "top_probs": sweep.top_probs[i].tolist(),
                 **{m: float(frame[m][i]) for m in metric_names}}
        for i, t in enumerate(chosen)
    }
    dense_out = {m: frame[m][len(chosen):].tolist() for m in metric_names} | {"T": dense}
    samples, coherence = {}, {}
    for i, t in enumerate(chosen):
        start = time.perf_counter()
        gen = generate(model, [config.prompt] * config.samples, max_new_tokens=config.new_tokens, temperature=t,
                       seed=config.seed + 1000 * i)
        logprobs = continuation_logprobs(model, gen)  # (samples, new)
        samples[str(t)] = [
            {"text": text, "distinct_1": distinct_n(tokens, 1), "distinct_2": distinct_n(tokens, 2),
             "repeated_4gram": repeated_ngram_fraction(tokens, 4), "mean_logprob": float(lp.mean())}
            for text, tokens, lp in zip(gen.texts, gen.tokens, logprobs)
        ]
        coherence[str(t)] = logprobs.mean(0).tolist()
        progress(f"  T={t:g}: {config.samples} samples x {config.new_tokens} tokens "
                 f"({time.perf_counter() - start:.1f}s)")
    return Result(model_info(model).label, asdict(config), chosen_out, dense_out, samples, coherence)


def _mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


# ---------------------------------------------------------------------------------------------- plots


def plot_next_token(result: Result) -> go.Figure:
    temps = list(result.chosen)
    fig = make_subplots(rows=1, cols=len(temps), subplot_titles=[f"T = {t}" for t in temps], horizontal_spacing=0.06)
    for col, t in enumerate(temps, start=1):
        row = result.chosen[t]
        fig.add_bar(x=row["top_probs"][::-1], y=[repr(s) for s in row["top_tokens"]][::-1], orientation="h",
                    row=1, col=col, showlegend=False, marker_color="#4C78A8",
                    hovertemplate="%{y}: p = %{x:.4f}<extra></extra>")
        fig.update_xaxes(range=[0, 1], title_text=f"H = {row['entropy_bits']:.2f} bits", row=1, col=col)
    fig.update_layout(width=max(900, 260 * len(temps)), height=520, title=common.title(
        f"Next-token distribution after {result.config['prompt']!r}, at each temperature", result.model))
    return fig


def plot_entropy(result: Result) -> go.Figure:
    d = result.dense
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("entropy (bits)", "effective vocabulary = exp(entropy)", "top-1 mass"))
    for row, key in enumerate(("entropy_bits", "effective_vocab", "top1_mass"), start=1):
        fig.add_scatter(x=d["T"], y=d[key], mode="lines", row=row, col=1, showlegend=False,
                        line_color="#4C78A8", hovertemplate=f"T=%{{x:.3g}}<br>{key}=%{{y:.4g}}<extra></extra>")
        chosen_t = [float(t) for t in result.chosen]
        fig.add_scatter(x=chosen_t, y=[result.chosen[t][key] for t in result.chosen], mode="markers+text",
                        text=[f"T={t}" for t in result.chosen], textposition="top left", row=row, col=1,
                        marker=dict(color="#E45756", size=9), showlegend=False, cliponaxis=False,
                        hovertemplate=f"chosen T=%{{x}}<br>{key}=%{{y:.4g}}<extra></extra>")
    fig.update_xaxes(type="log")  # every row: shared axes must agree on their type
    fig.update_xaxes(title_text="temperature T (log scale)", row=3, col=1)
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_layout(width=1000, height=850, title=common.title(
        f"One forward pass, {len(result.dense['T'])} temperatures: the next-token distribution flattens as T grows",
        result.model))
    return fig


def plot_samples(result: Result) -> go.Figure:
    rows = [(t, i, s) for t, samples in result.samples.items() for i, s in enumerate(samples)]
    fig = go.Figure(go.Table(
        columnwidth=[50, 40, 600, 70, 80, 80],
        header=dict(values=["T", "sample", f"continuation of {result.config['prompt']!r}", "distinct-2",
                            "repeated 4-grams", "mean log p (T=1)"], align="left", fill_color="#DDE6F0"),
        cells=dict(values=[[t for t, _, _ in rows], [i for _, i, _ in rows],
                           [s["text"].replace("\n", "⏎") for _, _, s in rows],
                           [f"{s['distinct_2']:.2f}" for _, _, s in rows],
                           [f"{s['repeated_4gram']:.2f}" for _, _, s in rows],
                           [f"{s['mean_logprob']:.2f}" for _, _, s in rows]], align="left", height=36),
    ))
    summary = ", ".join(f"T={t}: distinct-2 {_mean(s, 'distinct_2'):.2f}" for t, s in result.samples.items())
    fig.update_layout(width=1300, height=140 + 60 * len(rows), margin=dict(t=110), title=common.title(
        f"Sampled continuations ({summary})", result.model))
    return fig


def plot_coherence(result: Result) -> go.Figure:
    fig = go.Figure()
    for t, values in result.coherence.items():
        fig.add_scatter(x=list(range(1, len(values) + 1)), y=values, mode="lines+markers", name=f"T = {t}",
                        hovertemplate=f"T={t}<br>token %{{x}}: mean log p = %{{y:.2f}}<extra></extra>")
    fig.update_layout(width=1000, height=560, xaxis_title="position in the continuation (tokens)",
                      yaxis_title="mean log-probability under the model at T = 1", legend_title="sampled at",
                      title=common.title("Coherence against position: how likely the model itself finds each "
                                         "sampled token", result.model))
    return fig


def summary(result: Result) -> str:
    lines = [f"prompt: {result.config['prompt']!r}   model: {result.model}"]
    for t, samples in result.samples.items():
        lines.append(f"T={t}: distinct-2 {_mean(samples, 'distinct_2'):.2f}, repeated 4-grams "
                     f"{_mean(samples, 'repeated_4gram'):.2f}, mean log p {_mean(samples, 'mean_logprob'):.2f}, "
                     f"next-token entropy {result.chosen[t]['entropy_bits']:.2f} bits")
        for s in samples[:2]:
            lines.append("    " + repr(s["text"][:110]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI


def _temperatures(text: str) -> tuple[float, ...]:
    try:
        return check_temperatures([float(x) for x in text.split(",") if x.strip()])
    except ValueError as err:
        raise SystemExit(f"error: --temperatures {text!r}: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.temperature", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--prompt", default=Config.prompt, help=f"prompt (default: {Config.prompt!r})")
    parser.add_argument("--temperatures", default=",".join(f"{t:g}" for t in Config.temperatures),
                        help="comma-separated temperatures, >= 0 (0 = greedy) (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=Config.samples, help="continuations per temperature")
    parser.add_argument("--new-tokens", type=int, default=Config.new_tokens, help="tokens per continuation")
    return parser


def config_from(args) -> Config:
    if args.samples < 1 or args.new_tokens < 1:
        raise SystemExit("error: --samples and --new-tokens must be at least 1")
    return Config(prompt=args.prompt, temperatures=_temperatures(args.temperatures), samples=args.samples,
                  new_tokens=args.new_tokens, seed=args.seed)


def run(model, args, writer: FigureWriter, progress=print) -> list:
    config = config_from(args)
    common.seed_everything(config.seed)
    start = time.perf_counter()
    try:
        result = compute(model, config, progress=progress)
    except ValueError as err:  # e.g. a prompt too long for the context window
        raise SystemExit(f"error: {err}") from None
    elapsed = time.perf_counter() - start
    print(summary(result))
    params = asdict(config)
    paths = []
    for name, fig, data in (
        ("temperature_next_token", plot_next_token(result), {"model": result.model, "config": result.config,
                                                             "chosen": result.chosen}),
        ("temperature_entropy", plot_entropy(result), {"model": result.model, "config": result.config,
                                                       "dense": result.dense, "chosen": result.chosen}),
        ("temperature_samples", plot_samples(result), {"model": result.model, "config": result.config,
                                                       "samples": result.samples}),
        ("temperature_coherence", plot_coherence(result), {"model": result.model, "config": result.config,
                                                           "coherence": result.coherence}),
    ):
        paths += writer.save(fig, name, data, params=params, wall_seconds=elapsed)
    return paths


def main(argv: list[str] | None = None) -> int:
    return common.standalone(build_parser, run, argv, check=config_from)


if __name__ == "__main__":
    raise SystemExit(main())
