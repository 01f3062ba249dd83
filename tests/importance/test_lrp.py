"""lrp: relevance conservation (epsilon = 0, no biases) through convolution, batch norm, ReLU,
max pooling, a residual add, average pooling and linear layers; the alpha-beta rule by hand."""

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.importance import LRP


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(4, 6, 1, bias=False)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 3, bias=False)
        with torch.no_grad():  # a batch norm without bias: scale only
            self.bn0.weight.uniform_(0.5, 2.0)
            self.bn0.bias.zero_()
            self.bn0.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = self.pool(self.relu(self.bn0(self.conv0(x))))
        h = self.relu(h + self.conv2(self.relu(self.conv1(h))))  # residual add
        return self.fc(torch.flatten(self.avg(self.conv3(h)), 1))


def test_relevance_is_conserved_through_every_layer_type(traced):
    model = Net()
    x = torch.randn(3, 2, 8, 8)
    labels = torch.tensor([0, 2, 1])
    graph, _ = traced(model, x[:1], "conv0")
    crit = LRP(rule="epsilon", epsilon=0.0)
    crit.prepare(graph, [(x, labels)])
    with torch.no_grad():
        logit = model.eval()(x)[torch.arange(3), labels].mean().item()
    per_module = crit.module_scores()
    # conv0 -> bn0 -> relu, max pool, residual block, conv3 -> avg pool, flatten, fc: each of
    # these outputs carries the whole relevance of the target logit
    for name in ("conv0", "bn0", "conv3"):
        assert per_module[name].sum() == pytest.approx(logit, rel=1e-4), name


def test_predicted_class_is_the_start_without_labels(traced):
    model = Net()
    x = torch.randn(3, 2, 8, 8)
    graph, _ = traced(model, x[:1], "conv0")
    crit = LRP(epsilon=0.0)
    crit.prepare(graph, [x])
    with torch.no_grad():
        top = model.eval()(x).max(-1).values.mean().item()
    assert crit.module_scores()["conv3"].sum() == pytest.approx(top, rel=1e-4)


@pytest.mark.parametrize(("rule", "alpha", "beta"), [("alpha2beta1", 2, 1), ("alpha1beta0", 1, 0)])
def test_alpha_beta_by_hand(traced, rule, alpha, beta):
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    x = torch.randn(2, 3)
    labels = torch.tensor([1, 0])
    graph, group = traced(model, x[:1], "0")
    crit = LRP(rule=rule)
    crit.prepare(graph, [(x, labels)])
    with torch.no_grad():
        a = model[0](x).numpy()
    w = model[1].weight.detach().numpy()
    expected = []
    for n in range(2):
        z = a[n] * w[labels[n]]  # contributions to the target logit
        pos, neg = z[z > 0].sum(), z[z < 0].sum()
        r = alpha * np.where(z > 0, z, 0) / pos
        if beta and neg < 0:
            r = r - beta * np.where(z < 0, z, 0) / neg
        expected.append(r * z.sum())
    assert np.allclose(crit.module_scores()["0"], np.mean(expected, 0), rtol=1e-4, atol=1e-6)
    assert np.allclose(crit(group), np.mean(expected, 0), rtol=1e-4, atol=1e-6)


def test_rule_options_are_checked():
    with pytest.raises(ConfigError, match="rule"):
        LRP(rule="gamma")
    with pytest.raises(ConfigError, match="alpha - beta"):
        LRP(rule="alpha_beta", alpha=3, beta=1)
    with pytest.raises(ConfigError, match="target"):
        LRP(target="all")


def test_label_target_needs_labels(traced):
    model = Net()
    x = torch.randn(2, 2, 8, 8)
    graph, _ = traced(model, x[:1], "conv0")
    with pytest.raises(ConfigError, match="target='pred'"):
        LRP(target="label").prepare(graph, [x])
