"""Write Hugging Face GPT-2 checkpoint directories with random weights: the test fixtures and benchmark models.

GPT-2 small's real weights need the Hub; these need nothing. A checkpoint's ``config.json`` carries an
``interp_label`` that says its weights are random, so no figure made from it can pass as GPT-2's.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["GPT2_SMALL_SHAPE", "write_random_checkpoint"]

GPT2_SMALL_SHAPE = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)


def write_random_checkpoint(out: str | Path, *, seed: int = 0, label: str | None = None,
                            with_tokenizer: bool = False, **shape) -> Path:
    """Write a randomly initialised ``GPT2LMHeadModel`` to ``out`` (config.json + model.safetensors).

    Every bias (attention, MLP, LayerNorm) is random and non-zero, and every LayerNorm gain is random, so a
    test on these weights sees a bug that zero biases or unit gains would hide.

    Args:
        out: directory to create.
        seed: torch seed for the initialisation.
        label: name figures use for it; default says "random-weight" and the shape.
        with_tokenizer: also save the offline GPT-2 tokenizer files into the directory.
        **shape: GPT2Config fields, e.g. ``n_layer=2, n_embd=64, n_head=4``; default: GPT-2 small's shape.

    Example:
        >>> write_random_checkpoint("/tmp/tiny", n_layer=2, n_embd=64, n_head=4, n_positions=128)
        PosixPath('/tmp/tiny')
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from interp.loading import quiet_transformers

    shape = {**GPT2_SMALL_SHAPE, **shape}
    label = label or (f"random-weight GPT-2 ({shape['n_layer']}L, d_model {shape['n_embd']}, "
                      f"{shape['n_head']} heads; not trained)")
    torch.manual_seed(seed)
    config = GPT2Config(**shape, interp_label=label)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # HF initialises biases to 0 and LayerNorms to (1, 0): that hides bias bugs
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.1)
            elif ".ln_" in name:  # LayerNorm gains: ln_1/ln_2/ln_f.weight
                param.uniform_(0.5, 1.5)
    out = Path(out)
    with quiet_transformers():
        model.save_pretrained(out)
    if with_tokenizer:
        from interp.tokenizer import gpt2_tokenizer

        gpt2_tokenizer().save_pretrained(out)
    return out
