"""The network's input layer: per-channel normalization whose statistics travel with the weights.

MATLAB computes the statistics of ``imageInputLayer`` from the training data when training
starts, one value per channel over every observation and voxel. Here they are buffers of
:class:`InputNormalization` (saved in ``state_dict``) and :func:`fit_normalization` computes
them from an iterable of batches, streaming, in float64.

Conventions:
    * ``std`` is the population standard deviation (divide by N, ``numpy.std``'s default);
      with millions of voxels per channel the sample version differs by a negligible factor.
    * A constant channel (``std == 0`` or ``max == min``) divides by 1 instead of 0, so it maps
      to 0 (zscore, rescale-zero-one) or -1 (rescale-symmetric) rather than NaN.
    * An unfitted layer uses mean 0, std 1, min 0, max 1 (zerocenter/zscore/rescale-zero-one
      are then the identity); ``fitted`` says whether :func:`fit_normalization` ran, and
      :meth:`InputNormalization.require_fitted` turns that into an error for inference code.

Example:
    >>> import torch
    >>> norm = InputNormalization("zscore", num_channels=1)
    >>> _ = fit_normalization(norm, [torch.tensor([1.0, 3.0]).reshape(1, 1, 2, 1, 1)])
    >>> norm.mean.item(), norm.std.item(), norm.is_fitted
    (2.0, 1.0, True)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from medres3d._checks import check_choice
from medres3d.errors import ConfigError, NormalizationNotFittedError
from medres3d.models.options import NORMALIZATIONS


class InputNormalization(nn.Module):
    """Per-channel input normalization (MATLAB's ``Normalization`` of the input layer).

    Modes: ``"zerocenter"`` x - mean; ``"zscore"`` (x - mean) / std; ``"rescale-symmetric"``
    [min, max] -> [-1, 1]; ``"rescale-zero-one"`` [min, max] -> [0, 1]; ``"none"``.
    Buffers ``mean``, ``std``, ``min``, ``max`` (shape ``(C,)``, float32) and ``fitted`` (bool).

    Example:
        >>> norm = InputNormalization("rescale-zero-one", num_channels=2)
        >>> norm.max.shape, norm.is_fitted
        (torch.Size([2]), False)
    """

    def __init__(self, mode: str = "zerocenter", num_channels: int = 1) -> None:
        super().__init__()
        check_choice("normalization", mode, NORMALIZATIONS)
        if not isinstance(num_channels, int) or isinstance(num_channels, bool) or num_channels < 1:
            raise ConfigError(f"num_channels must be a positive integer, got {num_channels!r}")
        self.mode = mode
        self.num_channels = num_channels
        self.register_buffer("mean", torch.zeros(num_channels))
        self.register_buffer("std", torch.ones(num_channels))
        self.register_buffer("min", torch.zeros(num_channels))
        self.register_buffer("max", torch.ones(num_channels))
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def require_fitted(self) -> None:
        """Raise :class:`~medres3d.errors.NormalizationNotFittedError` if needed statistics are unfitted."""
        if self.mode != "none" and not self.is_fitted:
            raise NormalizationNotFittedError(
                f"the input normalization {self.mode!r} has no statistics: call "
                "medres3d.fit_normalization(net, batches) on training data first (or build the "
                "network with normalization='none')"
            )

    @torch.no_grad()
    def set_statistics(self, *, mean: Any, std: Any, min: Any, max: Any) -> None:
        """Store per-channel statistics (any array-like of length C) and mark the layer fitted."""
        values = {}
        for name, value in (("mean", mean), ("std", std), ("min", min), ("max", max)):
            tensor = torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1)
            if tensor.numel() != self.num_channels:
                raise ConfigError(f"{name} must have {self.num_channels} values (one per channel), "
                                  f"got {tensor.numel()}")
            if not torch.isfinite(tensor).all():
                raise ConfigError(f"{name} must be finite, got {tensor.tolist()}")
            values[name] = tensor
        if (values["std"] < 0).any():
            raise ConfigError(f"std must be non-negative, got {values['std'].tolist()}")
        for name, tensor in values.items():
            getattr(self, name).copy_(tensor)
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if self.mode in ("zerocenter", "zscore"):
            x = x - self.mean.view(shape)
            if self.mode == "zerocenter":
                return x
            return x / torch.where(self.std > 0, self.std, 1.0).view(shape)
        span = self.max - self.min
        x = (x - self.min.view(shape)) / torch.where(span > 0, span, 1.0).view(shape)
        return x if self.mode == "rescale-zero-one" else 2.0 * x - 1.0

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, num_channels={self.num_channels}, fitted={self.is_fitted}"


class _RunningStats:
    """Per-channel count, mean, M2 (sum of squared deviations), min, max in float64.

    Batches merge with Chan et al.'s pairwise formula, which stays accurate where the
    sum-of-squares formula cancels catastrophically (CT values around -1000 HU).
    """

    def __init__(self, channels: int) -> None:
        self.count = torch.zeros((), dtype=torch.float64)
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.m2 = torch.zeros(channels, dtype=torch.float64)
        self.min = torch.full((channels,), float("inf"), dtype=torch.float64)
        self.max = torch.full((channels,), float("-inf"), dtype=torch.float64)

    def update(self, values: torch.Tensor) -> None:
        """``values``: (C, M) float64, M voxels of each channel."""
        n = values.shape[1]
        mean = values.mean(dim=1)
        m2 = ((values - mean[:, None]) ** 2).sum(dim=1)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total
        self.min = torch.minimum(self.min, values.amin(dim=1))
        self.max = torch.maximum(self.max, values.amax(dim=1))

    def all_reduce(self) -> None:
        """Combine the statistics of every rank (exact: global mean first, then deviations)."""
        import torch.distributed as dist

        # NCCL reduces CUDA tensors only; gloo and mpi reduce CPU tensors.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        sums = torch.cat([self.count.reshape(1), self.mean * self.count]).to(device)
        dist.all_reduce(sums)
        count, global_mean = sums[0], sums[1:] / sums[0]
        m2 = (self.m2.to(device) + self.count.to(device) * (self.mean.to(device) - global_mean) ** 2)
        low, high = self.min.to(device), self.max.to(device)
        dist.all_reduce(m2)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        self.count, self.mean, self.m2 = count.cpu(), global_mean.cpu(), m2.cpu()
        self.min, self.max = low.cpu(), high.cpu()


def _images(batch: Any) -> torch.Tensor:
    # DataLoaders often yield (images, labels) or dicts; the images come first / under "image".
    if isinstance(batch, dict):
        if "image" not in batch:
            raise ConfigError(f"a dict batch needs an 'image' entry, got keys {sorted(batch)}")
        batch = batch["image"]
    elif isinstance(batch, (tuple, list)):
        batch = batch[0]
    return torch.as_tensor(batch)


def fit_normalization(net: nn.Module, batches: Iterable[Any], *, distributed: bool = False
                      ) -> InputNormalization:
    """Fit the input layer's per-channel statistics from training batches, streaming.

    Args:
        net: a :class:`~medres3d.models.resnet3d.ResNet3D` (its ``input`` layer is fitted) or an
            :class:`InputNormalization`.
        batches: iterable of ``(N, C, H, W, D)`` tensors or arrays (or ``(images, ...)`` tuples,
            or dicts with an ``"image"`` entry, as DataLoaders yield them). Consumed once.
        distributed: when ``torch.distributed`` is initialized, combine the statistics of all
            ranks (each rank passes its own shard), so every rank ends with identical values.

    Returns:
        The fitted :class:`InputNormalization` (the same object as ``net.input``).

    Example:
        >>> import torch
        >>> net_input = InputNormalization("zerocenter", num_channels=1)
        >>> fit_normalization(net_input, [torch.full((2, 1, 4, 4, 4), 5.0)]).mean.item()
        5.0
    """
    layer = net if isinstance(net, InputNormalization) else getattr(net, "input", None)
    if not isinstance(layer, InputNormalization):
        raise ConfigError("fit_normalization needs a ResNet3D or an InputNormalization, got "
                          f"{type(net).__name__}")
    stats = _RunningStats(layer.num_channels)
    for index, batch in enumerate(batches):
        x = _images(batch)
        if x.ndim != 5 or x.shape[1] != layer.num_channels:
            raise ConfigError(f"batch {index} has shape {tuple(x.shape)}; expected (N, "
                              f"{layer.num_channels}, H, W, D)")
        values = x.detach().to("cpu", torch.float64).transpose(0, 1).reshape(layer.num_channels, -1)
        if values.shape[1] == 0:
            continue
        if not torch.isfinite(values).all():
            raise ConfigError(f"batch {index} contains NaN or infinite values; the statistics would be NaN")
        stats.update(values)
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            stats.all_reduce()
    if stats.count == 0:
        raise ConfigError("fit_normalization got no voxels: the batches iterable was empty")
    layer.set_statistics(mean=stats.mean, std=(stats.m2 / stats.count).sqrt(), min=stats.min, max=stats.max)
    return layer
