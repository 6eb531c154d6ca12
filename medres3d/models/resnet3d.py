"""The 3D residual network of MATLAB's ``resnet3dLayers``, layer for layer, in PyTorch.

Module names map one to one onto MATLAB layer names (``stack2.block1.skip_conv`` is
``stack2_block1_skip_conv``): ``input``, ``conv1``, ``bn1``, ``relu1``, ``maxpool1`` or
``avgpool1``, ``stack{s}.block{b}.*``, ``gap``, ``fc``. MATLAB's ``softmax`` and
classification ``output`` layers are not modules: ``forward`` returns logits and training uses
cross-entropy on them; :func:`medres3d.analyze` lists both so the layer counts match MATLAB.

Example:
    >>> import torch
    >>> net = resnet3d((32, 32, 32), 2, initial_num_filters=4, stack_depth=(1, 1), num_filters=(4, 8))
    >>> net(torch.zeros(1, 1, 32, 32, 32)).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medres3d.errors import ConfigError
from medres3d.models.blocks import BasicBlock, BottleneckBlock
from medres3d.models.layers import GlobalAvgPool3d, SameAvgPool3d, SameConv3d, SameMaxPool3d
from medres3d.models.normalization import InputNormalization
from medres3d.models.options import ResNet3DConfig

__all__ = ["ResNet3D", "ResNet3DConfig", "resnet3d"]


def _init_weights(module: nn.Module) -> None:
    # MATLAB: He (fan_in) for conv and FC weights, zero FC bias, BN scale 1 / offset 0.
    if isinstance(module, (nn.Conv3d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm3d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@contextlib.contextmanager
def _frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """During checkpoint recomputation, keep BN running statistics from being updated twice."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm3d) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


class ResNet3D(nn.Module):
    """MATLAB ``resnet3dLayers`` as an ``nn.Module``; build it with :func:`resnet3d`.

    ``forward(x)`` takes ``(N, C, H, W, D)`` and returns logits ``(N, num_classes)``. The network
    is fully convolutional up to a global average pooling, so spatial sizes other than
    ``spatial_size`` work too (MATLAB accepts only its exact input size; sliding-window
    inference feeds exactly ``spatial_size``).

    Example:
        >>> cfg = ResNet3DConfig.create((32, 32, 32), 3, initial_num_filters=4, stack_depth=(1, 1),
        ...                             num_filters=(4, 8))
        >>> net = ResNet3D(cfg)
        >>> net.in_channels, net.spatial_size, net.num_classes, net.num_features
        (1, (32, 32, 32), 3, 32)
    """

    def __init__(self, config: ResNet3DConfig) -> None:
        super().__init__()
        if not isinstance(config, ResNet3DConfig):
            raise ConfigError(f"ResNet3D needs a ResNet3DConfig, got {type(config).__name__}; "
                              "use medres3d.resnet3d(input_size, num_classes, **options)")
        self.config = config
        self.grad_checkpointing = False
        self.input = InputNormalization(config.normalization, config.in_channels)
        self.conv1 = SameConv3d(config.in_channels, config.initial_num_filters,
                                config.initial_filter_size, config.initial_stride)
        self.bn1 = nn.BatchNorm3d(config.initial_num_filters)
        self.relu1 = nn.ReLU(inplace=True)
        if config.initial_pooling == "max":
            self.maxpool1 = SameMaxPool3d(3, 2)
        elif config.initial_pooling == "average":
            self.avgpool1 = SameAvgPool3d(3, 2)
        block = BottleneckBlock if config.bottleneck else BasicBlock
        bn_after_add = config.residual_block_type == "batchnorm-after-add"
        channels = config.initial_num_filters
        stacks = zip(config.stack_depth, config.num_filters, strict=True)
        for s, (depth, filters) in enumerate(stacks, start=1):
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for b in range(1, depth + 1):
                # Every stack but the first halves the size in its first block.
                stride = 2 if s > 1 and b == 1 else 1
                blocks[f"block{b}"] = block(channels, filters, stride, bn_after_add)
                channels = filters * block.expansion
            self.add_module(f"stack{s}", nn.Sequential(blocks))
        self.num_features = channels
        self.gap = GlobalAvgPool3d()
        self.fc = nn.Linear(channels, config.num_classes)
        self.apply(_init_weights)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def spatial_size(self) -> tuple[int, int, int]:
        return self.config.spatial_size

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def stacks(self) -> list[nn.Sequential]:
        """The residual stacks in order (``stack1``, ``stack2``, ...)."""
        return [m for name, m in self.named_children() if name.startswith("stack")]

    def _pool(self) -> nn.Module | None:
        return getattr(self, "maxpool1", None) or getattr(self, "avgpool1", None)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ConfigError(f"input must be 5D (N, C, H, W, D), but it is {x.ndim}D with shape "
                              f"{tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ConfigError(f"input has {x.shape[1]} channels (shape {tuple(x.shape)}); this network "
                              f"expects {self.in_channels}")
        if not x.is_floating_point():
            raise ConfigError(f"input must be a floating-point tensor, got {x.dtype}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input layer to the last stack: ``(N, C, H, W, D)`` -> ``(N, num_features, h, w, d)``."""
        self._check_input(x)
        x = self.relu1(self.bn1(self.conv1(self.input(x))))
        pool = self._pool()
        if pool is not None:
            x = pool(x)
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for stack in self.stacks():
            for block in stack:
                if use_checkpoint:
                    x = checkpoint(block, x, use_reentrant=False,
                                   context_fn=lambda b=block: (contextlib.nullcontext(),
                                                               _frozen_batchnorm_stats(b)))
                else:
                    x = block(x)
        return x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling and the fully connected layer (``pre_logits``: stop after pooling)."""
        pooled = self.gap(features)
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` with a freshly initialized one for ``num_classes`` (updates ``config``).

        Example:
            >>> net = resnet3d((32, 32, 32), 2, initial_num_filters=4, stack_depth=(1, 1), num_filters=(4, 8))
            >>> net.reset_classifier(5); net.fc.out_features, net.config.num_classes
            (5, 5)
        """
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
        old = self.fc.weight
        self.fc = nn.Linear(self.num_features, num_classes).to(device=old.device, dtype=old.dtype)
        _init_weights(self.fc)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each residual block in the backward pass instead of storing its activations.

        Saves most activation memory on large volumes for about one extra forward pass of
        compute; gradients and BN running statistics are the same as without it.
        """
        self.grad_checkpointing = bool(enable)

    def layer(self, name: str) -> nn.Module:
        """The module of a MATLAB layer name, e.g. ``net.layer("stack2_block1_skip_conv")``."""
        modules = {n.replace(".", "_"): m for n, m in self.named_modules() if n}
        if name not in modules:
            raise ConfigError(f"no layer named {name!r}; layers are e.g. {', '.join(list(modules)[:6])}, ...")
        return modules[name]


def resnet3d(input_size: Sequence[int], num_classes: int, **options: Any) -> ResNet3D:
    """Build a 3D residual network like MATLAB's ``resnet3dLayers(inputSize, numClasses, ...)``.

    Args:
        input_size: ``(h, w, d)`` (one channel) or ``(h, w, d, c)``.
        num_classes: number of classes, > 1.
        **options: MATLAB's name-value arguments in snake_case with MATLAB's defaults:
            ``initial_filter_size=7``, ``initial_num_filters=64``, ``initial_stride=2``,
            ``initial_pooling="max"`` ("max" | "average" | "none"),
            ``residual_block_type="batchnorm-before-add"`` (| "batchnorm-after-add"),
            ``bottleneck_type="downsample-first-conv"`` (| "none"),
            ``stack_depth=(3, 4, 6, 3)``, ``num_filters=(64, 128, 256, 512)``,
            ``normalization="zerocenter"`` (| "zscore" | "rescale-symmetric" | "rescale-zero-one" | "none").

    Raises:
        ConfigError: an unknown option, a bad value, or an input size under the minimum.

    Example:
        >>> net = resnet3d((224, 224, 64, 3), 10)               # ResNet-50, like MATLAB's example
        >>> net.stack3.block1.conv1.stride, net.stack3.block1.conv2.stride
        ((2, 2, 2), (1, 1, 1))
    """
    return ResNet3D(ResNet3DConfig.create(input_size, num_classes, **options))
