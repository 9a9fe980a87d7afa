"""Harvest activations (or only their statistics) over a corpus: sharded, resumable, and the same bytes on one
process or many (``torchrun``).

- **Input**: text files or folders (one document per file, files in sorted order), pre-tokenised ``.npy``
  files (one 1-d integer array of token ids per document, refused otherwise), or a Hugging Face ``datasets``
  dataset with a ``text`` column.
- **Packing**: documents are joined with the end-of-text token (50256, also GPT-2's BOS) and cut into rows of
  ``context`` tokens, each starting with BOS; a document runs on into the next row; the last partial row is
  dropped. Every process tokenises the whole corpus as a stream (cheap next to the forward) and keeps the
  rows of its own shards only, so memory stays bounded by one shard and one document's text (a long document
  is tokenised in pieces, ``_pieces``, cut where GPT-2's tokenizer gives the same tokens).
- **Work**: rows run through the model in micro-batches of ``batch_size`` (fixed, whatever the number of
  processes), and the forward stops as soon as every requested hook has fired. Activations are kept in
  ``dtype`` (float32 by default). A shard is written and hashed as soon as its rows are computed, on the
  calling thread (``_save_shard``): a writer thread beside the forward made the harvest slower on 2 cores.
- **Output** in ``out``: ``shard-00000.safetensors``, ... each with ``tokens`` ``[rows, context]``, one tensor
  per hook keyed by its name (``[rows, context, ...]``; left out with ``stats_only``) and the shard's statistic
  partials (``stats.{hook}.count``, ``.sum`` and ``.sumsq``, float64, of the activations as the model computed
  them, before the cast to ``dtype``); a ``.sha256`` beside each; ``run.json`` (what was asked, checked on a
  rerun); ``manifest.json`` (the model: its checkpoint's hash, weight processing, backend and dtype; the
  tokenizer, the corpus files and their hashes, the context, the dtype, each shard's rows, token range and
  sha256) and ``stats.safetensors`` (count, mean and variance per hook), written when every shard is there.
  ``Harvest.check_model`` refuses the statistics for another checkpoint or weight processing.
- **Distributed**: under ``torchrun`` (``WORLD_SIZE`` > 1) ``harvest`` joins the process group itself
  (``interp.distributed``: gloo for CPU tensors, nccl for CUDA ones, each rank on its own GPU). Shard ``i``
  holds the global rows ``[i * shard_rows, (i + 1) * shard_rows)`` and goes whole to rank ``i % world_size``;
  nothing written carries a rank, a time or the world size, and the statistics are summed shard by shard in
  shard order, so N processes write exactly what one writes.
- **Reading back**: ``open(path)`` (a ``Harvest``: memory-mapped shards, statistics, seeded shuffled
  batches); ``Stream(model, tokens, hooks)`` gives the same shards and batches for token rows already in hand,
  computed as they are read, nothing written.
- **Resumable**: a shard is written to a temporary name and renamed, so it is never seen half-written; a rerun
  of the same command skips the shards already there. A rerun with another model, hook, corpus or setting into
  the same folder is refused (``HarvestMismatchError``).

Example:
    >>> harvest(model, "/usr/lib/python3.11/json", hooks=["blocks.1.hook_resid_pre"], out="harvest/json",
    ...         pattern="**/*.py")                  # not __pycache__'s .pyc files
    >>> h = open("harvest/json")
    >>> h["blocks.1.hook_resid_pre"].shape      # [rows, context, d_model], memory-mapped
    >>> h.mean("blocks.1.hook_resid_pre")       # [d_model]
"""

from __future__ import annotations

import argparse
import builtins
import functools
import hashlib
import json
import math
import os
import re
import shutil
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from interp import distributed
from interp.errors import NameNotFoundError
from interp.figures import atomic_write
from interp.hooks import attached_hooks, check_hook_names, run_until
from interp.inputs import check_folder, check_positive_int, check_tokens

__all__ = ["Harvest", "HarvestMismatchError", "Stream", "harvest", "open"]

EOT = 50256  # GPT-2's end-of-text token, which is also its BOS
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class HarvestMismatchError(ValueError):
    """The output folder holds a harvest of another model, hook, corpus or setting."""


# ---------------------------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class _Document:
    name: str  # a path relative to the corpus root, or "dataset[i]"
    sha256: str
    text: str | None = None
    tokens: np.ndarray | None = None


def _corpus_files(corpus: Sequence[str | os.PathLike], pattern: str) -> list[tuple[Path, str]]:
    files = []
    for item in corpus:
        root = Path(item)
        if root.is_dir():
            files += [(p, str(p.relative_to(root.parent))) for p in sorted(root.glob(pattern)) if p.is_file()]
        elif root.is_file():
            files.append((root, root.name))
        else:
            raise FileNotFoundError(f"corpus item {str(root)!r} is neither a file nor a folder")
    if not files:
        raise ValueError(f"the corpus {[str(c) for c in corpus]} has no files matching {pattern!r}")
    return sorted(files, key=lambda f: f[1])


def _documents(corpus, pattern: str, d_vocab: int, *, digest: bool = True) -> Iterator[_Document]:
    """The corpus's documents, in order, one at a time (their sha256 only with ``digest``: the streaming
    pass, after the fingerprint has hashed every document once, does not need it)."""
    if hasattr(corpus, "column_names"):  # a Hugging Face dataset
        if "text" not in corpus.column_names:
            raise ValueError(f"the dataset has no 'text' column (its columns: {corpus.column_names})")
        for i, row in enumerate(corpus):
            text = row["text"]
            if not isinstance(text, str):
                raise TypeError(f"dataset row {i}'s text is a {type(text).__name__}, not a string")
            yield _Document(f"dataset[{i}]", hashlib.sha256(text.encode()).hexdigest() if digest else "", text=text)
        return
    for path, name in _corpus_files([corpus] if isinstance(corpus, str | os.PathLike) else corpus, pattern):
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest() if digest else ""
        if path.suffix == ".npy":
            yield _Document(name, sha, tokens=_token_file(path, d_vocab))
        elif b"\0" in data:  # as git and grep tell a binary file: a .pyc, a .gz, a checkpoint
            raise ValueError(f"corpus file {str(path)!r} is binary (it holds NUL bytes), not a text document: choose "
                             f"the documents with pattern (--pattern), e.g. '**/*.py'")
        else:
            yield _Document(name, sha, text=data.decode("utf-8", errors="replace"))


def _token_file(path: Path, d_vocab: int) -> np.ndarray:
    """A pre-tokenised document: a 1-d array of integer token ids in the vocabulary (a float would be cut to an
    integer, and an id outside the vocabulary would fail in the forward, a shard in)."""
    tokens = np.load(path)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"token file {str(path)!r} holds a {tokens.dtype} array of shape {tokens.shape}: a document "
                         "is a 1-d integer array of token ids")
    if len(tokens) and not (0 <= int(tokens.min()) and int(tokens.max()) < d_vocab):
        raise ValueError(f"token file {str(path)!r} has ids from {int(tokens.min())} to {int(tokens.max())}, outside "
                         f"the vocabulary 0..{d_vocab - 1}")
    return tokens


def _rows(documents: Iterable[_Document], tokenizer, context: int) -> Iterator[list[int]]:
    """Rows of ``context`` tokens: BOS, then the document stream (each document followed by EOT)."""
    stream: list[int] = []
    width = context - 1
    for ids, ends_document in _token_ids(documents, tokenizer):
        stream += ids
        if ends_document:
            stream.append(EOT)
        full = len(stream) // width * width
        for start in range(0, full, width):
            yield [EOT] + stream[start:start + width]
        del stream[:full]  # once per piece: deleting each row from the front was quadratic in its length


# Text is tokenised in groups of about this many characters: one call per group lets a fast tokenizer use
# every core (twice as fast as one call per document on 2 cores), and memory stays bounded (a call peaks at
# about 350 bytes per token). A longer document is cut into pieces of at most this many characters.
_TOKENIZE_CHARS = 1 << 22
# Where text may be cut: before the last character of a whitespace run, where that character is ASCII
# whitespace and a non-whitespace character follows. GPT-2's pre-tokenizer (the ByteLevel regex) splits such
# a run as its first n - 1 characters (``\s+(?!\S)``, which matches them as well at the end of a piece), then
# the last one, alone or as the prefix space of what follows (which a piece then starts with); nothing else
# holds whitespace. So the pieces' tokens, joined, are the text's. Python's \S is narrower than the regex's
# (Python counts \x1c-\x1f as whitespace, Unicode does not), so what follows is non-whitespace there too.
_SAFE_CUT = re.compile(r"(?=[\t\n\x0b\x0c\r ]\S)")


def _pieces(text: str, limit: int) -> list[str]:
    """``text`` cut at safe points (``_SAFE_CUT``), each piece up to ``limit`` characters: at the first safe
    point past half the limit (a longer stretch without one makes a longer piece)."""
    pieces, start = [], 0
    while len(text) - start > limit:
        cut = _SAFE_CUT.search(text, start + max(1, limit // 2))
        if cut is None:
            break
        pieces.append(text[start:cut.start()])
        start = cut.start()
    pieces.append(text[start:])
    return pieces


def _cuts_are_safe(tokenizer) -> bool:
    """Whether ``tokenizer`` pre-tokenises as GPT-2's does (the ByteLevel regex, no prefix space, no
    normaliser), which ``_SAFE_CUT`` is safe for."""
    from tokenizers import pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    return (isinstance(pre, pre_tokenizers.ByteLevel) and pre.use_regex and not pre.add_prefix_space
            and backend.normalizer is None)


def _token_ids(documents: Iterable[_Document], tokenizer) -> Iterator[tuple[list[int], bool]]:
    """The documents' token ids in order, as (ids, whether a document ends there): with GPT-2's tokenizer, a
    text longer than ``_TOKENIZE_CHARS`` comes in pieces (``_pieces``), each tokenised in a group like a
    document; with another, every document whole."""
    limit = _TOKENIZE_CHARS if _cuts_are_safe(tokenizer) else math.inf
    group: list[tuple[str, bool]] = []  # (text, whether a document ends with it)
    chars = 0

    def encoded() -> list[tuple[list[int], bool]]:
        nonlocal chars
        ids = tokenizer([text for text, _ in group], add_special_tokens=False, verbose=False)["input_ids"] if group else []
        out = [(piece, ends) for piece, (_, ends) in zip(ids, group)]
        group.clear()
        chars = 0
        return out

    for doc in documents:
        if doc.tokens is not None:
            yield from encoded()
            yield doc.tokens.tolist(), True
            continue
        pieces = _pieces(doc.text, limit)
        for i, piece in enumerate(pieces):
            group.append((piece, i == len(pieces) - 1))
            chars += len(piece)
            if chars >= _TOKENIZE_CHARS:
                yield from encoded()
    yield from encoded()


# ---------------------------------------------------------------------------------------------- harvest


def _fingerprint(model, corpus_docs: list[dict], hooks, context, dtype, batch_size, shard_rows, stats_only) -> dict:
    from interp.loading import model_info

    info = model_info(model)
    tokenizer = {"class": type(model.tokenizer).__name__, "vocab_size": len(model.tokenizer)}
    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer's whole definition (vocabulary, merges, normalisation), ids in order
        tokenizer["sha256"] = hashlib.sha256(backend.to_str().encode()).hexdigest()
    else:
        vocab = json.dumps(sorted(model.tokenizer.get_vocab().items()), ensure_ascii=False).encode()
        tokenizer["vocab_sha256"] = hashlib.sha256(vocab).hexdigest()
    # The checkpoint file's hash, not the processed state dict's: LayerNorm folding in float32 rounds
    # differently with 1 and 2 threads (torchrun sets 1), which would make one process and many disagree.
    return {"model": _model_record(info), "tokenizer": tokenizer, "corpus": corpus_docs, "hooks": list(hooks),
            "context": context, "dtype": dtype, "batch_size": batch_size, "shard_rows": shard_rows,
            "stats_only": stats_only,
            "packing": "documents joined with token 50256, rows of `context` tokens each starting with 50256"}


def _model_record(info) -> dict:
    """What a harvest records of its model: the checkpoint, and what changes the activations it holds (the
    weight processing: ``center_writing_weights`` centres every residual-stream activation; the backend and
    dtype, which change their rounding)."""
    return {"spec": info.spec, "label": info.label, "checkpoint_sha256": _checkpoint_sha256(info),
            "processing": list(info.processing), "backend": info.backend, "dtype": info.dtype}


def _checkpoint_sha256(info) -> str:
    """sha256 of the checkpoint's weights file (local, or the Hugging Face cache's copy of a named model)."""
    if info.checkpoint is not None:
        path = Path(info.checkpoint) / "model.safetensors"
    else:
        from huggingface_hub import try_to_load_from_cache

        found = [try_to_load_from_cache(repo, name) for repo in (info.spec, f"openai-community/{info.spec}")
                 for name in ("model.safetensors", "pytorch_model.bin")]
        path = next((Path(f) for f in found if isinstance(f, str)), None)
        if path is None:
            return "unknown"
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, hashed once per process while its size and modification time stay (GPT-2 small's
    weights take 0.4 s, as long as a small harvest's forward)."""
    return _sha256(path)


def _sha256(path: str | os.PathLike) -> str:
    """A file's sha256, read in pieces (``hashlib.file_digest``): a shard of any size is checked without a copy
    of it in memory. Inside a harvest it hashed the bundled model's 2 MB shards in 1.6 ms each, where a memory
    map of the file took 2.0 ms (its page faults; 4 runs each, alternating, 2026-12-06)."""
    with builtins.open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _hook_names(hooks: str | Sequence[str]) -> list[str]:
    """The hook names once each, in order; one name alone is one hook (not its characters)."""
    hooks = list(dict.fromkeys([hooks] if isinstance(hooks, str) else hooks))
    if not hooks:
        raise ValueError("hooks is empty: name at least one hook point, e.g. blocks.0.hook_resid_pre")
    return hooks


def _check_unhooked(model) -> None:
    """Activations are stored, resumed and trained on as the model's own, and its manifest records the model
    as loaded: a hook attached now (an intervention's: a steer, an ablation, a splice) would change them with
    no record of it, and a rerun without it would resume into the same shards."""
    attached = attached_hooks(model)
    if attached:
        raise ValueError(f"hooks are attached to the model ({', '.join(attached[:3])}"
                         f"{', ...' if len(attached) > 3 else ''}): activations are harvested from the model as "
                         "loaded, so run this outside the intervention that attached them")


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def harvest(model, corpus, *, hooks: Sequence[str], out: str | os.PathLike, context: int = 128,
            dtype: str = "float32", batch_size: int = 8, shard_rows: int = 256, stats_only: bool = False,
            pattern: str = "**/*", progress: bool = True) -> Path:
    """Harvest ``hooks``' activations over ``corpus`` into ``out`` (see the module docstring), from the model as
    loaded: refused while hooks are attached to it (an intervention's, whose effect the manifest cannot record).

    Args:
        corpus: a file, a folder, a list of them, or a ``datasets.Dataset`` with a ``text`` column.
        hooks: hook names, e.g. ``["blocks.1.hook_resid_pre"]`` (one name alone is one hook).
        context: tokens per row, BOS included (default 128; at most the model's n_ctx).
        dtype: "float32" (default), "float16" or "bfloat16", for the stored activations.
        batch_size: rows per forward (fixed, so one process and many compute the same batches).
        shard_rows: rows per shard file (the unit of work, resumption and distribution).
        stats_only: keep the statistics (count, mean, variance per hook) and the tokens, not the activations.
        pattern: which files of a folder are documents (default every file; e.g. ``"**/*.py"``). A file with
            a NUL byte is binary (a ``.pyc`` in ``__pycache__``, a ``.gz``) and refused; in a text file, bytes that
            are not UTF-8 become U+FFFD.

    Returns:
        ``out``, a ``Path``.
    """
    hooks = _hook_names(hooks)
    check_hook_names(model, hooks)
    context = check_positive_int(context, "context", low=2, high=model.cfg.n_ctx)
    batch_size = check_positive_int(batch_size, "batch_size")
    shard_rows = check_positive_int(shard_rows, "shard_rows")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    out = check_folder(out, "the harvest's shards")
    rank, world = distributed.join()
    docs = [{"name": d.name, "sha256": d.sha256} for d in _documents(corpus, pattern, model.cfg.d_vocab)]  # checks it
    fingerprint = _fingerprint(model, docs, hooks, context, dtype, batch_size, shard_rows, stats_only)
    _check_unhooked(model)  # the last check before anything is written or run
    run_file = out / "run.json"
    if run_file.exists():
        before = json.loads(run_file.read_text())
        if before != fingerprint:
            differ = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
            raise HarvestMismatchError(f"{out} holds a harvest with another {', '.join(differ)}: use another "
                                       "folder, or delete this one to start again")
    elif rank == 0:
        atomic_write(run_file, json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
    if rank == 0:  # what a killed run left mid-write: never renamed into place, so never read
        for partial in out.glob(".shard-*.tmp"):  # a file, or the folder a shard is written in (atomic_write)
            if partial.is_dir():
                shutil.rmtree(partial)
            else:
                partial.unlink()
    distributed.barrier()

    device = model.cfg.device
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(unit="tok", unit_scale=True, desc=f"harvest ({world} process{'es' if world > 1 else ''})",
                   file=sys.stderr)
    written = {path.name for path in out.glob("shard-*.safetensors")}  # by an earlier run: skipped, not redone
    shard_rows_seen: list[list[int]] = []
    n_rows = 0
    for row in _rows(_documents(corpus, pattern, model.cfg.d_vocab, digest=False), model.tokenizer, context):
        shard = n_rows // shard_rows
        n_rows += 1
        if shard % world != rank or _shard_name(shard) in written:  # a set, not a stat per row
            continue
        shard_rows_seen.append(row)
        if len(shard_rows_seen) == shard_rows:
            _save_shard(out, shard, _shard_tensors(model, shard_rows_seen, hooks, batch_size, DTYPES[dtype],
                                                   stats_only, device, bar, world))
            shard_rows_seen = []
    last = (n_rows - 1) // shard_rows
    if shard_rows_seen:  # the last shard may be short; it is this rank's when its index says so
        _save_shard(out, last, _shard_tensors(model, shard_rows_seen, hooks, batch_size, DTYPES[dtype], stats_only,
                                              device, bar, world))
    if bar is not None:
        bar.close()
    if n_rows == 0:
        raise ValueError(f"the corpus has fewer than {context - 1} tokens: no row of {context} could be made")
    distributed.barrier()
    if rank == 0:
        _finish(out, fingerprint, n_rows, shard_rows, context, hooks)
    distributed.barrier()
    return out


def _shard_tensors(model, rows: list[list[int]], hooks, batch_size, dtype, stats_only, device, bar,
                   world) -> dict[str, Tensor]:
    """What a shard file holds: the tokens, each hook's statistic partials and (unless ``stats_only``) its
    activations in ``dtype``, on the CPU."""
    tokens = torch.tensor(rows, dtype=torch.int64)
    parts: dict[str, list[Tensor]] = {name: [] for name in hooks}
    stats: dict[str, Tensor] = {}
    for start in range(0, len(tokens), batch_size):
        acts = run_until(model, tokens[start:start + batch_size].to(device), hooks)
        for name in hooks:
            act = acts[name]
            flat = act.reshape(act.shape[0] * act.shape[1], -1).double()  # [tokens, features], on the model's device
            stats[f"shape.{name}"] = torch.tensor(act.shape[2:], dtype=torch.int64)
            for key, value in ((f"stats.{name}.count", torch.tensor([flat.shape[0]], dtype=torch.float64)),
                               (f"stats.{name}.sum", flat.sum(0).cpu()), (f"stats.{name}.sumsq", flat.square().sum(0).cpu())):
                stats[key] = stats[key] + value if key in stats else value
            if not stats_only:
                parts[name].append(act.to(dtype).cpu())
        if bar is not None:
            bar.update(min(batch_size, len(tokens) - start) * tokens.shape[1] * world)  # this rank's share, scaled
    tensors = {"tokens": tokens, **stats}
    if not stats_only:
        tensors |= {name: torch.cat(parts[name]).contiguous() for name in hooks}
    return tensors


def _save_shard(out: Path, index: int, tensors: dict[str, Tensor]) -> None:
    """Write shard ``index`` (safetensors' own ``save_file``, through a temporary name), then its sha256.

    On the calling thread, between forwards. A writer thread that did this while the next shard was computed
    (8cb33e7 to 01eb428) made the harvest slower on a 2-core machine, since the forward's two threads then
    wait for a core: against it, in one process with both orders interleaved (2026-12-06), the bundled model's
    harvest took 0.86x the time (1.43x a bare forward, from 1.59x; 10 repetitions) and GPT-2 small's shape
    0.97x (1.024x, from 1.053x; 4 repetitions). ``save_file`` then reading the file back for its hash took
    4.9 ms for a 2 MB shard, where serialising to bytes (``save``) and writing them took 6.7 ms."""
    from safetensors.torch import save_file

    path = out / _shard_name(index)
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    atomic_write(out / (path.name + ".sha256"), _sha256(path) + "\n")


def _shard_sha(out: Path, index: int) -> str:
    sidecar = out / (_shard_name(index) + ".sha256")
    if sidecar.exists():
        return sidecar.read_text().strip()
    digest = _sha256(out / _shard_name(index))  # killed between the two
    atomic_write(sidecar, digest + "\n")
    return digest


def _finish(out: Path, fingerprint: dict, n_rows: int, shard_rows: int, context: int, hooks) -> None:
    """The manifest and the combined statistics, summed shard by shard in shard order."""
    from safetensors import safe_open
    from safetensors.torch import save

    n_shards = -(-n_rows // shard_rows)
    shards, totals = [], {}
    for index in range(n_shards):
        first, last = index * shard_rows, min((index + 1) * shard_rows, n_rows)
        shards.append({"file": _shard_name(index), "rows": [first, last],
                       "tokens": [first * context, last * context], "sha256": _shard_sha(out, index)})
        with safe_open(str(out / _shard_name(index)), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key.startswith("stats."):  # float64 partials, summed in shard order
                    value = f.get_tensor(key)
                    totals[key] = totals[key] + value if key in totals else value
                elif key.startswith("shape.") and key not in totals:
                    totals[key] = f.get_tensor(key)
    stats = {}
    for name in hooks:
        count = totals[f"stats.{name}.count"]
        mean = totals[f"stats.{name}.sum"] / count
        stats[f"{name}.count"] = count
        stats[f"{name}.mean"] = mean.float()
        stats[f"{name}.var"] = (totals[f"stats.{name}.sumsq"] / count - mean.pow(2)).clamp_min(0).float()
    atomic_write(out / "stats.safetensors", save(stats))
    manifest = {**fingerprint, "rows": n_rows, "shards": shards,
                "feature_shapes": {name: totals[f"shape.{name}"].tolist() for name in hooks}}
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------- reading


def _mmap(path: Path, name: str) -> Tensor:
    """One tensor of a safetensors file, memory-mapped (read-only), without reading the rest."""
    with builtins.open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
    meta = header[name]
    kinds = {"F32": (np.float32, None), "F16": (np.float16, None), "BF16": (np.uint16, torch.bfloat16),
             "I64": (np.int64, None), "F64": (np.float64, None)}
    np_dtype, view = kinds[meta["dtype"]]
    start = meta["data_offsets"][0]
    array = np.memmap(path, dtype=np_dtype, mode="r", offset=8 + header_len + start, shape=tuple(meta["shape"]))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable": it is read-only
        tensor = torch.from_numpy(array)
    return tensor.view(view) if view is not None else tensor


class _Shards:
    """Seeded shuffled batches over shards, for ``Harvest`` and ``Stream``: each gives ``shard(index, name)``
    (``[rows, pos, ...]``) and ``_shard_tokens(skip_first)`` (each shard's token count)."""

    def batches(self, name: str, batch_size: int, *, seed: int = 0, skip_first: bool = False,
                drop_last: bool = False, start: int = 0) -> Iterator[Tensor]:
        """Activations of ``name``, one token each ``[batch_size, ...]``, in a seeded shuffled order: shards in
        a shuffled order, tokens shuffled within each shard (one shard in memory at a time). ``skip_first``
        leaves out each row's first position (its BOS, whose activations are far out of distribution);
        ``drop_last`` each shard's short last batch; ``start`` skips that many batches of the order without
        reading their shards."""
        batch_size = check_positive_int(batch_size, "batch_size")
        start = check_positive_int(start, "start", low=0)
        self._check_name(name)  # here, not at the first batch
        return self._batches(name, batch_size, seed, skip_first, drop_last, start)

    def _batches(self, name: str, batch_size: int, seed: int, skip_first: bool, drop_last: bool,
                 start: int) -> Iterator[Tensor]:
        generator = torch.Generator().manual_seed(seed)
        sizes = self._shard_tokens(skip_first)
        for index in torch.randperm(len(sizes), generator=generator).tolist():
            order = torch.randperm(sizes[index], generator=generator)
            firsts = range(0, len(order) - batch_size + 1 if drop_last else len(order), batch_size)
            if start >= len(firsts):
                start -= len(firsts)
                continue
            acts = self.shard(index, name)
            acts = acts[:, 1:] if skip_first else acts
            flat = acts.reshape(acts.shape[0] * acts.shape[1], *acts.shape[2:])
            for first in firsts[start:]:
                yield flat[order[first:first + batch_size]].clone()
            start = 0

    def batch_count(self, batch_size: int, *, skip_first: bool = False, drop_last: bool = False) -> int:
        """How many batches ``batches`` yields with these arguments."""
        batch_size = check_positive_int(batch_size, "batch_size")
        return sum(n // batch_size if drop_last else -(-n // batch_size) for n in self._shard_tokens(skip_first))

    def _check_shard(self, index: int) -> int:
        return check_positive_int(index, "shard index", low=0, high=len(self._shard_tokens(False)) - 1)


class Harvest(_Shards):
    """A finished harvest, read back: memory-mapped shards, statistics, and seeded shuffled batches.

    Each shard's sha256 is checked on its first access (``verify=False`` skips it), not on open.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = True):
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{self.path} has no manifest.json: the harvest is unfinished (rerun it) or "
                                    "this is not a harvest folder")
        self.manifest = json.loads(manifest.read_text())
        self.hooks: list[str] = self.manifest["hooks"]
        self.stats_only: bool = self.manifest["stats_only"]
        self.model_label: str = self.manifest["model"]["label"]
        self.model_processing: list[str] | None = self.manifest["model"].get("processing")  # None: an older harvest
        self.verify = verify
        self._checked: set[str] = set()

    @functools.cached_property
    def digest(self) -> str:
        """sha256 naming these activations (the manifest: model, corpus, shard hashes, dtype): a SAE training
        run records it, and resumes only on the same."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Harvest({str(self.path)!r}: {m['rows']} rows x {m['context']} tokens of {m['model']['label']}, "
                f"hooks {self.hooks}, {len(m['shards'])} shards{', statistics only' if m['stats_only'] else ''})")

    def _shard(self, entry: dict) -> Path:
        path = self.path / entry["file"]
        if self.verify and entry["file"] not in self._checked:
            digest = _sha256(path)
            if digest != entry["sha256"]:
                raise ValueError(f"{path} does not match its sha256 in the manifest: the shard changed on disk")
            self._checked.add(entry["file"])
        return path

    def _check_name(self, name: str) -> None:
        if name != "tokens" and (name not in self.hooks or self.manifest["stats_only"]):
            raise NameNotFoundError(f"{name!r} is not stored here (hooks {self.hooks}"
                                    f"{'; statistics only' if self.manifest['stats_only'] else ''})")

    def shard(self, index: int, name: str) -> Tensor:
        """``name`` (``"tokens"`` or a hook) of one shard, memory-mapped."""
        self._check_name(name)
        index = self._check_shard(index)
        return _mmap(self._shard(self.manifest["shards"][index]), name)

    def __getitem__(self, name: str) -> Tensor:
        """Every shard's ``name``, concatenated (this copies; use ``shard`` or ``batches`` for large ones)."""
        return torch.cat([self.shard(i, name) for i in range(len(self.manifest["shards"]))])

    @property
    def tokens(self) -> Tensor:
        return self["tokens"]

    def _stats(self) -> dict[str, Tensor]:
        from safetensors.torch import load_file

        return load_file(self.path / "stats.safetensors")

    def check_model(self, model, hooks: Sequence[str]) -> None:
        """``ValueError`` unless ``model`` is the checkpoint this harvest ran, with the same weight processing
        where it moves ``hooks``' activations (``interp.loading.processing_moves``): the test before the
        statistics of those hooks stand in for ``model``'s (as means to ablate or patch with)."""
        from interp.loading import model_info, processing_moves

        theirs, ours = self.manifest["model"], _model_record(model_info(model))
        differ = ["checkpoint"] if theirs["checkpoint_sha256"] != ours["checkpoint_sha256"] else []
        if "processing" in theirs:  # an older harvest does not say
            steps = set(theirs["processing"]) ^ set(ours["processing"])
            differ += sorted(step for step in steps if any(processing_moves(step, hook) for hook in hooks))
        if differ:
            def named(record):
                return f"{record['label']} ({', '.join(record.get('processing') or ['no processing'])})"
            verb = "differ" if len(differ) > 1 else "differs"
            raise ValueError(f"{self.path} is a harvest of {named(theirs)}, not of this model, {named(ours)}: its "
                             f"{' and '.join(differ)} {verb} for {', '.join(hooks)}, so its statistics are not this "
                             "model's")

    def mean(self, name: str) -> Tensor:
        """The mean activation of hook ``name`` over every harvested token, in its per-token shape."""
        return self._stats()[f"{name}.mean"].reshape(self._feature_shape(name))

    def var(self, name: str) -> Tensor:
        return self._stats()[f"{name}.var"].reshape(self._feature_shape(name))

    def _feature_shape(self, name: str) -> tuple[int, ...]:
        if name not in self.hooks:
            raise NameNotFoundError(f"{name!r} was not harvested (hooks {self.hooks})")
        shape = self.manifest.get("feature_shapes", {}).get(name)
        return tuple(shape) if shape else (-1,)

    def _shard_tokens(self, skip_first: bool) -> list[int]:
        positions = self.manifest["context"] - skip_first
        return [(last - first) * positions for first, last in (entry["rows"] for entry in self.manifest["shards"])]


class Stream(_Shards):
    """Activations of ``hooks`` on token rows, computed when a batch needs them and never written: the shards
    and the seeded batches that ``open`` gives for a harvest of these rows (shard ``i`` is rows ``[i *
    shard_rows, (i + 1) * shard_rows)``, run ``batch_size`` rows per forward), without the disk. One shard is in
    memory at a time, and each pass over the rows runs the model again. Under ``torchrun`` the ranks split the
    forwards (the ``j``-th micro-batch of the rows on rank ``j % world_size``) and broadcast the activations, so
    every rank holds the whole shard; every rank must then read the same shards in the same order, as
    ``interp.sae.train`` does.

    Example:
        >>> stream = interp.harvest.Stream(model, tokens, ["blocks.1.hook_resid_pre"])   # tokens [rows, pos]
        >>> sae = interp.sae.train(stream, hook="blocks.1.hook_resid_pre", d_sae=4096)
    """

    def __init__(self, model, tokens: Tensor, hooks: Sequence[str], *, batch_size: int = 8, shard_rows: int = 256):
        self.hooks = _hook_names(hooks)
        check_hook_names(model, self.hooks)
        self.tokens = check_tokens(model, tokens).cpu()
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.shard_rows = check_positive_int(shard_rows, "shard_rows")
        from interp.loading import model_info

        self.model = model
        self.stats_only = False
        self.model_label: str = model_info(model).label
        self.model_processing: list[str] | None = list(model_info(model).processing)
        self._index: int | None = None  # the shard computed last, kept: one shard in memory
        self._acts: dict[str, Tensor] = {}

    def __repr__(self) -> str:
        rows, context = self.tokens.shape
        return f"Stream({rows} rows x {context} tokens of {self.model_label}, hooks {self.hooks}, {self.shard_rows} rows a shard)"

    def shard(self, index: int, name: str) -> Tensor:
        """``name``'s activations on the rows of shard ``index``, ``[rows, pos, ...]``, on the CPU."""
        self._check_name(name)
        index = self._check_shard(index)
        if self._index != index:  # one forward per micro-batch gives every hook of the shard
            _check_unhooked(self.model)
            rows = self.tokens[index * self.shard_rows:(index + 1) * self.shard_rows].to(self.model.cfg.device)
            micro = [rows[first:first + self.batch_size] for first in range(0, len(rows), self.batch_size)]
            rank, world = distributed.join()
            first = index * -(-self.shard_rows // self.batch_size)  # the global number of this shard's first micro-batch
            owners = [(first + j) % world for j in range(len(micro))]
            parts = [run_until(self.model, batch, self.hooks) if owner == rank else None
                     for batch, owner in zip(micro, owners)]
            if world > 1:  # shapes and dtypes from this rank's own micro-batch, or from one row when it has none
                like = next((part for part in parts if part is not None), None) or self._like
                for j, (batch, owner) in enumerate(zip(micro, owners)):
                    if parts[j] is None:
                        parts[j] = {hook: like[hook].new_empty(len(batch), *like[hook].shape[1:]) for hook in self.hooks}
                    else:  # a hook may hand over a view; broadcast sends contiguous memory
                        parts[j] = {hook: act.contiguous() for hook, act in parts[j].items()}
                    for hook in self.hooks:
                        distributed.broadcast(parts[j][hook], src=owner)
            self._index, self._acts = index, {hook: torch.cat([p[hook].cpu() for p in parts]) for hook in self.hooks}
        return self._acts[name]

    def _check_name(self, name: str) -> None:
        if name not in self.hooks:
            raise NameNotFoundError(f"{name!r} is not streamed here (hooks {self.hooks})")

    @functools.cached_property
    def digest(self) -> str:
        """sha256 naming these activations (the model as loaded, the token rows, the shards and micro-batches):
        a SAE training run records it, and resumes only on the same."""
        from interp.loading import model_info

        record = {"model": _model_record(model_info(self.model)), "shape": list(self.tokens.shape),
                  "tokens": hashlib.sha256(self.tokens.numpy().tobytes()).hexdigest(),
                  "shard_rows": self.shard_rows, "batch_size": self.batch_size}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    @functools.cached_property
    def _like(self) -> dict[str, Tensor]:
        """Each hook's activation on the first row: the shape and dtype of what other ranks compute, for a rank
        with no micro-batch of its own in a shard."""
        return run_until(self.model, self.tokens[:1].to(self.model.cfg.device), self.hooks)

    def _shard_tokens(self, skip_first: bool) -> list[int]:
        rows, context = self.tokens.shape
        return [min(self.shard_rows, rows - first) * (context - skip_first) for first in range(0, rows, self.shard_rows)]


def open(path: str | os.PathLike, *, verify: bool = True) -> Harvest:
    """Read a finished harvest (see ``Harvest``)."""
    return Harvest(path, verify=verify)


# ---------------------------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interp.harvest", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Harvest activations (or their statistics) over a corpus into safetensors shards.\n\n"
                    "    python -m interp.harvest /usr/lib/python3.11/json --hook blocks.1.hook_resid_pre "
                    "--out harvest/json --pattern '**/*.py'\n"
                    "    torchrun --nproc_per_node 2 -m interp.harvest ...   # the same bytes, two processes")
    parser.add_argument("corpus", nargs="+", help="text files or folders (one document per file), or .npy token files")
    parser.add_argument("--hook", action="append", required=True, dest="hooks", help="a hook name (repeatable)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--model", default="bundled", help="model spec (default: bundled)")
    parser.add_argument("--backend", default=None, help="bridge or hooked (default: the library's default)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--context", type=int, default=128, help="tokens per row, BOS included (default: 128)")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="stored dtype (default: float32)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward (default: 8)")
    parser.add_argument("--shard-rows", type=int, default=256, help="rows per shard (default: 256)")
    parser.add_argument("--stats-only", action="store_true", help="keep count, mean and variance, not activations")
    parser.add_argument("--pattern", default="**/*", help="which files of a folder are documents (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from interp.errors import ModelLoadError
    from interp.loading import load_model

    try:
        distributed.join()  # before the model loads, so that under torchrun "cuda" is this rank's own GPU
        kwargs = {} if args.backend is None else {"backend": args.backend}
        model = load_model(args.model, device=args.device, **kwargs)
        out = harvest(model, args.corpus, hooks=args.hooks, out=args.out, context=args.context, dtype=args.dtype,
                      batch_size=args.batch_size, shard_rows=args.shard_rows, stats_only=args.stats_only,
                      pattern=args.pattern, progress=not args.no_progress)
    except (ModelLoadError, ValueError, KeyError, FileNotFoundError, NotADirectoryError) as err:
        raise SystemExit(f"error: {err}") from None
    rank, _ = distributed.join()
    if rank == 0:
        print(f"wrote {out}", file=sys.stderr)
    distributed.leave()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
