"""Loading: offline local checkpoints on both backends, parity with Hugging Face, and typed errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import both_backends

import interp
from interp.backends import DEFAULT_BACKEND
from interp.loading import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NotGPT2CheckpointError,
    UnknownModelError,
    WeightsUnavailableError,
    load_model,
)

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics.",
    "Hello world!",
    "When Mary and John went to the store, John gave a drink to",
]


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Hello world", [15496, 995]),  # the pinned example
        ("The", [464]),
        (" the", [262]),
        (",", [11]),
        ("<|endoftext|>", [50256]),
    ],
)
def test_gpt2_tokenizer_known_ids(text, ids):
    tok = interp.gpt2_tokenizer()
    assert tok(text).input_ids == ids
    assert len(tok) == 50257


def test_local_checkpoint_loads_with_no_cache_and_no_network(tiny_checkpoint, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # nothing cached anywhere
    model = load_model(tiny_checkpoint, backend=backend, device="cpu")
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 64
    assert model.to_tokens("Hello world").tolist() == [[50256, 15496, 995]]
    info = interp.model_info(model)
    assert info.backend == backend and "random-weight" in info.label and len(info.weights_sha256) == 64


def _hf_log_probs(checkpoint, texts):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoint, local_files_only=True, attn_implementation="eager").eval()
    tok = interp.gpt2_tokenizer()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[tok.bos_token_id] + tok(text).input_ids])
            out.append(hf(ids).logits.log_softmax(-1))
    return out


def test_parity_with_huggingface_on_full_gpt2_small_shape(full_checkpoint, full_models):
    """Both backends' log-probs equal GPT2LMHeadModel's on the same weights (logits differ by a constant)."""
    expected = _hf_log_probs(full_checkpoint, ENGLISH)
    for backend, model in full_models.items():
        assert model.cfg.n_layers == 12 and model.cfg.d_model == 768 and model.cfg.n_ctx == 1024
        with torch.no_grad():
            for text, ref in zip(ENGLISH, expected):
                got = model(model.to_tokens(text)).log_softmax(-1)
                diff = (got - ref).abs().max().item()
                assert diff <= 1e-4, f"{backend}: max |Δ log p| = {diff:.2e} on {text!r}"


@both_backends
@pytest.mark.parametrize("hook", ["hook_q", "hook_k", "hook_v", "hook_pattern", "hook_resid_post"])
def test_backends_cache_the_same_activations(full_models, hook):
    tokens = full_models[DEFAULT_BACKEND].to_tokens(ENGLISH[0])
    caches = {}
    for backend, model in full_models.items():
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(hook))
        caches[backend] = cache
    for layer in (0, 11):
        name = f"blocks.{layer}.attn.{hook}" if hook != "hook_resid_post" else f"blocks.{layer}.{hook}"
        a, b = caches["hooked"][name], caches["bridge"][name]
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------- bad input


def test_missing_path():
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint directory"):
        load_model("./no/such/checkpoint")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointNotFoundError, match="missing model.safetensors"):
        load_model(tmp_path)


def test_wrong_model_type(tiny_checkpoint, tmp_path):
    bad = shutil.copytree(tiny_checkpoint, tmp_path / "llama")
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(NotGPT2CheckpointError, match="model_type 'llama'"):
        load_model(bad)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(tiny_checkpoint, tmp_path, damage):
    bad = shutil.copytree(tiny_checkpoint, tmp_path / "corrupt")
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 10)
    with pytest.raises(CorruptCheckpointError, match="cannot read the weights"):
        load_model(bad)


def test_unknown_model_name():
    with pytest.raises(UnknownModelError, match="Did you mean 'gpt2'"):
        load_model("gpt3")


def test_known_name_without_weights_gives_the_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(WeightsUnavailableError) as err:
        load_model("gpt2")
    message = str(err.value)
    assert "connect to the internet once" in message
    assert "local GPT-2 checkpoint directory" in message
    assert "load_model('bundled')" in message


def test_bad_backend(tiny_checkpoint):
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model(tiny_checkpoint, backend="jax")
