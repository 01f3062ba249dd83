"""The registry, name resolution and how layers' scores combine."""

import numpy as np
import pytest

import torchslim as ts
from torchslim.errors import ConfigError
from torchslim.importance import L2, get_importance, list_importances
from torchslim.importance._base import combine

ALL = [
    "activation",
    "bn_scale",
    "energy",
    "fpgm",
    "hrank",
    "l1",
    "l2",
    "lamp",
    "lrp",
    "random",
    "taylor",
]


def test_every_criterion_is_registered():
    assert list_importances() == ALL
    assert ts.list_importances() == ALL


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        get_importance("nope")
    message = str(info.value)
    assert message.startswith("unknown importance 'nope'; known: l1, l2,")  # weights first
    assert "on calibration data: " in message
    assert all(name in message for name in ALL)


def test_instances_pass_through_and_names_build_fresh_ones():
    crit = L2(reduction="max")
    assert get_importance(crit) is crit
    assert get_importance("energy") is not get_importance("energy")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ConfigError, match="already registered"):
        ts.register_importance("l2")(L2)


def test_reductions_and_normalisations():
    layers = [np.array([1.0, 2.0, 3.0]), np.array([4.0, 0.0, 2.0])]
    assert np.allclose(combine(layers, "sum", None), [5, 2, 5])
    assert np.allclose(combine(layers, "mean", None), [2.5, 1, 2.5])
    assert np.allclose(combine(layers, "max", None), [4, 2, 3])
    assert np.allclose(combine(layers, "sum", "max"), [1 / 3 + 1, 2 / 3, 1 + 0.5])
    assert np.allclose(combine(layers, "sum", "mean"), [0.5 + 2, 1, 1.5 + 1])
    assert np.allclose(combine(layers, "sum", "sum"), [1 / 6 + 4 / 6, 2 / 6, 3 / 6 + 2 / 6])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"reduction": "median"}, "reduction"), ({"normalize": "l2"}, "normalize")],
)
def test_bad_options_name_the_choices(kwargs, match):
    with pytest.raises(ConfigError, match=f"{match} must be one of"):
        L2(**kwargs)
