"""Input checks at the boundary, and the one way from text to tokens.

Every public function checks its input here, in its first lines, before anything runs; code inside trusts its
caller. Nothing is coerced silently: a float where an index belongs, an empty list, a NaN, or a prompt longer
than the context window is a ``TypeError`` or ``ValueError`` that says what to pass instead.

Example:
    >>> tokens = to_tokens(model, "When Mary and John went to the store")   # [1, pos], BOS first
    >>> to_tokens(model, "a " * 3000)                                       # ValueError: too long, not cut
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = ["check_finite", "check_flag", "check_folder", "check_gradients_on", "check_heads", "check_index",
           "check_layers", "check_position", "check_positions", "check_positive_int", "check_tokens", "to_tokens"]


def model_name(model) -> str:
    info = getattr(model, "interp_info", None)
    return info.label if info is not None else "this model"


def check_index(value, what: str) -> int:
    """``value`` as an int if it is an integer (a Python, numpy or 0-d tensor integer); ``TypeError`` for a float,
    a bool or anything else, which would otherwise be truncated to a different index."""
    if isinstance(value, Tensor) and value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool:
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def check_flag(value, what: str) -> bool:
    """``value`` if it is True or False; a ``TypeError`` otherwise (a string such as "no" would read as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return value


def check_positions(positions, none_means: str) -> list[int] | None:
    """``positions`` as a non-empty list of ints, or None (which the caller reads as ``none_means``, e.g. "patch
    every position"); a ``TypeError`` for a bare number or a float, a ``ValueError`` for an empty list."""
    if positions is None:
        return None
    if isinstance(positions, str) or not isinstance(positions, Iterable):
        raise TypeError(f"positions must be a list of integer positions, e.g. [3, 5]; got {positions!r}")
    positions = [check_index(p, "position") for p in positions]
    if not positions:
        raise ValueError(f"positions is empty: pass None to {none_means}")
    return positions


def check_positive_int(value, what: str, *, low: int = 1, high: int | None = None) -> int:
    """An integer in ``low..high``; ``TypeError`` or ``ValueError`` otherwise."""
    value = check_index(value, what)
    if value < low or (high is not None and value > high):
        bounds = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{what} must be {bounds}, got {value}")
    return value


def check_folder(path, holds: str) -> Path:
    """``path`` as a ``Path``, where a folder of ``holds`` is written; ``NotADirectoryError`` if a file is there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is a file, not a folder (for {holds})")
    return path


def check_gradients_on(what: str) -> None:
    """``RuntimeError`` under ``torch.inference_mode()``, where no tensor can require grad and
    ``torch.enable_grad()`` cannot turn gradients back on (it can under ``torch.no_grad()``, and interp's
    gradient methods do)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{what} needs gradients, which torch.inference_mode() turns off: call it outside the "
                           "inference_mode block (under torch.no_grad it turns them back on itself)")


def check_finite(value, what: str):
    """``value`` (a number or a tensor) if every entry is finite; ``ValueError`` for NaN or inf."""
    finite = torch.isfinite(value).all() if isinstance(value, Tensor) else math.isfinite(value)
    if not finite:
        raise ValueError(f"{what} has NaN or inf values: an intervention with them would poison every logit")
    return value


def _check_indices(values, n: int, what: str, model) -> tuple[int, ...]:
    if isinstance(values, Tensor | str) or not isinstance(values, Sequence):
        raise TypeError(f"{what}s must be a list of integers (or None for all), got {values!r}")
    indices = tuple(check_index(v, what) for v in values)
    if not indices:
        raise ValueError(f"{what}s is empty: pass None for all {what}s")
    if len(set(indices)) < len(indices):
        raise ValueError(f"{what}s {list(indices)} name a {what} twice: name each once")
    for index in indices:
        if not 0 <= index < n:
            per = " per layer" if what == "head" else ""
            raise ValueError(f"{what} {index} out of range: {model_name(model)} has {what}s 0..{n - 1}{per}")
    return indices


def check_layers(model, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Validate layer indices (None = all) and return them as a tuple."""
    return tuple(range(model.cfg.n_layers)) if layers is None else _check_indices(layers, model.cfg.n_layers,
                                                                                   "layer", model)


def check_heads(model, heads: Sequence[int] | None) -> tuple[int, ...]:
    """Validate head indices (None = all) and return them as a tuple."""
    return tuple(range(model.cfg.n_heads)) if heads is None else _check_indices(heads, model.cfg.n_heads,
                                                                                 "head", model)


def check_tokens(model, tokens) -> Int[Tensor, "batch pos"]:
    """Validate a ``[batch, pos]`` batch of token ids for ``model``, before anything runs.

    Raises ``TypeError`` for anything but an integer tensor of shape [batch, pos], and ``ValueError`` for an
    empty batch, more tokens than the context window, or an id outside ``0..d_vocab-1`` (TransformerLens
    would wrap a negative id around to the end of the vocabulary, silently).
    """
    if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int64, torch.int32) or tokens.ndim != 2:
        raise TypeError("tokens must be an integer tensor of shape [batch, pos] (use interp.to_tokens(model, text))")
    if 0 in tokens.shape:
        raise ValueError(f"tokens is empty (shape {tuple(tokens.shape)}): give at least one token per row")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"{tokens.shape[1]} tokens is longer than the context window of {model_name(model)} "
                         f"(n_ctx {model.cfg.n_ctx}); cut the input to at most {model.cfg.n_ctx} tokens")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= model.cfg.d_vocab:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary of {model_name(model)} "
                         f"(0..{model.cfg.d_vocab - 1})")
    return tokens


def check_position(tokens: Tensor, pos: int) -> int:
    """Validate a position index into ``tokens``' second axis (negative counts from the end); return it."""
    n = tokens.shape[1]
    pos = check_index(pos, "pos")
    if not -n <= pos < n:
        raise ValueError(f"pos {pos!r} out of range: the prompt has {n} tokens (positions {-n}..{n - 1})")
    return pos


def to_tokens(model, text: str | Sequence[str], *, prepend_bos: bool = True) -> Int[Tensor, "batch pos"]:
    """Tokenize ``text`` (one string, or a list of strings of equal token length) for ``model``, with BOS first.

    Unlike ``model.to_tokens``, which cuts a long prompt to the context window without a word, this refuses
    one that does not fit, and an empty prompt; prompts of different lengths are refused rather than padded,
    since padding would be read as text. On the model's device.
    """
    texts = [text] if isinstance(text, str) else list(text) if isinstance(text, Sequence) else None
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError(f"text must be a non-empty string or a list of them, got {text!r}")
    rows = [model.to_tokens(t, prepend_bos=prepend_bos, truncate=False)[0] for t in texts]
    for t, row in zip(texts, rows):
        if len(row) > model.cfg.n_ctx:
            raise ValueError(f"the prompt is {len(row)} tokens, longer than the context window of "
                             f"{model_name(model)} ({model.cfg.n_ctx}): shorten it ({t[:40]!r}...)")
    lengths = {len(row) for row in rows}
    if len(lengths) > 1:
        raise ValueError(f"the prompts have different token lengths {sorted(lengths)}: tokenize them one at a time, "
                         "or make them the same length")
    return torch.stack(rows).to(model.cfg.device)
