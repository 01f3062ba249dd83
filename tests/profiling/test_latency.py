"""Latency: statistics, the timing loop, thread pinning and the backend registry."""

import time

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim._inputs import as_inputs
from torchslim.errors import ConfigError
from torchslim.profiling import (
    Latency,
    LatencyBackend,
    _latency,
    measure_latency,
    register_latency_backend,
)


def test_statistics_of_known_samples():
    lat = Latency.from_samples(
        [float(x) for x in range(1, 11)],
        runs=10,
        warmup=0,
        threads=1,
        backend="eager",
        device="cpu",
        batch_size=4,
    )
    assert lat.median_ms == 5.5
    assert lat.mean_ms == 5.5
    assert (lat.min_ms, lat.max_ms) == (1.0, 10.0)
    assert lat.p90_ms == pytest.approx(9.1)  # linear interpolation, inclusive method
    assert lat.iqr_ms == pytest.approx(7.75 - 3.25)
    assert lat.throughput == pytest.approx(4 * 1000 / 5.5)
    assert Latency.from_dict(lat.to_dict()) == lat


class CountingBackend(LatencyBackend):
    def __init__(self):
        self.calls = 0
        self.threads_seen = set()

    def prepare(self, model, inputs, device, threads):
        def run():
            self.calls += 1
            self.threads_seen.add(torch.get_num_threads())
            return inputs.call(model)

        return run


def test_loop_runs_warmup_plus_runs_with_pinned_threads_and_restores_them():
    backend = CountingBackend()
    before = torch.get_num_threads()
    lat = measure_latency(
        nn.Linear(4, 4), as_inputs(torch.randn(2, 4)), backend=backend, threads=1, warmup=3, runs=7
    )
    assert backend.calls == 10
    assert backend.threads_seen == {1}
    assert torch.get_num_threads() == before
    assert (lat.runs, lat.warmup, lat.threads, lat.batch_size) == (7, 3, 1, 2)
    assert len(lat.samples_ms) == 7


def test_warm_up_runs_on_until_the_settle_time_has_passed():
    calls = []
    start = time.perf_counter()
    done = _latency.warm_up(lambda: calls.append(time.sleep(0.002)), 2, settle_ms=30.0)
    elapsed = (time.perf_counter() - start) * 1000.0
    assert done == len(calls) >= 2
    assert elapsed >= 30.0 and done >= 30.0 / 2.0 / 2  # ran on after the 2 warm-up runs
    assert _latency.warm_up(lambda: calls.append(None), 3) == 3  # no settle time: the runs alone


class SettlingBackend(CountingBackend):
    settle_ms = 25.0


def test_loop_settles_for_the_backends_settle_time_unless_told_otherwise():
    model, inputs = Sleeper(), as_inputs(torch.zeros(1))  # 5 ms a call
    backend = SettlingBackend()
    measure_latency(model, inputs, backend=backend, warmup=1, runs=2)
    assert backend.calls >= 5 + 2  # 25 ms of warm-up at 5 ms a call, then the 2 runs
    backend.calls = 0
    measure_latency(model, inputs, backend=backend, warmup=1, runs=2, settle_ms=0.0)
    assert backend.calls == 3
    from torchslim.export import OnnxRuntimeBackend

    assert OnnxRuntimeBackend.settle_ms >= 30.0  # its sessions' workers spin for ~30 ms


class Sleeper(nn.Module):
    def forward(self, x):
        time.sleep(0.005)
        return x


def test_measured_time_covers_the_work():
    lat = measure_latency(Sleeper(), as_inputs(torch.zeros(1)), warmup=1, runs=5)
    assert lat.min_ms >= 5.0
    assert lat.backend == "eager" and lat.device == "cpu"


def test_eager_runs_under_inference_mode():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.is_inference_mode_enabled())
            return x

    measure_latency(Probe(), as_inputs(torch.zeros(1)), warmup=1, runs=2)
    assert seen == [True, True, True]


def test_registry_rejects_unknown_names_and_lists_known_ones():
    with pytest.raises(ConfigError, match="known backends: .*eager"):
        measure_latency(nn.Identity(), as_inputs(torch.zeros(1)), backend="nope")
    assert {"eager", "compile"} <= set(ts.list_latency_backends())


def test_register_a_backend_by_name():
    @register_latency_backend("test-double")
    class Double(CountingBackend):
        pass

    try:
        lat = measure_latency(
            nn.Identity(), as_inputs(torch.zeros(1)), backend="test-double", runs=2
        )
        assert lat.backend == "test-double"
        with pytest.raises(ConfigError, match="already registered"):
            register_latency_backend("test-double")(CountingBackend)
    finally:
        del _latency._BACKENDS["test-double"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runs": 0}, "runs must be >= 1"),
        ({"warmup": -1}, "warmup must be >= 0"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"device": "meta"}, "meta device"),
    ],
)
def test_bad_options_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        measure_latency(nn.Identity(), as_inputs(torch.zeros(1)), **kwargs)


@pytest.mark.slow
def test_compile_backend_measures_compiled_model():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
    lat = measure_latency(model, as_inputs(torch.randn(4, 16)), backend="compile", warmup=1, runs=3)
    assert lat.backend == "compile" and lat.runs == 3
