"""Score every attention head for a behaviour, with an open set of detectors.

A detector maps an attention pattern ``[layer, head, batch, query_pos, key_pos]`` and the tokens that made it
``[batch, pos]`` to a ``[layer, head]`` score; it is registered under a name with ``@detector``. Everything
downstream (``head_scores``, the head-score figure's grid and captions, the bundled model's card, the tests)
reads the registry, so a new behaviour is one decorated function.

The built-in detectors, on repeated random tokens ``[BOS, r_1..r_n, r_1..r_n]``:

- previous_token: attention from position i to i-1;
- induction: from a token in the second copy to the token *after* its earlier occurrence (i to i-n+1);
- duplicate_token: from a token in the second copy to the same token in the first copy (i to i-n);
- first_token: attention to position 0;
- current_token: attention from each position to itself (any text, not only repeated tokens).

Scores read the pattern and never write to it (TransformerLens's ``head_detector`` zeroes the caller's
pattern in place; we don't).

Example:
    >>> @detector("two_back", "attention from position i to i-2")
    ... def two_back(pattern, tokens):
    ...     q = torch.arange(2, pattern.shape[-1])
    ...     return pattern[..., q, q - 2].mean(dim=(-2, -1))
    >>> head_scores(model).top("two_back", 3)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp._progress import progress_bar
from interp._repr import concise_repr
from interp.caching import cache_heads
from interp.errors import NameNotFoundError
from interp.inputs import check_positive_int, check_tokens

__all__ = ["DETECTORS", "CorpusHeadScores", "Detector", "HeadScores", "copying_task", "corpus_head_scores", "detector",
           "detector_tokens", "head_scores", "repeated_random_tokens", "scores_from_pattern"]

Pattern = Float[Tensor, "layer head batch query_pos key_pos"]


@dataclass(frozen=True)
class Detector:
    name: str
    description: str  # one line: the figure's caption and the docs say it
    fn: Callable[[Pattern, Int[Tensor, "batch pos"]], Float[Tensor, "layer head"]]
    repeated_tokens: bool  # True: needs [BOS, r, r] (repeated_random_tokens); False: any text


DETECTORS: dict[str, Detector] = {}


def detector(name: str, description: str, *, repeated_tokens: bool = True):
    """Register ``fn(pattern, tokens) -> [layer, head]`` as the detector ``name``."""
    def register(fn):
        DETECTORS[name] = Detector(name, description, fn, repeated_tokens)
        return fn
    return register


def _copy_length(tokens: Tensor) -> int:
    """n for tokens ``[BOS, r_1..r_n, r_1..r_n]``; ``ValueError`` for anything else."""
    n = (tokens.shape[1] - 1) // 2
    if tokens.shape[1] != 2 * n + 1 or n < 1 or not torch.equal(tokens[:, 1:n + 1], tokens[:, n + 1:]):
        raise ValueError("this detector needs repeated tokens [BOS, r_1..r_n, r_1..r_n] "
                         "(interp.heads.repeated_random_tokens)")
    return n


def _mean_at(pattern: Pattern, queries: Tensor, keys: Tensor) -> Float[Tensor, "layer head"]:
    return pattern[..., queries, keys].mean(dim=(-2, -1))


@detector("previous_token", "attention from each token to the one before it", repeated_tokens=False)
def previous_token(pattern: Pattern, tokens: Tensor) -> Tensor:
    q = torch.arange(1, pattern.shape[-1])
    return _mean_at(pattern, q, q - 1)


@detector("induction", "attention from a repeated token to the token after its first occurrence")
def induction(pattern: Pattern, tokens: Tensor) -> Tensor:
    n = _copy_length(tokens)
    q = torch.arange(n + 1, pattern.shape[-1])  # queries in the second copy
    return _mean_at(pattern, q, q - n + 1)


@detector("duplicate_token", "attention from a repeated token to its first occurrence")
def duplicate_token(pattern: Pattern, tokens: Tensor) -> Tensor:
    n = _copy_length(tokens)
    q = torch.arange(n + 1, pattern.shape[-1])
    return _mean_at(pattern, q, q - n)


@detector("first_token", "attention to the first (BOS) position", repeated_tokens=False)
def first_token(pattern: Pattern, tokens: Tensor) -> Tensor:
    q = torch.arange(1, pattern.shape[-1])
    return _mean_at(pattern, q, torch.zeros_like(q))


@detector("current_token", "attention from each token to itself", repeated_tokens=False)
def current_token(pattern: Pattern, tokens: Tensor) -> Tensor:
    q = torch.arange(1, pattern.shape[-1])  # position 0 can only attend to itself
    return _mean_at(pattern, q, q)


@dataclass(frozen=True)
class HeadScores:
    """One ``[layer, head]`` tensor per detector; ``scores["induction"]`` or ``scores.induction``."""

    scores: dict[str, Float[Tensor, "layer head"]]

    __repr__ = concise_repr

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.scores:
            raise NameNotFoundError(f"no score {name!r}: these were computed: {tuple(self.scores)}")
        return self.scores[name]

    def __getattr__(self, name: str) -> Tensor:
        scores = self.__dict__.get("scores", {})
        if name in scores:
            return scores[name]
        raise AttributeError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.scores)

    def to_frame(self):
        """A tidy DataFrame: one row per head, one column per score."""
        import pandas as pd

        n_layers, n_heads = next(iter(self.scores.values())).shape
        return pd.DataFrame([{"layer": layer, "head": head, "name": f"{layer}.{head}",
                              **{s: float(v[layer, head]) for s, v in self.scores.items()}}
                             for layer in range(n_layers) for head in range(n_heads)])

    def top(self, name: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The k highest-scoring heads for ``name`` as ``(layer, head, score)`` (every head when there are fewer)."""
        k = check_positive_int(k, "k", low=0)
        scores = self[name]
        flat = scores.flatten().topk(min(k, scores.numel()))
        n_heads = scores.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(flat.values, flat.indices)]


def _check_detectors(names: Sequence[str] | None, repeated: bool) -> tuple[str, ...]:
    if names is None:
        return tuple(n for n, d in DETECTORS.items() if repeated or not d.repeated_tokens)
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        raise ValueError(f"detectors is empty: pass None for every one that applies, or name some of "
                         f"{tuple(DETECTORS)}")
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detectors {unknown}: choose from {tuple(DETECTORS)}")
    return names


def scores_from_pattern(pattern: Pattern, tokens: Int[Tensor, "batch pos"],
                        detectors: Sequence[str] | None = None) -> HeadScores:
    """Run the named detectors (default: every registered one) on a pattern and its tokens. Read-only."""
    if pattern.shape[-1] != tokens.shape[1]:
        raise ValueError(f"pattern has {pattern.shape[-1]} positions, tokens have {tokens.shape[1]}")
    names = _check_detectors(detectors, repeated=True)
    return HeadScores({name: DETECTORS[name].fn(pattern, tokens) for name in names})


def repeated_random_tokens(model, *, seq_len: int = 50, batch: int = 8, seed: int = 0,
                           token_pool: Int[Tensor, " n"] | None = None) -> Int[Tensor, "batch pos"]:
    """``[BOS, r_1..r_n, r_1..r_n]``, shape ``[batch, 2·seq_len + 1]``, with r drawn uniformly from
    ``token_pool`` (default: every token but BOS/EOS), reproducibly from ``seed``."""
    seq_len, batch = check_positive_int(seq_len, "seq_len", low=2), check_positive_int(batch, "batch")
    if 2 * seq_len + 1 > model.cfg.n_ctx:
        raise ValueError(f"2 x seq_len + 1 = {2 * seq_len + 1} exceeds the context window (n_ctx {model.cfg.n_ctx})")
    gen = torch.Generator().manual_seed(seed)
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else 0
    if token_pool is None:
        token_pool = torch.arange(model.cfg.d_vocab)
        token_pool = token_pool[token_pool != bos]
    elif (not isinstance(token_pool, Tensor) or token_pool.ndim != 1 or token_pool.is_floating_point()
          or len(token_pool) == 0):
        raise ValueError("token_pool must be a non-empty 1-d integer tensor of token ids to draw from")
    elif int(token_pool.min()) < 0 or int(token_pool.max()) >= model.cfg.d_vocab:
        raise ValueError(f"token_pool has ids outside the vocabulary 0..{model.cfg.d_vocab - 1}")
    token_pool = token_pool.cpu()
    half = token_pool[torch.randint(len(token_pool), (batch, seq_len), generator=gen)]
    return torch.cat([torch.full((batch, 1), bos), half, half], dim=1).to(model.cfg.device)


def head_scores(model, *, detectors: Sequence[str] | None = None, tokens: Int[Tensor, "batch pos"] | None = None,
                seq_len: int | None = None, batch: int | None = None, seed: int | None = None,
                token_pool: Int[Tensor, " n"] | None = None) -> HeadScores:
    """Score every head of ``model`` with the named detectors (default: all that apply), in one forward pass.

    Args:
        detectors: names from ``DETECTORS``; default every detector (on your own ``tokens``: every one that
            takes any text).
        tokens: the text to score on; default ``repeated_random_tokens(model, seq_len, batch, seed,
            token_pool)`` (their defaults: 50, 8, 0 and every token but BOS), which are for that
            default only: with ``tokens`` given they are refused.

    Example:
        >>> scores = head_scores(model)
        >>> scores.top("induction", 3)      # [(layer, head, score), ...]
        >>> head_scores(model, detectors=["current_token"], tokens=model.to_tokens("any text at all"))
    """
    names = _check_detectors(detectors, repeated=tokens is None)
    making = {"seq_len": seq_len, "batch": batch, "seed": seed, "token_pool": token_pool}
    if tokens is None:
        tokens = repeated_random_tokens(model, **{k: v for k, v in making.items() if v is not None})
    else:
        given = [name for name, value in making.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} make the default repeated random tokens, so they cannot go with "
                             "tokens: leave them out, or leave out tokens")
        tokens = check_tokens(model, tokens)
    pattern = cache_heads(model, tokens, kinds=("pattern",)).pattern
    return scores_from_pattern(pattern, tokens, names)


def detector_tokens(model) -> Int[Tensor, " n"] | None:
    """Token ids a checkpoint asks its repeated-random-token detectors to draw from, or None for any token.

    A small model trained on a narrow corpus has never seen most of GPT-2's 50257 tokens; its checkpoint
    directory can ship ``detector_tokens.json`` (a list of ids, e.g. its most frequent training tokens).
    """
    info = getattr(model, "interp_info", None)
    path = Path(info.checkpoint) / "detector_tokens.json" if info is not None and info.checkpoint else None
    if path is None or not path.exists():
        return None
    return torch.tensor(json.loads(path.read_text()), dtype=torch.long)


def copying_task(model, *, seq_len: int = 12, seed: int = 0, n_pairs: int = 1):
    """Prompt pairs that only in-context copying solves, and their metric.

    Clean: ``[BOS, r, r]`` cut before its last token; corrupted: the first copy replaced by other random
    tokens (from the same pool), so nothing earlier says what comes next. The metric is each pair's log-prob
    of the clean next token at the last position.

    Returns:
        ``(clean, corrupted, metric)``: two ``[n_pairs, 2·seq_len]`` token tensors and ``metric(logits) ->
        [n_pairs]``.
    """
    n_pairs = check_positive_int(n_pairs, "n_pairs")
    pool = detector_tokens(model)
    clean = repeated_random_tokens(model, seq_len=seq_len, batch=n_pairs, seed=seed + 3, token_pool=pool)
    corrupted = clean.clone()
    corrupted[:, 1:seq_len + 1] = repeated_random_tokens(model, seq_len=seq_len, batch=n_pairs, seed=seed + 9,
                                                         token_pool=pool)[:, 1:seq_len + 1]
    targets = clean[:, -1].clone()

    def metric(logits):
        return logits[:, -1].log_softmax(-1).gather(-1, targets.to(logits.device)[:, None])[:, 0]

    return clean[:, :-1], corrupted[:, :-1], metric


@dataclass(frozen=True)
class CorpusHeadScores:
    """The detectors that take any text, scored row by row over corpus rows: the mean ``[layer, head]`` and a
    95% bootstrap interval over rows (``scores[name]``, ``ci_low[name]``, ``ci_high[name]``)."""

    scores: dict[str, Float[Tensor, "layer head"]]
    ci_low: dict[str, Float[Tensor, "layer head"]]
    ci_high: dict[str, Float[Tensor, "layer head"]]
    rows: int

    __repr__ = concise_repr

    def to_frame(self):
        import pandas as pd

        n_layers, n_heads = next(iter(self.scores.values())).shape
        return pd.DataFrame([{"layer": layer, "head": head, "detector": name, "score": float(v[layer, head]),
                              "ci_low": float(self.ci_low[name][layer, head]),
                              "ci_high": float(self.ci_high[name][layer, head])}
                             for name, v in self.scores.items() for layer in range(n_layers)
                             for head in range(n_heads)])


def corpus_head_scores(model, rows, *, detectors: Sequence[str] | None = None, batch_size: int = 8,
                       seed: int = 0, progress: bool = True) -> CorpusHeadScores:
    """How much each head behaves as the detectors say on real text: every detector that takes any text
    (default) scored on each corpus row, then the mean and a bootstrap interval over rows.

    Args:
        rows: ``[rows, pos]`` token rows, or a corpus harvest (``interp.harvest.open(path)``: its rows).
        progress: a progress bar in rows, shown once the run has taken 2 s.

    Example:
        >>> corpus = corpus_head_scores(model, interp.harvest.open("harvest/json"))
        >>> corpus.scores["previous_token"], corpus.ci_low["previous_token"]
    """
    from interp.harvest import Harvest
    from interp.metrics import bootstrap_interval

    tokens = check_tokens(model, rows.tokens if isinstance(rows, Harvest) else rows)
    batch_size = check_positive_int(batch_size, "batch_size")
    names = _check_detectors(detectors, repeated=False)
    repeated = [n for n in names if DETECTORS[n].repeated_tokens]
    if repeated:
        raise ValueError(f"{repeated} need repeated random tokens, not corpus text: use head_scores for them")
    per_row: dict[str, list[Tensor]] = {name: [] for name in names}
    with progress_bar(len(tokens), unit="row", desc="head scores", enabled=progress) as bar:
        for start in range(0, len(tokens), batch_size):
            chunk = tokens[start:start + batch_size]
            pattern = cache_heads(model, chunk, kinds=("pattern",)).pattern  # [layer, head, batch, q, k]
            for i in range(len(chunk)):
                for name in names:
                    per_row[name].append(DETECTORS[name].fn(pattern[:, :, i:i + 1], chunk[i:i + 1]).cpu())
            bar.update(len(chunk))
    scores, low, high = {}, {}, {}
    for name in names:
        stacked = torch.stack(per_row[name], dim=-1)  # [layer, head, row]
        scores[name] = stacked.mean(-1)
        lo, hi = bootstrap_interval(stacked.flatten(0, 1), seed=seed)
        low[name], high[name] = lo.reshape(stacked.shape[:2]), hi.reshape(stacked.shape[:2])
    return CorpusHeadScores(scores, low, high, len(tokens))
