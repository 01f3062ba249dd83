"""prune_ targets: MACs and parameter budgets, iterative steps, per-layer caps."""

import copy

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim._inputs import as_inputs
from torchslim.errors import ConfigError
from torchslim.models import get_zoo_model
from torchslim.pruning._targets import PlanCounter, resolve_target


def _demo():
    torch.manual_seed(0)
    entry = get_zoo_model("demo_resnet")
    return entry.build().eval(), entry.example_inputs(2)


@pytest.mark.parametrize("fraction", [0.5, 0.25])
@pytest.mark.parametrize("global_ranking", [False, True])
def test_target_macs_is_reached_within_two_percent(fraction, global_ranking):
    model, x = _demo()
    result = ts.prune_(model, x, target_macs=fraction, global_ranking=global_ranking)
    reached = result.after.macs / result.before.macs
    assert abs(reached - fraction) <= 0.02 * fraction, reached
    # the profile's count is the model's real count
    assert result.after.macs == ts.profile(model, x).macs


def test_target_params_absolute_count():
    model, x = _demo()
    before = sum(p.numel() for p in model.parameters())
    target = before // 3
    result = ts.prune_(model, x, target_params=target)
    after = sum(p.numel() for p in model.parameters())
    assert abs(after - target) <= 0.02 * target
    assert result.after.params == after


def test_plan_counter_matches_real_pruning():
    """The counts judged on a meta copy equal what the pruned model really has."""
    model, x = _demo()
    inputs = as_inputs(x)
    result = ts.prune_(copy.deepcopy(model), x, ratio=0.4)
    counter = PlanCounter(model, inputs, result.before.macs)
    assert counter.macs(result.plan) == result.after.macs
    assert counter.params(result.plan) == result.after.params
    # and the model itself was not touched by counting
    assert sum(p.numel() for p in model.parameters()) == result.before.params
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_steps_compose_to_the_target_and_call_back_between_steps():
    model, x = _demo()
    fresh = copy.deepcopy(model)
    seen = []

    def callback(step, pruned, step_result):
        assert pruned is model
        seen.append((step, step_result.after.macs))

    result = ts.prune_(model, x, target_macs=0.3, steps=3, callback=callback)
    assert [s for s, _ in seen] == [1, 2, 3]
    macs = [m for _, m in seen]
    assert macs[0] > macs[1] > macs[2]
    assert abs(result.after.macs / result.before.macs - 0.3) <= 0.02 * 0.3
    assert len(result.steps) == 3
    # the composed plan replays the three steps on a fresh model in one go
    ts.apply_plan(fresh, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-6)


def test_ratio_in_steps_removes_the_same_share_overall():
    model, x = _demo()
    one = ts.prune_(copy.deepcopy(model), x, ratio=0.5)
    many = ts.prune_(model, x, ratio=0.5, steps=2)
    # per group 1 - (1 - r)^2 = 0.5 overall; channel counts round, so allow a little slack
    assert abs(many.after.params - one.after.params) <= 0.1 * one.after.params


def test_max_ratio_caps_every_group():
    model, x = _demo()
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    ts.prune_(model, x, ratio=0.9, max_ratio=0.5)
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= widths[n] // 2, n


def test_global_ranking_respects_max_ratio():
    model, x = _demo()
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    ts.prune_(model, x, target_macs=0.3, global_ranking=True, max_ratio=0.75)
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= widths[n] // 4, n


def test_unreachable_target_says_what_is_reachable_and_leaves_the_model():
    model, x = _demo()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="cannot get below"):
        ts.prune_(model, x, target_macs=0.01, max_ratio=0.5)
    after = model.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.0, r"\(0, 1\]"),
        (1.5, r"\(0, 1\]"),
        (True, "fraction"),
        ("half", "fraction"),
        (-3, "between"),
    ],
)
def test_bad_targets_are_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        resolve_target(value, 1000, "target_macs")


def test_both_targets_or_bad_steps_are_refused():
    model, x = _demo()
    with pytest.raises(ConfigError, match="one of target_macs and target_params"):
        ts.prune_(model, x, target_macs=0.5, target_params=0.5)
    with pytest.raises(ConfigError, match="steps"):
        ts.prune_(model, x, steps=0)
    with pytest.raises(ConfigError, match="max_ratio"):
        ts.prune_(model, x, max_ratio=1.5)
