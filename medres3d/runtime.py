"""Where and how a process computes: its device, its autocast precision, its place under torchrun.

One rule for each, shared by training, inference and the command line:

* :func:`resolve_device`: ``"auto"`` (the first CUDA device if any, else the CPU), ``"cpu"``,
  ``"cuda"`` or ``"cuda:K"``; a device that is not there is a :class:`~medres3d.errors.DeviceError`.
* :func:`autocast_dtype` / :func:`autocast`: ``amp`` None (bf16, else fp16, on CUDA; off on the
  CPU), True, False, ``"none"``, ``"bf16"`` or ``"fp16"``.
* :func:`process_place`: ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as ``torchrun`` sets them,
  checked; :func:`join_process_group` joins the group they describe.

Example:
    >>> resolve_device("cpu"), autocast_dtype("bf16", resolve_device("cpu"))
    (device(type='cpu'), torch.bfloat16)
    >>> process_place({"RANK": "1", "WORLD_SIZE": "2"})
    ProcessPlace(rank=1, world_size=2, local_rank=0)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from medres3d.errors import ConfigError, DeviceError

_DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:K'"
_AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
               "float16": torch.float16}  # fmt: skip


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> the first CUDA device if there is one, else the CPU; checks ``"cuda[:K]"`` exists.

    Raises:
        ConfigError: not a device name.
        DeviceError: a CUDA device was asked for but is not there.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device must be {_DEVICE_CHOICES}, got {device!r}") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} was asked for but CUDA is not available; use 'cpu' or "
                              "'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif resolved.type != "cpu":
        raise ConfigError(f"device must be {_DEVICE_CHOICES}, got {device!r}")
    return resolved


def autocast_dtype(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device`` (None: no autocast).

    None means on (bf16, or fp16 on a GPU without bf16) on CUDA and off on the CPU; fp16 needs CUDA.

    Example:
        >>> autocast_dtype(None, torch.device("cpu")) is None, autocast_dtype(True, torch.device("cpu"))
        (True, torch.bfloat16)
    """
    if amp is None:
        amp = device.type == "cuda"
    if amp is False or amp == "none":
        return None
    if amp is True:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if isinstance(amp, str) and amp in _AMP_DTYPES:
        dtype = _AMP_DTYPES[amp]
        if dtype == torch.float16 and device.type != "cuda":
            raise ConfigError(f"amp {amp!r} needs CUDA; use 'bf16' or 'none' on the CPU")
        return dtype
    raise ConfigError(f"amp must be None, True, False, 'none', 'bf16' or 'fp16', got {amp!r}")


def autocast(amp: bool | str | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` with :func:`autocast_dtype`'s choice, or a no-op context.

    Example:
        >>> with autocast("bf16", torch.device("cpu")):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    dtype = autocast_dtype(amp, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class ProcessPlace:
    """This process's place under ``torchrun`` (rank 0 of 1 without it)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        """True when several processes work together."""
        return self.world_size > 1


def process_place(environ: Mapping[str, str] | None = None) -> ProcessPlace:
    """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment (as torchrun sets them), checked.

    Raises:
        ConfigError: a variable that is not an integer, or a rank outside the world.

    Example:
        >>> process_place({})
        ProcessPlace(rank=0, world_size=1, local_rank=0)
    """
    env = os.environ if environ is None else environ

    def number(name: str, default: int) -> int:
        value = env.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError as err:
            raise ConfigError(f"environment variable {name} must be an integer, got {value!r}") from err

    place = ProcessPlace(number("RANK", 0), number("WORLD_SIZE", 1), number("LOCAL_RANK", 0))
    if place.world_size < 1 or not 0 <= place.rank < place.world_size:
        raise ConfigError(f"RANK={place.rank} and WORLD_SIZE={place.world_size} are inconsistent")
    return place


def join_process_group(backend: str, timeout: timedelta) -> None:
    """Join the torchrun process group (``backend`` "nccl" or "gloo"), unless already joined.

    Example:
        >>> join_process_group("gloo", timedelta(minutes=30))   # doctest: +SKIP
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
