"""Read the residual stream in vocabulary space: the logit lens, and direct logit attribution.

Both apply the final LayerNorm the way the model does. The logit lens normalises each layer's accumulated
residual with its own scale. Direct logit attribution uses the scale of the *final* residual (the one the
model actually divides by), so the parts add up exactly to the model's logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp._repr import concise_repr
from interp.backends import final_layer_norm, ln_affine, unembed
from interp.caching import decompose_resid, residual_stream
from interp.inputs import check_position, check_positive_int, check_tokens

__all__ = ["LogitAttribution", "LogitLens", "direct_logit_attribution", "logit_lens"]


@dataclass(frozen=True)
class LogitLens:
    """Top predictions read off the residual stream after each layer, at one position."""

    labels: tuple[str, ...]  # "embed", "after L0", ..., "after L{n-1}" (= the model's output)
    top_tokens: Int[Tensor, "layer k"]
    top_probs: Float[Tensor, "layer k"]
    top_strings: tuple[tuple[str, ...], ...]

    __repr__ = concise_repr

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"layer": self.labels,
                             "top tokens": [", ".join(f"{s!r} {p:.2f}" for s, p in zip(strs, probs.tolist()))
                                            for strs, probs in zip(self.top_strings, self.top_probs)]})


@torch.no_grad()
def logit_lens(model, tokens: Int[Tensor, "1 pos"], *, pos: int = -1, k: int = 5) -> LogitLens:
    """The top-``k`` next tokens predicted from the accumulated residual before layer 0 and after each layer.

    Args:
        tokens: ``[1, pos]``.
        pos: the position to read (default the last).
    """
    tokens = check_tokens(model, tokens)
    if tokens.shape[0] != 1:
        raise ValueError("logit_lens reads one prompt: tokens must have batch size 1")
    pos = check_position(tokens, pos)
    k = check_positive_int(k, "k", high=model.cfg.d_vocab)
    stack = residual_stream(model, tokens, kinds=("resid_pre", "resid_post"))
    resid = torch.cat([stack.resid_pre[:1], stack.resid_post])[:, 0, pos]  # [layer+1, d_model]
    logits = unembed(model, final_layer_norm(model, resid))
    probs = logits.softmax(-1).topk(k)
    labels = ("embed",) + tuple(f"after L{i}" for i in range(model.cfg.n_layers))
    strings = tuple(tuple(model.tokenizer.decode([t]) for t in row.tolist()) for row in probs.indices)
    return LogitLens(labels, probs.indices, probs.values, strings)


@dataclass(frozen=True)
class LogitAttribution:
    """Each component's direct contribution to one token's logit; ``contributions.sum() + constant == logit``."""

    labels: tuple[str, ...]
    contributions: Float[Tensor, " component"]
    constant: float  # unembedding bias (and final LN bias, if not folded): the part no component wrote
    logit: float  # the model's actual logit for the token

    __repr__ = concise_repr

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"component": self.labels, "contribution": self.contributions.tolist()})


@torch.no_grad()
def direct_logit_attribution(model, tokens: Int[Tensor, "1 pos"], token: int, *, pos: int = -1,
                             per_head: bool = True) -> LogitAttribution:
    """How much each head (or attention layer), each MLP and the embeddings add directly to ``token``'s logit.

    Each component's write is centred and divided by the final residual's LayerNorm scale (the model divides
    the whole residual by it), then projected onto the token's unembedding direction.
    """
    tokens = check_tokens(model, tokens)
    if tokens.shape[0] != 1:
        raise ValueError("direct_logit_attribution reads one prompt: tokens must have batch size 1")
    token = check_positive_int(token, "token", low=0, high=model.cfg.d_vocab - 1)
    pos = check_position(tokens, pos)
    parts = decompose_resid(model, tokens, per_head=per_head)
    final = parts.final[0, pos]
    scale = ((final - final.mean()).pow(2).mean() + model.cfg.eps).sqrt()
    components = parts.components[:, 0, pos]  # [component, d_model]
    centred = components - components.mean(-1, keepdim=True)
    w, b = ln_affine(model.ln_final)
    direction = model.W_U[:, token] * (1 if w is None else w)  # [d_model]
    contributions = einops.einsum(centred / scale, direction, "component d_model, d_model -> component")
    constant = float(model.b_U[token] + (0 if b is None else b @ model.W_U[:, token]))
    logit = float(model(tokens)[0, pos, token])
    return LogitAttribution(parts.labels, contributions, constant, logit)
