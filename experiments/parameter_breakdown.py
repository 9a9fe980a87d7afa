"""Where GPT-2's parameters live: the share of each component, the per-layer breakdown, and both totals.

Computed from a weightless skeleton of the architecture, so GPT-2 small's exact figures need no download::

    python -m experiments.parameter_breakdown                        # GPT-2 small, from its config
    python -m experiments.parameter_breakdown --model gpt2-medium    # any GPT-2 name, from its published config
    python -m experiments.parameter_breakdown --model ./my-ckpt      # any local GPT-2 checkpoint's own numbers
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments.common import Figure, title
from interp.architecture import component_table, config_summary, parameter_listing

DESCRIPTION = "where the parameters live, by component and layer, tied and untied totals (no weights needed)"
NEEDS_WEIGHTS = False
CATEGORIES = ("token embedding", "position embedding", "attention QKV", "attention output", "MLP in", "MLP out",
              "LayerNorms", "unembedding")
LAYER_CATEGORIES = ("attention QKV", "attention output", "MLP in", "MLP out", "LayerNorms")


@dataclass(frozen=True)
class Config:
    seed: int = 0  # nothing here is random; kept so every family's Config has the run's seed


@dataclass(frozen=True)
class Result:
    spec: str
    label: str
    config: dict
    by_category: dict[str, int]
    per_layer: dict[str, list[int]]  # category -> count per layer
    tied_total: int
    untied_total: int
    why_totals_differ: str
    table: list[dict]  # the component table, one dict per row


def compute(skeleton, config: Config, progress=None) -> Result:
    """Count every component of a weightless skeleton (``interp.architecture(spec)``)."""
    table = component_table(skeleton)
    listing = parameter_listing(skeleton)
    assert table.total == listing.tied_total, "component rows must sum to the tied total"
    n_layers = skeleton.config.n_layer
    per_layer = {c: [0] * n_layers for c in LAYER_CATEGORIES}
    for row in table.rows:
        if row.layer is not None:
            per_layer[row.category][row.layer] += row.count
    frame = table.to_frame()
    return Result(
        spec=skeleton.interp_spec,
        label=f"{skeleton.interp_label} (architecture from its config; no weights needed)",
        config=config_summary(skeleton),
        by_category=table.by_category(),
        per_layer=per_layer,
        tied_total=listing.tied_total,
        untied_total=listing.untied_total,
        why_totals_differ=listing.why,
        table=frame.astype(object).where(frame.notna(), None).to_dict(orient="records"),
    )


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%" if share >= 0.01 or share == 0 else f"{100 * share:.2f}%"


def plot(result: Result) -> go.Figure:
    fig = make_subplots(
        rows=2, cols=2, specs=[[{"type": "bar"}, {"type": "bar"}], [{"type": "bar", "colspan": 2}, None]],
        subplot_titles=("Share of the parameters, by component", "Tied vs untied total",
                        "Per layer (every block is the same size)"),
        vertical_spacing=0.16, horizontal_spacing=0.22,
    )
    total = result.tied_total
    counts = [result.by_category.get(c, 0) for c in CATEGORIES]
    names = [c if c != "unembedding" else "unembedding (tied to wte: 0 new)" for c in CATEGORIES]
    fig.add_bar(
        y=names[::-1], x=[100 * n / total for n in counts][::-1], orientation="h", row=1, col=1,
        customdata=counts[::-1], text=[_percent(n / total) for n in counts][::-1], textposition="outside",
        hovertemplate="%{y}<br>%{customdata:,} parameters<br>%{x:.2f}% of the tied total<extra></extra>",
        marker_color="#4C78A8", showlegend=False, cliponaxis=False,
    )
    fig.update_xaxes(title_text="% of tied total", row=1, col=1)
    shared = result.untied_total - result.tied_total
    fig.add_bar(
        x=["tied (real)", "lm_head counted separately"], y=[result.tied_total, result.untied_total], row=1, col=2,
        text=[f"{result.tied_total:,}", f"{result.untied_total:,}"], textposition="outside", showlegend=False,
        marker_color=["#4C78A8", "#F58518"], cliponaxis=False,
        hovertemplate="%{x}<br>%{y:,} parameters<extra></extra>",
    )
    fig.update_yaxes(title_text="parameters", range=[0, 1.2 * result.untied_total], row=1, col=2)
    fig.add_annotation(text=f"difference {shared:,} = wte, shared with lm_head", x=0.5, y=1.1 * result.untied_total,
                       xref="x2", yref="y2", showarrow=False, font_size=11)
    n_layers = len(next(iter(result.per_layer.values())))
    layer_total = [sum(result.per_layer[c][i] for c in LAYER_CATEGORIES) for i in range(n_layers)]
    for category in LAYER_CATEGORIES:
        values = result.per_layer[category]
        fig.add_bar(
            x=[f"block {i}" for i in range(n_layers)], y=values, name=category, row=2, col=1,
            customdata=[[v / t * 100, v / total * 100] for v, t in zip(values, layer_total)],
            hovertemplate=(f"{category}<br>%{{x}}: %{{y:,}} parameters<br>%{{customdata[0]:.1f}}% of the block, "
                           "%{customdata[1]:.2f}% of the model<extra></extra>"),
        )
    fig.update_layout(
        barmode="stack", width=1100, height=800, legend_title_text="block component",
        legend=dict(x=1.01, xanchor="left", y=0.42, yanchor="top"),  # beside the per-layer panel it keys
        title=title(f"Where the parameters live: {result.tied_total:,} in total "
                    f"(d_model {result.config['d_model']}, {result.config['n_layers']} layers, "
                    f"{result.config['n_heads']} heads, vocab {result.config['d_vocab']:,})", result.label),
        margin=dict(t=110),
    )
    fig.update_yaxes(title_text="parameters", row=2, col=1)
    return fig


def summary(result: Result) -> str:
    import pandas as pd

    frame = pd.DataFrame(result.table)
    blocks = frame[frame.layer.notna()].groupby("component", sort=False)["count"].agg(["first", "sum"])
    top = frame[frame.layer.isna()][["component", "shape", "count", "note"]]
    lines = [
        f"{result.label}",
        "config: " + ", ".join(f"{k} {v}" for k, v in result.config.items()),
        "",
        top.to_string(index=False),
        "",
        "per block (first layer / all layers):",
        blocks.rename(columns={"first": "one block", "sum": "all blocks"}).to_string(),
        "",
        f"total, tied (what the model holds):        {result.tied_total:>14,}",
        f"total, lm_head counted on its own:         {result.untied_total:>14,}",
        result.why_totals_differ,
    ]
    return "\n".join(lines)


def figures(result: Result) -> list[Figure]:
    return [Figure("parameter_breakdown", plot(result), result.__dict__)]


def main(argv: list[str] | None = None) -> int:
    from experiments.runner import main as run

    return run(argv, only="parameter_breakdown")


if __name__ == "__main__":
    raise SystemExit(main())
