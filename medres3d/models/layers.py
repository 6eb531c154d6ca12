"""Layers with MATLAB semantics: TensorFlow-style "same" padding, zero-padded pooling, add, GAP.

MATLAB's (and TensorFlow's) ``"same"`` padding makes the output ``ceil(n / stride)`` long and
puts the odd voxel of padding *after* the data: a 7^3 stride-2 convolution on an even size pads
(2, 3), a 3^3 stride-2 pool pads (0, 1). PyTorch's symmetric padding gives the same sizes on a
shifted grid, so weights would not transfer. The padding depends on the input size, so it is
computed at every call (a few integer operations).

Example:
    >>> same_padding(224, kernel=7, stride=2)
    (2, 3)
    >>> same_padding(225, kernel=7, stride=2)
    (3, 3)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Pads = tuple[tuple[int, int], ...]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one axis for MATLAB/TensorFlow "same" padding.

    Output size ``ceil(size / stride)``; total padding
    ``max((ceil(size / stride) - 1) * stride + kernel - size, 0)``, the smaller half before.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _same_pads(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Pads:
    return tuple(same_padding(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride, strict=True))


def _zero_pad(x: torch.Tensor, pads: Pads) -> torch.Tensor:
    # F.pad lists the last axis first.
    flat = [p for before_after in reversed(pads) for p in before_after]
    return F.pad(x, flat) if any(flat) else x


def _triple(value: int | tuple[int, ...]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


class SameConv3d(nn.Conv3d):
    """``Conv3d`` without bias and with MATLAB "same" padding (MATLAB's conv biases are zero and frozen).

    Symmetric padding is left to the convolution itself (no copy); only the asymmetric case
    (even sizes with stride 2) pads the input explicitly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] = 1) -> None:
        super().__init__(in_channels, out_channels, _triple(kernel_size), stride=_triple(stride),
                         padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the bias is None except after BatchNorm folding (medres3d.inference.prepare_network)
        pads = _same_pads(x, self.kernel_size, self.stride)
        if all(before == after for before, after in pads):
            return F.conv3d(x, self.weight, self.bias, self.stride, tuple(p[0] for p in pads))
        return F.conv3d(_zero_pad(x, pads), self.weight, self.bias, self.stride)


class SameMaxPool3d(nn.MaxPool3d):
    """Max pooling with "same" zero padding (MATLAB pads with 0; after a ReLU that equals -inf)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__(_triple(kernel_size), _triple(stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _same_pads(x, self.kernel_size, self.stride)
        return F.max_pool3d(_zero_pad(x, pads), self.kernel_size, self.stride)


class SameAvgPool3d(nn.AvgPool3d):
    """Average pooling with "same" zero padding; padded zeros count in the mean, as in MATLAB."""

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__(_triple(kernel_size), _triple(stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _same_pads(x, self.kernel_size, self.stride)
        return F.avg_pool3d(_zero_pad(x, pads), self.kernel_size, self.stride)


class Add(nn.Module):
    """The residual addition as a module, so that it is a named layer (``..._add``) like in MATLAB."""

    def forward(self, main: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return main + shortcut


class GlobalAvgPool3d(nn.Module):
    """Global average pooling to ``(N, C)`` (MATLAB's ``1x1x1xC`` activation, flattened)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3, 4))
