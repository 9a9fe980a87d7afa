"""Why low temperature repeats: the temperature regimes tied to the circuit that copies.

Writes (each with its JSON data):

  mechanisms_repetition   repeated 4-grams, distinct-2 and mean log-prob against T, for the intact model, the
                          detected induction heads ablated, and as a control as many other heads ablated;
                          prompts that invite repetition and prompts that don't; error bars over seeds
  mechanisms_patching     activation patching (layer x position, layer x head) on the repeated-token task,
                          with attribution patching beside each
  mechanisms_steering     the next-token distribution and a greedy continuation under a steering vector, at
                          several coefficients

The induction heads are the ones ``interp.head_scores`` flags (score >= the threshold), never typed in.

    python -m experiments.mechanisms --model bundled
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass, field

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from experiments import common
from experiments.common import Figure
from interp.heads import copying_task, detector_tokens, head_scores
from interp.inputs import to_tokens
from interp.interventions import ablate_heads
from interp.loading import model_info
from interp.patching import activation_patching, attribution_patching, steer, steering_vector
from interp.sampling import (
    check_temperatures,
    continuation_logprobs,
    distinct_n,
    generate,
    repeated_ngram_fraction,
)

DESCRIPTION = "why low temperature repeats: repetition vs T with the induction heads ablated, patching, steering"
NEEDS_WEIGHTS = True
CONDITIONS = ("intact", "induction heads ablated", "as many other heads ablated")


@dataclass(frozen=True)
class Config:
    temperatures: tuple[float, ...] = field(default=(0.1, 0.5, 1.0, 2.0),
                                            metadata={"help": "temperatures to sample at"})
    repetitive_prompts: tuple[str, ...] = field(
        default=("import os\nimport sys\nimport os\nimport sys\n", "the king, the king, the king, the"),
        metadata={"help": "prompts that invite repetition"})
    plain_prompts: tuple[str, ...] = field(default=("Once upon a time", "She opened the door and"),
                                           metadata={"help": "prompts that don't"})
    samples: int = field(default=3, metadata={"help": "continuations per prompt, temperature and seed"})
    seeds: int = field(default=3, metadata={"help": "seeds: the error bars are the spread over them"})
    new_tokens: int = field(default=24, metadata={"help": "tokens per continuation"})
    induction_threshold: float = field(default=0.3, metadata={"help": "induction score that flags a head"})
    steer_from: str = field(default=" Elizabeth", metadata={"help": "ActAdd: steer towards this prompt"})
    steer_to: str = field(default=" import", metadata={"help": "ActAdd: ... and away from this one"})
    steer_prompt: str = field(default="She said that", metadata={"help": "prompt to steer"})
    steer_coeffs: tuple[float, ...] = field(default=(0.0, 2.0, 5.0, 10.0), metadata={"help": "steering coefficients"})
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "temperatures", check_temperatures(self.temperatures))
        for name in ("samples", "seeds", "new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.repetitive_prompts or not self.plain_prompts or not all(self.repetitive_prompts + self.plain_prompts):
            raise ValueError("--repetitive-prompts and --plain-prompts need at least one non-empty prompt each")
        if not 0 < self.induction_threshold <= 1:
            raise ValueError(f"--induction-threshold must be in (0, 1], got {self.induction_threshold}")


@dataclass(frozen=True)
class Result:
    model: str
    config: dict
    heads: dict  # condition -> [[layer, head], ...]; and "induction_scores"
    repetition: dict  # condition -> prompt kind -> metric -> {"T": [...], "mean": [...], "std": [...]}
    patching: dict  # exact/attribution x position/head: scores, clean/corrupted metric, tokens
    steering: dict  # coefficient -> top tokens, probs, greedy text


def _heads(config: Config, scores) -> dict:
    induction = scores["induction"]
    n_layers, n_heads = induction.shape
    flagged = [(layer, head) for layer in range(n_layers) for head in range(n_heads)
               if induction[layer, head] >= config.induction_threshold]
    note = f"induction score >= {config.induction_threshold}"
    if not flagged:  # e.g. a random-weight model: the best head stands in, and the data says so
        layer, head, _ = scores.top("induction", 1)[0]
        flagged, note = [(layer, head)], "no head reached the threshold: the best-scoring head"
    others = [(layer, head) for layer in range(n_layers) for head in range(n_heads) if (layer, head) not in flagged]
    control = sorted(random.Random(config.seed).sample(others, min(len(flagged), len(others))))
    return {"intact": [], "induction heads ablated": flagged, "as many other heads ablated": control,
            "how_chosen": note, "induction_scores": induction.tolist()}


def _repetition(model, config: Config, heads: dict, progress) -> dict:
    """One batched ``generate`` per condition and temperature: every prompt x sample x seed is a row with its
    own seed; the rows are then grouped by prompt kind and seed."""
    kinds = {"repetitive": config.repetitive_prompts, "plain": config.plain_prompts}
    rows = [(kind, prompt, s) for kind, prompts in kinds.items() for prompt in prompts
            for s in range(config.seeds) for _ in range(config.samples)]
    out: dict = {}
    for condition in CONDITIONS:
        per_t = {kind: {k: [] for k, _ in METRICS} for kind in kinds}
        for i, t in enumerate(config.temperatures):
            with ablate_heads(model, heads[condition]):
                gen = generate(model, [prompt for _, prompt, _ in rows], max_new_tokens=config.new_tokens,
                               temperature=t, seeds=[config.seed + 1000 * i + r for r in range(len(rows))])
                logp = continuation_logprobs(model, gen).mean(-1)  # under the same (ablated) model
            values = {"repeated_4gram": [repeated_ngram_fraction(x) for x in gen.tokens],
                      "distinct_2": [distinct_n(x, 2) for x in gen.tokens], "mean_logprob": logp.tolist()}
            for kind in kinds:
                for key, column in values.items():
                    by_seed = [statistics.fmean(v for v, (k, _, s) in zip(column, rows) if k == kind and s == seed)
                               for seed in range(config.seeds)]
                    per_t[kind][key].append((statistics.fmean(by_seed), statistics.pstdev(by_seed)))
        out[condition] = {kind: {key: {"T": list(config.temperatures), "mean": [m for m, _ in v],
                                       "std": [sd for _, sd in v]} for key, v in metrics.items()}
                          for kind, metrics in per_t.items()}
        progress(f"  {condition}: {len(config.temperatures)} temperatures x {len(rows)} samples")
    return out


def _patching(model, config: Config) -> dict:
    clean, corrupted, metric = copying_task(model, seed=config.seed)
    out = {"tokens": [model.tokenizer.decode([t]) for t in clean[0].tolist()],
           "metric": "log-prob of the clean next token at the last position"}
    for by, hook in (("position", "resid_pre"), ("head", "z")):
        for name, fn in (("exact", activation_patching), ("attribution", attribution_patching)):
            r = fn(model, clean, corrupted, metric, hook=hook, by=by)
            out[f"{name}_{by}"] = {"hook": hook, "scores": r.scores.tolist(), "clean_metric": r.clean_metric,
                                   "corrupted_metric": r.corrupted_metric}
    return out


def _steering(model, config: Config) -> dict:
    layer = min(1, model.cfg.n_layers - 1)
    vector = steering_vector(model, config.steer_from, config.steer_to, layer=layer)[-1]  # last position
    tokens = to_tokens(model, config.steer_prompt)
    out = {"layer": layer, "from": config.steer_from, "to": config.steer_to, "prompt": config.steer_prompt,
           "by_coeff": {}}
    for coeff in config.steer_coeffs:
        with steer(model, vector, layer=layer, coeff=coeff):
            with torch.no_grad():
                probs = model(tokens)[0, -1].float().softmax(-1)
            text = generate(model, config.steer_prompt, max_new_tokens=20, temperature=0).texts[0]
        top = probs.topk(8)
        out["by_coeff"][coeff] = {"top_tokens": [model.tokenizer.decode([t]) for t in top.indices.tolist()],
                                  "top_probs": top.values.tolist(), "greedy": text}
    return out


def compute(model, config: Config, progress=None) -> Result:
    progress = progress or (lambda line: None)
    start = time.perf_counter()
    scores = head_scores(model, detectors=["induction"], seq_len=min(50, (model.cfg.n_ctx - 1) // 2), batch=8,
                         seed=config.seed, token_pool=detector_tokens(model))
    heads = _heads(config, scores)
    progress(f"  induction heads: {heads['induction heads ablated']} ({heads['how_chosen']}); control: "
             f"{heads['as many other heads ablated']}")
    repetition = _repetition(model, config, heads, progress)
    patching = _patching(model, config)
    progress(f"  patching done ({time.perf_counter() - start:.1f}s)")
    steering = _steering(model, config)
    return Result(model_info(model).label, asdict(config), heads, repetition, patching, steering)


# ---------------------------------------------------------------------------------------------- plots

COLORS = {"intact": "#4C78A8", "induction heads ablated": "#E45756", "as many other heads ablated": "#72B7B2"}
METRICS = (("repeated_4gram", "repeated 4-grams"), ("distinct_2", "distinct-2"),
           ("mean_logprob", "mean log-prob (same model, T=1)"))


def plot_repetition(result: Result) -> go.Figure:
    fig = make_subplots(rows=2, cols=3, shared_xaxes=True, vertical_spacing=0.12, horizontal_spacing=0.08,
                        subplot_titles=[f"{label}, {kind} prompts" for kind in ("repetitive", "plain")
                                        for _, label in METRICS])
    for row, kind in enumerate(("repetitive", "plain"), start=1):
        for col, (key, _) in enumerate(METRICS, start=1):
            for condition in CONDITIONS:
                d = result.repetition[condition][kind][key]
                heads = result.heads[condition]
                name = condition + (f" ({', '.join(f'{a}.{b}' for a, b in heads)})" if heads else "")
                fig.add_scatter(x=d["T"], y=d["mean"], error_y=dict(type="data", array=d["std"], visible=True),
                                mode="lines+markers", name=name, legendgroup=condition,
                                showlegend=row == 1 and col == 1, line_color=COLORS[condition], row=row, col=col)
    temps = result.config["temperatures"]
    fig.update_xaxes(type="log", tickvals=common.log_ticks(min(temps), max(temps)))  # every panel: one type
    fig.update_xaxes(title_text="temperature T (log scale)", row=2)
    fig.update_layout(width=1300, height=760, margin=dict(t=140), legend=dict(orientation="h", y=-0.12),
                      title=common.title("Is low-temperature repetition carried by the induction heads? "
                                         "(error bars: spread over seeds)", result.model))
    return fig


def plot_patching(result: Result) -> go.Figure:
    p = result.patching
    panels = ["exact_position", "attribution_position", "exact_head", "attribution_head"]
    titles = ["activation patching, resid_pre (layer x position)", "attribution patching, resid_pre",
              "activation patching, z (layer x head)", "attribution patching, z"]
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles, vertical_spacing=0.3, horizontal_spacing=0.1)
    labels = [f"{i}:{'BOS' if t == '<|endoftext|>' else repr(t)}"[:12] for i, t in enumerate(p["tokens"])]
    for i, name in enumerate(panels):
        z = p[name]["scores"]
        x = labels if name.endswith("position") else [f"H{h}" for h in range(len(z[0]))]
        fig.add_heatmap(z=z, x=x, y=[f"L{layer}" for layer in range(len(z))], coloraxis="coloraxis",
                        row=i // 2 + 1, col=i % 2 + 1,
                        hovertemplate=f"{name}<br>%{{y}} %{{x}}: %{{z:.2f}}<extra></extra>")
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-50, tickfont=dict(size=10))
    lo, hi = p["exact_position"]["corrupted_metric"], p["exact_position"]["clean_metric"]
    fig.update_layout(width=1300, height=860, margin=dict(t=150, b=110),
                      coloraxis=dict(colorscale="RdBu", cmin=lo, cmax=hi, colorbar_title="patched metric"),
                      title=common.title(f"Which activations carry the copy? {p['metric']}: clean {hi:.2f}, "
                                         f"corrupted {lo:.2f}", result.model))
    return fig


def plot_steering(result: Result) -> go.Figure:
    s = result.steering
    coeffs = list(s["by_coeff"])
    fig = make_subplots(rows=1, cols=len(coeffs), horizontal_spacing=0.07,
                        subplot_titles=[f"coeff {c:g}:<br>{s['by_coeff'][c]['greedy'][:28]!r}" for c in coeffs])
    for col, c in enumerate(coeffs, start=1):
        d = s["by_coeff"][c]
        fig.add_bar(x=d["top_probs"][::-1], y=[repr(t) for t in d["top_tokens"]][::-1], orientation="h",
                    row=1, col=col, showlegend=False, marker_color="#4C78A8")
        fig.update_xaxes(range=[0, 1], title_text="next-token probability", row=1, col=col)
    fig.update_layout(width=330 * len(coeffs) + 100, height=520, margin=dict(t=160),
                      title=common.title(f"Steering {s['prompt']!r} at layer {s['layer']} along "
                                         f"{s['from']!r} - {s['to']!r} (ActAdd)", result.model))
    return fig


def figures(result: Result) -> list[Figure]:
    head = {"model": result.model, "config": result.config}
    return [Figure("mechanisms_repetition", plot_repetition(result),
                   head | {"heads": result.heads, "repetition": result.repetition}),
            Figure("mechanisms_patching", plot_patching(result), head | {"patching": result.patching}),
            Figure("mechanisms_steering", plot_steering(result), head | {"steering": result.steering})]


def summary(result: Result) -> str:
    heads = result.heads
    lines = [f"model: {result.model}", (f"induction heads: {heads['induction heads ablated']} "
                                        f"({heads['how_chosen']}); control: {heads['as many other heads ablated']}")]
    for condition in CONDITIONS:
        d = result.repetition[condition]["repetitive"]["repeated_4gram"]
        lines.append(f"{condition:28s} repeated 4-grams on repetitive prompts by T: "
                     + ", ".join(f"T={t:g} {m:.2f}" for t, m in zip(d["T"], d["mean"])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from experiments.runner import main as run

    return run(argv, only="mechanisms")


if __name__ == "__main__":
    raise SystemExit(main())
