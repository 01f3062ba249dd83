"""quantize_onnx: INT8 models that keep the accuracy of real data, verified on ONNX Runtime."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import torchslim as ts
from torchslim.errors import ConfigError

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("sklearn")

from torchslim.export._quantize import QuantizationError, quantize_onnx  # noqa: E402


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A small CNN trained on scikit-learn's 8x8 digits, exported to ONNX."""
    torch.manual_seed(0)
    train = ts.load_dataset("digits", "train")
    test = ts.load_dataset("digits", "test")
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 64, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    loader = DataLoader(train, 64, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    ts.export_onnx(model, torch.zeros(1, 1, 8, 8), path, output_names=["logits"])
    return path, DataLoader(train, 64), DataLoader(test, 128)


@pytest.mark.parametrize("calibrate", ["minmax", "entropy", "percentile"])
def test_static_int8_keeps_accuracy(digits, tmp_path, calibrate):
    path, train, test = digits
    result = quantize_onnx(
        path,
        train,
        tmp_path / "int8.onnx",
        calibrate=calibrate,
        batches=8,
        eval_data=test,
        threads=1,
        runs=10,
    )
    assert result.accuracy_fp32 > 0.9
    assert result.accuracy_int8 >= result.accuracy_fp32 - 0.02
    assert result.agreement["top1"] > 0.95
    assert result.size_int8 < 0.4 * result.size_fp32  # int8 weights: about a quarter
    assert result.latency_fp32_ms > 0 and result.latency_int8_ms > 0
    assert "accuracy" in result.table()
    # a QDQ model: quantize/dequantize pairs around the ops
    import onnx

    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_dynamic_int8(digits, tmp_path):
    path, train, _ = digits
    result = quantize_onnx(
        path, train, tmp_path / "dyn.onnx", method="dynamic", batches=2, measure_latency=False
    )
    assert result.calibration is None
    assert result.agreement["top1"] > 0.9
    assert result.size_int8 < 0.5 * result.size_fp32


def test_accuracy_floor_raises(digits, tmp_path):
    path, train, test = digits
    with pytest.raises(QuantizationError, match="points below"):
        quantize_onnx(
            path,
            train,
            tmp_path / "q.onnx",
            batches=2,
            eval_data=test,
            measure_latency=False,
            max_accuracy_drop=-1.0,
        )


def test_quantizer_errors_name_the_node(digits, tmp_path, monkeypatch):
    import onnx
    from onnxruntime import quantization

    path, train, _ = digits
    node = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Gemm")

    def broken(*args, **kwargs):
        raise RuntimeError(f"cannot quantize {node}: unsupported attribute")

    monkeypatch.setattr(quantization, "quantize_static", broken)
    with pytest.raises(QuantizationError, match=f"at node {node}.*Try"):
        quantize_onnx(path, train, tmp_path / "q.onnx", batches=1)


def test_bad_options(digits, tmp_path):
    path, train, _ = digits
    with pytest.raises(ConfigError, match="calibration="):
        quantize_onnx(path, None, tmp_path / "q.onnx")
    with pytest.raises(ConfigError, match="calibrate"):
        quantize_onnx(path, train, tmp_path / "q.onnx", calibrate="mse")
    with pytest.raises(ConfigError, match="differ"):
        quantize_onnx(path, train, path)
    with pytest.raises(ConfigError, match="does not exist"):
        quantize_onnx(tmp_path / "missing.onnx", train, tmp_path / "q.onnx")
    with pytest.raises(ConfigError, match="2 inputs|holds"):
        quantize_onnx(
            path, [(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), 1)], tmp_path / "q.onnx"
        )
