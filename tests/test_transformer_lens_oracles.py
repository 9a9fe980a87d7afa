"""Where TransformerLens has the function too, ours is tested against it.

- ``transformer_lens.patching.get_act_patch_*`` (both majors): our ``activation_patching`` equals it exactly
  in meaning, cell by cell (TransformerLens's metric returns a scalar; ours gets the same scalar).
- TransformerLens 4.x's ``tools.analysis.logit_lens``: the same top tokens and probabilities as our
  ``logit_lens`` at every layer.
- TransformerLens 4.x's ``tools.analysis.direct_logit_attribution``: per head, and per component (the
  embeddings, each attention layer, each MLP), the same contributions as our ``direct_logit_attribution``;
  its ``remainder`` is everything of ours that is not a head.
- TransformerLens 4.x's ``utilities.statistics.bootstrap_ci``: from the same seeded draws, the same percentile
  interval as our ``bootstrap_interval`` (which every interval over pairs or rows uses), at resample counts
  where both definitions of a percentile pick the same order statistic.
- TransformerLens 4.x's ``tools.analysis.attribution_patch`` (node level, ``ig_steps=1``): it is denoising,
  per position and averaged over prompt pairs, with the gradient on the corrupted run, as ours. The mapping:
  ``ours.scores[layer, head] - ours.corrupted_metric`` (``by="head"``, ``hook="z"``) equals the sum over
  positions of its ``attn_head_out`` node scores, and ``ours.scores[layer, pos] - ours.corrupted_metric``
  (``hook="mlp_out"``) its ``mlp_out`` node score at that position. (A head's ``(Δz)·∂m/∂z`` equals
  ``(Δz W_O)·∂m/∂result`` by the chain rule.)

``hook_resid_mid`` is left out of the first comparison on the bridge on purpose: there TransformerLens's own
``hooks()`` writes it into the MLP's input only (``tests/test_hook_writes.py`` shows ours is Hugging Face's).
"""

from __future__ import annotations

import pytest
import torch

import interp
from interp.backends import TL_MAJOR
from interp.lens import direct_logit_attribution, logit_lens
from interp.metrics import bootstrap_interval
from interp.patching import activation_patching, attribution_patching

tl4 = pytest.mark.skipif(TL_MAJOR < 4, reason="tools.analysis is TransformerLens 4.x's")

CLEAN = ["When Mary and John went to the store, John gave a drink to",
         "When Tom and Anna went to the park, Anna gave a book to"]
CORRUPT = ["When Mary and John went to the store, Mary gave a drink to",
           "When Tom and Anna went to the park, Tom gave a book to"]


@pytest.fixture
def pair(tiny_model):
    clean, corrupt = interp.to_tokens(tiny_model, CLEAN), interp.to_tokens(tiny_model, CORRUPT)
    assert clean.shape == corrupt.shape
    return clean, corrupt


def token_metric(logits):
    return logits[:, -1, 42].mean()


@pytest.mark.parametrize(("ours", "theirs", "by"), [
    ("resid_pre", "get_act_patch_resid_pre", "position"),
    ("attn_out", "get_act_patch_attn_out", "position"),
    ("mlp_out", "get_act_patch_mlp_out", "position"),
    ("z", "get_act_patch_attn_head_out_all_pos", "head"),
])
def test_activation_patching_equals_transformer_lens_get_act_patch(tiny_model, pair, ours, theirs, by):
    from transformer_lens import patching

    clean, corrupt = pair
    result = activation_patching(tiny_model, clean, corrupt, token_metric, hook=ours, by=by)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(clean)
        tl = getattr(patching, theirs)(tiny_model, corrupt, cache, token_metric)
    torch.testing.assert_close(result.scores, tl.cpu().to(result.scores.dtype), rtol=1e-4, atol=1e-4)


@tl4
def test_logit_lens_equals_transformer_lens_4(tiny_model):
    from transformer_lens.tools.analysis.logit_lens import logit_lens as tl_logit_lens

    tokens = interp.to_tokens(tiny_model, CLEAN[0])
    ours = logit_lens(tiny_model, tokens, k=5)
    theirs = tl_logit_lens(tiny_model, tokens, positions=-1, return_type="probs", top_k=5)
    top_ids = theirs.readout.top_ids.reshape(len(ours.labels), -1)[:, :5]
    top_values = theirs.readout.values.reshape(len(ours.labels), -1)[:, :5]  # with top_k: the top-k probs
    assert theirs.labels[0] == "0_pre" and theirs.labels[-1] == "final_post"
    assert top_ids.tolist() == ours.top_tokens.tolist()
    torch.testing.assert_close(top_values.float(), ours.top_probs.float(), rtol=1e-4, atol=1e-5)


@tl4
def test_attribution_patching_equals_transformer_lens_4_node_scores(tiny_model, pair):
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    clean, corrupt = pair
    theirs = attribution_patch(tiny_model, clean, corrupt, lambda logits: logits[0, -1, 42]).node_scores
    per_prompt = lambda logits: logits[:, -1, 42]
    heads = attribution_patching(tiny_model, clean, corrupt, per_prompt, hook="z", by="head")
    mlps = attribution_patching(tiny_model, clean, corrupt, per_prompt, hook="mlp_out")
    n_pos = clean.shape[1]
    for (layer, head), ours in zip([(l, h) for l in range(tiny_model.cfg.n_layers)
                                    for h in range(tiny_model.cfg.n_heads)], heads.scores.flatten()):
        summed = sum(v for node, v in theirs.items()
                     if node.kind == "attn_head_out" and node.layer == layer and node.head == head)
        assert float(ours) - heads.corrupted_metric == pytest.approx(summed, rel=1e-3, abs=1e-5), (layer, head)
    for layer in range(tiny_model.cfg.n_layers):
        for pos in range(n_pos):
            node = next(v for n, v in theirs.items() if n.kind == "mlp_out" and n.layer == layer and n.position == pos)
            assert float(mlps.scores[layer, pos]) - mlps.corrupted_metric == pytest.approx(node, rel=1e-3, abs=1e-5)


@tl4
def test_direct_logit_attribution_equals_transformer_lens_4(tiny_model):
    from transformer_lens.tools.analysis.direct_logit_attribution import direct_logit_attribution as tl_dla

    tokens = interp.to_tokens(tiny_model, CLEAN[0])
    heads = direct_logit_attribution(tiny_model, tokens, 42, per_head=True)
    theirs = tl_dla(tiny_model, tokens, 42, unit="head")
    is_head = [label[0] == "L" and "H" in label for label in heads.labels]
    assert [label for label, head in zip(heads.labels, is_head) if head] == theirs.labels[:-1]
    assert theirs.labels[-1] == "remainder"
    ours = torch.cat([heads.contributions[is_head], heads.contributions[[not h for h in is_head]].sum()[None]])
    torch.testing.assert_close(ours, theirs.attribution.flatten().detach(), rtol=1e-4, atol=1e-6)

    components = direct_logit_attribution(tiny_model, tokens, 42, per_head=False)
    theirs = tl_dla(tiny_model, tokens, 42, unit="component")
    assert len(theirs.labels) == len(components.labels)  # embed, pos_embed, then attention and MLP per layer
    torch.testing.assert_close(components.contributions, theirs.attribution.flatten().detach(), rtol=1e-4, atol=1e-6)


@tl4
@pytest.mark.parametrize("level", [0.95, 0.8])
def test_bootstrap_interval_equals_transformer_lens_4_bootstrap_ci(level):
    """Ours takes the nearest order statistic and TransformerLens's ``torch.quantile`` interpolates: with 1001
    resamples, (1 - level) / 2 * 1000 is a whole number and the two definitions agree."""
    from transformer_lens.utilities.statistics import bootstrap_ci

    values = torch.randn(50, 12) * torch.linspace(0.1, 3, 50)[:, None] + 1  # [statistic, item]
    ours = bootstrap_interval(values, resamples=1001, seed=0, level=level)
    theirs = bootstrap_ci(values, dim=1, confidence=level, n_resamples=1001, chunk_size=1001,
                          generator=torch.Generator().manual_seed(0))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
