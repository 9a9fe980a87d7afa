"""Head detectors on a model with a known, constructed answer; and they never write to what they read."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from interp.backends import AVAILABLE_BACKENDS
from interp.caching import cache_heads
from interp.heads import DETECTORS, detector, head_scores, repeated_random_tokens, scores_from_pattern
from interp.loading import load_model

PLANTED_LAYER, PLANTED_HEAD = 0, 2
FREQUENCIES = (0.3, 0.7, 1.3, 2.1)  # incommensurate: all four cosines peak together only at offset 0


def _planted_previous_token_checkpoint(out):
    """A 2-layer GPT-2 where head 0.2, and only it, attends to the previous token.

    Positions are coded as (cos, sin, -cos, -sin)(θ·p) for four frequencies, so LayerNorm keeps them intact
    (zero mean, constant norm); token embeddings are shrunk so the positional code dominates. Head 0.2's
    query rotates position p's code back by one step (to p-1's) and its key reads the code unchanged, so its
    score peaks at key p-1. Every other head has zero queries: uniform attention.
    """
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=50257)
    model = GPT2LMHeadModel(config)
    d_model, d_head = 64, 16
    pos = torch.arange(128).float()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(1e-3)
        wpe = torch.zeros(128, d_model)
        for f, theta in enumerate(FREQUENCIES):
            c, s = torch.cos(theta * pos), torch.sin(theta * pos)
            wpe[:, 4 * f: 4 * f + 4] = torch.stack([c, s, -c, -s], dim=1)
        model.transformer.wpe.weight.copy_(wpe)
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :d_model] = 0.0  # all queries zero ...
            block.attn.c_attn.bias[:d_model] = 0.0
        c_attn = model.transformer.h[PLANTED_LAYER].attn.c_attn
        q0, k0 = PLANTED_HEAD * d_head, d_model + PLANTED_HEAD * d_head
        c_attn.weight[:, k0: k0 + d_head] = 0.0
        c_attn.bias[k0: k0 + d_head] = 0.0
        amplitude = 10.0
        for f, theta in enumerate(FREQUENCIES):  # ... but the planted head's: rotate by -θ
            x_cos, x_sin = 4 * f, 4 * f + 1
            c_attn.weight[x_cos, q0 + 2 * f] = amplitude * math.cos(theta)
            c_attn.weight[x_sin, q0 + 2 * f] = amplitude * math.sin(theta)
            c_attn.weight[x_cos, q0 + 2 * f + 1] = -amplitude * math.sin(theta)
            c_attn.weight[x_sin, q0 + 2 * f + 1] = amplitude * math.cos(theta)
            c_attn.weight[x_cos, k0 + 2 * f] = 1.0
            c_attn.weight[x_sin, k0 + 2 * f + 1] = 1.0
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def planted_models(tmp_path_factory):
    path = _planted_previous_token_checkpoint(tmp_path_factory.mktemp("planted") / "planted-prev-token")
    return {b: load_model(path, backend=b, device="cpu") for b in AVAILABLE_BACKENDS}


def test_detector_finds_the_planted_previous_token_head_and_only_it(planted_models, backend):
    scores = head_scores(planted_models[backend], seq_len=40, batch=4)
    prev = scores.previous_token
    assert prev[PLANTED_LAYER, PLANTED_HEAD] > 0.9
    others = prev.clone()
    others[PLANTED_LAYER, PLANTED_HEAD] = 0
    assert others.max() < 0.2, f"other heads flagged: {others}"
    assert scores.top("previous_token", 1)[0][:2] == (PLANTED_LAYER, PLANTED_HEAD)
    assert len(scores.top("previous_token", 100)) == prev.numel()
    with pytest.raises(ValueError, match="k must be >= 0, got -1"):
        scores.top("previous_token", -1)
    assert scores.induction.max() < 0.2 and scores.duplicate_token[PLANTED_LAYER, PLANTED_HEAD] < 0.05
    frame = scores.to_frame()
    assert len(frame) == 8 and frame.loc[frame.previous_token.idxmax(), "name"] == "0.2"


def test_scores_on_hand_made_patterns():
    """Patterns that attend exactly one way score 1 on that behaviour."""
    n, pos = 5, 11
    q = torch.arange(pos)
    prev = torch.zeros(pos, pos)
    prev[q[1:], q[1:] - 1] = 1
    prev[0, 0] = 1
    induction = torch.eye(pos)
    induction[q[n + 1:], q[n + 1:] - n + 1] = 1
    induction[q[n + 1:], q[n + 1:]] = 0
    first = torch.zeros(pos, pos)
    first[:, 0] = 1
    pattern = torch.stack([prev, induction, first]).view(1, 3, 1, pos, pos)
    half = torch.arange(10, 10 + n)
    tokens = torch.cat([torch.tensor([50256]), half, half]).unsqueeze(0)  # [BOS, r, r]: pos 2n+1
    scores = scores_from_pattern(pattern, tokens)
    assert scores.previous_token[0, 0] == 1 and scores.induction[0, 1] == 1 and scores.first_token[0, 2] == 1
    assert scores.induction[0, 0] == 0 and scores.previous_token[0, 2] < 0.2


def test_scores_do_not_mutate_the_pattern(tiny_model):
    tokens = repeated_random_tokens(tiny_model, seq_len=10, batch=2)
    pattern = cache_heads(tiny_model, tokens, kinds=("pattern",)).pattern
    before = pattern.clone()
    scores_from_pattern(pattern, tokens)
    assert torch.equal(pattern, before)


def test_repeated_random_tokens(tiny_model):
    tokens = repeated_random_tokens(tiny_model, seq_len=7, batch=3, seed=4)
    assert tokens.shape == (3, 15)
    assert torch.equal(tokens[:, 1:8], tokens[:, 8:]) and (tokens[:, 0] == 50256).all()
    assert torch.equal(tokens, repeated_random_tokens(tiny_model, seq_len=7, batch=3, seed=4))
    with pytest.raises(ValueError, match="exceeds the context window"):
        repeated_random_tokens(tiny_model, seq_len=64)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_is_a_read_only_layer_by_head_score_in_0_1(tiny_model, name):
    tokens = repeated_random_tokens(tiny_model, seq_len=10, batch=2)
    pattern = cache_heads(tiny_model, tokens, kinds=("pattern",)).pattern
    before = pattern.clone()
    score = DETECTORS[name].fn(pattern, tokens)
    assert score.shape == (tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    assert ((score >= 0) & (score <= 1 + 1e-6)).all() and torch.equal(pattern, before)
    assert DETECTORS[name].description


def test_current_token_detector_on_hand_made_patterns_and_any_text(tiny_model):
    pos = 9
    self_attention = torch.eye(pos)
    uniform = torch.tril(torch.ones(pos, pos))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    pattern = torch.stack([self_attention, uniform]).view(1, 2, 1, pos, pos)
    scores = scores_from_pattern(pattern, torch.arange(pos).unsqueeze(0), ["current_token", "previous_token"])
    assert scores.current_token[0, 0] == 1 and scores.previous_token[0, 0] == 0
    assert scores.current_token[0, 1] == pytest.approx(float(uniform.diagonal()[1:].mean()))
    text = tiny_model.to_tokens("Any text at all, with no repeats in it.")
    on_text = head_scores(tiny_model, tokens=text)
    assert set(on_text.names) == {n for n, d in DETECTORS.items() if not d.repeated_tokens}
    with pytest.raises(ValueError, match="needs repeated tokens"):
        head_scores(tiny_model, tokens=text, detectors=["induction"])


def test_a_detector_registered_from_outside_runs_in_head_scores(tiny_model):
    @detector("two_back_test", "attention from position i to i-2")
    def two_back(pattern, tokens):
        q = torch.arange(2, pattern.shape[-1])
        return pattern[..., q, q - 2].mean(dim=(-2, -1))
    try:
        scores = head_scores(tiny_model, seq_len=8, batch=2)
        assert "two_back_test" in scores.names and scores["two_back_test"].shape == (2, 4)
    finally:
        del DETECTORS["two_back_test"]
