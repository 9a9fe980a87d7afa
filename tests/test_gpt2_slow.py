"""Known facts about the real GPT-2 small. Run only when its weights are in the local Hugging Face cache."""

from __future__ import annotations

import os

import pytest
import torch

from interp.heads import head_scores

pytestmark = pytest.mark.slow


def _rank_of(scores, layer, head):
    flat = scores.flatten().argsort(descending=True).tolist()
    return flat.index(layer * scores.shape[1] + head)


def test_hello_world_loss(gpt2_model):
    with torch.no_grad():
        loss = float(gpt2_model("Hello world!", return_type="loss"))
    assert abs(loss - 5.3319) < 1e-3


@pytest.fixture(scope="module")
def gpt2_scores(gpt2_model):
    return head_scores(gpt2_model, seq_len=50, batch=8)


@pytest.mark.parametrize("layer,head", [(5, 1), (5, 5), (6, 9), (7, 2), (7, 10)])
def test_known_induction_heads_rank_high(gpt2_scores, layer, head):
    assert _rank_of(gpt2_scores.induction, layer, head) < 10
    assert gpt2_scores.induction[layer, head] > 0.3


def test_previous_token_head_4_11(gpt2_scores):
    assert _rank_of(gpt2_scores.previous_token, 4, 11) < 3
    assert gpt2_scores.previous_token[4, 11] > 0.5


@pytest.mark.parametrize("layer,head", [(0, 1), (0, 10), (3, 0)])
def test_known_duplicate_token_heads(gpt2_scores, layer, head):
    assert _rank_of(gpt2_scores.duplicate_token, layer, head) < 10


def test_ablating_the_known_induction_heads_reduces_copying(gpt2_model):
    from interp.heads import repeated_random_tokens
    from interp.interventions import ablate_heads

    tokens = repeated_random_tokens(gpt2_model, seq_len=50, batch=8, seed=1)

    def second_copy_loss():
        with torch.no_grad():
            return float(gpt2_model(tokens, return_type="loss", loss_per_token=True)[:, 50:].mean())

    intact = second_copy_loss()
    with ablate_heads(gpt2_model, [(5, 1), (5, 5), (6, 9), (7, 2), (7, 10)]):
        ablated = second_copy_loss()
    assert ablated > intact + 0.5



IOI_TEMPLATES = [("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
                 ("When Tom and James went to the park, James gave a ball to", " Tom", " James"),
                 ("When Dan and Sid went to the shops, Sid gave an apple to", " Dan", " Sid"),
                 ("After Martin and Amy went to the party, Amy gave a gift to", " Martin", " Amy")]


def test_ioi_edges_into_the_logits_come_from_the_name_movers(gpt2_model):
    """IOI (Wang et al. 2022): the corrupted run swaps the names, the metric is the logit difference between
    the indirect object and the subject. Ranked by *signed* score (denoising EAP-IG: edges that restore the
    logit difference): the top edges into the logits come from the name movers 9.9, 9.6 and 10.0. Ranking by
    |score| would also lift the negative name movers Wang et al. report (10.7, 11.10), which this test does
    not ask about."""
    from interp.circuits import edge_attribution
    from interp.inputs import to_tokens

    clean = to_tokens(gpt2_model, [t for t, _, _ in IOI_TEMPLATES])
    corrupt = to_tokens(gpt2_model, [t.replace(io.strip(), "@").replace(s.strip(), io.strip()).replace("@", s.strip())
                                     for t, io, s in IOI_TEMPLATES])
    io_tokens = torch.tensor([gpt2_model.to_single_token(io) for _, io, _ in IOI_TEMPLATES])
    s_tokens = torch.tensor([gpt2_model.to_single_token(s) for _, _, s in IOI_TEMPLATES])

    def logit_diff(logits):
        last = logits[:, -1]
        rows = torch.arange(len(last))
        return last[rows, io_tokens] - last[rows, s_tokens]

    scores = edge_attribution(gpt2_model, clean, corrupt, logit_diff, method="eap-ig", steps=5,
                              direction="denoising")
    into_logits = sorted(((float(v), e.sender) for e, v in zip(scores.graph.edges, scores.scores)
                          if e.receiver == "logits"), reverse=True)
    top = [sender for _, sender in into_logits[:6]]
    assert {"a9.h9", "a9.h6", "a10.h0"} <= set(top), into_logits[:8]


# A SAELens-format GPT-2 small SAE, when one is on this machine: a folder with cfg.json, sae_weights.safetensors
# and reported_metrics.json (what its authors report: any of l0, explained_variance, ce_loss_score, and the
# held-out tokens they were measured on as tokens.npy [rows, pos], each row starting with BOS). For example
# gpt2-small-res-jb's blocks.7.hook_resid_pre with the numbers of its release notes.
GPT2_SAE = os.environ.get("INTERP_GPT2_SAE")


@pytest.mark.skipif(not GPT2_SAE, reason="set INTERP_GPT2_SAE to a SAELens-format GPT-2 small SAE folder")
def test_a_saelens_gpt2_small_sae_reproduces_its_reported_metrics(gpt2_model):
    import json
    from pathlib import Path

    import numpy as np

    from interp import sae as S

    folder = Path(GPT2_SAE)
    sae = S.load(folder)
    reported = json.loads((folder / "reported_metrics.json").read_text())
    tokens = torch.from_numpy(np.load(folder / "tokens.npy")).long()
    with torch.no_grad():
        clean = gpt2_model(tokens[:2])
        with S.splice(gpt2_model, sae, with_error=True):
            assert torch.equal(gpt2_model(tokens[:2]), clean)
    measured = S.evaluate(gpt2_model, sae, tokens).to_dict()
    tolerance = {"l0": dict(rel=0.1), "explained_variance": dict(abs=0.02), "ce_loss_score": dict(abs=0.02)}
    for key, value in reported.items():
        assert measured[key] == pytest.approx(value, **tolerance.get(key, dict(rel=0.05))), key
