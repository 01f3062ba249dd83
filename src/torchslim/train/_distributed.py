"""What fine-tuning needs from ``torch.distributed``: rank, sharded loaders, summed metrics.

Everything here is a no-op in a single process. Under ``torchrun`` (a process group initialised),
a plain :class:`~torch.utils.data.DataLoader` is re-built over a
:class:`~torch.utils.data.DistributedSampler` so each process sees its own share, metrics are
summed over processes, and small JSON records (random-number states) are gathered as bytes, never
pickled.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

from torchslim.errors import ConfigError

__all__ = [
    "active",
    "rank",
    "world_size",
    "init_from_env",
    "barrier",
    "shard_train",
    "shard_eval",
    "sync_buffers",
    "all_sum",
    "gather_json",
]

_logger = logging.getLogger(__name__)


def active() -> bool:
    """Whether a process group is initialised (we run under ``torchrun`` or similar)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def init_from_env() -> torch.device | None:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the
    environment) and none is initialised yet: NCCL with one GPU per process (``LOCAL_RANK``)
    when CUDA is available, else gloo. Returns this process's GPU, or ``None``."""
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
        return device
    dist.init_process_group("gloo")
    return None


def barrier() -> None:
    if active():
        dist.barrier()


def _comm_device() -> torch.device:
    """NCCL reduces CUDA tensors only; every other backend takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _sampler_of(loader: DataLoader) -> Any:
    batch_sampler = getattr(loader, "batch_sampler", None)
    return getattr(batch_sampler, "sampler", None) or loader.sampler


def _rebuild(loader: DataLoader, sampler: Any) -> DataLoader:
    """The same loader over another sampler (batch size, collation and workers kept)."""
    workers = loader.num_workers
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers else None,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if workers else None,
        persistent_workers=loader.persistent_workers if workers else False,
    )


def _shardable(loader: Any, what: str) -> bool:
    if not active() or not isinstance(loader, DataLoader):
        return False  # other iterables must yield this process's share themselves
    if isinstance(_sampler_of(loader), DistributedSampler) or isinstance(
        loader.dataset, IterableDataset
    ):
        return False
    if loader.batch_size is None:
        raise ConfigError(
            f"the {what} loader has a custom batch_sampler, which finetune cannot shard over "
            f"{world_size()} processes; give it a torch.utils.data.DistributedSampler yourself"
        )
    return True


def shard_train(loader: Any) -> Any:
    """Under ``torch.distributed``, a DataLoader re-built over a DistributedSampler.

    The sampler shuffles when the original one did (a ``RandomSampler``), with seed 0 and
    ``set_epoch`` called every epoch; the batch size stays per process. Loaders that already use a
    DistributedSampler, iterable datasets and other iterables are returned unchanged.
    """
    if not _shardable(loader, "training"):
        return loader
    shuffle = isinstance(_sampler_of(loader), RandomSampler)
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=world_size(),
        rank=rank(),
        shuffle=shuffle,
        drop_last=loader.drop_last,
    )
    _logger.debug("sharded the training loader over %d processes", world_size())
    return _rebuild(loader, sampler)


def shard_eval(loader: Any) -> Any:
    """Under ``torch.distributed``, a DataLoader over every ``world_size``-th sample (no padding,
    so summed metrics count each sample once)."""
    if not _shardable(loader, "evaluation"):
        return loader
    return _rebuild(loader, range(rank(), len(loader.dataset), world_size()))


def sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm statistics) to every process, as DDP does before each
    forward, so that evaluation and checkpoints see the same model everywhere."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def all_sum(values: list[float]) -> list[float]:
    """``values`` summed over all processes (float64), or unchanged in a single process."""
    if not active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def gather_json(record: Any) -> list[Any]:
    """Every process's JSON-serialisable ``record``, in rank order (sent as UTF-8 bytes)."""
    if not active():
        return [record]
    device = _comm_device()
    data = torch.tensor(list(json.dumps(record).encode()), dtype=torch.uint8, device=device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=device))
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    parts = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in sizes]
    dist.all_gather(parts, padded)
    return [
        json.loads(p[: int(s.item())].cpu().numpy().tobytes().decode())
        for p, s in zip(parts, sizes, strict=True)
    ]
