"""The two residual blocks of MATLAB's ``resnet3dLayers``.

Child module names are MATLAB's layer-name suffixes (``conv1``, ``bn1``, ``relu1``, ...,
``add``, ``skip_conv``, ``skip_bn``), so ``stack2.block1.skip_conv`` is MATLAB's
``stack2_block1_skip_conv``.

Example:
    >>> block = BottleneckBlock(64, 64, stride=1)   # projection shortcut: 64 -> 256 channels
    >>> block.out_channels, hasattr(block, "skip_conv")
    (256, True)
"""

from __future__ import annotations

import torch
from torch import nn

from medres3d.models.layers import Add, SameConv3d


class _ResidualBlock(nn.Module):
    """Shared shortcut logic; subclasses build the main branch and call :meth:`_finish`."""

    expansion = 1

    def __init__(self, in_channels: int, filters: int, stride: int, bn_after_add: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = filters * self.expansion
        self.bn_after_add = bn_after_add
        self._needs_projection = stride != 1 or in_channels != self.out_channels

    def _add_shortcut(self, stride: int) -> None:
        # MATLAB's projection: 1x1x1 conv (+ BN unless the BN sits after the addition).
        if self._needs_projection:
            self.skip_conv = SameConv3d(self.in_channels, self.out_channels, 1, stride)
            if not self.bn_after_add:
                self.skip_bn = nn.BatchNorm3d(self.out_channels)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self._needs_projection:
            return x
        x = self.skip_conv(x)
        return x if self.bn_after_add else self.skip_bn(x)

    def _finish(self, main: torch.Tensor, x: torch.Tensor, last_bn: nn.Module, relu: nn.Module
                ) -> torch.Tensor:
        if self.bn_after_add:
            return relu(last_bn(self.add(main, self._shortcut(x))))
        return relu(self.add(last_bn(main), self._shortcut(x)))


class BottleneckBlock(_ResidualBlock):
    """1x1x1 (stride here: "downsample-first-conv") -> 3x3x3 -> 1x1x1 with 4x filters, plus shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, filters: int, stride: int = 1, bn_after_add: bool = False) -> None:
        super().__init__(in_channels, filters, stride, bn_after_add)
        self.conv1 = SameConv3d(in_channels, filters, 1, stride)
        self.bn1 = nn.BatchNorm3d(filters)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = SameConv3d(filters, filters, 3)
        self.bn2 = nn.BatchNorm3d(filters)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = SameConv3d(filters, self.out_channels, 1)
        # Before or after the addition, MATLAB calls this BN bn3.
        self.bn3 = nn.BatchNorm3d(self.out_channels)
        self.add = Add()
        self.relu3 = nn.ReLU(inplace=True)
        self._add_shortcut(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        return self._finish(self.conv3(y), x, self.bn3, self.relu3)


class BasicBlock(_ResidualBlock):
    """Two 3x3x3 convolutions (stride in the first), plus shortcut (BottleneckType "none")."""

    expansion = 1

    def __init__(self, in_channels: int, filters: int, stride: int = 1, bn_after_add: bool = False) -> None:
        super().__init__(in_channels, filters, stride, bn_after_add)
        self.conv1 = SameConv3d(in_channels, filters, 3, stride)
        self.bn1 = nn.BatchNorm3d(filters)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = SameConv3d(filters, filters, 3)
        self.bn2 = nn.BatchNorm3d(filters)
        self.add = Add()
        self.relu2 = nn.ReLU(inplace=True)
        self._add_shortcut(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        return self._finish(self.conv2(y), x, self.bn2, self.relu2)
