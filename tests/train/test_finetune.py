"""finetune: it learns, distils, resumes exactly, checkpoints without pickles, runs under DDP."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchslim as ts
from torchslim.errors import CheckpointError, ConfigError
from torchslim.train import FinetuneConfig, FinetuneResult, finetune
from torchslim.train._finetune import _schedule, distillation_loss


def mlp(seed=0, hidden=32, classes=10, dropout=0.1):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes)
    )


def split(name="train"):
    return ts.load_dataset("synthetic", name, shape=(16,), num_samples=280)


def loader(seed=None, batch_size=32, **kw):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(split(), batch_size=batch_size, shuffle=True, generator=generator, **kw)


def eval_loader():
    return DataLoader(split("test"), batch_size=64)


class Crash(Exception):
    pass


def crash_at(step):
    """A cross-entropy that raises at the ``step``-th training step: a simulated kill."""
    calls = 0

    def loss_fn(logits, targets):
        nonlocal calls
        if torch.is_grad_enabled():
            calls += 1
            if calls == step:
                raise Crash
        return nn.functional.cross_entropy(logits, targets)

    return loss_fn


def assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=name)


def test_loss_decreases_and_accuracy_rises():
    model = mlp(dropout=0.0)
    result = finetune(model, loader(seed=0), eval_data=eval_loader(), epochs=4, lr=1e-2)
    losses = result.train_loss
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert result.history[-1].eval_accuracy > result.initial_eval_accuracy + 0.3
    assert result.best_epoch == max(result.history, key=lambda r: r.eval_accuracy).epoch
    assert result.steps == 4 * len(loader()) and result.history[-1].lr == pytest.approx(0.0)
    assert "accuracy" in result.table()


def test_regularizer_slims_batch_norm_scales():
    """Network Slimming: the L1 penalty on batch-norm scales drives them down during training."""
    from torchslim.importance import bn_sparsity_penalty

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))

    plain, slim = net(), net()
    finetune(plain, loader(seed=0), epochs=4, lr=0.1, optimizer="sgd", weight_decay=0.0)
    finetune(
        slim,
        loader(seed=0),
        epochs=4,
        lr=0.1,
        optimizer="sgd",
        weight_decay=0.0,
        regularizer=lambda m: bn_sparsity_penalty(m, 0.1),
    )
    assert slim[1].weight.abs().sum() < 0.7 * plain[1].weight.abs().sum()


def test_distillation_with_alpha_one_moves_the_student_to_the_teacher():
    student, teacher = mlp(seed=0, dropout=0.0), mlp(seed=1, dropout=0.0)
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(3))
    noise = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(4))
    data = DataLoader(TensorDataset(x, noise), batch_size=32, shuffle=True)  # labels are noise

    def kl():
        with torch.no_grad():
            return float(distillation_loss(student(x), teacher(x), 1.0))

    before = kl()
    teacher_weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()
    finetune(student, data, teacher=teacher, epochs=3, lr=1e-2, kd_alpha=1.0, kd_temperature=2.0)
    assert kl() < 0.3 * before
    assert teacher.training  # its flag restored; it ran in eval mode, unchanged
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_weights[k])


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    options = dict(epochs=2, lr=0.05, optimizer="sgd", grad_clip=1.0, warmup_steps=2)
    teacher = mlp(seed=7)
    steps = len(loader())

    model = mlp(seed=0)
    torch.manual_seed(123)  # dropout draws from the global generator
    straight = finetune(model, loader(seed=0), teacher=teacher, **options)

    crashed = mlp(seed=0)
    torch.manual_seed(123)
    with pytest.raises(Crash):
        finetune(
            crashed,
            loader(seed=0),
            teacher=teacher,
            checkpoint_dir=tmp_path,
            loss_fn=crash_at(steps + 3),
            **options,
        )
    assert json.loads((tmp_path / "checkpoint.json").read_text())["epoch"] == 1

    fresh = mlp(seed=5)  # a new process: other weights, other RNG, a new loader
    torch.manual_seed(999)
    resumed = finetune(fresh, loader(seed=0), teacher=teacher, checkpoint_dir=tmp_path, **options)
    assert resumed.resumed_from == steps and resumed.steps == straight.steps
    assert_same_weights(fresh, model)
    assert resumed.train_loss == pytest.approx(straight.train_loss, rel=1e-6)


def test_resume_in_the_middle_of_an_epoch(tmp_path):
    # the loader shuffles with the global generator; evaluation draws from it too
    options = dict(epochs=2, lr=1e-2, checkpoint_every=3, eval_data=eval_loader())
    model = mlp(seed=0)
    torch.manual_seed(1)
    straight = finetune(model, loader(), **options)
    state_after = torch.get_rng_state()

    crashed = mlp(seed=0)
    torch.manual_seed(1)
    steps = len(loader())  # 7: checkpoints at steps 3, 6, 7 (epoch end), 9, ...
    with pytest.raises(Crash):
        finetune(crashed, loader(), checkpoint_dir=tmp_path, loss_fn=crash_at(11), **options)
    record = json.loads((tmp_path / "checkpoint.json").read_text())
    assert (record["epoch"], record["batch"], record["step"]) == (1, 9 - steps, 9)

    fresh = mlp(seed=2)
    torch.manual_seed(42)
    resumed = finetune(fresh, loader(), checkpoint_dir=tmp_path, **options)
    assert resumed.resumed_from == 9
    assert_same_weights(fresh, model)
    assert torch.equal(torch.get_rng_state(), state_after)
    assert resumed.train_loss == pytest.approx(straight.train_loss, rel=1e-6)
    assert [r.eval_accuracy for r in resumed.history] == [r.eval_accuracy for r in straight.history]


def test_checkpoints_are_safetensors_and_json_only(tmp_path):
    from safetensors import safe_open

    finetune(mlp(), loader(seed=0), epochs=2, lr=1e-3, checkpoint_dir=tmp_path, checkpoint_every=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "checkpoint.json",
        "step-00000014.model.safetensors",  # only the latest step is kept, no temporary files
        "step-00000014.optimizer.safetensors",
    ]
    record = json.loads((tmp_path / "checkpoint.json").read_text())
    assert record["format"] == "torchslim.finetune_checkpoint" and len(record["history"]) == 2
    for name in names[1:]:
        data = (tmp_path / name).read_bytes()  # safetensors: u64 length, JSON header, raw bytes
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        assert all(v["dtype"] in ("F32", "I64") for k, v in header.items() if k != "__metadata__")
        with safe_open(str(tmp_path / name), framework="pt") as f:
            assert list(f.keys())
    assert "state.0.exp_avg" in record["optimizer"]["state"]["0"]["exp_avg"]["tensor"]


def test_a_finished_run_returns_at_once(tmp_path):
    model = mlp()
    first = finetune(model, loader(seed=0), epochs=1, lr=1e-3, checkpoint_dir=tmp_path)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    again = finetune(model, loader(seed=0), epochs=1, lr=1e-3, checkpoint_dir=tmp_path)
    assert again.resumed_from == first.steps and again.history == first.history
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    restart = finetune(
        model, loader(seed=0), epochs=1, lr=1e-3, checkpoint_dir=tmp_path, resume=False
    )
    assert restart.resumed_from is None


def test_resuming_into_another_shape_names_the_tensor(tmp_path):
    finetune(mlp(hidden=32), loader(seed=0), epochs=1, lr=1e-3, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"'0\.weight'.*\(32, 16\).*\(24, 16\)"):
        finetune(mlp(hidden=24), loader(seed=0), epochs=1, lr=1e-3, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="lr: 0.001 -> 0.01"):
        finetune(mlp(hidden=32), loader(seed=0), epochs=1, lr=1e-2, checkpoint_dir=tmp_path)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"epochs": 0, "lr": 1e-3}, "epochs=0"),
        ({"epochs": 1, "lr": 0.0}, "lr=0.0"),
        ({"epochs": 1, "lr": -1.0}, "lr=-1.0"),
        ({"epochs": 1, "lr": 1e-3, "kd_alpha": 1.5}, r"kd_alpha=1.5 must lie in \[0, 1\]"),
        ({"epochs": 1, "lr": 1e-3, "kd_alpha": -0.1}, "kd_alpha=-0.1"),
        ({"epochs": 1, "lr": 1e-3, "kd_temperature": 0}, "kd_temperature=0"),
        ({"epochs": 1, "lr": 1e-3, "optimizer": "adam"}, "optimizer='adam'"),
        ({"epochs": 1, "lr": 1e-3, "warmup": 3}, "unknown option.*warmup"),
        ({"epochs": 1}, "needs lr"),
    ],
)
def test_bad_arguments_raise_config_error(options, match):
    with pytest.raises(ConfigError, match=match):
        finetune(mlp(), loader(), **options)


def test_a_teacher_with_other_outputs_is_refused_before_any_change():
    model = mlp()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"teacher's output has shape \(32, 5\).*\(32, 10\)"):
        finetune(model, loader(seed=0), teacher=mlp(classes=5), epochs=1, lr=1e-3)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="teacher is the model"):
        finetune(model, loader(), teacher=model, epochs=1, lr=1e-3)


def test_keyword_inputs_tuple_outputs_and_restored_mode():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 10)

        def forward(self, x, scale=1.0):
            return self.fc(x) * scale, x.mean()

    x, y = split().tensors
    batches = [({"x": x[i : i + 32]}, y[i : i + 32]) for i in range(0, 224, 32)]
    model = Net().eval()
    result = finetune(model, batches, teacher=Net(), epochs=2, lr=1e-2, batches_per_epoch=5)
    assert result.steps == 10 and not model.training
    with pytest.raises(ConfigError, match=r"\(inputs, targets\) batches"):
        finetune(model, [x[:4]], epochs=1, lr=1e-3)
    with pytest.raises(ConfigError, match=r"DataLoader\(train_data, batch_size=64, shuffle"):
        finetune(model, split(), epochs=1, lr=1e-3)


def test_schedule_warms_up_then_decays_to_min_lr():
    config = FinetuneConfig(epochs=1, lr=1.0, warmup_steps=3, min_lr=0.1)
    factor = _schedule(config, total=13)
    assert [factor(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factor(8) == pytest.approx(0.55) and factor(13) == pytest.approx(0.1)


def test_config_and_result_round_trip_through_json():
    result = finetune(mlp(), loader(seed=0), eval_data=eval_loader(), epochs=1, lr=1e-3)
    back = FinetuneResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back == result
    with pytest.raises(ConfigError, match="unknown fine-tuning option"):
        FinetuneConfig.from_dict({"epochs": 1, "lr": 1.0, "bogus": 2})


_DDP_SCRIPT = """
import json, sys
import torch, torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from safetensors.torch import save_file
from torchslim.train import finetune

dist.init_process_group("gloo")
out = sys.argv[1]
g = torch.Generator().manual_seed(0)
x, y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
torch.manual_seed(dist.get_rank())  # DDP gives every rank the weights of rank 0
model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
torch.manual_seed(9)
teacher = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
result = finetune(model, DataLoader(TensorDataset(x, y), batch_size=8), teacher=teacher,
                  eval_data=DataLoader(TensorDataset(x, y), batch_size=10), epochs=2, lr=0.05,
                  optimizer="sgd", checkpoint_dir=out + "/ckpt")
save_file(model.state_dict(), f"{out}/rank{dist.get_rank()}.safetensors")
with open(f"{out}/rank{dist.get_rank()}.json", "w") as f:
    json.dump(result.to_dict(), f)
dist.destroy_process_group()
"""


def test_two_processes_under_torchrun_match_one_process(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(script),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0]["history"][0]["train_loss"] == results[1]["history"][0]["train_loss"]
    record = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    assert record["world_size"] == 2 and len(record["ranks"]) == 2 and record["epoch"] == 2

    # one process over the same global batches (8 per rank = 16) gives the same weights
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    torch.manual_seed(9)
    teacher = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    single = finetune(
        model,
        DataLoader(TensorDataset(x, y), batch_size=16),
        teacher=teacher,
        eval_data=DataLoader(TensorDataset(x, y), batch_size=10),
        epochs=2,
        lr=0.05,
        optimizer="sgd",
    )
    for k, v in model.state_dict().items():
        torch.testing.assert_close(rank0[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert results[0]["history"][-1]["train_loss"] == pytest.approx(single.train_loss[-1], 1e-5)
    assert results[0]["history"][-1]["eval_accuracy"] == single.history[-1].eval_accuracy
    assert Path(tmp_path / "ckpt").is_dir()
