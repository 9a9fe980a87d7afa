"""What the attention heads do: their patterns on a prompt, and every head's detector scores.

Writes (each with its JSON data):

  head_attention_patterns    a grid of attention patterns (layers x heads) on the prompt, with token labels
  head_scores                layer x head heatmaps, one per registered detector (interp.heads.DETECTORS)
  head_attention_explorer    an interactive viewer with a layer/head selector; plotly only, works offline

    python -m experiments.head_attention --prompt "When Mary and John went to the store, John gave a drink to"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import common
from experiments.common import Figure
from interp.caching import cache_heads
from interp.heads import DETECTORS, detector_tokens, head_scores
from interp.inputs import to_tokens
from interp.loading import model_info

DEFAULT_PROMPT = ("The cat sat on the mat. The dog sat on the log. The cat sat on the mat because the cat was "
                  "tired.")
MAX_GRID_LAYERS = 12  # the grid shows at most this many layers x heads panels; the explorer shows all
DESCRIPTION = "attention patterns of every head on a prompt, and every head's detector scores"
NEEDS_WEIGHTS = True


@dataclass(frozen=True)
class Config:
    # Repeats itself, so induction and duplicate-token heads have something to do.
    prompt: str = field(default=DEFAULT_PROMPT, metadata={"help": "prompt whose attention patterns are drawn"})
    # Repeated random tokens for the detectors: [BOS, 50 random, the same 50 again] (capped by the context).
    seq_len: int = field(default=50, metadata={"help": "length of each copy of the detectors' random tokens"})
    batch: int = field(default=8, metadata={"help": "rows of random tokens the detector scores average over"})
    seed: int = 0

    def __post_init__(self):
        if not self.prompt:
            raise ValueError("--prompt is empty")
        if self.seq_len < 2 or self.batch < 1:
            raise ValueError(f"--seq-len must be >= 2 and --batch >= 1, got {self.seq_len} and {self.batch}")


@dataclass(frozen=True)
class Result:
    model: str
    config: dict
    tokens: list[str]
    patterns: list  # [layer][head][query_pos][key_pos]
    scores: dict  # score name -> [layer][head]
    top: dict  # score name -> [(layer, head, score)] best five


def compute(model, config: Config, progress=None) -> Result:
    tokens = to_tokens(model, config.prompt)  # a long prompt is an error, never cut
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
        scores={name: [[round(x, 6) for x in row] for row in scores[name].tolist()] for name in scores.names},
        top={name: scores.top(name, 5) for name in scores.names},
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
    """One heatmap per detector, captioned from the registry."""
    names = list(result.scores)
    cols = 2 if len(names) <= 4 else 3
    rows = -(-len(names) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[
        f"{n.replace('_', ' ')} (best: {result.top[n][0][0]}.{result.top[n][0][1]} = "
        f"{result.top[n][0][2]:.2f})" for n in names], horizontal_spacing=0.12, vertical_spacing=0.16)
    for i, name in enumerate(names):
        z = result.scores[name]
        fig.add_heatmap(z=z, x=[f"H{h}" for h in range(len(z[0]))], y=[f"L{layer}" for layer in range(len(z))],
                        coloraxis="coloraxis", row=i // cols + 1, col=i % cols + 1,
                        text=[[f"{v:.2f}" for v in row] for row in z],
                        texttemplate="%{text}" if len(z) * len(z[0]) <= 48 else None,
                        hovertemplate=f"{name}<br>%{{y}} %{{x}}: %{{z:.3f}}<extra></extra>")
    fig.update_yaxes(autorange="reversed")
    fig.update_annotations(font_size=13)
    captions = "<br>".join(f"<b>{n.replace('_', ' ')}</b>: {DETECTORS[n].description}" for n in names)
    fig.add_annotation(text=captions, xref="paper", yref="paper", x=0, y=-0.06, xanchor="left", yanchor="top",
                       showarrow=False, align="left", font=dict(size=11))
    fig.update_layout(width=525 * cols, height=230 + 380 * rows + 18 * len(names), margin=dict(t=190, b=40 + 18 * len(names)),
                      coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1, colorbar_title="mean attention"),
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
        return f"L{layer}H{head}: " + ", ".join(f"{name.replace('_', '-')} {values[layer][head]:.2f}"
                                                 for name, values in result.scores.items())

    buttons = [dict(label=f"L{layer}H{head}", method="update",
                    args=[{"z": [result.patterns[layer][head]]},
                          {"title.text": common.title(caption(layer, head), result.model)}])
               for layer in range(n_layers) for head in range(n_heads)]
    fig.update_layout(
        updatemenus=[dict(buttons=buttons, direction="down", x=0.0, xanchor="left", y=1.02, yanchor="bottom",
                          showactive=True)],
        title=common.title(caption(0, 0), result.model), width=950, height=940, margin=dict(t=170),
        yaxis=dict(autorange="reversed", title="query token"), xaxis=dict(title="key token", tickangle=-60),
    )
    return fig


def summary(result: Result) -> str:
    lines = [f"model: {result.model}"]
    for name in result.scores:
        lines.append(f"{name:16s} top heads: " + ", ".join(f"{layer}.{head} ({s:.2f})"
                                                           for layer, head, s in result.top[name]))
    return "\n".join(lines)


def figures(result: Result) -> list[Figure]:
    data = asdict(result)
    patterns = {k: data[k] for k in ("model", "config", "tokens", "patterns")}
    return [Figure("head_attention_patterns", plot_patterns(result), patterns),
            Figure("head_scores", plot_scores(result), {k: data[k] for k in ("model", "config", "scores", "top")}),
            Figure("head_attention_explorer", plot_explorer(result), patterns)]


def main(argv: list[str] | None = None) -> int:
    from experiments.runner import main as run

    return run(argv, only="head_attention")


if __name__ == "__main__":
    raise SystemExit(main())
