"""``torchslim finetune``: a pruned model, distilled from its unpruned self, saved and resumable."""

import json

import torch

import torchslim as ts
from torchslim.cli import main

MODELS = """
from torch import nn

def make():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
"""


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_finetune_a_pruned_model_with_its_teacher(capsys, tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    model = ts.load_model(f"{tmp_path / 'models.py'}:make")
    ts.save(model, tmp_path / "teacher")
    ts.prune_(model, torch.randn(1, 16), ratio=0.5)
    ts.save(model, tmp_path / "pruned")
    hidden = model[0].out_features

    argv = ["finetune", tmp_path / "pruned", "--teacher", tmp_path / "teacher"]
    argv += ["--dataset", "synthetic", "-d", "shape=[16]", "-d", "num_samples=160"]
    argv += ["--epochs", 2, "--lr", 0.01, "--batch-size", 32, "--no-progress"]
    argv += ["--checkpoint-dir", tmp_path / "ckpt", "--out", tmp_path / "out"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "accuracy" in out and "wrote" in out
    tuned = ts.load(tmp_path / "out" / "model")  # the plan travels with the saved model
    assert tuned[0].out_features == hidden < 32
    record = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert len(record["history"]) == 2 and record["config"]["kd_alpha"] == 0.5
    assert (tmp_path / "ckpt" / "checkpoint.json").is_file()

    # the same command again finds the finished checkpoint and returns at once
    code, out, _ = run(capsys, *argv, "--overwrite")
    assert code == 0 and "resumed from the checkpoint at step 10" in out


def test_finetune_errors_are_one_line(capsys, tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    spec = f"{tmp_path / 'models.py'}:make"
    base = ["finetune", spec, "--dataset", "synthetic", "--out", tmp_path / "out"]
    code, _, err = run(capsys, *base, "-d", "shape=[16]", "--kd-alpha", 2)
    assert code == 2 and "kd_alpha=2.0 must lie in [0, 1]" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, *base)  # 3x32x32 images into a 16-feature model
    assert code == 2 and "inputs of shape (3, 32, 32)" in err
