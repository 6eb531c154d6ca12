"""Helpers of the model tests: tiny networks (real compute) and full-size ones on meta."""

from __future__ import annotations

import torch

from medres3d.models.resnet3d import ResNet3D, resnet3d

# Small enough for a forward pass in milliseconds on a shared 2-core CPU.
TINY = {"initial_num_filters": 4, "stack_depth": (1, 1), "num_filters": (4, 8)}


def tiny(input_size=(32, 32, 32), num_classes: int = 3, **options) -> ResNet3D:
    torch.manual_seed(0)
    return resnet3d(input_size, num_classes, **{**TINY, **options})


def on_meta(input_size=(224, 224, 64, 3), num_classes: int = 10, **options) -> ResNet3D:
    with torch.device("meta"):
        return resnet3d(input_size, num_classes, **options)
