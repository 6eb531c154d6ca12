"""Inference-time preparation of a PyTorch network: BatchNorm folded into convolutions, channels-last.

:func:`fold_batchnorm` returns an eval-mode copy of a :class:`~medres3d.models.resnet3d.ResNet3D`
in which every BatchNorm that directly follows a convolution is folded into that convolution's
weights and a new bias (``W' = W * s``, ``b' = beta - mean * s`` with ``s = gamma / sqrt(var +
eps)``); the BatchNorm becomes an ``nn.Identity``, so the module names (and Grad-CAM's layers)
stay. The network it was given is untouched, training or not.

With ``residual_block_type="batchnorm-after-add"`` the last BatchNorm of a block follows the
addition: ``BN(conv(y) + shortcut)``. With a projection shortcut both branches end in a
convolution, so the scale goes into both and the shift into one; with an identity shortcut the
scale would have to multiply the shortcut too, which no convolution can absorb, so that BN stays
(an element-wise affine in eval mode).

:func:`prepare_network` applies the folding (on by default: measured faster on CPU, see
benchmarks/RESULTS.md), optionally channels-last-3d weights and ``torch.compile``.

Example:
    >>> import torch
    >>> from medres3d.models.resnet3d import resnet3d
    >>> net = resnet3d((16, 16, 16), 2, initial_num_filters=4, num_filters=(4, 8), stack_depth=(1, 1),
    ...                normalization="none").eval()
    >>> fused = fold_batchnorm(net)
    >>> x = torch.randn(2, 1, 16, 16, 16)
    >>> bool(torch.allclose(fused(x), net(x), atol=1e-5)), type(fused.bn1).__name__
    (True, 'Identity')
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from medres3d.errors import ConfigError


@torch.no_grad()
def _fold(conv: nn.Conv3d, bn: nn.BatchNorm3d, *, shift: bool = True) -> None:
    """Fold ``bn`` (eval-mode statistics) into ``conv`` in place; ``shift=False`` folds the scale only."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.ndim - 1))))
    bias = conv.bias * scale if conv.bias is not None else torch.zeros_like(scale)
    if shift:
        bias = bias + bn.bias - bn.running_mean * scale
    conv.bias = nn.Parameter(bias)


def _fold_block(block: nn.Module) -> int:
    """Fold the BatchNorms of one residual block in place; returns how many were folded."""
    bottleneck = hasattr(block, "conv3")
    pairs = [("conv1", "bn1")] + ([("conv2", "bn2")] if bottleneck else [])
    last_conv, last_bn = ("conv3", "bn3") if bottleneck else ("conv2", "bn2")
    if not block.bn_after_add:
        pairs.append((last_conv, last_bn))
        if block.projected:
            pairs.append(("skip_conv", "skip_bn"))
    for conv_name, bn_name in pairs:
        _fold(getattr(block, conv_name), getattr(block, bn_name))
        setattr(block, bn_name, nn.Identity())
    folded = len(pairs)
    if block.bn_after_add and block.projected:
        bn = getattr(block, last_bn)
        _fold(getattr(block, last_conv), bn)
        _fold(block.skip_conv, bn, shift=False)
        setattr(block, last_bn, nn.Identity())
        folded += 1
    return folded


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """An eval-mode copy of a ResNet3D with its BatchNorms folded into the preceding convolutions.

    Returns the copy (on the network's device); ``net`` itself is not changed. BatchNorms after an
    identity-shortcut addition (``"batchnorm-after-add"``) stay, see the module docstring.

    Raises:
        ConfigError: ``net`` is not a medres3d ResNet3D.

    Example:
        >>> fused = fold_batchnorm(net)                            # doctest: +SKIP
        >>> sum(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())   # doctest: +SKIP
        0
    """
    net = getattr(net, "module", net)
    if not hasattr(net, "config") or not hasattr(net, "stacks"):
        raise ConfigError(f"fold_batchnorm needs a medres3d ResNet3D, got {type(net).__name__}")
    fused = copy.deepcopy(net).eval()
    _fold(fused.conv1, fused.bn1)
    fused.bn1 = nn.Identity()
    for stack in fused.stacks():
        for block in stack:
            _fold_block(block)
    # parameters keep requires_grad: Grad-CAM differentiates through the folded network too
    return fused


def prepare_network(
    net: nn.Module, *, fold: bool = True, channels_last: bool = False, compile: bool = False
) -> nn.Module:
    """The network as inference should run it: an eval-mode copy, BatchNorm folded, optionally more.

    Args:
        net: a ResNet3D (not changed).
        fold: fold BatchNorm into the convolutions (:func:`fold_batchnorm`).
        channels_last: weights in ``torch.channels_last_3d`` (pair with ``channels_last=True`` in
            :func:`~medres3d.inference.sliding_window.sliding_window_classify`; it pays on GPUs,
            not on this project's CPU measurements).
        compile: wrap in ``torch.compile`` (the first batch then compiles for tens of seconds; it
            needs a C++ compiler on the CPU).

    Example:
        >>> runtime_net = prepare_network(net, fold=True)          # doctest: +SKIP
    """
    prepared = fold_batchnorm(net) if fold else copy.deepcopy(getattr(net, "module", net)).eval()
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last_3d)
    if compile:
        prepared = torch.compile(prepared, dynamic=False)
    return prepared
