"""Sparse autoencoders: SAELens's format both ways, ``evaluate`` against SAELens's evaluation and the harvest's
packing against SAELens's (the oracle tests run where ``sae-lens`` installs, on TransformerLens 3.9), splicing
against a hand-written Hugging Face hook, the evaluation's definitions against SAEs whose answers are known,
feature attribution against finite differences, logit effects against Hugging Face's weights, and training
(seeded, resumed, and one process against two under torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import interp
from interp import harvest as hv
from interp import sae as S
from interp.checkpoints import write_random_checkpoint
from interp.errors import DeviceUnavailableError, SAEFormatError
from interp.hooks import attached_hooks
from interp.loading import load_model
from interp.metrics import metric_values

RAW = dict(fold_ln=False, center_writing_weights=False, center_unembed=False)
CORPUS = Path(json.__file__).parent  # the stdlib's json package
HOOK = "blocks.1.hook_resid_pre"
REPO = Path(__file__).resolve().parent.parent
TEXTS = ["The cat sat on the mat and then", "def main():\n    return 0 if x else 1"]


def two_rows(model, n: int = 8):
    """Two rows of ``n`` tokens, each starting with BOS."""
    return torch.cat([interp.to_tokens(model, text)[:, :n] for text in TEXTS])


def random_sae(architecture: str, d_in: int, d_sae: int = 48, seed: int = 0, hook: str = HOOK) -> S.SAE:
    """Random weights with non-zero biases (and thresholds), so a dropped term shows."""
    generator = torch.Generator().manual_seed(seed)
    sae = S.SAE(d_in, d_sae, hook_name=hook, architecture=architecture, k=5 if architecture == "topk" else None)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (0.3 if p.ndim == 2 else 0.1))
        if sae.threshold is not None:
            sae.threshold.copy_(torch.rand(d_sae, generator=generator) * 0.2)
    return sae


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("sae") / "two-layer", seed=3, n_layer=2, n_embd=64,
                                   n_head=4, n_positions=64, with_tokenizer=True)


@pytest.fixture(scope="module", params=interp.backends.AVAILABLE_BACKENDS)
def raw_model(request, checkpoint):
    return load_model(checkpoint, backend=request.param, device="cpu", **RAW)


@pytest.fixture(scope="module")
def bundled():
    return load_model("bundled", device="cpu")


@pytest.fixture(scope="module")
def harvested(bundled, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae-harvest") / "json"
    hv.harvest(bundled, CORPUS, hooks=[HOOK], out=out, progress=False, context=64, shard_rows=64,
               pattern="**/*.py")
    return hv.open(out)


@pytest.mark.parametrize("architecture", S.ARCHITECTURES)
def test_encode_and_decode_are_saelens_formulas_from_the_raw_weights(architecture):
    sae = random_sae(architecture, 16)
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(1)).double()
    W_enc, b_enc, W_dec, b_dec = (getattr(sae, n).detach().double() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    pre = (x - b_dec) @ W_enc + b_enc
    if architecture == "standard":
        f = pre.relu()
    elif architecture == "jumprelu":
        f = torch.where(pre > sae.threshold.detach().double(), pre.relu(), 0)
    else:
        top = pre.topk(5, dim=-1).indices
        f = torch.zeros_like(pre).scatter(-1, top, pre.gather(-1, top).relu())
    torch.testing.assert_close(sae.encode(x.float()).double(), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x.float()).double(), f @ W_dec + b_dec, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("shape", "k"), [((300, 4096), 16), ((2, 3, 24576), 32), ((7, 48), 5), ((4, 97), 3),
                                          ((3, 64), 64)])
def test_blocked_top_k_is_torch_topk(shape, k):
    generator = torch.Generator().manual_seed(0)
    pre = torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_(True)
    values, indices = S._top_k(pre, k)
    expected_values, expected_indices = pre.topk(k, dim=-1)
    dense = torch.zeros_like(pre).scatter(-1, indices, values)  # no ties: the same latents with the same values
    assert torch.equal(dense, torch.zeros_like(pre).scatter(-1, expected_indices, expected_values))
    (grad,) = torch.autograd.grad((values.relu() * 3).sum(), pre)
    assert torch.equal(grad, torch.autograd.grad((expected_values.relu() * 3).sum(), pre)[0])
    ties = torch.randint(0, 4, shape, generator=generator).float()  # mostly ties: the values still match
    values, indices = S._top_k(ties, k)
    assert torch.equal(values.sort(-1).values, ties.topk(k, dim=-1).values.sort(-1).values)
    assert torch.equal(ties.gather(-1, indices), values)
    assert (indices.sort(-1).values.diff(dim=-1) > 0).all()  # k different latents


@pytest.mark.parametrize("architecture", S.ARCHITECTURES)
def test_save_and_load_round_trip_in_saelens_layout(architecture, tmp_path):
    sae = random_sae(architecture, 16)
    S.save(sae, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["architecture"] == architecture and cfg["d_in"] == 16 and cfg["d_sae"] == 48
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["normalize_activations"] == "none"
    assert cfg["apply_b_dec_to_input"] is True and (cfg.get("k") == 5) == (architecture == "topk")
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "s" / "sae_weights.safetensors")) == (
        {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if architecture == "jumprelu" else set()))
    again = S.load(tmp_path / "s")
    for (name, p), (_, q) in zip(sae.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), name
    assert repr(again) == repr(sae)


def test_bad_files_get_typed_errors(tmp_path, bundled):
    from safetensors.torch import load_file, save_file

    S.save(random_sae("topk", 16), tmp_path / "good")
    (tmp_path / "a file").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"a file' is a file, not a folder \(for an SAE's weights and config\)"):
        S.save(random_sae("topk", 16), tmp_path / "a file")
    with pytest.raises(FileNotFoundError):
        S.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFormatError, match="no cfg.json"):
        S.load(tmp_path / "empty")
    tensors = load_file(tmp_path / "good" / "sae_weights.safetensors")
    for broken, change, message in (
            ("missing", lambda t: t.pop("b_enc"), "lacks b_enc"),
            ("shape", lambda t: t.update(W_dec=torch.zeros(48, 17)), r"W_dec is \(48, 17\)")):
        folder = tmp_path / broken
        folder.mkdir()
        (folder / "cfg.json").write_text((tmp_path / "good" / "cfg.json").read_text())
        copy = dict(tensors)
        change(copy)
        save_file(copy, folder / "sae_weights.safetensors")
        with pytest.raises(SAEFormatError, match=message):
            S.load(folder)
    cfg = json.loads((tmp_path / "good" / "cfg.json").read_text())
    for key, value, message in (("normalize_activations", "layer_norm", "not supported"),
                                ("architecture", "gated", "not one interp reads")):
        folder = tmp_path / f"cfg-{key}"
        folder.mkdir()
        (folder / "cfg.json").write_text(json.dumps({**cfg, key: value}))
        save_file(tensors, folder / "sae_weights.safetensors")
        with pytest.raises(SAEFormatError, match=message):
            S.load(folder)
    forwards = []
    handle = bundled.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        # the bundled model's residual is 128 wide, and it has 2 layers
        with pytest.raises(SAEFormatError, match="d_in=16"), S.splice(bundled, random_sae("topk", 16)):
            pass
        with pytest.raises(SAEFormatError, match="not in this model"), \
                S.splice(bundled, random_sae("topk", 128, hook="blocks.7.hook_resid_pre")):
            pass
    finally:
        handle.remove()
    assert not forwards and not attached_hooks(bundled)


@pytest.mark.parametrize("architecture", S.ARCHITECTURES)
def test_vectors_of_the_wrong_width_are_refused(architecture):
    sae = random_sae(architecture, 16)
    for call in (sae.encode, sae.forward, sae.pre_acts):
        with pytest.raises(ValueError, match=r"d_in = 16 .* got shape \(3, 15\)"):
            call(torch.zeros(3, 15))
    with pytest.raises(ValueError, match=r"d_sae = 48 latents, got features of shape \(2, 3, 47\)"):
        sae.decode(torch.zeros(2, 3, 47))
    assert sae.forward(torch.zeros(2, 3, 16)).shape == (2, 3, 16)
    x = torch.randn(4, 16, dtype=torch.float64)  # another dtype is the SAE's, in and out, for both halves
    features = sae.encode(x)
    assert features.dtype == sae.decode(features.double()).dtype == torch.float32
    torch.testing.assert_close(sae.decode(features.double()), sae.decode(features))


def test_an_sae_on_another_device_than_the_model_is_refused_before_any_forward(bundled):
    """On a GPU, load(path) gives a CPU SAE beside a CUDA model, and the splice failed inside the forward with
    torch's device error; the meta device stands in for the other device here."""
    sae = random_sae("topk", 128).to("meta")
    tokens = interp.to_tokens(bundled, "def main():\n    pass")
    calls = {"splice": lambda: S.splice(bundled, sae).__enter__(),
             "ablate_features": lambda: S.ablate_features(bundled, sae, [1]).__enter__(),
             "evaluate": lambda: S.evaluate(bundled, sae, tokens, progress=False),
             "feature_attribution": lambda: S.feature_attribution(bundled, sae, tokens, lambda logits: logits.sum()),
             "logit_effects": lambda: S.logit_effects(bundled, sae)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"the SAE is on meta and the model on cpu: move the SAE with "
                                             r"sae.to\('cpu'\)"):
            call()
        assert not attached_hooks(bundled), name


def test_an_sae_of_another_weight_processing_is_refused_where_it_moves_the_activations(bundled):
    """SAELens records the processing of an SAE's model on top of none (``model_from_pretrained_kwargs``; its
    default for a new SAE is none at all). Without center_writing_weights the residual stream is not centred,
    so an SAE trained there reads other activations on a model with it: refused. z does not move: accepted."""
    unprocessed = load_model("bundled", device="cpu", fold_ln=False, center_writing_weights=False,
                             center_unembed=False)
    tokens = interp.to_tokens(bundled, "def main():\n    pass")
    resid = [m.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK] for m in (bundled, unprocessed)]
    assert not torch.allclose(resid[0], resid[1], atol=1e-3)  # what a wrong splice would read
    saelens_default = random_sae("topk", 128)
    saelens_default.metadata["model_from_pretrained_kwargs"] = {}  # trained with no processing
    with pytest.raises(SAEFormatError, match=r"center_writing_weights=False .* this model has "
                                             r"center_writing_weights=True: load it with"):
        S.evaluate(bundled, saelens_default, tokens)
    with pytest.raises(SAEFormatError, match="center_writing_weights=False"), S.splice(bundled, saelens_default):
        pass
    S.evaluate(unprocessed, saelens_default, tokens, progress=False)  # its own processing: accepted
    normalized = random_sae("topk", 128, hook="blocks.1.ln1.hook_normalized")
    normalized.metadata["model_from_pretrained_kwargs"] = {"center_writing_weights": True}
    with pytest.raises(SAEFormatError, match="fold_ln=False"), S.splice(bundled, normalized):
        pass
    on_z = random_sae("topk", bundled.cfg.n_heads * bundled.cfg.d_head, hook="blocks.1.attn.hook_z")
    on_z.metadata["model_from_pretrained_kwargs"] = {}
    with S.splice(bundled, on_z):  # processing does not move z
        pass
    jb = random_sae("topk", 128)
    jb.metadata["model_from_pretrained_kwargs"] = {"center_writing_weights": True}  # as gpt2-small-res-jb's
    with S.splice(bundled, jb):  # fold_ln differs, but does not move the residual stream
        pass
    assert not attached_hooks(bundled)


def test_pre_6_saelens_configs_load(tmp_path):
    """SAELens before 6 wrote ``hook_point`` and no ``architecture`` (as gpt2-small-res-jb's files do)."""
    sae = random_sae("standard", 16)
    S.save(sae, tmp_path / "s")
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({"d_in": 16, "d_sae": 48, "hook_point": HOOK,
                                                         "hook_point_layer": 1, "model_name": "gpt2"}))
    again = S.load(tmp_path / "s")
    assert again.architecture == "standard" and again.hook_name == HOOK
    assert torch.equal(again.W_enc, sae.W_enc)


def hf_spliced_logits(checkpoint, tokens, sae, layer: int, with_error_edit=None):
    """Hugging Face's model with a torch pre-hook on block ``layer`` that splices the SAE at positions >= 1."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoint).eval()

    def pre_hook(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        out = x.clone()
        f = sae.encode(x[:, 1:])
        if with_error_edit is None:
            out[:, 1:] = sae.decode(f)
        else:
            out[:, 1:] = x[:, 1:] + (sae.decode(with_error_edit(f)) - sae.decode(f))
        if args:
            return (out, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": out}

    handle = hf.transformer.h[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            return hf(tokens).logits
    finally:
        handle.remove()


def test_splice_equals_a_hand_written_hugging_face_splice(checkpoint, raw_model):
    tokens = interp.to_tokens(raw_model, TEXTS[:1])
    sae = random_sae("topk", 64)
    with torch.no_grad(), S.splice(raw_model, sae):
        ours = raw_model(tokens)
    torch.testing.assert_close(ours, hf_spliced_logits(checkpoint, tokens, sae, 1), atol=1e-4, rtol=1e-4)

    def edit(f):
        f = f.clone()
        f[..., [3, 7]] = 0
        return f

    with torch.no_grad(), S.ablate_features(raw_model, sae, [3, 7]):
        ablated = raw_model(tokens)
    torch.testing.assert_close(ablated, hf_spliced_logits(checkpoint, tokens, sae, 1, edit), atol=1e-4, rtol=1e-4)
    assert not attached_hooks(raw_model)


def test_with_error_and_no_edit_is_the_model_exactly(bundled):
    tokens = two_rows(bundled)
    sae = random_sae("jumprelu", 128)
    with torch.no_grad():
        clean = bundled(tokens)
        with S.splice(bundled, sae, with_error=True):
            spliced = bundled(tokens)
        with S.steer_features(bundled, sae, {0: 0.0}):  # an edit that adds nothing
            steered_by_zero = bundled(tokens)
    assert torch.equal(spliced, clean)
    assert torch.equal(steered_by_zero, clean)  # decode(f') - decode(f) is exactly 0 when f' == f


def test_steering_reaches_generate_and_leaves_no_hook(bundled):
    from interp.sampling import generate

    sae = random_sae("topk", 128)
    plain = generate(bundled, "def main():", max_new_tokens=8, temperature=0).texts
    with S.steer_features(bundled, sae, {5: 200.0}):
        steered = generate(bundled, "def main():", max_new_tokens=8, temperature=0).texts
        direct = bundled(interp.to_tokens(bundled, "def main():"))
    assert steered != plain
    assert not attached_hooks(bundled)
    x = {}
    with torch.no_grad(), interp.temporary_hooks(bundled, [(HOOK, lambda act, hook: x.setdefault("x", act.clone()))]):
        bundled(interp.to_tokens(bundled, "def main():"))
    moved = x["x"].clone()
    moved[:, 1:] += 200.0 * sae.W_dec[5].detach()  # add mode: the activation moves by value x W_dec[feature]
    with torch.no_grad(), interp.temporary_hooks(bundled, [(HOOK, lambda act, hook: moved)]):
        torch.testing.assert_close(direct, bundled(interp.to_tokens(bundled, "def main():")), atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="outside"), S.steer_features(bundled, sae, {128: 1.0}):
        pass
    with pytest.raises(ValueError, match="NaN or inf"), S.steer_features(bundled, sae, {1: float("nan")}):
        pass
    for features in (7, torch.tensor(7), "7"):  # one latent, not a list
        with pytest.raises(TypeError, match=r"features must be a list of latent indices, e.g. \[123\]"), \
                S.ablate_features(bundled, sae, features):
            pass
    with pytest.raises(TypeError, match="values must map latent indices to amounts"), \
            S.steer_features(bundled, sae, [7]):
        pass
    with pytest.raises(ValueError, match="features is empty"), S.ablate_features(bundled, sae, []):
        pass  # a no-op that would read as "ablating these features changes nothing"
    for flag in ("with_error", "keep_first"):  # "no" is truthy: it would keep position 0 (or the error)
        with pytest.raises(TypeError, match=f"{flag} must be True or False, got 'no'"), \
                S.splice(bundled, sae, **{flag: "no"}):
            pass
    assert not interp.hooks.attached_hooks(bundled)


def exact_sae(d_in: int) -> S.SAE:
    """relu(x) - relu(-x) = x: a standard SAE that reconstructs every activation exactly."""
    sae = S.SAE(d_in, 2 * d_in, hook_name=HOOK, architecture="standard", apply_b_dec_to_input=False)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def test_evaluation_definitions_on_saes_with_known_answers(bundled):
    tokens = two_rows(bundled)
    exact = S.evaluate(bundled, exact_sae(128), tokens)
    assert exact.explained_variance == pytest.approx(1, abs=1e-6) and exact.mse == pytest.approx(0, abs=1e-9)
    assert exact.ce_loss_score == pytest.approx(1, abs=1e-4) and exact.kl_score == pytest.approx(1, abs=1e-4)
    with torch.no_grad():  # [batch, pos - 1]: what each position predicts
        per_token = bundled(tokens, return_type="loss", loss_per_token=True)
    assert exact.tokens == 2 * 7 and exact.ce_clean == pytest.approx(float(per_token[:, 1:].mean()), rel=1e-5)
    zero = S.evaluate(bundled, S.SAE(128, 64, hook_name=HOOK, architecture="standard"), tokens)
    assert zero.ce_loss_score == pytest.approx(0, abs=1e-6) and zero.kl_score == pytest.approx(0, abs=1e-6)
    assert zero.l0 == 0 and zero.dead_fraction == 1 and zero.dense_fraction == 0
    # explained variance and L0 recomputed from cached activations
    sae = random_sae("topk", 128)
    m = S.evaluate(bundled, sae, tokens)
    _, cache = bundled.run_with_cache(tokens, names_filter=HOOK)
    x = cache[HOOK][:, 1:].reshape(-1, 128).double()
    with torch.no_grad():  # the SAE's parameters require grad
        x_hat = sae(x.float()).double()
    assert m.explained_variance == pytest.approx(float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()),
                                                 rel=1e-6)
    assert m.l0 == pytest.approx(float((sae.encode(x.float()) > 0).sum(-1).double().mean()))


def test_feature_attribution_is_the_first_order_effect(raw_model):
    model64 = raw_model.to(torch.float64)
    try:
        tokens = interp.to_tokens(model64, TEXTS[:1])
        sae = random_sae("standard", 64).double()

        def metric(logits):
            return logits[:, -1].log_softmax(-1)[:, 42]

        attribution = S.feature_attribution(model64, sae, tokens, metric)
        _, cache = model64.run_with_cache(tokens, names_filter=HOOK)
        f = sae.encode(cache[HOOK])
        checked = 0
        for pos, feature in [(p, int(f[0, p].argmax())) for p in (1, 3, tokens.shape[1] - 1)]:
            values = []
            for eps in (1e-4, -1e-4):
                def scale(act, hook, pos=pos, feature=feature, eps=eps):
                    out = act.clone()
                    out[:, pos] += eps * f[0, pos, feature] * sae.W_dec[feature]
                    return out

                with torch.no_grad(), interp.temporary_hooks(model64, [(HOOK, scale)]):
                    values.append(metric_values(metric, model64(tokens)))
            finite = float((values[0] - values[1]) / 2e-4)
            assert float(attribution[0, pos, feature]) == pytest.approx(finite, rel=1e-4, abs=1e-8)
            checked += 1
        assert checked == 3
    finally:
        raw_model.to(torch.float32)


def test_feature_attribution_runs_the_model_unchanged(bundled):
    """The SAE is spliced in with its error, so the metric sees the model's own logits, exactly, in float32 (the
    splice as x + d - d was not x for about a third of the elements: logits 3e-5 apart)."""
    tokens = interp.to_tokens(bundled, TEXTS[:1])
    seen = {}

    def metric(logits):
        seen["logits"] = logits.detach().clone()
        return logits[:, -1, 42]

    S.feature_attribution(bundled, S.load("bundled"), tokens, metric)
    with torch.no_grad():
        assert torch.equal(seen["logits"], bundled(tokens))


def test_logit_effects_from_hugging_face_weights(checkpoint, raw_model):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoint)
    sae = random_sae("topk", 64)
    W = sae.W_dec.detach().double()
    expected = ((W - W.mean(-1, keepdim=True)) * hf.transformer.ln_f.weight.detach().double()) @ \
        hf.lm_head.weight.detach().double().T
    torch.testing.assert_close(S.logit_effects(raw_model, sae).double(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(S.logit_effects(raw_model, sae, [7, 2]).double(), expected[[7, 2]], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- training

TRAIN = dict(hook=HOOK, d_sae=256, k=8, batch_size=256, steps=30, lr=1e-3, seed=0, dead_after=512, progress=False)


def interrupted(monkeypatch, data, out: Path, *, after: int, checkpoint_every: int) -> None:
    """Train with TRAIN into ``out`` and interrupt the run after ``after`` steps (a KeyboardInterrupt in step
    ``after + 1``)."""
    real, calls = S._loss, {"n": 0}

    def crash(*args):
        calls["n"] += 1
        if calls["n"] == after + 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(S, "_loss", crash)
    with pytest.raises(KeyboardInterrupt):
        S.train(data, **TRAIN, out=out, checkpoint_every=checkpoint_every)
    monkeypatch.setattr(S, "_loss", real)


def test_training_is_seeded_learns_and_resumes_to_the_same_weights(bundled, harvested, tmp_path, monkeypatch):
    a = S.train(harvested, **TRAIN)
    b = S.train(harvested, **TRAIN)
    with torch.no_grad():  # a notebook's habit: training turns gradients back on for its steps
        c = S.train(harvested, **TRAIN)
    for (name, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(p, q) and torch.equal(p, r), name
    held_out = interp.to_tokens(bundled, ["import sys\nfor line in sys.stdin:\n    print(line.upper())"])
    trained = S.evaluate(bundled, S.train(harvested, **{**TRAIN, "steps": 150}), held_out)
    untrained = S.evaluate(bundled, S.train(harvested, **{**TRAIN, "steps": 1}), held_out)
    assert trained.explained_variance > untrained.explained_variance + 0.2
    # interrupted after step 17, then the same call again: the weights of an uninterrupted run
    out = tmp_path / "run"
    interrupted(monkeypatch, harvested, out, after=17, checkpoint_every=5)
    metadata = json.loads((out / "sae" / "cfg.json").read_text())["metadata"]
    assert metadata["hook_name"] == HOOK  # and SAELens's record of the model's processing, from the harvest's
    assert metadata["model_from_pretrained_kwargs"] == {"fold_ln": True, "center_writing_weights": True,
                                                        "center_unembed": True}
    resumed = S.train(harvested, **TRAIN, out=out, checkpoint_every=5)
    for (name, p), (_, q) in zip(a.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="another d_sae"):
        S.train(harvested, **{**TRAIN, "d_sae": 128}, out=out)


def test_training_on_a_stream_of_tokens_trains_what_their_harvest_trains(bundled, harvested, tmp_path, monkeypatch):
    """From tokens directly: a ``Stream`` of the harvest's rows computes each shard's activations as the batches
    need them and nothing is written; the SAE equals the one trained on the harvest bit for bit, resumed too."""
    stream = hv.Stream(bundled, harvested.tokens, [HOOK], shard_rows=harvested.manifest["shard_rows"])
    ours, theirs = S.train(stream, **TRAIN), S.train(harvested, **TRAIN)
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.equal(p, q), name
    assert ours.metadata["model_name"] == theirs.metadata["model_name"]
    interrupted(monkeypatch, stream, tmp_path / "run", after=13, checkpoint_every=4)  # step 12's checkpoint stays
    resumed = S.train(stream, **TRAIN, out=tmp_path / "run", checkpoint_every=4)
    for (name, p), (_, q) in zip(resumed.named_parameters(), theirs.named_parameters()):
        assert torch.equal(p, q), name


def test_a_training_run_resumes_only_on_its_own_activations(bundled, harvested, tmp_path):
    """A rerun into a finished (or interrupted) run's folder on other activations is refused: it used to return
    the first run's SAE as the second's (or go on with the other batches from the last checkpoint)."""
    rows = harvested.tokens
    out = tmp_path / "run"
    S.train(harvested, **TRAIN, out=out)
    written = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    others = [hv.Stream(bundled, rows.flip(0), [HOOK], shard_rows=harvested.manifest["shard_rows"]),  # other rows
              hv.Stream(bundled, rows, [HOOK], shard_rows=harvested.manifest["shard_rows"])]  # a stream, not this harvest
    for other in others:
        with pytest.raises(ValueError, match=r"another data \(other activations"):
            S.train(other, **TRAIN, out=out)
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == written
    assert hv.Stream(bundled, rows, [HOOK]).digest == hv.Stream(bundled, rows.clone(), [HOOK]).digest


def test_the_command_trains_from_a_file_of_token_rows_what_the_harvest_trains(harvested, tmp_path):
    """``python -m interp.sae rows.npy --model bundled ...`` streams the rows through the model: the SAE it
    writes equals ``train`` on the harvest of those rows, bit for bit. A file that is not 2-d token rows is one
    line of error."""
    import numpy as np

    np.save(tmp_path / "rows.npy", harvested.tokens.numpy().astype(np.int32))
    np.save(tmp_path / "flat.npy", harvested.tokens.numpy().ravel())
    args = ["--model", "bundled", "--hook", HOOK, "--d-sae", "256", "--k", "8", "--batch-size", "256", "--steps", "30",
            "--lr", "1e-3", "--dead-after", "512", "--shard-rows", str(harvested.manifest["shard_rows"]),
            "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "interp.sae", str(tmp_path / "rows.npy"), *args, "--out",
                    str(tmp_path / "run")], check=True, env=env, cwd=REPO)
    ours, theirs = S.load(tmp_path / "run" / "sae"), S.train(harvested, **TRAIN)
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.equal(p, q), name
    proc = subprocess.run([sys.executable, "-m", "interp.sae", str(tmp_path / "flat.npy"), *args, "--out",
                           str(tmp_path / "bad")], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "token rows are a 2-d integer array" in proc.stderr and not (tmp_path / "bad").exists()


def test_jumprelu_trains_its_thresholds_and_l0_sets_its_sparsity(bundled, harvested):
    """The straight-through estimator moves the thresholds (from 0.01, kept >= 0), the SAE learns, and a
    larger L0 coefficient gives a sparser SAE; the loss and gradients themselves are SAELens's (below)."""
    jump = {**TRAIN, "architecture": "jumprelu", "k": None}
    held_out = interp.to_tokens(bundled, ["import sys\nfor line in sys.stdin:\n    print(line.upper())"])
    untrained = S.evaluate(bundled, S.train(harvested, **{**jump, "steps": 1}), held_out)
    dense, sparse = (S.train(harvested, **{**jump, "steps": 150, "l0": l0}) for l0 in (0.0, 1.0))
    dense_metrics, sparse_metrics = S.evaluate(bundled, dense, held_out), S.evaluate(bundled, sparse, held_out)
    assert dense_metrics.explained_variance > untrained.explained_variance + 0.5
    assert sparse_metrics.explained_variance > untrained.explained_variance + 0.5
    assert sparse_metrics.l0 < dense_metrics.l0 / 2
    threshold = sparse.threshold.detach()
    assert float(threshold.min()) >= 0 and float(threshold.mean()) > 0.05  # from 0.01


WORKER = """
import sys, torch
from interp import harvest as hv, sae as S
from interp.loading import load_model
kwargs = dict(hook="{hook}", d_sae=256, architecture="{architecture}", k=8 if "{architecture}" == "topk" else None,
              batch_size=256, steps=25, lr=1e-3, seed=0, dead_after=256, progress=False)
data = hv.open(sys.argv[1])
if "{data}" == "stream":
    data = hv.Stream(load_model("bundled", device="cpu"), data.tokens, ["{hook}"], shard_rows=data.manifest["shard_rows"])
sae = S.train(data, **kwargs)
import torch.distributed as dist
if not dist.is_initialized() or dist.get_rank() == 0:
    S.save(sae, sys.argv[2])
if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
"""


@pytest.mark.parametrize("architecture, data", [("topk", "harvest"), ("jumprelu", "harvest"), ("topk", "stream")])
def test_two_processes_train_what_one_trains(harvested, tmp_path, architecture, data):
    """The same global batch split over 2 ranks (gloo), gradients summed: the weights after 25 steps (with
    dead latents and their loss in play: dead_after is one batch; AuxK for TopK, the pre-activation loss and
    the thresholds' estimator for JumpReLU) agree with one process's to 1e-5. Float sums in another order are
    the only difference. From a ``Stream`` too, whose ranks split its forwards."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(hook=HOOK, architecture=architecture, data=data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(script), str(harvested.path), str(tmp_path / "one")], check=True, env=env,
                   cwd=REPO)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(script), str(harvested.path), str(tmp_path / "two")], check=True, env=env, cwd=REPO)
    one, two = S.load(tmp_path / "one"), S.load(tmp_path / "two")
    for (name, p), (_, q) in zip(one.named_parameters(), two.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)


def test_training_refuses_bad_input_before_any_step(bundled, harvested, tmp_path):
    with pytest.raises(ValueError, match="holds no activations"):
        S.train(harvested, **{**TRAIN, "hook": "blocks.0.hook_resid_pre"})
    with pytest.raises(ValueError, match="architecture must be one of"):
        S.train(harvested, **{**TRAIN, "architecture": "gated"})
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        S.train(harvested, **{**TRAIN, "architecture": "jumprelu", "k": None, "bandwidth": 0.0})
    with pytest.raises(ValueError, match="l0 must be a finite number"):
        S.train(harvested, **{**TRAIN, "architecture": "jumprelu", "k": None, "l0": float("nan")})
    with pytest.raises(ValueError, match="steps"):
        S.train(harvested, **{**TRAIN, "steps": 0})
    # on a stream, whose first shard is a forward away: these are refused before it runs
    stream = hv.Stream(bundled, harvested.tokens[:8], [HOOK])
    forwards = []
    handle = bundled.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        for change, message in (({"lr": 0.0}, "lr must be a finite number > 0"), ({"d_sae": 0}, "d_sae must be >= 1"),
                                ({"k": 10**6}, "k must be in 1.."), ({"aux_k": 0}, "aux_k must be >= 1"),
                                ({"dead_after": 0}, "dead_after must be >= 1"),
                                # an option of another architecture than the one trained: refused, not ignored
                                ({"l1": 1.0}, "l1 is an option of architecture 'standard', not 'topk'"),
                                ({"l0": 1.0}, "l0 is an option of architecture 'jumprelu', not 'topk'"),
                                ({"architecture": "standard"}, "k is an option of architecture 'topk', not 'standard'"),
                                ({"architecture": "jumprelu", "k": None, "aux_k": 8},
                                 "aux_k is an option of architecture 'standard' or 'topk', not 'jumprelu'"),
                                ({"architecture": "standard", "k": None, "bandwidth": 0.1},
                                 "bandwidth is an option of architecture 'jumprelu', not 'standard'")):
            with pytest.raises(ValueError, match=message):
                S.train(stream, **{**TRAIN, **change})
        (tmp_path / "a file").write_text("not a folder")
        with pytest.raises(NotADirectoryError, match=r"is a file, not a folder \(for the training's checkpoints\)"):
            S.train(stream, **TRAIN, out=tmp_path / "a file")
        with torch.inference_mode(), pytest.raises(RuntimeError, match="training needs gradients, which "
                                                                       r"torch.inference_mode\(\) turns off"):
            S.train(stream, **TRAIN)
    finally:
        handle.remove()
    assert not forwards
    with pytest.raises(DeviceUnavailableError):  # no machine has 100 GPUs
        S.train(harvested, **{**TRAIN, "device": "cuda:99"})
    with pytest.raises(ValueError, match="more than any one shard holds"):
        shard_tokens = harvested.manifest["shard_rows"] * (harvested.manifest["context"] - 1)  # BOS left out
        S.train(harvested, **{**TRAIN, "batch_size": shard_tokens + 1})
    proc = subprocess.run([sys.executable, "-m", "interp.sae", str(harvested.path), "--hook", "blocks.9.hook_z",
                           "--d-sae", "64", "--out", "unused"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        f"error: the harvest {harvested.path} holds no activations of 'blocks.9.hook_z' (hooks ['{HOOK}'])"]


# ---------------------------------------------------------------------------------------------- SAELens


@pytest.mark.parametrize("architecture", S.ARCHITECTURES)
def test_saelens_reads_ours_and_we_read_saelens(architecture, tmp_path):
    """The oracle: SAELens 6 (installed where TransformerLens 3.9 is) computes the same features and
    reconstructions from the same files, both ways."""
    sae_lens = pytest.importorskip("sae_lens")
    ours = random_sae(architecture, 32)
    S.save(ours, tmp_path / "ours")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "ours"))
    x = torch.randn(9, 32, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(theirs.encode(x), ours.encode(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(theirs.decode(theirs.encode(x)), ours(x), atol=1e-6, rtol=1e-6)
    assert theirs.cfg.metadata.hook_name == HOOK and theirs.cfg.architecture() == architecture
    processed = dict(fold_ln=True, center_writing_weights=False, center_unembed=True)
    ours.metadata["model_from_pretrained_kwargs"] = processed
    S.save(ours, tmp_path / "with-processing")
    assert sae_lens.SAE.load_from_disk(str(tmp_path / "with-processing")).cfg.metadata.model_from_pretrained_kwargs \
        == processed
    theirs.save_model(str(tmp_path / "theirs"))
    again = S.load(tmp_path / "theirs")
    torch.testing.assert_close(again.encode(x), theirs.encode(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(again(x), theirs(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("architecture", S.ARCHITECTURES)
def test_evaluate_is_saelens_evals_on_rows_without_special_tokens(architecture, tmp_path):
    """The oracle for ``evaluate``: SAELens 6's own evaluation functions (``run_evals``'s parts), on the bundled
    model as a HookedTransformer and the same SAE read from our files, with BOS left out as SAELens leaves out
    special tokens. Its zero ablation zeroes BOS too, so CE and KL zero-ablated (and the scores) are not
    compared; every other number is."""
    pytest.importorskip("sae_lens")
    from sae_lens import SAE as SAELensSAE
    from sae_lens.evals import get_downstream_reconstruction_metrics, get_sparsity_and_variance_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    if "hooked" not in interp.backends.AVAILABLE_BACKENDS:
        pytest.skip("SAELens runs on TransformerLens 3.x's HookedTransformer")
    model = load_model("bundled", backend="hooked", device="cpu")
    ours = random_sae(architecture, 128, d_sae=64)
    S.save(ours, tmp_path / "sae")
    theirs = SAELensSAE.load_from_disk(str(tmp_path / "sae"))
    body = torch.randint(0, hv.EOT, (3, 11), generator=torch.Generator().manual_seed(5))  # no 50256 inside a row
    tokens = torch.cat([torch.full((3, 1), hv.EOT), body], dim=1)

    class Store:  # what the evaluation functions read of an ActivationsStore
        def get_batch_tokens(self, batch_size):
            return tokens[:batch_size]

    common = dict(activation_store=Store(), activation_scaler=ActivationScaler(), n_batches=1,
                  eval_batch_size_prompts=len(tokens), ignore_tokens=[hv.EOT])
    sparsity, _ = get_sparsity_and_variance_metrics(
        theirs, model, compute_l2_norms=False, compute_sparsity_metrics=True, compute_variance_metrics=True,
        compute_featurewise_density_statistics=False, model_kwargs={}, **common)
    downstream = get_downstream_reconstruction_metrics(theirs, model, compute_kl=True, compute_ce_loss=True, **common)
    m = S.evaluate(model, ours, tokens)
    assert m.l0 == pytest.approx(sparsity["l0"], rel=1e-6) and m.l0 > 0
    assert m.explained_variance == pytest.approx(sparsity["explained_variance"], rel=1e-5, abs=1e-6)
    assert m.mse == pytest.approx(sparsity["mse"], rel=1e-5)
    assert m.ce_clean == pytest.approx(downstream["ce_loss_without_sae"], rel=1e-5)
    assert m.ce_spliced == pytest.approx(downstream["ce_loss_with_sae"], rel=1e-5)
    assert m.kl_spliced == pytest.approx(downstream["kl_div_with_sae"], rel=1e-4, abs=1e-6)
    assert m.ce_spliced != pytest.approx(m.ce_clean, rel=1e-3)  # the splice changes the loss: equality is not trivial


def test_harvest_packs_rows_as_saelens_until_a_document_ends_at_a_row():
    """The rows SAEs train on: ``interp.harvest``'s packing against SAELens 6's ``concat_and_batch_sequences``
    (BOS at each row's start, 50256 between documents). They agree while no document ends exactly where a row
    does; there ours keeps the separator after the row's BOS and SAELens drops it."""
    pytest.importorskip("sae_lens")
    import numpy as np
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    def ours(docs, context):
        return list(hv._rows([hv._Document(f"d{i}", "", tokens=np.array(d)) for i, d in enumerate(docs)], None, context))

    def theirs(docs, context):
        return [row.tolist() for row in concat_and_batch_sequences(iter(torch.tensor(d) for d in docs), context,
                                                                   begin_batch_token_id=hv.EOT,
                                                                   sequence_separator_token_id=hv.EOT)]

    lengths = [31, 12, 23, 50, 9, 41]  # separators at 31, 44, 68, 119, 129, 171 of the stream: none at 15 k
    docs = [list(range(100 * i, 100 * i + n)) for i, n in enumerate(lengths)]
    assert ours(docs, 16) == theirs(docs, 16)  # 15 stream tokens per row: no document ends at a row's end
    aligned = [list(range(1, 16)), [7, 8, 9], list(range(20, 40))]  # the first document fills row 0 exactly
    assert ours(aligned, 16)[1][:5] == [hv.EOT, hv.EOT, 7, 8, 9] and theirs(aligned, 16)[1][:4] == [hv.EOT, 7, 8, 9]


@pytest.mark.parametrize("architecture", S.ARCHITECTURES)
def test_training_loss_and_gradients_are_saelens(architecture):
    """The oracle for training: with the same weights and batch, our loss and every parameter's gradient equal
    SAELens 6's ``training_forward_pass`` (standard: its L1 penalty; JumpReLU: its L0 "step" loss, its
    straight-through estimator and its pre-activation loss on the dead latents). TopK is compared with no dead
    latent: there our AuxK divides by the error's norm (Gao et al.) where SAELens scales by the dead count."""
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import TrainStepInput

    ours = random_sae(architecture, 32)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(4))
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::3] = architecture == "jumprelu"
    cfg = S.TrainConfig(data="none", hook=HOOK, d_sae=48, architecture=architecture, k=ours.k, l1=0.7, batch_size=64, steps=1,
                        lr=1e-3, seed=0, aux_k=16, aux_coeff=0.3, dead_after=1, l0=0.9, bandwidth=0.1)
    loss, _, _ = S._loss(ours, x, cfg, dead)
    loss.backward()
    common = dict(d_in=32, d_sae=48, apply_b_dec_to_input=True)
    if architecture == "standard":
        theirs = sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(**common, l1_coefficient=0.7))
        coefficients = {"l1": 0.7}
    elif architecture == "topk":
        theirs = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(**common, k=5,
                                                                          rescale_acts_by_decoder_norm=False))
        coefficients = {}
    else:
        theirs = sae_lens.JumpReLUTrainingSAE(sae_lens.JumpReLUTrainingSAEConfig(
            **common, l0_coefficient=0.9, jumprelu_bandwidth=0.1, pre_act_loss_coefficient=0.3))
        coefficients = {"l0": 0.9}
    with torch.no_grad():
        for name, p in ours.named_parameters():
            getattr(theirs, name).copy_(p)
    step = theirs.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=dead,
                                                       n_training_steps=0, is_logging_step=False))
    step.loss.backward()
    assert float(loss.detach()) == pytest.approx(float(step.loss.detach()), rel=1e-6)
    if architecture == "jumprelu":
        assert set(step.losses) == {"mse_loss", "l0_loss", "pre_act_loss"} and float(step.losses["pre_act_loss"].detach()) > 0
        assert float(theirs.threshold.grad.abs().sum()) > 0  # some pre-activations fall in the estimator's window
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, getattr(theirs, name).grad, atol=1e-5, rtol=1e-5, msg=name)
