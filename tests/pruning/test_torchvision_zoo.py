"""Every torchvision classification model prunes at ratio 0.5 without hand patches (marker: zoo).

Random weights, small inputs (64 px; 224 px where the architecture fixes it). Checks: the pruned
model runs with its output shape unchanged, parameters drop by at least 40% of what the prunable
groups hold and at most 75% of them remain, the plan
round-trips through save/load with identical outputs (models under 100 M parameters), and on the
channel-separable families the zero-contribution oracle holds.
"""

import copy
import warnings

import pytest
import torch

import torchslim as ts
from torchslim.testing import outputs_close, zero_removed

torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.zoo

SEPARABLE = (
    "resnet",
    "resnext",
    "wide_resnet",
    "vgg",
    "densenet",
    "googlenet",
    "inception",
    "mobilenet",
    "mnasnet",
    "efficientnet",
    "regnet",
    "shufflenet",
    "squeezenet",
    "alexnet",
)
NAMES = torchvision.models.list_models(module=torchvision.models)


def _size(name: str) -> int:
    if name.startswith(("vit", "swin", "maxvit")):
        return 224
    return 96 if name == "inception_v3" else 64


@pytest.mark.parametrize("name", NAMES)
def test_prune_torchvision_model(name, tmp_path, prunable_params):
    warnings.filterwarnings("ignore")
    kwargs = (
        {"init_weights": False, "aux_logits": False}
        if name in ("googlenet", "inception_v3")
        else {}
    )
    torch.manual_seed(0)
    model = ts.load_model(f"torchvision:{name}", **kwargs).eval()
    x = torch.randn(1, 3, _size(name), _size(name))
    with torch.no_grad():
        shape = model(x).shape
    small = sum(p.numel() for p in model.parameters()) < 100e6
    original = copy.deepcopy(model) if small else None
    prunable = prunable_params(model, x)
    result = ts.prune_(model, x, ratio=0.5)
    with torch.no_grad():
        out = model(x)
    assert out.shape == shape
    assert result.before.params - result.after.params >= 0.4 * prunable
    assert result.after.params <= 0.75 * result.before.params
    if small:
        path = ts.save(model, tmp_path / "m")
        loaded = ts.load(path).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), out)
        if name.startswith(SEPARABLE):
            with torch.no_grad():
                assert outputs_close(
                    out, zero_removed(original, result.plan)(x), rtol=1e-3, atol=1e-4
                )
