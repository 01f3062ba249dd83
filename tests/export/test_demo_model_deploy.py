"""The deploy half on the demo's own model: ImageNet MobileNetV2 on the MNIST digits at 32 px.

Decomposition meets its oracle (full rank: the same outputs), and a pruned, decomposed model still
exports and verifies in ONNX Runtime; INT8 quantization of the demo's exported model agrees with
FP32 on real digits.
"""

import copy
import itertools

import pytest
import torch

import torchslim as ts

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("mlxtend")

try:
    ts.load_model("pretrained:mobilenet_v2", num_classes=10, seed=0)
except ts.ModelSpecError as exc:  # the weights package is installed by `make`
    pytest.skip(f"pretrained MobileNetV2 weights unavailable: {exc}", allow_module_level=True)


@pytest.fixture(scope="module")
def demo():
    model = ts.load_model("pretrained:mobilenet_v2", num_classes=10, seed=0).eval()
    data = ts.load_dataset("mnist5k", "test", size=32, channels=3, normalize="imagenet")
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    batches = list(itertools.islice(loader, 4))
    return model, batches


def test_full_rank_decomposition_of_the_demo_model_is_exact(demo):
    model, batches = demo
    model = copy.deepcopy(model)  # each test changes its own copy
    x = batches[0][0]
    with torch.no_grad():
        expected = model(x)
    result = ts.decompose_(model, rank=1.0, only_if_cheaper=False)
    assert len(result.plan.layers) >= 30  # every 1x1 and k x k dense conv, and the classifier
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_pruned_then_decomposed_demo_model_exports_verified(demo, tmp_path):
    model, batches = demo
    model = copy.deepcopy(model)  # each test changes its own copy
    x = batches[0][0][:1]
    ts.prune_(model, x, target_macs=0.5, importance="l2", round_to=8)
    decomposed = ts.decompose_(model, energy=0.9)
    assert decomposed.plan.layers  # some layer got cheaper
    result = ts.export_onnx(model, x, tmp_path / "demo.onnx")
    assert max(result.max_abs_diff.values()) < 1e-3


def test_int8_demo_model_keeps_its_accuracy_on_digits(demo, tmp_path):
    """A short transfer fine-tune (as the demo's first stage, smaller), then INT8."""
    model, batches = demo
    model = copy.deepcopy(model)  # each test changes its own copy
    train = ts.load_dataset("mnist5k", "train", size=32, channels=3, normalize="imagenet")
    subset = torch.utils.data.Subset(train, range(1024))
    loader = torch.utils.data.DataLoader(
        subset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(2):
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()
    path = tmp_path / "demo.onnx"
    ts.export_onnx(model, batches[0][0][:1], path)
    calibration = list(itertools.islice(iter(loader), 4))
    result = ts.quantize_onnx(
        path,
        calibration,
        tmp_path / "demo-int8.onnx",
        batches=4,
        eval_data=batches,
        threads=1,
        runs=5,
    )
    assert result.size_int8 < 0.35 * result.size_fp32
    assert result.accuracy_fp32 > 0.7  # the fine-tune learnt the digits
    assert result.accuracy_int8 >= result.accuracy_fp32 - 0.03
