"""One exception family for torchslim.

Every error the library raises on purpose derives from :class:`TorchSlimError`, and its message
names the value or layer at fault and says how to fix it. Subclasses that mirror a built-in
meaning also derive from that built-in (``ConfigError`` is a ``ValueError``), so generic
handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "TorchSlimError",
    "ConfigError",
    "MissingExtraError",
    "ModelSpecError",
    "DatasetError",
    "UnsupportedOpError",
    "TracingError",
    "PruningError",
    "CheckpointError",
    "ExportError",
]


class TorchSlimError(Exception):
    """Base class of every error torchslim raises on purpose."""


class ConfigError(TorchSlimError, ValueError):
    """An option, shape or config value is invalid; the message names it and the accepted values."""


class MissingExtraError(TorchSlimError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class ModelSpecError(TorchSlimError, ValueError):
    """A model spec (``torchvision:resnet18``, ``file.py:factory``, a saved model) cannot load."""


class DatasetError(TorchSlimError, ValueError):
    """A dataset name or option is unknown or invalid."""


class UnsupportedOpError(TorchSlimError):
    """An operation or layer type is not supported by the requested transformation."""


class TracingError(TorchSlimError):
    """The model could not be traced on the given example inputs."""


class PruningError(TorchSlimError):
    """Pruning could not be applied; the model was restored exactly as it was."""


class CheckpointError(TorchSlimError):
    """A training checkpoint cannot be read, or does not fit the model or options resuming it."""


class ExportError(TorchSlimError):
    """A model could not be exported, or its exported graph does not compute what the model does;
    the message names the output, the difference and the batch size."""
