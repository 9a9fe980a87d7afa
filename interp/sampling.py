"""Generation and temperature, measured.

- ``temperature_sweep``: one forward pass, then ``softmax(logits / T)`` for every T, with entropy, effective
  vocabulary, top-k mass, KL from T=1 and the greedy token's probability.
- ``generate``: seeded, batched sampling with temperature, top-k and top-p, on a KV cache. Each prompt has
  its own random stream, so a prompt's continuation does not depend on what else is in the batch.
- ``distinct_n``, ``repeated_ngram_fraction``, ``continuation_logprobs``: how repetitive and how coherent
  the sampled text is.

With no hook attached, ``generate`` runs its own lean GPT-2 forward on weights read once from the
TransformerLens model (fused QKV, contiguous unembedding, logits only at the last position, a KV cache). With
any hook attached, or ``use_kv_cache=False``, it runs the model's own forward on the whole sequence every
step, so every hook fires and sees every position; that path is also the reference the fast one is tested
against.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from interp._repr import concise_repr
from interp.backends import gpt2_weights, layer_norm
from interp.hooks import attached_hooks, temporary_hooks
from interp.inputs import check_positive_int

__all__ = [
    "Generation",
    "TemperatureSweep",
    "continuation_logprobs",
    "distinct_n",
    "generate",
    "repeated_ngram_fraction",
    "temperature_sweep",
]


MIN_TEMPERATURE = 1e-4  # below this, logits / T overflows float32; T = 0 is exact greedy decoding
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's largest


def check_temperatures(temperatures: Sequence[float] | float) -> tuple[float, ...]:
    """Validate temperatures: real numbers, 0 (greedy) or in [1e-4, inf). Raises ``ValueError`` otherwise."""
    if isinstance(temperatures, numbers.Real | str):
        temperatures = (temperatures,)
    temps = tuple(temperatures)
    if not temps:
        raise ValueError("temperatures is empty: give at least one, e.g. [0.1, 1, 10]")
    for t in temps:
        if isinstance(t, bool | str) or not isinstance(t, numbers.Real):
            raise ValueError(f"temperature must be a number, got {t!r} ({type(t).__name__})")  # noqa: TRY004
        if not math.isfinite(t) or t < 0 or 0 < t < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, got {t}")
    return tuple(float(t) for t in temps)


# ---------------------------------------------------------------------------------------------- sweep


@dataclass(frozen=True)
class TemperatureSweep:
    """Next-token distributions at each temperature, from one forward pass. Tensors are indexed by T."""

    prompt: str
    temperatures: tuple[float, ...]
    probs: Float[Tensor, "temp d_vocab"]
    top_tokens: Int[Tensor, "temp k"]
    top_probs: Float[Tensor, "temp k"]
    top_strings: tuple[tuple[str, ...], ...]
    entropy_nats: Float[Tensor, " temp"]
    entropy_bits: Float[Tensor, " temp"]
    effective_vocab: Float[Tensor, " temp"]  # exp(entropy): how many equally likely tokens that is
    top1_mass: Float[Tensor, " temp"]
    top5_mass: Float[Tensor, " temp"]
    top50_mass: Float[Tensor, " temp"]
    kl_from_t1: Float[Tensor, " temp"]  # KL(p_T || p_1), nats
    greedy_prob: Float[Tensor, " temp"]  # probability of the T=1 argmax token

    __repr__ = concise_repr

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({
            "T": self.temperatures, "entropy_nats": self.entropy_nats.tolist(),
            "entropy_bits": self.entropy_bits.tolist(), "effective_vocab": self.effective_vocab.tolist(),
            "top1_mass": self.top1_mass.tolist(), "top5_mass": self.top5_mass.tolist(),
            "top50_mass": self.top50_mass.tolist(), "kl_from_t1": self.kl_from_t1.tolist(),
            "greedy_prob": self.greedy_prob.tolist(),
            "top_tokens": [", ".join(repr(s) for s in row[:5]) for row in self.top_strings],
        })


def log_distributions(logits: Float[Tensor, " d_vocab"], temperatures: Sequence[float]
                      ) -> Float[Tensor, "temp d_vocab"]:
    """``log_softmax(logits / T)`` for each T, in float64; T = 0 gives the greedy one-hot's logarithm (0 at the
    argmax, -inf elsewhere). Trusts its caller to pass checked temperatures (``check_temperatures``)."""
    temps = tuple(temperatures)
    logits = logits.detach().to(torch.float64)
    t = torch.tensor(temps, dtype=torch.float64, device=logits.device).unsqueeze(1)  # (temp, 1)
    logp = (logits / t.clamp_min(1e-300)).log_softmax(-1)
    if 0 in temps:  # those rows are NaN: replaced by the greedy one
        greedy = torch.full_like(logits, -math.inf)
        greedy[logits.argmax()] = 0.0
        logp = torch.where(t == 0, greedy, logp)
    return logp


def distributions(logits: Float[Tensor, " d_vocab"], temperatures: Sequence[float]) -> Float[Tensor, "temp d_vocab"]:
    """``softmax(logits / T)`` for each T, in float64; T = 0 gives the one-hot argmax (greedy)."""
    return log_distributions(logits, temperatures).exp()


_LOG_TINY = math.log(1e-300)  # a zero probability's logarithm, in the sums below: 0 x log 0 counts as 0


def sweep_metrics(probs: Float[Tensor, "temp d_vocab"], logp: Float[Tensor, "temp d_vocab"],
                  reference_logp: Float[Tensor, " d_vocab"], top: Float[Tensor, "temp top"]) -> dict[str, Tensor]:
    """Entropy, effective vocabulary, top-k masses, KL from the reference and the reference argmax's prob,
    from the distributions, their logarithms and their largest ``top`` probabilities in order (at least 50, or
    the whole vocabulary). KL(p || r) is sum p log p - p . log r: one pass over the vocabulary for the entropy,
    one matrix-vector product for the rest."""
    plogp = (probs * logp.clamp_min(_LOG_TINY)).sum(-1)
    entropy = (-plogp).clamp_min(0) + 0.0  # + 0.0 turns -0.0 (greedy rows) into 0.0
    kl = (plogp - probs @ reference_logp.clamp_min(_LOG_TINY)).clamp_min(0)
    return {
        "entropy_nats": entropy,
        "entropy_bits": entropy / math.log(2),
        "effective_vocab": entropy.exp(),
        "top1_mass": top[:, 0],
        "top5_mass": top[:, :5].sum(-1),
        "top50_mass": top[:, :50].sum(-1),
        "kl_from_t1": kl,
        "greedy_prob": probs[:, reference_logp.argmax()],
    }


def last_logits(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch d_vocab"]:
    """The model's own logits at the last position only: the unembedding's input is cut to that position
    (after every other hook there has run), so the 50257-wide matmul runs on one position, not all of them,
    on either backend."""
    with temporary_hooks(model, [("unembed.hook_in", lambda act, hook: act[:, -1:])]):
        return model(tokens)[:, -1]


@torch.no_grad()
def temperature_sweep(model, prompt: str, temperatures: Sequence[float], *, k: int = 10) -> TemperatureSweep:
    """Run ``model`` once on ``prompt`` and describe the next-token distribution at every temperature.

    Example:
        >>> sweep = temperature_sweep(model, "The capital of France is", [0, 0.1, 1, 10])
        >>> sweep.to_frame()[["T", "entropy_bits", "top1_mass"]]
    """
    temps = check_temperatures(temperatures)
    k = check_positive_int(k, "k", high=model.cfg.d_vocab)
    tokens = prompt_tokens(model, [prompt], max_new_tokens=0)[0].unsqueeze(0)
    logits = last_logits(model, tokens)[0]
    logp = log_distributions(logits, temps)
    probs = logp.exp()
    reference = log_distributions(logits, [1.0])[0]
    top = probs.topk(max(k, min(50, model.cfg.d_vocab)), dim=-1)  # the top k, and the top 50 for the masses
    indices, values = top.indices[:, :k], top.values[:, :k]
    # Only tokens with probability > 0 are listed: at T = 0 the rest of the top k would be arbitrary ties at 0.
    strings = tuple(tuple(model.tokenizer.decode([t]) for t, p in zip(row.tolist(), ps.tolist()) if p > 0)
                    for row, ps in zip(indices, values))
    return TemperatureSweep(prompt, temps, probs, indices, values, strings,
                            **sweep_metrics(probs, logp, reference, top.values))


# ---------------------------------------------------------------------------------------------- prompts


def prompt_tokens(model, prompts: Sequence[str], *, max_new_tokens: int) -> list[Int[Tensor, " pos"]]:
    """Tokenize each prompt with BOS; check it is non-empty and leaves room for ``max_new_tokens``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("no prompts given")
    out = []
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        tokens = model.to_tokens(prompt, prepend_bos=True, truncate=False)[0]  # never cut silently
        room = model.cfg.n_ctx - max_new_tokens
        if len(tokens) > room:
            raise ValueError(f"prompt is {len(tokens)} tokens (with BOS); with {max_new_tokens} new tokens the "
                             f"context window of {model.cfg.n_ctx} leaves room for {room}: shorten the prompt")
        out.append(tokens)
    return out


# ---------------------------------------------------------------------------------------------- fast forward


class FastGPT2:
    """GPT-2's forward with a KV cache, on weights laid out once for speed. Numerically the model's own.

    TransformerLens re-lays-out Q/K/V/O and copies ``W_U.T`` on every call; this does it once.
    """

    def __init__(self, model):
        self.w = gpt2_weights(model)
        self.eps, self.n_heads = model.cfg.eps, model.cfg.n_heads

    def forward(self, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch pos"],
                cache_k: Tensor, cache_v: Tensor, start: int, key_mask: Tensor) -> Float[Tensor, "batch d_vocab"]:
        """Run ``tokens`` (cache slots ``start..start+pos``) and return the logits at the last position.

        ``cache_k``/``cache_v`` are ``[layer, batch, head, max_len, d_head]`` and are filled in place.
        ``key_mask`` ``[batch, max_len]`` is False at padding.
        """
        _batch, pos = tokens.shape
        end = start + pos
        w = self.w
        x = w.W_E[tokens] + w.W_pos[positions]  # (batch, pos, d_model)
        causal = torch.ones(pos, end, dtype=torch.bool, device=tokens.device).tril(start)
        allowed = causal.unsqueeze(0) & key_mask[:, None, :end]  # (batch, pos, end)
        eye = torch.zeros_like(allowed)
        eye[:, :, start:end] = torch.eye(pos, dtype=torch.bool, device=tokens.device)
        allowed = (allowed | eye).unsqueeze(1)  # a padding query sees itself, never an empty row
        for layer, blk in enumerate(w.blocks):
            qkv = layer_norm(x, blk.ln1, self.eps) @ blk.W_qkv + blk.b_qkv
            q, k, v = einops.rearrange(qkv, "batch pos (three head d_head) -> three batch head pos d_head",
                                       three=3, head=self.n_heads)
            cache_k[layer, :, :, start:end] = k
            cache_v[layer, :, :, start:end] = v
            z = F.scaled_dot_product_attention(q, cache_k[layer, :, :, :end], cache_v[layer, :, :, :end],
                                               attn_mask=allowed)
            x = x + einops.rearrange(z, "batch head pos d_head -> batch pos (head d_head)") @ blk.W_O + blk.b_O
            x = x + w.act(layer_norm(x, blk.ln2, self.eps) @ blk.W_in + blk.b_in) @ blk.W_out + blk.b_out
        return layer_norm(x[:, -1], w.ln_final, self.eps) @ w.W_U + w.b_U


# ---------------------------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class Generation:
    prompts: tuple[str, ...]
    prompt_tokens: tuple[Int[Tensor, " pos"], ...]
    tokens: Int[Tensor, "batch new"]  # the sampled continuation of each prompt
    texts: tuple[str, ...]  # decoded continuations
    seeds: tuple[int, ...]

    __repr__ = concise_repr


def _filter(logits: Float[Tensor, "batch d_vocab"], top_k: int | None, top_p: float | None) -> Tensor:
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_next(logits: Float[Tensor, "batch d_vocab"], temperature: float, generators: list[torch.Generator],
                top_k: int | None, top_p: float | None) -> Int[Tensor, " batch"]:
    """One token per row: argmax at T = 0, else a draw from ``softmax(filter(logits / T))`` with that row's
    generator. Trusts its caller (``generate`` validated everything)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = _filter(logits.float() / temperature, top_k, top_p).softmax(-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


@torch.no_grad()
def generate(model, prompts: str | Sequence[str], *, max_new_tokens: int = 40, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             seeds: Sequence[int] | None = None, use_kv_cache: bool = True) -> Generation:
    """Sample ``max_new_tokens`` after each prompt.

    Generation honours every hook attached to the model (``ablate_heads``, ``patch_activation``,
    ``temporary_hooks``, ``model.hooks(...)``, a plain ``register_forward_hook``). With any hook attached it
    runs the model's own forward on the whole sequence at every step, so a hook sees every position, just as
    in ``model(tokens)``, and a position-indexed intervention means the same thing while generating. (This
    differs on purpose from TransformerLens's KV-cached ``generate``, where hooks see only the new
    positions, and a hook that indexes positions silently acts on the wrong ones.) With no hook attached it
    runs a KV-cached forward on the same weights, which gives the same tokens, several times faster.

    Both equalities (cached and uncached, a prompt alone and in a batch) are exact in float32 and float64. In
    float16 and bfloat16 the paths round differently, so where two tokens nearly tie they can part ways.

    Args:
        prompts: one prompt or a list; BOS is prepended; prompts of different lengths are left-padded.
        temperature: 0 is greedy; otherwise logits are divided by it before sampling.
        top_k, top_p: optional nucleus/top-k filtering, applied after the temperature.
        seed: prompt i uses seed ``seed + i`` (default 0); or ``seeds`` gives one per prompt (not both). A
            prompt's continuation depends only on its own seed, never on the rest of the batch. Random streams
            live on the model's device: the same seed gives the same text on the same device.
        use_kv_cache: False always runs the model's own forward on the whole sequence (the slow reference).

    Example:
        >>> generate(model, ["The cat", "Once upon a time"], max_new_tokens=20, temperature=0.7).texts
        >>> with ablate_heads(model, [(1, 0), (1, 1)]):
        ...     generate(model, "def main():", temperature=0).texts   # the ablated model writes
    """
    max_new_tokens = check_positive_int(max_new_tokens, "max_new_tokens")
    (temperature,) = check_temperatures(temperature)
    if top_k is not None:
        top_k = check_positive_int(top_k, "top_k", high=model.cfg.d_vocab)
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real):
            raise TypeError(f"top_p must be a number in (0, 1], got {top_p!r} ({type(top_p).__name__})")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not isinstance(prompts, str | Sequence):
        raise TypeError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    prompts = (prompts,) if isinstance(prompts, str) else tuple(prompts)
    prompt_ids = prompt_tokens(model, prompts, max_new_tokens=max_new_tokens)
    if seeds is not None and seed is not None:
        raise ValueError("pass seed (prompt i uses seed + i) or seeds (one per prompt), not both")
    if seeds is None:
        seed = 0 if seed is None else check_positive_int(seed, "seed", low=0)
        seeds = tuple(seed + i for i in range(len(prompts)))
    elif isinstance(seeds, str) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds must be a list of integers, one per prompt, got {type(seeds).__name__}")
    seeds = tuple(check_positive_int(s, "seed", low=0, high=MAX_SEED) for s in seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    device = torch.device(model.cfg.device)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    if use_kv_cache and not attached_hooks(model):
        new = _generate_cached(model, prompt_ids, max_new_tokens, temperature, generators, top_k, top_p)
    else:
        new = _generate_full(model, prompt_ids, max_new_tokens, temperature, generators, top_k, top_p)
    texts = tuple(model.tokenizer.decode(row.tolist()) for row in new)
    return Generation(prompts, tuple(prompt_ids), new.cpu(), texts, seeds)


def _generate_cached(model, prompt_ids, max_new_tokens, temperature, generators, top_k, top_p) -> Tensor:
    """The fast path: ``FastGPT2`` with a KV cache, prompts left-padded into one batch."""
    device = model.cfg.device
    batch, longest = len(prompt_ids), max(len(p) for p in prompt_ids)
    pad = model.tokenizer.pad_token_id or 0
    tokens = torch.full((batch, longest), pad, dtype=torch.long)
    key_mask = torch.zeros(batch, longest + max_new_tokens, dtype=torch.bool)
    for i, ids in enumerate(prompt_ids):  # left padding: every prompt ends at the same slot
        tokens[i, longest - len(ids):] = ids
        key_mask[i, longest - len(ids):] = True
    tokens, key_mask = tokens.to(device), key_mask.to(device)
    positions = (key_mask[:, :longest].long().cumsum(-1) - 1).clamp_min(0)
    new = torch.empty(batch, max_new_tokens, dtype=torch.long, device=device)
    fast = FastGPT2(model)
    cfg = model.cfg
    shape = (cfg.n_layers, batch, cfg.n_heads, longest + max_new_tokens, cfg.d_head)
    cache_k = torch.empty(shape, dtype=fast.w.W_E.dtype, device=device)
    cache_v = torch.empty_like(cache_k)
    logits = fast.forward(tokens, positions, cache_k, cache_v, 0, key_mask)
    next_pos = positions[:, -1:] + 1
    for step in range(max_new_tokens):
        new[:, step] = sample_next(logits, temperature, generators, top_k, top_p)
        key_mask[:, longest + step] = True
        if step + 1 < max_new_tokens:
            logits = fast.forward(new[:, step:step + 1], next_pos, cache_k, cache_v, longest + step, key_mask)
            next_pos = next_pos + 1
    return new


def _generate_full(model, prompt_ids, max_new_tokens, temperature, generators, top_k, top_p) -> Tensor:
    """The reference, and the path under hooks: the model's own forward on the whole sequence every step.

    Prompts of equal length run as one batch, so there is never padding for a hook to see.
    """
    device = model.cfg.device
    new = torch.empty(len(prompt_ids), max_new_tokens, dtype=torch.long, device=device)
    rows_by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(prompt_ids):
        rows_by_length.setdefault(len(ids), []).append(i)
    for rows in rows_by_length.values():
        seq = torch.stack([prompt_ids[i] for i in rows]).to(device)  # (rows, pos)
        for step in range(max_new_tokens):
            logits = last_logits(model, seq)  # only the last position is unembedded
            token = sample_next(logits, temperature, [generators[i] for i in rows], top_k, top_p)
            new[rows, step] = token
            seq = torch.cat([seq, token.unsqueeze(1)], dim=1)
    return new


# ---------------------------------------------------------------------------------------------- metrics


def _ngrams(tokens: Sequence[int] | Tensor, n: int) -> list[tuple[int, ...]]:
    """The n-grams of one continuation (a 1-d sequence of token ids), in order."""
    n = check_positive_int(n, "n")
    if isinstance(tokens, Tensor):
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be one continuation (1-d), got shape {tuple(tokens.shape)}: pass a row")
        tokens = tokens.tolist()
    tokens = list(tokens)
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[int] | Tensor, n: int) -> float:
    """Distinct n-grams / all n-grams in one continuation (1 = never repeats; near 0 = a loop); NaN when it is
    shorter than n."""
    grams = _ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeated_ngram_fraction(tokens: Sequence[int] | Tensor, n: int = 4) -> float:
    """Fraction of n-grams that already occurred earlier in the same continuation; NaN when it is shorter than n."""
    grams = _ngrams(tokens, n)
    seen, repeats = set(), 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else float("nan")


@torch.no_grad()
def continuation_logprobs(model, generation: Generation) -> Float[Tensor, "batch new"]:
    """Log-probability of each generated token under the model at T=1, given everything before it: a
    coherence proxy to plot against position. One forward per distinct prompt length, so no padding."""
    if not isinstance(generation, Generation):
        raise TypeError(f"generation must be what interp.sampling.generate returns, got {type(generation).__name__}")
    rows_by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(generation.prompt_tokens):
        rows_by_length.setdefault(len(ids), []).append(i)
    out = torch.empty(generation.tokens.shape)
    for length, rows in rows_by_length.items():
        new = generation.tokens[rows].to(model.cfg.device)  # (rows, new)
        prompts = torch.stack([generation.prompt_tokens[i] for i in rows]).to(model.cfg.device)
        logits = model(torch.cat([prompts, new], dim=1))[:, length - 1 : -1]  # the logit at p predicts p+1
        picked = logits.gather(-1, new.unsqueeze(-1)).squeeze(-1)  # log-softmax at the sampled token only
        out[rows] = (picked - logits.float().logsumexp(-1)).float().cpu()
    return out
