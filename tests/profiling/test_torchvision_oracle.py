"""Correctness oracle: our MACs against torchvision's published figures for every weight entry
(see ``torchslim.testing.torchvision_mac_references``). Models are built on the meta device, so the
whole list takes seconds and no memory."""

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from torchslim._inputs import as_inputs  # noqa: E402
from torchslim.models import build_on_meta  # noqa: E402
from torchslim.profiling import count_macs  # noqa: E402
from torchslim.testing import torchvision_mac_references  # noqa: E402

CASES = [pytest.param(*case, id=f"{case[0]}-{case[1]}") for case in torchvision_mac_references()]


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
