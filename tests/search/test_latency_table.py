"""The latency table: kernel enumeration and fusion, the cache file, missing kernels, the fit."""

import json
import logging
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.errors import ConfigError
from torchslim.search import LatencyCorrection, LatencyTable

CONV = "Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)"
BN = f"BatchNorm2d({nn.BatchNorm2d(8).extra_repr()})"  # its fields vary across torch versions
MAP = "1x8x16x16:float32"
STEM = (
    "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False) "
    "@ (1x3x16x16:float32)"
)


class Block(nn.Module):
    """conv-BN-ReLU, conv-BN, residual add, functional ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + x)


class Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(Block(), Block())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


def x16():
    return torch.randn(1, 3, 16, 16)


def expected_eager():
    return Counter(
        {
            STEM: 1,
            f"{CONV} @ ({MAP})": 4,
            f"{BN} @ ({MAP})": 4,
            f"ReLU(inplace=True) @ ({MAP})": 2,
            f"torch.Tensor.add({MAP}, {MAP})": 2,
            f"torch.relu({MAP})": 2,
            f"AdaptiveAvgPool2d(output_size=1) @ ({MAP})": 1,
            "torch.flatten(1x8x1x1:float32, 1)": 1,
            "Dropout(p=0.1, inplace=False) @ (1x8:float32)": 1,
            "Linear(in_features=8, out_features=4, bias=True) @ (1x8:float32)": 1,
        }
    )


def test_eager_kernels_are_every_module_and_function_call():
    kernels = LatencyTable("eager", cache=False).kernels(Net().eval(), x16())
    assert Counter(k.key for k in kernels) == expected_eager()
    assert [k.name for k in kernels[:4]] == [
        "stem",
        "blocks.0.conv1",
        "blocks.0.bn1",
        "blocks.0.relu",
    ]
    assert kernels[6].name == "blocks.0:add"  # a function, named by the module that called it
    assert {k.kind for k in kernels} == {"module", "function"}
    assert kernels[1].elements == 2 * 8 * 16 * 16
    assert kernels[1].params == 8 * 8 * 3 * 3 and kernels[2].params == 2 * 8 + 2 * 8 + 1


def test_onnxruntime_kernels_fuse_conv_bn_add_relu_and_drop_dropout():
    kernels = LatencyTable("onnxruntime", cache=False).kernels(Net().eval(), x16())
    keys = Counter(k.key for k in kernels)
    assert keys == Counter(
        {
            STEM: 1,  # its output feeds a conv and an add: nothing to fuse
            f"{CONV} > {BN} > ReLU(inplace=True) @ ({MAP})": 2,
            f"{CONV} > {BN} > torch.Tensor.add > torch.relu @ ({MAP})": 2,  # the residual Sum
            f"AdaptiveAvgPool2d(output_size=1) @ ({MAP})": 1,
            "torch.flatten(1x8x1x1:float32, 1)": 1,
            "Linear(in_features=8, out_features=4, bias=True) @ (1x8:float32)": 1,
        }
    )
    assert [k.kind for k in kernels[:3]] == ["module", "chain", "chain"]
    assert kernels[2].elements == 3 * 8 * 16 * 16  # the add's other operand is read too
    # convolutions and pooling timed alone pay ONNX Runtime's layout reorders
    assert [k.reordered for k in kernels] == [True] * 6 + [False, False]


class TwoConsumers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()

    def forward(self, x):
        c = self.conv(x)
        return self.act(self.bn(c)) + c  # the conv's output is used twice: no fusion


def test_no_fusion_when_an_intermediate_output_has_another_consumer():
    kernels = LatencyTable("onnxruntime", cache=False).kernels(TwoConsumers().eval(), x16())
    assert [k.kind for k in kernels] == ["module", "module", "module", "function"]
    assert kernels[0].key.startswith("Conv2d(3, 8, kernel_size=(1, 1)")
    assert not any(" > " in k.key for k in kernels)


class Twins(nn.Module):
    """The same weightless computation twice on one input, and two convolutions on it."""

    def __init__(self) -> None:
        super().__init__()
        self.pools = nn.ModuleList([nn.AvgPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1)])
        self.convs = nn.ModuleList([nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)])

    def forward(self, x):
        return self.pools[0](x) * self.pools[1](x) * self.convs[0](x) * self.convs[1](x)


def test_onnxruntime_computes_a_repeated_weightless_op_once():
    pool = "AvgPool2d(kernel_size=3, stride=1, padding=1) @ (1x3x16x16:float32)"
    eager = Counter(k.key for k in LatencyTable("eager", cache=False).kernels(Twins(), x16()))
    ort = Counter(k.key for k in LatencyTable("onnxruntime", cache=False).kernels(Twins(), x16()))
    assert eager[pool] == 2 and ort[pool] == 1  # common subexpression elimination
    conv = next(k for k in ort if k.startswith("Conv2d"))
    assert eager[conv] == ort[conv] == 2  # different weights: two computations


class SharedSum(nn.Module):
    """A residual sum read by two ReLUs (NAS-Bench-201 cells read a node this way)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
        self.relus = nn.ModuleList([nn.ReLU(), nn.ReLU()])
        self.convs = nn.ModuleList([nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)])

    def forward(self, x):
        s = self.bn(self.conv(x)) + x
        return self.convs[0](self.relus[0](s)) + self.convs[1](self.relus[1](s))


def test_onnxruntime_fuses_after_removing_common_subexpressions():
    eager = LatencyTable("eager", cache=False).kernels(SharedSum(), x16())
    assert [k.name for k in eager] == [
        "conv", "bn", "add", "relus.0", "convs.0", "relus.1", "convs.1", "add",
    ]  # fmt: skip
    ort = LatencyTable("onnxruntime", cache=False).kernels(SharedSum(), x16())
    assert [(k.name, k.key.split(" @ ")[0]) for k in ort] == [
        ("conv", f"{nn.Conv2d(3, 3, 1)} > BatchNorm2d({nn.BatchNorm2d(3).extra_repr()}) "
                 "> torch.Tensor.add > ReLU()"),  # one ReLU is left, the sum's only reader
        ("convs.0", f"{nn.Conv2d(3, 3, 1)} > torch.Tensor.add"),
        ("convs.1", f"{nn.Conv2d(3, 3, 1)}"),
    ]  # fmt: skip


class FakeTimer:
    """Times nothing: a made-up latency per key, and a count of the calls."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, kernel):
        self.keys.append(kernel.key)
        return 0.001 if kernel.key == "(empty)" else 0.01 + 0.001 * (len(kernel.key) % 13)


def test_cache_round_trip_reloads_every_entry_without_measuring(tmp_path):
    path = tmp_path / "table.json"
    timer = FakeTimer()
    first = LatencyTable("eager", threads=1, cache=path, timer=timer)
    p1 = first.predict(Net(), x16())
    unique = len(expected_eager())
    assert len(timer.keys) == unique + 1 == p1.measured_now  # each key once, plus (empty)
    assert len(set(timer.keys)) == len(timer.keys)
    again = first.predict(Net(), x16())
    assert again.measured_now == 0 and len(timer.keys) == unique + 1

    timer2 = FakeTimer()
    second = LatencyTable("eager", threads=1, cache=path, timer=timer2)
    p2 = second.predict(Net(), x16())
    assert timer2.keys == [] and p2.measured_now == 0
    assert second.entries == first.entries and len(second.entries) == unique + 1
    assert p2.ms == pytest.approx(p1.ms) and p2.raw_ms == p1.ms  # no correction: the raw sum
    data = json.loads(path.read_text())
    (section,) = data["tables"].values()
    assert section["key"]["threads"] == 1 and section["key"]["batch_size"] == 1


@pytest.mark.parametrize("change", ["threads", "torch"])
def test_a_file_for_other_settings_is_not_reused(tmp_path, monkeypatch, caplog, change):
    path = tmp_path / "table.json"
    LatencyTable("eager", threads=1, cache=path, timer=FakeTimer()).predict(Net(), x16())
    if change == "torch":
        monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    timer = FakeTimer()
    other = LatencyTable("eager", threads=2 if change == "threads" else 1, cache=path, timer=timer)
    with caplog.at_level(logging.WARNING, logger="torchslim.search._latency_table"):
        other.predict(Net(), x16())
    assert len(timer.keys) == len(expected_eager()) + 1  # everything measured again
    assert "not reused" in caplog.text and change in caplog.text
    tables = json.loads(path.read_text())["tables"]
    assert len(tables) == 2  # the other settings' measurements are kept, apart
    assert all(len(t["entries"]) == len(expected_eager()) + 1 for t in tables.values())


def test_batch_size_is_part_of_the_key():
    table = LatencyTable("eager", cache=False, timer=FakeTimer())
    table.predict(Net(), x16())
    with pytest.raises(ConfigError, match="batch size 1 .* batch size 2"):
        table.predict(Net(), torch.randn(2, 3, 16, 16))


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from torch import nn
    from torchslim.search import LatencyTable

    path, me, sizes = Path(sys.argv[1]), sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
    (path.parent / f"ready-{me}").touch()
    while len(list(path.parent.glob("ready-*"))) < 2:  # start together
        time.sleep(0.01)
    table = LatencyTable("eager", threads=1, cache=path, timer=lambda kernel: 0.01)
    for size in sizes:  # every predict adds one kernel and writes the file
        table.predict(nn.Conv2d(3, 4, 1), torch.zeros(1, 3, size, size))
    """
)


def test_concurrent_writers_lose_no_kernel(tmp_path):
    path = tmp_path / "shared.json"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    sizes = {"a": list(range(2, 42, 2)), "b": list(range(3, 43, 2))}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), me, ",".join(map(str, s))],
            stderr=subprocess.PIPE,
        )
        for me, s in sizes.items()
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    (section,) = json.loads(path.read_text())["tables"].values()
    want = {
        f"Conv2d(3, 4, kernel_size=(1, 1), stride=(1, 1)) @ (1x3x{s}x{s}:float32)"
        for ss in sizes.values()
        for s in ss
    }
    assert set(section["entries"]) == want | {"(empty)"}


def test_predict_without_measuring_names_the_missing_kernel():
    timer = FakeTimer()
    table = LatencyTable("eager", cache=False, timer=timer)
    table.predict(Net(), x16())
    calls = len(timer.keys)
    wider = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(8, 16, 1))
    with pytest.raises(ConfigError, match=r"Conv2d\(8, 16, kernel_size=\(1, 1\).* at '1'"):
        table.predict(wider, x16(), measure_missing=False)
    assert len(timer.keys) == calls  # nothing was timed
    known = table.predict(Net(), x16(), measure_missing=False)  # everything known: no error
    assert known.measured_now == 0


def synthetic(n: int, noise: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = [
        {
            "kernel_ms": rng.uniform(0.5, 10),
            "kernels": float(rng.integers(20, 300)),
            "reorder_m": rng.uniform(0.01, 2),
            "params_m": rng.uniform(0.1, 3),
            "const": 1.0,
        }
        for _ in range(n)
    ]
    y = [
        (0.8 * r["kernel_ms"] + 0.004 * r["kernels"] + 0.3) * (1 + rng.normal(0, noise))
        for r in rows
    ]
    return rows, y


def test_correction_recovers_known_coefficients():
    rows, y = synthetic(12)
    fit = LatencyCorrection.fit(rows, y, feature_sets=[("kernel_ms", "kernels", "const")])
    assert fit.coefficients == pytest.approx((0.8, 0.004, 0.3), rel=1e-6)
    auto = LatencyCorrection.fit(rows, y)  # the simplest exact subset wins leave-one-out
    assert auto.features == ("kernel_ms", "kernels", "const")
    assert auto.coefficients == pytest.approx((0.8, 0.004, 0.3), rel=1e-6)
    assert auto.loo_mape < 1e-9 and auto.models == 12
    assert LatencyCorrection.from_dict(json.loads(json.dumps(auto.to_dict()))) == auto
    noisy = LatencyCorrection.fit(
        *synthetic(40, noise=0.01, seed=1), feature_sets=[("kernel_ms", "kernels", "const")]
    )
    assert noisy.coefficients[0] == pytest.approx(0.8, rel=0.05)
    assert 0.005 < noisy.loo_mape < 0.02  # the 1% noise, not zero


def test_correction_must_rest_on_the_kernel_sum():
    rows, _ = synthetic(12)
    flat = [5.0 + 0.001 * i for i in range(12)]  # latencies that ignore the kernel sum
    with pytest.raises(ConfigError, match="kernel sum"):  # a constant would fit them best
        LatencyCorrection.fit(rows, flat, feature_sets=[("kernel_ms", "const")])
    fit = LatencyCorrection.fit(rows, flat)  # auto: a fit that still follows the kernels
    shares = [fit.coefficients[0] * r["kernel_ms"] / fit(r) for r in rows]
    assert np.mean(shares) >= 0.5


def test_correction_with_few_models_uses_few_features():
    rows, y = synthetic(3)
    fit = LatencyCorrection.fit(rows, y)
    assert len(fit.features) < 3
    with pytest.raises(ConfigError, match="feature rows"):
        LatencyCorrection.fit(rows, y[:2])


def test_real_eager_timing_and_automatic_calibration():
    table = LatencyTable(
        "eager", threads=1, cache=False, target_ms=1.0, rounds=2, runs=3, calibrate_first=2
    )
    first = table.predict(Net(), x16())
    assert first.measured_ms is not None and not first.corrected
    assert all(ms is not None and ms > 0 for ms in table.entries.values())
    second = table.predict(Net(), torch.randn(1, 3, 24, 24))
    assert table.correction is not None and table.correction.models == 2
    third = table.predict(Net(), x16())
    assert third.corrected and third.measured_ms is None and third.measured_now == 0
    assert float(third) == third.ms > 0 and second.measured_ms > 0


def test_real_onnxruntime_kernel_timing():
    pytest.importorskip("onnxruntime")
    table = LatencyTable("onnxruntime", threads=1, cache=False, target_ms=1.0, rounds=2, runs=3)
    pred = table.predict(Net(), x16())  # fused chains with a second input export and run
    assert pred.measured_now == 7  # (empty) and the six kernel configurations
    assert all(ms is not None and ms > 0 for ms in table.entries.values())
    assert table.measure(Net(), x16()).backend == "onnxruntime"


def test_top_level_export():
    assert ts.LatencyTable is LatencyTable
