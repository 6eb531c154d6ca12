"""Helpers of the inference tests: tiny real networks and model files."""

from __future__ import annotations

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


CLASS_NAMES = ["normal", "lesion"]


def make_model_file(path, *, fitted: bool = True, preprocessing=None, temperature: float | None = None,
                    seed: int = 0):
    """A tiny ResNet3D (input 16^3) with fitted zscore statistics, saved as a model file.

    ``temperature`` records a calibration as training does; ``seed`` gives other weights.
    """
    from medres3d.modelfile import save_model
    from medres3d.models.normalization import fit_normalization
    from medres3d.models.resnet3d import resnet3d

    torch.manual_seed(seed)
    net = resnet3d(
        (16, 16, 16), 2, initial_num_filters=4, num_filters=(4, 8), stack_depth=(1, 1), normalization="zscore"
    )
    if fitted:
        fit_normalization(net, [torch.randn(2, 1, 16, 16, 16) * 100.0 - 300.0])
    # non-trivial BatchNorm statistics so that the two classes get different probabilities
    for module in net.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    training = None if temperature is None else {
        "calibration": {"method": "temperature", "temperature": temperature}}
    return save_model(net, path, class_names=CLASS_NAMES, preprocessing=preprocessing, training=training)


class HangingScan:
    """A scan whose loading never ends, as a decoder stuck in a loop or a blocked read would."""

    def load(self):
        import time

        while True:
            time.sleep(60)


class DeadlyScan:
    """A scan whose loading kills the loading process outright, as a segfaulting decoder would."""

    def load(self):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class HangsOnFirstLoad:
    """A scan whose first load hangs and whose later loads work: a loader process gone bad, not a file.

    ``marker`` (a path that does not exist yet) records that the first attempt was made.
    """

    def __init__(self, path, marker) -> None:
        self.path = path
        self.marker = marker

    def load(self):
        import time
        from pathlib import Path

        from medres3d.io.readers import load_volume

        if not Path(self.marker).exists():
            Path(self.marker).touch()
            while True:
                time.sleep(60)
        return load_volume(self.path)
