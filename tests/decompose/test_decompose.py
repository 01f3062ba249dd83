"""decompose_: exact at full rank, cheaper where it changes a layer, ranks by rule, save/load."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.decompose import DecompositionPlan, energy_rank, ratio_rank, vbmf_rank
from torchslim.errors import ConfigError, ModelSpecError, TorchSlimError
from torchslim.models import get_zoo_model


class Net(nn.Module):
    """Linear, 1x1, strided k x k, padded 'same' and 1-D convolutions, and a grouped one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.same = nn.Conv2d(32, 32, 3, padding="same", bias=False)
        self.point = nn.Conv2d(32, 48, 1)
        self.grouped = nn.Conv2d(48, 48, 3, padding=1, groups=4)
        self.line = nn.Conv1d(48, 24, 5, padding=2, padding_mode="reflect")
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(self.point(self.same(x)))
        x = self.grouped(x).flatten(2)  # (N, 48, H*W)
        x = self.line(x).mean(-1)
        return self.fc(x)


def _net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(2, 16, 12, 12)


@pytest.mark.parametrize("method", ["auto", "svd", "tucker"])
def test_full_rank_equals_the_original(method):
    """The oracle: at full rank every factorisation is exact."""
    model, x = _net()
    with torch.no_grad():
        expected = model(x)
    result = ts.decompose_(model, method=method, rank=1.0, only_if_cheaper=False)
    names = {layer.name for layer in result.plan.layers}
    assert names == {"conv", "same", "point", "line", "fc"}  # not the grouped one
    assert ("grouped", "grouped convolution (groups=4)") in result.skipped
    kinds = {layer.name: layer.kind for layer in result.plan.layers}
    assert kinds["point"] == "svd" and kinds["fc"] == "svd"
    assert kinds["conv"] == ("svd" if method == "svd" else "tucker")
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_low_rank_is_the_best_approximation_and_cheaper():
    model, _ = _net()
    weight = model.fc.weight.detach().clone()
    result = ts.decompose_(model, rank=4, layers=["fc"])
    (layer,) = result.plan.layers
    assert layer.ranks == (4,)
    product = (model.fc[1].weight @ model.fc[0].weight).detach()
    s = torch.linalg.svdvals(weight.double())
    # Eckart-Young: the error of the best rank-4 approximation is the tail of the spectrum
    error = torch.linalg.matrix_norm((product - weight).double())
    assert error.item() == pytest.approx(s[4:].pow(2).sum().sqrt().item(), rel=1e-4)
    assert layer.macs_ratio == pytest.approx(4 * (24 + 10) / (24 * 10))
    assert result.params_after < result.params_before


def test_tucker_macs_count_the_strided_projection():
    model, x = _net()
    result = ts.decompose_(model, rank=0.25, layers=["conv"])
    (layer,) = result.plan.layers
    r_in, r_out = layer.ranks
    assert (r_in, r_out) == (4, 8)
    expected = (16 * 4 * 4 + 4 * 8 * 9 + 8 * 32) / (16 * 32 * 9)  # 1x1 at 4 input positions
    assert layer.macs_ratio == pytest.approx(expected)
    before = 16 * 32 * 9 * 36
    # the forward's real MACs: 1x1 on the 12x12 input, core and 1x1 on the 6x6 output
    macs = ts.profile(model.conv, torch.randn(1, 16, 12, 12)).macs
    assert macs == 16 * 4 * 144 + 4 * 8 * 9 * 36 + 8 * 32 * 36
    assert macs / before == pytest.approx(expected)


def test_only_cheaper_layers_change():
    model, x = _net()
    result = ts.decompose_(model, rank=0.9)  # near full rank: nothing saves MACs
    assert result.plan.layers == ()
    assert all("would not save MACs" in why for name, why in result.skipped if name != "grouped")
    assert isinstance(model.conv, nn.Conv2d)


def test_energy_and_vbmf_ranks():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # squares 16, 4, 1, 1 of 22
    assert energy_rank(s, 0.7) == 1
    assert energy_rank(s, 0.9) == 2
    assert energy_rank(s, 1.0) == 4
    assert ratio_rank(10, 0.25) == 3 and ratio_rank(10, 4) == 4 and ratio_rank(10, 99) == 10
    rng = np.random.default_rng(0)
    for true_rank in (3, 10):
        signal = rng.standard_normal((60, true_rank)) @ rng.standard_normal((true_rank, 80))
        noisy = signal * 2 + 0.1 * rng.standard_normal((60, 80))
        assert vbmf_rank(noisy) == true_rank
        assert vbmf_rank(noisy.T) == true_rank


def test_vbmf_through_decompose_on_a_low_rank_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    with torch.no_grad():
        low = torch.randn(64, 5) @ torch.randn(5, 64)
        model[0].weight.copy_(low + 0.01 * torch.randn(64, 64))
    result = ts.decompose_(model, rank="vbmf")
    assert result.plan.layers[0].ranks == (5,)


def test_plan_round_trip_and_save_load(tmp_path):
    model = get_zoo_model("demo_resnet").build().eval()
    x = torch.randn(2, 1, 28, 28)
    result = ts.decompose_(model, energy=0.6)
    assert result.plan.layers
    again = DecompositionPlan.from_dict(result.plan.to_dict())
    assert again == result.plan
    ts.save(model, tmp_path / "m", source="torchslim:demo_resnet")
    loaded = ts.load(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_prune_then_decompose_then_prune_saves_every_step(tmp_path):
    model = ts.load_model("torchslim:demo_resnet").eval()
    x = torch.randn(2, 1, 28, 28)
    ts.prune_(model, x, ratio=0.25)
    ts.decompose_(model, rank=0.5)
    ts.prune_(model, x, ratio=0.25)
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(ModelSpecError, match="omit plan="):
        ts.save(model, tmp_path / "n", plan=ts.PruningPlan(kept={}, shapes={}, options={}))


def test_decomposed_model_prunes_and_exports_like_any_model():
    model, x = _net()
    ts.decompose_(model, rank=0.5)
    result = ts.prune_(model, x, ratio=0.5)
    assert result.after.params < result.before.params
    assert model(x).shape == (2, 10)


def test_replay_refuses_another_architecture():
    model, _ = _net()
    plan = ts.decompose_(copy.deepcopy(model), rank=0.25).plan
    other = Net()
    other.fc = nn.Linear(24, 7)
    with pytest.raises(TorchSlimError, match="'fc'"):
        ts.apply_decomposition(other, plan)
    assert isinstance(other.conv, nn.Conv2d)  # all or nothing: nothing replaced


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "cp"}, "method"),
        ({"rank": 0.0}, "rank"),
        ({"rank": "auto"}, "rank"),
        ({"rank": 2, "energy": 0.9}, "one of"),
        ({"energy": 1.5}, "energy"),
    ],
)
def test_bad_options(kwargs, message):
    model, _ = _net()
    with pytest.raises(ConfigError, match=message):
        ts.decompose_(model, **kwargs)
