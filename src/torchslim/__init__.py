"""torchslim: make PyTorch models smaller and faster on the hardware they run on.

Quickstart::

    import torchslim as ts
    print(ts.profile(model, torch.randn(1, 3, 224, 224)))

The top level re-exports the public verbs lazily, so ``import torchslim`` stays cheap and never
imports an optional dependency.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "profile": "torchslim.profiling",
    "Profile": "torchslim.profiling",
    "LayerProfile": "torchslim.profiling",
    "Latency": "torchslim.profiling",
    "Memory": "torchslim.profiling",
    "LatencyBackend": "torchslim.profiling",
    "register_latency_backend": "torchslim.profiling",
    "list_latency_backends": "torchslim.profiling",
    "measure_latency": "torchslim.profiling",
    "load_model": "torchslim.models",
    "register_model_source": "torchslim.models",
    "save": "torchslim.models",
    "load": "torchslim.models",
    "trace": "torchslim.graph",
    "DependencyGraph": "torchslim.graph",
    "Group": "torchslim.graph",
    "prune_": "torchslim.pruning",
    "apply_plan": "torchslim.pruning",
    "PruningPlan": "torchslim.pruning",
    "PruneResult": "torchslim.pruning",
    "LayerPruner": "torchslim.pruning",
    "register_layer_pruner": "torchslim.pruning",
    "Importance": "torchslim.importance",
    "register_importance": "torchslim.importance",
    "list_importances": "torchslim.importance",
    "recalibrate_bn": "torchslim.train",
    "decompose_": "torchslim.decompose",
    "apply_decomposition": "torchslim.decompose",
    "DecompositionPlan": "torchslim.decompose",
    "finetune": "torchslim.train",
    "export_onnx": "torchslim.export",
    "ExportResult": "torchslim.export",
    "quantize_onnx": "torchslim.export",
    "QuantizationResult": "torchslim.export",
    "FinetuneConfig": "torchslim.train",
    "FinetuneResult": "torchslim.train",
    "load_dataset": "torchslim.data",
    "list_datasets": "torchslim.data",
    "TorchSlimError": "torchslim.errors",
    "ConfigError": "torchslim.errors",
    "MissingExtraError": "torchslim.errors",
    "ModelSpecError": "torchslim.errors",
    "DatasetError": "torchslim.errors",
    "UnsupportedOpError": "torchslim.errors",
    "TracingError": "torchslim.errors",
    "PruningError": "torchslim.errors",
    "CheckpointError": "torchslim.errors",
    "ExportError": "torchslim.errors",
    "LatencyTable": "torchslim.search",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from torchslim.data import list_datasets, load_dataset
    from torchslim.decompose import DecompositionPlan, apply_decomposition, decompose_
    from torchslim.errors import (
        CheckpointError,
        ConfigError,
        DatasetError,
        ExportError,
        MissingExtraError,
        ModelSpecError,
        PruningError,
        TorchSlimError,
        TracingError,
        UnsupportedOpError,
    )
    from torchslim.export import ExportResult, QuantizationResult, export_onnx, quantize_onnx
    from torchslim.graph import DependencyGraph, Group, trace
    from torchslim.importance import Importance, list_importances, register_importance
    from torchslim.models import load, load_model, register_model_source, save
    from torchslim.profiling import (
        Latency,
        LatencyBackend,
        LayerProfile,
        Memory,
        Profile,
        list_latency_backends,
        measure_latency,
        profile,
        register_latency_backend,
    )
    from torchslim.pruning import (
        LayerPruner,
        PruneResult,
        PruningPlan,
        apply_plan,
        prune_,
        register_layer_pruner,
    )
    from torchslim.search import LatencyTable
    from torchslim.train import FinetuneConfig, FinetuneResult, finetune, recalibrate_bn


# subpackages reachable as attributes (``ts.importance.Energy``) without importing them up front
_SUBPACKAGES = frozenset(
    {
        "data",
        "decompose",
        "export",
        "graph",
        "importance",
        "models",
        "profiling",
        "pruning",
        "search",
        "testing",
        "train",
    }
)


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        value = importlib.import_module(f"torchslim.{name}")
        globals()[name] = value
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchslim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
