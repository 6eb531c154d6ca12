"""Sliding-window classification of a volume larger (or smaller) than the network's input.

MONAI's ``sliding_window_inference`` stitches spatial outputs only; a classifier's ``(N, K)`` output
needs the windows' logits, not a stitched map. Here windows of exactly the input size are cut
lazily, a batch at a time, into one reused buffer (pinned and copied without blocking when the
volume is on the CPU and the network on a GPU), so memory does not grow with the number of windows;
the per-window logits are aggregated into one probability vector.

Example:
    >>> import torch
    >>> from medres3d.models.resnet3d import resnet3d
    >>> net = resnet3d((32, 32, 16), 2, initial_num_filters=4, num_filters=(4, 8), stack_depth=(1, 1))
    >>> result = sliding_window_classify(torch.zeros(1, 64, 48, 16), net, overlap=0.5)  # doctest: +SKIP
    >>> result.num_windows, tuple(result.probabilities.shape)                           # doctest: +SKIP
    (6, (2,))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from medres3d._checks import check_choice
from medres3d.errors import ConfigError, NetworkOutputError
from medres3d.inference.aggregation import AGGREGATIONS, aggregate_windows
from medres3d.inference.windows import WindowGrid, clip_box
from medres3d.runtime import autocast, resolve_device


@dataclass
class SlidingWindowResult:
    """What :func:`sliding_window_classify` returns (all tensors on the CPU, float32).

    Attributes:
        probabilities: (K,) the volume's class probabilities after aggregation. For ``"max"`` these
            are per-class maxima over windows and need not sum to 1; the other aggregations sum to 1.
        window_probabilities: (W, K) softmax of each window's logits.
        window_logits: (W, K) each window's logits.
        window_boxes: (W, S, 2) int64 ``[start, stop)`` voxel range of each window per spatial axis,
            in the input tensor's index space (negative start / stop past the end: padding).
        window_weights: (W,) fraction of each window's voxels that differ from the background value,
            or None when foreground weighting was not asked for.
        grid: the window geometry.
        aggregate: the aggregation used.
        warnings: human-readable notes (e.g. a fallback to uniform weights).
    """

    probabilities: torch.Tensor
    window_probabilities: torch.Tensor
    window_logits: torch.Tensor
    window_boxes: torch.Tensor
    window_weights: torch.Tensor | None
    grid: WindowGrid
    aggregate: str
    warnings: list[str] = field(default_factory=list)

    @property
    def num_windows(self) -> int:
        """Number of windows the network saw."""
        return int(self.window_logits.shape[0])

    @property
    def label_index(self) -> int:
        """Index of the most probable class."""
        return int(torch.argmax(self.probabilities))


def _network_device(net: nn.Module) -> torch.device:
    for tensor in net.parameters():
        return tensor.device
    for tensor in net.buffers():
        return tensor.device
    return torch.device("cpu")


def _check_inputs(tensor: torch.Tensor, net: nn.Module, window: tuple[int, ...]) -> None:
    if tensor.ndim != len(window) + 1:
        raise ConfigError(
            f"tensor must be (C, {', '.join('S' * len(window))}) for a {len(window)}-D window, "
            f"got shape {tuple(tensor.shape)}"
        )
    in_channels = getattr(net, "in_channels", None)
    if in_channels is not None and tensor.shape[0] != in_channels:
        raise ConfigError(f"tensor has {tensor.shape[0]} channels but the network expects {in_channels}")


def window_batches(
    volume: torch.Tensor,
    grid: WindowGrid,
    batch_size: int,
    background_value: float,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """Yield batches of windows on ``device``, in ``grid.boxes()`` order, cut lazily into reused buffers.

    Only the buffers (two when staging through pinned memory, else one) and the volume itself are
    ever held, whatever the number of windows; a batch is valid until the next one is asked for.
    The part of a window outside the volume is ``background_value``.

    Example:
        >>> grid = WindowGrid.create((20, 8, 8), (16, 8, 8), 0.5)
        >>> batches = window_batches(torch.zeros(1, 20, 8, 8), grid, 8, 0.0, torch.device("cpu"))
        >>> [tuple(batch.shape) for batch in batches]
        [(2, 1, 16, 8, 8)]
    """
    shape = (batch_size, volume.shape[0], *grid.window_size)
    staged = volume.device.type == "cpu" and device.type == "cuda"
    if staged:
        # two pinned buffers: one is filled while the other's non-blocking copy is in flight
        buffers = [torch.empty(shape, dtype=volume.dtype).pin_memory() for _ in range(2)]
        copied: list[torch.cuda.Event | None] = [None, None]
    else:
        buffers = [torch.empty(shape, dtype=volume.dtype, device=volume.device)]
    boxes = grid.boxes()
    turn = 0
    while True:
        buffer = buffers[turn % len(buffers)]
        if staged and copied[turn % 2] is not None:
            copied[turn % 2].synchronize()
        count = 0
        for box in boxes:
            source, target = clip_box(box, grid.image_size)
            if grid.needs_padding:
                buffer[count].fill_(background_value)
            buffer[count][(slice(None), *target)].copy_(volume[(slice(None), *source)])
            count += 1
            if count == batch_size:
                break
        if count == 0:
            return
        if staged:
            batch = buffer[:count].to(device, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            copied[turn % 2] = event
        else:
            batch = buffer[:count]
        yield batch
        turn += 1


def sliding_window_classify(
    tensor: torch.Tensor | np.ndarray,
    net: nn.Module,
    *,
    window_size: Sequence[int] | None = None,
    overlap: float | Sequence[float] = 0.5,
    batch_size: int = 8,
    aggregate: str = "mean",
    negative_class: int = 0,
    weight_by_foreground: bool = False,
    background_value: float = 0.0,
    device: str | torch.device | None = None,
    amp: bool | str | None = None,
    channels_last: bool = False,
) -> SlidingWindowResult:
    """Classify a preprocessed volume with windows of the network's input size.

    Args:
        tensor: (C, H, W, D) preprocessed volume (torch tensor or numpy array).
        net: a classifier mapping (N, C, *window_size) to (N, K) logits; run in eval mode under
            ``torch.inference_mode`` (its training flag is restored afterwards).
        window_size: spatial window size; default ``net.spatial_size``.
        overlap: fraction of a window shared with its neighbour, in [0, 1), one or per axis.
        batch_size: windows per forward pass.
        aggregate: ``"mean"`` | ``"max"`` | ``"logit-mean"`` | ``"any"`` (see
            :func:`~medres3d.inference.aggregation.aggregate_windows`).
        negative_class: index of the negative class for ``aggregate="any"``.
        weight_by_foreground: weight windows by their fraction of voxels != ``background_value``.
        background_value: value of padding where the volume is smaller than the window (the
            preprocessing's background after intensity scaling), and of "background" for weighting.
        device: where the network runs; default the network's device (the network is moved there).
        amp: autocast: None (bf16/fp16 on CUDA, off on CPU), True, False, ``"bf16"`` or ``"fp16"``.
        channels_last: run convolutions in channels-last-3d memory format (often faster on GPUs).

    Returns:
        A :class:`SlidingWindowResult`. A volume of exactly the window size gives one window whose
        probabilities equal ``softmax(net(tensor[None]))``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(1, 2))
        >>> r = sliding_window_classify(torch.rand(1, 20, 20, 8), net, window_size=(16, 16, 8))
        >>> r.num_windows, r.window_boxes[-1].tolist()
        (4, [[4, 20], [4, 20], [0, 8]])
    """
    if isinstance(tensor, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(tensor))
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(f"tensor must be a torch.Tensor or numpy array, got {type(tensor).__name__}")
    if window_size is None:
        window_size = getattr(net, "spatial_size", None)
        if window_size is None:
            raise ConfigError("window_size is required for a network without a `spatial_size` attribute")
    window = tuple(int(s) for s in window_size)
    _check_inputs(tensor, net, window)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_choice("aggregate", aggregate, AGGREGATIONS)
    target = resolve_device(device) if device is not None else _network_device(net)
    if _network_device(net) != target:
        net.to(target)
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if not (tensor.device.type == "cpu" and target.type == "cuda"):
        tensor = tensor.to(target)
    grid = WindowGrid.create(tuple(tensor.shape[1:]), window, overlap)
    batch_size = min(batch_size, grid.num_windows)
    precision = autocast(amp, target)
    memory_format = torch.channels_last_3d if channels_last and len(window) == 3 else None

    was_training = net.training
    net.eval()
    logits_parts: list[torch.Tensor] = []
    weight_parts: list[torch.Tensor] = []
    try:
        with torch.inference_mode(), precision:
            for batch in window_batches(tensor, grid, batch_size, background_value, target):
                if weight_by_foreground:
                    weight_parts.append((batch != background_value).flatten(1).float().mean(dim=1))
                if memory_format is not None:
                    batch = batch.contiguous(memory_format=memory_format)
                logits = net(batch)
                if logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
                    raise NetworkOutputError(
                        f"the network must return (N, K) logits, got shape {tuple(logits.shape)} "
                        f"for a batch of {batch.shape[0]}"
                    )
                # keep results on the device: one transfer at the end instead of a sync per batch
                logits_parts.append(logits.float())
    finally:
        net.train(was_training)

    window_logits = torch.cat(logits_parts).cpu()
    weights = torch.cat(weight_parts).cpu() if weight_by_foreground else None
    probabilities, warnings = aggregate_windows(
        window_logits, aggregate, weights, negative_class=negative_class
    )
    boxes = torch.tensor(list(grid.boxes()), dtype=torch.int64).reshape(grid.num_windows, len(window), 2)
    return SlidingWindowResult(
        probabilities=probabilities,
        window_probabilities=torch.softmax(window_logits, dim=-1),
        window_logits=window_logits,
        window_boxes=boxes,
        window_weights=weights,
        grid=grid,
        aggregate=aggregate,
        warnings=warnings,
    )
