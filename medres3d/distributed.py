"""Process-group plumbing for data-parallel training under ``torchrun``.

``torchrun --nproc_per_node N`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set; :func:`setup` turns them into an initialized process group (NCCL on CUDA,
gloo on CPU) and the device this process uses. Without those variables it is a single process
and every helper here is a no-op, so the trainer has one code path.

Example:
    >>> ctx = setup("cpu")          # a plain single process
    >>> ctx.world_size, ctx.is_main
    (1, True)
    >>> all_gather(ctx, {"rank": ctx.rank})
    [{'rank': 0}]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from medres3d.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ConfigError(f"environment variable {name} must be an integer, got {value!r}") from err


def setup(device: str = "auto") -> DistContext:
    """Pick the device and, under ``torchrun``, join the process group.

    Args:
        device: "auto" (CUDA when available), "cpu" or "cuda".

    Example:
        >>> setup("cpu").device
        device(type='cpu')
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but CUDA is not available; use 'auto' or 'cpu'")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world_size > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistContext(rank, world_size, local_rank, target)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.enabled:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.local_rank])
        else:
            dist.barrier()


def teardown(ctx: DistContext, wait: bool = True) -> None:
    """Leave the process group, after waiting for every rank unless ``wait`` is False (on errors)."""
    if ctx.enabled and dist.is_initialized():
        if wait:
            barrier(ctx)
        dist.destroy_process_group()


def all_gather(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable Python data between our own ranks), in rank order."""
    if not ctx.enabled:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over ranks (the tensor is returned, reduced in place when possible)."""
    if not ctx.enabled:
        return values
    on_device = values.to(ctx.device)
    dist.all_reduce(on_device)
    return on_device.to(values.device)
