"""Harvesting over a corpus (the Python standard library's ``json`` package, which every Python has):
packing, the oracle (``run_with_cache`` on the same rows, exactly), one process against two under torchrun
(byte for byte), a run killed with SIGKILL and resumed, a mismatched rerun refused, and reading back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interp import harvest as hv
from interp.loading import load_model

CORPUS = Path(json.__file__).parent  # the stdlib's json package: a few files of real Python
HOOKS = ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"]
PATTERN = "**/[des]*.py"  # decoder.py, encoder.py, scanner.py: about 6,000 tokens
SMALL = dict(context=32, shard_rows=64, batch_size=8, pattern=PATTERN)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return load_model("bundled", device="cpu")


@pytest.fixture(scope="module")
def harvested(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("harvest") / "json"
    hv.harvest(model, CORPUS, hooks=HOOKS, out=out, progress=False, **SMALL)
    return out


def test_rows_pack_the_documents_in_order_each_starting_with_bos(model, harvested):
    h = hv.open(harvested)
    tokens = h.tokens
    assert (tokens[:, 0] == hv.EOT).all() and tokens.shape[1] == 32
    stream = []
    for path in sorted(CORPUS.glob(PATTERN), key=lambda p: str(p.relative_to(CORPUS.parent))):
        stream += model.tokenizer(path.read_text(), add_special_tokens=False, verbose=False)["input_ids"] + [hv.EOT]
    n = len(stream) // 31
    assert tokens.shape[0] == n, "every full row, and the last partial one dropped"
    assert tokens[:, 1:].flatten().tolist() == stream[:31 * n]
    assert [d["name"] for d in h.manifest["corpus"]] == sorted(d["name"] for d in h.manifest["corpus"])


def test_grouped_tokenisation_packs_like_one_document_at_a_time(model, tmp_path, monkeypatch):
    """Text documents are tokenised in groups (one call each); a group boundary, or a pre-tokenised file
    between texts, changes no row."""
    import numpy as np

    for path in sorted(CORPUS.glob(PATTERN)):
        shutil.copy(path, tmp_path / path.name)
    np.save(tmp_path / "e_tokens.npy", np.arange(100, 400))  # sorts between decoder.py and encoder.py
    names = sorted(p.name for p in tmp_path.iterdir())
    stream = []
    for name in names:
        path = tmp_path / name
        stream += (np.load(path).tolist() if name.endswith(".npy") else
                   model.tokenizer(path.read_text(), add_special_tokens=False, verbose=False)["input_ids"]) + [hv.EOT]
    expected = [[hv.EOT] + stream[i:i + 31] for i in range(0, len(stream) - 30, 31)]
    for chars in (1, 5000, 1 << 30):
        monkeypatch.setattr(hv, "_TOKENIZE_CHARS", chars)
        assert list(hv._rows(hv._documents(tmp_path, "*", model.cfg.d_vocab), model.tokenizer, 32)) == expected


# Characters that stress GPT-2's pre-tokenizer at a cut: whitespace of every kind Python and the regex may
# disagree on (\x1c is whitespace to Python only; U+180E and U+200B to neither now), contractions, digits,
# letters, punctuation and a character outside the BMP.
_TRICKY = " \n\n\n\t\r\x0b\x0c\x1c\x85\xa0\u180e\u200b\u2028\u3000'sdtllve1.é😀ab"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=_TRICKY, max_size=120), limit=st.integers(1, 30))
def test_a_long_document_tokenises_in_pieces_exactly_as_whole(model, text, limit):
    """A document longer than the tokenising limit is cut into pieces at safe points; the pieces are the text,
    and their tokens, joined, are the whole text's."""
    pieces = hv._pieces(text, limit)
    assert "".join(pieces) == text
    for piece in pieces[1:]:
        assert piece[0] in " \t\n\r\x0b\x0c" and not piece[1].isspace()
    def ids(t):
        return model.tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]
    assert [i for piece in pieces for i in ids(piece)] == ids(text)


def test_a_tokenizer_that_pre_tokenises_otherwise_gets_every_document_whole(monkeypatch):
    """The cuts are safe for GPT-2's pre-tokenizer only: with a prefix space added to each call, "a b" cut
    into "a" and " b" would tokenise as " a", "  b", so such a tokenizer gets the document in one call."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    from interp.tokenizer import gpt2_tokenizer, gpt2_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir(), local_files_only=True)  # not the shared one
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert not hv._cuts_are_safe(tokenizer) and hv._cuts_are_safe(gpt2_tokenizer())
    monkeypatch.setattr(hv, "_TOKENIZE_CHARS", 1)
    text = "a b c\nd e"
    whole = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    assert list(hv._token_ids([hv._Document("d", "", text=text)], tokenizer)) == [(whole, True)]


def test_a_long_document_is_cut_within_the_limit_and_packs_as_whole(model, tmp_path, monkeypatch):
    """One long document (the stdlib json package's files joined), tokenised in pieces of at most 2,000
    characters (code has a safe cut at nearly every word), gives the rows it gives whole."""
    text = "\n".join(p.read_text() for p in sorted(CORPUS.glob(PATTERN)))
    (tmp_path / "one.txt").write_text(text)
    whole = list(hv._rows(hv._documents(tmp_path, "*", model.cfg.d_vocab), model.tokenizer, 32))
    monkeypatch.setattr(hv, "_TOKENIZE_CHARS", 2000)
    pieces = hv._pieces(text, 2000)
    assert len(pieces) >= len(text) // 2000 and max(map(len, pieces)) <= 2000, [len(p) for p in pieces]
    assert list(hv._rows(hv._documents(tmp_path, "*", model.cfg.d_vocab), model.tokenizer, 32)) == whole


def test_harvested_activations_equal_run_with_cache_exactly(model, harvested):
    h = hv.open(harvested)
    tokens = h.tokens[:128]  # the first two shards
    for name in HOOKS:
        ours = torch.cat([h.shard(0, name), h.shard(1, name)])
        theirs = []
        for start in range(0, len(tokens), 8):  # the harvest's micro-batches
            with torch.no_grad():
                _, cache = model.run_with_cache(tokens[start:start + 8], names_filter=[name])
            theirs.append(cache[name])
        assert torch.equal(ours, torch.cat(theirs)), name


def test_statistics_are_the_activations_mean_and_variance(harvested):
    h = hv.open(harvested)
    for name in HOOKS:
        acts = h[name].double()
        flat = acts.reshape(-1, *acts.shape[2:])
        torch.testing.assert_close(h.mean(name).double(), flat.mean(0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(h.var(name).double(), flat.var(0, unbiased=False), rtol=1e-5, atol=1e-6)


def test_a_bfloat16_harvest_keeps_the_statistics_of_the_activations_before_the_cast(model, harvested, tmp_path):
    """The activations are stored in bfloat16; their mean and variance are those of the float32 activations the
    model computed (the float32 harvest's, exactly), not of the rounded values stored."""
    out = hv.harvest(model, CORPUS, hooks=HOOKS[:1], out=tmp_path / "bf16", dtype="bfloat16", progress=False, **SMALL)
    h16, h32 = hv.open(out), hv.open(harvested)
    assert h16[HOOKS[0]].dtype == torch.bfloat16
    torch.testing.assert_close(h16[HOOKS[0]], h32[HOOKS[0]].to(torch.bfloat16), rtol=0, atol=0)
    assert torch.equal(h16.mean(HOOKS[0]), h32.mean(HOOKS[0])) and torch.equal(h16.var(HOOKS[0]), h32.var(HOOKS[0]))
    rounded = h16[HOOKS[0]].double().flatten(0, 1).mean(0)
    assert not torch.allclose(h16.mean(HOOKS[0]).double(), rounded, rtol=0, atol=1e-7)


def test_reading_back_checks_hashes_and_shuffles_reproducibly(harvested, tmp_path):
    h = hv.open(harvested)
    first = [b for b in h.batches(HOOKS[0], 100, seed=3)]
    again = [b for b in h.batches(HOOKS[0], 100, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    everything = torch.cat(first)
    assert everything.shape[0] == h.tokens.numel()
    assert torch.equal(everything.sum(0), h[HOOKS[0]].reshape(-1, everything.shape[1]).sum(0)) or \
        torch.allclose(everything.sum(0), h[HOOKS[0]].reshape(-1, everything.shape[1]).sum(0), atol=1e-3)
    broken = tmp_path / "broken"
    shutil.copytree(harvested, broken)
    shard = broken / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its sha256"):
        hv.open(broken).shard(1, HOOKS[0])
    hv.open(broken).shard(0, HOOKS[0])  # the others still read


def test_batches_skip_without_reading_and_a_stream_gives_the_harvests_batches(model, harvested, monkeypatch):
    """``start`` skips batches of the same order without reading their shards; ``drop_last`` leaves out each
    shard's short batch; a ``Stream`` of the harvested rows, computed as it goes, gives the harvest's batches
    bit for bit (the same shards, the same micro-batches, float32)."""
    h = hv.open(harvested)
    for drop_last in (False, True):
        everything = list(h.batches(HOOKS[0], 100, seed=3, skip_first=True, drop_last=drop_last))
        assert len(everything) == h.batch_count(100, skip_first=True, drop_last=drop_last)
        assert all(len(b) == 100 for b in everything) or not drop_last
        tail = list(h.batches(HOOKS[0], 100, seed=3, skip_first=True, drop_last=drop_last, start=len(everything) - 3))
        assert len(tail) == 3 and all(torch.equal(a, b) for a, b in zip(tail, everything[-3:]))
    read: list[int] = []
    real = hv.Harvest.shard
    monkeypatch.setattr(hv.Harvest, "shard", lambda self, index, name: read.append(index) or real(self, index, name))
    assert list(h.batches(HOOKS[0], 100, start=h.batch_count(100))) == [] and read == []
    monkeypatch.undo()
    stream = hv.Stream(model, h.tokens, HOOKS, batch_size=8, shard_rows=SMALL["shard_rows"])
    assert stream.batch_count(100, skip_first=True) == h.batch_count(100, skip_first=True)
    for name in HOOKS:
        ours = list(stream.batches(name, 100, seed=5, skip_first=True))
        theirs = list(h.batches(name, 100, seed=5, skip_first=True))
        assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_a_stream_refuses_bad_input_before_any_forward(model):
    tokens = torch.zeros(4, 16, dtype=torch.int64)
    with pytest.raises(ValueError, match="hooks is empty"):
        hv.Stream(model, tokens, [])
    assert hv.Stream(model, tokens, HOOKS[1]).hooks == [HOOKS[1]]  # one name, not its characters
    with pytest.raises(KeyError, match="no hook point"):
        hv.Stream(model, tokens, ["blocks.9.hook_resid_pre"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        hv.Stream(model, tokens - 1, HOOKS)
    with pytest.raises(TypeError, match="integer tensor"):
        hv.Stream(model, tokens.float(), HOOKS)
    with pytest.raises(KeyError, match="not streamed here"):
        hv.Stream(model, tokens, HOOKS[:1]).shard(0, HOOKS[1])


def test_reading_refuses_a_bad_batch_size_shard_index_or_hook_before_any_forward(model, harvested):
    """On the call, not on the first batch, and for a harvest and a stream alike."""
    h = hv.open(harvested)
    stream = hv.Stream(model, h.tokens, HOOKS, shard_rows=SMALL["shard_rows"])
    n = len(h.manifest["shards"])
    forwards = []
    handle = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        for source in (h, stream):
            with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
                source.batches(HOOKS[0], 0)
            with pytest.raises(ValueError, match="start must be >= 0, got -1"):
                source.batches(HOOKS[0], 8, start=-1)
            with pytest.raises(ValueError, match="batch_size must be >= 1"):
                source.batch_count(0)
            for index in (n, -1):
                with pytest.raises(ValueError, match=rf"shard index must be in 0..{n - 1}, got {index}"):
                    source.shard(index, HOOKS[0])
            with pytest.raises(TypeError, match="shard index must be an integer"):
                source.shard(0.5, HOOKS[0])
            with pytest.raises(KeyError, match="'blocks.0.hook_resid_post' is not (stored|streamed) here"):
                source.batches("blocks.0.hook_resid_post", 8)  # was raised at the first batch
    finally:
        handle.remove()
    assert not forwards


def test_a_rerun_with_another_hook_or_corpus_is_refused(model, harvested, tmp_path):
    with pytest.raises(hv.HarvestMismatchError, match="hooks"):
        hv.harvest(model, CORPUS, hooks=HOOKS[:1], out=harvested, progress=False, **SMALL)
    with pytest.raises(hv.HarvestMismatchError, match="corpus"):
        hv.harvest(model, CORPUS / "decoder.py", hooks=HOOKS, out=harvested, progress=False, **SMALL)
    stats = tmp_path / "stats"
    hv.harvest(model, CORPUS, hooks=HOOKS, out=stats, progress=False, stats_only=True, **SMALL)
    only = hv.open(stats)
    torch.testing.assert_close(only.mean(HOOKS[0]), hv.open(harvested).mean(HOOKS[0]))
    with pytest.raises(KeyError, match="statistics only"):
        only.shard(0, HOOKS[0])


def test_new_weights_at_the_same_path_are_a_different_model(tmp_path):
    """The checkpoint's hash is computed once per process while the file stays: weights rewritten in place
    (same size) are hashed again, and the harvest refuses to mix them."""
    from interp.checkpoints import write_random_checkpoint

    shape = dict(n_layer=2, n_embd=32, n_head=2, n_positions=64, with_tokenizer=True)
    checkpoint = write_random_checkpoint(tmp_path / "ckpt", seed=1, **shape)
    hv.harvest(load_model(checkpoint, device="cpu"), CORPUS, hooks=HOOKS[:1], out=tmp_path / "h", progress=False,
               **SMALL)
    first = json.loads((tmp_path / "h" / "run.json").read_text())["model"]["checkpoint_sha256"]
    weights = checkpoint / "model.safetensors"
    size = weights.stat().st_size
    write_random_checkpoint(checkpoint, seed=2, **shape)
    assert weights.stat().st_size == size
    with pytest.raises(hv.HarvestMismatchError, match="model"):
        hv.harvest(load_model(checkpoint, device="cpu"), CORPUS, hooks=HOOKS[:1], out=tmp_path / "h",
                   progress=False, **SMALL)
    import hashlib

    from interp.loading import model_info

    assert hv._checkpoint_sha256(model_info(load_model(checkpoint, device="cpu"))) == hashlib.sha256(
        weights.read_bytes()).hexdigest() != first


def test_one_hook_name_alone_is_one_hook(model, tmp_path):
    out = hv.harvest(model, CORPUS, hooks=HOOKS[1], out=tmp_path / "one", progress=False, **SMALL)
    assert hv.open(out).hooks == [HOOKS[1]]


def test_a_harvest_or_stream_under_an_intervention_is_refused(model, tmp_path):
    """A steer's activations would be stored as the model's own, with nothing in the manifest to say so, and a
    rerun without it would resume into the same folder."""
    import interp

    stream = hv.Stream(model, torch.zeros(4, 16, dtype=torch.int64), HOOKS[:1])
    with interp.steer(model, torch.ones(model.cfg.d_model), layer=0):
        with pytest.raises(ValueError, match=r"hooks are attached to the model \(blocks\.0\."):
            hv.harvest(model, CORPUS, hooks=HOOKS, out=tmp_path / "steered", progress=False, **SMALL)
        with pytest.raises(ValueError, match="outside the intervention"):
            stream.shard(0, HOOKS[0])
    assert not (tmp_path / "steered").exists()
    assert stream.shard(0, HOOKS[0]).shape[:2] == (4, 16)  # outside it, as before


def test_bad_input_is_refused_before_any_forward(model, tmp_path):
    with pytest.raises(KeyError, match="no hook point"):
        hv.harvest(model, CORPUS, hooks=["blocks.9.hook_resid_pre"], out=tmp_path / "a", progress=False)
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        hv.harvest(model, tmp_path / "missing", hooks=HOOKS, out=tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="context must be in"):
        hv.harvest(model, CORPUS, hooks=HOOKS, out=tmp_path / "c", context=10**6, progress=False)
    (tmp_path / "a file").write_text("not a folder")
    forwards = []
    handle = model.register_forward_pre_hook(lambda *args: forwards.append(1))
    try:
        with pytest.raises(NotADirectoryError, match=r"a file' is a file, not a folder \(for the harvest's shards\)"):
            hv.harvest(model, CORPUS, hooks=HOOKS, out=tmp_path / "a file", progress=False)
    finally:
        handle.remove()
    assert not forwards
    # a folder's default pattern takes every file: a compiled module in __pycache__ is binary, not a document
    folder = tmp_path / "package"
    (folder / "__pycache__").mkdir(parents=True)
    (folder / "module.py").write_text("x = 1\n")
    (folder / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"\xa7\r\r\n\0\0\0\0" + bytes(range(256)))
    with pytest.raises(ValueError, match=r"module.cpython-311.pyc' is binary .* pattern"):
        hv.harvest(model, folder, hooks=HOOKS, out=tmp_path / "e", context=4, progress=False)
    hv.harvest(model, folder, hooks=HOOKS, out=tmp_path / "f", context=4, pattern="**/*.py", progress=False)
    assert not any((tmp_path / name).exists() for name in "ace")
    # the command says it in one line, as written (a KeyError's str() would wrap it in quotes)
    command = _cli(tmp_path / "d")
    command[command.index(f"--hook={HOOKS[0]}")] = "--hook=blocks.9.hook_resid_pre"
    proc = subprocess.run(command, capture_output=True, text=True, env=_env())
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert line.startswith("error: no hook point named 'blocks.9.hook_resid_pre'; did you mean ['blocks."), line


def _cli(out: Path, *, torchrun: int = 0) -> list[str]:
    args = ["-m", "interp.harvest", str(CORPUS), "--out", str(out), "--context", "32", "--shard-rows", "4",
            "--pattern", PATTERN, "--no-progress"] + [f"--hook={h}" for h in HOOKS]
    if torchrun:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", *args]
    return [sys.executable, *args]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


BAD_TOKEN_FILES = {  # a float would be cut to an integer, an id outside the vocabulary fail a shard in
    "floats": (lambda np: np.array([15.7, 2.0] * 40), "holds a float64 array of shape"),
    "booleans": (lambda np: np.ones(80, dtype=bool), "holds a bool array"),
    "rows, not a document": (lambda np: np.arange(80).reshape(8, 10), r"shape \(8, 10\): a document is a 1-d"),
    "an id past the vocabulary": (lambda np: np.array([5] * 79 + [50257]), "ids from 5 to 50257, outside the vocab"),
    "a negative id": (lambda np: np.array([-3] + [5] * 79), "ids from -3 to 5, outside the vocabulary 0..50256"),
}


@pytest.mark.parametrize("case", list(BAD_TOKEN_FILES))
def test_a_bad_token_file_is_refused_before_any_forward_or_file(model, tmp_path, case):
    import numpy as np

    make, message = BAD_TOKEN_FILES[case]
    (tmp_path / "corpus").mkdir()
    np.save(tmp_path / "corpus" / "a_good.npy", np.arange(100, 200))
    np.save(tmp_path / "corpus" / "b_bad.npy", make(np))
    forwards = []
    handle = model.register_forward_pre_hook(lambda *args: forwards.append(1))
    try:
        with pytest.raises(ValueError, match=message) as err:
            hv.harvest(model, tmp_path / "corpus", hooks=HOOKS, out=tmp_path / "out", context=16, progress=False)
    finally:
        handle.remove()
    assert "b_bad.npy" in str(err.value) and "\n" not in str(err.value)
    assert not forwards and not (tmp_path / "out").exists()


def test_joining_on_a_gpu_machine_puts_each_rank_on_its_own_gpu(monkeypatch):
    """What ``interp.distributed.join`` asks of torch on a machine with GPUs, with torch's calls recorded (no GPU
    here): the local rank's own GPU (in turn, past the last GPU), nccl for CUDA tensors and gloo for CPU ones
    (the SAE's gradients live on the CPU); gloo alone without GPUs."""
    import torch.distributed as dist

    from interp import distributed

    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(calls) and calls[-1][0] == "init")
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.join() == (1, 2)
    assert calls == [("set_device", 1), ("init", "cpu:gloo,cuda:nccl")]
    calls.clear()
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.join() == (1, 2) and calls == [("set_device", 1), ("init", "cpu:gloo,cuda:nccl")]
    calls.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.join() == (1, 2) and calls == [("init", "gloo")]


def test_two_processes_write_exactly_what_one_writes(tmp_path):
    """torchrun with gloo on the CPU: 2 processes (1 thread each) against 1 (the machine's threads)."""
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli(one), check=True, env=_env(), capture_output=True, timeout=300)
    run = subprocess.run(_cli(two, torchrun=2), env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert _files(one) == _files(two)


STREAM_WORKER = """
import json, sys, torch
from safetensors.torch import save_file
from interp import distributed, harvest as hv
from interp.loading import load_model
hooks, shard_rows, rows = json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
model = load_model("bundled", device="cpu")
calls = [0]
forward = hv.run_until
hv.run_until = lambda *args: calls.__setitem__(0, calls[0] + 1) or forward(*args)
stream = hv.Stream(model, hv.open(sys.argv[1]).tokens[:rows], hooks, batch_size=8, shard_rows=shard_rows)
shards = {f"{i}/{name}": stream.shard(i, name) for i in range(len(stream._shard_tokens(False))) for name in hooks}
rank, world = distributed.join()
if rank == 0:
    save_file(shards, sys.argv[2] + ".safetensors")
open(f"{sys.argv[2]}.{rank}.json", "w").write(json.dumps(calls[0]))
distributed.leave()
"""


def test_two_processes_split_a_streams_forwards_and_each_holds_every_shard(harvested, tmp_path):
    """Under torchrun a ``Stream``'s ranks split its micro-batches (rank 0 the 1st, 3rd, 5th, ... over all
    shards) and broadcast them: each rank runs half the forwards, and every shard it holds equals the harvest's
    rows, bit for bit (micro-batches of the same 8 rows). 77 rows in shards of 24 are micro-batches 3, 3, 3 and
    1, 10 in all: 5 for each rank, and the last shard has none for rank 0, which runs one single-row forward
    there for the shapes it receives."""
    from safetensors.torch import load_file

    h = hv.open(harvested)
    shard_rows, rows = 24, 77
    script = tmp_path / "worker.py"
    script.write_text(STREAM_WORKER)
    args = [str(script), str(harvested), str(tmp_path / "out"), json.dumps(HOOKS), str(shard_rows), str(rows)]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                         env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    counts = [json.loads((tmp_path / f"out.{rank}.json").read_text()) for rank in (0, 1)]
    assert counts == [5 + 1, 5]
    shards = load_file(tmp_path / "out.safetensors")
    assert len(shards) == 4 * len(HOOKS)
    for name in HOOKS:
        whole = h[name][:rows]
        for i in range(4):
            assert torch.equal(shards[f"{i}/{name}"], whole[i * shard_rows:(i + 1) * shard_rows]), (i, name)


def test_a_run_killed_with_sigkill_resumes_to_the_same_bytes(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cli(whole), check=True, env=_env(), capture_output=True, timeout=300)
    proc = subprocess.Popen(_cli(killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.glob("shard-*.safetensors"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(killed.glob("shard-*.safetensors")))
    assert 3 <= written < len(list(whole.glob("shard-*.safetensors"))), "killed mid-run"
    assert not (killed / "manifest.json").exists()
    subprocess.run(_cli(killed), check=True, env=_env(), capture_output=True, timeout=300)
    assert _files(killed) == _files(whole), "the same files, bytes and all; no partial file left"


@pytest.mark.parametrize("where", ["writing a shard", "a forward"])
def test_an_error_mid_run_leaves_whole_shards_and_a_rerun_finishes(model, tmp_path, monkeypatch, where):
    """An error writing a shard (the disk refusing the fourth shard) or in a forward (in the fourth shard)
    reaches the caller; the shards written are whole, with their hashes, and none after the error; and a rerun
    ends with the files of an uninterrupted run."""
    options = {**SMALL, "shard_rows": 16}
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    hv.harvest(model, CORPUS, hooks=HOOKS, out=whole, progress=False, **options)
    assert len(list(whole.glob("shard-*.safetensors"))) > 6
    write, forward, forwards = hv.atomic_write, hv.run_until, []

    def refuse_the_fourth_shard(path, data):
        if path.name == hv._shard_name(3):
            raise OSError(28, "No space left on device")
        write(path, data)

    def fail_in_the_fourth_shard(*args):
        forwards.append(1)
        if len(forwards) == 3 * 16 // SMALL["batch_size"] + 1:
            raise RuntimeError("a forward failed")
        return forward(*args)

    if where == "writing a shard":
        monkeypatch.setattr(hv, "atomic_write", refuse_the_fourth_shard)
    else:
        monkeypatch.setattr(hv, "run_until", fail_in_the_fourth_shard)
    with pytest.raises(OSError if where == "writing a shard" else RuntimeError, match="No space|forward failed"):
        hv.harvest(model, CORPUS, hooks=HOOKS, out=broken, progress=False, **options)
    left = sorted(p.name for p in broken.iterdir() if p.name != "run.json")
    assert left == sorted(f"{hv._shard_name(i)}{end}" for i in range(3) for end in ("", ".sha256"))
    assert all((broken / name).read_bytes() == (whole / name).read_bytes() for name in left)
    monkeypatch.undo()
    hv.harvest(model, CORPUS, hooks=HOOKS, out=broken, progress=False, **options)
    assert _files(broken) == _files(whole)


def test_mean_ablation_takes_its_means_from_a_harvest(model, harvested):
    """The harvest's mean of layer 0's z over every harvested token equals the mean over the same tokens."""
    from interp.interventions import ablate_heads

    h = hv.open(harvested)
    probe = h.tokens[:2]
    with torch.no_grad():
        with ablate_heads(model, [(0, 1)], mode="mean", reference=h):
            from_harvest = model(probe)
        with ablate_heads(model, [(0, 1)], mode="mean", reference=h.tokens):
            from_tokens = model(probe)
    torch.testing.assert_close(from_harvest, from_tokens, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="has no blocks.1.attn.hook_z"):
        ablate_heads(model, [(1, 0)], mode="mean", reference=h).__enter__()


def test_head_scores_on_corpus_rows_with_an_interval(model, harvested):
    """Row by row, the mean equals head_scores on all the rows at once (the detectors average over rows and
    positions alike, and every row has the same length); the interval contains it."""
    from interp.heads import corpus_head_scores, head_scores

    h = hv.open(harvested)
    rows = h.tokens[:24]
    corpus = corpus_head_scores(model, rows)
    whole = head_scores(model, tokens=rows)
    for name in corpus.scores:
        torch.testing.assert_close(corpus.scores[name], whole[name], rtol=1e-5, atol=1e-6)
        assert bool((corpus.ci_low[name] <= corpus.scores[name] + 1e-6).all())
        assert bool((corpus.scores[name] <= corpus.ci_high[name] + 1e-6).all())
    assert len(corpus.to_frame()) == len(corpus.scores) * model.cfg.n_layers * model.cfg.n_heads
    assert corpus_head_scores(model, h).rows == len(h.tokens)


def test_a_datasets_corpus_packs_like_the_same_texts_in_files(model, tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [(CORPUS / name).read_text() for name in ("decoder.py", "encoder.py")]
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i}.txt").write_text(text)
    options = dict(context=32, shard_rows=64, batch_size=8, progress=False, stats_only=True)
    hv.harvest(model, folder, hooks=HOOKS[:1], out=tmp_path / "files", **options)
    hv.harvest(model, datasets.Dataset.from_dict({"text": texts}), hooks=HOOKS[:1], out=tmp_path / "ds", **options)
    assert torch.equal(hv.open(tmp_path / "files").tokens, hv.open(tmp_path / "ds").tokens)
    with pytest.raises(ValueError, match=r"the dataset has no 'text' column \(its columns: \['content'\]\)"):
        hv.harvest(model, datasets.Dataset.from_dict({"content": texts}), hooks=HOOKS[:1], out=tmp_path / "a", **options)
    with pytest.raises(TypeError, match="dataset row 1's text is a NoneType, not a string"):
        hv.harvest(model, datasets.Dataset.from_dict({"text": [texts[0], None]}), hooks=HOOKS[:1], out=tmp_path / "b",
                   **options)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_patching_in_a_harvest_mean_equals_patching_the_mean_tensor(model, harvested):
    from interp.interventions import patch_activation

    h = hv.open(harvested)
    probe = h.tokens[:2, :12]
    name = HOOKS[0]
    mean = h.mean(name)
    with torch.no_grad():
        with patch_activation(model, name, h, positions=[3, 5]):
            ours = model(probe)
        with patch_activation(model, name, mean.expand(2, 12, -1).clone(), positions=[3, 5]):
            theirs = model(probe)
    assert torch.equal(ours, theirs)


def test_patching_in_a_harvest_mean_checks_its_options_as_a_tensor_source_does(model, harvested):
    """An empty positions list patched nothing, and heads= on a residual hook set residual coordinate 1 to the
    mean's coordinate 1, both without a word; the tensor path refuses both."""
    from interp.interventions import patch_activation

    h = hv.open(harvested)
    with pytest.raises(ValueError, match="positions is empty"):
        patch_activation(model, HOOKS[0], h, positions=[]).__enter__()
    with pytest.raises(ValueError, match=r"heads= needs a per-head activation such as hook_z; "
                                         rf"{HOOKS[0]}'s mean has shape \({model.cfg.d_model},\)"):
        patch_activation(model, HOOKS[0], h, heads=[1]).__enter__()
    with torch.no_grad():  # on hook_z, heads= patches those heads' means only
        probe = h.tokens[:2, :12]
        mean = h.mean(HOOKS[1]).expand(2, 12, -1, -1).clone()
        with patch_activation(model, HOOKS[1], h, heads=[1]):
            ours = model(probe)
        with patch_activation(model, HOOKS[1], mean, heads=[1]):
            theirs = model(probe)
    assert torch.equal(ours, theirs)


def test_a_harvest_is_not_another_models_statistics_nor_resumed_by_another_model(model, harvested, tmp_path):
    """The same checkpoint unprocessed is another model where the processing moves the activations: without
    center_writing_weights every residual-stream activation moves by its mean, so the harvest's means would be
    wrong for it, silently; z does not move. Another checkpoint of the same shape is refused outright."""
    from interp.checkpoints import write_random_checkpoint
    from interp.hooks import attached_hooks
    from interp.interventions import ablate_heads, patch_activation

    unprocessed = load_model("bundled", device="cpu", fold_ln=False, center_writing_weights=False,
                             center_unembed=False)
    h = hv.open(harvested)
    _, cache = unprocessed.run_with_cache(h.tokens, names_filter=HOOKS[:1])
    assert not torch.allclose(cache[HOOKS[0]].flatten(0, 1).mean(0), h.mean(HOOKS[0]), atol=1e-3)
    with pytest.raises(ValueError, match=r"is a harvest of bundled .*\(fold_ln, center_writing_weights, "
                                         r"center_unembed\), not of this model, .*\(no processing\): its "
                                         rf"center_writing_weights differs for {HOOKS[0]}"):
        patch_activation(unprocessed, HOOKS[0], h).__enter__()
    with pytest.raises(hv.HarvestMismatchError, match="model"):
        hv.harvest(unprocessed, CORPUS, hooks=HOOKS, out=harvested, progress=False, **SMALL)
    probe = h.tokens[:2]
    with torch.no_grad():  # z is the same unprocessed: its means serve
        with ablate_heads(unprocessed, [(0, 1)], mode="mean", reference=h):
            from_harvest = unprocessed(probe)
        with ablate_heads(unprocessed, [(0, 1)], mode="mean", reference=h.tokens):
            from_tokens = unprocessed(probe)
    torch.testing.assert_close(from_harvest, from_tokens, rtol=1e-4, atol=1e-4)
    shape = dict(n_layer=2, n_embd=128, n_head=2, n_positions=256, n_inner=512, with_tokenizer=True)
    other = load_model(write_random_checkpoint(tmp_path / "other", seed=5, **shape), device="cpu")
    with pytest.raises(ValueError, match="its checkpoint differs for blocks.0.attn.hook_z"):
        ablate_heads(other, [(0, 1)], mode="mean", reference=h).__enter__()
    assert not attached_hooks(model) and not attached_hooks(unprocessed) and not attached_hooks(other)


def test_a_files_sha256_is_hashlibs_on_its_bytes_empty_or_not(tmp_path):
    """The harvest's own hash of shards and checkpoints, read in pieces: an empty file, and one of several pieces."""
    for name, data in (("empty", b""), ("shard", os.urandom(3_000_001))):
        (tmp_path / name).write_bytes(data)
        assert hv._sha256(tmp_path / name) == hashlib.sha256(data).hexdigest()


def test_a_rerun_clears_what_a_killed_shard_write_left(model, tmp_path):
    """A run killed inside safetensors' ``save_file`` leaves ``atomic_write``'s folder, with save_file's own
    temporary file in it; a rerun removes it and ends with the files of an uninterrupted run."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    hv.harvest(model, CORPUS, hooks=HOOKS, out=whole, progress=False, **SMALL)
    shutil.copytree(whole, killed)
    for name in ("manifest.json", "stats.safetensors", hv._shard_name(1), hv._shard_name(1) + ".sha256"):
        (killed / name).unlink()
    left = killed / f".{hv._shard_name(1)}.x1y2z3.tmp"
    left.mkdir()
    (left / ".tmpAbC123").write_bytes(b"half a shard")
    hv.harvest(model, CORPUS, hooks=HOOKS, out=killed, progress=False, **SMALL)
    assert _files(killed) == _files(whole)
