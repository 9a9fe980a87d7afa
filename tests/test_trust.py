"""The trust issue, as tests: interventions reach generation, ablations equal Hugging Face with the head's z
zeroed, processing flags mean what they say, loading never invents weights, every bad input is a typed
error raised before any forward, and reduced precision is processed safely.

Oracles: Hugging Face's ``GPT2LMHeadModel`` on the same checkpoint, the raw safetensors, TransformerLens's
own ``logit_attrs`` and ``detect_head``, and the model's own forward in a hand-written loop.
"""

from __future__ import annotations

import json
import logging

import einops
import pytest
import torch
from conftest import TINY_SHAPE, both_backends
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

import interp
from interp.architecture import architecture
from interp.backends import AVAILABLE_BACKENDS, DEFAULT_BACKEND, ln_affine
from interp.caching import cache_heads
from interp.checkpoints import write_random_checkpoint
from interp.hooks import attached_hooks, temporary_hooks
from interp.interventions import ablate_heads, patch_activation
from interp.lens import direct_logit_attribution, logit_lens
from interp.loading import CorruptCheckpointError, NotGPT2CheckpointError, load_model, weights_sha256
from interp.sampling import generate, temperature_sweep

UNPROCESSED = dict(fold_ln=False, center_writing_weights=False, center_unembed=False)
PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "The quick brown fox jumps over the lazy dog and then the"]


@pytest.fixture(scope="module")
def hf(tiny_checkpoint):
    return GPT2LMHeadModel.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="module")
def bundled():
    return {b: load_model("bundled", backend=b, device="cpu") for b in AVAILABLE_BACKENDS}


# ------------------------------------------------------------------------------ generation under hooks


def _reference_generation(model, prompt: str, n: int, temperature: float, seed: int) -> list[int]:
    """The model's own forward on the whole sequence, one token at a time: the oracle."""
    seq = model.to_tokens(prompt)
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(seq)[0, -1].float()
            token = logits.argmax() if temperature == 0 else \
                torch.multinomial((logits / temperature).softmax(-1), 1, generator=gen)[0]
            out.append(int(token))
            seq = torch.cat([seq, token.view(1, 1)], dim=1)
    return out


def _interventions(model):
    """Each way a researcher attaches hooks, as a context-manager factory."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    other = model.to_tokens("import os\nimport sys\n\ndef main():\n    return 0")
    prompt_len = model.to_tokens(PROMPTS[0]).shape[1]
    source = interp.residual_stream(model, other[:, :prompt_len], kinds=("resid_pre",)).resid_pre[1]

    def shove(act, hook):
        return -act  # LayerNorm undoes a shift or a scale, not a sign

    return {
        "ablate_heads": lambda: ablate_heads(model, [(layer, head) for layer in range(n_layers)
                                                     for head in range(n_heads)]),
        "patch_activation": lambda: patch_activation(model, "blocks.1.hook_resid_pre", source),
        "temporary_hooks": lambda: temporary_hooks(model, [("blocks.0.hook_resid_post", shove)]),
        "model.hooks": lambda: model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", shove)]),
    }


@pytest.mark.parametrize("which", ["ablate_heads", "patch_activation", "temporary_hooks", "model.hooks"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_honours_every_intervention(bundled, backend, which, temperature):
    model = bundled[backend]
    plain = generate(model, PROMPTS[0], max_new_tokens=12, temperature=temperature, seed=5).tokens[0].tolist()
    with _interventions(model)[which]():
        assert attached_hooks(model)
        got = generate(model, PROMPTS[0], max_new_tokens=12, temperature=temperature, seed=5).tokens[0].tolist()
        expected = _reference_generation(model, PROMPTS[0], 12, temperature, seed=5)
    assert attached_hooks(model) == []
    assert got == expected
    assert got != plain, "the intervention should change the text"


def test_a_plain_torch_hook_also_reaches_generation(bundled):
    model = bundled[DEFAULT_BACKEND]
    plain = generate(model, PROMPTS[1], max_new_tokens=10, temperature=0).texts
    handle = model.blocks[0].register_forward_hook(lambda module, args, out: -out)  # LayerNorm keeps signs
    try:
        hooked = generate(model, PROMPTS[1], max_new_tokens=10, temperature=0).texts
    finally:
        handle.remove()
    assert hooked != plain


def test_hooks_see_every_position_while_generating(bundled, backend):
    model = bundled[backend]
    seen = []
    prompt_len = model.to_tokens(PROMPTS[0]).shape[1]
    with temporary_hooks(model, [("blocks.0.hook_resid_post", lambda act, hook: seen.append(act.shape[1]))]):
        generate(model, PROMPTS[0], max_new_tokens=4, temperature=0)
    assert seen == [prompt_len, prompt_len + 1, prompt_len + 2, prompt_len + 3]


# ------------------------------------------------------------------------------ ablation means what it says


def _hf_logprobs_with_heads(hf, tokens, heads, replacement=None):
    """HF's log-probs with the named heads' z (the input of c_proj, per head) zeroed or replaced."""
    d_head = hf.config.n_embd // hf.config.n_head
    handles = []
    for layer, head in heads:
        def pre(module, args, head=head, layer=layer):
            z = args[0].clone()
            value = 0.0 if replacement is None else replacement[layer, head]
            z[..., head * d_head:(head + 1) * d_head] = value
            return (z,)
        handles.append(hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            return hf(tokens).logits.log_softmax(-1)
    finally:
        for h in handles:
            h.remove()


def _hf_mean_z(hf, reference, heads):
    d_head = hf.config.n_embd // hf.config.n_head
    means = {}
    handles = [hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(
        lambda module, args, layer=layer, head=head: means.__setitem__(
            (layer, head), args[0][..., head * d_head:(head + 1) * d_head].mean(dim=(0, 1))))
        for layer, head in heads]
    with torch.no_grad():
        hf(reference)
    for h in handles:
        h.remove()
    return means


@pytest.mark.parametrize("processed", [True, False])
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_equals_huggingface_with_z_replaced(tiny_checkpoint, hf, backend, processed, mode):
    model = load_model(tiny_checkpoint, backend=backend, device="cpu", **({} if processed else UNPROCESSED))
    tokens = model.to_tokens(PROMPTS)
    reference = model.to_tokens(["A different text to average over, of another length.", "Short one."])
    heads = [(0, 1), (1, 3)]
    replacement = _hf_mean_z(hf, reference, heads) if mode == "mean" else None
    expected = _hf_logprobs_with_heads(hf, tokens, heads, replacement)
    with torch.no_grad(), ablate_heads(model, heads, mode=mode, reference=reference if mode == "mean" else None):
        got = model(tokens).log_softmax(-1)
    intact = _hf_logprobs_with_heads(hf, tokens, [])
    assert (expected - intact).abs().max() > 1e-2, "the fixture must make these heads matter"
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


# ------------------------------------------------------------------------------ processing flags


def test_fixture_has_nonzero_biases_everywhere(tiny_checkpoint):
    state = load_file(tiny_checkpoint / "model.safetensors")
    for name, tensor in state.items():
        if name.endswith(".bias") and ".attn.bias" not in name:
            assert tensor.abs().min() > 0, name
        if ".ln_" in name and name.endswith(".weight"):
            assert not torch.allclose(tensor, torch.ones_like(tensor)), name


def test_unprocessed_load_equals_the_checkpoint_exactly(tiny_checkpoint, tiny_raw_models, backend):
    """Every weight, value biases included, read straight from the safetensors file."""
    model = tiny_raw_models[backend]
    state = {k.removeprefix("transformer."): v for k, v in load_file(tiny_checkpoint / "model.safetensors").items()}
    n_heads = TINY_SHAPE["n_head"]
    for layer, block in enumerate(model.blocks):
        w_q, w_k, w_v = state[f"h.{layer}.attn.c_attn.weight"].chunk(3, dim=1)
        b_q, b_k, b_v = state[f"h.{layer}.attn.c_attn.bias"].chunk(3)
        for ours, theirs in ((block.attn.W_Q, w_q), (block.attn.W_K, w_k), (block.attn.W_V, w_v)):
            torch.testing.assert_close(ours.detach(), einops.rearrange(
                theirs, "d_model (head d_head) -> head d_model d_head", head=n_heads), rtol=0, atol=0)
        for ours, theirs in ((block.attn.b_Q, b_q), (block.attn.b_K, b_k), (block.attn.b_V, b_v)):
            torch.testing.assert_close(ours.detach(), einops.rearrange(
                theirs, "(head d_head) -> head d_head", head=n_heads), rtol=0, atol=0)
        torch.testing.assert_close(block.attn.W_O.detach(), einops.rearrange(
            state[f"h.{layer}.attn.c_proj.weight"], "(head d_head) d_model -> head d_head d_model", head=n_heads),
            rtol=0, atol=0)
        torch.testing.assert_close(block.attn.b_O.detach(), state[f"h.{layer}.attn.c_proj.bias"], rtol=0, atol=0)
        torch.testing.assert_close(block.mlp.W_in.detach(), state[f"h.{layer}.mlp.c_fc.weight"], rtol=0, atol=0)
        torch.testing.assert_close(block.mlp.b_in.detach(), state[f"h.{layer}.mlp.c_fc.bias"], rtol=0, atol=0)
        torch.testing.assert_close(block.mlp.W_out.detach(), state[f"h.{layer}.mlp.c_proj.weight"], rtol=0, atol=0)
        torch.testing.assert_close(block.mlp.b_out.detach(), state[f"h.{layer}.mlp.c_proj.bias"], rtol=0, atol=0)
        for ln, name in ((block.ln1, "ln_1"), (block.ln2, "ln_2")):
            w, b = ln_affine(ln)
            torch.testing.assert_close(w, state[f"h.{layer}.{name}.weight"], rtol=0, atol=0)
            torch.testing.assert_close(b, state[f"h.{layer}.{name}.bias"], rtol=0, atol=0)
    torch.testing.assert_close(model.W_E.detach(), state["wte.weight"], rtol=0, atol=0)


def test_value_biases_stay_in_the_heads_when_processed(tiny_models, tiny_raw_models, backend):
    """LN folding moves ln_1's bias into b_V (b_V + ln1.b @ W_V); the value biases are not folded into b_O."""
    raw, processed = tiny_raw_models[backend], tiny_models[backend]
    for layer in range(raw.cfg.n_layers):
        ln_b = ln_affine(raw.blocks[layer].ln1)[1]
        expected = raw.blocks[layer].attn.b_V.detach() + einops.einsum(
            ln_b, raw.blocks[layer].attn.W_V.detach(), "d_model, head d_model d_head -> head d_head")
        torch.testing.assert_close(processed.blocks[layer].attn.b_V.detach(), expected, rtol=1e-5, atol=1e-5)


@both_backends
def test_both_backends_attribute_the_same_on_the_same_checkpoint(tiny_models, tiny_raw_models):
    for models in (tiny_models, tiny_raw_models):
        tokens = models[DEFAULT_BACKEND].to_tokens(PROMPTS[:1])
        dla = {b: direct_logit_attribution(m, tokens, 42).contributions for b, m in models.items()}
        torch.testing.assert_close(dla["hooked"], dla["bridge"], rtol=1e-4, atol=1e-5)


def test_direct_logit_attribution_equals_transformer_lens_logit_attrs(tiny_models):
    model = tiny_models[DEFAULT_BACKEND]
    tokens = model.to_tokens(PROMPTS[:1])
    token = 42
    ours = direct_logit_attribution(model, tokens, token, per_head=True)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    heads, labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    theirs = cache.logit_attrs(heads, tokens=torch.tensor([token]), pos_slice=-1)[:, 0]  # [head]
    ours_by_label = dict(zip(ours.labels, ours.contributions.tolist()))
    for label, value in zip(labels, theirs.tolist()):
        assert ours_by_label[label] == pytest.approx(value, abs=5e-6), label


@pytest.mark.parametrize("ours, theirs, rows", [("previous_token", "previous_token_head", lambda n: 2 * n),
                                                 ("induction", "induction_head", lambda n: n),
                                                 ("duplicate_token", "duplicate_token_head", lambda n: n)])
def test_detectors_agree_with_transformer_lens_detect_head(tiny_models, ours, theirs, rows):
    """TransformerLens's "mul" score is the attention on the target cells over all 2n+1 query rows; ours is
    the mean over the rows that have a target, so the two differ by that count."""
    from transformer_lens.head_detector import detect_head

    model = tiny_models[DEFAULT_BACKEND]
    words = " cat dog sun tree house river stone bird"
    tokens = model.to_tokens(words * 2)
    n = len(words.split())
    assert tokens.shape[1] == 2 * n + 1, "each word must be one token"
    scores = interp.heads.scores_from_pattern(cache_heads(model, tokens, kinds=("pattern",)).pattern, tokens)
    tl = detect_head(model, words * 2, theirs, exclude_bos=False, exclude_current_token=False, error_measure="mul")
    torch.testing.assert_close(scores[ours] * rows(n) / (2 * n + 1), tl.to(torch.float32),
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ loading never invents weights


def _damaged(tiny_checkpoint, tmp_path, edit) -> str:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    state = load_file(tiny_checkpoint / "model.safetensors")
    save_file(edit(dict(state)), bad / "model.safetensors", metadata={"format": "pt"})
    return bad


def _drop(name):
    return lambda state: {k: v for k, v in state.items() if k != name}


@pytest.mark.parametrize("edit, named", [
    (_drop("transformer.h.1.attn.c_attn.weight"), "h.1.attn.c_attn.weight"),
    (lambda s: {"something.else": torch.zeros(3)}, "something.else"),
    (lambda s: {**s, "transformer.h.0.mlp.c_fc.bias": torch.zeros(7)}, "h.0.mlp.c_fc.bias"),
    (lambda s: {**s, "transformer.extra.weight": torch.zeros(2)}, "extra.weight"),
    (lambda s: {**s, "transformer.h.0.ln_1.weight": torch.full_like(s["transformer.h.0.ln_1.weight"], float("nan"))},
     "h.0.ln_1.weight"),
    (lambda s: {**s, "transformer.wpe.weight": s["transformer.wpe.weight"].index_fill(0, torch.tensor([3]),
                                                                                    float("inf"))},
     "wpe.weight"),
], ids=["missing", "unrelated-only", "mis-shaped", "unexpected", "nan", "inf"])
def test_incomplete_or_non_finite_checkpoint_is_refused(tiny_checkpoint, tmp_path, backend, edit, named):
    bad = _damaged(tiny_checkpoint, tmp_path, edit)
    with pytest.raises(CorruptCheckpointError, match=named.replace(".", r"\.")) as err:
        load_model(bad, backend=backend, device="cpu")
    assert "\n" not in str(err.value)


def test_weights_hash_is_of_the_weights_in_use(tiny_checkpoint, tmp_path):
    first, second = (load_model(tiny_checkpoint, device="cpu") for _ in range(2))
    assert interp.model_info(first).weights_sha256 == interp.model_info(second).weights_sha256 == \
        weights_sha256(first)
    raw = load_model(tiny_checkpoint, device="cpu", **UNPROCESSED)
    assert interp.model_info(raw).weights_sha256 != interp.model_info(first).weights_sha256
    other = write_random_checkpoint(tmp_path / "other", seed=9, **TINY_SHAPE)
    assert interp.model_info(load_model(other, device="cpu")).weights_sha256 != \
        interp.model_info(first).weights_sha256


# ------------------------------------------------------------------------------ bad input: typed, one line, early


class _NoForward:
    """Fails the test if the model's forward runs: errors must come first."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        def refuse(*args, **kwargs):
            raise AssertionError("a forward ran before the input was checked")
        self.handle = self.model.blocks[0].register_forward_pre_hook(refuse)

    def __exit__(self, *exc):
        self.handle.remove()


def _too_long(model):
    return "word " * (model.cfg.n_ctx + 5)


BAD_INPUTS = {
    "sweep prompt past n_ctx": (lambda m: temperature_sweep(m, _too_long(m), [1.0]), "tokens"),
    "generate prompt past n_ctx": (lambda m: generate(m, _too_long(m), max_new_tokens=2), "shorten the prompt"),
    "negative token id": (lambda m: cache_heads(m, torch.tensor([[1, -3, 5]])), "token id -3"),
    "token id >= d_vocab": (lambda m: cache_heads(m, torch.tensor([[1, 50257]])), "token id 50257"),
    "empty batch": (lambda m: interp.residual_stream(m, torch.zeros(1, 0, dtype=torch.long)), "empty"),
    "logit_lens pos past the prompt": (lambda m: logit_lens(m, m.to_tokens("one two"), pos=9), "pos 9"),
    "dla pos past the prompt": (lambda m: direct_logit_attribution(m, m.to_tokens("one two"), 5, pos=-9), "pos -9"),
    "temperature 1e-39": (lambda m: generate(m, "hi", temperature=1e-39), "temperature"),
    "temperature as a string": (lambda m: temperature_sweep(m, "hi", ["1.0"]), "must be a number"),
    "patch positions past the source": (
        lambda m: patch_activation(m, "blocks.0.hook_resid_pre", torch.zeros(1, 3, m.cfg.d_model),
                                   positions=[5]).__enter__(), "positions"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_typed_one_line_error_before_any_forward(tiny_model, case):
    call, message = BAD_INPUTS[case]
    with _NoForward(tiny_model), pytest.raises(ValueError, match=message) as err:
        call(tiny_model)
    assert "\n" not in str(err.value)
    assert attached_hooks(tiny_model) == []


def test_generate_says_how_long_the_prompt_really_is(tiny_model):
    with pytest.raises(ValueError) as err:
        generate(tiny_model, _too_long(tiny_model), max_new_tokens=2)
    n = tiny_model.to_tokens(_too_long(tiny_model), truncate=False).shape[1]  # with BOS
    assert n > tiny_model.cfg.n_ctx and f"prompt is {n} tokens" in str(err.value)


def test_architecture_rejects_invalid_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        architecture(tmp_path)


def test_architecture_rejects_a_config_without_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 2, "n_embd": 64, "n_head": 4}))
    with pytest.raises(NotGPT2CheckpointError, match="model_type None"):
        architecture(tmp_path)


# ------------------------------------------------------------------------------ reduced precision


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 0.15), (torch.float16, 0.02)])
def test_half_precision_loads_quietly_and_close_to_float32(tiny_checkpoint, tiny_models, backend, dtype, tolerance,
                                                          caplog):
    """Half precision is processed in float32 and then cast, with no root-logger warning. Tolerance: the
    largest log-prob difference from float32 on this fixture, bfloat16 (8-bit mantissa) 0.15 nats, float16
    (11-bit) 0.02 nats."""
    with caplog.at_level(logging.WARNING):
        model = load_model(tiny_checkpoint, backend=backend, device="cpu", dtype=dtype)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert model.W_E.dtype == dtype
    tokens = model.to_tokens(PROMPTS)
    with torch.no_grad():
        half = model(tokens).float().log_softmax(-1)
        full = tiny_models[backend](tokens).log_softmax(-1)
    assert (half - full).abs().max() < tolerance
    assert generate(model, PROMPTS[0], max_new_tokens=3, temperature=0).tokens.shape == (1, 3)
