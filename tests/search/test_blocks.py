"""Removable residual blocks: detection on real architectures, removal, save/load replay."""

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.errors import ConfigError, ModelSpecError
from torchslim.models._history import transforms
from torchslim.search._blocks import (
    BlockRemovalPlan,
    apply_block_removal,
    find_residual_blocks,
    remove_blocks_,
)


def _demo(**kwargs):
    return ts.load_model("torchslim:demo_resnet", **kwargs).eval()


def test_finds_exactly_mobilenet_v2s_residual_inverted_blocks():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    found = find_residual_blocks(model, torch.randn(1, 3, 32, 32))
    expected = [
        name
        for name, m in model.named_modules()
        if type(m).__name__ == "InvertedResidual" and m.use_res_connect
    ]
    assert len(expected) == 10
    assert found == expected


def test_finds_exactly_resnet18s_blocks_without_downsample():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).eval()
    found = find_residual_blocks(model, torch.randn(1, 3, 64, 64))
    expected = [
        name
        for name, m in model.named_modules()
        if type(m).__name__ == "BasicBlock" and m.downsample is None
    ]
    assert found == expected == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]


def test_finds_demo_resnets_blocks_and_not_the_stage_that_holds_them():
    model = _demo()
    found = find_residual_blocks(model, torch.randn(1, 1, 28, 28))
    # stage 0 is two identity-shortcut blocks (so itself x + f(x)): only the blocks are reported
    assert found == ["stages.0.0", "stages.0.1", "stages.1.1", "stages.2.1"]
    assert find_residual_blocks(model, torch.randn(1, 1, 28, 28), ignore=["stages.0.*"]) == [
        "stages.1.1",
        "stages.2.1",
    ]


class _PostActivation(nn.Module):
    """relu(x + conv(x)): removable only where its input is never negative."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv(x))


class _Gated(nn.Module):
    """x * sigmoid(conv(x)): same shape, no skip path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(x))


def test_a_post_activation_block_counts_only_on_non_negative_inputs():
    after_relu = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), _PostActivation())
    raw = nn.Sequential(nn.Conv2d(3, 4, 1), _PostActivation())
    x = torch.randn(1, 3, 8, 8)
    assert find_residual_blocks(after_relu, x) == ["2"]
    assert find_residual_blocks(raw, x) == []  # replacing it would drop the ReLU on negatives


def test_same_shape_modules_without_a_skip_are_not_blocks():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 3, padding=1),
        _Gated(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4),
    ).eval()
    assert find_residual_blocks(model, torch.randn(1, 3, 8, 8)) == []


def test_removing_a_block_replaces_it_and_keeps_the_model_running():
    model = _demo()
    x = torch.randn(2, 1, 28, 28)
    plan = remove_blocks_(model, ["stages.1.1", "stages.0.0"])
    assert isinstance(model.stages[1][1], nn.Identity)
    assert isinstance(model.stages[0][0], nn.Identity)
    assert plan.modules == ("stages.1.1", "stages.0.0")
    assert plan.types == ("BasicBlock", "BasicBlock")
    assert model(x).shape == (2, 10)
    assert transforms(model) == [("remove_blocks", plan)]
    assert BlockRemovalPlan.from_dict(plan.to_dict()) == plan


def test_removal_is_the_block_with_its_branch_zeroed():
    """Identity computes what the block does once its residual branch is zero."""
    model = _demo()
    x = torch.rand(2, 1, 28, 28)
    block = model.stages[1][1]
    for t in (*block.parameters(), *block.buffers()):
        if t.is_floating_point():
            t.data.zero_()
    with torch.no_grad():
        zeroed = model(x)
        remove_blocks_(model, ["stages.1.1"])
        torch.testing.assert_close(model(x), zeroed, rtol=0, atol=1e-6)


def test_removal_is_saved_and_replayed_by_load(tmp_path):
    model = _demo(widths=(8, 16), depths=(2, 2))
    x = torch.randn(2, 1, 28, 28)
    remove_blocks_(model, ["stages.0.1"])
    ts.prune_(model, x, ratio=0.5)  # pruning after the removal: replayed in that order
    path = ts.save(model, tmp_path / "m")
    loaded = ts.load(path).eval()
    assert isinstance(loaded.stages[0][1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert [k for k, _ in transforms(loaded)] == ["remove_blocks", "prune"]


def test_bad_removals_raise_and_change_nothing():
    model = _demo()
    with pytest.raises(ConfigError, match="no module 'stages.9'"):
        remove_blocks_(model, ["stages.0.0", "stages.9"])
    assert not isinstance(model.stages[0][0], nn.Identity)
    with pytest.raises(ConfigError, match="contains"):
        remove_blocks_(model, ["stages.0", "stages.0.1"])
    with pytest.raises(ConfigError, match="not the string"):
        remove_blocks_(model, "stages.0.0")
    plan = BlockRemovalPlan(modules=("stages.0.0",), types=("Bottleneck",))
    with pytest.raises(ModelSpecError, match="Bottleneck"):
        apply_block_removal(model, plan)
    assert not isinstance(model.stages[0][0], nn.Identity)
