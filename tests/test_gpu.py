"""The ``gpu`` tier: every public function on CUDA against the same call on the CPU.

Skipped where no CUDA device is visible (CI has none). Run it on a GPU machine with ``pytest -m gpu``.
Tolerances: float32 within 1e-4; float16 and bfloat16 log-probs within 0.02 and 0.15 nats of float32 on
the CPU (their 11- and 8-bit mantissas; the same bounds ``test_trust`` holds on the CPU).
"""

from __future__ import annotations

import json

import pytest
import torch

import interp
from experiments import __main__ as runner
from interp.backends import AVAILABLE_BACKENDS
from interp.caching import cache_heads
from interp.interventions import ablate_heads, patch_activation
from interp.loading import load_model
from interp.sampling import continuation_logprobs, generate, temperature_sweep

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device is visible")]

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def pairs(tiny_checkpoint):
    return {b: {d: load_model(tiny_checkpoint, backend=b, device=d) for d in ("cpu", "cuda")} for b in AVAILABLE_BACKENDS}


def _close(a, b, atol=1e-4):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a.detach().float().cpu(), b.detach().float().cpu(), rtol=1e-4, atol=atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, atol)
    else:
        assert a == pytest.approx(b, abs=atol)


def _tokens(model):
    return model.to_tokens([PROMPT, "The quick brown fox jumps over the lazy dog again and"])


FUNCTIONS = {
    "forward": lambda m: m(_tokens(m)).log_softmax(-1),
    "cache_heads": lambda m: [cache_heads(m, _tokens(m), kinds=k)[k] for k in ("q", "k", "v", "z", "pattern",
                                                                                "result")],
    "residual_stream": lambda m: list(vars(interp.residual_stream(m, _tokens(m))).values()),
    "decompose_resid": lambda m: interp.decompose_resid(m, _tokens(m), per_head=True).components,
    "direct_logit_attribution": lambda m: interp.direct_logit_attribution(m, _tokens(m)[:1], 42).contributions,
    "logit_lens": lambda m: interp.logit_lens(m, _tokens(m)[:1]).top_probs,
    "head_scores": lambda m: list(interp.head_scores(m, seq_len=20, batch=2).scores.values()),
    "ablate_heads": lambda m: _under(m, ablate_heads(m, [(0, 1), (1, 2)])),
    "mean_ablation": lambda m: _under(m, ablate_heads(m, [(1, 0)], mode="mean", reference=_tokens(m))),
    "patch_activation": lambda m: _under(m, patch_activation(
        m, "blocks.1.hook_resid_pre", interp.residual_stream(m, _tokens(m), kinds=("resid_pre",)).resid_pre[1]
        .flip(0))),
    "temperature_sweep": lambda m: temperature_sweep(m, PROMPT, [0, 0.5, 1, 10]).entropy_nats,
    "generate_greedy": lambda m: generate(m, [PROMPT, "Once"], max_new_tokens=8, temperature=0).tokens,
    "generate_greedy_under_hooks": lambda m: _generate_under(m),
    "continuation_logprobs": lambda m: continuation_logprobs(
        m, generate(m, [PROMPT], max_new_tokens=6, temperature=0)),
}


def _under(model, intervention):
    with intervention, torch.no_grad():
        return model(_tokens(model)).log_softmax(-1)


def _generate_under(model):
    with ablate_heads(model, [(0, 0), (1, 1)]):
        return generate(model, PROMPT, max_new_tokens=8, temperature=0).tokens


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_cuda_equals_cpu_in_float32(pairs, backend, name):
    with torch.no_grad():
        on_cpu = FUNCTIONS[name](pairs[backend]["cpu"])
        on_gpu = FUNCTIONS[name](pairs[backend]["cuda"])
    _close(on_gpu, on_cpu)


def test_weights_live_on_the_gpu(pairs, backend):
    model = pairs[backend]["cuda"]
    assert {p.device.type for p in model.parameters()} == {"cuda"}


def test_seeded_sampling_is_reproducible_on_the_gpu(pairs, backend):
    model = pairs[backend]["cuda"]
    first, second = (generate(model, [PROMPT] * 3, max_new_tokens=10, temperature=1.0, seed=4).tokens
                     for _ in range(2))
    assert torch.equal(first, second)
    with ablate_heads(model, [(0, 0)]):
        first, second = (generate(model, PROMPT, max_new_tokens=10, temperature=1.0, seed=4).tokens
                         for _ in range(2))
    assert torch.equal(first, second)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 0.02), (torch.bfloat16, 0.15)])
def test_half_precision_on_the_gpu(tiny_checkpoint, pairs, backend, dtype, tolerance):
    model = load_model(tiny_checkpoint, backend=backend, device="cuda", dtype=dtype)
    tokens = _tokens(model)
    with torch.no_grad():
        half = model(tokens).float().log_softmax(-1).cpu()
        full = pairs[backend]["cpu"](tokens.cpu()).log_softmax(-1)
    assert (half - full).abs().max() < tolerance
    assert generate(model, PROMPT, max_new_tokens=4, temperature=1.0, seed=0).tokens.shape == (1, 4)
    cache_heads(model, tokens, kinds=("pattern", "result"))
    interp.direct_logit_attribution(model, tokens[:1], 42)


def test_runner_on_cuda(tiny_checkpoint, tmp_path):
    assert runner.main(["--model", str(tiny_checkpoint), "--out", str(tmp_path), "--no-images",
                        "--device", "cuda"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())["figures"]
    assert manifest and all(entry for entry in manifest.values())


def test_sae_training_on_cuda_follows_the_cpu(tmp_path):
    """``interp.sae.train(device="cuda")`` takes the CPU's steps: the same seeded init and batches, the weights
    after 5 steps within 1e-3 (TopK's choices can differ only at near ties), and the SAE it saves is the one
    it returns."""
    from pathlib import Path

    from interp import harvest as hv
    from interp import sae as S

    model = load_model("bundled", device="cpu")
    hook = "blocks.1.hook_resid_pre"
    harvested = hv.open(hv.harvest(model, Path(json.__file__).parent, hooks=[hook], out=tmp_path / "h",
                                   progress=False, context=64, shard_rows=64, pattern="**/*.py"))
    args = dict(hook=hook, d_sae=256, k=8, batch_size=256, steps=5, lr=1e-3, dead_after=512, progress=False)
    cpu = S.train(harvested, **args)
    gpu = S.train(harvested, **args, device="cuda", out=tmp_path / "run")
    assert gpu.W_enc.device.type == "cuda"
    for (name, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
        _close(p, q, atol=1e-3)
    saved = S.load(tmp_path / "run" / "sae")
    for (name, p), (_, q) in zip(saved.named_parameters(), gpu.named_parameters()):
        assert torch.equal(p, q.cpu()), name


def test_a_cpu_sae_beside_a_cuda_model_is_refused_before_any_forward():
    """``interp.sae.load`` gives a CPU SAE by default: spliced into a CUDA model it is refused up front, and moved
    to the model's device it serves (the same features as on the CPU, within 1e-4)."""
    from interp import sae as S

    model = load_model("bundled", device="cuda")
    sae = S.load("bundled")
    with pytest.raises(ValueError, match=r"the SAE is on cpu and the model on cuda:0: move the SAE with "
                                         r"sae.to\('cuda:0'\)"):
        S.splice(model, sae).__enter__()
    tokens = _tokens(model)
    with torch.no_grad(), S.splice(model, sae.to("cuda")):
        spliced = model(tokens)
    cpu_model, cpu_sae = load_model("bundled", device="cpu"), S.load("bundled")
    with torch.no_grad(), S.splice(cpu_model, cpu_sae):
        _close(spliced.log_softmax(-1), cpu_model(tokens.cpu()).log_softmax(-1))
