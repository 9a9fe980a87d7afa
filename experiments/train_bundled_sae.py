"""Train the SAE that ships inside ``interp`` (``interp.sae.load("bundled")``): a TopK SAE (k = 16, 4,096
latents, AuxK for dead latents) on the bundled model's residual stream before layer 1
(``blocks.1.hook_resid_pre``), in SAELens's format.

Corpus: the bundled model's own (``experiments.bundled_corpus``: Austen, the King James Bible, the Python
docs and the standard library's source), each source's training documents capped at ``--tokens-per-source``
so that no source dominates; the held-out documents (every 20th) measure it, source by source, and the card
(``SAE_CARD.md`` and ``sae_card.json`` beside the weights) reports what it reached against the targets
(explained variance >= 0.9 and CE-loss score >= 0.9 on every source at L0 <= 16, dead latents <= 5%).

The steps: harvest the activations with ``interp.harvest`` (pre-tokenised ``.npy`` documents, one per
source), train with ``interp.sae.train``, measure with ``interp.sae.evaluate``. Run once; the weights are
committed and CI never retrains. Needs the corpus packages (see ``experiments/bundled_corpus.py``)::

    python -m experiments.train_bundled_sae --work /tmp/bundled_sae     # about 15 minutes on 2 CPU cores
    python -m experiments.train_bundled_sae --work /tmp/bundled_sae --card-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from interp import harvest as hv
from interp import sae as S
from interp.figures import atomic_write
from interp.loading import load_model, model_info

OUT = Path(__file__).resolve().parent.parent / "interp" / "bundled" / "sae"
HOOK = "blocks.1.hook_resid_pre"
CONTEXT = 128
TARGETS = {"explained_variance": 0.9, "ce_loss_score": 0.9, "l0": 16, "dead_fraction": 0.05}
RECIPE = dict(hook=HOOK, d_sae=4096, architecture="topk", k=16, batch_size=4096, steps=3000, lr=4e-4, seed=0,
              dead_after=2_000_000, checkpoint_every=250)


def held_out_rows(split, rows: int, context: int = CONTEXT) -> torch.Tensor:
    """Up to ``rows`` rows of ``context`` tokens from a source's held-out stream, each starting with BOS."""
    body = split.val[: (len(split.val) // (context - 1)) * (context - 1)].view(-1, context - 1)[:rows]
    return torch.cat([torch.full((len(body), 1), hv.EOT), body], dim=1)


def compute(work: Path, tokens_per_source: int, eval_rows: int, card_only: bool) -> dict:
    from experiments import bundled_corpus

    model = load_model("bundled", device="cpu")
    start = time.perf_counter()
    splits = bundled_corpus.build(model.tokenizer, held_out_only=card_only)
    if not card_only:
        docs = work / "corpus"
        docs.mkdir(parents=True, exist_ok=True)
        for split in splits:
            np.save(docs / f"{split.source.name}.npy", split.train[:tokens_per_source].numpy())
        harvested = hv.harvest(model, docs, hooks=[HOOK], out=work / "harvest", context=CONTEXT, shard_rows=512,
                               pattern="*.npy")
        harvest_s = time.perf_counter() - start
        sae = S.train(harvested, **RECIPE, out=work / "train", metadata={"model_name": model_info(model).label})
        train_s = time.perf_counter() - start - harvest_s
        S.save(sae, OUT)
    else:
        harvest_s = train_s = None
    sae = S.load(OUT)
    rows = {split.source.name: held_out_rows(split, eval_rows) for split in splits}
    metrics = {name: S.evaluate(model, sae, tokens).to_dict() for name, tokens in rows.items()}
    metrics["all sources"] = S.evaluate(model, sae, torch.cat(list(rows.values()))).to_dict()
    met = {name: {"explained_variance": m["explained_variance"] >= TARGETS["explained_variance"],
                  "ce_loss_score": m["ce_loss_score"] >= TARGETS["ce_loss_score"], "l0": m["l0"] <= TARGETS["l0"]}
           for name, m in metrics.items()}
    return {"model": model_info(model).label, "hook": HOOK, "recipe": RECIPE, "context": CONTEXT,
            "tokens_per_source": tokens_per_source,
            "train_tokens": {s.source.name: min(len(s.train), tokens_per_source) for s in splits} if not card_only
            else None,
            "held_out_rows_per_source": eval_rows, "metrics": metrics, "targets": TARGETS, "met": met,
            "harvest_seconds": harvest_s, "train_seconds": train_s,
            "weights_bytes": (OUT / S.WEIGHTS_FILE).stat().st_size, "torch_threads": torch.get_num_threads()}


def render(card: dict) -> str:
    lines = [(f"# The bundled SAE: TopK, k = {card['recipe']['k']}, {card['recipe']['d_sae']:,} latents, at "
             f"`{card['hook']}` of the {card['model']}"),
             "",
             ("Trained by `python -m experiments.train_bundled_sae` (every number below is measured by it; "
             "`--card-only` remeasures)."),
             f"Weights: {card['weights_bytes'] / 1e6:.1f} MB in SAELens's format (`cfg.json`, `sae_weights.safetensors`).",
             ""]
    if card.get("train_tokens"):
        lines += [f"Training tokens per source (capped at {card['tokens_per_source']:,}): " +
                  ", ".join(f"{k} {v:,}" for k, v in card["train_tokens"].items()) +
                  f"; {card['recipe']['steps']:,} steps of {card['recipe']['batch_size']:,} tokens.",
                  (f"Harvest {card['harvest_seconds']:.0f} s, training {card['train_seconds']:.0f} s "
                  f"({card['torch_threads']} threads)."), ""]
    lines += [(f"Held out: every 20th document of each source, {card['held_out_rows_per_source']} rows of "
              f"{card['context']} tokens per source (position 0, the BOS, left out of every number)."), "",
              "| source | L0 | explained variance | CE-loss score | KL score | MSE | dead | dense (>10%) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, m in card["metrics"].items():
        lines.append(f"| {name} | {m['l0']:.1f} | {m['explained_variance']:.3f} | {m['ce_loss_score']:.3f} | "
                     f"{m['kl_score']:.3f} | {m['mse']:.4f} | {m['dead_fraction']:.1%} | {m['dense_fraction']:.1%} |")
    t = card["targets"]
    missed = [f"{name}: {key}" for name, keys in card["met"].items() for key, ok in keys.items() if not ok]
    dead = card["metrics"]["all sources"]["dead_fraction"]
    lines += ["", (f"Targets: explained variance >= {t['explained_variance']}, CE-loss score >= {t['ce_loss_score']}, "
              f"L0 <= {t['l0']} on every source, dead latents <= {t['dead_fraction']:.0%} "
              "on all sources together (a latent is dead when it never fires on the held-out rows; one source's "
              "rows alone leave more latents unused, since many latents belong to another source's text)."),
              "Missed: " + ("; ".join(missed) if missed else "none") +
              (f"; dead latents {dead:.1%} on all sources" if dead > t["dead_fraction"] else "") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.train_bundled_sae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder: the harvest and checkpoints")
    parser.add_argument("--tokens-per-source", type=int, default=1_500_000, help="training tokens per source")
    parser.add_argument("--eval-rows", type=int, default=256, help="held-out rows per source (default: 256)")
    parser.add_argument("--card-only", action="store_true", help="remeasure the committed SAE and rewrite its card")
    args = parser.parse_args(argv)
    card = compute(args.work, args.tokens_per_source, args.eval_rows, args.card_only)
    if args.card_only:
        before = json.loads((OUT / "sae_card.json").read_text())
        card |= {key: before.get(key) for key in ("train_tokens", "harvest_seconds", "train_seconds")}
    atomic_write(OUT / "sae_card.json", json.dumps(card, indent=1) + "\n")
    atomic_write(OUT / "SAE_CARD.md", render(card))
    print(render(card), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
