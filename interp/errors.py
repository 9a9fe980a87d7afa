"""The typed errors interp raises on bad input, in one module that imports nothing else of interp.

Every loading error is a ``ModelLoadError``; each also subclasses the built-in error a caller would expect
(``FileNotFoundError``, ``ValueError``, ``ConnectionError``), so ``except ValueError`` still catches it.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "DeviceUnavailableError",
    "MetricError",
    "ModelLoadError",
    "NameNotFoundError",
    "NotGPT2CheckpointError",
    "SAEFormatError",
    "UnknownModelError",
    "WeightsUnavailableError",
]


class ModelLoadError(Exception):
    """Base class of every error ``load_model`` raises on bad input."""


class CheckpointNotFoundError(ModelLoadError, FileNotFoundError):
    """The spec names a local path that does not exist or lacks the checkpoint files."""


class NotGPT2CheckpointError(ModelLoadError, ValueError):
    """The directory holds a checkpoint of another architecture."""


class CorruptCheckpointError(ModelLoadError, ValueError):
    """The checkpoint's files exist but cannot be read (truncated or corrupt safetensors, bad JSON)."""


class UnknownModelError(ModelLoadError, ValueError):
    """The spec is neither a path nor a model name TransformerLens knows."""


class WeightsUnavailableError(ModelLoadError, ConnectionError):
    """A known model whose weights are neither in the local cache nor downloadable."""


class BackendUnavailableError(ModelLoadError, ValueError):
    """The backend asked for does not exist in the installed TransformerLens (``"hooked"`` on 4.x)."""


class DeviceUnavailableError(ModelLoadError, ValueError):
    """The device asked for is not there (``"cuda"`` on a machine without CUDA)."""


class MetricError(TypeError, ValueError):
    """A metric broke the contract: it must map logits ``[batch, pos, d_vocab]`` to a tensor of shape
    ``[batch]`` or a scalar."""


class SAEFormatError(ValueError):
    """A sparse autoencoder's files are not a SAE interp can read (SAELens's format: ``cfg.json`` and
    ``sae_weights.safetensors``), or do not fit the model they are used with."""


class NameNotFoundError(KeyError):
    """A name that is not there: a hook point, a cached kind or head, a score, a harvested hook. A ``KeyError``
    whose message prints as written (``KeyError``'s own ``str`` wraps it in quotes, in a traceback and in a
    command's one-line error alike)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
