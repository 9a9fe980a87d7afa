"""Nothing passes silently: each bad input of the outside cross-check is a typed, one-line error, raised before
any forward (checked by counting forwards), and NaN never reaches the model."""

from __future__ import annotations

import json
import re

import pytest
import torch

import interp
from interp.backends import DEFAULT_BACKEND
from interp.caching import cache_heads, estimate_cache_bytes
from interp.circuits import edge_attribution
from interp.errors import BackendUnavailableError, CorruptCheckpointError, DeviceUnavailableError, MetricError
from interp.heads import copying_task, corpus_head_scores, head_scores, repeated_random_tokens
from interp.hooks import attached_hooks, temporary_hooks
from interp.interventions import ablate_heads, patch_activation
from interp.lens import direct_logit_attribution, logit_lens
from interp.loading import UnknownModelError, load_model
from interp.metrics import bootstrap_interval
from interp.patching import activation_patching, attribution_patching, steer, steering_vector
from interp.sampling import generate, temperature_sweep


@pytest.fixture(scope="module")
def model():
    return load_model("bundled", device="cpu")


@pytest.fixture(scope="module")
def tokens(model):
    return interp.to_tokens(model, "She opened the door and saw the garden")


def _source(model, tokens, name="blocks.0.hook_resid_post"):
    _, cache = model.run_with_cache(tokens, names_filter=[name])
    return cache[name]


def _in_inference_mode(call):
    def run(m, t):
        with torch.inference_mode():
            return call(m, t)
    return run


def _pair(t):
    corrupted = t.clone()
    corrupted[:, 1] = 1000
    return t, corrupted


BAD_CALLS = {
    # float indices are refused, not truncated (heads=[0.9] cached head 0; (0, 1.7) ablated head 1)
    "float head in cache_heads": (lambda m, t: cache_heads(m, t, heads=[0.9]), TypeError, "head must be an integer"),
    "float layer in cache_heads": (lambda m, t: cache_heads(m, t, layers=[1.0]), TypeError, "layer must be"),
    "float head in ablate_heads": (lambda m, t: ablate_heads(m, [(0, 1.7)]).__enter__(), TypeError, "integer"),
    "ablate_heads without pairs": (lambda m, t: ablate_heads(m, [0, 1]).__enter__(), TypeError, "pairs"),
    "ablate_heads of a tensor": (lambda m, t: ablate_heads(m, torch.tensor([[0, 1]])).__enter__(), TypeError,
                                 "list of"),
    "repeated head in cache_heads": (lambda m, t: cache_heads(m, t, heads=[1, 1]), ValueError,
                                     r"heads \[1, 1\] name a head twice"),
    "no kinds in cache_heads": (lambda m, t: cache_heads(m, t, kinds=[]), ValueError, "kinds is empty"),
    "negative batch estimate": (lambda m, t: estimate_cache_bytes(m, -1, 10), ValueError, "batch must be"),
    "estimate past the context": (lambda m, t: estimate_cache_bytes(m, 1, m.cfg.n_ctx + 1), ValueError,
                                  "pos must be in 1.."),
    "skeleton estimate past the context": (lambda m, t: estimate_cache_bytes(interp.architecture(m), 1, 10**5),
                                           ValueError, "pos must be in 1.."),
    "generate seed=1.5": (lambda m, t: generate(m, "Hi", seed=1.5), TypeError, "seed must be an integer"),
    "generate seed and seeds": (lambda m, t: generate(m, "Hi", seed=5, seeds=[1]), ValueError,
                                r"pass seed \(prompt i uses seed \+ i\) or seeds \(one per prompt\), not both"),
    "split_attention layer=0.5": (lambda m, t: interp.split_attention(m, 0.5), TypeError, "layer must be an integer"),
    "parameter_listing of a name": (lambda m, t: interp.parameter_listing("gpt2"), TypeError,
                                    "interp.architecture"),
    "zero pos estimate": (lambda m, t: estimate_cache_bytes(m, 1, 0), ValueError, "pos must be"),
    "bootstrap level 95": (lambda m, t: bootstrap_interval(torch.ones(2, 3), level=95), ValueError,
                           "level must be between 0 and 1"),
    "bootstrap no resamples": (lambda m, t: bootstrap_interval(torch.ones(2, 3), resamples=0), ValueError,
                               "resamples must be >= 1"),
    "sweep k=0": (lambda m, t: temperature_sweep(m, "Hi", [1.0], k=0), ValueError, "k must be in"),
    "sweep k too large": (lambda m, t: temperature_sweep(m, "Hi", [1.0], k=10**6), ValueError, "k must be in"),
    "generate top_k=2.5": (lambda m, t: generate(m, "Hi", top_k=2.5), TypeError, "top_k must be an integer"),
    "logit_lens k=2.5": (lambda m, t: logit_lens(m, t, k=2.5), TypeError, "k must be an integer"),
    "logit_lens pos=1.0": (lambda m, t: logit_lens(m, t, pos=1.0), TypeError, "pos must be an integer"),  # 'out of range'
    "DLA pos=1.0": (lambda m, t: direct_logit_attribution(m, t, 42, pos=1.0), TypeError, "pos must be an integer"),
    "decompose_resid per_head a string": (lambda m, t: interp.decompose_resid(m, t, per_head="no"), TypeError,
                                          "per_head must be True or False"),  # a non-empty string was per-head
    "head_scores no detectors": (lambda m, t: head_scores(m, detectors=[]), ValueError,
                                 "detectors is empty"),  # was 'unknown detectors []'
    "DLA float token": (lambda m, t: direct_logit_attribution(m, t, 42.0), TypeError, "token must be an integer"),
    "DLA token outside": (lambda m, t: direct_logit_attribution(m, t, 10**6), ValueError, "token must be in"),
    "empty steering prompt": (lambda m, t: steering_vector(m, "", " b", layer=0), ValueError, "non-empty"),
    "steering prompt over n_ctx": (lambda m, t: steering_vector(m, "a " * 600, " b", layer=0), ValueError,
                                   "longer than the context window"),
    "steer NaN coeff": (lambda m, t: steer(m, torch.ones(m.cfg.d_model), layer=0, coeff=float("nan")).__enter__(),
                        ValueError, "NaN or inf"),
    "steer inf vector": (lambda m, t: steer(m, torch.full((m.cfg.d_model,), float("inf")), layer=0).__enter__(),
                         ValueError, "NaN or inf"),
    "steer empty positions": (lambda m, t: steer(m, torch.ones(m.cfg.d_model), layer=0, positions=[]).__enter__(),
                              ValueError, "positions is empty"),
    "patch NaN source": (lambda m, t: patch_activation(m, "blocks.0.hook_resid_post",
                                                       torch.full_like(_source(m, t), float("nan"))).__enter__(),
                         ValueError, "NaN or inf"),
    "patch no positions": (lambda m, t: patch_activation(m, "blocks.0.hook_resid_post", _source(m, t),
                                                         positions=[]).__enter__(), ValueError, "positions is empty"),
    "patch positions a number": (lambda m, t: patch_activation(m, "blocks.0.hook_resid_post", _source(m, t),
                                                               positions=3).__enter__(), TypeError, "a list of"),
    "steer positions a number": (lambda m, t: steer(m, torch.ones(m.cfg.d_model), layer=0, positions=3).__enter__(),
                                 TypeError, "positions must be a list of integer positions"),
    "patch wrong width": (lambda m, t: patch_activation(m, "blocks.0.hook_resid_post",
                                                        _source(m, t)[..., :5]).__enter__(),
                          ValueError, "does not fit blocks.0.hook_resid_post"),
    "no copying pairs": (lambda m, t: copying_task(m, n_pairs=0), ValueError, "n_pairs must be >= 1"),
    "copies past the context": (lambda m, t: copying_task(m, seq_len=m.cfg.n_ctx), ValueError,
                                "exceeds the context window"),
    "float seq_len": (lambda m, t: repeated_random_tokens(m, seq_len=2.5), TypeError, "seq_len must be an integer"),
    "corpus head scores batch_size=0": (lambda m, t: corpus_head_scores(m, t, batch_size=0, progress=False),
                                        ValueError, "batch_size must be >= 1"),
    "empty token pool": (lambda m, t: repeated_random_tokens(m, token_pool=torch.tensor([], dtype=torch.long)),
                         ValueError, "non-empty"),
    "to_tokens too long": (lambda m, t: interp.to_tokens(m, "a " * 3000), ValueError, "longer than the context"),
    "attribution under inference_mode": (
        _in_inference_mode(lambda m, t: attribution_patching(m, *_pair(t), lambda logits: logits[:, -1, 13])),
        RuntimeError, "attribution needs gradients"),
    "EAP under inference_mode": (
        _in_inference_mode(lambda m, t: edge_attribution(m, *_pair(t), lambda logits: logits[:, -1, 13],
                                                         method="eap")),
        RuntimeError, "attribution needs gradients"),
    # an option of another mode or method than the one asked for: refused, not ignored
    "zero ablation with a reference": (lambda m, t: ablate_heads(m, [(0, 1)], reference=t).__enter__(), ValueError,
                                       "reference is for mode='mean'"),
    "EAP with steps": (lambda m, t: edge_attribution(m, *_pair(t), lambda logits: logits[:, -1, 13], method="eap",
                                                     steps=8), ValueError, "steps is an option of method='eap-ig'"),
    "EAP-IG with edges_per_forward": (lambda m, t: edge_attribution(m, *_pair(t), lambda logits: logits[:, -1, 13],
                                                                    edges_per_forward=4),
                                      ValueError, "edges_per_forward is an option of method='exact', not 'eap-ig'"),
    "head scores of given tokens with seq_len": (lambda m, t: head_scores(m, tokens=t, seq_len=20, seed=1),
                                                 ValueError, "seq_len, seed make the default repeated random"),
    "hook_result without its flag": (lambda m, t: temporary_hooks(m, [("blocks.0.attn.hook_result",
                                                                       lambda a, h: a)]).__enter__(),
                                     ValueError, "set_use_attn_result"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_is_a_typed_error_before_any_forward(model, tokens, case):
    call, error, message = BAD_CALLS[case]
    count = []
    with temporary_hooks(model, [("hook_embed", lambda act, hook: count.append(1))]):
        with pytest.raises(error, match=message) as err:
            call(model, tokens)
        forwards = len(count)
    assert "\n" not in str(err.value), "one line"
    assert attached_hooks(model) == []
    source_forwards = 1 if case.startswith("patch") else 0  # the test's own run_with_cache for the source
    assert forwards == source_forwards, f"{case}: {forwards - source_forwards} forward(s) ran before the error"


def test_steering_positions_outside_the_input_are_an_error_not_a_no_op(model, tokens):
    n = tokens.shape[1]
    with steer(model, torch.ones(model.cfg.d_model), layer=0, positions=[100]), \
            pytest.raises(ValueError, match=f"fit the {n}-token input"):
        model(tokens)
    rows = torch.ones(n + 5, model.cfg.d_model)  # more rows than positions: refused in a forward and in generate
    with steer(model, rows, layer=0):
        with pytest.raises(ValueError, match="do not all fit"):
            model(tokens)
        with pytest.raises(ValueError, match="do not all fit"):
            generate(model, "She opened the door and saw the garden", max_new_tokens=3)
    # a position named twice would be steered twice: refused as given, and at the forward once -1 is n - 1
    with pytest.raises(ValueError, match=r"positions \[2, 2\] name a position twice"):
        steer(model, torch.ones(model.cfg.d_model), layer=0, positions=[2, 2]).__enter__()
    with steer(model, torch.ones(model.cfg.d_model), layer=0, positions=[n - 1, -1]), \
            pytest.raises(ValueError, match=f"name a position of the {n}-token input twice"):
        model(tokens)
    assert attached_hooks(model) == []


CONTRACT_BREAKERS = {
    "a float": lambda logits: 1.0,
    "an integer tensor": lambda logits: logits[:, -1].argmax(-1),
    "per position": lambda logits: logits[:, :, 7],
    "wrong batch": lambda logits: logits[:1, -1, 7].repeat(5),
}


@pytest.mark.parametrize("kind", list(CONTRACT_BREAKERS))
@pytest.mark.parametrize("fn", [activation_patching, attribution_patching])
def test_a_metric_that_breaks_the_contract_fails_before_any_forward(model, fn, kind):
    clean = interp.to_tokens(model, ["The cat sat on the mat", "The dog ran in the park"])
    corrupt = interp.to_tokens(model, ["The dog sat on the mat", "The cat ran in the park"])
    count = []
    with temporary_hooks(model, [("hook_embed", lambda act, hook: count.append(1))]):
        with pytest.raises(MetricError, match="the metric returned"):
            fn(model, clean, corrupt, CONTRACT_BREAKERS[kind])
        assert count == []


def test_attribution_refuses_a_metric_that_ignores_the_logits(model):
    clean, corrupt = (interp.to_tokens(model, p) for p in ("The cat sat", "The dog sat"))
    constant = torch.tensor(1.0)
    with pytest.raises(MetricError, match="does not depend on the logits"):
        attribution_patching(model, clean, corrupt, lambda logits: constant)


def _no_value_on_prompt_1(bad: float):
    """A metric that is finite on check_metric's zero logits and on prompt 0, and ``bad`` on prompt 1 of any real
    run: log(p_a - p_b) where p_a < p_b, or a log-probability that underflowed."""
    def metric(logits):
        real = logits.detach().abs().flatten(1).sum(1) > 0
        return logits[:, -1, 7] + torch.where(real & (torch.arange(len(logits), device=logits.device) == 1), bad, 0.0)
    return metric


NO_VALUE_CALLS = {
    "activation_patching": lambda m, c, x, f: activation_patching(m, c, x, f),
    "attribution_patching": lambda m, c, x, f: attribution_patching(m, c, x, f),
    **{f"edge_attribution {method} {direction}": lambda m, c, x, f, method=method, direction=direction:
       edge_attribution(m, c, x, f, method=method, direction=direction, **({"steps": 2} if method == "eap-ig" else {}))
       for method in ("exact", "eap", "eap-ig") for direction in ("noising", "denoising")},
    "faithfulness": lambda m, c, x, f: interp.circuits.faithfulness(m, [], c, x, f),
}


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
@pytest.mark.parametrize("case", list(NO_VALUE_CALLS))
def test_a_metric_without_a_value_on_a_run_is_an_error_not_nan_or_a_plausible_score(model, case, bad):
    """EAP used to return finite scores here (it reads only the gradient, and log's is finite where log is NaN),
    and the exact methods NaN everywhere. Now the unpatched runs' metrics are checked first: at most the clean
    and corrupted forwards (and a gradient run's) come before the error, never the patched ones."""
    clean = interp.to_tokens(model, ["The cat sat on the mat", "The dog ran in the park"])
    corrupt = interp.to_tokens(model, ["The dog sat on the mat", "The cat ran in the park"])
    forwards = []
    message = rf"the metric is {bad} on the .*run.* for prompt 1: it must be finite"
    with temporary_hooks(model, [("hook_embed", lambda act, hook: forwards.append(1))]), \
            pytest.raises(MetricError, match=message):
        NO_VALUE_CALLS[case](model, clean, corrupt, _no_value_on_prompt_1(bad))
    assert len(forwards) <= 2
    assert attached_hooks(model) == []


def _no_value_on(model, clean, corrupted, where: str):
    """A metric with no value on prompt 1 of some runs only: ``where="corrupted"``, the run of ``corrupted``;
    ``where="elsewhere"``, every run that is neither the clean nor the corrupted run (a patched run, an IG
    step). The runs are told apart by their logits at the last position; zero logits (``check_metric``'s) have
    a value."""
    with torch.no_grad():
        clean_last, corrupted_last = model(clean)[:, -1], model(corrupted)[:, -1]

    def like(last, reference):
        return last.shape == reference.shape and bool(torch.allclose(last, reference, rtol=0, atol=1e-4))

    def metric(logits):
        last = logits.detach()[:, -1]
        if where == "corrupted":
            bad = like(last, corrupted_last)
        else:
            bad = bool(last.abs().sum() > 0) and not (like(last, clean_last) or like(last, corrupted_last))
        prompt_1 = torch.arange(len(logits), device=logits.device) == 1
        return logits[:, -1, 7] + torch.where(prompt_1 & bad, float("nan"), 0.0)
    return metric


_NOISING, _DENOISING = interp.circuits._SOURCE_RUN, interp.circuits._BASE_RUN
# Which run each method must name when the corrupted run alone has no value, and which when only the runs that
# are neither clean nor corrupted have none (None: the method runs none of those, and its result is finite).
ONE_RUN_WITHOUT_VALUE = {
    "activation_patching": ("the corrupted run", "a patched run"),
    "attribution_patching": ("the corrupted run", None),
    "edge_attribution exact noising": (_NOISING, "a patched run"),
    "edge_attribution exact denoising": (_DENOISING, "a patched run"),
    "edge_attribution eap noising": (_NOISING, None),
    "edge_attribution eap denoising": (_DENOISING, None),
    "edge_attribution eap-ig noising": (_NOISING, "integrated-gradient step 1 of 2"),
    "edge_attribution eap-ig denoising": (_DENOISING, "integrated-gradient step 1 of 2"),
    "faithfulness": ("the corrupted run", "a patched run"),
}


@pytest.mark.parametrize("where", ["corrupted", "elsewhere"])
@pytest.mark.parametrize("case", list(ONE_RUN_WITHOUT_VALUE))
def test_every_run_a_method_reads_is_checked_not_only_the_first(model, case, where):
    """The test above has no value on every run, so it passes as long as one run is checked. Here one run has
    none: the corrupted run (every method reads it, from either side), or only the patched runs and IG steps.
    Each method must name that run, and one that runs no such run must return finite scores."""
    assert set(ONE_RUN_WITHOUT_VALUE) == set(NO_VALUE_CALLS)
    clean = interp.to_tokens(model, ["The cat sat on the mat", "The dog ran in the park"])
    corrupt = interp.to_tokens(model, ["The dog sat on the mat", "The cat ran in the park"])
    call = NO_VALUE_CALLS[case]
    if case == "faithfulness":  # an empty circuit's run is the corrupted run: keep half the edges
        def call(m, c, x, f):
            return interp.circuits.faithfulness(m, interp.circuits.graph(m).edges[::2], c, x, f)
    run = ONE_RUN_WITHOUT_VALUE[case][where == "elsewhere"]
    metric = _no_value_on(model, clean, corrupt, where)
    if run is None:
        result = call(model, clean, corrupt, metric)
        assert torch.isfinite(torch.as_tensor(result.scores)).all()
    else:
        with pytest.raises(MetricError, match=rf"the metric is nan on {re.escape(run)} for prompt 1: it must be"):
            call(model, clean, corrupt, metric)
    assert attached_hooks(model) == []


def test_per_prompt_and_scalar_metrics_give_the_same_scores(model):
    clean = interp.to_tokens(model, ["The cat sat on the mat", "The dog ran in the park"])
    corrupt = interp.to_tokens(model, ["The dog sat on the mat", "The cat ran in the park"])
    per_prompt = activation_patching(model, clean, corrupt, lambda logits: logits[:, -1, 42])
    scalar = activation_patching(model, clean, corrupt, lambda logits: logits[:, -1, 42].mean())
    torch.testing.assert_close(per_prompt.scores, scalar.scores)
    assert per_prompt.clean_metric == pytest.approx(scalar.clean_metric)


def test_load_errors_name_what_is_wrong(tmp_path, tiny_checkpoint):
    if DEFAULT_BACKEND == "bridge" and "hooked" not in interp.backends.AVAILABLE_BACKENDS:
        with pytest.raises(BackendUnavailableError, match="install 'transformer-lens<4'"):
            load_model("gpt2", backend="hooked")  # before any download: the network guard would fail the test
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
            load_model("bundled", device="cuda")
    with pytest.raises(UnknownModelError, match="got None"):
        load_model(None)
    bad = tmp_path / "no-n_embd"
    bad.mkdir()
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    del config["n_embd"]
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(CorruptCheckpointError, match="lacks n_embd"):
        load_model(bad, device="cpu")
    (bad / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (bad / "tokenizer.json").write_text('{"version": "1.0", "model": 5')
    with pytest.raises(CorruptCheckpointError, match="tokenizer.json"):
        load_model(bad, device="cpu")


def test_head_cache_prints_shapes_not_tensors(model, tokens):
    text = repr(cache_heads(model, tokens, kinds=("q", "pattern")))
    assert f"q: (2, 2, 1, {tokens.shape[1]}, 64)" in text and "MiB" in text and "tensor(" not in text


def test_every_result_prints_on_one_line_with_shapes_not_tensors(model, tokens):
    """What IPython shows for each result: one line, tensors as their shape and dtype, long label tuples cut
    to their ends and length, floats six digits."""
    from interp import circuits
    from interp import sae as S
    from interp.architecture import split_attention
    from interp.backends import gpt2_weights
    from interp.caching import decompose_resid, residual_stream
    from interp.heads import corpus_head_scores

    clean = torch.cat([tokens, tokens.flip(1)])
    corrupted = clean.clone()
    corrupted[:, 3] = 1000

    def metric(logits):
        return logits[:, -1, 13]

    eap = circuits.edge_attribution(model, clean, corrupted, metric, method="eap")
    results = [head_scores(model), corpus_head_scores(model, clean), logit_lens(model, tokens),
               direct_logit_attribution(model, tokens, 13), activation_patching(model, clean, corrupted, metric),
               temperature_sweep(model, "The cat", [0.1, 1.0, 10.0]),
               generate(model, "The cat", max_new_tokens=3, temperature=0), residual_stream(model, tokens),
               decompose_resid(model, tokens, per_head=True), eap,
               circuits.faithfulness_curve(model, eap, clean, corrupted, metric),
               S.evaluate(model, S.load("bundled"), clean), split_attention(model, 0), gpt2_weights(model)]
    for result in results:
        text = repr(result)
        assert "\n" not in text and "tensor(" not in text and len(text) < 2000, text[:300]
        assert text.startswith(type(result).__name__ + "("), text[:100]
    n = tokens.shape[1]
    assert f"resid_pre=Tensor[2, 1, {n}, 128] float32" in repr(results[7])
    assert "labels=('embed', 'pos_embed', ..., 'L1 mlp'; 10 items)" in repr(results[8])
    assert "scores=Tensor[46] float32" in repr(eap) and "temperatures=(0.1, 1.0, 10.0)" in repr(results[5])
    assert f"clean_metric={float(f'{eap.clean_metric:.6g}')!r}" in repr(eap)


def test_estimate_works_on_the_weightless_skeleton():
    estimate = estimate_cache_bytes(interp.architecture("gpt2"), 1, 1024, kinds=("pattern",))
    assert estimate.total == 12 * 12 * 1024 * 1024 * 4


def _long_runs(model):
    """The runs whose length depends on the input (edges, steps, rows), each with the bar's unit."""
    from interp import sae as S
    from interp.circuits import edge_attribution, graph
    from interp.heads import copying_task, corpus_head_scores

    clean, corrupt, metric = copying_task(model, n_pairs=2, seq_len=6, seed=0)
    rows = torch.randint(0, model.cfg.d_vocab, (3, 12), generator=torch.Generator().manual_seed(0))
    rows[:, 0] = 50256
    bundled_sae = S.load("bundled")
    return {"exact edge patching": (lambda progress: edge_attribution(model, clean, corrupt, metric, method="exact",
                                                                      progress=progress), graph(model).edges, "edge"),
            "EAP-IG": (lambda progress: edge_attribution(model, clean, corrupt, metric, method="eap-ig", steps=3,
                                                         progress=progress), range(3), "step"),
            "evaluate SAE": (lambda progress: S.evaluate(model, bundled_sae, rows, progress=progress), rows, "row"),
            "head scores": (lambda progress: corpus_head_scores(model, rows, progress=progress), rows, "row")}


@pytest.mark.parametrize("desc", ["exact edge patching", "EAP-IG", "evaluate SAE", "head scores"])
def test_long_runs_show_progress_once_they_take_2_s_unless_asked_not_to(model, desc, monkeypatch, capsys):
    from interp import _progress

    run, items, unit = _long_runs(model)[desc]
    monkeypatch.setattr(_progress, "DELAY_S", 0.0)  # these small runs are over long before 2 s
    run(False)
    assert desc not in capsys.readouterr().err
    run(True)
    err = capsys.readouterr().err
    assert desc in err and f"{len(items)}/{len(items)}" in err and unit in err
