"""Import optional dependencies on demand, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from torchslim.errors import MissingExtraError

#: Which ``pip install 'torchslim[extra]'`` provides each optional top-level module.
EXTRA_OF_MODULE = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "optuna": "search",
    "torchvision": "zoo",
    "timm": "zoo",
    "transformers": "hf",
    "sklearn": "data",
    "mnist1d": "data",
    "mlxtend": "data",
    "torch_pruning": "bench",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that installs it.

    Args:
        module: Dotted module name, e.g. ``"torchvision.models"``.
        purpose: What the caller needs it for, used in the error message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRA_OF_MODULE.get(top)
        hint = f"pip install 'torchslim[{extra}]'" if extra else f"pip install {top}"
        raise MissingExtraError(
            f"{purpose} needs the optional package '{top}', which is not installed "
            f"({exc.__class__.__name__}: {exc}); install it with: {hint}"
        ) from exc
