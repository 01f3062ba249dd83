"""NAS-Bench-201: architecture strings, the table, the space, the built networks, the evaluator.

Parameter and MAC counts are checked against figures NAS-Bench-201's API reports (``get_cost_info``
on CIFAR-10/100: params 0.073306 M to 1.531546 M and 0.079156 M to 1.537396 M, FLOPs 7.78305 M to
220.11969 M, quoted by EvoXBench's NB201 normalisation table) and against counts made by hand.
Tests that need the tabular file skip, saying where it was looked for, when it is absent.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
from pathlib import Path

import optuna
import pytest
import torch

from torchslim.errors import ConfigError, DatasetError
from torchslim.search import _nas201
from torchslim.search._nas201 import (
    EDGE_PARAMS,
    NAS201_OPS,
    NasBench201Network,
    NasBench201Space,
    NasBench201Table,
    NasBench201TableEvaluator,
    format_arch,
    make_config,
    nas201_cost,
    parse_arch,
)

try:
    TABLE: NasBench201Table | None = NasBench201Table.load()
    _MISSING = ""
except DatasetError as exc:  # the data folder is not there on this machine
    TABLE, _MISSING = None, str(exc)
ROOT = Path(__file__).resolve().parents[2]
needs_table = pytest.mark.skipif(TABLE is None, reason=f"NAS-Bench-201 table absent: {_MISSING}")

ALL_CONV3 = format_arch(["nor_conv_3x3"] * 6)
ALL_NONE = format_arch(["none"] * 6)
EXAMPLE = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+"
    + "|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
)


def _hand_params(ops, num_classes=10):
    """Parameters counted by hand: the skeleton (stem, two reduction blocks, last BN, classifier)
    plus, per stage of 5 cells of width C, C*C*k*k conv weights and 2*C BN parameters per conv."""
    skeleton = (
        3 * 16 * 9 + 2 * 16  # stem conv + BN
        + (16 * 32 * 9 + 64) + (32 * 32 * 9 + 64) + 16 * 32  # reduction 16 -> 32
        + (32 * 64 * 9 + 128) + (64 * 64 * 9 + 128) + 32 * 64  # reduction 32 -> 64
        + 2 * 64  # last BN
        + 64 * num_classes + num_classes  # classifier
    )  # fmt: skip
    per_cell = {
        "nor_conv_3x3": lambda c: 9 * c * c + 2 * c,
        "nor_conv_1x1": lambda c: c * c + 2 * c,
    }
    cells = sum(5 * per_cell[op](c) for c in (16, 32, 64) for op in ops if op in per_cell)
    return skeleton + cells


def _hand_macs(ops, num_classes=10):
    """Conv and linear MACs at 32x32: every stage's spatial size times channels squared is
    1024*16*16 = 256*32*32 = 64*64*64 = 262,144 per 1x1 (9x that per 3x3), 5 cells per stage."""
    skeleton = (
        1024 * 16 * 27  # stem
        + 2 * (256 * 32 * 144 + 256 * 32 * 288 + 256 * 32 * 16)  # reduction 1 (same MACs as 2)
        + 64 * num_classes  # classifier
    )
    per_edge = {"nor_conv_3x3": 3 * 5 * 9 * 262_144, "nor_conv_1x1": 3 * 5 * 262_144}
    return skeleton + sum(per_edge.get(op, 0) for op in ops)


# ------------------------------------------------------------------------- architecture strings
def test_parse_and_format_example():
    ops = parse_arch(EXAMPLE)
    assert ops == (
        "nor_conv_3x3",
        "nor_conv_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "nor_conv_3x3",
        "skip_connect",
    )
    assert format_arch(ops) == EXAMPLE
    assert make_config(ops) == {"arch": EXAMPLE, **dict(zip(EDGE_PARAMS, ops, strict=True))}


@pytest.mark.parametrize(
    "bad",
    [
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|",  # two nodes
        "|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|",  # unknown op
        "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",  # wrong source
        "|none~0|+|none~0|+|none~0|none~1|none~2|",  # missing edge
        "none~0+|none~0|none~1|+|none~0|none~1|none~2|",  # no bars
    ],
)
def test_parse_rejects_malformed_strings(bad):
    with pytest.raises(ConfigError):
        parse_arch(bad)


def test_format_rejects_wrong_length_and_unknown_ops():
    with pytest.raises(ConfigError, match="6 edges"):
        format_arch(["none"] * 5)
    with pytest.raises(ConfigError, match="max_pool_3x3"):
        format_arch(["max_pool_3x3"] + ["none"] * 5)


@needs_table
def test_round_trip_every_row_of_the_table():
    for arch in TABLE.archs:
        assert format_arch(parse_arch(arch)) == arch


# ----------------------------------------------------------------------------------- the table
@needs_table
def test_table_holds_every_cell_once():
    assert len(TABLE) == 15_625 == len(set(TABLE.archs))
    assert {parse_arch(a) for a in TABLE.archs} == set(itertools.product(NAS201_OPS, repeat=6))
    assert sorted(TABLE.index.tolist()) == list(range(15_625))
    # the short-schedule table's best CIFAR-10 test accuracy, as its README says
    assert TABLE.best("cifar10-test")[1] == pytest.approx(89.16)


@needs_table
def test_space_suggests_only_archs_of_the_table_and_all_of_them():
    space = NasBench201Space()
    seen = set()
    for ops in itertools.product(NAS201_OPS, repeat=6):
        params = dict(zip(EDGE_PARAMS, ops, strict=True))
        config = space.suggest(optuna.trial.FixedTrial(params))
        assert config == make_config(ops) == space.config_from_params(params)
        assert config["arch"] in TABLE
        seen.add(config["arch"])
    assert seen == set(TABLE.archs)


def test_missing_table_names_the_path_and_the_fix(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(DatasetError, match="TORCHSLIM_DATA_DIR") as info:
        NasBench201Table(missing)
    assert str(missing) in str(info.value)
    monkeypatch.setenv("TORCHSLIM_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match=str(tmp_path / "nasbench201_cifar.csv")):
        NasBench201Table()


def test_table_path_from_env_and_folder(tmp_path, monkeypatch):
    rows = [
        ["index", "arch", "cifar10-val", "cifar10-test", "cifar100-val", "cifar100-test"],
        [7, EXAMPLE, 80.5, 85.25, 50.0, 51.5],
        [3, ALL_NONE, 10.0, 10.0, 1.0, 1.0],
    ]
    with (tmp_path / "nasbench201_cifar.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    monkeypatch.setenv("TORCHSLIM_DATA_DIR", str(tmp_path))
    for table in (NasBench201Table(), NasBench201Table(tmp_path)):
        assert len(table) == 2 and EXAMPLE in table and ALL_CONV3 not in table
        assert table.row(parse_arch(EXAMPLE))["index"] == 7
        assert table.query(EXAMPLE, "cifar100") == {"val_accuracy": 50.0, "test_accuracy": 51.5}
        assert table.best("cifar10-val") == (EXAMPLE, 80.5)
    with pytest.raises(DatasetError, match="not in"):
        table.row_of(ALL_CONV3)
    with pytest.raises(ConfigError, match="cifar100"):
        table.query(EXAMPLE, "imagenet")


# -------------------------------------------------------------------------------- the networks
@pytest.mark.parametrize("num_classes", [10, 100])
def test_params_and_macs_match_nas_bench_201(num_classes):
    # NAS-Bench-201's cost info: the all-3x3 network is the largest, a conv-free cell the smallest
    published = {10: (1_531_546, 73_306), 100: (1_537_396, 79_156)}[num_classes]
    no_conv = format_arch(["skip_connect", "none", "avg_pool_3x3", "none", "skip_connect", "none"])
    for arch, params in zip((ALL_CONV3, no_conv), published, strict=True):
        cost = nas201_cost(arch, num_classes)
        assert cost["params"] == params == _hand_params(parse_arch(arch), num_classes)
        # the benchmark's FLOPs add the classifier's bias (num_classes) to conv and linear MACs
        assert cost["macs"] == _hand_macs(parse_arch(arch), num_classes)
    assert nas201_cost(ALL_CONV3, 10)["macs"] + 10 == 220_119_690  # 220.11969 M
    assert nas201_cost(no_conv, 10)["macs"] + 10 == 7_783_050  # 7.78305 M


def test_params_and_macs_of_mixed_cells_match_hand_counts():
    rng = random.Random(0)
    archs = [EXAMPLE, format_arch(["nor_conv_1x1"] * 6)]
    archs += [format_arch(rng.choices(NAS201_OPS, k=6)) for _ in range(4)]
    for arch in archs:
        ops = parse_arch(arch)
        net = NasBench201Network(arch)
        assert sum(p.numel() for p in net.parameters()) == _hand_params(ops)
        assert nas201_cost(arch) == {"params": _hand_params(ops), "macs": _hand_macs(ops)}
    assert _hand_params(parse_arch(format_arch(["nor_conv_1x1"] * 6))) == 241_306


def test_network_layout_and_forward_shapes():
    net = NasBench201Network(EXAMPLE, num_classes=100).eval()
    assert len(net.cells) == 17  # 5 cells, reduction, 5 cells, reduction, 5 cells
    assert [type(m).__name__ for m in net.cells].count("ResidualReduction") == 2
    assert net.classifier.in_features == 64 and net.arch == EXAMPLE
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 100)
    space = NasBench201Space()
    built = space.build(make_config(parse_arch(EXAMPLE)))
    x = space.example_inputs()
    assert x.shape == (1, 3, 32, 32) and torch.equal(x, space.example_inputs())
    assert built(x).shape == (1, 10)
    assert space.options() == {"num_classes": 10}


@pytest.mark.parametrize(
    "arch",
    [ALL_NONE, "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|none~0|none~1|none~2|"],
)
def test_disconnected_cell_gives_constant_logits(arch):
    torch.manual_seed(0)
    net = NasBench201Network(arch).eval()
    connected = NasBench201Network(EXAMPLE).eval()
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(a), net(b))  # the input never reaches the classifier
        assert torch.isfinite(net(a)).all()
        assert not torch.equal(connected(a), connected(b))


@needs_table
def test_disconnected_cells_train_to_chance_in_the_table():
    def connected(ops):
        reach = {0}
        for op, (node, source) in zip(ops, _nas201.NAS201_EDGES, strict=True):
            if op != "none" and source in reach:  # edges are listed sources first
                reach.add(node)
        return 3 in reach

    dead = [a for a in TABLE.archs if not connected(parse_arch(a))]
    # by hand: edge 3<-0 is none and, over the states of 1<-0, 2<-0, 2<-1 (4 non-none ops
    # each), the edges 3<-1, 3<-2 leave no path: 125 + 100 + 20 + 16 + 80 = 341 cells
    assert ALL_NONE in dead and len(dead) == 341
    assert {(TABLE.row(a)["cifar10-test"], TABLE.row(a)["cifar100-test"]) for a in dead} == {
        (10.0, 1.0)
    }
    alive = [TABLE.row(a)["cifar10-test"] for a in TABLE.archs if connected(parse_arch(a))]
    assert min(alive) > 20.0


# ------------------------------------------------------------------------------- the evaluator
@needs_table
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_evaluator_returns_the_csv_row(dataset):
    with TABLE.path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    evaluator = NasBench201TableEvaluator(dataset=dataset)
    assert evaluator.metrics == ("val_accuracy", "test_accuracy")
    space = NasBench201Space()
    for row in random.Random(1).sample(rows, 200):
        params = dict(zip(EDGE_PARAMS, parse_arch(row["arch"]), strict=True))
        config = space.config_from_params(params)
        assert evaluator(space, config) == {
            "val_accuracy": float(row[f"{dataset}-val"]),
            "test_accuracy": float(row[f"{dataset}-test"]),
        }


@needs_table
def test_evaluator_cost_option():
    evaluator = NasBench201TableEvaluator(dataset="cifar100", cost=True)
    assert evaluator.metrics == ("val_accuracy", "test_accuracy", "params", "macs")
    out = evaluator(NasBench201Space(), {"arch": ALL_CONV3})
    assert out["params"] == 1_537_396 and out["macs"] == _hand_macs(parse_arch(ALL_CONV3), 100)
    assert out["test_accuracy"] == TABLE.row(ALL_CONV3)["cifar100-test"]


@needs_table
def test_evaluator_latency_is_cached_on_disk(tmp_path, monkeypatch):
    cache = tmp_path / "latency.json"
    options = dict(
        latency=True,
        latency_mode="measure",
        latency_cache=str(cache),
        kernel_cache=str(tmp_path / "kernels.json"),
        threads=1,
    )
    evaluator = NasBench201TableEvaluator(**options, rounds=1, runs=3)
    assert evaluator.metrics[-1] == "latency_ms"
    space = NasBench201Space()
    first = evaluator(space, {"arch": EXAMPLE})["latency_ms"]
    assert first > 0
    stored = json.loads(cache.read_text())
    assert [arch for entries in stored.values() for arch in entries] == [EXAMPLE]
    (key,) = stored
    assert key.startswith("measure ") and '"threads": 1' in key

    def no_timing(*args, **kwargs):
        raise AssertionError("a cached architecture was timed again")

    monkeypatch.setattr(NasBench201TableEvaluator, "_time", no_timing)
    again = NasBench201TableEvaluator(**options)
    assert again(space, {"arch": EXAMPLE})["latency_ms"] == first
    with pytest.raises(AssertionError, match="timed again"):
        again(space, {"arch": ALL_CONV3})


@needs_table
def test_evaluator_predicts_latency_with_the_latency_table(tmp_path):
    evaluator = NasBench201TableEvaluator(
        latency=True, threads=1, kernel_cache=str(tmp_path / "kernels.json")
    )
    space = NasBench201Space()
    heavy = evaluator(space, {"arch": ALL_CONV3})["latency_ms"]
    light = evaluator(space, {"arch": format_arch(["skip_connect"] * 6)})["latency_ms"]
    assert 0 < light < heavy  # 30 more 3x3 convolutions per stage cost time
    kernels_timed = evaluator.latency_table().measured_kernels
    mixed = format_arch(["nor_conv_3x3", "skip_connect"] * 3)  # kernels of the two above only
    assert 0 < evaluator(space, {"arch": mixed})["latency_ms"] < heavy
    assert evaluator.latency_table().measured_kernels == kernels_timed


@needs_table
def test_latency_correction_is_fitted_once_and_shared_through_the_cache(tmp_path, monkeypatch):
    from torchslim.search import LatencyTable
    from torchslim.search._nas201_eval import calibration_archs

    archs = calibration_archs(8)
    assert archs[:5] == [format_arch([op] * 6) for op in NAS201_OPS]
    assert len(set(archs)) == 8 and archs == calibration_archs(8)
    options = dict(
        latency=True,
        calibrate=6,
        threads=1,
        latency_cache=str(tmp_path / "latency.json"),
        kernel_cache=str(tmp_path / "kernels.json"),
        rounds=1,
        runs=3,
    )
    first = NasBench201TableEvaluator(**options)
    value = first.latency_of(EXAMPLE)
    assert first.latency_table().correction is not None
    stored = json.loads((tmp_path / "latency.json").read_text())
    (correction,) = [k for k in stored if k.endswith(" correction")]
    assert "calibrate=6" in correction and stored[correction]

    def no_fit(*args, **kwargs):
        raise AssertionError("the correction was fitted again")

    monkeypatch.setattr(LatencyTable, "calibrate", no_fit)
    second = NasBench201TableEvaluator(**options)
    assert second.latency_of(EXAMPLE) == value  # cached
    second.latency_of(ALL_CONV3)  # predicted with the stored correction
    assert second.latency_table().correction.to_dict() == stored[correction]


def test_evaluator_rejects_bad_options():
    with pytest.raises(ConfigError, match="imagenet"):
        NasBench201TableEvaluator(dataset="imagenet")
    with pytest.raises(ConfigError, match="latency_mode"):
        NasBench201TableEvaluator(latency_mode="guess")
    with pytest.raises(ConfigError, match="calibrate"):
        NasBench201TableEvaluator(calibrate=1)


# --------------------------------------------------------------------------------- end to end
@needs_table
def test_torchslim_search_runs_the_example_config(tmp_path, capsys):
    from torchslim.cli import main

    config = ROOT / "examples" / "search" / "nas201.yaml"
    run_dir = tmp_path / "run"
    args = ["search", str(config), "--run-dir", str(run_dir), "--budget", "25", "--no-progress"]
    assert main(args) == 0
    assert "25 completed trials" in capsys.readouterr().out
    trials = json.loads((run_dir / "trials.json").read_text())["trials"]
    assert len(trials) == 25
    for t in trials:
        assert t["metrics"] == TABLE.query(t["config"]["arch"], "cifar10")
        assert t["config"] == make_config(parse_arch(t["config"]["arch"]))


@needs_table
def test_ts_search_on_the_table_with_latency(tmp_path):
    import torchslim as ts

    evaluator = NasBench201TableEvaluator(
        latency=True, threads=1, kernel_cache=str(tmp_path / "kernels.json")
    )
    result = ts.search(
        "nas201",
        evaluator,
        objectives=["val_accuracy:max", "latency_ms:min"],
        budget=12,
        sampler="nsga2",
        seed=0,
        progress=False,
    )
    assert len(result.trials) == 12 and result.pareto
    for record in result.pareto:  # nothing found dominates a front member
        acc, lat = record.metrics["val_accuracy"], record.metrics["latency_ms"]
        assert not any(
            r.metrics["val_accuracy"] >= acc
            and r.metrics["latency_ms"] <= lat
            and (r.metrics["val_accuracy"], r.metrics["latency_ms"]) != (acc, lat)
            for r in result.trials
        )
