"""recalibrate_bn: running statistics re-estimated exactly, nothing else touched."""

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.errors import ConfigError


def test_statistics_are_the_average_over_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model.train()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    data = [(torch.randn(8, 3) * 2 + 1, torch.zeros(8)) for _ in range(5)]
    used = ts.recalibrate_bn(model, data, batches=4)
    assert used == 4
    xs = [x for x, _ in data[:4]]
    bn = model[1]
    # dropout stayed in eval mode: the batch norm saw the raw inputs
    torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(0) for x in xs]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([x.var(0) for x in xs]).mean(0))
    assert bn.momentum == 0.1 and model.training and model[0].training
    for k, v in weights.items():
        if k != "1.num_batches_tracked":
            assert torch.equal(model.state_dict()[k], v), k


def test_recovers_a_pruned_model():
    torch.manual_seed(0)
    model = ts.load_model("torchslim:demo_resnet")
    data = [(torch.rand(16, 1, 28, 28), None) for _ in range(3)]
    model.train()
    for x, _ in data:  # give the running statistics real values
        model(x)
    ts.prune_(model, data[0][0], ratio=0.5)
    ts.recalibrate_bn(model, data)
    stem_bn = model.stem[1]
    with torch.no_grad():
        features = torch.cat([model.stem[0](x) for x, _ in data])
    torch.testing.assert_close(stem_bn.running_mean, features.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_empty_data_and_bad_budget():
    model = nn.Sequential(nn.BatchNorm1d(2))
    with pytest.raises(ConfigError, match="no batches"):
        ts.recalibrate_bn(model, [])
    with pytest.raises(ConfigError, match="batches"):
        ts.recalibrate_bn(model, [torch.randn(2, 2)], batches=0)
    assert ts.recalibrate_bn(nn.Linear(2, 2), [torch.randn(2, 2)]) == 0
