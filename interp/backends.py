"""What interp needs from a model, for both TransformerLens backends and both majors, in one place.

- ``"bridge"``: ``TransformerBridge`` with ``enable_compatibility_mode()``. The only model class of
  TransformerLens 4.x, and on 3.9 the successor of HookedTransformer. The default on both majors, because
  ``pip install transformer-lens`` gives 4.x.
- ``"hooked"``: ``HookedTransformer``: TransformerLens 3.x only (deprecated in 3.x, removed in 4.0).

This is the one module that knows which TransformerLens major is installed (``TL_MAJOR``) and how the two
backends differ. Both give the same hook names (``blocks.{layer}.attn.hook_z``, ``blocks.{layer}.hook_resid_post``,
...), the same ``cfg`` and the same numerics; they differ in how their LayerNorms hold their parameters, and
in what writing to ``blocks.{layer}.hook_resid_mid`` does (see ``hook_attachments``). A backend provides: the
hook names above, the final LayerNorm (``final_layer_norm``), the unembedding (``unembed``) and the weights the
fast generation path reads (``gpt2_weights``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from interp._repr import concise_repr
from interp.errors import BackendUnavailableError

__all__ = ["AVAILABLE_BACKENDS", "BACKENDS", "DEFAULT_BACKEND", "TL_MAJOR", "TL_VERSION", "GPT2Weights",
           "check_backend", "final_layer_norm", "gpt2_weights", "hook_attachments", "is_bridge", "layer_norm",
           "ln_affine", "unembed"]

TL_VERSION = version("transformer-lens")
TL_MAJOR = int(TL_VERSION.split(".")[0])
BACKENDS = ("hooked", "bridge")  # every backend interp knows
AVAILABLE_BACKENDS = BACKENDS if TL_MAJOR < 4 else ("bridge",)  # those the installed TransformerLens has
DEFAULT_BACKEND = "bridge"
Affine = tuple[Tensor | None, Tensor | None]
Hook = Callable[[Tensor, object], Tensor | None]


def check_backend(backend: str) -> str:
    """Return ``backend`` if the installed TransformerLens has it; ``BackendUnavailableError`` otherwise."""
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend not in AVAILABLE_BACKENDS:
        raise BackendUnavailableError(
            f"backend {backend!r} (HookedTransformer) was removed in TransformerLens 4.0, and {TL_VERSION} is "
            "installed: use backend='bridge' (the default), or install 'transformer-lens<4' for HookedTransformer")
    return backend


def is_bridge(model) -> bool:
    """Whether ``model`` is a TransformerBridge (not a HookedTransformer)."""
    from transformer_lens.model_bridge import TransformerBridge

    return isinstance(model, TransformerBridge)


def hook_attachments(model, name: str, fn: Hook) -> list[tuple[str, Hook, bool]]:
    """The ``(hook name, function, prepend)`` triples to attach so that ``fn`` at ``name`` means on this
    backend what it means on HookedTransformer (and in the model's own maths).

    On the bridge, ``blocks.L.hook_resid_mid`` is the input of the second LayerNorm (``ln2.hook_in``): a write
    there reaches the MLP, but not the residual stream, which the wrapped Hugging Face block saved before its
    LayerNorm. So a write at ``resid_mid`` is attached there, and its difference from the activation it
    replaced is added to the block's output first, before any hook on ``hook_resid_post`` sees it. The
    residual stream then carries the written value, as on HookedTransformer. ``fn`` sees a copy of the
    activation, so an in-place edit counts as a write too. Every other name is attached as it is.
    """
    if not (name.startswith("blocks.") and name.endswith(".hook_resid_mid") and is_bridge(model)):
        return [(name, fn, False)]
    layer = name.split(".")[1]
    pending: dict[str, Tensor] = {}  # this forward's write, until the block's output takes it

    def write(act: Tensor, hook) -> Tensor:
        edited = act.clone()
        result = fn(edited, hook)
        new = edited if result is None else result
        pending["delta"] = new - act
        return new

    def carry(resid_post: Tensor, hook) -> Tensor:
        delta = pending.pop("delta", None)
        return resid_post if delta is None else resid_post + delta

    return [(name, write, False), (f"blocks.{layer}.hook_resid_post", carry, True)]


def ln_affine(ln) -> Affine:
    """A LayerNorm's weight and bias (HookedTransformer's ``w``/``b`` or the bridge's ``weight``/``bias``),
    or None where LN folding removed them."""
    w, b = getattr(ln, "w", None), getattr(ln, "b", None)
    if w is None:
        params = dict(ln.named_parameters())
        w = next((p for n, p in params.items() if n.endswith("weight")), None)
        b = next((p for n, p in params.items() if n.endswith("bias")), None)
    return (None if w is None else w.detach(), None if b is None else b.detach())


def layer_norm(x: Float[Tensor, "... d_model"], affine: Affine, eps: float) -> Float[Tensor, "... d_model"]:
    """GPT-2's LayerNorm: centre, divide by the root-mean-square, then the (optional) affine map."""
    w, b = affine
    centred = x - x.mean(-1, keepdim=True)
    scaled = centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return scaled if w is None else scaled * w + b


def final_layer_norm(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    return layer_norm(resid, ln_affine(model.ln_final), model.cfg.eps)


def unembed(model, normalised: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    return normalised @ model.W_U + model.b_U


@dataclass(frozen=True)
class BlockWeights:
    ln1: Affine
    W_qkv: Float[Tensor, "d_model three_d_model"]
    b_qkv: Float[Tensor, " three_d_model"]
    W_O: Float[Tensor, "d_model d_model"]
    b_O: Float[Tensor, " d_model"]
    ln2: Affine
    W_in: Float[Tensor, "d_model d_mlp"]
    b_in: Float[Tensor, " d_mlp"]
    W_out: Float[Tensor, "d_mlp d_model"]
    b_out: Float[Tensor, " d_model"]

    __repr__ = concise_repr


@dataclass(frozen=True)
class GPT2Weights:
    """A GPT-2's weights laid out once for a fast forward: fused QKV, contiguous matrices."""

    W_E: Float[Tensor, "d_vocab d_model"]
    W_pos: Float[Tensor, "n_ctx d_model"]
    blocks: tuple[BlockWeights, ...]
    ln_final: Affine
    W_U: Float[Tensor, "d_model d_vocab"]
    b_U: Float[Tensor, " d_vocab"]
    act: object  # the MLP activation

    __repr__ = concise_repr


_ACTIVATIONS = {"gelu_new": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu, "relu": F.relu}


def gpt2_weights(model) -> GPT2Weights:
    """Read a GPT-2-style model's weights (learned positions, LayerNorm) from either backend."""
    cfg = model.cfg
    if cfg.positional_embedding_type != "standard" or cfg.normalization_type not in ("LN", "LNPre"):
        raise ValueError("the fast path supports GPT-2-style models (learned positions, LayerNorm)")
    if cfg.act_fn not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {cfg.act_fn!r}")
    per_head = "head d_model d_head -> d_model (head d_head)"
    blocks = []
    for block in model.blocks:
        attn = block.attn
        W_qkv = torch.cat([einops.rearrange(w.detach(), per_head) for w in (attn.W_Q, attn.W_K, attn.W_V)], dim=1)
        b_qkv = torch.cat([b.detach().flatten() for b in (attn.b_Q, attn.b_K, attn.b_V)])
        blocks.append(BlockWeights(
            ln_affine(block.ln1), W_qkv.contiguous(), b_qkv,
            einops.rearrange(attn.W_O.detach(), "head d_head d_model -> (head d_head) d_model").contiguous(),
            attn.b_O.detach(), ln_affine(block.ln2),
            block.mlp.W_in.detach().contiguous(), block.mlp.b_in.detach(),
            block.mlp.W_out.detach().contiguous(), block.mlp.b_out.detach()))
    W_pos = model.pos_embed.W_pos if hasattr(model.pos_embed, "W_pos") else model.pos_embed.weight
    return GPT2Weights(model.W_E.detach(), W_pos.detach(), tuple(blocks), ln_affine(model.ln_final),
                       model.W_U.detach().contiguous(), model.b_U.detach(), _ACTIVATIONS[cfg.act_fn])

