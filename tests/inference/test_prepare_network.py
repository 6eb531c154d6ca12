"""BatchNorm folding and inference-time preparation: equal logits, the training network untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medres3d.errors import ConfigError
from medres3d.inference.prepare_network import fold_batchnorm, prepare_network
from medres3d.models.resnet3d import resnet3d

BLOCKS = [
    ("downsample-first-conv", "batchnorm-before-add", 0),
    ("downsample-first-conv", "batchnorm-after-add", 2),  # one per identity-shortcut block
    ("none", "batchnorm-before-add", 0),
    ("none", "batchnorm-after-add", 3),
]


def _net(bottleneck_type: str, residual_block_type: str) -> nn.Module:
    torch.manual_seed(0)
    net = resnet3d((16, 16, 12), 3, initial_num_filters=4, num_filters=(4, 8), stack_depth=(2, 2),
                   bottleneck_type=bottleneck_type, residual_block_type=residual_block_type,
                   normalization="none")
    for module in net.modules():  # statistics and affine values far from the identity
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.3, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return net


@pytest.mark.parametrize(("bottleneck_type", "residual_block_type", "kept"), BLOCKS)
def test_folded_network_gives_the_same_logits(bottleneck_type, residual_block_type, kept):
    net = _net(bottleneck_type, residual_block_type)
    fused = fold_batchnorm(net)
    x = torch.randn(3, 1, 16, 16, 12)  # odd/even sizes: the asymmetric "same" padding path too
    with torch.inference_mode():
        assert torch.allclose(fused(x), net.eval()(x), atol=1e-5, rtol=1e-5)
    # only the BatchNorms after an identity-shortcut addition cannot be folded
    assert sum(isinstance(m, nn.BatchNorm3d) for m in fused.modules()) == kept


def test_the_training_network_is_untouched():
    net = _net("downsample-first-conv", "batchnorm-before-add").train()
    before = {name: t.clone() for name, t in net.state_dict().items()}
    fused = fold_batchnorm(net)
    assert net.training and not fused.training
    assert all(torch.equal(before[name], t) for name, t in net.state_dict().items())
    assert isinstance(net.bn1, nn.BatchNorm3d) and net.conv1.bias is None
    assert isinstance(fused.bn1, nn.Identity) and fused.conv1.bias is not None


def test_prepare_network_channels_last_and_refusal():
    net = _net("none", "batchnorm-before-add").eval()
    prepared = prepare_network(net, channels_last=True)
    assert prepared.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 16, 16, 12)
    with torch.inference_mode():
        assert torch.allclose(prepared(x.contiguous(memory_format=torch.channels_last_3d)), net(x), atol=1e-5)
    with pytest.raises(ConfigError, match="needs a medres3d ResNet3D, got Linear"):
        fold_batchnorm(nn.Linear(2, 2))
