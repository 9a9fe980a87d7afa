"""The figure families, in the order a full run makes them. Adding a family: one module, one line here.

Each family is a module of ``experiments`` that declares (see ARCHITECTURE.md):

- ``DESCRIPTION``: one line for ``python -m experiments --list``;
- ``NEEDS_WEIGHTS``: False when the figures come from the architecture alone (no weights are loaded);
- ``Config``: a frozen dataclass that validates itself in ``__post_init__``; each field is a command-line
  option (``--field-name``; tuples take several values; ``help`` comes from the field's metadata);
- ``compute(model, config, progress=None) -> Result``: pure; ``model`` is the loaded model, or for a
  weightless family the architecture skeleton (``interp.architecture``);
- ``figures(result) -> list[experiments.common.Figure]``: each figure with its data, no I/O;
- ``summary(result) -> str``: what the run prints.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FAMILY_NAMES = (
    "parameter_breakdown",
    "head_attention",
    "temperature",
    "mechanisms",
    "circuits",
    "features",
)


def families() -> dict[str, ModuleType]:
    return {name: importlib.import_module(f"experiments.{name}") for name in FAMILY_NAMES}
