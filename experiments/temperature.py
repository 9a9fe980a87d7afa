"""How temperature reshapes the next-token distribution, and what that does to sampled text.

The lecture's claims, measured: about 0.1 repeats itself, about 1 is balanced, 10 and above is chaos, and
coherence decays over long continuations. Writes four figures (each with its JSON data):

  temperature_next_token   top-k next-token probabilities at each chosen T, side by side
  temperature_entropy      entropy, effective vocabulary and top-1 mass over a dense sweep of T
  temperature_samples      sampled continuations per T, with distinct-2 and the repeated-4-gram fraction
  temperature_coherence    mean log-prob (under T=1) of each generated token against its position

    python -m experiments.temperature --temperatures 0.1 0.5 1 2 10 --samples 4 --new-tokens 40
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import common
from experiments.common import Figure
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
DESCRIPTION = "what temperature does to the next-token distribution and to sampled text (the lecture's regimes)"
NEEDS_WEIGHTS = True


@dataclass(frozen=True)
class Config:
    prompt: str = field(default=DEFAULT_PROMPT, metadata={"help": "prompt to continue"})
    # The lecture's regimes, and two in between.
    temperatures: tuple[float, ...] = field(default=(0.1, 0.5, 1.0, 2.0, 10.0),
                                            metadata={"help": "temperatures to sample at, >= 0 (0 = greedy)"})
    samples: int = field(default=4, metadata={"help": "continuations per temperature"})
    # Long enough for loops (low T) and drift (high T) to show.
    new_tokens: int = field(default=40, metadata={"help": "tokens per continuation"})
    top_k: int = field(default=10, metadata={"help": "tokens shown per temperature in the next-token figure"})
    dense: int = field(default=60, metadata={"help": "points in the log-spaced sweep from 0.05 to 20"})
    seed: int = 0

    def __post_init__(self):  # the one place a temperature is checked on this path
        object.__setattr__(self, "temperatures", check_temperatures(self.temperatures))
        if not self.prompt:
            raise ValueError("--prompt is empty")
        for name in ("samples", "new_tokens", "top_k", "dense"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Result:
    model: str
    config: dict
    chosen: dict[float, dict]  # per chosen T: top tokens, probs, metrics
    dense: dict  # "T" and each metric -> a list over the dense sweep
    samples: dict[float, list]  # T -> list of {text, distinct_1, distinct_2, repeated_4gram, mean_logprob}
    coherence: dict[float, list]  # T -> mean log-prob per position (over samples)


def dense_temperatures(n: int) -> list[float]:
    return [round(float(t), 6) for t in np.geomspace(0.05, 20, n)]


def compute(model, config: Config, progress=None) -> Result:
    progress = progress or (lambda line: None)
    chosen = config.temperatures
    dense = dense_temperatures(config.dense)
    sweep = temperature_sweep(model, config.prompt, list(chosen) + dense, k=config.top_k)  # one forward pass
    frame = sweep.to_frame()
    metric_names = ["entropy_bits", "effective_vocab", "top1_mass", "top5_mass", "top50_mass", "kl_from_t1",
                    "greedy_prob"]
    chosen_out = {
        t: {"top_tokens": list(sweep.top_strings[i]), "top_probs": sweep.top_probs[i, :len(sweep.top_strings[i])].tolist(),
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
        samples[t] = [
            {"text": text, "distinct_1": distinct_n(tokens, 1), "distinct_2": distinct_n(tokens, 2),
             "repeated_4gram": repeated_ngram_fraction(tokens, 4), "mean_logprob": float(lp.mean())}
            for text, tokens, lp in zip(gen.texts, gen.tokens, logprobs)
        ]
        coherence[t] = logprobs.mean(0).tolist()
        progress(f"  T={t:g}: {config.samples} samples x {config.new_tokens} tokens "
                 f"({time.perf_counter() - start:.1f}s)")
    return Result(model_info(model).label, asdict(config), chosen_out, dense_out, samples, coherence)


def mean_of(rows: list[dict], key: str) -> float:
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
        fig.update_xaxes(range=[0, 1], title_text=f"probability (H = {row['entropy_bits']:.2f} bits)", row=1, col=col)
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
        chosen_t = list(result.chosen)
        fig.add_scatter(x=chosen_t, y=[result.chosen[t][key] for t in result.chosen], mode="markers+text",
                        text=[f"T={t}" for t in result.chosen], textposition="top left", row=row, col=1,
                        marker=dict(color="#E45756", size=9), showlegend=False, cliponaxis=False,
                        hovertemplate=f"chosen T=%{{x}}<br>{key}=%{{y:.4g}}<extra></extra>")
    fig.update_xaxes(type="log", tickvals=common.log_ticks(min(d["T"]), max(d["T"])))  # every row: one type
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
    summary = ", ".join(f"T={t}: distinct-2 {mean_of(s, 'distinct_2'):.2f}" for t, s in result.samples.items())
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
        lines.append(f"T={t}: distinct-2 {mean_of(samples, 'distinct_2'):.2f}, repeated 4-grams "
                     f"{mean_of(samples, 'repeated_4gram'):.2f}, mean log p {mean_of(samples, 'mean_logprob'):.2f}, "
                     f"next-token entropy {result.chosen[t]['entropy_bits']:.2f} bits")
        for s in samples[:2]:
            lines.append("    " + repr(s["text"][:110]))
    return "\n".join(lines)


def figures(result: Result) -> list[Figure]:
    head = {"model": result.model, "config": result.config}
    return [
        Figure("temperature_next_token", plot_next_token(result), head | {"chosen": result.chosen}),
        Figure("temperature_entropy", plot_entropy(result), head | {"dense": result.dense, "chosen": result.chosen}),
        Figure("temperature_samples", plot_samples(result), head | {"samples": result.samples}),
        Figure("temperature_coherence", plot_coherence(result), head | {"coherence": result.coherence}),
    ]


def main(argv: list[str] | None = None) -> int:
    from experiments.runner import main as run

    return run(argv, only="temperature")


if __name__ == "__main__":
    raise SystemExit(main())
