"""prune_: exactness (zero-contribution oracle), options, plans, atomicity, files."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim._inputs import as_inputs
from torchslim.errors import ConfigError, PruningError
from torchslim.models import get_zoo_model, list_zoo
from torchslim.testing import outputs_close, zero_removed

# channel-separable zoo models: pruning must equal zeroing the removed channels
SEPARABLE = [
    "conv_chain",
    "residual",
    "depthwise",
    "grouped",
    "concat_split",
    "squeeze_excite",
    "multi_input",
    "dataclass_output",
    "demo_resnet",
    "lstm",  # zeroed hidden units stay zero: every gate's pre-activation is 0
    "gru",
]  # not "norms": group norm statistics mix the channels of a group, so zeroing is not removing


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("name", list_zoo())
def test_every_zoo_model_prunes_and_keeps_its_outputs(name):
    entry = get_zoo_model(name)
    torch.manual_seed(0)
    model = entry.build()
    _randomise_bn(model)
    inputs = as_inputs(entry.example_inputs(2))
    original = copy.deepcopy(model)
    with torch.no_grad():
        before = inputs.call(model)
    result = ts.prune_(model, inputs, ratio=0.5)
    with torch.no_grad():
        after = inputs.call(model)
    from torchslim.graph._trace import _output_tensors

    assert [t.shape for t in _output_tensors(after)] == [t.shape for t in _output_tensors(before)]
    assert result.after.params <= result.before.params
    assert result.after.params == sum(p.numel() for p in model.parameters())
    if name in SEPARABLE:
        # the zero-contribution oracle: exact, not just "runs"
        with torch.no_grad():
            assert outputs_close(after, inputs.call(zero_removed(original, result.plan)))
        assert result.after.params < 0.8 * result.before.params
    # the plan replays on a fresh model and gives the same model
    torch.manual_seed(0)
    fresh = entry.build()
    _randomise_bn(fresh)
    ts.apply_plan(fresh, ts.PruningPlan.from_json(result.plan.to_json()))
    with torch.no_grad():
        assert outputs_close(inputs.call(fresh), after, rtol=0, atol=0)


def test_known_parameter_count_after_pruning():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 8, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    result = ts.prune_(model, torch.randn(1, 3, 9, 9), ratio=0.5)
    # 16 -> 8 and 8 -> 4 channels: (3*9*8+8) + (8*9*4+4) + (4*5+5)
    assert result.after.params == (3 * 9 * 8 + 8) + (8 * 9 * 4 + 4) + (4 * 5 + 5)
    assert (model[0].out_channels, model[2].in_channels, model[2].out_channels) == (8, 8, 4)
    assert model[6].in_features == 4 and model[6].out_features == 5


def test_l1_removes_the_smallest_channels():
    model = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.Conv2d(4, 1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(
            torch.tensor([3.0, 0.1, 2.0, 0.2]).view(4, 1, 1, 1).expand(4, 2, 1, 1)
        )
        model[1].weight.fill_(1.0)
    result = ts.prune_(model, torch.randn(1, 2, 1, 1), ratio=0.5, importance="l1")
    assert result.plan.kept["0.weight"] == {0: [0, 2]}


def test_ratios_patterns_and_round_to():
    model = ts.load_model("torchslim:demo_resnet")
    x = torch.randn(1, 1, 28, 28)
    ts.prune_(model, x, ratio=0.4, ratios={"stages.2.*": None, "re:stem\\..*": 0.25}, round_to=4)
    assert model.stem[0].out_channels == 12  # 16 * (1 - 0.25)
    assert model.stages[2][1].conv1.out_channels == 64  # kept whole
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels > 1:
            assert m.out_channels % 4 == 0


def test_global_ranking_removes_the_global_share():
    model = ts.load_model("torchslim:demo_resnet")
    graph = ts.trace(model, torch.randn(1, 1, 28, 28))
    total = sum(len(g) for g in graph.groups())
    result = ts.prune_(model, torch.randn(1, 1, 28, 28), ratio=0.3, global_ranking=True)
    removed = total - sum(len(g) for g in ts.trace(model, torch.randn(1, 1, 28, 28)).groups())
    assert removed == int(0.3 * total)
    assert result.plan.options["global_ranking"] is True


def test_global_scale_of_known_scores():
    from torchslim.pruning._prune import global_scale

    s = np.array([3.0, 1.0, 4.0, 2.0])
    # LAMP: ascending 1, 2, 3, 4 over the sums of the scores at least as large: 10, 9, 7, 4
    np.testing.assert_allclose(global_scale(s, "lamp"), [3 / 7, 1 / 10, 1.0, 2 / 9])
    np.testing.assert_allclose(global_scale(s, "mean"), s / 2.5)
    np.testing.assert_allclose(global_scale(s, "max"), s / 4)
    np.testing.assert_allclose(global_scale(s, "sum"), s / 10)
    np.testing.assert_array_equal(global_scale(s, "none"), s)


class _FixedScores(ts.Importance):
    """Eight equal channels in the first group, two unequal ones in the second."""

    def __call__(self, group):
        return np.full(8, 5.0) if len(group) == 8 else np.array([1.0, 1.5])


@pytest.mark.parametrize(
    ("scaling", "widths"), [("mean", [8, 1]), (True, [8, 1]), ("lamp", [7, 2])]
)
def test_global_ranking_scaling_decides_which_group_loses(scaling, widths):
    """Divided by their means, the second group's weaker channel (0.8) ranks below the equal
    ones (1.0); under LAMP the first group's lowest (1/8) ranks below it (1 / 2.5)."""
    model = nn.Sequential(nn.Conv2d(1, 8, 1), nn.Conv2d(8, 2, 1), nn.Conv2d(2, 1, 1))
    x = torch.randn(1, 1, 3, 3)
    result = ts.prune_(model, x, ratio=0.1, importance=_FixedScores(), global_ranking=scaling)
    assert [model[0].out_channels, model[1].out_channels] == widths
    assert result.plan.options["global_ranking"] == scaling


class _EqualScores(ts.Importance):
    def __call__(self, group):
        return np.full(len(group), 3.0)


def test_global_ranking_spreads_equal_scores_across_groups():
    """Equal scores everywhere (as HRank's saturated ranks): removals go to the groups in
    proportion, not all to the first group."""
    model = nn.Sequential(nn.Conv2d(1, 8, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 1, 1))
    ts.prune_(
        model, torch.randn(1, 1, 3, 3), ratio=0.25, importance=_EqualScores(), global_ranking=True
    )
    assert [model[0].out_channels, model[1].out_channels] == [6, 3]


def test_global_ranking_rejects_unknown_scalings():
    with pytest.raises(ConfigError, match="global_ranking must be .*'lamp'.*got 'median'"):
        ts.prune_(
            nn.Sequential(nn.Conv2d(1, 4, 1)), torch.randn(1, 1, 2, 2), global_ranking="median"
        )


def test_group_ratios_choose_each_groups_own_ratio():
    """A function of the group sets its ratio (a ``ratios`` pattern matches a group by any of
    its modules, so a conv's name selects both its input and its output group)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 4, 4)
    own = {"0": 0.75, "1": None}  # by the group's first module: conv 0's and conv 1's outputs
    result = ts.prune_(model, x, group_ratios=lambda g: own[g.modules[0]], round_to=None)
    assert [m.out_channels for m in model] == [2, 8, 4]
    assert model[1].in_channels == 2
    assert result.plan.options["group_ratios"] == [["0", 0.75]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_macs": 0.5}, "cannot be combined"),
        ({"global_ranking": True}, "cannot be combined"),
        ({"steps": 2}, "cannot be combined"),
        ({"group_ratios": {"0": 0.5}}, "must be callable"),
    ],
)
def test_group_ratios_refuse_other_ways_of_choosing(kwargs, match):
    kwargs.setdefault("group_ratios", lambda g: 0.5)
    with pytest.raises(ConfigError, match=match):
        ts.prune_(
            nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)), torch.randn(1, 3, 2, 2), **kwargs
        )


def test_group_ratios_are_checked():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
    with pytest.raises(ConfigError, match="group_ratios"):
        ts.prune_(model, torch.randn(1, 3, 2, 2), group_ratios=lambda g: 1.0)
    assert model[0].out_channels == 8


def test_min_channels_is_respected():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))
    ts.prune_(model, torch.randn(1, 3, 2, 2), ratio=0.9, min_channels=3)
    assert model[0].out_channels == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
        ({"importance": "nope"}, "known: l1"),
        ({"round_to": 0}, "round_to"),
        ({"min_channels": 0}, "min_channels"),
        ({"ratios": {"x": 2}}, "ratios"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ts.prune_(nn.Linear(2, 2), torch.randn(1, 2), **kwargs)


class Scaled(nn.Module):
    """A custom layer with a hidden size attribute that tracing cannot see."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.scale = nn.Parameter(torch.ones(c))

    def forward(self, x):
        return x * self.scale.view(1, self.c, 1, 1)


def test_a_group_that_breaks_the_model_is_kept_whole_and_reported():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Scaled(8), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1))
    result = ts.prune_(model, torch.randn(1, 3, 2, 2), ratio=0.5)
    assert model[0].out_channels == 8 and model[1].scale.shape == (8,)  # kept whole
    assert model[2].out_channels == 4  # the other group was pruned
    ((modules, reason),) = result.skipped
    assert "1" in modules and "Scaled" in reason


class BadPruner(ts.LayerPruner):
    prunable = {"scale": (0,)}

    def update(self, module, old_shapes):
        raise ConfigError("refusing on purpose")


def test_failure_midway_restores_the_model_exactly():
    ts.register_layer_pruner(Scaled)(BadPruner)
    try:
        model = nn.Sequential(nn.Conv2d(3, 8, 1), Scaled(8), nn.Conv2d(8, 2, 1))
        params = list(model.parameters())
        state = {k: v.clone() for k, v in model.state_dict().items()}
        graph = ts.trace(model, torch.randn(1, 3, 2, 2))
        (group,) = graph.groups()
        with pytest.raises(
            PruningError, match=r"Scaled at '1'.*refusing on purpose.*ignore=\['1'\]"
        ):
            group.prune([0, 1])
        assert list(model.parameters()) == params  # same objects
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert model[0].out_channels == 8 and model[2].in_channels == 8
    finally:
        from torchslim.pruning import _layers

        del _layers._PRUNERS[Scaled]


def test_plan_does_not_fit_another_model():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1))
    result = ts.prune_(copy.deepcopy(model), torch.randn(1, 3, 2, 2))
    other = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1))
    with pytest.raises(PruningError, match="fresh, unpruned model"):
        ts.apply_plan(other, result.plan)
    assert other[0].out_channels == 6


def test_plan_json_round_trip_and_validation():
    model = ts.load_model("torchslim:residual")
    result = ts.prune_(model, get_zoo_model("residual").example_inputs(1), ratio=0.5)
    data = json.loads(result.plan.to_json())
    assert data["format"] == "torchslim.plan" and data["options"]["ratio"] == 0.5
    assert ts.PruningPlan.from_dict(data) == result.plan
    data["kept"][next(iter(data["kept"]))]["0"] = []
    with pytest.raises(ConfigError, match="removes every index"):
        ts.PruningPlan.from_dict(data)


def test_save_and_load_a_pruned_model(tmp_path):
    torch.manual_seed(0)
    model = ts.load_model("torchslim:demo_resnet")
    x = torch.randn(3, 1, 28, 28)
    result = ts.prune_(model, x, ratio=0.5)
    path = ts.save(model, tmp_path / "pruned", plan=result.plan)
    loaded = ts.load(path).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert np.isclose(sum(p.numel() for p in loaded.parameters()), result.after.params)
    # or onto a model the caller built
    mine = ts.load(path, ts.load_model("torchslim:demo_resnet")).eval()
    with torch.no_grad():
        torch.testing.assert_close(mine(x), model(x), rtol=0, atol=0)


def test_two_pruning_steps_save_as_one_composed_plan(tmp_path):
    torch.manual_seed(0)
    model = ts.load_model("torchslim:demo_resnet")
    x = torch.randn(2, 1, 28, 28)
    first = ts.prune_(model, x, ratio=0.25)
    second = ts.prune_(model, x, ratio=0.25)
    composed = first.plan.then(second.plan)
    assert composed.shapes["stem.0.weight"] == [16, 1, 3, 3]
    assert len(composed.kept["stem.0.weight"][0]) == model.stem[0].out_channels
    path = ts.save(model, tmp_path / "m")  # the composed plan is recorded automatically
    loaded = ts.load(path).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_models_with_data_dependent_output_sizes_prune():
    class Detector(nn.Module):  # returns as many scores as pass a threshold, like a detector
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1))

        def forward(self, x):
            scores = self.body(x).flatten(1).sigmoid()
            keep = scores > 0.5
            return scores[keep], keep.nonzero()

    torch.manual_seed(0)
    model, x = Detector(), torch.randn(1, 3, 8, 8)
    ts.prune_(model, x, ratio=0.5)
    assert model.body[0].out_channels == 4
    scores, where = model(x)
    assert scores.dim() == 1 and where.shape[1] == 2


def test_a_changed_trailing_output_dimension_is_still_an_error():
    from torchslim.pruning._surgery import _same_shapes

    assert not _same_shapes([(3, 4)], [(3, 2)], None, None)
    assert not _same_shapes([(3, 4)], [(3, 4, 1)], None, None)


def test_non_persistent_buffers_keep_their_channels():
    class Table(nn.Module):  # like timm's cached tables: derived state the model may rebuild
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 2, 1)
            self.register_buffer("offset", torch.linspace(-1, 1, 6).view(1, 6, 1, 1), False)

        def forward(self, x):
            return self.c(self.b(self.a(x)) + self.offset)

    torch.manual_seed(0)
    model, x = Table(), torch.randn(1, 3, 4, 4)
    original = copy.deepcopy(model)
    result = ts.prune_(model, x, ratio=0.5)
    assert model.offset.shape == (1, 6, 1, 1) and model.b.out_channels == 6
    assert model.a.out_channels == 4
    with torch.no_grad():
        assert outputs_close(model(x), zero_removed(original, result.plan)(x))
