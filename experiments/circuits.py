"""Which edges carry in-context copying: exact edge patching, EAP and EAP-IG on the copying task, and how
faithful the circuits they find are.

Writes (each with its JSON data):

  circuits_graph          the top edges as a graph: nodes by layer, edge width by |score|, colour by sign,
                          the score on hover; exact noising beside exact denoising
  circuits_faithfulness   faithfulness against circuit size for EAP, EAP-IG, exact and a random ranking
  circuits_scatter        each edge's EAP and EAP-IG score against its exact score (noising)

    python -m experiments.circuits --pairs 4 --seq-len 10 --steps 8
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import common
from experiments.common import Figure
from interp.circuits import CIRCUIT_FRACTIONS, edge_attribution, faithfulness_curve, graph
from interp.heads import copying_task
from interp.loading import model_info

DESCRIPTION = "edge-level circuits of in-context copying: exact patching, EAP, EAP-IG and their faithfulness"
NEEDS_WEIGHTS = True
METHODS = ("exact", "eap", "eap-ig")


@dataclass(frozen=True)
class Config:
    pairs: int = field(default=4, metadata={"help": "prompt pairs (scores are their mean, with a bootstrap CI)"})
    # 10-token copies: long enough for the induction head to matter, short enough for exact patching of
    # every edge in seconds.
    seq_len: int = field(default=10, metadata={"help": "length of each copy of the random tokens"})
    steps: int = field(default=8, metadata={"help": "EAP-IG's Riemann steps"})
    top_edges: int = field(default=12, metadata={"help": "edges drawn in the circuit graph"})
    seed: int = 0

    def __post_init__(self):
        if self.pairs < 1 or self.seq_len < 2 or self.steps < 1 or self.top_edges < 1:
            raise ValueError("--pairs, --steps and --top-edges must be >= 1, and --seq-len >= 2")


@dataclass(frozen=True)
class Result:
    model: str
    config: dict
    n_layers: int
    n_heads: int
    edges: list[str]  # edge names, graph order
    scores: dict  # "exact_noising", "exact_denoising", "eap", "eap-ig" -> [edge]
    intervals: dict  # the same keys -> [[low, high]] per edge
    clean_metric: float
    corrupted_metric: float
    faithfulness: dict  # method -> {"sizes": [...], "values": [...], "area": float}
    fractions: list[float]


def compute(model, config: Config, progress=None) -> Result:
    progress = progress or (lambda line: None)
    clean, corrupted, metric = copying_task(model, n_pairs=config.pairs, seq_len=config.seq_len,
                                            seed=config.seed)
    g = graph(model)
    runs = {}
    for key, method, direction in (("exact_noising", "exact", "noising"), ("exact_denoising", "exact", "denoising"),
                                   ("eap", "eap", "noising"), ("eap-ig", "eap-ig", "noising")):
        progress(f"  {key}: {len(g.edges)} edges")
        runs[key] = edge_attribution(model, clean, corrupted, metric, method=method, direction=direction,
                                     **({"steps": config.steps} if method == "eap-ig" else {}))
    rankings = {"exact": runs["exact_noising"], "eap": runs["eap"], "eap-ig": runs["eap-ig"]}
    shuffled = list(g.edges)
    random.Random(config.seed).shuffle(shuffled)
    curves = {}
    for name, ranking in [*rankings.items(), ("random", shuffled)]:
        progress(f"  faithfulness: {name}")
        curve = faithfulness_curve(model, ranking, clean, corrupted, metric)
        curves[name] = {"sizes": list(curve.sizes), "values": [round(v, 6) for v in curve.values],
                        "area": round(curve.area, 6)}
    first = runs["exact_noising"]
    return Result(
        model=model_info(model).label, config=asdict(config), n_layers=g.n_layers, n_heads=g.n_heads,
        edges=[e.name for e in g.edges],
        scores={k: [round(float(v), 6) for v in r.scores] for k, r in runs.items()},
        intervals={k: [[round(float(lo), 6), round(float(hi), 6)] for lo, hi in zip(r.ci_low, r.ci_high)]
                   for k, r in runs.items()},
        clean_metric=first.clean_metric, corrupted_metric=first.corrupted_metric,
        faithfulness=curves, fractions=list(CIRCUIT_FRACTIONS))


def _ranked(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -abs(scores[i]))


def _node_xy(name: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    """Input at the bottom, each layer's heads in a row with its MLP to their right and a little above (it
    reads them), the logits on top."""
    middle = (n_heads - 1) / 2
    if name == "input":
        return middle, 0.0
    if name == "logits":
        return middle, 2.0 * n_layers + 1
    if name.startswith("m"):
        return float(n_heads), 2.0 * int(name[1:]) + 1.6
    layer, head = (int(x) for x in name[1:].split(".h"))
    return float(head), 2.0 * layer + 1


DASH = {"q": "dot", "k": "dash", "v": "solid", "": "solid"}


def _curve(p0, p1, bend: float = 0.18, points: int = 16) -> tuple[list[float], list[float]]:
    """A gentle arc from p0 to p1, so an edge never runs through a node it does not touch."""
    (x0, y0), (x1, y1) = p0, p1
    cx, cy = (x0 + x1) / 2 - bend * (y1 - y0), (y0 + y1) / 2 + bend * (x1 - x0)
    ts = [i / (points - 1) for i in range(points)]
    return ([(1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t ** 2 * x1 for t in ts],
            [(1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t ** 2 * y1 for t in ts])


def plot_graph(result: Result) -> go.Figure:
    keys = (("exact_noising", "exact noising: the clean run needs it"),
            ("exact_denoising", "exact denoising: it alone restores the copy"))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[t for _, t in keys], horizontal_spacing=0.06)
    n_layers, n_heads = result.n_layers, result.n_heads
    nodes = ["input"] + [f"a{layer}.h{h}" for layer in range(n_layers) for h in range(n_heads)] + \
        [f"m{layer}" for layer in range(n_layers)] + ["logits"]
    for col, (key, _) in enumerate(keys, start=1):
        scores = result.scores[key]
        top = _ranked(scores)[:result.config["top_edges"]]
        largest = max(abs(scores[i]) for i in top) or 1.0
        for rank, i in enumerate(top, start=1):
            name = result.edges[i]
            sender, rest = name.split("->")
            receiver, qkv = (rest.split("<")[0], rest.split("<")[1].rstrip(">")) if "<" in rest else (rest, "")
            xs, ys = _curve(*(_node_xy(n, n_layers, n_heads) for n in (sender, receiver)))
            lo, hi = result.intervals[key][i]
            fig.add_scatter(x=xs, y=ys, mode="lines", row=1, col=col, showlegend=False,
                            line=dict(width=1 + 9 * abs(scores[i]) / largest, dash=DASH[qkv],
                                      color="#c0392b" if scores[i] < 0 else "#2471a3"),
                            hovertemplate=f"#{rank} {name}<br>score {scores[i]:+.3f} nats "
                                          f"(95% CI {lo:+.3f}..{hi:+.3f})<extra></extra>")
        xy = [_node_xy(n, n_layers, n_heads) for n in nodes]
        fig.add_scatter(x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers+text", text=nodes,
                        textposition="middle right", marker=dict(size=14, color="#555"), row=1, col=col,
                        showlegend=False, hoverinfo="text")
    for qkv, label in (("q", "into a query"), ("k", "into a key"), ("v", "into a value, an MLP or the logits")):
        fig.add_scatter(x=[None], y=[None], mode="lines", line=dict(dash=DASH[qkv], color="#555"), name=label)
    fig.update_xaxes(visible=False, range=[-0.7, n_heads + 1.0])
    fig.update_yaxes(visible=False)
    fig.update_layout(width=1200, height=300 + 110 * n_layers, margin=dict(t=140),
                      legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.04),
                      title=common.title(f"The top {result.config['top_edges']} edges of in-context copying "
                                         "(width: |score|; blue raises, red lowers the log-prob of the copy)",
                                         result.model))
    return fig


def plot_faithfulness(result: Result) -> go.Figure:
    fig = go.Figure()
    total = len(result.edges)
    for name, curve in result.faithfulness.items():
        fig.add_scatter(x=[max(s, 0.5) for s in curve["sizes"]], y=curve["values"], mode="lines+markers",
                        name=f"{name} (area {curve['area']:.2f})",
                        line=dict(dash="dot" if name == "random" else "solid"),
                        hovertemplate="%{text} edges: faithfulness %{y:.3f}<extra>" + name + "</extra>",
                        text=[str(s) for s in curve["sizes"]])
    fig.update_xaxes(type="log", title_text=f"edges in the circuit (of {total}; 0 drawn at 0.5)", dtick=1)
    fig.update_yaxes(title_text="faithfulness: (circuit - corrupted) / (clean - corrupted)")
    fig.update_layout(width=900, height=560, margin=dict(t=120),
                      title=common.title("Faithfulness of the top-n edges of each ranking, on the copying task",
                                         result.model))
    return fig


def plot_scatter(result: Result) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=["EAP against exact (noising)",
                                                        "EAP-IG against exact (noising)"],
                        horizontal_spacing=0.1)
    exact = result.scores["exact_noising"]
    for col, key in enumerate(("eap", "eap-ig"), start=1):
        fig.add_scatter(x=exact, y=result.scores[key], mode="markers", text=result.edges, row=1, col=col,
                        showlegend=False, marker=dict(size=8, opacity=0.7),
                        hovertemplate="%{text}<br>exact %{x:+.3f}<br>estimate %{y:+.3f}<extra></extra>")
        low, high = min(exact + result.scores[key]), max(exact + result.scores[key])
        fig.add_scatter(x=[low, high], y=[low, high], mode="lines", line=dict(dash="dot", color="#999"),
                        row=1, col=col, showlegend=False, hoverinfo="skip")
        fig.update_xaxes(title_text="exact score (nats)", row=1, col=col)
        fig.update_yaxes(title_text=f"{key} score (nats)", row=1, col=col)
    fig.update_layout(width=1100, height=520, margin=dict(t=120),
                      title=common.title("Edge scores: one point per edge, the diagonal is perfect", result.model))
    return fig


def summary(result: Result) -> str:
    lines = [f"model: {result.model}",
             f"metric: clean {result.clean_metric:.3f}, corrupted {result.corrupted_metric:.3f} (log-prob)"]
    for key, scores in result.scores.items():
        top = ", ".join(f"{result.edges[i]} {scores[i]:+.2f}" for i in _ranked(scores)[:5])
        lines.append(f"{key:16s} top 5: {top}")
    lines += [f"faithfulness area, {name}: {curve['area']:.3f}" for name, curve in result.faithfulness.items()]
    return "\n".join(lines)


def figures(result: Result) -> list[Figure]:
    data = asdict(result)
    return [Figure("circuits_graph", plot_graph(result), data),
            Figure("circuits_faithfulness", plot_faithfulness(result),
                   {k: data[k] for k in ("model", "config", "faithfulness", "fractions", "edges")}),
            Figure("circuits_scatter", plot_scatter(result), {k: data[k] for k in ("model", "config", "edges",
                                                                                   "scores")})]


def main(argv: list[str] | None = None) -> int:
    from experiments.runner import main as run

    return run(argv, only="circuits")


if __name__ == "__main__":
    raise SystemExit(main())
