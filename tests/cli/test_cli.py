"""The torchslim command line: output and one-line errors."""

import json
import subprocess
import sys

import pytest

from torchslim.cli import main, parse_shape


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_profile_resnet50_prints_the_published_figures(capsys):
    pytest.importorskip("torchvision")
    code, out, _ = run(
        capsys,
        "profile",
        "torchvision:resnet50",
        "--input-shape",
        "1,3,224,224",
        "--warmup",
        "1",
        "--runs",
        "2",
        "--top",
        "5",
    )
    assert code == 0
    assert "params   25.56 M" in out
    macs = int(out.split("MACs")[1].split("(")[1].split(")")[0].replace(",", ""))
    assert abs(macs / 4.089e9 - 1) < 0.02
    assert "latency" in out and "2 runs after 1 warm-up" in out
    assert out.count("Conv2d") == 5  # --top 5


def test_profile_json_is_a_profile(capsys):
    code, out, _ = run(capsys, "profile", "torchslim:conv_chain", "--no-latency", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["latency"] is None and data["params"] > 0 and data["input_shapes"]["0"][0] == 1


def test_meta_device_counts_huge_models_without_memory(capsys):
    pytest.importorskip("torchvision")
    code, out, _ = run(
        capsys,
        "profile",
        "torchvision:regnet_y_128gf",
        "--input-shape",
        "1,3,384,384",
        "--device",
        "meta",
        "--no-latency",
        "--top",
        "1",
    )
    assert code == 0
    assert "374.57 G" in out  # torchvision publishes 374.57 GFLOPS for this input size


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "torchvision:resnet5", "--input-shape", "1,3,8,8"], "did you mean resnet50"),
        (["profile", "torchvision:resnet18", "--input-shape", "1,3,x"], "bad input shape"),
        (["profile", "torchvision:resnet18", "--input-shape", "1,3,0,4"], "bad input shape"),
        (["profile", "torchvision:resnet18"], "--input-shape"),
        (["profile", "torchvision:resnet18", "--input-shape", "1,5,32,32"], "failed on inputs"),
        (
            ["profile", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--backend", "x"],
            "unknown latency backend",
        ),
        (["profile", "torchslim:conv_chain", "--device", "meta"], "--no-latency"),
        (
            ["profile", "torchvision:resnet18", "--input-shape", "1,3,32,32", "-a", "oops"],
            "KEY=VALUE",
        ),
    ],
)
def test_bad_input_gets_a_one_line_error(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("torchslim: error:") and message in err
    assert len(err.strip().splitlines()) == 1  # no traceback


def test_missing_extra_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    code, _, err = run(capsys, "profile", "timm:resnet18", "--input-shape", "1,3,32,32")
    assert code == 2 and "pip install 'torchslim[zoo]'" in err


def test_parse_shape_accepts_x_separators():
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "torchslim.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("torchslim ")


def test_prune_writes_model_plan_and_report(capsys, tmp_path):
    import torch

    import torchslim as ts
    from torchslim.models import get_zoo_model

    out = tmp_path / "run"
    code, text, _ = run(
        capsys, "prune", "torchslim:conv_chain", "--ratio", "0.5", "--out", str(out), "--no-latency"
    )
    assert code == 0
    assert "params" in text and "MACs" in text and "after/before" in text
    assert sorted(p.name for p in out.iterdir()) == ["model", "plan.json", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["params"] < report["before"]["params"]
    loaded = ts.load(out / "model").eval()
    assert sum(p.numel() for p in loaded.parameters()) == report["after"]["params"]
    x = get_zoo_model("conv_chain").example_inputs(2)
    assert loaded(x).shape == (2, 10)
    # pruning the pruned model again composes the plans
    code, _, _ = run(
        capsys,
        "prune",
        str(out / "model"),
        "--ratio",
        "0.5",
        "--out",
        str(tmp_path / "again"),
        "--no-latency",
        "--input-shape",
        ",".join(map(str, x.shape)),
    )
    assert code == 0
    twice = ts.load(tmp_path / "again" / "model").eval()
    assert sum(p.numel() for p in twice.parameters()) < report["after"]["params"]
    with torch.no_grad():
        assert torch.isfinite(twice(x)).all()
    # never overwrites without being asked
    code, _, err = run(capsys, "prune", "torchslim:conv_chain", "--out", str(out), "--no-latency")
    assert code == 2 and "--overwrite" in err


@pytest.mark.parametrize(
    ("flag", "recorded"), [(["--global-ranking"], "mean"), (["--global-ranking", "lamp"], "lamp")]
)
def test_prune_global_ranking_takes_a_scaling(capsys, tmp_path, flag, recorded):
    out = tmp_path / "run"
    argv = ["prune", "torchslim:conv_chain", "--ratio", "0.3", "--out", str(out), "--no-latency"]
    code, _, _ = run(capsys, *argv, *flag)
    assert code == 0
    assert json.loads((out / "plan.json").read_text())["options"]["global_ranking"] == recorded
