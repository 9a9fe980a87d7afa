"""Cache exactly the activations you ask for, and intervene without leaving hooks behind.

Works on both ``HookedTransformer`` and ``TransformerBridge`` (compatibility mode): it uses only the hook
names and the ``model.hooks(...)`` context manager the two share. Hooks are global state on the model, so
every hook here lives inside a ``with`` block that removes it in ``finally``, even after an exception.

Example:
    >>> heads = cache_heads(model, tokens, layers=[5, 6], heads=[1, 5, 9], kinds=("q", "pattern"))
    >>> heads.q.shape          # [layer, head, batch, pos, d_head]
    torch.Size([2, 3, 1, 12, 64])
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.backends import hook_attachments

__all__ = [
    "CacheBudgetError",
    "CacheEstimate",
    "HeadCache",
    "ResidDecomposition",
    "ResidStack",
    "ablate_heads",
    "attached_hooks",
    "cache_heads",
    "decompose_resid",
    "estimate_cache_bytes",
    "patch_activation",
    "residual_stream",
    "temporary_hooks",
]

HEAD_KINDS = ("q", "k", "v", "z", "pattern", "result")
RESID_KINDS = ("resid_pre", "resid_mid", "resid_post")
Hook = Callable[[Tensor, object], Tensor | None]


class CacheBudgetError(MemoryError):
    """A cache request would exceed the caller's byte budget."""


# ---------------------------------------------------------------------------------------------- validation


def _model_name(model) -> str:
    info = getattr(model, "interp_info", None)
    return info.label if info is not None else "this model"


def check_layers(model, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Validate layer indices (None = all) and return them as a tuple."""
    n = model.cfg.n_layers
    if layers is None:
        return tuple(range(n))
    layers = tuple(int(x) for x in layers)
    if not layers:
        raise ValueError("layers is empty: pass None for all layers")
    for layer in layers:
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer} out of range: {_model_name(model)} has layers 0..{n - 1}")
    return layers


def check_heads(model, heads: Sequence[int] | None) -> tuple[int, ...]:
    """Validate head indices (None = all) and return them as a tuple."""
    n = model.cfg.n_heads
    if heads is None:
        return tuple(range(n))
    heads = tuple(int(x) for x in heads)
    if not heads:
        raise ValueError("heads is empty: pass None for all heads")
    for head in heads:
        if not 0 <= head < n:
            raise ValueError(f"head {head} out of range: {_model_name(model)} has heads 0..{n - 1} per layer")
    return heads


def check_tokens(model, tokens) -> Int[Tensor, "batch pos"]:
    """Validate a ``[batch, pos]`` batch of token ids for ``model``, before anything runs.

    Raises ``TypeError`` for anything but an integer tensor of shape [batch, pos], and ``ValueError`` for an
    empty batch, more tokens than the context window, or an id outside ``0..d_vocab-1`` (TransformerLens
    would wrap a negative id around to the end of the vocabulary, silently).
    """
    if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int64, torch.int32) or tokens.ndim != 2:
        raise TypeError("tokens must be an integer tensor of shape [batch, pos] (use model.to_tokens(text))")
    if 0 in tokens.shape:
        raise ValueError(f"tokens is empty (shape {tuple(tokens.shape)}): give at least one token per row")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"{tokens.shape[1]} tokens is longer than the context window of {_model_name(model)} "
                         f"(n_ctx {model.cfg.n_ctx}); cut the input to at most {model.cfg.n_ctx} tokens")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= model.cfg.d_vocab:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary of {_model_name(model)} "
                         f"(0..{model.cfg.d_vocab - 1})")
    return tokens


def check_position(tokens: Tensor, pos: int) -> int:
    """Validate a position index into ``tokens``' second axis (negative counts from the end); return it."""
    n = tokens.shape[1]
    if isinstance(pos, bool) or not isinstance(pos, int) or not -n <= pos < n:
        raise ValueError(f"pos {pos!r} out of range: the prompt has {n} tokens (positions {-n}..{n - 1})")
    return pos


# ---------------------------------------------------------------------------------------------- hooks


_LEVELS = itertools.count(1_000_000)  # hook context levels of our own, apart from TransformerLens's


# Hook points that fire only when a flag of the model's is on: without it a hook there is silently a no-op.
_FLAGGED_HOOKS = {"attn.hook_result": "use_attn_result", "hook_q_input": "use_split_qkv_input",
                  "hook_k_input": "use_split_qkv_input", "hook_v_input": "use_split_qkv_input",
                  "hook_attn_in": "use_attn_in", "hook_mlp_in": "use_hook_mlp_in"}


def check_hook_names(model, names: Sequence[str]) -> dict:
    """Check that every name is a hook point of ``model`` that fires; return ``model.hook_dict``.

    ``KeyError`` (with close matches) for an unknown name; ``ValueError`` for a hook point whose flag is off
    (``hook_result`` without ``use_attn_result``...), which would otherwise never fire.
    """
    hook_dict = model.hook_dict
    for name in names:
        if name not in hook_dict:
            import difflib

            close = difflib.get_close_matches(name, list(hook_dict), n=3)
            raise KeyError(f"no hook point named {name!r}" + (f"; did you mean {close}?" if close else ""))
        flag = next((f for suffix, f in _FLAGGED_HOOKS.items() if name.endswith("." + suffix)), None)
        if flag is not None and not getattr(model.cfg, flag, False):
            raise ValueError(f"{name} fires only when {flag} is on: call model.set_{flag}(True) first")
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


def _run(model, tokens, hooks: Sequence[tuple[str, Hook]]) -> None:
    with torch.no_grad(), temporary_hooks(model, hooks):
        model(tokens, return_type=None)


# ---------------------------------------------------------------------------------------------- per head


@dataclass(frozen=True)
class CacheEstimate:
    """Bytes a ``cache_heads`` request stores, per kind; known before anything runs."""

    per_kind: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.per_kind.values())

    def __str__(self) -> str:
        return f"{self.total / 2**20:,.1f} MiB (" + ", ".join(
            f"{k} {v / 2**20:,.1f}" for k, v in self.per_kind.items()) + ")"


def estimate_cache_bytes(model, batch: int, pos: int, *, layers: Sequence[int] | None = None,
                         heads: Sequence[int] | None = None, kinds: Sequence[str] = ("q", "k", "v", "pattern"),
                         dtype: torch.dtype | None = None) -> CacheEstimate:
    """How many bytes ``cache_heads`` will store for this request.

    Example:
        Full patterns of GPT-2 small at 1024 tokens: 12 layers x 12 heads x 1024² x 4 B = 576 MiB.

        >>> estimate_cache_bytes(gpt2, 1, 1024, kinds=("pattern",)).total
        603979776
    """
    kinds = _check_kinds(kinds)
    n = len(check_layers(model, layers)) * len(check_heads(model, heads)) * batch
    item = torch.empty((), dtype=dtype or model.cfg.dtype).element_size()
    cfg = model.cfg
    per_position = {"q": cfg.d_head, "k": cfg.d_head, "v": cfg.d_head, "z": cfg.d_head, "pattern": pos,
                    "result": cfg.d_model}
    return CacheEstimate({k: n * pos * per_position[k] * item for k in kinds})


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in HEAD_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown kinds {unknown}: choose from {HEAD_KINDS}")
    return kinds


@dataclass(frozen=True)
class HeadCache:
    """Per-head activations for the requested layers and heads, indexed by position in ``layers``/``heads``.

    Shapes: q, k, v, z ``[layer, head, batch, pos, d_head]``; pattern ``[layer, head, batch, query_pos,
    key_pos]``; result (the head's write to the residual stream, z @ W_O, no bias) ``[layer, head, batch, pos,
    d_model]``. Kinds that were not requested are None.
    """

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    q: Float[Tensor, "layer head batch pos d_head"] | None = None
    k: Float[Tensor, "layer head batch pos d_head"] | None = None
    v: Float[Tensor, "layer head batch pos d_head"] | None = None
    z: Float[Tensor, "layer head batch pos d_head"] | None = None
    pattern: Float[Tensor, "layer head batch query_pos key_pos"] | None = None
    result: Float[Tensor, "layer head batch pos d_model"] | None = None

    def __getitem__(self, kind: str) -> Tensor:
        value = getattr(self, kind, None) if kind in HEAD_KINDS else None
        if value is None:
            raise KeyError(f"{kind!r} was not cached; cached kinds: {self.kinds}")
        return value

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in HEAD_KINDS if getattr(self, k) is not None)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for f in fields(self) if isinstance(t := getattr(self, f.name), Tensor))

    def head(self, kind: str, layer: int, head: int) -> Tensor:
        """One head's activation, by its real layer and head number: ``[batch, ...]``."""
        if layer not in self.layers or head not in self.heads:
            raise KeyError(f"head {layer}.{head} was not cached (layers {self.layers}, heads {self.heads})")
        return self[kind][self.layers.index(layer), self.heads.index(head)]


def cache_heads(model, tokens: Int[Tensor, "batch pos"], *, layers: Sequence[int] | None = None,
                heads: Sequence[int] | None = None, kinds: Sequence[str] = ("q", "k", "v", "pattern"),
                max_bytes: int | None = None, on_budget: str = "raise") -> HeadCache:
    """Run ``model`` once and keep only the requested per-head activations.

    Each hook slices its activation down to the requested heads before storing it, so memory scales with
    the request (``estimate_cache_bytes``), not with the model.

    Args:
        model: HookedTransformer or TransformerBridge.
        tokens: ``[batch, pos]`` token ids.
        layers, heads: which ones (None = all). The same heads are taken in every listed layer.
        kinds: any of "q", "k", "v", "z", "pattern", "result".
        max_bytes: refuse (``on_budget="raise"``) or warn (``"warn"``) when the request would store more.

    Returns:
        A ``HeadCache``.
    """
    kinds = _check_kinds(kinds)
    layers, heads = check_layers(model, layers), check_heads(model, heads)
    tokens = check_tokens(model, tokens)
    if on_budget not in ("raise", "warn"):
        raise ValueError(f"on_budget must be 'raise' or 'warn', got {on_budget!r}")
    if max_bytes is not None:
        estimate = estimate_cache_bytes(model, *tokens.shape, layers=layers, heads=heads, kinds=kinds)
        if estimate.total > max_bytes:
            message = f"this request would cache {estimate}, over the budget of {max_bytes / 2**20:,.1f} MiB"
            if on_budget == "raise":
                raise CacheBudgetError(message + "; ask for fewer layers, heads, kinds or tokens")
            warnings.warn(message, ResourceWarning, stacklevel=2)

    head_index = torch.tensor(heads, device=tokens.device)
    store: dict[tuple[str, int], Tensor] = {}  # hooks fire in forward order; we stack in the caller's order
    hook_kinds = [k for k in HEAD_KINDS if k in kinds and k != "result"]
    if "result" in kinds and "z" not in hook_kinds:
        hook_kinds.append("z")

    def keep(kind: str, layer: int) -> Hook:
        def hook(act: Tensor, hook) -> None:
            if kind == "pattern":  # [batch, head, query_pos, key_pos]
                store[kind, layer] = act.index_select(1, head_index.to(act.device)).transpose(0, 1)
            else:  # [batch, pos, head, d_head]
                sliced = act.index_select(2, head_index.to(act.device))
                store[kind, layer] = einops.rearrange(sliced, "batch pos head d_head -> head batch pos d_head")
        return hook

    _run(model, tokens, [(f"blocks.{layer}.attn.hook_{kind}", keep(kind, layer))
                         for layer in layers for kind in hook_kinds])
    out = {kind: torch.stack([store[kind, layer] for layer in layers]) for kind in hook_kinds}
    if "result" in kinds:
        W_O = torch.stack([model.blocks[layer].attn.W_O.detach()[list(heads)] for layer in layers])
        out["result"] = einops.einsum(out["z"], W_O.to(out["z"].dtype),
                                      "layer head batch pos d_head, layer head d_head d_model "
                                      "-> layer head batch pos d_model")
        if "z" not in kinds:
            del out["z"]
    return HeadCache(layers, heads, **out)


# ---------------------------------------------------------------------------------------------- residual


@dataclass(frozen=True)
class ResidStack:
    """The residual stream at each layer: ``[layer, batch, pos, d_model]`` per requested kind."""

    resid_pre: Float[Tensor, "layer batch pos d_model"] | None = None
    resid_mid: Float[Tensor, "layer batch pos d_model"] | None = None
    resid_post: Float[Tensor, "layer batch pos d_model"] | None = None


def residual_stream(model, tokens: Int[Tensor, "batch pos"], kinds: Sequence[str] = RESID_KINDS) -> ResidStack:
    """``resid_pre``, ``resid_mid`` and ``resid_post`` of every layer, stacked over layers."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or any(k not in RESID_KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {RESID_KINDS}, got {kinds}")
    tokens = check_tokens(model, tokens)
    store: dict[str, list[Tensor]] = {k: [] for k in kinds}

    def keep(kind: str) -> Hook:
        def hook(act: Tensor, hook) -> None:
            store[kind].append(act.detach().clone())
        return hook

    _run(model, tokens, [(f"blocks.{layer}.hook_{kind}", keep(kind))
                         for layer in range(model.cfg.n_layers) for kind in kinds])
    return ResidStack(**{k: torch.stack(v) for k, v in store.items()})


@dataclass(frozen=True)
class ResidDecomposition:
    """The final residual stream split into what each part of the model wrote into it.

    ``components.sum(0)`` equals ``final`` up to float error.
    """

    labels: tuple[str, ...]  # "embed", "pos_embed", "L0 attn" (or "L0H3" + "L0 attn bias"), "L0 mlp", ...
    components: Float[Tensor, "component batch pos d_model"]
    final: Float[Tensor, "batch pos d_model"]  # resid_post of the last layer


def decompose_resid(model, tokens: Int[Tensor, "batch pos"], *, per_head: bool = False) -> ResidDecomposition:
    """Decompose the final residual stream into embedding, positional embedding, each attention layer (or each
    head plus the layer's output bias) and each MLP."""
    tokens = check_tokens(model, tokens)
    n = model.cfg.n_layers
    acts: dict[str, Tensor] = {}

    def keep(name: str) -> Hook:  # keyed by the name we asked for: a bridge alias may report another name
        def hook(act: Tensor, hook) -> None:
            acts[name] = act.detach().clone()
        return hook

    names = ["hook_embed", "hook_pos_embed", f"blocks.{n - 1}.hook_resid_post"]
    for layer in range(n):
        names += [f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.attn.hook_z" if per_head
                  else f"blocks.{layer}.hook_attn_out"]
    _run(model, tokens, [(name, keep(name)) for name in names])

    labels, parts = ["embed", "pos_embed"], [acts["hook_embed"], acts["hook_pos_embed"]]
    for layer in range(n):
        if per_head:
            attn = model.blocks[layer].attn
            z = acts[f"blocks.{layer}.attn.hook_z"]
            per = einops.einsum(z, attn.W_O.detach(), "batch pos head d_head, head d_head d_model -> head batch pos d_model")
            labels += [f"L{layer}H{h}" for h in range(model.cfg.n_heads)] + [f"L{layer} attn bias"]
            parts += list(per) + [attn.b_O.detach().expand_as(per[0])]
        else:
            labels.append(f"L{layer} attn")
            parts.append(acts[f"blocks.{layer}.hook_attn_out"])
        labels.append(f"L{layer} mlp")
        parts.append(acts[f"blocks.{layer}.hook_mlp_out"])
    parts = [p.expand_as(parts[0]) for p in parts]  # pos_embed may be [1, pos, d_model]
    return ResidDecomposition(tuple(labels), torch.stack(parts), acts[f"blocks.{n - 1}.hook_resid_post"])


# ---------------------------------------------------------------------------------------------- interventions


@contextlib.contextmanager
def ablate_heads(model, heads: Sequence[tuple[int, int]], *, mode: str = "zero",
                 reference: Int[Tensor, "batch pos"] | None = None) -> Iterator[None]:
    """Ablate attention heads inside the block: their z (the per-head output before W_O) is replaced.

    Args:
        heads: ``[(layer, head), ...]``.
        mode: ``"zero"``, or ``"mean"``: each head's z averaged over ``reference``'s batch and positions.
        reference: tokens for the mean, required for ``mode="mean"``.

    Example:
        >>> with ablate_heads(model, [(5, 1), (5, 5)]):
        ...     loss = model(tokens, return_type="loss")
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    if mode == "mean" and reference is None:
        raise ValueError("mode='mean' needs reference tokens to average over")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        check_layers(model, [layer])
        check_heads(model, [head])
        by_layer.setdefault(layer, []).append(head)
    means: dict[int, Tensor] = {}
    if mode == "mean":
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
    """
    source = source.detach()
    if source.ndim < 2:
        raise ValueError(f"source must be an activation [batch, pos, ...]; got shape {tuple(source.shape)}")
    n_pos = source.shape[1]
    if positions is not None:
        positions = [int(p) for p in positions]
        if not positions or not all(-n_pos <= p < n_pos for p in positions):
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
                             f"shape {tuple(act.shape)}")
        patched = act.clone()
        if heads is None:
            patched[:, :n_pos][:, pos] = source[:, pos].to(act.dtype)
        else:
            for head in heads:
                patched[:, :n_pos, head][:, pos] = source[:, pos, head].to(act.dtype)
        return patched

    with temporary_hooks(model, [(name, hook)]):
        yield
