"""Every hook write means the same thing on every backend of every installed TransformerLens major.

A write is a fixed perturbation (seeded by the hook name, shaped like the activation) added at one hook point
through ``interp.hooks.temporary_hooks``, the door every intervention of interp goes through. Two oracles:

- Hugging Face's ``GPT2LMHeadModel`` with the same edit made by plain torch hooks on its modules, for every
  name that has a matching module (embeddings, residual stream, attention and MLP outputs, q/k/v, z, the MLP's
  pre- and post-activation), on an unprocessed load, where the activations are the checkpoint's own.
- The other backend (TransformerLens 3.x, which has both), for every hook name the two share, with the
  ``use_*`` flags that make the optional hooks fire, on processed and unprocessed loads.

The checkpoint has three layers and random non-zero biases and LayerNorm gains, so an edit that skips the
residual stream, or lands in the wrong branch, shows in the log-probs.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from conftest import both_backends

from interp.backends import AVAILABLE_BACKENDS
from interp.checkpoints import write_random_checkpoint
from interp.hooks import check_hook_names, temporary_hooks
from interp.loading import load_model

RAW = dict(fold_ln=False, center_writing_weights=False, center_unembed=False)
PROMPTS = ["The cat sat on the mat and then", "def main():\n    return 0"]
# Flag sets: the optional hook points each one makes fire. use_attn_in and use_split_qkv_input exclude
# each other, so they come in two sets.
FLAG_SETS = {
    "none": (),
    "split_qkv": ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in"),
    "attn_in": ("use_attn_result", "use_attn_in", "use_hook_mlp_in"),
}
ALL_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in")
TOLERANCE = 1e-4  # nats, on log-probs that an edit moves by up to several nats


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("writes") / "three-layer", seed=7, n_layer=3,
                                   n_embd=64, n_head=4, n_positions=64,
                                   initializer_range=0.2)  # ten times HF's: attention that is not uniform


def perturbation(name: str, act: torch.Tensor) -> torch.Tensor:
    """Noise shaped like ``act``, three of its standard deviations wide, seeded by the hook name."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return 3 * act.std().clamp_min(1e-3) * torch.randn(act.shape, generator=generator)


def set_flags(model, flags) -> None:
    for flag in ALL_FLAGS:  # off first: two of them exclude each other
        getattr(model, f"set_{flag}")(False)
    for flag in flags:
        getattr(model, f"set_{flag}")(True)


def activations(model, tokens, names) -> dict[str, torch.Tensor]:
    """Each name's activation (at its first firing), from one forward; names that do not fire are left out."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(act, hook):
            seen.setdefault(name, act.clone())
        return hook

    with torch.no_grad(), temporary_hooks(model, [(name, keep(name)) for name in names]):
        model(tokens)
    return seen


def check_fires(model, name) -> bool:
    try:
        check_hook_names(model, [name])
        return True
    except ValueError:  # a flagged hook point whose flag is off: interp refuses it
        return False


def written_logprobs(model, tokens, name, delta) -> torch.Tensor:
    with torch.no_grad(), temporary_hooks(model, [(name, lambda act, hook: act + delta)]):
        return model(tokens).log_softmax(-1)


# ------------------------------------------------------------------------------------------ Hugging Face


def hf_edit_points(hf, name: str):
    """(module, how) where an additive edit at TransformerLens's ``name`` lands in Hugging Face's GPT-2, or None.

    ``how`` is "out" (add to the module's output, or its first element), "in" (to its first input), or
    "qkv:i" (to the i-th third of ``c_attn``'s output, laid out per head).
    """
    parts = name.split(".")
    if name == "hook_embed":
        return hf.transformer.wte, "out"
    if name == "hook_pos_embed":
        return hf.transformer.wpe, "out"
    if parts[0] != "blocks":
        return None
    block = hf.transformer.h[int(parts[1])]
    table = {
        "hook_resid_pre": (block, "in"),
        "hook_resid_mid": (block.attn, "out"),  # resid_mid = resid_pre + attn_out: an edit of one is of both
        "hook_resid_post": (block, "out"),
        "hook_attn_out": (block.attn, "out"),
        "hook_mlp_out": (block.mlp, "out"),
        "attn.hook_q": (block.attn.c_attn, "qkv:0"),
        "attn.hook_k": (block.attn.c_attn, "qkv:1"),
        "attn.hook_v": (block.attn.c_attn, "qkv:2"),
        "attn.hook_z": (block.attn.c_proj, "in"),  # c_proj reads the heads' z side by side
        "mlp.hook_pre": (block.mlp.c_fc, "out"),
        "mlp.hook_post": (block.mlp.act, "out"),
    }
    return table.get(".".join(parts[2:]))


def hf_written_logprobs(hf, tokens, module, how, delta) -> torch.Tensor:
    flat = delta.flatten(2)  # per-head [batch, pos, head, d_head] as Hugging Face lays it: [batch, pos, d_model]

    def add_out(mod, args, out):
        if how.startswith("qkv:"):
            third = int(how.split(":")[1])
            d_model = out.shape[-1] // 3
            out = out.clone()
            out[..., third * d_model:(third + 1) * d_model] += flat
            return out
        if isinstance(out, tuple):
            return (out[0] + flat,) + out[1:]
        return out + flat

    def add_in(mod, args, kwargs):
        if args:
            return (args[0] + flat,) + args[1:], kwargs
        key = "hidden_states"
        return args, {**kwargs, key: kwargs[key] + flat}

    handle = (module.register_forward_pre_hook(add_in, with_kwargs=True) if how == "in"
              else module.register_forward_hook(add_out))
    try:
        with torch.no_grad():
            return hf(tokens).logits.log_softmax(-1)
    finally:
        handle.remove()


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_every_write_with_a_hugging_face_module_equals_hugging_face(checkpoint, backend):
    from interp.loading import _hf_model

    hf = _hf_model(checkpoint, torch.float32).eval()
    model = load_model(checkpoint, backend=backend, device="cpu", **RAW)
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        clean = hf(tokens).logits.log_softmax(-1)
        torch.testing.assert_close(model(tokens).log_softmax(-1), clean, atol=TOLERANCE, rtol=0)
    points = {name: p for name in sorted(model.hook_dict) if (p := hf_edit_points(hf, name)) is not None}
    acts = activations(model, tokens, points)
    compared = []
    for name, point in points.items():
        delta = perturbation(name, acts[name])
        ours = written_logprobs(model, tokens, name, delta)
        theirs = hf_written_logprobs(hf, tokens, *point, delta)
        assert (theirs - clean).abs().max() > 10 * TOLERANCE, f"{name}: the edit should move the log-probs"
        diff = (ours - theirs).abs().max().item()
        assert diff <= TOLERANCE, f"{backend}: a write at {name} differs from Hugging Face by {diff:.3g} nats"
        compared.append(name)
    per_layer = {n.split(".", 2)[2] for n in compared if n.startswith("blocks.")}
    assert len(per_layer) == 11 and {"hook_embed", "hook_pos_embed"} <= set(compared)


@both_backends
@pytest.mark.parametrize("processing", ["processed", "unprocessed"])
@pytest.mark.parametrize("flag_set", list(FLAG_SETS))
def test_every_shared_hook_write_means_the_same_on_both_backends(checkpoint, flag_set, processing):
    options = {} if processing == "processed" else RAW
    models = {b: load_model(checkpoint, backend=b, device="cpu", **options) for b in ("hooked", "bridge")}
    for model in models.values():
        set_flags(model, FLAG_SETS[flag_set])
    try:
        tokens = models["hooked"].to_tokens(PROMPTS)
        shared = sorted(set(models["hooked"].hook_dict) & set(models["bridge"].hook_dict))
        on = [name for name in shared if check_fires(models["hooked"], name)]  # flagged hooks need their flag
        acts = {b: activations(m, tokens, on) for b, m in models.items()}
        assert set(acts["hooked"]) == set(acts["bridge"]), "a hook fires on one backend only"
        compared, shapes_differ = [], []
        for name in sorted(acts["hooked"]):
            if acts["hooked"][name].shape != acts["bridge"][name].shape:
                shapes_differ.append(name)
                continue
            delta = perturbation(name, acts["hooked"][name])
            out = {b: written_logprobs(m, tokens, name, delta) for b, m in models.items()}
            diff = (out["hooked"] - out["bridge"]).abs().max().item()
            assert diff <= TOLERANCE, f"a write at {name} differs between the backends by {diff:.3g} nats"
            compared.append(name)
        # With per-head inputs on, HookedTransformer runs ln1 once per head ([batch, pos, head, d_model]), the
        # bridge once ([batch, pos, d_model]): the one place the shared names hold differently shaped values.
        expected_differ = ([f"blocks.{layer}.ln1.{h}" for layer in range(3) for h in ("hook_normalized", "hook_scale")]
                           if flag_set != "none" else [])
        assert sorted(shapes_differ) == sorted(expected_differ)
        assert len(compared) >= 40
    finally:
        for model in models.values():
            set_flags(model, ())
