"""Activation patching against hand-rolled ``patch_activation`` runs, attribution patching against exact
patching on the bundled model's copying task, and steering."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.backends import AVAILABLE_BACKENDS
from interp.heads import copying_task
from interp.hooks import attached_hooks
from interp.interventions import patch_activation
from interp.loading import load_model
from interp.sampling import generate


def _last_token_logit(token: int):
    return lambda logits: logits[:, -1, token].mean()


@pytest.fixture(scope="module")
def bundled():
    return {b: load_model("bundled", backend=b, device="cpu") for b in AVAILABLE_BACKENDS}


@pytest.mark.parametrize("hook, by", [("resid_pre", "position"), ("attn_out", "position"), ("z", "head")])
def test_every_cell_equals_a_hand_rolled_patch(tiny_model, hook, by):
    clean = tiny_model.to_tokens(["When Mary and John went to the store, John gave"])
    corrupted = tiny_model.to_tokens(["When Anna and Tom walked to the park, Tom handed"])
    assert clean.shape == corrupted.shape
    metric = _last_token_logit(42)
    result = interp.activation_patching(tiny_model, clean, corrupted, metric, hook=hook, by=by, cells_per_forward=5)
    name = (lambda layer: f"blocks.{layer}.attn.hook_z") if hook == "z" else \
        (lambda layer: f"blocks.{layer}.hook_{hook}")
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(clean)
        for layer in range(tiny_model.cfg.n_layers):
            for i in range(result.scores.shape[1]):
                kwargs = {"positions": [i]} if by == "position" else {"heads": [i]}
                with patch_activation(tiny_model, name(layer), cache[name(layer)], **kwargs):
                    expected = float(metric(tiny_model(corrupted)))
                assert result.scores[layer, i] == pytest.approx(expected, abs=1e-4), (layer, i)
        assert result.clean_metric == pytest.approx(float(metric(tiny_model(clean))), abs=1e-4)
        assert result.corrupted_metric == pytest.approx(float(metric(tiny_model(corrupted))), abs=1e-4)
    assert attached_hooks(tiny_model) == []
    assert len(result.to_frame()) == result.scores.numel()


def test_patching_validates_before_running(tiny_model):
    a, b = tiny_model.to_tokens("one two three"), tiny_model.to_tokens("one two")
    with pytest.raises(ValueError, match="same shape"):
        interp.activation_patching(tiny_model, a, b, _last_token_logit(1))
    with pytest.raises(ValueError, match="by='head'"):
        interp.activation_patching(tiny_model, a, a, _last_token_logit(1), hook="resid_pre", by="head")
    with pytest.raises(ValueError, match="scalar"):
        interp.activation_patching(tiny_model, a, a, lambda logits: logits[0, -1])


def _copying_task(model):
    return copying_task(model, seed=0)  # the mechanisms figure's task


def test_attribution_by_head_finds_the_heads_exact_patching_finds(bundled, backend):
    """On the head grid the copying task hinges on the induction head; attribution must rank the same head
    first and correlate with exact patching at r > 0.7 (measured: 0.98)."""
    model = bundled[backend]
    clean, corrupted, metric = _copying_task(model)
    exact = interp.activation_patching(model, clean, corrupted, metric, hook="z", by="head")
    approx = interp.attribution_patching(model, clean, corrupted, metric, hook="z", by="head")
    assert exact.clean_metric - exact.corrupted_metric > 1.0, "the task must depend on the patched tokens"
    assert approx.corrupted_metric == pytest.approx(exact.corrupted_metric, abs=1e-4)
    assert int(approx.scores.argmax()) == int(exact.scores.argmax())
    correlation = torch.corrcoef(torch.stack([exact.scores.flatten(), approx.scores.flatten()]))[0, 1]
    assert correlation > 0.7, f"Pearson r = {correlation:.2f}"
    assert attached_hooks(model) == []


def test_attribution_on_a_bfloat16_model_keeps_the_effects_bfloat16_would_round_away():
    """A score is the corrupted metric (about -10 here) plus the sum of delta x gradient: added in bfloat16, whose
    step at 10 is 0.0625, most effects vanished. Checked against the same sum in float64, from TransformerLens's
    cache and its own hooks' backward."""
    model = load_model("bundled", device="cpu", dtype=torch.bfloat16)
    clean, corrupted, metric = _copying_task(model)
    approx = interp.attribution_patching(model, clean, corrupted, metric)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
    kept = {}

    def keep(name):
        def hook(act, hook):
            kept[name] = act
            return act
        return hook

    hooks = [("hook_embed", lambda act, hook: act.detach().requires_grad_(True))] + [(n, keep(n)) for n in names]
    with torch.enable_grad():
        value = metric(model.run_with_hooks(corrupted, fwd_hooks=hooks)).mean()
        grads = torch.autograd.grad(value, [kept[n] for n in names])
    expected = torch.stack([((clean_cache[n].double() - kept[n].detach().double()) * g.double()).sum((0, 2))
                            for n, g in zip(names, grads)]) + float(value.detach())
    assert approx.scores.dtype == torch.float32
    torch.testing.assert_close(approx.scores.double(), expected, rtol=0, atol=1e-4)
    assert (expected - float(value.detach())).abs().max() > 0.01, "effects the rounding would lose must be there"


@pytest.mark.parametrize("hook, by", [("resid_pre", "position"), ("z", "head")])
def test_attribution_is_the_first_order_term_of_patching(bundled, backend, hook, by):
    """Attribution is exact to first order: patching in eps of the clean-minus-corrupted difference moves the
    metric by eps times (attribution - corrupted metric), for small eps (central differences in float64 would
    be tighter; float32 with eps = 1e-2 agrees to a few percent). Large patches can leave the linear regime:
    on this task, by position, exact and attribution patching correlate at only r = 0.08, because restoring
    the one decisive cell flips the induction head's attention."""
    model = bundled[backend]
    clean, corrupted, metric = _copying_task(model)
    approx = interp.attribution_patching(model, clean, corrupted, metric, hook=hook, by=by)
    name = (lambda layer: f"blocks.{layer}.attn.hook_z") if hook == "z" else \
        (lambda layer: f"blocks.{layer}.hook_{hook}")
    eps = 1e-2
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupt_cache = model.run_with_cache(corrupted)
        base = float(metric(model(corrupted)))
        slopes = approx.scores - base
        cells = torch.topk(slopes.abs().flatten(), 3).indices.tolist()
        for cell in cells:
            layer, i = divmod(cell, slopes.shape[1])
            delta = clean_cache[name(layer)] - corrupt_cache[name(layer)]

            def nudge(act, hook, layer=layer, i=i, delta=delta):
                act = act.clone()
                if by == "position":
                    act[:, i] += eps * delta[:, i]
                else:
                    act[:, :, i] += eps * delta[:, :, i]
                return act

            with model.hooks(fwd_hooks=[(name(layer), nudge)]):
                moved = (float(metric(model(corrupted))) - base) / eps
            assert moved == pytest.approx(float(slopes[layer, i]), rel=0.05, abs=2e-2), (layer, i)


def test_steering_along_a_tokens_embedding_raises_its_logit(bundled, backend):
    model = bundled[backend]
    token = model.to_single_token(" Elizabeth")
    tokens = model.to_tokens("The weather today is")
    direction = model.W_E[token].detach()
    with torch.no_grad():
        before = model(tokens)[0, -1, token]
        with interp.steer(model, direction, layer=1, coeff=8.0):
            after = model(tokens)[0, -1, token]
    assert after > before + 1.0
    assert attached_hooks(model) == []


def test_generation_under_steering_differs_and_matches_the_models_own_forward(bundled, backend):
    model = bundled[backend]
    vector = interp.steering_vector(model, " Elizabeth", " import", layer=1)
    assert vector.shape == (2, model.cfg.d_model)  # BOS + one token, both prompts
    plain = generate(model, "She said that", max_new_tokens=10, temperature=0).tokens
    with interp.steer(model, vector[-1], layer=1, coeff=10.0):  # the last position's difference, everywhere
        steered = generate(model, "She said that", max_new_tokens=10, temperature=0).tokens
        reference = generate(model, "She said that", max_new_tokens=10, temperature=0, use_kv_cache=False).tokens
    assert torch.equal(steered, reference)
    assert not torch.equal(steered, plain)


def test_steer_rejects_bad_vectors(tiny_model):
    with pytest.raises(ValueError, match="d_model"):
        interp.steer(tiny_model, torch.zeros(3), layer=0).__enter__()
    with pytest.raises(ValueError, match="layer 9 out of range"):
        interp.steer(tiny_model, torch.zeros(tiny_model.cfg.d_model), layer=9).__enter__()
    assert attached_hooks(tiny_model) == []
