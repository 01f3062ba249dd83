"""Profiling: params, MACs, latency and memory, per layer, with pluggable latency backends."""

from torchslim.profiling._counting import LayerProfile, count_macs, count_params
from torchslim.profiling._latency import (
    Latency,
    LatencyBackend,
    get_latency_backend,
    list_latency_backends,
    measure_latency,
    pinned_threads,
    register_latency_backend,
    warm_up,
)
from torchslim.profiling._memory import Memory, measure_memory
from torchslim.profiling._profile import Profile, human, profile

__all__ = [
    "Latency",
    "LatencyBackend",
    "LayerProfile",
    "Memory",
    "Profile",
    "count_macs",
    "count_params",
    "get_latency_backend",
    "human",
    "list_latency_backends",
    "measure_latency",
    "measure_memory",
    "pinned_threads",
    "profile",
    "register_latency_backend",
    "warm_up",
]
