"""Score every attention head for the classic behaviours: previous-token, induction, duplicate-token, and
attention to the first (BOS) token.

All four come from one forward pass on repeated random tokens ``[BOS, r_1..r_n, r_1..r_n]``:

- previous-token: attention from position i to i-1;
- duplicate-token: from a token in the second copy to the same token in the first copy (i to i-n);
- induction: from a token in the second copy to the token *after* its earlier occurrence (i to i-n+1);
- first-token: attention to position 0.

The scores read the pattern and never write to it (TransformerLens's ``head_detector`` zeroes the caller's
pattern in place; we don't).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.hooks import cache_heads

__all__ = ["HeadScores", "head_scores", "repeated_random_tokens", "scores_from_pattern"]

SCORE_NAMES = ("previous_token", "induction", "duplicate_token", "first_token")


@dataclass(frozen=True)
class HeadScores:
    """One ``[layer, head]`` tensor per behaviour; each score is a mean attention weight in [0, 1]."""

    previous_token: Float[Tensor, "layer head"]
    induction: Float[Tensor, "layer head"]
    duplicate_token: Float[Tensor, "layer head"]
    first_token: Float[Tensor, "layer head"]

    def __getitem__(self, name: str) -> Tensor:
        if name not in SCORE_NAMES:
            raise KeyError(f"unknown score {name!r}: choose from {SCORE_NAMES}")
        return getattr(self, name)

    def to_frame(self):
        """A tidy DataFrame: one row per head, one column per score."""
        import pandas as pd

        n_layers, n_heads = self.induction.shape
        rows = [{"layer": layer, "head": head, "name": f"{layer}.{head}",
                 **{s: float(self[s][layer, head]) for s in SCORE_NAMES}}
                for layer in range(n_layers) for head in range(n_heads)]
        return pd.DataFrame(rows)

    def top(self, name: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The k highest-scoring heads for ``name`` as ``(layer, head, score)``."""
        scores = self[name]
        flat = scores.flatten().topk(min(k, scores.numel()))
        n_heads = scores.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(flat.values, flat.indices)]


def repeated_random_tokens(model, *, seq_len: int = 50, batch: int = 8, seed: int = 0,
                           token_pool: Int[Tensor, " n"] | None = None) -> Int[Tensor, "batch pos"]:
    """``[BOS, r_1..r_n, r_1..r_n]``, shape ``[batch, 2·seq_len + 1]``, with r drawn uniformly from
    ``token_pool`` (default: every token but BOS/EOS), reproducibly from ``seed``."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    if 2 * seq_len + 1 > model.cfg.n_ctx:
        raise ValueError(f"2 x seq_len + 1 = {2 * seq_len + 1} exceeds the context window (n_ctx {model.cfg.n_ctx})")
    gen = torch.Generator().manual_seed(seed)
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else 0
    if token_pool is None:
        token_pool = torch.arange(model.cfg.d_vocab)
        token_pool = token_pool[token_pool != bos]
    half = token_pool[torch.randint(len(token_pool), (batch, seq_len), generator=gen)]
    return torch.cat([torch.full((batch, 1), bos), half, half], dim=1).to(model.cfg.device)


def scores_from_pattern(pattern: Float[Tensor, "layer head batch query_pos key_pos"], seq_len: int) -> HeadScores:
    """The four scores from attention patterns on ``repeated_random_tokens(seq_len=...)``. Read-only."""
    n = seq_len
    pos = pattern.shape[-1]
    if pos != 2 * n + 1:
        raise ValueError(f"pattern has {pos} positions; repeated tokens of seq_len {n} have {2 * n + 1}")
    q_all = torch.arange(1, pos)
    q_second = torch.arange(n + 1, pos)  # queries in the second copy
    mean = lambda q, k: pattern[..., q, k].mean(dim=(-2, -1))
    return HeadScores(
        previous_token=mean(q_all, q_all - 1),
        induction=mean(q_second, q_second - n + 1),
        duplicate_token=mean(q_second, q_second - n),
        first_token=mean(q_all, torch.zeros_like(q_all)),
    )


def head_scores(model, *, seq_len: int = 50, batch: int = 8, seed: int = 0,
                token_pool: Int[Tensor, " n"] | None = None) -> HeadScores:
    """Score every head of ``model`` (see the module docstring), from one forward pass.

    Example:
        >>> scores = head_scores(model)
        >>> scores.top("induction", 3)      # [(layer, head, score), ...]
    """
    tokens = repeated_random_tokens(model, seq_len=seq_len, batch=batch, seed=seed, token_pool=token_pool)
    pattern = cache_heads(model, tokens, kinds=("pattern",)).pattern
    return scores_from_pattern(pattern, seq_len)
