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

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from medres3d.runtime import join_process_group, process_place, resolve_device


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # setup() joined the group here, so teardown() leaves it

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints."""
        return self.rank == 0


def setup(device: str = "auto") -> DistContext:
    """Pick the device (:func:`medres3d.runtime.resolve_device`) and, under ``torchrun``, join the group.

    Under torchrun with CUDA each rank uses ``cuda:LOCAL_RANK`` (NCCL); on the CPU, gloo.

    Args:
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:K".

    Example:
        >>> setup("cpu").device
        device(type='cpu')
    """
    target = resolve_device(device)
    place = process_place()
    if place.distributed and target.type == "cuda":
        target = torch.device("cuda", place.local_rank)
    owns_group = place.distributed and not dist.is_initialized()
    if owns_group:
        if target.type == "cuda":
            torch.cuda.set_device(place.local_rank)
        join_process_group("nccl" if target.type == "cuda" else "gloo", timedelta(minutes=30))
    return DistContext(place.rank, place.world_size, place.local_rank, target, owns_group)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.enabled:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.local_rank])
        else:
            dist.barrier()


def teardown(ctx: DistContext, wait: bool = True) -> None:
    """Wait for every rank unless ``wait`` is False (on errors), then leave the group if ``ctx`` joined it.

    A group joined by an outer :func:`setup` (cross-validation's, around every fold's Trainer)
    stays for the next fold: with the default group destroyed and re-created between folds, a
    rank that finished predicting a fold later than the other hung for good in gloo's
    ``connectFullMesh`` of the new group (seen under CPU load in
    tests/training/test_distributed.py; the re-created group reuses the old one's rendezvous keys).

    Example:
        >>> teardown(setup("cpu"))   # a plain single process: nothing to do
    """
    if ctx.enabled and dist.is_initialized():
        if wait:
            barrier(ctx)
        if ctx.owns_group:
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
