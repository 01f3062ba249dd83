"""Every criterion through ts.prune_ on the demo model; calibration options of prune_."""

import pytest
import torch

import torchslim as ts
from torchslim.errors import ConfigError
from torchslim.importance import LRP, Energy

DATA_DRIVEN = {"activation", "hrank", "energy", "taylor", "lrp"}


def _data(n=2):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.rand(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g))
        for _ in range(n)
    ]


@pytest.mark.parametrize("name", ts.list_importances())
def test_every_criterion_prunes_the_demo_model(name):
    torch.manual_seed(0)
    model = ts.load_model("torchslim:demo_resnet")
    x = torch.rand(2, 1, 28, 28)
    calibration = _data() if name in DATA_DRIVEN else None
    result = ts.prune_(model, x, ratio=0.5, importance=name, calibration=calibration)
    assert model(x).shape == (2, 10)
    assert result.after.params < 0.5 * result.before.params
    assert result.plan.options["importance"] == name


@pytest.mark.parametrize("name", sorted(DATA_DRIVEN))
def test_data_driven_criteria_ask_for_calibration(name):
    model = ts.load_model("torchslim:demo_resnet")
    with pytest.raises(ConfigError, match="pass calibration="):
        ts.prune_(model, torch.rand(1, 1, 28, 28), importance=name)


def test_instances_global_ranking_and_options():
    model = ts.load_model("torchslim:demo_resnet")
    x = torch.rand(1, 1, 28, 28)
    result = ts.prune_(
        model,
        x,
        ratio=0.4,
        importance=Energy(normalize="max"),
        calibration=_data(3),
        calibration_batches=1,
        global_ranking=True,
    )
    assert result.after.params < result.before.params
    model = ts.load_model("torchslim:demo_resnet")
    ts.prune_(model, x, importance=LRP(rule="alpha2beta1"), calibration=_data(1))
    assert model(x).shape == (1, 10)


def test_taylor_takes_a_loss_through_prune():
    model = ts.load_model("torchslim:demo_resnet")
    seen = []

    def loss_fn(outputs, targets):
        seen.append(targets)
        return outputs.logsumexp(-1).mean()

    data = [torch.rand(2, 1, 28, 28)]  # no targets: the loss does without
    ts.prune_(model, data[0][:1], importance="taylor", calibration=data, loss_fn=loss_fn)
    assert seen == [None]


def test_bad_calibration_batches():
    with pytest.raises(ConfigError, match="calibration_batches"):
        ts.prune_(
            ts.load_model("torchslim:demo_resnet"),
            torch.rand(1, 1, 28, 28),
            importance="energy",
            calibration=_data(),
            calibration_batches=0,
        )
