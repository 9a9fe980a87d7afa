"""Activation patching, attribution patching and steering: one engine for "what if this activation were that".

- ``activation_patching``: run the corrupted input with one activation (a layer x position, or a layer x
  head) taken from the clean run, for every cell; the metric of each patched run is the cell's score.
- ``attribution_patching``: the first-order approximation of the same scores, ``(clean - corrupted) ·
  d metric / d activation``, from two forwards and one backward.
- ``steer`` and ``steering_vector``: activation addition (ActAdd): add a vector to the residual stream.

Every hook lives inside a ``with`` and is removed in ``finally``, as everywhere in interp.

Example:
    >>> clean, corrupt = model.to_tokens("The Eiffel Tower is in"), model.to_tokens("The Colosseum is in")
    >>> paris, rome = model.to_single_token(" Paris"), model.to_single_token(" Rome")
    >>> result = activation_patching(model, clean, corrupt, lambda logits: logits[:, -1, paris] - logits[:, -1, rome])
    >>> result.scores.shape        # [layer, pos]: Paris over Rome, each cell patched in from the clean run
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp._repr import concise_repr
from interp.hooks import logits_for_gradients, temporary_hooks
from interp.inputs import (
    check_finite,
    check_layers,
    check_positions,
    check_positive_int,
    check_tokens,
    to_tokens,
)
from interp.metrics import Metric, check_metric, metric_mean

__all__ = ["PatchingResult", "activation_patching", "attribution_patching", "steer", "steering_vector"]

POSITION_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_HOOKS = ("z",)


@dataclass(frozen=True)
class PatchingResult:
    """``scores[layer, pos]`` (``by="position"``) or ``scores[layer, head]`` (``by="head"``)."""

    scores: Float[Tensor, "layer cell"]
    hook: str
    by: str
    clean_metric: float  # the metric of the clean run, unpatched
    corrupted_metric: float  # the metric of the corrupted run, unpatched

    __repr__ = concise_repr

    def to_frame(self):
        import pandas as pd

        column = "pos" if self.by == "position" else "head"
        return pd.DataFrame([{"layer": layer, column: cell, "score": float(v)}
                             for layer, row in enumerate(self.scores) for cell, v in enumerate(row)])


def _hook_name(layer: int, hook: str) -> str:
    return f"blocks.{layer}.attn.hook_{hook}" if hook in HEAD_HOOKS else f"blocks.{layer}.hook_{hook}"


def _check(model, clean_tokens, corrupted_tokens, hook: str, by: str) -> None:
    check_tokens(model, clean_tokens)
    check_tokens(model, corrupted_tokens)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(f"clean and corrupted tokens must have the same shape, got {tuple(clean_tokens.shape)} "
                         f"and {tuple(corrupted_tokens.shape)}")
    if by not in ("position", "head"):
        raise ValueError(f"by must be 'position' or 'head', got {by!r}")
    allowed = POSITION_HOOKS + HEAD_HOOKS if by == "position" else HEAD_HOOKS
    if hook not in allowed:
        raise ValueError(f"hook {hook!r} with by={by!r}: choose from {allowed}")


def _metric(metric: Metric, logits: Tensor, run: str = "a patched run") -> float:
    return float(metric_mean(metric, logits, run))


def _cache(model, tokens: Tensor, hook: str) -> tuple[dict[int, Tensor], Tensor]:
    """The hook's activation at every layer, and the logits, from one ``run_with_cache``."""
    names = [_hook_name(layer, hook) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
    return {layer: cache[name] for layer, name in enumerate(names)}, logits


@torch.no_grad()
def activation_patching(model, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
                        metric: Metric, *, hook: str = "resid_pre", by: str = "position",
                        cells_per_forward: int = 16) -> PatchingResult:
    """For every layer x position (or layer x head), the metric of the corrupted run with that one activation
    patched in from the clean run.

    Args:
        metric: maps the logits ``[batch, pos, d_vocab]`` of a run to a ``[batch]`` tensor or a scalar (the
            contract of ``interp.metrics``); a score is its mean over the batch.
        hook: ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out`` or ``mlp_out`` (by position), or
            ``z`` (by position, or by head).
        cells_per_forward: how many cells share one batched forward (memory against speed); the cost is
            one cached clean run plus one forward's work per cell.

    Returns:
        ``PatchingResult`` with ``scores[layer, pos]`` or ``scores[layer, head]``.
    """
    _check(model, clean_tokens, corrupted_tokens, hook, by)
    cells_per_forward = check_positive_int(cells_per_forward, "cells_per_forward")
    check_metric(metric, model, *clean_tokens.shape)
    clean, clean_logits = _cache(model, clean_tokens, hook)
    clean_metric = _metric(metric, clean_logits, "the clean run")
    corrupted_metric = _metric(metric, model(corrupted_tokens), "the corrupted run")  # both before the cells
    n_layers, batch, n_pos = model.cfg.n_layers, *corrupted_tokens.shape
    width = n_pos if by == "position" else model.cfg.n_heads
    cells = [(layer, i) for layer in range(n_layers) for i in range(width)]
    scores = torch.empty(n_layers, width)
    for start in range(0, len(cells), cells_per_forward):
        chunk = cells[start:start + cells_per_forward]

        def patch(layer: int, chunk: list = chunk):
            def fn(act, hook):  # act [len(chunk)·batch, pos, ...]: copy c of the batch gets cell c
                act = act.clone()
                for c, (cell_layer, i) in enumerate(chunk):
                    if cell_layer != layer:
                        continue
                    rows = slice(c * batch, (c + 1) * batch)
                    if by == "position":
                        act[rows, i] = clean[layer][:, i]
                    else:
                        act[rows, :, i] = clean[layer][:, :, i]
                return act
            return fn

        layers = sorted({layer for layer, _ in chunk})
        with temporary_hooks(model, [(_hook_name(layer, hook), patch(layer)) for layer in layers]):
            logits = model(corrupted_tokens.repeat(len(chunk), 1))
        for c, (layer, i) in enumerate(chunk):
            scores[layer, i] = _metric(metric, logits[c * batch:(c + 1) * batch])
    return PatchingResult(scores, hook, by, clean_metric, corrupted_metric)


def attribution_patching(model, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
                         metric: Metric, *, hook: str = "resid_pre", by: str = "position") -> PatchingResult:
    """The linear approximation of ``activation_patching``'s scores: ``metric(corrupted) + (clean - corrupted)
    · grad``, with the gradient of the metric at the corrupted run. Two forwards and one backward in all.

    Scores are in the same units and shape as ``activation_patching``'s (the patched metric, estimated).
    """
    _check(model, clean_tokens, corrupted_tokens, hook, by)
    check_metric(metric, model, *clean_tokens.shape, needs_grad=True)
    clean, clean_logits = _cache(model, clean_tokens, hook)
    clean_metric = _metric(metric, clean_logits, "the clean run")
    corrupted: dict[int, Tensor] = {}

    def leaf(act, hook):  # the graph starts here, so gradients exist even if no parameter requires them
        return act.detach().requires_grad_(True)

    def keep(layer: int):
        def fn(act, hook):
            corrupted[layer] = act
            return act  # returned, so this very tensor flows on (the bridge passes hooks a copy otherwise)
        return fn

    hooks = [("hook_embed", leaf)] + [(_hook_name(layer, hook), keep(layer)) for layer in range(model.cfg.n_layers)]
    with torch.enable_grad():  # the metric too, if the caller is under no_grad
        logits = logits_for_gradients(model, corrupted_tokens, hooks)
        value = metric_mean(metric, logits, "the corrupted run")
        layers = sorted(corrupted)
        grads = torch.autograd.grad(value, [corrupted[layer] for layer in layers], allow_unused=True)
    rows = []
    for layer, grad in zip(layers, grads):  # in float32 at least: in bfloat16 the sum would round away small effects
        delta = clean[layer].float() - corrupted[layer].detach().float()
        product = delta * (torch.zeros_like(delta) if grad is None else grad.float())  # [batch, pos, ...]
        if by == "position":
            rows.append(product.flatten(2).sum(-1).sum(0))  # [pos]
        else:
            rows.append(product.sum(dim=(0, 1, 3)))  # [head]
    base = float(value.detach())
    return PatchingResult(torch.stack(rows).cpu() + base, hook, by, clean_metric, base)


@contextlib.contextmanager
def steer(model, vector: Float[Tensor, "... d_model"], *, layer: int, coeff: float = 1.0, hook: str = "resid_pre",
          positions: list[int] | None = None) -> Iterator[None]:
    """Inside the block, add ``coeff * vector`` to ``blocks.{layer}.hook_{hook}``.

    Args:
        vector: ``[d_model]``, added at every position (or at ``positions``); or ``[n, d_model]`` (what
            ``steering_vector`` returns), added at positions ``0..n-1`` (or at ``positions``, one row each;
            each position once).
        hook: ``resid_pre``, ``resid_mid`` or ``resid_post``.

    Under ``generate`` the model's own forward runs on the whole sequence at every step, so every step is
    steered the same way. A position outside an input is an error at that forward, in ``model(tokens)`` and
    in ``generate`` alike, never a silent no-op. NaN or inf in ``coeff`` or ``vector`` is refused up front.

    Example:
        >>> with steer(model, steering_vector(model, " Love", " Hate", layer=6), layer=6, coeff=5):
        ...     generate(model, "I think you are", temperature=0).texts
    """
    check_layers(model, [layer])
    if hook not in ("resid_pre", "resid_mid", "resid_post"):
        raise ValueError(f"hook must be resid_pre, resid_mid or resid_post, got {hook!r}")
    if not isinstance(vector, Tensor) or not vector.is_floating_point():
        raise TypeError(f"vector must be a floating tensor [d_model] or [n, d_model], got {type(vector).__name__}")
    if vector.ndim not in (1, 2) or vector.shape[-1] != model.cfg.d_model or 0 in vector.shape:
        raise ValueError(f"vector must be [d_model] or [n, d_model] with d_model {model.cfg.d_model}, "
                         f"got shape {tuple(vector.shape)}")
    if isinstance(coeff, bool) or not isinstance(coeff, int | float):
        raise TypeError(f"coeff must be a number, got {coeff!r}")
    check_finite(coeff, "coeff")
    check_finite(vector, "the steering vector")
    positions = check_positions(positions, "steer every position (or every row's position)")
    if positions is not None:
        if vector.ndim == 2 and len(positions) != len(vector):
            raise ValueError(f"{len(positions)} positions for a vector of {len(vector)} rows")
        if len(set(positions)) < len(positions):
            raise ValueError(f"positions {positions} name a position twice, which would add the vector there twice")
    added = (coeff * vector.detach()).to(model.cfg.device)
    rows = list(range(len(added))) if vector.ndim == 2 and positions is None else positions

    def fn(act, hook):
        n = act.shape[1]
        if rows is not None and not all(-n <= p < n for p in rows):
            raise ValueError(f"steer: positions {rows} do not all fit the {n}-token input (a vector of n rows "
                             f"steers positions 0..n-1); shorten the vector or pass positions")
        if rows is not None and len({p % n for p in rows}) < len(rows):
            raise ValueError(f"steer: positions {rows} name a position of the {n}-token input twice (a negative "
                             "one counts from the end), which would add the vector there twice")
        act = act.clone()
        delta = added.to(act.dtype)
        if rows is None:
            return act + delta
        for r, p in enumerate(rows):
            act[:, p] += delta[r] if delta.ndim == 2 else delta
        return act

    with temporary_hooks(model, [(f"blocks.{layer}.hook_{hook}", fn)]):
        yield


@torch.no_grad()
def steering_vector(model, prompt_a: str, prompt_b: str, *, layer: int,
                    hook: str = "resid_pre") -> Float[Tensor, "pos d_model"]:
    """ActAdd's steering vector: the residual stream of ``prompt_a`` minus that of ``prompt_b`` at ``layer``,
    position by position, the shorter prompt padded with spaces (as in Turner et al., 2023). Use it with
    ``steer``."""
    check_layers(model, [layer])
    if hook not in ("resid_pre", "resid_mid", "resid_post"):
        raise ValueError(f"hook must be resid_pre, resid_mid or resid_post, got {hook!r}")
    a, b = (to_tokens(model, p) for p in (prompt_a, prompt_b))  # refuses an empty or too-long prompt
    space = model.to_single_token(" ")
    n = max(a.shape[1], b.shape[1])
    a, b = (torch.cat([t, torch.full((1, n - t.shape[1]), space, device=t.device)], dim=1) for t in (a, b))
    acts, _ = _cache(model, torch.cat([a, b]), hook)
    return acts[layer][0] - acts[layer][1]
