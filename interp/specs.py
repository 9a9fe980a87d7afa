"""One resolver for model specs: a GPT-2 name, ``"bundled"``, or a local checkpoint directory.

Loading, ``architecture()``, the figure runner and every figure family read a spec through ``resolve``, so a
spec means the same thing everywhere.

Example:
    >>> resolve("gpt2-medium").config()["n_layer"]        # from the published config: no download
    24
    >>> resolve("bundled").kind
    'local'
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from interp.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NotGPT2CheckpointError,
    UnknownModelError,
)

__all__ = ["BUNDLED_DIR", "GPT2_FAMILY", "ModelSpec", "read_gpt2_config", "resolve"]

BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED_LABEL = "bundled mini-GPT-2 (2 layers, trained in this repo)"

# The published GPT-2 family (Hugging Face's config.json of each): name -> (label, fields that differ from
# GPT-2 small's; transformers' GPT2Config defaults are GPT-2 small's).
GPT2_FAMILY: dict[str, tuple[str, dict]] = {
    "gpt2": ("GPT-2 small", {}),
    "gpt2-medium": ("GPT-2 medium", {"n_layer": 24, "n_embd": 1024, "n_head": 16}),
    "gpt2-large": ("GPT-2 large", {"n_layer": 36, "n_embd": 1280, "n_head": 20}),
    "gpt2-xl": ("GPT-2 XL", {"n_layer": 48, "n_embd": 1600, "n_head": 25}),
    "distilgpt2": ("DistilGPT-2", {"n_layer": 6}),
}
ALIASES = {"gpt2-small": "gpt2"}
GPT2_SMALL_CONFIG = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
                     "n_head": 12, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}


@dataclass(frozen=True)
class ModelSpec:
    """What a spec names. ``kind`` is "named" (weights from the Hugging Face Hub or its cache) or "local" (a
    checkpoint directory; ``"bundled"`` is the one inside the package)."""

    spec: str  # as the user gave it
    kind: str
    name: str | None  # the official name, for "named"
    path: Path | None  # the directory, for "local"
    label: str  # what figures call it

    def config(self) -> dict:
        """The model's GPT-2 config as a dict: the published one for a name, ``config.json`` for a directory."""
        if self.kind == "named":
            return {**GPT2_SMALL_CONFIG, **GPT2_FAMILY[self.name][1]}
        if not (self.path / "config.json").exists():
            raise CheckpointNotFoundError(f"no config.json in {self.path}")
        return read_gpt2_config(self.path / "config.json")


def resolve(spec: str | os.PathLike) -> ModelSpec:
    """Resolve a spec, raising ``UnknownModelError`` (with close matches) for anything else.

    A spec that names an existing path, or looks like one (starts with ``.``, ``/`` or ``~``, or has more than
    one ``/``), is a local directory; ``"bundled"`` is the bundled model; a GPT-2 family name is named.
    """
    if not isinstance(spec, str | os.PathLike):
        raise UnknownModelError(f"a model spec is a GPT-2 name, 'bundled' or a checkpoint directory, got {spec!r}")
    text = os.fspath(spec)
    if text == "bundled":
        return ModelSpec(text, "local", None, BUNDLED_DIR, BUNDLED_LABEL)
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        return ModelSpec(text, "local", None, path, _local_label(path))
    name = ALIASES.get(text, text)
    if name in GPT2_FAMILY:
        return ModelSpec(text, "named", name, None, GPT2_FAMILY[name][0])
    close = difflib.get_close_matches(text, [*GPT2_FAMILY, *ALIASES, "bundled"], n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise UnknownModelError(f"{text!r} is neither an existing path nor a GPT-2 model name "
                            f"({', '.join(GPT2_FAMILY)}, or 'bundled').{hint}")


def _local_label(path: Path) -> str:
    try:
        return json.loads((path / "config.json").read_text()).get("interp_label") or path.name
    except (OSError, ValueError, AttributeError):
        return path.name  # unreadable: loading says why, with the right error


REQUIRED_CONFIG_KEYS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")


def read_gpt2_config(config_file: Path) -> dict:
    """A GPT-2 ``config.json`` as a dict; ``CorruptCheckpointError`` or ``NotGPT2CheckpointError`` otherwise.

    The shape keys must be there: transformers would fill a missing one with GPT-2 small's value, and the
    weights would then fail to load as "mismatched".
    """
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{config_file} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or config.get("model_type") != "gpt2":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise NotGPT2CheckpointError(
            f"{config_file} says model_type {found!r}; interp loads GPT-2 checkpoints (model_type 'gpt2') only"
        )
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise CorruptCheckpointError(f"{config_file} lacks {', '.join(missing)}: a GPT-2 config.json names "
                                     f"{', '.join(REQUIRED_CONFIG_KEYS)}")
    return config
