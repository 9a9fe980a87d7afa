"""Shared fixtures: seeded RNGs, a network guard, and random-weight GPT-2 checkpoints built per session.

Tiers: ``tiny_*`` (2 layers, d_model 64) for unit tests; ``full_*`` (GPT-2 small's exact shape) for parity;
tests marked ``slow`` need the real GPT-2 small weights in the local Hugging Face cache.
"""

from __future__ import annotations

import random
import socket
import warnings

import numpy as np
import pytest
import torch

from interp.backends import AVAILABLE_BACKENDS
from interp.checkpoints import write_random_checkpoint
from interp.loading import load_model

TINY_SHAPE = dict(n_layer=2, n_embd=64, n_head=4, n_positions=128)

# Backend against backend needs both, which only TransformerLens 3.x has; CI runs these on 3.9 (.ci/run).
both_backends = pytest.mark.skipif(len(AVAILABLE_BACKENDS) < 2, reason=(
    "TransformerLens 4.x has only the bridge: backend-against-backend tests run on 3.9 (the second CI env)"))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail any test that tries to open a network connection (or even resolve a host name)."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access blocked by the test suite")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield
    assert not attempts, f"test tried to reach the network: {attempts}"


@pytest.fixture(autouse=True)
def _quiet_tl_deprecation():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-random-gpt2", seed=1, **TINY_SHAPE)


@pytest.fixture(scope="session")
def full_checkpoint(tmp_path_factory):
    """Random weights in GPT-2 small's exact shape (12 layers, d_model 768, 12 heads, n_ctx 1024, 50257)."""
    return write_random_checkpoint(tmp_path_factory.mktemp("full") / "random-gpt2-small-shape", seed=2)


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoint):
    return {b: load_model(tiny_checkpoint, backend=b, device="cpu") for b in AVAILABLE_BACKENDS}


@pytest.fixture(scope="session")
def tiny_raw_models(tiny_checkpoint):
    """Unprocessed loads (no LN folding, no centring): weights equal the checkpoint's."""
    off = dict(fold_ln=False, center_writing_weights=False, center_unembed=False)
    return {b: load_model(tiny_checkpoint, backend=b, device="cpu", **off) for b in AVAILABLE_BACKENDS}


@pytest.fixture(params=AVAILABLE_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def tiny_model(tiny_models, backend):
    return tiny_models[backend]


@pytest.fixture(scope="session")
def full_models(full_checkpoint):
    return {b: load_model(full_checkpoint, backend=b, device="cpu") for b in AVAILABLE_BACKENDS}


def gpt2_cached() -> bool:
    from interp.loading import weights_cached

    return weights_cached("gpt2")


@pytest.fixture(scope="session")
def gpt2_model():
    if not gpt2_cached():
        pytest.skip("GPT-2 small's weights are not in the local Hugging Face cache (connect once to download)")
    return load_model("gpt2", device="cpu")
