"""42 torchvision classification models export to ONNX and match eager, before and after pruning
at ratio 0.5 (marker: zoo).

Random weights (all-zero weight matrices, like ViT's head, redrawn so the outputs are not
trivially zero), small inputs (64 px; 224 px where the architecture fixes it, 96 px for
Inception v3), one thread. Each export is verified in ONNX Runtime on batches of 1, 2 and 3.
The models are 42 of torchvision's 83, every family at its smaller sizes (the rest are wider or
deeper versions of the same families); AlexNet takes the dynamo exporter (adaptive pooling of a
2x2 map to 6x6 at 64 px). Measured with one thread on 2 shared CPU cores: about 140 s in all.
"""

import warnings

import pytest
import torch

import torchslim as ts
from torchslim.profiling import pinned_threads

pytest.importorskip("torchvision")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.zoo

NAMES = [
    "alexnet",
    "convnext_tiny",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_v2_s",
    "googlenet",
    "inception_v3",
    "maxvit_t",
    "mnasnet0_5",
    "mnasnet0_75",
    "mnasnet1_0",
    "mnasnet1_3",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "regnet_x_1_6gf",
    "regnet_x_3_2gf",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_y_1_6gf",
    "regnet_y_3_2gf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext50_32x4d",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "squeezenet1_0",
    "squeezenet1_1",
    "swin_t",
    "vit_b_32",
    "wide_resnet50_2",
]


def _size(name: str) -> int:
    if name.startswith(("vit", "swin", "maxvit")):
        return 224
    return 96 if name == "inception_v3" else 64


@pytest.mark.parametrize("name", NAMES)
def test_export_torchvision_model_before_and_after_pruning(name, tmp_path):
    warnings.filterwarnings("ignore")
    kwargs = (
        {"init_weights": False, "aux_logits": False}
        if name in ("googlenet", "inception_v3")
        else {}
    )
    torch.manual_seed(0)
    model = ts.load_model(f"torchvision:{name}", **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02)
    x = torch.randn(1, 3, _size(name), _size(name))
    with pinned_threads(1):
        before = ts.export_onnx(model, x, tmp_path / "dense.onnx")
        assert before.batch_sizes == (1, 2, 3)
        assert before.exporter == ("dynamo" if name == "alexnet" else "torchscript")
        assert all(c.max_abs_eager > 0 for c in before.checks)  # not trivially zero

        ts.prune_(model, x, ratio=0.5)
        after = ts.export_onnx(model, x, tmp_path / "pruned.onnx")
    assert after.batch_sizes == (1, 2, 3)
    assert after.file_bytes < 0.8 * before.file_bytes
    assert max(after.max_rel_diff.values()) < 1e-3
