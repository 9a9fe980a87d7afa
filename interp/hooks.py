"""Hooks are global state on the model: interp attaches them only inside a ``with`` block that removes them in
``finally``, even after an exception, and a write means the same thing on every backend.

Every intervention (``interp.interventions``, ``interp.patching``) and every cache (``interp.caching``) goes
through ``temporary_hooks``; ``attached_hooks`` lists whatever is still attached.

Example:
    >>> with temporary_hooks(model, [("blocks.0.hook_resid_post", lambda act, hook: act * 0.5)]):
    ...     logits = model(tokens)
    >>> attached_hooks(model)
    []
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from interp.backends import Hook, hook_attachments
from interp.errors import NameNotFoundError

__all__ = ["attached_hooks", "check_hook_names", "logits_for_gradients", "run_until", "run_with_hooks",
           "temporary_hooks"]


_LEVELS = itertools.count(1_000_000)  # hook context levels of our own, apart from TransformerLens's


# Hook points that fire only when a flag of the model's is on: without it a hook there is silently a no-op.
_FLAGGED_HOOKS = {"attn.hook_result": "use_attn_result", "hook_q_input": "use_split_qkv_input",
                  "hook_k_input": "use_split_qkv_input", "hook_v_input": "use_split_qkv_input",
                  "hook_attn_in": "use_attn_in", "hook_mlp_in": "use_hook_mlp_in"}
# Hook points the bridge has but never runs: its attention calls the q, k and v projections apart (split from
# GPT-2's fused c_attn), never the fused ``qkv`` module, with any flag.
_NEVER_ON_BRIDGE = (".attn.qkv.hook_in", ".attn.qkv.hook_out")


def check_hook_names(model, names: Sequence[str]) -> dict:
    """Check that every name is a hook point of ``model`` that fires; return ``model.hook_dict``.

    ``KeyError`` (with close matches) for an unknown name; ``ValueError`` for a hook point whose flag is off
    (``hook_result`` without ``use_attn_result``...), or one the bridge never runs (``attn.qkv.hook_out``), which
    would otherwise never fire: a hook there would silently do nothing.
    """
    hook_dict = model.hook_dict
    for name in names:
        if name not in hook_dict:
            import difflib

            close = difflib.get_close_matches(name, list(hook_dict), n=3)
            raise NameNotFoundError(f"no hook point named {name!r}" + (f"; did you mean {close}?" if close else ""))
        flag = next((f for suffix, f in _FLAGGED_HOOKS.items() if name.endswith("." + suffix)), None)
        if flag is not None and not getattr(model.cfg, flag, False):
            raise ValueError(f"{name} fires only when {flag} is on: call model.set_{flag}(True) first")
        if name.endswith(_NEVER_ON_BRIDGE):  # HookedTransformer has no such points
            attn = name.rsplit(".qkv.", 1)[0]
            raise ValueError(f"{name} never fires on the TransformerLens bridge, whose attention runs q, k and v "
                             f"apart: hook {attn}.hook_q, {attn}.hook_k or {attn}.hook_v (or {attn}.q.hook_out...)")
    return hook_dict


@contextlib.contextmanager
def temporary_hooks(model, fwd_hooks: Sequence[tuple[str, Hook]]) -> Iterator[None]:
    """Attach forward hooks for the duration of the block; they are removed even if the block raises.

    Unknown hook names raise ``KeyError`` listing close matches, before anything is attached. This does what
    ``model.hooks()`` does, with one lookup of ``model.hook_dict``: TransformerBridge rebuilds that mapping on
    every access, which made its ``hooks()`` cost ~6 ms per hook. A write means the same on every backend:
    ``interp.backends.hook_attachments`` says how (on the bridge, TransformerLens's own ``hooks()`` lets a write
    to ``hook_resid_mid`` reach only the MLP's input).
    """
    hook_dict = check_hook_names(model, [name for name, _ in fwd_hooks])
    level = next(_LEVELS)
    attached = []
    try:
        for name, fn in fwd_hooks:
            for point_name, point_fn, prepend in hook_attachments(model, name, fn):
                point = hook_dict[point_name]
                point.add_hook(point_fn, dir="fwd", level=level, prepend=prepend)
                attached.append(point)
        yield
    finally:
        for point in attached:
            point.remove_hooks("fwd", level=level)


_LIBRARY_WIRING = ("transformer_lens.model_bridge", "transformers.utils.output_capturing")


def attached_hooks(model) -> list[str]:
    """Names of the modules with a forward or backward hook attached: hook points (``model.hooks``,
    ``add_hook``) and plain ``register_forward_hook`` alike, plus ``"<global>"`` for torch's global module
    hooks. Empty between runs; ``generate`` uses it to decide whether the fast path may run.

    The wiring TransformerBridge and transformers register on the wrapped Hugging Face modules (to feed the
    bridge's hook points and to capture attention outputs) is not counted: it stays once set up, and changes
    nothing the model computes.
    """
    from torch.nn.modules import module as torch_module

    def foreign(hooks) -> bool:
        return any(not getattr(fn, "__module__", "").startswith(_LIBRARY_WIRING) for fn in hooks.values())

    names = [name or "<model>" for name, m in model.named_modules()
             if any(foreign(h) for h in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks,
                                         m._backward_pre_hooks))]
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        names.append("<global>")
    return names


def run_with_hooks(model, tokens, hooks: Sequence[tuple[str, Hook]]) -> None:
    """One forward of ``tokens`` with ``hooks`` attached, for what the hooks keep; no logits, no gradient."""
    with torch.no_grad(), temporary_hooks(model, hooks):
        model(tokens, return_type=None)


class _Stop(Exception):
    """Raised by the last hook ``run_until`` waits for: the rest of the forward is not needed."""


def run_until(model, tokens, names: Sequence[str], hooks: Sequence[tuple[str, Hook]] = ()) -> dict[str, Tensor]:
    """The activations at the hook points ``names`` in a forward of ``tokens`` with ``hooks`` attached, as each
    point passes them on (after ``hooks`` there); the forward stops as soon as every name has fired, so what
    comes after them is never computed. No gradient.

    Example:
        >>> acts = run_until(model, tokens, ["blocks.1.hook_resid_pre"])  # the embeddings and block 0, no more
        >>> acts["blocks.1.hook_resid_pre"].shape                         # [batch, pos, d_model]
    """
    wanted = list(dict.fromkeys(names))  # a name given twice is waited for once
    kept: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(act, hook):
            kept[name] = act.detach()
            if len(kept) == len(wanted):
                raise _Stop
        return hook

    try:  # the default return type: HookedTransformer's return_type=None skips the unembedding and its hooks
        with torch.no_grad(), temporary_hooks(model, [*hooks, *((name, keep(name)) for name in wanted)]):
            model(tokens)
    except _Stop:
        return kept
    raise RuntimeError(f"the forward ended before {sorted(set(wanted) - set(kept))} fired")


def logits_for_gradients(model, tokens, hooks: Sequence[tuple[str, Hook]]) -> Tensor:
    """``model(tokens)`` with ``hooks`` attached and gradients on, for a backward from a metric of the logits
    (a hook that makes a leaf starts the graph; compute the metric under ``torch.enable_grad()`` too). The
    logits are the model's own; their gradient reaches the unembedding's input only through the positions
    where it is not zero (``_SparseLogitsGrad``)."""
    kept: dict[str, Tensor] = {}

    def unembed_input(act, hook):  # the model's unembedding runs without a graph; _SparseLogitsGrad is its own
        kept["x"] = act
        return act.detach()

    with torch.enable_grad(), temporary_hooks(model, [*hooks, ("unembed.hook_in", unembed_input)]):
        logits = model(tokens)
        return _SparseLogitsGrad.apply(kept["x"], logits, model.W_U.detach())


class _SparseLogitsGrad(torch.autograd.Function):
    """The model's own logits, whose gradient reaches the unembedding's input (``unembed.hook_in``, ``x``) only
    through the positions where it is not zero: ``dL/dx = dL/dlogits @ W_U.T`` on those rows. A metric reads a
    few positions (often the last), and the dense backward would be a [batch·pos, d_vocab] @ [d_vocab, d_model]
    matmul as large as the unembedding itself."""

    @staticmethod
    def forward(ctx, x: Tensor, logits: Tensor, W_U: Tensor) -> Tensor:
        ctx.save_for_backward(W_U)
        ctx.x_shape = x.shape
        return logits.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (W_U,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        rows = (flat.amax(-1).ne(0) | flat.amin(-1).ne(0)).nonzero()[:, 0]  # a NaN counts; 5x faster than ne(0).any
        out = flat.new_zeros(flat.shape[0], W_U.shape[0])
        out[rows] = flat[rows] @ W_U.T.to(flat.dtype)
        return out.view(ctx.x_shape), None, None
