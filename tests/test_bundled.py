"""The bundled offline model: it loads offline on both backends, and it shows what its model card claims.

Every threshold here is read from ``interp/bundled/model_card.json``, written by the training script from
its own measurements, so the tests and the card cannot drift apart.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import both_backends

from experiments import bundled_card, bundled_corpus, common, temperature, train_bundled_model
from interp.backends import AVAILABLE_BACKENDS, DEFAULT_BACKEND
from interp.heads import DETECTORS, detector_tokens, head_scores, repeated_random_tokens
from interp.interventions import ablate_heads
from interp.loading import BUNDLED_DIR, load_model, model_info

pytestmark = pytest.mark.skipif(not (BUNDLED_DIR / "model_card.json").exists(),
                                reason="the bundled model has not been trained yet")


@pytest.fixture(scope="module")
def card():
    return json.loads((BUNDLED_DIR / "model_card.json").read_text())


@pytest.fixture(scope="module")
def bundled():
    return {b: load_model("bundled", backend=b, device="cpu") for b in AVAILABLE_BACKENDS}


def test_small_standard_checkpoint_with_the_real_tokenizer():
    config = json.loads((BUNDLED_DIR / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["vocab_size"] == 50257 and config["tie_word_embeddings"]
    assert (BUNDLED_DIR / "model.safetensors").stat().st_size < 15 * 2**20


def test_loads_offline_on_every_backend(bundled, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    for model in bundled.values():
        assert model_info(model).label.startswith("bundled")
        assert model.to_tokens("Hello world").tolist() == [[50256, 15496, 995]]


@both_backends
def test_backends_agree_on_the_bundled_model(bundled):
    tokens = bundled[DEFAULT_BACKEND].to_tokens("def main():\n    return 0")
    with torch.no_grad():
        torch.testing.assert_close(bundled["hooked"](tokens).log_softmax(-1), bundled["bridge"](tokens).log_softmax(-1),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("score", list(DETECTORS))
def test_detectors_flag_exactly_the_cards_heads(bundled, card, backend, score):
    model = bundled[backend]
    threshold = card["claims"]["thresholds"]["head_score"]
    claimed = card["claims"]["flagged_heads"][score]
    scores = head_scores(model, seq_len=50, batch=16, seed=0, token_pool=detector_tokens(model))[score]
    flagged = [[layer, head] for layer in range(scores.shape[0]) for head in range(scores.shape[1])
               if scores[layer, head] >= threshold]
    assert flagged == claimed
    if score in ("induction", "previous_token"):  # issue 6: at least one clear head of each kind
        assert flagged, f"no {score} head scores >= {threshold}"


def test_in_context_loss_matches_the_card(bundled, card):
    model = bundled[DEFAULT_BACKEND]
    tokens = repeated_random_tokens(model, seq_len=50, batch=16, seed=1, token_pool=detector_tokens(model))
    with torch.no_grad():
        nll = model(tokens, return_type="loss", loss_per_token=True)
    measured = card["measured"]["detectors"]["frequent_tokens"]
    assert float(nll[:, 1:50].mean()) == pytest.approx(measured["first_copy_loss"], abs=1e-3)
    assert float(nll[:, 50:].mean()) == pytest.approx(measured["second_copy_loss"], abs=1e-3)
    drop = float(nll[:, 1:50].mean() - nll[:, 50:].mean())
    assert drop >= card["claims"]["thresholds"]["copy_loss_drop"], "induction should make the second copy easier"


def test_the_cards_heads_are_the_copying_circuit(bundled, card, backend):
    """Causal check: zero-ablating the flagged induction heads, or the flagged previous-token head, undoes the
    second copy's advantage; ablating every other head leaves it."""
    model = bundled[backend]
    tokens = repeated_random_tokens(model, seq_len=50, batch=16, seed=1, token_pool=detector_tokens(model))

    def second_copy_loss() -> float:
        with torch.no_grad():
            return float(model(tokens, return_type="loss", loss_per_token=True)[:, 50:].mean())

    flagged = card["claims"]["flagged_heads"]
    drop = card["claims"]["thresholds"]["copy_loss_drop"]
    intact = second_copy_loss()
    for name in ("induction", "previous_token"):
        with ablate_heads(model, [tuple(h) for h in flagged[name]]):
            assert second_copy_loss() >= intact + drop, name
    circuit = {tuple(h) for name in ("induction", "previous_token") for h in flagged[name]}
    others = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)
              if (layer, head) not in circuit]
    with ablate_heads(model, others):
        assert second_copy_loss() < intact + drop


def test_temperature_claims(bundled, card):
    config = temperature.Config(**{**card["measured"]["temperature"]["config"],
                                   "temperatures": tuple(card["measured"]["temperature"]["config"]["temperatures"])})
    result = temperature.compute(bundled[DEFAULT_BACKEND], config, progress=lambda line: None)
    d2 = {t: temperature.mean_of(rows, "distinct_2") for t, rows in result.samples.items()}
    logp = {t: temperature.mean_of(rows, "mean_logprob") for t, rows in result.samples.items()}
    thresholds = card["claims"]["thresholds"]
    assert d2[0.1] <= d2[1.0] - thresholds["distinct2_gap"]
    assert logp[10.0] <= logp[1.0] - thresholds["logprob_gap"]


def test_writing_matches_the_card(bundled, card):
    """The card's writing numbers (everyday prompts at T = 0.1, 1 and 10) are what the shipped model does, and
    its targets met follow from its own numbers. 0.02 is about five samples of the 256 per temperature."""
    measured = bundled_card.writing(bundled[DEFAULT_BACKEND])
    for t, row in card["measured"]["writing"]["by_T"].items():
        for key in ("distinct_2", "repeated_4gram", "unlooped"):
            assert measured["by_T"][t][key] == pytest.approx(row[key], abs=0.02), (t, key)
    assert bundled_card.claims(card["measured"]) == card["claims"]


def test_held_out_loss_and_loops_match_the_card(bundled, card):
    try:
        splits = bundled_card.held_out_splits(bundled[DEFAULT_BACKEND].tokenizer)
    except bundled_corpus.CorpusError as err:
        pytest.skip(f"the corpus packages are not installed: {err}")
    losses = bundled_card.held_out_losses(bundled[DEFAULT_BACKEND], splits)
    assert losses == pytest.approx(card["measured"]["held_out_loss"], abs=1e-3)
    assert bundled_card.held_out_loops(splits) == card["measured"]["held_out_loops"]


@pytest.mark.parametrize(("successes", "n"), [(0, 10), (56, 64), (81, 100), (250, 256)])
def test_wilson_interval_is_where_the_score_test_is_just_significant(successes, n):
    # Wilson's definition: the endpoints are the p with (p_hat - p)^2 = z^2 p (1 - p) / n, one on each side.
    low, high = bundled_card.wilson_interval(successes, n)
    p_hat = successes / n
    assert low <= p_hat <= high
    for p in (low, high):
        assert (p_hat - p) ** 2 == pytest.approx(1.96 ** 2 * p * (1 - p) / n, abs=1e-12)


def test_training_rows_start_like_prompts_and_copy_once():
    gen = torch.Generator().manual_seed(0)
    text = torch.arange(1000, 3000)
    rows = train_bundled_model.corpus_rows(text, 3, 64, gen, bos=50256)
    assert rows.shape == (3, 64) and (rows[:, 0] == 50256).all() and (rows[:, 2:] - rows[:, 1:-1] == 1).all()
    copies, counted = train_bundled_model.copy_rows(4, 64, (5, 9), [torch.arange(10, 20), None], text, gen, bos=50256)
    assert copies.shape == (4, 64) and counted.shape == (4, 63) and (copies[:, 0] == 50256).all()
    for row, mask in zip(copies, counted):
        k = int((~mask).sum())
        assert 5 <= k <= 9 and not mask[:k].any() and mask[k:].all()  # the first copy's targets do not count
        assert torch.equal(row[1 : k + 1], row[k + 1 : 2 * k + 1])  # exactly two copies, then text
        assert (row[2 * k + 2 :] - row[2 * k + 1 : -1] == 1).all() and row[2 * k + 1] >= 1000
    assert (copies[0, 1:6] < 20).all()  # row 0 draws from the first pool


def test_default_model_falls_back_to_bundled_and_says_so(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    model = common.resolve_model(None, device="cpu")
    assert model_info(model).spec == "bundled"
    assert "using the bundled offline model" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--steps", "-1"], ["--dropout", "1.5"], ["--card-only", "--out", "{tmp}"]])
def test_trainer_rejects_bad_arguments_before_any_work(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_bundled_model.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err
