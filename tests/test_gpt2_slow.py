"""Known facts about the real GPT-2 small. Run only when its weights are in the local Hugging Face cache."""

from __future__ import annotations

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

