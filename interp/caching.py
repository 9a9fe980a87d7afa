"""Cache exactly the activations you ask for: per-head q/k/v/z/pattern/result, the residual stream, and the
residual stream split into what each part of the model wrote.

Works on both backends: it uses only the hook names the two share, through ``interp.hooks.temporary_hooks``.

Example:
    >>> heads = cache_heads(model, tokens, layers=[0, 1], heads=[0, 1], kinds=("q", "pattern"))
    >>> heads.q.shape          # [layer, head, batch, pos, d_head]
    >>> heads                  # shapes, dtype and size; not the tensors
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp._repr import concise_repr
from interp.backends import Hook
from interp.errors import NameNotFoundError
from interp.hooks import run_with_hooks
from interp.inputs import check_flag, check_heads, check_layers, check_positive_int, check_tokens

__all__ = [
    "CacheBudgetError",
    "CacheEstimate",
    "HeadCache",
    "ResidDecomposition",
    "ResidStack",
    "cache_heads",
    "decompose_resid",
    "estimate_cache_bytes",
    "residual_stream",
]

HEAD_KINDS = ("q", "k", "v", "z", "pattern", "result")
RESID_KINDS = ("resid_pre", "resid_mid", "resid_post")


class CacheBudgetError(MemoryError):
    """A cache request would exceed the caller's byte budget."""


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

    Args:
        model: a loaded model, or the weightless skeleton ``interp.architecture(spec)`` (float32 unless
            ``dtype`` says otherwise): the estimate needs only the shape.

    Example:
        Full patterns of GPT-2 small at 1024 tokens: 12 layers x 12 heads x 1024² x 4 B = 576 MiB, with no
        weights:

        >>> estimate_cache_bytes(interp.architecture("gpt2"), 1, 1024, kinds=("pattern",)).total
        603979776
    """
    kinds = _check_kinds(kinds)
    model = model if hasattr(model, "cfg") else _Shape.of_skeleton(model)
    batch, pos = check_positive_int(batch, "batch"), check_positive_int(pos, "pos", high=model.cfg.n_ctx)
    n = len(check_layers(model, layers)) * len(check_heads(model, heads)) * batch
    item = torch.empty((), dtype=dtype or model.cfg.dtype).element_size()
    cfg = model.cfg
    per_position = {"q": cfg.d_head, "k": cfg.d_head, "v": cfg.d_head, "z": cfg.d_head, "pattern": pos,
                    "result": cfg.d_model}
    return CacheEstimate({k: n * pos * per_position[k] * item for k in kinds})


@dataclass(frozen=True)
class _ShapeConfig:
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    n_ctx: int
    dtype: torch.dtype


@dataclass(frozen=True)
class _Shape:
    """The part of a TransformerLens model an estimate reads, from a Hugging Face skeleton's config."""

    cfg: _ShapeConfig
    interp_info: None = None

    @classmethod
    def of_skeleton(cls, skeleton) -> _Shape:
        config = skeleton.config
        return cls(_ShapeConfig(config.n_layer, config.n_head, config.n_embd, config.n_embd // config.n_head,
                                config.n_positions, torch.float32))


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in HEAD_KINDS]
    if unknown or not kinds:
        raise ValueError(f"{f'unknown kinds {unknown}' if unknown else 'kinds is empty'}: choose from {HEAD_KINDS}")
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
            raise NameNotFoundError(f"{kind!r} was not cached; cached kinds: {self.kinds}")
        return value

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in HEAD_KINDS if getattr(self, k) is not None)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for f in fields(self) if isinstance(t := getattr(self, f.name), Tensor))

    def __repr__(self) -> str:
        """Shapes, dtype and size, not the tensors (which would flood IPython)."""
        kinds = ", ".join(f"{k}: {tuple(self[k].shape)}" for k in self.kinds)
        dtype = self[self.kinds[0]].dtype if self.kinds else None
        return (f"HeadCache(layers={self.layers}, heads={self.heads}, {kinds}, dtype={dtype}, "
                f"{self.nbytes / 2**20:,.2f} MiB)")

    def head(self, kind: str, layer: int, head: int) -> Tensor:
        """One head's activation, by its real layer and head number: ``[batch, ...]``."""
        if layer not in self.layers or head not in self.heads:
            raise NameNotFoundError(f"head {layer}.{head} was not cached (layers {self.layers}, heads {self.heads})")
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

    run_with_hooks(model, tokens, [(f"blocks.{layer}.attn.hook_{kind}", keep(kind, layer))
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


@dataclass(frozen=True)
class ResidStack:
    """The residual stream at each layer: ``[layer, batch, pos, d_model]`` per requested kind."""

    resid_pre: Float[Tensor, "layer batch pos d_model"] | None = None
    resid_mid: Float[Tensor, "layer batch pos d_model"] | None = None
    resid_post: Float[Tensor, "layer batch pos d_model"] | None = None

    __repr__ = concise_repr


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

    run_with_hooks(model, tokens, [(f"blocks.{layer}.hook_{kind}", keep(kind))
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

    __repr__ = concise_repr


def decompose_resid(model, tokens: Int[Tensor, "batch pos"], *, per_head: bool = False) -> ResidDecomposition:
    """Decompose the final residual stream into embedding, positional embedding, each attention layer (or each
    head plus the layer's output bias) and each MLP."""
    tokens = check_tokens(model, tokens)
    check_flag(per_head, "per_head")
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
    run_with_hooks(model, tokens, [(name, keep(name)) for name in names])

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
