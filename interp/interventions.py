"""Interventions inside a ``with`` block: ablate heads, or patch an activation in from another run.

Each is a context manager whose hooks go through ``interp.hooks.temporary_hooks``, so they are removed in
``finally``, reach ``generate``, and mean the same on every backend.

Example:
    >>> with ablate_heads(model, [(1, 1)]):
    ...     loss = model(tokens, return_type="loss")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from jaxtyping import Int
from torch import Tensor

from interp.backends import Hook
from interp.caching import cache_heads
from interp.hooks import check_hook_names, temporary_hooks
from interp.inputs import check_finite, check_heads, check_layers, check_positions, check_tokens

__all__ = ["ablate_heads", "activation_tail", "patch_activation"]


def activation_tail(model, name: str) -> tuple[int, ...] | None:
    """The axes after ``[batch, pos]`` of the activation at hook ``name`` (None where it is not ``[batch, pos,
    ...]``, as for attention patterns, or not known here)."""
    cfg = model.cfg
    last = name.rsplit(".", 1)[-1]
    if last in ("hook_q", "hook_k", "hook_v", "hook_z"):
        return (cfg.n_heads, cfg.d_head)
    if last == "hook_result":
        return (cfg.n_heads, cfg.d_model)
    if name.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return (cfg.d_mlp,)
    if last in ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post",
                "hook_attn_out", "hook_mlp_out", "hook_mlp_in"):
        return (cfg.d_model,)
    return None


@contextlib.contextmanager
def ablate_heads(model, heads: Sequence[tuple[int, int]], *, mode: str = "zero",
                 reference: Int[Tensor, "batch pos"] | None = None) -> Iterator[None]:
    """Ablate attention heads inside the block: their z (the per-head output before W_O) is replaced.

    Args:
        heads: ``[(layer, head), ...]`` (a head named twice is ablated once).
        mode: ``"zero"``, or ``"mean"``: each head's z averaged over ``reference``'s batch and positions.
        reference: for ``mode="mean"``: tokens ``[batch, pos]``, or a corpus harvest
            (``interp.harvest.open(path)``) that holds ``blocks.{layer}.attn.hook_z``, whose mean over every
            harvested token is used.

    Example:
        >>> with ablate_heads(model, [(5, 1), (5, 5)]):
        ...     loss = model(tokens, return_type="loss")
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    if mode == "mean" and reference is None:
        raise ValueError("mode='mean' needs reference tokens to average over")
    if mode == "zero" and reference is not None:
        raise ValueError("reference is for mode='mean' (the tokens or harvest to average over); mode='zero' "
                         "uses none: pass mode='mean' to ablate to the mean")
    if isinstance(heads, Tensor | str) or not isinstance(heads, Sequence):
        raise TypeError(f"heads must be a list of (layer, head) pairs (empty: ablate nothing), got {heads!r}")
    by_layer: dict[int, list[int]] = {}
    for pair in heads:
        if isinstance(pair, Tensor | str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"heads must be (layer, head) pairs, e.g. [(1, 1), (0, 0)]; got {pair!r} in {heads!r}")
        (layer,), (head,) = check_layers(model, [pair[0]]), check_heads(model, [pair[1]])
        if head not in by_layer.setdefault(layer, []):  # a head named twice is ablated once
            by_layer[layer].append(head)
    from interp.harvest import Harvest

    if isinstance(reference, Harvest):
        reference.check_model(model, [f"blocks.{layer}.attn.hook_z" for layer in by_layer])
        missing = [f"blocks.{layer}.attn.hook_z" for layer in by_layer
                   if f"blocks.{layer}.attn.hook_z" not in reference.hooks]
        if missing:
            raise ValueError(f"the harvest has no {', '.join(missing)}: harvest those hooks for their means")
    elif reference is not None:
        check_tokens(model, reference)
    means: dict[int, Tensor] = {}
    if mode == "mean" and isinstance(reference, Harvest):
        means = {layer: reference.mean(f"blocks.{layer}.attn.hook_z")[hs].to(model.cfg.device)
                 for layer, hs in by_layer.items()}  # [head, d_head]
    elif mode == "mean":
        cached = {layer: cache_heads(model, reference, layers=[layer], heads=hs, kinds=("z",)).z[0]
                  for layer, hs in by_layer.items()}  # [head, batch, pos, d_head]
        means = {layer: z.mean(dim=(1, 2)) for layer, z in cached.items()}  # [head, d_head]

    def hook_for(layer: int) -> Hook:
        index = by_layer[layer]

        def hook(z: Tensor, hook) -> Tensor:  # [batch, pos, head, d_head]
            z = z.clone()  # never write into a tensor someone else may hold (a cache keeps a view of it)
            z[:, :, index] = 0.0 if mode == "zero" else means[layer].to(z.dtype)
            return z
        return hook

    with temporary_hooks(model, [(f"blocks.{layer}.attn.hook_z", hook_for(layer)) for layer in by_layer]):
        yield


@contextlib.contextmanager
def patch_activation(model, name: str, source: Tensor, *, positions: Sequence[int] | None = None,
                     heads: Sequence[int] | None = None) -> Iterator[None]:
    """Inside the block, replace activation ``name`` with ``source`` (from another run, e.g. a cache).

    Args:
        name: a hook name, e.g. ``"blocks.3.hook_resid_pre"`` or ``"blocks.5.attn.hook_z"``.
        source: the activation to patch in, same shape as the one it replaces. It is never modified.
        positions: only these positions (dim 1); default all of the source's.
        heads: only these heads (dim 2, for per-head hooks such as hook_z); default all.

    During ``generate`` the activation grows one position per step; the source's positions are patched at
    every step and the generated ones are left alone.

    ``source`` may also be a corpus harvest of ``name`` (``interp.harvest.open(path)``): its mean over every
    harvested token is patched in at every position (or at ``positions``), for every prompt.
    """
    from interp.harvest import Harvest

    if isinstance(source, Harvest):
        with _patch_mean(model, name, source, positions, heads):
            yield
        return
    if not isinstance(source, Tensor) or not source.is_floating_point() or source.ndim < 2:
        got = tuple(source.shape) if isinstance(source, Tensor) else type(source).__name__
        raise TypeError(f"source must be a floating activation tensor [batch, pos, ...]; got {got}")
    check_hook_names(model, [name])
    expected = activation_tail(model, name)
    if expected is not None and tuple(source.shape[2:]) != expected:
        raise ValueError(f"source shape {tuple(source.shape)} does not fit {name}, whose activations are "
                         f"[batch, pos, {', '.join(map(str, expected))}]")
    source = check_finite(source.detach(), "the source")
    n_pos = source.shape[1]
    positions = check_positions(positions, "patch every position of the source")
    if positions is not None and not all(-n_pos <= p < n_pos for p in positions):
        raise ValueError(f"positions {positions} out of range: the source has {n_pos} positions")
    if heads is not None:
        if source.ndim != 4:
            raise ValueError(f"heads= needs a per-head activation [batch, pos, head, d_head]; the source has "
                             f"shape {tuple(source.shape)}")
        heads = list(check_heads(model, heads))
    pos = slice(None) if positions is None else positions

    def hook(act: Tensor, hook) -> Tensor:
        # During generation the sequence grows past the source: the source's positions are patched, the
        # new ones are left alone.
        if act.shape[0] != source.shape[0] or act.shape[2:] != source.shape[2:] or act.shape[1] < n_pos:
            raise ValueError(f"cannot patch {name}: source shape {tuple(source.shape)} does not fit activation "
                             f"shape {tuple(act.shape)} (the batch and every axis but pos must match)")
        patched = act.clone()
        if heads is None:
            patched[:, :n_pos][:, pos] = source[:, pos].to(act.dtype)
        else:
            for head in heads:
                patched[:, :n_pos, head][:, pos] = source[:, pos, head].to(act.dtype)
        return patched

    with temporary_hooks(model, [(name, hook)]):
        yield


@contextlib.contextmanager
def _patch_mean(model, name: str, harvest, positions, heads) -> Iterator[None]:
    """``patch_activation`` with a harvest: its mean of ``name``, at every position or at ``positions``."""
    check_hook_names(model, [name])
    harvest.check_model(model, [name])
    if name not in harvest.hooks:
        raise ValueError(f"the harvest has no {name}: harvest that hook for its mean (it has {harvest.hooks})")
    mean = check_finite(harvest.mean(name), "the harvest's mean")
    expected = activation_tail(model, name)
    if expected is not None and tuple(mean.shape) != expected:
        raise ValueError(f"the harvest's mean of {name} has shape {tuple(mean.shape)}, the model's is {expected}")
    positions = check_positions(positions, "patch every position")
    if heads is not None:
        if mean.ndim != 2:
            raise ValueError(f"heads= needs a per-head activation such as hook_z; {name}'s mean has shape "
                             f"{tuple(mean.shape)}")
        heads = list(check_heads(model, heads))

    def hook(act: Tensor, hook) -> Tensor:
        if positions is not None and not all(-act.shape[1] <= p < act.shape[1] for p in positions):
            raise ValueError(f"positions {positions} do not fit the {act.shape[1]}-token input")
        patched, value = act.clone(), mean.to(act.device, act.dtype)
        at = slice(None) if positions is None else positions
        if heads is None:
            patched[:, at] = value
        else:
            for head in heads:
                patched[:, at, head] = value[head]
        return patched

    with temporary_hooks(model, [(name, hook)]):
        yield
