"""Feature dashboards for a sparse autoencoder: which held-out text each feature fires on, how strongly, and
which tokens it pushes the logits towards.

Writes:

  features                how often each latent fires on held-out text (log10 of its density), with its
                          JSON data (every latent's density, largest activation, top tokens)
  features/index.html     every live latent, sorted by density, searchable by token (the tokens it fires
                          on most, and its top logit effects); dead latents counted at the top
  features/feature-N.html one page per latent with a page (``--pages``): its top-activating held-out
                          contexts, the tokens shaded by activation; the histogram of its activations; its top
                          positive and negative logit effects (``interp.sae.logit_effects``)

The pages are static HTML with inline styles and one inline script (the search): they fetch nothing.

The SAE: ``--sae bundled`` for the bundled model (the default, ``auto``, picks it there); on another model
``auto`` trains a small TopK SAE on the standard library's ``json`` package first (``interp.harvest`` then
``interp.sae.train``), and the title says so. Held-out text: every 20th file of the standard library's source
(the documents ``experiments.bundled_corpus`` holds out), so it is there on every machine.

    python -m experiments.features --model bundled --pages 200
"""

from __future__ import annotations

import html
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import torch

from experiments import common
from experiments.common import Figure
from interp import harvest as hv
from interp import sae as S
from interp.hooks import temporary_hooks
from interp.loading import model_info
from interp.tokenizer import gpt2_tokenizer

DESCRIPTION = "feature dashboards of a sparse autoencoder: top held-out contexts, activation histograms, logit effects"
NEEDS_WEIGHTS = True


@dataclass(frozen=True)
class Config:
    sae: str = field(default="auto", metadata={"help": "a SAELens-format SAE folder, 'bundled', or 'auto' (the "
                                                          "bundled SAE on the bundled model, else a small one trained on the stdlib)"})
    rows: int = field(default=256, metadata={"help": "held-out rows of --context tokens to read features on"})
    context: int = field(default=64, metadata={"help": "tokens per held-out row (BOS included)"})
    pages: int = field(default=200, metadata={"help": "latents with a page, spread evenly over the density "
                                                       "ranking (0: every live latent)"})
    examples: int = field(default=8, metadata={"help": "top-activating contexts per page"})
    seed: int = 0  # the small SAE trained where there is none

    def __post_init__(self):
        if self.rows < 1 or self.context < 4 or self.pages < 0 or self.examples < 1:
            raise ValueError("--rows and --examples must be >= 1, --context >= 4 and --pages >= 0")
        if self.sae not in ("auto", "bundled") and not (Path(self.sae) / S.CFG_FILE).is_file():
            raise ValueError(f"--sae {self.sae}: no SAELens SAE folder there (it needs {S.CFG_FILE} and "
                             f"{S.WEIGHTS_FILE}); or pass 'bundled' or 'auto'")


@dataclass(frozen=True)
class Result:
    model: str
    sae: str  # what it is, where it came from
    config: dict
    d_sae: int
    tokens: int
    density: list[float]  # per latent
    max_act: list[float]
    index: list[dict]  # live latents by density: id, density, max, top tokens, logit effects, has page
    pages: list[dict]  # per page: id, contexts [{tokens, acts}], histogram, logits


def _held_out_rows(model, rows: int, context: int) -> torch.Tensor:
    """Rows from the standard library files ``experiments.bundled_corpus`` holds out (on every machine)."""
    from experiments import bundled_corpus
    from experiments.train_bundled_sae import held_out_rows

    source = next(s for s in bundled_corpus.SOURCES if s.name == "python_source")
    # GPT-2's BPE without special tokens: TransformerLens's tokenizer would put a BOS before every document
    (split,) = bundled_corpus.build(gpt2_tokenizer(), (source,), held_out_only=True)
    return held_out_rows(split, rows, context)


def _sae_for(model, config: Config, progress) -> tuple[S.SAE, str]:
    if config.sae == "bundled" or (config.sae == "auto" and model_info(model).spec == "bundled"):
        return S.load("bundled"), "the bundled SAE (interp/bundled/sae, SAE_CARD.md)"
    if config.sae != "auto":
        return S.load(config.sae), f"the SAE in {config.sae}"
    import json

    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"
    progress(f"  no SAE for {model_info(model).label}: training a small one at {hook} on the stdlib's json package")
    with tempfile.TemporaryDirectory() as tmp:
        harvested = hv.open(hv.harvest(model, Path(json.__file__).parent, hooks=[hook], out=Path(tmp) / "h",
                                       context=64, pattern="**/*.py", progress=False))
        sae = S.train(harvested, hook=hook, d_sae=512, k=16, batch_size=1024, steps=200, lr=1e-3, progress=False,
                      dead_after=200_000, seed=config.seed)
    return sae, "a TopK SAE (k=16, 512 latents) trained here for 200 steps on the stdlib's json package"


def compute(model, config: Config, progress=None) -> Result:
    progress = progress or (lambda line: None)
    sae, where = _sae_for(model, config, progress)
    hook = S.check_sae(model, sae)
    tokens = _held_out_rows(model, config.rows, config.context).to(model.cfg.device)
    kept: dict = {}
    rows_per_batch, per_row = 16, config.context - 1
    features = torch.empty(len(tokens) * per_row, sae.d_sae)  # [token, d_sae], each row's BOS left out
    with torch.no_grad(), temporary_hooks(model, [(hook, lambda act, hook: kept.update(x=act[:, 1:].flatten(2)))]):
        for start in range(0, len(tokens), rows_per_batch):
            model(tokens[start:start + rows_per_batch], return_type=None)
            features[start * per_row:(start + len(kept["x"])) * per_row] = sae.encode(kept["x"]).flatten(0, 1).cpu()
    n_tokens = len(features)
    active = features > 0
    density = active.double().mean(0)
    max_act = features.max(0).values
    live = [int(i) for i in torch.argsort(-density, stable=True) if density[i] > 0]
    step = max(1, len(live) / config.pages) if config.pages else 1
    with_page = sorted({live[int(i * step)] for i in range(min(len(live), config.pages or len(live)))})
    top = features.topk(min(config.examples, n_tokens), dim=0).indices.T  # [d_sae, examples] token indices
    tops = {i: [j for j in top[i].tolist() if active[j, i]] for i in live}  # only where the latent fires
    top_tokens = {i: list(dict.fromkeys(model.tokenizer.decode([int(tokens[j // per_row, 1 + j % per_row])])
                                        for j in tops[i]))[:5] for i in live}
    logits = {}
    for start in range(0, len(live), 256):  # 256 latents x d_vocab at a time
        part = live[start:start + 256]
        effects = S.logit_effects(model, sae, part)
        up, down = effects.topk(6, dim=-1), (-effects).topk(6, dim=-1)
        for row, i in enumerate(part):
            logits[i] = {"up": [(model.tokenizer.decode([int(t)]), round(float(v), 4))
                                for v, t in zip(up.values[row], up.indices[row])],
                         "down": [(model.tokenizer.decode([int(t)]), round(-float(v), 4))
                                  for v, t in zip(down.values[row], down.indices[row])]}
    pages = []
    width = 10  # tokens shown either side of each top activation
    for i in with_page:
        contexts = []
        for j in tops[i]:
            row, pos = divmod(j, per_row)
            lo, hi = max(0, pos - width), min(per_row, pos + width + 1)
            contexts.append({"tokens": [model.tokenizer.decode([t]) for t in tokens[row, 1 + lo:1 + hi].tolist()],
                             "acts": [round(float(v), 4) for v in features[row * per_row + lo:row * per_row + hi, i]],
                             "at": pos - lo})
        values = features[active[:, i], i]
        counts = torch.histc(values, bins=20, min=0, max=float(max_act[i])).tolist()
        pages.append({"id": i, "density": float(density[i]), "max": float(max_act[i]), "contexts": contexts,
                      "histogram": {"max": float(max_act[i]), "counts": [int(c) for c in counts]},
                      "logits": logits[i]})
    index = [{"id": i, "density": float(density[i]), "max": round(float(max_act[i]), 4),
              "tokens": top_tokens[i], "up": [t for t, _ in logits[i]["up"]], "page": i in with_page} for i in live]
    progress(f"  {len(live)} live latents of {sae.d_sae} on {n_tokens} held-out tokens; {len(pages)} pages")
    return Result(model=model_info(model).label, sae=f"{where}: {sae!r}", config=asdict(config), d_sae=sae.d_sae,
                  tokens=n_tokens, density=[float(d) for d in density], max_act=[float(m) for m in max_act],
                  index=index, pages=pages)


# ---------------------------------------------------------------------------------------------- pages

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em;color:#222}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
.ctx{font-family:monospace;white-space:pre;margin:4px 0;line-height:1.6}.ctx span{border-radius:2px}
.at{outline:1px solid #c00}.bar{display:inline-block;background:#4a7ab5;vertical-align:bottom;width:14px;margin-right:1px}
.up{color:#1a6e1a}.down{color:#a11}small{color:#666}"""


def _shown(token: str) -> str:
    return html.escape(token.replace("\n", "⏎").replace("\t", "⇥"))


def _page(result: Result, page: dict) -> str:
    peak = page["max"] or 1.0
    contexts = []
    for c in page["contexts"]:
        spans = "".join(
            f'<span class="{"at" if k == c["at"] else ""}" style="background:rgba(255,140,0,{a / peak:.3f})" '
            f'title="{a:.3f}">{_shown(t)}</span>' for k, (t, a) in enumerate(zip(c["tokens"], c["acts"])))
        contexts.append(f'<div class="ctx">{spans}</div>')
    counts = page["histogram"]["counts"]
    top = max(counts) or 1
    bars = "".join(f'<span class="bar" style="height:{max(1, round(100 * n / top))}px" title="{n}"></span>'
                   for n in counts)
    logit_rows = "".join(
        f'<tr><td class="up">{_shown(u)}</td><td>{uv:+.3f}</td><td class="down">{_shown(d)}</td><td>{dv:+.3f}</td></tr>'
        for (u, uv), (d, dv) in zip(page["logits"]["up"], page["logits"]["down"]))
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>feature {page["id"]}</title>'
            f"<style>{STYLE}</style></head><body>"
            f'<p><a href="index.html">all features</a></p><h1>Feature {page["id"]}</h1>'
            f"<p><small>model: {html.escape(result.model)}; {html.escape(result.sae)}</small></p>"
            f'<p>fires on {page["density"]:.3%} of {result.tokens:,} held-out tokens; largest activation '
            f'{page["max"]:.3f}</p><h2>Top-activating held-out contexts</h2>{"".join(contexts)}'
            f"<h2>Activation histogram</h2><p>{bars}</p><p><small>20 bins from 0 to {page['max']:.3f}, tokens where "
            f"it fires</small></p><h2>Logit effects</h2><table><tr><th>pushes up</th><th></th><th>pushes down</th>"
            f"<th></th></tr>{logit_rows}</table></body></html>\n")


SEARCH = """<script>
function filter(q){q=q.toLowerCase();for(const r of document.querySelectorAll('tbody tr')){
r.style.display=!q||r.dataset.tokens.includes(q)?'':'none';}}
</script>"""


def _index(result: Result) -> str:
    rows = []
    for f in result.index:
        name = f'<a href="feature-{f["id"]:05d}.html">{f["id"]}</a>' if f["page"] else str(f["id"])
        searchable = html.escape(" ".join(f["tokens"] + f["up"]).lower(), quote=True)
        rows.append(f'<tr data-tokens="{searchable}"><td>{name}</td><td>{f["density"]:.3%}</td><td>{f["max"]:.3f}</td>'
                    f'<td>{" ".join("<code>" + _shown(t) + "</code>" for t in f["tokens"])}</td>'
                    f'<td>{" ".join("<code>" + _shown(t) + "</code>" for t in f["up"][:4])}</td></tr>')
    dead = result.d_sae - len(result.index)
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>SAE features</title><style>{STYLE}</style>'
            f"{SEARCH}</head><body><h1>Features, by density</h1>"
            f"<p><small>model: {html.escape(result.model)}; {html.escape(result.sae)}</small></p>"
            f"<p>{len(result.index)} live latents of {result.d_sae} ({dead} never fire) on {result.tokens:,} held-out "
            f"tokens of the standard library's source; pages for {sum(f['page'] for f in result.index)}.</p>"
            f'<p><input id="q" placeholder="search a token" oninput="filter(this.value)"></p>'
            f"<table><thead><tr><th>feature</th><th>density</th><th>max</th><th>fires most on</th>"
            f"<th>pushes up</th></tr></thead><tbody>{''.join(rows)}</tbody></table></body></html>\n")


def plot_density(result: Result) -> go.Figure:
    live = result.index
    fig = go.Figure(go.Histogram(x=[math.log10(f["density"]) for f in live], nbinsx=40,
                                 marker_color="#4a7ab5", name="latents"))
    dead = result.d_sae - len(live)
    fig.update_layout(title=common.title(f"How often each of {result.d_sae} latents fires on {result.tokens:,} "
                                         f"held-out tokens ({dead} never do)", result.model),
                      xaxis_title="log10 of the fraction of tokens where the latent fires",
                      yaxis_title="latents", width=1000, height=560, template="plotly_white", bargap=0.05)
    fig.add_annotation(text=html.escape(result.sae), xref="paper", yref="paper", x=0, y=1.02, showarrow=False,
                       font_size=11, xanchor="left")
    return fig


def figures(result: Result) -> list[Figure]:
    pages = {"index.html": _index(result)}
    pages |= {f"feature-{p['id']:05d}.html": _page(result, p) for p in result.pages}
    data = {"model": result.model, "sae": result.sae, "config": result.config, "tokens": result.tokens,
            "density": result.density, "max_activation": result.max_act, "index": result.index}
    return [Figure("features", plot_density(result), data, pages=pages)]


def summary(result: Result) -> str:
    dense = sum(d > 0.1 for d in result.density)
    return (f"{len(result.index)} live latents of {result.d_sae} ({result.d_sae - len(result.index)} dead, {dense} "
            f"dense) on {result.tokens:,} held-out tokens; {len(result.pages)} feature pages")


def main(argv: list[str] | None = None) -> int:
    from experiments.runner import main as run

    return run(argv, only="features")


if __name__ == "__main__":
    raise SystemExit(main())
