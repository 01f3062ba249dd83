"""Deploy: export to ONNX, verified against eager PyTorch, and time it in ONNX Runtime.

``export_onnx`` writes a checked, verified ``.onnx`` file; ``quantize_onnx`` turns it into a
verified INT8 model with ONNX Runtime's quantizer; importing this package also registers the
``onnxruntime`` latency backend of :func:`torchslim.profile`. Neither ``onnx`` nor
``onnxruntime`` is imported until they are used (``pip install 'torchslim[onnx]'``).
"""

from torchslim.export._onnx import EXPORTERS, ExportResult, export_onnx
from torchslim.export._ort_backend import OnnxRuntimeBackend
from torchslim.export._quantize import QuantizationError, QuantizationResult, quantize_onnx
from torchslim.export._verify import OutputCheck

__all__ = [
    "EXPORTERS",
    "ExportResult",
    "OnnxRuntimeBackend",
    "OutputCheck",
    "QuantizationError",
    "QuantizationResult",
    "export_onnx",
    "quantize_onnx",
]
