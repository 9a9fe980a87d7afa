"""What the attention heads do: their patterns on a prompt, and every head's detector scores.

Writes (each with its JSON data):

  head_attention_patterns    a grid of attention patterns (layers x heads) on the prompt, with token labels
  head_scores                layer x head heatmaps: previous-token, induction, duplicate-token, first-token
  head_attention_explorer    an interactive viewer with a layer/head selector; plotly only, works offline

    python -m experiments.head_attention --prompt "When Mary and John went to the store, John gave a drink to"
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import common
from interp.figures import FigureWriter
from interp.heads import SCORE_NAMES, head_scores
from interp.hooks import cache_heads
from interp.loading import detector_tokens, model_info

DEFAULT_PROMPT = ("The cat sat on the mat. The dog sat on the log. The cat sat on the mat because the cat was "
                  "tired.")
MAX_GRID_LAYERS = 12  # the grid shows at most this many layers x heads panels; the explorer shows all


@dataclass(frozen=True)
class Config:
    prompt: str = DEFAULT_PROMPT  # repeats itself, so induction and duplicate-token heads have something to do
    seq_len: int = 50  # repeated random tokens for the detectors: [BOS, 50 random, the same 50 again]
    batch: int = 8
    seed: int = 0


@dataclass(frozen=True)
class Result:
    model: str
    config: dict
    tokens: list[str]
    patterns: list  # [layer][head][query_pos][key_pos]
    scores: dict  # score name -> [layer][head]
    top: dict  # score name -> [(layer, head, score)] best five


def compute(model, config: Config) -> Result:
    tokens = model.to_tokens(config.prompt)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"the prompt is {tokens.shape[1]} tokens; the context window is {model.cfg.n_ctx}")
    pattern = cache_heads(model, tokens, kinds=("pattern",)).pattern[:, :, 0]  # [layer, head, query, key]
    pool = detector_tokens(model)
    scores = head_scores(model, seq_len=min(config.seq_len, (model.cfg.n_ctx - 1) // 2), batch=config.batch,
                         seed=config.seed, token_pool=pool)
    labels = [model.tokenizer.decode([t]) for t in tokens[0].tolist()]
    return Result(
        model=model_info(model).label,
        config=asdict(config) | {"detector_tokens": "any token" if pool is None else
                                 f"the {len(pool)} tokens the checkpoint's detector_tokens.json lists"},
        tokens=labels,
        patterns=[[[[round(x, 5) for x in row] for row in head] for head in layer] for layer in pattern.tolist()],
        scores={name: [[round(x, 6) for x in row] for row in scores[name].tolist()] for name in SCORE_NAMES},
        top={name: scores.top(name, 5) for name in SCORE_NAMES},
    )


def _tick_labels(tokens: list[str]) -> list[str]:
    return [f"{i}:{t!r}"[:16] for i, t in enumerate(tokens)]


def plot_patterns(result: Result) -> go.Figure:
    n_layers, n_heads = len(result.patterns), len(result.patterns[0])
    layers = list(range(min(n_layers, MAX_GRID_LAYERS)))
    fig = make_subplots(rows=len(layers), cols=n_heads, horizontal_spacing=0.005, vertical_spacing=0.01,
                        column_titles=[f"head {h}" for h in range(n_heads)],
                        row_titles=[f"L{layer}" for layer in layers])
    labels = _tick_labels(result.tokens)
    for layer in layers:
        for head in range(n_heads):
            fig.add_heatmap(z=result.patterns[layer][head], x=labels, y=labels, coloraxis="coloraxis",
                            row=layer + 1, col=head + 1,
                            hovertemplate=f"L{layer}H{head}<br>query %{{y}}<br>key %{{x}}<br>attention %{{z:.3f}}"
                                          "<extra></extra>")
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    panel = max(120, 560 // n_heads)  # small models get bigger panels
    fig.update_layout(width=panel * n_heads + 260, height=panel * len(layers) + 220, margin=dict(t=150),
                      coloraxis=dict(colorscale="Blues", cmin=0, cmax=1, colorbar_title="attention"),
                      title=common.title(f"Attention patterns on {result.config['prompt'][:40]!r}...<br>"
                                         "rows: query, columns: key; hover for tokens", result.model))
    return fig


def plot_scores(result: Result) -> go.Figure:
    titles = {"previous_token": "previous-token", "induction": "induction", "duplicate_token": "duplicate-token",
              "first_token": "attention to first (BOS) token"}
    fig = make_subplots(rows=2, cols=2, subplot_titles=[
        f"{titles[n]} (best: {result.top[n][0][0]}.{result.top[n][0][1]} = {result.top[n][0][2]:.2f})"
        for n in SCORE_NAMES], horizontal_spacing=0.1, vertical_spacing=0.14)
    for i, name in enumerate(SCORE_NAMES):
        z = result.scores[name]
        fig.add_heatmap(z=z, x=[f"H{h}" for h in range(len(z[0]))], y=[f"L{layer}" for layer in range(len(z))],
                        coloraxis="coloraxis", row=i // 2 + 1, col=i % 2 + 1,
                        text=[[f"{v:.2f}" for v in row] for row in z],
                        texttemplate="%{text}" if len(z) * len(z[0]) <= 48 else None,
                        hovertemplate=f"{titles[name]}<br>%{{y}} %{{x}}: %{{z:.3f}}<extra></extra>")
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(width=1050, height=880, margin=dict(t=140), coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1,
                                                             colorbar_title="mean attention"),
                      title=common.title(f"Head detector scores on repeated random tokens "
                                         f"(2 x {result.config['seq_len']} tokens, batch {result.config['batch']},<br>"
                                         f"drawn from {result.config['detector_tokens']})", result.model))
    return fig


def plot_explorer(result: Result) -> go.Figure:
    """One heatmap and a dropdown over every layer.head; the page needs only the local plotly.min.js."""
    n_layers, n_heads = len(result.patterns), len(result.patterns[0])
    labels = _tick_labels(result.tokens)
    fig = go.Figure(go.Heatmap(z=result.patterns[0][0], x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1,
                               hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"))

    def caption(layer: int, head: int) -> str:
        s = {n: result.scores[n][layer][head] for n in SCORE_NAMES}
        return (f"L{layer}H{head}: previous-token {s['previous_token']:.2f}, induction {s['induction']:.2f}, "
                f"duplicate {s['duplicate_token']:.2f}, first-token {s['first_token']:.2f}")

    buttons = [dict(label=f"L{layer}H{head}", method="update",
                    args=[{"z": [result.patterns[layer][head]]},
                          {"title.text": common.title(caption(layer, head), result.model)}])
               for layer in range(n_layers) for head in range(n_heads)]
    fig.update_layout(
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.12, yanchor="top",
                          showactive=True)],
        title=common.title(caption(0, 0), result.model), width=950, height=900,
        yaxis=dict(autorange="reversed", title="query token"), xaxis=dict(title="key token", tickangle=-60),
    )
    return fig


def summary(result: Result) -> str:
    lines = [f"model: {result.model}"]
    for name in SCORE_NAMES:
        lines.append(f"{name:16s} top heads: " + ", ".join(f"{layer}.{head} ({s:.2f})"
                                                           for layer, head, s in result.top[name]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.head_attention", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--prompt", default=Config.prompt, help="prompt whose attention patterns are drawn")
    return parser


def run(model, args, writer: FigureWriter, progress=print) -> list:
    config = Config(prompt=args.prompt, seed=args.seed)
    common.seed_everything(config.seed)
    start = time.perf_counter()
    try:
        result = compute(model, config)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    elapsed = time.perf_counter() - start
    print(summary(result))
    data = asdict(result)
    paths = []
    for name, fig in (("head_attention_patterns", plot_patterns(result)), ("head_scores", plot_scores(result)),
                      ("head_attention_explorer", plot_explorer(result))):
        keep = ("model", "config", "tokens", "patterns") if name != "head_scores" else ("model", "config", "scores",
                                                                                         "top")
        paths += writer.save(fig, name, {k: data[k] for k in keep}, params=asdict(config), wall_seconds=elapsed)
    return paths


def main(argv: list[str] | None = None) -> int:
    return common.standalone(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
