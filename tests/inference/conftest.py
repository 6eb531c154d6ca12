"""Fixtures of the inference tests: tiny real networks and volumes."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyConvNet(nn.Module):
    """A small real 3D classifier (conv, pooling, linear) with the attributes ResNet3D exposes."""

    def __init__(self, spatial_size=(8, 8, 8), in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        self.spatial_size = tuple(spatial_size)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.conv = nn.Conv3d(in_channels, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.fixture
def tiny_net() -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet()
