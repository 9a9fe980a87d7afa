"""Train the small GPT-2 that ships inside ``interp`` (``interp.load_model("bundled")``).

Corpus: the Python standard library's own source (code, comments, docstrings and ``pydoc_data``'s English
reference text), which every Python install has, under the PSF licence. Tokenizer: the real GPT-2 BPE.

Induction heads are the point of the model. They did not form in 350 steps of a 2/3 corpus, 1/3 repeated
random sequences mix (see the model card), so training is a curriculum: the first steps see only repeated
random sequences (a next-token predictor can only get the later copies right by looking back at the first
copy), then a third of each batch stays repeated sequences while the rest is the corpus. The script logs the
in-context loss (first copy against later copies) as it trains, so the phase change is visible.

Run once; the weights are committed. CI never retrains::

    python -m experiments.train_bundled_model
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from interp.tokenizer import gpt2_tokenizer

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "interp" / "bundled"


@dataclass(frozen=True)
class TrainConfig:
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 2  # d_head 64, as in GPT-2: a 32-wide head struggles to match token identity among 50k
    n_ctx: int = 256
    batch_size: int = 12  # small batches, more steps: the vocab-50257 unembedding dominates a step's cost
    lr: float = 3e-3  # high, with warm-up: small models tolerate it and it shortens the induction plateau
    warmup_steps: int = 100
    weight_decay: float = 0.01  # not on embeddings: random-token induction needs every token's embedding
    repeat_fraction: float = 0.34  # rows of each batch that are repeated random sequences
    repeat_vocab: int = 5000  # half the random rows use the corpus's most frequent tokens, half any token
    repeat_min_len: int = 8
    repeat_max_len: int = 48
    sinusoidal_pos: bool = True  # position embeddings start as sinusoids so a previous-token head forms early
    induction_warmup_steps: int = 300  # curriculum: the first steps are repeated random rows only
    steps: int = 1500
    eval_every: int = 50
    seed: int = 0


def stdlib_files() -> list[Path]:
    """The standard library's own modules, tests excluded, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def build_corpus(tokenizer) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Tokenize the stdlib; return (train_tokens, val_tokens, provenance). Every 20th file is validation."""
    files = stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    sha = hashlib.sha256()
    train, val = [], []
    eos = tokenizer.eos_token_id
    for i, path in enumerate(files):
        text = path.read_text(encoding="utf-8", errors="replace")
        sha.update(str(path.relative_to(root)).encode() + b"\0" + text.encode() + b"\0")
        ids = tokenizer(text).input_ids + [eos]
        (val if i % 20 == 0 else train).extend(ids)
    provenance = {
        "source": f"Python {sys.version.split()[0]} standard library source ({root.name}/**/*.py, tests excluded)",
        "licence": "Python Software Foundation License",
        "files": len(files),
        "sha256": sha.hexdigest(),
        "train_tokens": len(train),
        "val_tokens": len(val),
    }
    return torch.tensor(train), torch.tensor(val), provenance


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
    )
    model = GPT2LMHeadModel(hf_cfg)
    if cfg.sinusoidal_pos:
        with torch.no_grad():
            model.transformer.wpe.weight.copy_(0.1 * sinusoids(cfg.n_ctx, cfg.n_embd))
    return model


def repeated_random(n: int, cfg: TrainConfig, frequent: torch.Tensor, gen: torch.Generator, bos: int):
    """Rows ``[BOS, r_1..r_k, r_1..r_k, ...]`` cut to ``n_ctx``, k drawn per row.

    Even rows draw from the corpus's frequent tokens, odd rows from the whole vocabulary, so the induction
    circuit learns to copy any token, including those the detectors' uniform random sequences contain.
    """
    rows = []
    for i in range(n):
        k = int(torch.randint(cfg.repeat_min_len, cfg.repeat_max_len + 1, (1,), generator=gen))
        if i % 2 == 0:
            seq = frequent[torch.randint(len(frequent), (k,), generator=gen)]
        else:
            seq = torch.randint(50256, (k,), generator=gen)
        reps = seq.repeat(cfg.n_ctx // k + 1)[: cfg.n_ctx - 1]
        rows.append(torch.cat([torch.tensor([bos]), reps]))
    return torch.stack(rows)


def corpus_batch(tokens: torch.Tensor, n: int, n_ctx: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(len(tokens) - n_ctx, (n,), generator=gen)
    return torch.stack([tokens[s : s + n_ctx] for s in starts.tolist()]) if n else tokens.new_zeros(0, n_ctx)


@torch.no_grad()
def evaluate(model, val: torch.Tensor, probe: torch.Tensor, half: int) -> dict:
    """Validation loss, and the in-context probe: loss on the first vs the second copy of random tokens."""
    model.eval()
    n_ctx = model.config.n_positions
    chunks = val[: (len(val) // n_ctx) * n_ctx].view(-1, n_ctx)[:32]
    val_loss = float(model(chunks, labels=chunks).loss)
    logits = model(probe).logits[:, :-1]
    nll = F.cross_entropy(logits.transpose(1, 2), probe[:, 1:], reduction="none")  # (batch, pos-1)
    model.train()
    return {
        "val_loss": val_loss,
        "first_copy_loss": float(nll[:, 1:half].mean()),  # skip the BOS->first token prediction
        "second_copy_loss": float(nll[:, half:].mean()),
    }


def save_checkpoint(model, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}  # tied to wte; safetensors refuses shared storage
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    gpt2_tokenizer().save_pretrained(out)


def train(cfg: TrainConfig, out: Path) -> dict:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tok = gpt2_tokenizer()
    t0 = time.time()
    train_tokens, val_tokens, provenance = build_corpus(tok)
    print(f"corpus: {provenance['files']} files, {len(train_tokens):,} train / {len(val_tokens):,} val tokens "
          f"({time.time() - t0:.0f}s)", flush=True)
    counts = torch.bincount(train_tokens, minlength=50257).float()
    unigram = counts / counts.sum()
    unigram_loss = float(-(unigram[val_tokens].clamp_min(1e-12)).log().mean())
    vocab = counts.argsort(descending=True)[: cfg.repeat_vocab]

    probe_half = 50
    probe_seq = vocab[torch.randint(len(vocab), (32, probe_half - 1), generator=torch.Generator().manual_seed(1))]
    probe = torch.cat([torch.full((32, 1), tok.eos_token_id), probe_seq, probe_seq], dim=1)

    model = new_model(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "wte" not in n and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "wte" not in n and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    log, step = [], 0
    t_start = time.time()
    while step < cfg.steps:
        warmup = min(1.0, (step + 1) / cfg.warmup_steps)
        lr = cfg.lr * warmup * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        warming_up = step < cfg.induction_warmup_steps
        n_repeat = cfg.batch_size if warming_up else round(cfg.batch_size * cfg.repeat_fraction)
        batch = torch.cat([
            corpus_batch(train_tokens, cfg.batch_size - n_repeat, cfg.n_ctx, gen),
            repeated_random(n_repeat, cfg, vocab, gen, tok.eos_token_id),
        ])
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % (cfg.eval_every // 2 if warming_up else cfg.eval_every) == 0 or step == 1:
            row = {"step": step, "tokens": step * cfg.batch_size * cfg.n_ctx, "seconds": round(time.time() - t_start, 1),
                   "lr": lr, "train_loss": loss.item(), **evaluate(model, val_tokens, probe, probe_half)}
            log.append(row)
            print(f"step {step:5d} {row['seconds']:6.0f}s  train {row['train_loss']:.3f}  val {row['val_loss']:.3f}  "
                  f"copy1 {row['first_copy_loss']:.3f}  copy2 {row['second_copy_loss']:.3f}  lr {lr:.2e}", flush=True)
    final = evaluate(model, val_tokens, probe, probe_half)
    save_checkpoint(model, out)
    summary = {
        "config": dataclasses.asdict(cfg),
        "corpus": provenance,
        "steps": step,
        "tokens_seen": step * cfg.batch_size * cfg.n_ctx,
        "train_seconds": round(time.time() - t_start, 1),
        "unigram_val_loss": unigram_loss,
        "final": final,
        "log": log,
        "command": "python -m experiments.train_bundled_model " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--induction-warmup-steps", type=int, default=TrainConfig.induction_warmup_steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--repeat-fraction", type=float, default=TrainConfig.repeat_fraction)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--n-head", type=int, default=TrainConfig.n_head)
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR, help="checkpoint directory (default: the bundled one)")
    args = parser.parse_args(argv)
    cfg = TrainConfig(steps=args.steps, induction_warmup_steps=args.induction_warmup_steps, seed=args.seed,
                      repeat_fraction=args.repeat_fraction, lr=args.lr, n_head=args.n_head)
    summary = train(cfg, args.out)
    print(f"wrote {args.out} after {summary['steps']} steps; final {summary['final']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
