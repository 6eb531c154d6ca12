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


def _add_projection(block: nn.Module, stride: int) -> None:
    """MATLAB's projection shortcut: a 1x1x1 convolution, and its BN unless the BN sits after the add."""
    block.skip_conv = SameConv3d(block.in_channels, block.out_channels, 1, stride)
    if not block.bn_after_add:
        block.skip_bn = nn.BatchNorm3d(block.out_channels)


def _projected(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = block.skip_conv(x)
    return y if block.bn_after_add else block.skip_bn(y)


class BottleneckBlock(nn.Module):
    """1x1x1 (stride here: "downsample-first-conv") -> 3x3x3 -> 1x1x1 with 4x filters, plus shortcut.

    The shortcut is the identity, or MATLAB's projection (a 1x1x1 convolution ``skip_conv``, and
    ``skip_bn`` unless the BatchNorm sits after the addition) when the stride or width changes.
    """

    expansion = 4

    def __init__(self, in_channels: int, filters: int, stride: int = 1, bn_after_add: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = filters * self.expansion
        self.bn_after_add = bn_after_add
        self.projected = stride != 1 or in_channels != self.out_channels
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
        if self.projected:
            _add_projection(self, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.conv3(y)
        shortcut = _projected(self, x) if self.projected else x
        if self.bn_after_add:
            return self.relu3(self.bn3(self.add(y, shortcut)))
        return self.relu3(self.add(self.bn3(y), shortcut))


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions (stride in the first), plus shortcut (BottleneckType "none").

    The shortcut is as in :class:`BottleneckBlock`.
    """

    expansion = 1

    def __init__(self, in_channels: int, filters: int, stride: int = 1, bn_after_add: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = filters * self.expansion
        self.bn_after_add = bn_after_add
        self.projected = stride != 1 or in_channels != self.out_channels
        self.conv1 = SameConv3d(in_channels, filters, 3, stride)
        self.bn1 = nn.BatchNorm3d(filters)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = SameConv3d(filters, filters, 3)
        self.bn2 = nn.BatchNorm3d(filters)
        self.add = Add()
        self.relu2 = nn.ReLU(inplace=True)
        if self.projected:
            _add_projection(self, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.conv2(y)
        shortcut = _projected(self, x) if self.projected else x
        if self.bn_after_add:
            return self.relu2(self.bn2(self.add(y, shortcut)))
        return self.relu2(self.add(self.bn2(y), shortcut))
