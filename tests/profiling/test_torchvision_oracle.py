"""Correctness oracle: our MACs against torchvision's published GFLOPS for every weight entry.

torchvision's ``_ops`` metadata is in GFLOPs as the field names it, but its values are
multiply-accumulates (resnet50: 4.089), which is what we compare against. Models are built on the
meta device, so the whole list takes seconds and no memory.
"""

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from torchslim._inputs import as_inputs  # noqa: E402
from torchslim.models import build_on_meta  # noqa: E402
from torchslim.profiling import count_macs  # noqa: E402


def _reference_cases():
    cases = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        for weights in torchvision.models.get_model_weights(name):
            if "_ops" not in weights.meta:
                continue
            kwargs = {}
            size = weights.transforms().crop_size[0]
            if name.startswith("vit_"):  # ViT's position embedding fixes its input size
                size = weights.meta["min_size"][0]
                kwargs["image_size"] = size
            cases[(name, size)] = (kwargs, weights.meta["_ops"], str(weights))
    return [
        pytest.param(name, size, *rest, id=f"{name}-{size}") for (name, size), rest in cases.items()
    ]


CASES = _reference_cases()


def test_the_list_is_the_whole_classification_zoo():
    names = {case.values[0] for case in CASES}
    assert len(names) >= 80  # torchvision 0.29 has 80 classification models with _ops
    assert {"resnet50", "vit_h_14", "swin_v2_b", "regnet_y_128gf"} <= names


@pytest.mark.parametrize(("name", "size", "kwargs", "gmacs", "weights"), CASES)
def test_macs_match_torchvision_metadata(name, size, kwargs, gmacs, weights):
    model = build_on_meta(lambda: torchvision.models.get_model(name, weights=None, **kwargs))
    model.eval()
    x = torch.empty(1, 3, size, size, device="meta")
    with torch.no_grad():
        macs, _ = count_macs(model, as_inputs(x))
    assert macs / 1e9 == pytest.approx(gmacs, rel=0.02), weights
