"""What is inside GPT-2, and how many parameters each part holds, computed from a model object.

Every number here comes from a Hugging Face ``GPT2LMHeadModel``: a real checkpoint, or a weightless skeleton
on the ``meta`` device built from a config alone, so GPT-2 small's breakdown is exact with no download. A loaded
TransformerLens model is counted as the GPT-2 it holds, from its config (``architecture(model)``): its own
parameters are laid out per head, with the unembedding untied and the processing's biases, so its
``named_parameters()`` is not GPT-2's count (and the bridge's also holds the wrapped Hugging Face model's).

Example:
    >>> skeleton = architecture("gpt2")            # GPT-2 small from its config, no weights
    >>> parameter_listing(skeleton).tied_total
    124439808
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from interp._repr import concise_repr
from interp.inputs import check_index, check_layers

__all__ = [
    "ComponentRow",
    "ComponentTable",
    "ParameterListing",
    "SplitAttention",
    "architecture",
    "component_table",
    "config_summary",
    "parameter_listing",
    "split_attention",
]


def architecture(spec="gpt2"):
    """A weightless ``GPT2LMHeadModel`` skeleton on the ``meta`` device, for counting and inspection.

    Args:
        spec: anything ``interp.specs.resolve`` takes (a GPT-2 family name, from its published config alone;
            ``"bundled"``; a checkpoint directory), or a loaded TransformerLens model (its config is used).

    The skeleton's ``interp_spec`` and ``interp_label`` name the model for figures.

    Example:
        >>> parameter_listing(architecture("gpt2-medium")).tied_total
        354823168
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from interp.specs import resolve

    if hasattr(spec, "cfg"):  # a HookedTransformer or TransformerBridge
        cfg = spec.cfg
        config = GPT2Config(vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers,
                            n_head=cfg.n_heads, n_inner=cfg.d_mlp, activation_function=cfg.act_fn)
        info = getattr(spec, "interp_info", None)
        name, label = (info.spec, info.label) if info is not None else ("a loaded model", "this model")
    else:
        resolved = resolve(spec)
        config, name, label = GPT2Config.from_dict(resolved.config()), resolved.spec, resolved.label
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    model.tie_weights()
    model.interp_spec, model.interp_label = name, label
    return model


def _is_transformer_lens(model) -> bool:
    return hasattr(model, "cfg") and hasattr(model, "W_Q")


def _gpt2(model, what: str):
    """``model`` if it is a ``GPT2LMHeadModel``; a TransformerLens model's skeleton (``architecture``)."""
    from transformers import GPT2LMHeadModel

    if isinstance(model, GPT2LMHeadModel):
        return model
    if _is_transformer_lens(model):
        return architecture(model)
    raise TypeError(f"{what} reads a GPT2LMHeadModel or a TransformerLens model, got {type(model).__name__} "
                    "(for a model name, pass interp.architecture(name))")


# ---------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class ComponentRow:
    component: str  # e.g. "attention QKV (c_attn)"
    category: str  # coarse group for figures: "token embedding", "MLP in", ...
    layer: int | None  # None for the embedding, final LN and unembedding
    hf_names: tuple[str, ...]
    tl_names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    count: int  # parameters this row adds to the (tied) total
    note: str = ""


@dataclass(frozen=True)
class ComponentTable:
    rows: tuple[ComponentRow, ...]

    @property
    def total(self) -> int:
        return sum(r.count for r in self.rows)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([
            {"component": r.component, "layer": r.layer, "hf_names": ", ".join(r.hf_names),
             "tl_names": ", ".join(r.tl_names), "shape": " + ".join("x".join(map(str, s)) for s in r.shapes),
             "count": r.count, "note": r.note}
            for r in self.rows
        ])

    def by_category(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.category] = out.get(r.category, 0) + r.count
        return out

    def __repr__(self) -> str:
        import pandas as pd

        with pd.option_context("display.max_rows", 200, "display.width", 200, "display.max_colwidth", 60):
            return self.to_frame().drop(columns=["hf_names"]).to_string(index=False)


# (component, category, HF suffixes, TL suffixes). A block's rows, in forward order.
_BLOCK_PARTS = (
    ("ln_1", "LayerNorms", ("ln_1.weight", "ln_1.bias"), ("ln1.w", "ln1.b")),
    ("attention QKV (c_attn)", "attention QKV", ("attn.c_attn.weight", "attn.c_attn.bias"),
     ("attn.W_Q/W_K/W_V", "attn.b_Q/b_K/b_V")),
    ("attention output (c_proj)", "attention output", ("attn.c_proj.weight", "attn.c_proj.bias"),
     ("attn.W_O", "attn.b_O")),
    ("ln_2", "LayerNorms", ("ln_2.weight", "ln_2.bias"), ("ln2.w", "ln2.b")),
    ("MLP in (c_fc)", "MLP in", ("mlp.c_fc.weight", "mlp.c_fc.bias"), ("mlp.W_in", "mlp.b_in")),
    ("MLP out (c_proj)", "MLP out", ("mlp.c_proj.weight", "mlp.c_proj.bias"), ("mlp.W_out", "mlp.b_out")),
)


def component_table(model) -> ComponentTable:
    """The GPT-2 pipeline, one row per component (and per layer), with HF and TL names, shapes and counts.

    Rows sum to the tied total. The unembedding row counts 0 when ``lm_head`` is tied to ``wte``.

    Args:
        model: a ``GPT2LMHeadModel`` (e.g. from ``architecture``), whose parameters are counted, or a
            TransformerLens model, counted as the GPT-2 it holds (``architecture(model)``).
    """
    model = _gpt2(model, "component_table")
    params = dict(model.named_parameters(remove_duplicate=False))

    def row(component, category, layer, hf, tl, note=""):
        shapes = tuple(tuple(params[n].shape) for n in hf)
        return ComponentRow(component, category, layer, hf, tl, shapes, sum(params[n].numel() for n in hf), note)

    rows = [
        row("token embedding (wte)", "token embedding", None, ("transformer.wte.weight",), ("embed.W_E",)),
        row("position embedding (wpe)", "position embedding", None, ("transformer.wpe.weight",),
            ("pos_embed.W_pos",)),
    ]
    for layer in range(model.config.n_layer):
        for component, category, hf, tl in _BLOCK_PARTS:
            rows.append(row(component, category, layer, tuple(f"transformer.h.{layer}.{n}" for n in hf),
                            tuple(f"blocks.{layer}.{n}" for n in tl)))
    rows.append(row("final LayerNorm (ln_f)", "LayerNorms", None, ("transformer.ln_f.weight", "transformer.ln_f.bias"),
                    ("ln_final.w", "ln_final.b")))
    unembed = row("unembedding (lm_head)", "unembedding", None, ("lm_head.weight",), ("unembed.W_U",))
    if model.lm_head.weight is model.transformer.wte.weight:
        unembed = ComponentRow(unembed.component, unembed.category, None, unembed.hf_names, unembed.tl_names,
                               unembed.shapes, 0, note=f"tied to wte: the same {unembed.count:,} parameters")
    rows.append(unembed)
    return ComponentTable(tuple(rows))


@dataclass(frozen=True)
class ParameterListing:
    """Every parameter (name, shape, count), like ``named_parameters()``, with both totals."""

    rows: tuple[tuple[str, tuple[int, ...], int], ...]  # (name, shape, count), lm_head included
    tied_total: int  # each tensor once: what the model really holds
    untied_total: int  # lm_head counted on its own, as named_parameters(remove_duplicate=False) does

    @property
    def why(self) -> str:
        shared = self.untied_total - self.tied_total
        return (f"The totals differ by {shared:,}: lm_head.weight is the same tensor as transformer.wte.weight "
                "(tied embeddings). named_parameters() yields it once; with remove_duplicate=False it "
                "is yielded twice and counted twice.")

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["name", "shape", "count"])


def parameter_listing(model) -> ParameterListing:
    """Name, shape and count of every parameter of a ``GPT2LMHeadModel``, and the tied and untied totals; a
    TransformerLens model is counted as the GPT-2 it holds (``architecture(model)``)."""
    model = _gpt2(model, "parameter_listing")
    rows = tuple((n, tuple(p.shape), p.numel()) for n, p in model.named_parameters(remove_duplicate=False))
    return ParameterListing(rows, sum(p.numel() for p in model.parameters()), sum(r[2] for r in rows))


def config_summary(model) -> dict:
    """The headline configuration, read from a TransformerLens model's ``cfg`` or a HF model's ``config``."""
    if hasattr(model, "cfg"):
        c = model.cfg
        return {"n_ctx": c.n_ctx, "d_model": c.d_model, "n_heads": c.n_heads, "n_layers": c.n_layers,
                "d_head": c.d_head, "d_mlp": c.d_mlp, "d_vocab": c.d_vocab, "act_fn": c.act_fn}
    c = model.config
    return {"n_ctx": c.n_positions, "d_model": c.n_embd, "n_heads": c.n_head, "n_layers": c.n_layer,
            "d_head": c.n_embd // c.n_head, "d_mlp": c.n_inner or 4 * c.n_embd, "d_vocab": c.vocab_size,
            "act_fn": c.activation_function}


# ---------------------------------------------------------------------------------------------- fused QKV


@dataclass(frozen=True)
class SplitAttention:
    """One block's attention weights per head, in TransformerLens's layout."""

    W_Q: Float[Tensor, "head d_model d_head"]
    W_K: Float[Tensor, "head d_model d_head"]
    W_V: Float[Tensor, "head d_model d_head"]
    b_Q: Float[Tensor, "head d_head"]
    b_K: Float[Tensor, "head d_head"]
    b_V: Float[Tensor, "head d_head"]
    W_O: Float[Tensor, "head d_head d_model"]
    b_O: Float[Tensor, " d_model"]

    __repr__ = concise_repr


_SPLIT_NAMES = tuple(field.name for field in dataclasses.fields(SplitAttention))


def split_attention(model, layer: int) -> SplitAttention:
    """Split block ``layer``'s fused ``c_attn`` (d_model x 3·d_model) into per-head W_Q, W_K, W_V, and its
    ``c_proj`` (d_model x d_model) into per-head W_O.

    GPT-2's Conv1D computes ``x @ W + b``, so ``c_attn.weight`` is [d_model, 3·d_model]: the columns are
    Q, then K, then V, and within each, head after head of d_head columns.

    These equal TransformerLens's ``W_Q/W_K/W_V/W_O`` only on an *unprocessed* load. ``load_model``'s default
    processing changes them without changing the function the model computes: folding LayerNorm multiplies
    ln_1's scale into W_Q/W_K/W_V (and its bias into b_Q/b_K/b_V); centring writing weights subtracts each
    output direction's mean from W_O (LayerNorm ignores the mean of the residual). The value bias stays in
    b_V: ``load_model`` never folds it into b_O.

    A TransformerLens model gives its own per-head weights, the ones it computes with (after that
    processing). The bridge also keeps the Hugging Face modules it wraps, but their fused ``c_attn`` is the
    checkpoint's, unprocessed, while its ``c_proj`` is processed: split, they would be neither.

    Args:
        model: a ``GPT2LMHeadModel``, with weights or a weightless skeleton (``architecture``) for shapes; or
            a TransformerLens model.
        layer: block index, 0..n_layer-1.

    Example:
        >>> split_attention(hf_gpt2_small, 0).W_Q.shape
        torch.Size([12, 768, 64])
    """
    if _is_transformer_lens(model):
        (layer,) = check_layers(model, [layer])
        return SplitAttention(*(getattr(model, name)[layer].detach() for name in _SPLIT_NAMES))
    model = _gpt2(model, "split_attention")
    layer = check_index(layer, "layer")
    n_layer, n_head = model.config.n_layer, model.config.n_head
    if not 0 <= layer < n_layer:
        raise ValueError(f"layer {layer} out of range: this model has layers 0..{n_layer - 1}")
    attn = model.transformer.h[layer].attn
    W = attn.c_attn.weight.detach()  # (d_model, 3*d_model)
    b = attn.c_attn.bias.detach()  # (3*d_model,)
    W_Q, W_K, W_V = einops.rearrange(W, "d_model (qkv head d_head) -> qkv head d_model d_head", qkv=3, head=n_head)
    b_Q, b_K, b_V = einops.rearrange(b, "(qkv head d_head) -> qkv head d_head", qkv=3, head=n_head)
    W_O = einops.rearrange(attn.c_proj.weight.detach(), "(head d_head) d_model -> head d_head d_model", head=n_head)
    return SplitAttention(W_Q, W_K, W_V, b_Q, b_K, b_V, W_O, attn.c_proj.bias.detach())
