"""What interp needs from a model, for both TransformerLens backends, in one place.

- ``"hooked"``: ``HookedTransformer`` (deprecated in TransformerLens 3.x, removed in 4.0).
- ``"bridge"``: ``TransformerBridge`` with ``enable_compatibility_mode()``, its successor.

Both give the same hook names (``blocks.{layer}.attn.hook_z``, ``blocks.{layer}.hook_resid_post``, ...), the
same ``model.hooks(...)`` context manager and the same ``cfg``. They differ in how their LayerNorms hold
their parameters; this module hides that. A backend provides: the hook names above, the final LayerNorm
(``final_layer_norm``), the unembedding (``unembed``) and the weights the fast generation path reads
(``gpt2_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = ["BACKENDS", "GPT2Weights", "check_backend", "final_layer_norm", "gpt2_weights", "layer_norm",
           "ln_affine", "unembed"]

BACKENDS = ("hooked", "bridge")
Affine = tuple[Tensor | None, Tensor | None]


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


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

