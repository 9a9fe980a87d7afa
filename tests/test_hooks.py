"""Selective caching, residual decomposition, interventions and their exception safety, on both backends."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import GPT2LMHeadModel

from interp.backends import DEFAULT_BACKEND
from interp.caching import (
    CacheBudgetError,
    cache_heads,
    decompose_resid,
    estimate_cache_bytes,
    residual_stream,
)
from interp.hooks import attached_hooks, check_hook_names, logits_for_gradients, run_until, temporary_hooks
from interp.interventions import ablate_heads, patch_activation
from interp.lens import direct_logit_attribution, logit_lens

PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "The quick brown fox jumps over the lazy dog and then the"]


@pytest.fixture
def tokens(tiny_model):
    return tiny_model.to_tokens(PROMPTS)


def _full_cache(model, tokens, suffix):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(suffix))
    return cache


@pytest.mark.parametrize("kind", ["q", "k", "v", "z", "pattern"])
def test_cache_heads_equals_the_full_cache_sliced(tiny_model, tokens, kind):
    heads = cache_heads(tiny_model, tokens, layers=[1, 0], heads=[3, 1], kinds=(kind,))
    full = _full_cache(tiny_model, tokens, f"hook_{kind}")
    for i, layer in enumerate((1, 0)):
        for j, head in enumerate((3, 1)):
            act = full[f"blocks.{layer}.attn.hook_{kind}"]
            expected = act[:, head] if kind == "pattern" else act[:, :, head]
            torch.testing.assert_close(heads[kind][i, j], expected)
            torch.testing.assert_close(heads.head(kind, layer, head), expected)
    assert heads.kinds == (kind,)


def test_result_is_z_times_W_O_and_sums_to_attn_out(tiny_model, tokens):
    heads = cache_heads(tiny_model, tokens, layers=[1], kinds=("result",))
    assert heads.z is None and heads.result.shape == (1, 4, *tokens.shape, 64)
    attn_out = _full_cache(tiny_model, tokens, "hook_attn_out")["blocks.1.hook_attn_out"]
    b_O = tiny_model.blocks[1].attn.b_O.detach()
    torch.testing.assert_close(heads.result[0].sum(0) + b_O, attn_out, atol=1e-5, rtol=1e-5)


def test_memory_scales_with_the_request(tiny_model, tokens):
    one = cache_heads(tiny_model, tokens, layers=[0], heads=[0], kinds=("q", "pattern"))
    four = cache_heads(tiny_model, tokens, layers=[0, 1], heads=[0, 1], kinds=("q", "pattern"))
    assert four.nbytes == 4 * one.nbytes
    for cached, layers, heads in ((one, [0], [0]), (four, [0, 1], [0, 1])):
        estimate = estimate_cache_bytes(tiny_model, *tokens.shape, layers=layers, heads=heads, kinds=("q", "pattern"))
        assert cached.nbytes == estimate.total
    with warnings.catch_warnings():  # the bridge says which flag-gated hook points a full cache leaves out
        warnings.filterwarnings("ignore", "run_with_cache: skipped", UserWarning)
        full = _full_cache(tiny_model, tokens, "")
    assert sum(t.nbytes for t in full.values()) > 50 * one.nbytes


def test_estimate_for_full_gpt2_small_patterns_at_1024(full_models):
    estimate = estimate_cache_bytes(full_models[DEFAULT_BACKEND], 1, 1024, kinds=("pattern",))
    assert estimate.total == 12 * 12 * 1024 * 1024 * 4  # 576 MiB
    assert str(estimate).startswith("576.0 MiB")


def test_budget_refuses_or_warns(tiny_model, tokens):
    with pytest.raises(CacheBudgetError, match="over the budget"):
        cache_heads(tiny_model, tokens, kinds=("pattern",), max_bytes=1000)
    with pytest.warns(ResourceWarning, match="over the budget"):
        cache_heads(tiny_model, tokens, kinds=("pattern",), max_bytes=1000, on_budget="warn")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"layers": [2]}, ValueError, r"layer 2 out of range: .* has layers 0..1"),
        ({"heads": [4]}, ValueError, r"head 4 out of range: .* has heads 0..3"),
        ({"kinds": ("attn",)}, ValueError, "unknown kinds"),
        ({"layers": []}, ValueError, "layers is empty"),
    ],
)
def test_bad_requests_raise_clear_errors(tiny_model, tokens, kwargs, error, message):
    with pytest.raises(error, match=message):
        cache_heads(tiny_model, tokens, **kwargs)


def test_too_many_tokens(tiny_model):
    with pytest.raises(ValueError, match="longer than the context window"):
        cache_heads(tiny_model, torch.zeros(1, 129, dtype=torch.long))


def test_residual_stream_stacks_layers(tiny_model, tokens):
    stack = residual_stream(tiny_model, tokens)
    assert stack.resid_pre.shape == (2, *tokens.shape, 64)
    torch.testing.assert_close(stack.resid_pre[1], stack.resid_post[0])


@pytest.mark.parametrize("per_head", [False, True])
def test_decomposition_sums_to_the_final_residual(tiny_model, tokens, per_head):
    parts = decompose_resid(tiny_model, tokens, per_head=per_head)
    per_layer = (4 + 1 if per_head else 1) + 1  # heads + attn bias (or attn), then mlp
    assert len(parts.labels) == parts.components.shape[0] == 2 + 2 * per_layer
    torch.testing.assert_close(parts.components.sum(0), parts.final, atol=1e-5, rtol=1e-5)


def test_decomposition_on_full_shape(full_models):
    model = full_models[DEFAULT_BACKEND]
    parts = decompose_resid(model, model.to_tokens(PROMPTS[0]))
    assert parts.components.shape[0] == 2 + 2 * 12
    torch.testing.assert_close(parts.components.sum(0), parts.final, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------ consistency


def test_qkv_equal_fused_c_attn_recomputation(tiny_checkpoint, tiny_raw_models, backend):
    """On an unprocessed model, hook_q/k/v equal LN(resid_pre) @ c_attn, split into Q, K, V and heads."""
    model = tiny_raw_models[backend]
    hf = GPT2LMHeadModel.from_pretrained(tiny_checkpoint, local_files_only=True).eval()
    tokens = model.to_tokens(PROMPTS)
    resid = residual_stream(model, tokens, kinds=("resid_pre",)).resid_pre
    heads = cache_heads(model, tokens, kinds=("q", "k", "v"))
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    for layer in range(model.cfg.n_layers):
        block = hf.transformer.h[layer]
        with torch.no_grad():
            fused = block.attn.c_attn(block.ln_1(resid[layer]))  # [batch, pos, 3*d_model]
        for i, kind in enumerate(("q", "k", "v")):
            part = fused[..., i * model.cfg.d_model:(i + 1) * model.cfg.d_model]
            expected = part.reshape(*part.shape[:2], n_heads, d_head).permute(2, 0, 1, 3)
            torch.testing.assert_close(heads[kind][layer], expected, atol=1e-5, rtol=1e-5)


def test_logits_for_gradients_equal_hugging_face_autograd(tiny_checkpoint, tiny_raw_models, backend):
    """The logits, and the gradient of a metric that reads a few positions of each row, equal plain autograd
    through Hugging Face's GPT-2 (whose unembedding backward is dense)."""
    model = tiny_raw_models[backend]
    hf = GPT2LMHeadModel.from_pretrained(tiny_checkpoint, local_files_only=True).eval()
    tokens = model.to_tokens(PROMPTS)

    def metric(logits):  # row 0 reads position 1, row 1 positions 3 and 6
        logp = logits.log_softmax(-1)
        return logp[0, 1, 7] + logp[1, 3, 11] - logp[1, 6, 2]

    leaf = {}

    def start(act, hook):
        leaf["x"] = act.detach().requires_grad_(True)
        return leaf["x"]

    logits = logits_for_gradients(model, tokens, [("hook_embed", start)])
    (grad,) = torch.autograd.grad(metric(logits), [leaf["x"]])
    embeds = hf.transformer.wte(tokens).detach().requires_grad_(True)
    hf_logits = hf(inputs_embeds=embeds).logits
    (expected,) = torch.autograd.grad(metric(hf_logits), [embeds])
    torch.testing.assert_close(logits, hf_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)
    assert grad[0, 2:].abs().sum() == 0 and grad[1, 7:].abs().sum() == 0 and grad[1, :7].abs().sum() > 0
    assert attached_hooks(model) == []


def test_run_until_gives_the_cache_at_its_names_and_computes_nothing_after(tiny_model, tokens):
    """``run_until`` returns what ``run_with_cache`` holds at the named points, with an edit made before them by
    one of its hooks, and the forward stops at the last name: a hook past it never fires. The unembedding's
    input, where exact edge patching stops, fires on both backends (HookedTransformer's return_type=None
    would skip it)."""
    names = ["blocks.1.hook_resid_pre", "unembed.hook_in"]
    halve = ("blocks.0.hook_mlp_out", lambda act, hook: act * 0.5)
    after = []
    acts = run_until(tiny_model, tokens, [*names, names[0]],  # a name given twice is waited for once
                     [halve, ("unembed.hook_out", lambda act, hook: after.append(act))])
    with torch.no_grad(), temporary_hooks(tiny_model, [halve]):
        _, cache = tiny_model.run_with_cache(tokens, names_filter=lambda name: name in names)
    for name in names:
        torch.testing.assert_close(acts[name], cache[name], atol=0, rtol=0)
    assert after == [] and attached_hooks(tiny_model) == []


def test_every_hook_point_interp_accepts_fires(tiny_model, tokens):
    """A hook at a point that never fires does nothing, silently: a patch there patches nothing. So every hook
    point that ``check_hook_names`` accepts fires in a forward, and the others are refused before anything is
    attached, with a reason (a flag that is off; on the bridge, the fused qkv module its attention never runs),
    and ``run_until`` never waits on one of them."""
    accepted, fired = [], set()
    for name in tiny_model.hook_dict:
        try:
            check_hook_names(tiny_model, [name])
        except ValueError:
            with pytest.raises(ValueError, match="fires only when|never fires"):
                run_until(tiny_model, tokens, [name])
            assert attached_hooks(tiny_model) == []
            continue
        accepted.append(name)

    def record(name):
        return lambda act, hook: fired.add(name)

    with torch.no_grad(), temporary_hooks(tiny_model, [(name, record(name)) for name in accepted]):
        tiny_model(tokens)
    assert sorted(set(accepted) - fired) == [] and len(accepted) > 30


def test_gradient_methods_work_under_no_grad(tiny_model, tokens):
    """Every method that takes a metric's gradient gives the same answer when called under torch.no_grad()."""
    import interp
    from interp import circuits
    from interp import sae as S

    corrupted = tokens.flip(0)
    sae = S.SAE(tiny_model.cfg.d_model, 32, hook_name="blocks.1.hook_resid_pre", k=4)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))

    def metric(logits):
        return logits[:, -1, 5] - logits[:, -1, 9]

    runs = {"eap": lambda: circuits.edge_attribution(tiny_model, tokens, corrupted, metric, method="eap").scores,
            "eap-ig": lambda: circuits.edge_attribution(tiny_model, tokens, corrupted, metric, method="eap-ig",
                                                        steps=2).scores,
            "attribution": lambda: interp.attribution_patching(tiny_model, tokens, corrupted, metric).scores,
            "features": lambda: S.feature_attribution(tiny_model, sae, tokens, metric)}
    for name, run in runs.items():
        outside = run()
        with torch.no_grad():
            inside = run()
        assert outside.abs().sum() > 0, name
        torch.testing.assert_close(inside, outside, msg=name)


def test_pattern_is_masked_softmax_of_scaled_qk(tiny_model, tokens):
    heads = cache_heads(tiny_model, tokens, kinds=("q", "k", "pattern"))
    scores = heads.q @ heads.k.transpose(-1, -2) / tiny_model.cfg.d_head ** 0.5
    pos = tokens.shape[1]
    causal = torch.ones(pos, pos, dtype=torch.bool).tril()
    expected = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    torch.testing.assert_close(heads.pattern, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ interventions


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


class Boom(Exception):
    pass


def _interventions(model, tokens):
    source = _full_cache(model, tokens, "hook_resid_pre")["blocks.1.hook_resid_pre"]
    return {
        "temporary_hooks": lambda: temporary_hooks(model, [("blocks.0.hook_resid_post", lambda a, hook: a * 2)]),
        "zero_ablation": lambda: ablate_heads(model, [(0, 1), (1, 2)]),
        "mean_ablation": lambda: ablate_heads(model, [(1, 0)], mode="mean", reference=tokens),
        "patch": lambda: patch_activation(model, "blocks.1.hook_resid_pre", source.flip(0)),
    }


@pytest.mark.parametrize("which", ["temporary_hooks", "zero_ablation", "mean_ablation", "patch"])
def test_no_hook_left_after_an_exception(tiny_model, tokens, which):
    before = _logits(tiny_model, tokens)
    with pytest.raises(Boom), _interventions(tiny_model, tokens)[which]():
        assert attached_hooks(tiny_model), "the intervention should be attached inside the block"
        changed = _logits(tiny_model, tokens)
        raise Boom
    assert attached_hooks(tiny_model) == []
    assert not torch.allclose(changed, before)
    torch.testing.assert_close(_logits(tiny_model, tokens), before)


EXCEPTION_SITES = {  # an error raised from inside our own code paths, with interventions attached
    "cache_heads, bad kind after hooks": lambda m, t: cache_heads(m, t[:, :0]),
    "generate under ablation, prompt too long": lambda m, t: _generate_in(m, ablate_heads(m, [(0, 0)]), "x " * 300),
    "generate with a raising hook": lambda m, t: _generate_in(m, temporary_hooks(
        m, [("blocks.1.hook_resid_pre", _raise)]), "Hello there"),
    "patch with a source of the wrong shape": lambda m, t: _forward_in(m, patch_activation(
        m, "blocks.0.hook_resid_pre", torch.zeros(1, 2, m.cfg.d_model)), t),
    "ablation inside patch inside hooks, then a raising hook": lambda m, t: _nested(m, t),
    "mean ablation with a too-long reference": lambda m, t: ablate_heads(
        m, [(0, 0)], mode="mean", reference=torch.zeros(1, m.cfg.n_ctx + 1, dtype=torch.long)).__enter__(),
}


def _raise(act, hook):
    raise Boom


def _generate_in(model, intervention, prompt):
    from interp.sampling import generate

    with intervention:
        generate(model, prompt, max_new_tokens=3, temperature=0)


def _forward_in(model, intervention, tokens):
    with intervention, torch.no_grad():
        model(tokens)


def _nested(model, tokens):
    source = _full_cache(model, tokens, "hook_resid_pre")["blocks.1.hook_resid_pre"]
    with temporary_hooks(model, [("blocks.0.hook_resid_post", lambda a, hook: a)]), \
            patch_activation(model, "blocks.1.hook_resid_pre", source), ablate_heads(model, [(1, 1)]), \
            temporary_hooks(model, [("blocks.1.hook_resid_post", _raise)]), torch.no_grad():
        model(tokens)


@pytest.mark.parametrize("site", list(EXCEPTION_SITES))
def test_no_hook_left_after_an_error_anywhere(tiny_model, tokens, site):
    before = _logits(tiny_model, tokens)
    with pytest.raises((Boom, ValueError)):
        EXCEPTION_SITES[site](tiny_model, tokens)
    assert attached_hooks(tiny_model) == []
    torch.testing.assert_close(_logits(tiny_model, tokens), before)


def test_unknown_hook_name_attaches_nothing(tiny_model):
    hooks = [("blocks.0.hook_resid_post", lambda a, hook: a), ("blocks.0.hook_resid_pos", lambda a, hook: a)]
    with pytest.raises(KeyError, match="no hook point named 'blocks.0.hook_resid_pos'"), \
            temporary_hooks(tiny_model, hooks):
        pass
    assert attached_hooks(tiny_model) == []


def test_patching_the_whole_residual_reproduces_the_source_run(tiny_model, tokens):
    clean, corrupt = tokens[:1], tokens[1:]
    source = _full_cache(tiny_model, clean, "hook_resid_pre")["blocks.1.hook_resid_pre"]
    kept = source.clone()
    with patch_activation(tiny_model, "blocks.1.hook_resid_pre", source):
        patched = _logits(tiny_model, corrupt)
    torch.testing.assert_close(patched, _logits(tiny_model, clean))
    assert torch.equal(source, kept), "the source activation must not be modified"


def test_patching_one_head_only_changes_that_head(tiny_model, tokens):
    other = tokens.flip(0)
    source = _full_cache(tiny_model, other, "hook_z")["blocks.1.attn.hook_z"]
    with patch_activation(tiny_model, "blocks.1.attn.hook_z", source, heads=[2], positions=[3, 4]):
        patched = cache_heads(tiny_model, tokens, layers=[1], kinds=("z",)).z[0]  # [head, batch, pos, d_head]
    plain = cache_heads(tiny_model, tokens, layers=[1], kinds=("z",)).z[0]
    torch.testing.assert_close(patched[2][:, [3, 4]], source[:, [3, 4], 2])
    torch.testing.assert_close(patched[[0, 1, 3]], plain[[0, 1, 3]])
    torch.testing.assert_close(patched[2][:, :3], plain[2][:, :3])


def test_zero_ablation_zeroes_z_and_mean_ablation_uses_the_mean(tiny_model, tokens):
    with ablate_heads(tiny_model, [(1, 2)]):
        z = cache_heads(tiny_model, tokens, layers=[1], kinds=("z",)).z[0]
    assert torch.count_nonzero(z[2]) == 0 and torch.count_nonzero(z[1]) > 0
    reference_z = cache_heads(tiny_model, tokens, layers=[1], heads=[2], kinds=("z",)).z[0, 0]
    with ablate_heads(tiny_model, [(1, 2)], mode="mean", reference=tokens):
        z = cache_heads(tiny_model, tokens, layers=[1], heads=[2], kinds=("z",)).z[0, 0]
    torch.testing.assert_close(z, reference_z.mean(dim=(0, 1)).expand_as(z))
    for mode, reference in (("zero", None), ("mean", tokens)):  # a head named twice is ablated once
        with torch.no_grad(), ablate_heads(tiny_model, [(1, 2), (0, 1)], mode=mode, reference=reference):
            once = tiny_model(tokens)
        with torch.no_grad(), ablate_heads(tiny_model, [(1, 2), (0, 1), (1, 2)], mode=mode, reference=reference):
            assert torch.equal(tiny_model(tokens), once)


def test_cache_handed_to_an_intervention_is_not_modified(tiny_model, tokens):
    _, cache = tiny_model.run_with_cache(tokens)
    snapshot = {k: v.clone() for k, v in cache.items()}
    tokens_before = tokens.clone()
    with patch_activation(tiny_model, "blocks.0.attn.hook_z", cache["blocks.0.attn.hook_z"], heads=[0]), \
            ablate_heads(tiny_model, [(0, 0), (1, 1)]):
        tiny_model(tokens)
    assert all(torch.equal(cache[k], v) for k, v in snapshot.items())
    assert torch.equal(tokens, tokens_before)


# ------------------------------------------------------------------------------------ lens


def test_direct_logit_attribution_adds_up_to_the_logit(tiny_model, tokens):
    token = int(tokens[0, 5])
    for per_head in (True, False):
        dla = direct_logit_attribution(tiny_model, tokens[:1], token, per_head=per_head)
        assert float(dla.contributions.sum()) + dla.constant == pytest.approx(dla.logit, abs=1e-4)


def test_direct_logit_attribution_on_unprocessed_model(tiny_raw_models, backend):
    model = tiny_raw_models[backend]
    tokens = model.to_tokens(PROMPTS[0])
    dla = direct_logit_attribution(model, tokens, 262)
    assert float(dla.contributions.sum()) + dla.constant == pytest.approx(dla.logit, abs=1e-4)


def test_logit_lens_last_layer_is_the_models_prediction(tiny_model, tokens):
    lens = logit_lens(tiny_model, tokens[:1], k=3)
    assert lens.labels[0] == "embed" and len(lens.labels) == 3
    probs = _logits(tiny_model, tokens[:1])[0, -1].softmax(-1).topk(3)
    assert lens.top_tokens[-1].tolist() == probs.indices.tolist()
    torch.testing.assert_close(lens.top_probs[-1], probs.values, atol=1e-5, rtol=1e-5)
