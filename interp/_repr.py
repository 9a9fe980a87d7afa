"""One-line reprs for interp's result dataclasses: a tensor shows its shape and dtype, not its values (which
would flood IPython and notebooks); long sequences show their ends and length; floats six digits."""

from __future__ import annotations

import dataclasses

from torch import Tensor

_SHOWN = 6  # sequences longer than this show their first two items and their last


def concise_repr(self) -> str:
    """``Class(field=value, ...)`` on one line; assign as a dataclass's ``__repr__``."""
    fields = ", ".join(f"{f.name}={_brief(getattr(self, f.name))}" for f in dataclasses.fields(self) if f.repr)
    return f"{type(self).__name__}({fields})"


def _brief(value) -> str:
    if isinstance(value, Tensor):
        if value.ndim <= 1 and value.numel() <= _SHOWN:
            return _brief(value.tolist())
        return f"Tensor[{', '.join(map(str, value.shape))}] {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: {_brief(item)}" for key, item in value.items()) + "}"
    if isinstance(value, tuple | list):
        if len(value) > _SHOWN:
            return f"({_brief(value[0])}, {_brief(value[1])}, ..., {_brief(value[-1])}; {len(value)} items)"
        inner = ", ".join(_brief(item) for item in value)
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, float):
        return repr(float(f"{value:.6g}"))
    return repr(value)
