"""Temperature sweeps (with hypothesis laws), seeded batched sampling, KV-cache equivalence, text metrics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interp.loading import load_model
from interp.sampling import (
    continuation_logprobs,
    distinct_n,
    distributions,
    generate,
    repeated_ngram_fraction,
    sweep_metrics,
    temperature_sweep,
)

PROMPTS = ["The meaning of life is", "In a hole in the ground there lived a hobbit, and every morning he"]

def _metrics(probs, reference):
    """sweep_metrics on probabilities (their logarithms, and the reference's, computed here)."""
    return sweep_metrics(probs, probs.log(), reference.log(), probs.topk(min(50, probs.shape[-1])).values)


logit_vectors = st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=40).map(
    lambda xs: torch.tensor(xs, dtype=torch.float64))
temperatures = st.floats(0.01, 100, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(logit_vectors, st.lists(temperatures, min_size=1, max_size=6))
def test_probabilities_sum_to_one(logits, temps):
    probs = distributions(logits, temps + [0.0])
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(temps) + 1, dtype=torch.float64))
    assert (probs >= 0).all()


@settings(max_examples=200, deadline=None)
@given(logit_vectors, temperatures, temperatures)
def test_entropy_is_non_decreasing_in_temperature(logits, t1, t2):
    low, high = sorted((t1, t2))
    probs = distributions(logits, [low, high])
    entropy = _metrics(probs, probs[1])["entropy_nats"]
    assert entropy[0] <= entropy[1] + 1e-9
    if 1e-6 < (logits.max() - logits.min()) / high < 30:  # a second token with representable mass
        assert entropy[1] > 0


@settings(max_examples=100, deadline=None)
@given(logit_vectors)
def test_cold_limit_is_one_hot_on_the_argmax(logits):
    top_two = logits.topk(2).values
    if top_two[0] - top_two[1] < 2e-3:  # a near-tie: at T=1e-4 the runner-up keeps exp(-gap/T) of the mass
        return
    cold = distributions(logits, [1e-4])[0]
    assert cold[logits.argmax()] == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(distributions(logits, [0])[0], torch.nn.functional.one_hot(logits.argmax(), len(logits)).double())


@settings(max_examples=100, deadline=None)
@given(logit_vectors)
def test_hot_limit_is_uniform(logits):
    hot = distributions(logits, [1e6])[0]
    torch.testing.assert_close(hot, torch.full_like(hot, 1 / len(hot)), atol=1e-5, rtol=0)


def test_metrics_on_known_distributions():
    uniform = torch.full((1, 8), 1 / 8, dtype=torch.float64)
    metrics = _metrics(uniform, uniform[0])
    assert metrics["entropy_bits"][0] == pytest.approx(3.0)
    assert metrics["effective_vocab"][0] == pytest.approx(8.0)
    assert metrics["top5_mass"][0] == pytest.approx(5 / 8) and metrics["kl_from_t1"][0] == pytest.approx(0)
    skewed = torch.tensor([[0.5, 0.25, 0.25, 0, 0, 0, 0, 0]], dtype=torch.float64)
    metrics = _metrics(skewed, uniform[0])
    assert metrics["entropy_bits"][0] == pytest.approx(1.5)
    assert metrics["kl_from_t1"][0] == pytest.approx(math.log(8) - 1.5 * math.log(2))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), -float("inf")])
def test_bad_temperatures(bad, tiny_model):
    with pytest.raises(ValueError, match="finite number >= 0"):
        temperature_sweep(tiny_model, "Hello", [1.0, bad])
    with pytest.raises(ValueError, match="finite number >= 0"):
        generate(tiny_model, "Hello", temperature=bad)


def test_empty_temperature_list(tiny_model):
    with pytest.raises(ValueError, match="temperatures is empty"):
        temperature_sweep(tiny_model, "Hello", [])


def test_sweep_is_consistent_with_the_model(tiny_model):
    sweep = temperature_sweep(tiny_model, PROMPTS[0], [0, 0.5, 1, 2], k=5)
    with torch.no_grad():
        logits = tiny_model(tiny_model.to_tokens(PROMPTS[0]))[0, -1].double()
    torch.testing.assert_close(sweep.probs[2], logits.softmax(-1))
    assert sweep.kl_from_t1[2] == pytest.approx(0, abs=1e-9)
    assert sweep.greedy_prob[0] == 1 and sweep.entropy_nats[0] == 0
    assert sweep.top_tokens[0, 0] == logits.argmax()
    assert sweep.effective_vocab[3] == pytest.approx(math.exp(sweep.entropy_nats[3]))
    # against torch.distributions, from the model's logits in float64 (T = 0.5 and 2; the logits of a forward
    # that unembeds every position differ from the sweep's in float32's last places)
    reference = torch.distributions.Categorical(logits=logits)
    for i, temperature in ((1, 0.5), (3, 2.0)):
        tempered = torch.distributions.Categorical(logits=logits / temperature)
        assert float(sweep.entropy_nats[i]) == pytest.approx(float(tempered.entropy()), rel=1e-6)
        assert float(sweep.kl_from_t1[i]) == pytest.approx(float(torch.distributions.kl_divergence(
            tempered, reference)), rel=1e-5, abs=1e-9)
        assert float(sweep.top5_mass[i]) == pytest.approx(float(tempered.probs.topk(5).values.sum()), rel=1e-6)
    assert sweep.to_frame()["T"].tolist() == [0, 0.5, 1, 2]


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["float32", "float64"])
def exact_model(request, tiny_checkpoint):
    """The exact equalities below hold in float32 and float64; in float16 and bfloat16 the two paths round
    differently, so a near-tie can go the other way (the README says so)."""
    return load_model(tiny_checkpoint, device="cpu", dtype=request.param)


def test_kv_cache_equals_no_cache_under_greedy(exact_model):
    fast = generate(exact_model, PROMPTS, max_new_tokens=12, temperature=0)
    slow = generate(exact_model, PROMPTS, max_new_tokens=12, temperature=0, use_kv_cache=False)
    assert torch.equal(fast.tokens, slow.tokens)


def test_kv_cache_equals_no_cache_when_sampling(exact_model):
    """Same seeds, same tokens: the cached forward gives the model's own distribution."""
    fast = generate(exact_model, PROMPTS, max_new_tokens=12, temperature=1.0, top_k=50, seed=3)
    slow = generate(exact_model, PROMPTS, max_new_tokens=12, temperature=1.0, top_k=50, seed=3, use_kv_cache=False)
    assert torch.equal(fast.tokens, slow.tokens)


def test_batched_equals_unbatched_with_padding(exact_model):
    prompts = PROMPTS + ["Hi"]  # three different lengths: left padding must not change anything
    batched = generate(exact_model, prompts, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    for i, prompt in enumerate(prompts):
        alone = generate(exact_model, prompt, max_new_tokens=10, temperature=1.0, top_p=0.9, seeds=[7 + i])
        assert torch.equal(batched.tokens[i], alone.tokens[0]), prompt


def test_seeded_sampling_is_reproducible_and_seeds_matter(tiny_model):
    a = generate(tiny_model, PROMPTS, max_new_tokens=15, seed=1)
    b = generate(tiny_model, PROMPTS, max_new_tokens=15, seed=1)
    c = generate(tiny_model, PROMPTS, max_new_tokens=15, seed=2)
    assert torch.equal(a.tokens, b.tokens) and a.texts == b.texts
    assert not torch.equal(a.tokens, c.tokens)


def test_top_k_one_is_greedy(tiny_model):
    assert torch.equal(generate(tiny_model, PROMPTS, max_new_tokens=8, top_k=1, temperature=5.0).tokens,
                       generate(tiny_model, PROMPTS, max_new_tokens=8, temperature=0).tokens)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": ""}, "non-empty string"),
        ({"prompts": "x " * 200}, "context window of 128"),
        ({"prompts": "Hello", "max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"prompts": "Hello", "top_p": 0}, "top_p"),
        ({"prompts": "Hello", "top_k": 0}, "top_k"),
        ({"prompts": ["a", "b"], "seeds": [1]}, "2 prompts"),
        ({"prompts": "Hello", "seed": -1}, "seed must be >= 0"),
        ({"prompts": "Hello", "seeds": [2**64]}, "seed must be in 0..18446744073709551615"),
    ],
)
def test_generate_validates_input(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_model, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": None}, "prompts must be a string or a list of strings, got NoneType"),
        ({"prompts": "Hello", "max_new_tokens": 2.0}, "max_new_tokens must be an integer"),
        ({"prompts": "Hello", "top_p": "0.9"}, "top_p must be a number"),
        ({"prompts": "Hello", "seed": 1.5}, "seed must be an integer"),
        ({"prompts": "Hello", "seeds": 3}, "seeds must be a list of integers, one per prompt"),
        ({"prompts": "Hello", "seeds": ["a"]}, "seed must be an integer"),
    ],
)
def test_generate_refuses_the_wrong_types(tiny_model, kwargs, message):
    with pytest.raises(TypeError, match=message):
        generate(tiny_model, **kwargs)


def test_prompt_plus_new_tokens_must_fit(tiny_model):
    prompt = "word " * 100  # about 100 tokens: fits alone, not with 40 more
    generate(tiny_model, prompt, max_new_tokens=5)
    with pytest.raises(ValueError, match="leaves room for 88"):
        generate(tiny_model, prompt, max_new_tokens=40)


def test_continuation_logprobs_match_the_model(tiny_model):
    gen = generate(tiny_model, PROMPTS, max_new_tokens=6, temperature=1.0, seed=5)
    assert len({len(ids) for ids in gen.prompt_tokens}) > 1  # batched by prompt length: cover several
    logprobs = continuation_logprobs(tiny_model, gen)
    assert logprobs.shape == (len(PROMPTS), 6) and (logprobs <= 0).all()
    for row, (ids, new) in enumerate(zip(gen.prompt_tokens, gen.tokens)):
        seq = torch.cat([ids, new]).unsqueeze(0)
        for j in range(len(new)):
            with torch.no_grad():
                expected = tiny_model(seq[:, : len(ids) + j])[0, -1].log_softmax(-1)[new[j]]
            assert logprobs[row, j] == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize(
    ("tokens", "d1", "d2", "rep4"),
    [
        ([1, 2, 3, 4, 5, 6], 1.0, 1.0, 0.0),
        ([7, 7, 7, 7, 7, 7], 1 / 6, 1 / 5, 2 / 3),
        ([1, 2, 1, 2, 1, 2], 2 / 6, 2 / 5, 1 / 3),
    ],
)
def test_repetition_metrics(tokens, d1, d2, rep4):
    assert distinct_n(tokens, 1) == pytest.approx(d1)
    assert distinct_n(tokens, 2) == pytest.approx(d2)
    assert repeated_ngram_fraction(tokens, 4) == pytest.approx(rep4)


distinct_logits = st.lists(st.integers(-200, 200), min_size=2, max_size=40, unique=True).map(
    lambda xs: torch.tensor(xs, dtype=torch.float64) / 10)  # distinct in float32 too


@settings(max_examples=100, deadline=None)
@given(distinct_logits, st.integers(1, 10), st.floats(0.05, 1.0), st.floats(0.1, 10), st.integers(0, 2**31 - 1))
def test_top_k_and_top_p_never_sample_outside_the_allowed_set(logits, k, p, temperature, seed):
    """The allowed set, computed here independently: the k largest logits, then the smallest prefix of the
    sorted T-distribution whose mass reaches p. (Logits are distinct: a tie at the k-th value keeps all tied
    tokens, as Hugging Face's top-k does.)"""
    from interp.sampling import sample_next

    scaled = logits / temperature
    order = scaled.argsort(descending=True)[:k]
    probs = scaled[order].softmax(-1)
    keep = int((probs.cumsum(-1) - probs < p).sum())
    allowed = set(order[:keep].tolist())
    gen = torch.Generator().manual_seed(seed)
    batch = logits.unsqueeze(0).expand(20, -1)
    drawn = sample_next(batch, temperature, [gen] * 20, k, p)
    assert set(drawn.tolist()) <= allowed


def test_greedy_row_lists_no_zero_probability_ties_and_no_negative_zero(tiny_model):
    sweep = temperature_sweep(tiny_model, "The cat sat", [0, 1.0], k=5)
    assert len(sweep.top_strings[0]) == 1 and len(sweep.top_strings[1]) == 5
    assert str(float(sweep.entropy_bits[0])) == "0.0"


def test_text_metrics_refuse_what_has_no_n_grams_to_count(tiny_model):
    """n = 0 or below counted nonsense (distinct_n([1, 2, 3], 0) was 0.25, with n = -1 0.4)."""
    for n, error in ((0, ValueError), (-1, ValueError), (2.5, TypeError)):
        for metric in (distinct_n, repeated_ngram_fraction):
            with pytest.raises(error, match="n must be"):
                metric([1, 2, 3], n)
    with pytest.raises(ValueError, match="one continuation"):
        distinct_n(torch.ones(2, 3, dtype=torch.long), 2)
    assert math.isnan(distinct_n([1], 2)) and distinct_n(torch.tensor([1, 2, 1, 2]), 2) == 2 / 3
    with pytest.raises(TypeError, match="what interp.sampling.generate returns"):
        continuation_logprobs(tiny_model, "The cat")

