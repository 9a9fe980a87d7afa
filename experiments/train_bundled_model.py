"""Train the small GPT-2 that ships inside ``interp`` (``interp.load_model("bundled")``).

Corpus: the Python standard library's own source (code, comments, docstrings and ``pydoc_data``'s English
reference text), which every Python install has, under the PSF licence. Tokenizer: the real GPT-2 BPE.

Induction heads are the point of the model, and they did not form while every step paid for the
50257-way unembedding (see the model card's "What each lever did"). So training has two phases:

1. Induction curriculum: only repeated random sequences of frequent tokens, with the softmax restricted to
   those tokens, which makes a step ~20x cheaper, so the plateau before the phase change fits the budget.
2. Language: corpus rows plus a share of repeated random rows (to keep the circuit), full softmax.

It logs the in-context loss (first copy against second copy of repeated random tokens) as it trains, then
measures the result with interp's own detectors and writes ``MODEL_CARD.md`` and ``model_card.json`` next to
the weights. Run once; the weights are committed. CI never retrains::

    python -m experiments.train_bundled_model            # ~30 minutes on 2 CPU cores
    python -m experiments.train_bundled_model --card-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments import bundled_corpus
from interp.tokenizer import gpt2_tokenizer

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "interp" / "bundled"


@dataclass(frozen=True)
class TrainConfig:
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 2  # d_head 64, as in GPT-2: a 32-wide head struggles to match token identity among 50k
    n_ctx: int = 256
    attn_only_layer0: bool = True  # layer 0's MLP is zero and frozen: a clean previous-token layer
    pos_scale: float = 0.03  # sinusoidal position init, at about the token embeddings' scale
    dropout: float = 0.0  # GPT-2's default 0.1 kept layer 0 from ever forming a previous-token head (see the card)
    seed: int = 0
    # Phase 1, the induction curriculum: repeated random sequences only, with the softmax restricted to the
    # tokens they are drawn from. Without the 50257-way unembedding a step costs ~1/20, so the plateau
    # before induction can be crossed in minutes.
    induction_steps: int = 2000
    induction_lr: float = 1e-3
    induction_batch: int = 32
    induction_ctx: int = 64
    induction_vocab: int = 1000  # the corpus's most frequent tokens
    # Phase 2, language: corpus rows from every source plus a share of repeated random rows (so induction is
    # kept), full softmax, computed in chunks in bfloat16 (UnembedCrossEntropy: ~3x faster on this CPU).
    steps: int = 4000
    lr: float = 2e-3
    warmup_steps: int = 100
    batch_size: int = 16
    weight_decay: float = 0.01  # not on embeddings: random-token induction needs every token's embedding
    repeat_rows: int = 2  # rows of each batch that are repeated random sequences
    repeat_vocab: int = 5000  # half the random rows use the corpus's most frequent tokens, half any token
    repeat_min_len: int = 8
    repeat_max_len: int = 48
    # Share of corpus rows per source. Narrative English is what everyday prompts need, and Austen and the
    # KJV are small (0.9M tokens each), so they are seen several times over; the held-out loss per source
    # in the log shows whether that overfits.
    mix: tuple[tuple[str, float], ...] = (("austen", 0.30), ("kjv", 0.15), ("python_docs", 0.25),
                                          ("python_source", 0.30))
    eval_every: int = 250


def sinusoids(n_pos: int, d: int) -> torch.Tensor:
    pos = torch.arange(n_pos).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2) * (-math.log(10_000.0) / d))
    table = torch.zeros(n_pos, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def new_model(cfg: TrainConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=50257, n_positions=cfg.n_ctx, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
        tie_word_embeddings=True, attn_implementation="eager",
        attn_pdrop=cfg.dropout, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
    )
    model = GPT2LMHeadModel(hf_cfg)
    with torch.no_grad():
        model.transformer.wpe.weight.copy_(cfg.pos_scale * sinusoids(cfg.n_ctx, cfg.n_embd))
        if cfg.attn_only_layer0:
            for p in model.transformer.h[0].mlp.parameters():
                p.zero_()
                p.requires_grad_(False)
    return model


def repeated_random(n: int, n_ctx: int, lengths: tuple[int, int], pools: list[torch.Tensor | None],
                    gen: torch.Generator, bos: int) -> torch.Tensor:
    """Rows ``[BOS, r_1..r_k, r_1..r_k, ...]`` cut to ``n_ctx``, k drawn per row from ``lengths``.

    Row i draws its tokens from ``pools[i % len(pools)]`` (None: the whole vocabulary), so the induction
    circuit learns on well-trained frequent tokens and on any token.
    """
    rows = []
    for i in range(n):
        k = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=gen))
        pool = pools[i % len(pools)]
        seq = torch.randint(50256, (k,), generator=gen) if pool is None else \
            pool[torch.randint(len(pool), (k,), generator=gen)]
        rows.append(torch.cat([torch.tensor([bos]), seq.repeat(n_ctx // k + 1)[: n_ctx - 1]]))
    return torch.stack(rows)


def corpus_batch(tokens: torch.Tensor, n: int, n_ctx: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(len(tokens) - n_ctx, (n,), generator=gen)
    return torch.stack([tokens[s : s + n_ctx] for s in starts.tolist()]) if n else tokens.new_zeros(0, n_ctx)


class UnembedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, without keeping the logits.

    The [tokens, 50257] logits dominate a step. Rows go through in chunks, in bfloat16 (this CPU's matrix
    units), and the gradient is formed in the forward pass, so softmax runs once per chunk and nothing of
    vocabulary size outlives it. Gradients agree with ``F.cross_entropy`` in float32 to ~1% (relative norm).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int = 256):  # hidden (tokens, d_model), targets (tokens,)
        w = weight.to(torch.bfloat16)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        total = 0.0
        for start in range(0, len(hidden), chunk):
            h, t = hidden[start : start + chunk].to(torch.bfloat16), targets[start : start + chunk]
            probs = torch.softmax(h @ w.T, dim=-1)  # (chunk, d_vocab)
            rows = torch.arange(len(t))
            total -= float(probs[rows, t].float().log().sum())
            probs[rows, t] -= 1  # d(sum of losses)/d(logits)
            grad_hidden[start : start + chunk] = probs @ w
            grad_weight += probs.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.n = len(hidden)
        return hidden.new_tensor(total / len(hidden))

    @staticmethod
    def backward(ctx, grad):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * (grad / ctx.n), grad_weight * (grad / ctx.n), None, None


@torch.no_grad()
def held_out_loss(model, tokens: torch.Tensor, max_rows: int | None = None) -> float:
    """Mean next-token loss over ``tokens`` cut into rows of n_ctx (float32, the model's own forward)."""
    n_ctx = model.config.n_positions
    rows = tokens[: (len(tokens) // n_ctx) * n_ctx].view(-1, n_ctx)[:max_rows]
    batches = rows.split(16)
    return sum(float(model(b, labels=b).loss) * len(b) for b in batches) / len(rows)


@torch.no_grad()
def evaluate(model, val: dict[str, torch.Tensor], probe: torch.Tensor, half: int, max_rows: int | None = 16) -> dict:
    """Held-out loss per source, and the in-context probe: loss on the first vs the second copy."""
    model.eval()
    row = {f"val_{name}": held_out_loss(model, tokens, max_rows) for name, tokens in val.items()}
    logits = model(probe).logits[:, :-1]
    nll = F.cross_entropy(logits.transpose(1, 2), probe[:, 1:], reduction="none")  # (batch, pos-1)
    model.train()
    return {
        **row,
        "first_copy_loss": float(nll[:, 1:half].mean()),  # skip the BOS->first token prediction
        "second_copy_loss": float(nll[:, half:].mean()),
    }


def save_checkpoint(model, out: Path, detector_pool: torch.Tensor) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.config.interp_label = "bundled stdlib-GPT (2 layers, trained in this repo)"
    model.config.save_pretrained(out)
    # The detectors' random tokens come from the tokens the model was trained to copy (see detector_tokens()).
    (out / "detector_tokens.json").write_text(json.dumps(sorted(detector_pool.tolist())))
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}  # tied to wte; safetensors refuses shared storage
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    gpt2_tokenizer().save_pretrained(out)


def train(cfg: TrainConfig, out: Path) -> dict:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tok = gpt2_tokenizer()
    t0 = time.time()
    splits = {split.source.name: split for split in bundled_corpus.build(tok)}
    for name, split in splits.items():
        print(f"corpus {name}: {split.documents} documents, {len(split.train):,} train / {len(split.val):,} "
              f"held-out tokens", flush=True)
    print(f"tokenized in {time.time() - t0:.0f}s", flush=True)
    val = {name: split.val for name, split in splits.items()}
    counts = sum(torch.bincount(split.train, minlength=50257).float() for split in splits.values())
    unigram = counts / counts.sum()
    unigram_loss = {name: float(-(unigram[v].clamp_min(1e-12)).log().mean()) for name, v in val.items()}
    vocab = counts.argsort(descending=True)[: cfg.repeat_vocab]

    probe_half = 50
    probe_seq = vocab[torch.randint(len(vocab), (32, probe_half - 1), generator=torch.Generator().manual_seed(1))]
    probe = torch.cat([torch.full((32, 1), tok.eos_token_id), probe_seq, probe_seq], dim=1)

    model = new_model(cfg)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decays = [p.ndim == 2 and "wte" not in n and "wpe" not in n for n, p in trainable]  # matrices, not embeddings
    opt = torch.optim.AdamW([{"params": [p for (_, p), d in zip(trainable, decays) if d],
                              "weight_decay": cfg.weight_decay},
                             {"params": [p for (_, p), d in zip(trainable, decays) if not d], "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    log = []
    t_start = time.time()

    def record(phase: str, step: int, lr: float, loss: float) -> None:
        row = {"phase": phase, "step": step, "seconds": round(time.time() - t_start, 1), "lr": lr,
               "train_loss": loss, **evaluate(model, val, probe, probe_half)}
        log.append(row)
        held_out = "  ".join(f"{k[4:]} {v:.3f}" for k, v in row.items() if k.startswith("val_"))
        print(f"{phase} step {step:5d} {row['seconds']:6.0f}s  train {loss:.3f}  {held_out}  "
              f"copy1 {row['first_copy_loss']:.3f}  copy2 {row['second_copy_loss']:.3f}  lr {lr:.2e}", flush=True)

    # Phase 1: the induction curriculum, softmax over the pool only.
    pool = vocab[: cfg.induction_vocab]
    to_pool = torch.full((50257,), -100)
    to_pool[pool] = torch.arange(len(pool))
    for step in range(1, cfg.induction_steps + 1):
        lr = cfg.induction_lr * min(1.0, step / cfg.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = repeated_random(cfg.induction_batch, cfg.induction_ctx, (8, 24), [pool], gen, tok.eos_token_id)
        hidden = model.transformer(batch).last_hidden_state[:, :-1]  # (batch, pos-1, d_model), after ln_f
        logits = hidden @ model.transformer.wte.weight[pool].T  # (batch, pos-1, pool)
        loss = F.cross_entropy(logits.flatten(0, 1), to_pool[batch[:, 1:]].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % (2 * cfg.eval_every) == 0 or step == 1:
            record("induction", step, lr, loss.item())

    # Phase 2: language from every source, with repeated rows kept in every batch; full softmax.
    names = [name for name, _ in cfg.mix]
    shares = torch.tensor([share for _, share in cfg.mix])
    for step in range(1, cfg.steps + 1):
        warmup = min(1.0, step / cfg.warmup_steps)
        lr = cfg.lr * warmup * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        picks = torch.multinomial(shares, cfg.batch_size - cfg.repeat_rows, replacement=True, generator=gen)
        batch = torch.cat([
            *(corpus_batch(splits[names[i]].train, 1, cfg.n_ctx, gen) for i in picks.tolist()),
            repeated_random(cfg.repeat_rows, cfg.n_ctx, (cfg.repeat_min_len, cfg.repeat_max_len), [vocab, None],
                            gen, tok.eos_token_id),
        ])
        hidden = model.transformer(batch).last_hidden_state[:, :-1]  # (batch, pos-1, d_model)
        loss = UnembedCrossEntropy.apply(hidden.flatten(0, 1), model.transformer.wte.weight, batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % cfg.eval_every == 0 or step == 1:
            record("language", step, lr, loss.item())
    final = evaluate(model, val, probe, probe_half, max_rows=None)
    save_checkpoint(model, out, pool)
    summary = {
        "config": dataclasses.asdict(cfg),
        "corpus": {name: split.provenance() for name, split in splits.items()},
        "steps": {"induction": cfg.induction_steps, "language": cfg.steps},
        "tokens_seen": cfg.induction_steps * cfg.induction_batch * cfg.induction_ctx
        + cfg.steps * cfg.batch_size * cfg.n_ctx,
        "train_seconds": round(time.time() - t_start, 1),
        "unigram_val_loss": unigram_loss,
        "final": final,
        "log": log,
        "command": "python -m experiments.train_bundled_model " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------------------------------------- model card

# What "clear" means, stated once here and recorded in the card; the tests read them from the card.
THRESHOLDS = {
    "head_score": 0.3,  # mean attention on the target position; a uniform head scores ~2/(2n+1) = 0.02
    "copy_loss_drop": 1.0,  # nats: second copy of repeated random tokens vs the first
    "distinct2_gap": 0.1,  # distinct-2 at T=1 minus at T=0.1
    "logprob_gap": 2.0,  # mean log-prob (under T=1) of T=1 samples minus T=10 samples
}


def measure(checkpoint: Path) -> dict:
    """Everything the card reports about a checkpoint, measured with interp's own tools."""
    from experiments import temperature
    from interp.heads import SCORE_NAMES, head_scores, repeated_random_tokens
    from interp.hooks import ablate_heads
    from interp.loading import detector_tokens, load_model

    model = load_model(checkpoint, device="cpu")
    pool = detector_tokens(model)
    found = {}
    for name, token_pool in (("frequent_tokens", pool), ("any_token", None)):
        scores = head_scores(model, seq_len=50, batch=16, seed=0, token_pool=token_pool)
        tokens = repeated_random_tokens(model, seq_len=50, batch=16, seed=1, token_pool=token_pool)
        with torch.no_grad():
            nll = model(tokens, return_type="loss", loss_per_token=True)  # (batch, pos-1)
        found[name] = {
            "scores": {s: [[round(x, 4) for x in row] for row in scores[s].tolist()] for s in SCORE_NAMES},
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
    config = temperature.Config(temperatures=(0.1, 1.0, 10.0), samples=8, new_tokens=40)
    result = temperature.compute(model, config, progress=lambda line: None)
    temps = {t: {"distinct_2": temperature._mean(rows, "distinct_2"),
                 "mean_logprob": temperature._mean(rows, "mean_logprob"),
                 "repeated_4gram": temperature._mean(rows, "repeated_4gram")} for t, rows in result.samples.items()}
    return {"detectors": found, "temperature": {"config": dataclasses.asdict(config), "by_T": temps}}


def claims(measured: dict) -> dict:
    """The heads and effects the card claims, read off the measurements with THRESHOLDS."""
    scores = measured["detectors"]["frequent_tokens"]["scores"]
    flagged = {name: [[layer, head] for layer, row in enumerate(rows) for head, v in enumerate(row)
                      if v >= THRESHOLDS["head_score"]] for name, rows in scores.items()}
    return {"flagged_heads": flagged, "thresholds": THRESHOLDS}


def write_model_card(out: Path) -> dict:
    summary = json.loads((out / "training.json").read_text())
    measured = measure(out)
    card = {"model": "bundled stdlib-GPT", "training": {k: v for k, v in summary.items() if k != "log"},
            "measured": measured, "claims": claims(measured)}
    (out / "model_card.json").write_text(json.dumps(card, indent=1) + "\n")
    (out / "MODEL_CARD.md").write_text(render_card(card, summary["log"]))
    return card


def _table(rows: list[list[float]]) -> str:
    header = "| layer | " + " | ".join(f"head {h}" for h in range(len(rows[0]))) + " |"
    lines = [header, "|" + "---|" * (len(rows[0]) + 1)]
    lines += [f"| {layer} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for layer, row in enumerate(rows)]
    return "\n".join(lines)


def render_card(card: dict, log: list[dict]) -> str:
    t, m = card["training"], card["measured"]
    cfg = t["config"]
    det = m["detectors"]
    lines = [
        "# Model card: bundled stdlib-GPT",
        "",
        ("A 2-layer GPT-2 (Hugging Face `GPT2LMHeadModel`, tied embeddings, the real GPT-2 tokenizer with vocab "
        "50257) trained in this repository so that every figure and detector has something real to show "
        "offline. It is **not GPT-2 small**: figures made with it say so in their titles."),
        "",
        "## Training",
        (f"- Command: `{t['command'].strip()}` (seed {cfg['seed']}); torch {t['torch']}; "
        f"{t['train_seconds'] / 60:.0f} minutes on 2 CPU cores."),
        (f"- Corpus: {t['corpus']['source']}, {t['corpus']['files']} files, licence: {t['corpus']['licence']}. "
        f"sha256 of the file list and contents: `{t['corpus']['sha256']}`. "
        f"{t['corpus']['train_tokens']:,} train / {t['corpus']['val_tokens']:,} validation tokens (every 20th "
        "file is validation)."),
        (f"- Shape: {cfg['n_layer']} layers, d_model {cfg['n_embd']}, {cfg['n_head']} heads (d_head "
        f"{cfg['n_embd'] // cfg['n_head']}), n_ctx {cfg['n_ctx']}; layer 0 is attention-only (its MLP weights "
        "are zero and frozen, so the checkpoint stays a standard GPT-2); positions start as sinusoids; "
        f"dropout {cfg['dropout']}."),
        (f"- Phase 1, induction curriculum: {cfg['induction_steps']} steps of repeated random sequences "
        f"(batch {cfg['induction_batch']} x {cfg['induction_ctx']} tokens, period 8-24, tokens drawn from the "
        f"corpus's {cfg['induction_vocab']} most frequent), softmax restricted to those tokens, lr "
        f"{cfg['induction_lr']}."),
        (f"- Phase 2, language: {cfg['steps']} steps of batch {cfg['batch_size']} x {cfg['n_ctx']}: corpus rows "
        f"plus {cfg['repeat_fraction']:.0%} repeated random rows (half from the {cfg['repeat_vocab']} most "
        f"frequent tokens, half from any token), full softmax, lr {cfg['lr']} with cosine decay."),
        f"- Tokens seen: {t['tokens_seen']:,}.",
        "",
        "## Results",
        (f"- Validation loss {t['final']['val_loss']:.3f} nats (perplexity {math.exp(t['final']['val_loss']):.1f}) "
        f"against a unigram baseline of {t['unigram_val_loss']:.3f} nats."),
        (f"- In-context loss on repeated random tokens (BOS + 50 + the same 50), frequent tokens: first copy "
        f"{det['frequent_tokens']['first_copy_loss']:.2f}, second copy {det['frequent_tokens']['second_copy_loss']:.2f}"
        f" nats; any token: first {det['any_token']['first_copy_loss']:.2f}, second "
        f"{det['any_token']['second_copy_loss']:.2f}."),
        "",
        ("Head scores from `interp.head_scores` (mean attention to the target position, on repeated random "
        "tokens drawn from `detector_tokens.json`, the 1000 most frequent training tokens):"),
        "",
    ]
    for name in ("previous_token", "induction", "duplicate_token", "first_token"):
        lines += [f"**{name}**", "", _table(det["frequent_tokens"]["scores"][name]), ""]
    ablated = det["frequent_tokens"].get("second_copy_loss_ablated", {})
    if ablated:
        lines += [
            ("Ablations (`interp.ablate_heads`, zero): the second copy's loss with the named heads' outputs "
             f"removed; intact it is {det['frequent_tokens']['second_copy_loss']:.2f} nats:"),
            "",
            "| heads ablated | second-copy loss |",
            "|---|---|",
            *[f"| {heads} | {loss:.2f} |" for heads, loss in ablated.items()],
            "",
        ]
    lines += ["The same on tokens drawn from the whole vocabulary, most of which the corpus never uses:", ""]
    for name in ("previous_token", "induction"):
        lines += [f"**{name}** (any token)", "", _table(det["any_token"]["scores"][name]), ""]
    temps = m["temperature"]["by_T"]
    lines += [
        (f"Temperature (prompt {m['temperature']['config']['prompt']!r}, {m['temperature']['config']['samples']} "
        f"samples of {m['temperature']['config']['new_tokens']} tokens per T):"),
        "",
        "| T | distinct-2 | repeated 4-grams | mean log-prob under T=1 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {t} | {v['distinct_2']:.2f} | {v['repeated_4gram']:.2f} | {v['mean_logprob']:.2f} |"
              for t, v in temps.items()]
    flagged = card["claims"]["flagged_heads"]
    lines += [
        "",
        f"Claims the tests check (thresholds: {card['claims']['thresholds']}): heads scoring at least "
        f"{THRESHOLDS['head_score']}: " + "; ".join(f"{k}: {v or 'none'}" for k, v in flagged.items()) + ".",
        "",
        "## What each lever did",
        "",
        ("Measured on this machine while looking for a recipe; the numbers are the in-context probe (loss on "
        "the first vs the second copy of repeated random tokens)."),
        "",
        ("- 2/3 corpus + 1/3 repeated random rows from step 0, full softmax, lr 3e-3, positions 0.1 x sinusoids, "
        "350 steps (1.4M tokens): no induction (copy 1: 8.99, copy 2: 8.97). The 50257-way unembedding makes a "
        "step cost ~2.3 s, so the plateau could not be crossed in the time budget."),
        "- Curriculum, 100% repeated rows first but full softmax: 175 steps, still on the plateau (9.02 vs 9.01).",
        ("- Softmax restricted to the 500 tokens of the repeated rows: ~0.1 s a step. lr 1e-3: copy 2 starts to "
        "fall after ~300 steps; lr 3e-3 was noisier and slower. Positions at 0.03 (the token embeddings' scale) "
        "instead of 0.1, and attention-only layers, made the fall start sooner; 4 heads of 32 instead of 2 of 64 "
        "changed nothing; token embeddings 5x larger were slower."),
        ("- Restricted softmax, 8000-step plan with the 1000 most frequent tokens and an attention-only layer 0: "
        "after 3500 steps the train loss sat at 4.8 nats, above what copying any earlier token of the row would "
        "give (about 3.6), and the probe had barely moved (11.00 vs 10.91). Stopped."),
        ("- Diagnosis (pool 50, context 32, 600-1600 steps): layer 0 never formed a previous-token head (score "
        "0.07, uniform is ~0.05), so layer 1 had nothing to compose with; the loss stalled at the level of "
        "copying any earlier token. Mixing in rows where the next token is a fixed function of the token two "
        "back (a direct reward for attending to the previous token) did not form one either in 1000 steps "
        "(0.08)."),
        ("- **Dropout was the blocker.** Every run above used GPT-2's default dropout of 0.1 (attention, "
        "residual, embeddings) without meaning to. This script's curriculum, everything else equal: with "
        "dropout 0 the train loss was 1.92 nats after 500 steps (this run's log); with `--dropout 0.1 "
        "--induction-steps 1000 --steps 0` it was 5.26 after 1000 steps, with previous-token scores of at most "
        "0.04 and induction scores of at most 0.02. A scratch sweep with a pool of 1000 random vocabulary ids "
        "agreed: dropout 0 gave a previous-token head (0.59) and induction heads (0.97) by step 500; dropout "
        "0.1 gave 0.11 and no induction by step 750."),
        ("- This run: dropout 0, 2000 steps of the curriculum (about 4 minutes), then the language phase. The "
        "log's probe draws from the 5000 most frequent tokens, mostly outside the curriculum's pool, so it "
        "only moves in phase 2, once the full softmax trains those tokens. The weights were written to a "
        "scratch directory (`--out`) and copied here."),
        "",
        "## Training log (every logged step)",
        "",
        "| phase | step | s | train loss | val loss | copy 1 | copy 2 |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['phase']} | {r['step']} | {r['seconds']:.0f} | {r['train_loss']:.3f} | {r['val_loss']:.3f} | "
              f"{r['first_copy_loss']:.3f} | {r['second_copy_loss']:.3f} |" for r in log]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--induction-steps", type=int, default=TrainConfig.induction_steps,
                        help="phase 1 steps: repeated random sequences, pool-restricted softmax")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="phase 2 steps: corpus + repeats")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--dropout", type=float, default=TrainConfig.dropout,
                        help="attention, residual and embedding dropout (GPT-2 uses 0.1)")
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR, help="checkpoint directory (default: the bundled one)")
    parser.add_argument("--card-only", action="store_true", help="only (re)write the model card of --out")
    args = parser.parse_args(argv)
    if min(args.induction_steps, args.steps) < 0 or not 0 <= args.dropout < 1:
        parser.error("steps must be >= 0 and dropout in [0, 1)")
    if args.card_only and not (args.out / "training.json").exists():
        parser.error(f"--card-only needs a trained checkpoint: {args.out / 'training.json'} does not exist")
    if args.card_only:
        write_model_card(args.out)
        print(f"wrote {args.out / 'MODEL_CARD.md'}")
        return 0
    cfg = TrainConfig(induction_steps=args.induction_steps, steps=args.steps, seed=args.seed, dropout=args.dropout)
    summary = train(cfg, args.out)
    print(f"wrote {args.out} after {summary['steps']} steps; final {summary['final']}")
    write_model_card(args.out)
    print(f"wrote {args.out / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
