"""Architecture and parameter inspection, checked against known GPT-2 facts and TransformerLens's weights."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import GPT2LMHeadModel

from experiments import parameter_breakdown
from interp.architecture import (
    architecture,
    component_table,
    config_summary,
    parameter_listing,
    split_attention,
)
from interp.backends import DEFAULT_BACKEND

GPT2_SMALL_TIED = 124_439_808  # published GPT-2 small size: the code must reproduce it, not contain it
GPT2_SMALL_UNTIED = 163_037_184


def _hf(checkpoint):
    return GPT2LMHeadModel.from_pretrained(checkpoint, local_files_only=True).eval()


def test_gpt2_small_totals_on_full_shape_checkpoint(full_checkpoint):
    listing = parameter_listing(_hf(full_checkpoint))
    assert listing.tied_total == GPT2_SMALL_TIED
    assert listing.untied_total == GPT2_SMALL_UNTIED
    assert f"{GPT2_SMALL_UNTIED - GPT2_SMALL_TIED:,}" in listing.why


def test_gpt2_small_counts_need_no_weights():
    skeleton = architecture("gpt2")
    assert next(skeleton.parameters()).device.type == "meta"
    listing = parameter_listing(skeleton)
    assert (listing.tied_total, listing.untied_total) == (GPT2_SMALL_TIED, GPT2_SMALL_UNTIED)
    assert config_summary(skeleton) == {
        "n_ctx": 1024, "d_model": 768, "n_heads": 12, "n_layers": 12, "d_head": 64, "d_mlp": 3072,
        "d_vocab": 50257, "act_fn": "gelu_new",
    }


@pytest.mark.parametrize("which", ["tiny", "full"])
def test_component_rows_sum_to_the_total(which, tiny_checkpoint, full_checkpoint):
    model = _hf(tiny_checkpoint if which == "tiny" else full_checkpoint)
    table = component_table(model)
    assert table.total == parameter_listing(model).tied_total == sum(p.numel() for p in model.parameters())
    unembed = table.rows[-1]
    assert unembed.hf_names == ("lm_head.weight",) and unembed.count == 0 and "tied" in unembed.note
    qkv = next(r for r in table.rows if r.layer == 0 and "QKV" in r.component)
    d = model.config.n_embd
    assert qkv.shapes == ((d, 3 * d), (3 * d,))
    assert qkv.hf_names[0] == "transformer.h.0.attn.c_attn.weight"
    assert qkv.tl_names[0] == "blocks.0.attn.W_Q/W_K/W_V"


def test_config_summary_reads_the_tl_model(tiny_model, tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    summary = config_summary(tiny_model)
    assert summary["n_layers"] == config["n_layer"] and summary["d_model"] == config["n_embd"]
    assert summary["d_head"] * summary["n_heads"] == config["n_embd"]
    assert summary["n_ctx"] == config["n_positions"] and summary["d_vocab"] == config["vocab_size"]


@pytest.mark.parametrize("layer", [0, 1])
def test_split_attention_equals_transformer_lens_unprocessed(tiny_checkpoint, tiny_raw_models, backend, layer):
    split = split_attention(_hf(tiny_checkpoint), layer)
    attn = tiny_raw_models[backend].blocks[layer].attn
    for name in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O"):
        torch.testing.assert_close(getattr(split, name), getattr(attn, name).detach(), rtol=0, atol=0, msg=name)


def test_a_transformer_lens_model_is_counted_as_the_gpt2_it_holds(tiny_checkpoint, tiny_model):
    """A loaded model's own parameters are not GPT-2's count (per-head layout, an untied unembedding, and on the
    bridge the wrapped Hugging Face modules too): it is counted from its config, as the checkpoint is."""
    hf = _hf(tiny_checkpoint)
    listing, expected = parameter_listing(tiny_model), parameter_listing(hf)
    assert (listing.tied_total, listing.untied_total) == (expected.tied_total, expected.untied_total)
    assert [name for name, _, _ in listing.rows] == [name for name, _, _ in expected.rows]
    assert sum(p.numel() for p in tiny_model.parameters()) != expected.tied_total  # what counting it would give
    assert component_table(tiny_model).to_frame().equals(component_table(hf).to_frame())
    for bad in ("gpt2", {"n_layer": 2}):
        with pytest.raises(TypeError, match="reads a GPT2LMHeadModel or a TransformerLens model"):
            parameter_listing(bad)


def test_split_attention_of_a_transformer_lens_model_is_what_it_computes(tiny_model):
    """On the processed model (LayerNorm folded, writing weights centred), the split weights give its own q, k,
    v from ln1's output and its attention output from z, as TransformerLens caches them."""
    tokens = tiny_model.to_tokens("The split weights are the ones the model computes with")
    _, cache = tiny_model.run_with_cache(tokens)
    for layer in range(tiny_model.cfg.n_layers):
        split = split_attention(tiny_model, layer)
        x = cache[f"blocks.{layer}.ln1.hook_normalized"]
        for qkv in "qkv":
            W, b = getattr(split, f"W_{qkv.upper()}"), getattr(split, f"b_{qkv.upper()}")
            torch.testing.assert_close(torch.einsum("bpd,hde->bphe", x, W) + b,
                                       cache[f"blocks.{layer}.attn.hook_{qkv}"], rtol=1e-5, atol=1e-5)
        out = torch.einsum("bphe,hed->bpd", cache[f"blocks.{layer}.attn.hook_z"], split.W_O) + split.b_O
        torch.testing.assert_close(out, cache[f"blocks.{layer}.hook_attn_out"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        split_attention(tiny_model, 2)
    with pytest.raises(TypeError, match="layer must be an integer"):
        split_attention(tiny_model, 0.5)


def test_split_attention_shapes_on_gpt2_small_shape(full_checkpoint):
    split = split_attention(_hf(full_checkpoint), 11)
    assert split.W_Q.shape == split.W_K.shape == split.W_V.shape == (12, 768, 64)
    assert split.b_Q.shape == (12, 64)
    assert split.W_O.shape == (12, 64, 768)


def test_split_attention_rejects_bad_layer(tiny_checkpoint):
    with pytest.raises(ValueError, match="layer 2 out of range: this model has layers 0..1"):
        split_attention(_hf(tiny_checkpoint), 2)
    with pytest.raises(TypeError, match="layer must be an integer"):
        split_attention(_hf(tiny_checkpoint), 1.0)


def test_processed_weights_differ_but_compute_the_same(tiny_checkpoint, tiny_models, tiny_raw_models):
    """Folding LayerNorm changes W_Q; the log-probs stay the same."""
    processed, raw = tiny_models[DEFAULT_BACKEND], tiny_raw_models[DEFAULT_BACKEND]
    assert not torch.allclose(processed.blocks[0].attn.W_Q, raw.blocks[0].attn.W_Q)
    tokens = raw.to_tokens("The quick brown fox")
    with torch.no_grad():
        torch.testing.assert_close(processed(tokens).log_softmax(-1), raw(tokens).log_softmax(-1),
                                   atol=1e-4, rtol=1e-4)


def test_experiment_gives_a_checkpoints_own_numbers(tiny_checkpoint, tmp_path):
    assert parameter_breakdown.main(["--model", str(tiny_checkpoint), "--out", str(tmp_path), "--no-images"]) == 0
    data = json.loads((tmp_path / "parameter_breakdown.json").read_text())
    model = _hf(tiny_checkpoint)
    assert data["tied_total"] == sum(p.numel() for p in model.parameters())
    assert data["config"]["n_layers"] == 2
    html = (tmp_path / "parameter_breakdown.html").read_text()
    assert re.search(r'<script[^>]*src="plotly.min.js"', html) and "cdn.plot.ly" not in html
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["figures"]["parameter_breakdown"]["model"]["weights"] == "architecture only"


def test_experiment_rejects_a_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="no config.json"):
        parameter_breakdown.main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path)])
