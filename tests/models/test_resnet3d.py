"""ResNet3D: structure per MATLAB option, forward shapes, init, input checks, head API."""

from __future__ import annotations

import math

import pytest
import torch
from resnet_helpers import on_meta, tiny
from torch import nn

from medres3d.errors import ConfigError
from medres3d.models.layers import SameAvgPool3d, SameMaxPool3d
from medres3d.models.resnet3d import ResNet3D, resnet3d

OPTION_CASES = [
    {},
    {"initial_filter_size": 5},
    {"initial_filter_size": (3, 5, 1)},
    {"initial_num_filters": 6},
    {"initial_stride": 1},
    {"initial_stride": (1, 2, 2)},
    {"initial_pooling": "average"},
    {"initial_pooling": "none"},
    {"residual_block_type": "batchnorm-after-add"},
    {"bottleneck_type": "none"},
    {"bottleneck_type": "none", "residual_block_type": "batchnorm-after-add"},
    {"stack_depth": (2, 1, 1), "num_filters": (4, 8, 8)},
    {"normalization": "zscore"},
    {"normalization": "rescale-symmetric"},
    {"normalization": "rescale-zero-one"},
    {"normalization": "none"},
]


@pytest.mark.parametrize("options", OPTION_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_builds_and_runs(options):
    net = tiny((32, 32, 32, 2), 3, **options)
    cfg = net.config
    for key, value in options.items():
        broadcast = isinstance(value, int) and key in ("initial_filter_size", "initial_stride")
        assert getattr(cfg, key) == ((value,) * 3 if broadcast else value)
    x = torch.randn(2, 2, 32, 32, 32)
    assert net(x).shape == (2, 3)
    # Stem: kernel, stride and filters as configured.
    assert net.conv1.kernel_size == cfg.initial_filter_size
    assert net.conv1.stride == cfg.initial_stride
    assert net.conv1.out_channels == cfg.initial_num_filters
    pools = [m for m in net.children() if isinstance(m, (SameMaxPool3d, SameAvgPool3d))]
    expected = {"max": [SameMaxPool3d], "average": [SameAvgPool3d], "none": []}[cfg.initial_pooling]
    assert [type(p) for p in pools] == expected
    assert net.input.mode == cfg.normalization
    # Blocks per stack and output channels per block.
    expansion = 4 if cfg.bottleneck else 1
    assert [len(s) for s in net.stacks()] == list(cfg.stack_depth)
    assert net.num_features == cfg.num_filters[-1] * expansion


def test_feature_map_size_follows_ceil_division():
    net = tiny((33, 34, 35))
    features = net.forward_features(torch.randn(1, 1, 33, 34, 35))
    # stem /2, pool /2, one downsampling stack /2, each a ceil (MATLAB "same").
    expected = [math.ceil(math.ceil(math.ceil(n / 2) / 2) / 2) for n in (33, 34, 35)]
    assert list(features.shape[2:]) == expected


def test_stride_sits_in_first_1x1x1_conv_of_downsampling_bottleneck():
    net = on_meta()
    for s, stack in enumerate(net.stacks(), start=1):
        first = stack.block1
        stride = (2, 2, 2) if s > 1 else (1, 1, 1)
        assert first.conv1.kernel_size == (1, 1, 1) and first.conv1.stride == stride
        assert first.conv2.stride == (1, 1, 1) and first.conv3.stride == (1, 1, 1)
        assert first.skip_conv.stride == stride and first.skip_conv.kernel_size == (1, 1, 1)
        for block in list(stack)[1:]:
            assert not hasattr(block, "skip_conv") and block.conv1.stride == (1, 1, 1)


@pytest.mark.parametrize(
    ("options", "projection"),
    [
        ({}, True),  # 64 -> 256 channels
        ({"initial_num_filters": 256}, False),
        ({"bottleneck_type": "none"}, False),  # 64 -> 64
        ({"bottleneck_type": "none", "initial_num_filters": 32}, True),
    ],
)
def test_initial_block_projects_only_when_channels_change(options, projection):
    net = on_meta((64, 64, 64), 2, **options)
    block = net.stack1.block1
    assert hasattr(block, "skip_conv") == projection
    assert hasattr(block, "skip_bn") == projection
    assert all(hasattr(stack.block1, "skip_conv") for stack in net.stacks()[1:])


def test_batchnorm_after_add_moves_last_bn_and_drops_projection_bn():
    torch.manual_seed(0)
    net = tiny(residual_block_type="batchnorm-after-add").eval()
    block = net.stack2.block1
    assert not hasattr(block, "skip_bn")
    with torch.no_grad():
        for bn in (block.bn1, block.bn2, block.bn3):  # non-trivial BN so that the order matters
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
        x = torch.randn(1, block.in_channels, 8, 8, 8)
        y = block.relu2(block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(x))))))
        expected = torch.relu(block.bn3(block.conv3(y) + block.skip_conv(x)))
        torch.testing.assert_close(block(x), expected)


def test_batchnorm_before_add_order():
    net = tiny().eval()
    block = net.stack2.block1
    with torch.no_grad():
        block.bn3.running_mean.uniform_(-1, 1)
        x = torch.randn(1, block.in_channels, 8, 8, 8)
        y = block.relu2(block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(x))))))
        expected = torch.relu(block.bn3(block.conv3(y)) + block.skip_bn(block.skip_conv(x)))
        torch.testing.assert_close(block(x), expected)


def test_he_fan_in_initialization_and_zero_biases():
    torch.manual_seed(0)
    net = resnet3d((64, 64, 64), 5, stack_depth=(1, 1), num_filters=(64, 128))
    weight = net.stack2.block1.conv2.weight  # 128 x 128 x 3 x 3 x 3, fan_in 3456
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 27)), rel=0.02)
    # conv2 is square (fan_in == fan_out); conv3 (128 -> 512) tells fan_in from fan_out apart.
    expanding = net.stack2.block1.conv3.weight
    assert expanding.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.05)
    assert net.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.1)
    assert torch.count_nonzero(net.fc.bias) == 0
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv3d))
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm3d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_module_names_map_onto_matlab_layer_names():
    net = on_meta()
    names = {n for n, _ in net.named_modules() if n}
    for torch_name in ("input", "conv1", "bn1", "relu1", "maxpool1", "stack2.block1.skip_conv",
                       "stack1.block3.relu3", "stack4.block3.add", "gap", "fc"):
        assert torch_name in names
    assert net.layer("stack2_block1_skip_conv") is net.stack2.block1.skip_conv
    with pytest.raises(ConfigError, match="no layer named 'stack9_block1_conv1'"):
        net.layer("stack9_block1_conv1")


@pytest.mark.parametrize(
    ("shape", "needle"),
    [((1, 32, 32, 32), "must be 5D (N, C, H, W, D), but it is 4D"),
     ((1, 2, 32, 32, 32), "input has 2 channels"),
     ((1, 1, 32, 32, 32, 1), "but it is 6D")],
)
def test_forward_rejects_wrong_rank_and_channels(shape, needle):
    with pytest.raises(ConfigError) as err:
        tiny()(torch.zeros(shape))
    assert needle in str(err.value)


def test_forward_rejects_integer_input():
    with pytest.raises(ConfigError, match="floating-point"):
        tiny()(torch.zeros((1, 1, 32, 32, 32), dtype=torch.int16))


def test_other_spatial_sizes_work_fully_convolutional():
    assert tiny()(torch.randn(1, 1, 48, 40, 36)).shape == (1, 3)


def test_forward_features_head_and_reset_classifier():
    net = tiny().eval()
    x = torch.randn(2, 1, 32, 32, 32)
    features = net.forward_features(x)
    assert features.shape == (2, net.num_features, 4, 4, 4)
    torch.testing.assert_close(net.forward_head(features), net(x))
    torch.testing.assert_close(net.forward_head(features, pre_logits=True), features.mean(dim=(2, 3, 4)))
    net.reset_classifier(7)
    assert net(x).shape == (2, 7) and net.config.num_classes == 7 == net.num_classes
    with pytest.raises(ConfigError, match="num_classes"):
        net.reset_classifier(1)


def test_resnet3d_rejects_non_config():
    with pytest.raises(ConfigError, match="ResNet3DConfig"):
        ResNet3D({"input_size": (32, 32, 32)})  # type: ignore[arg-type]


def test_public_names_are_exported_lazily_from_the_package():
    import medres3d as mr
    from medres3d.models.analysis import LayerInfo, NetworkAnalysis, analyze
    from medres3d.models.normalization import InputNormalization, fit_normalization
    from medres3d.models.options import ResNet3DConfig

    assert (mr.resnet3d, mr.ResNet3D, mr.ResNet3DConfig) == (resnet3d, ResNet3D, ResNet3DConfig)
    assert (mr.InputNormalization, mr.fit_normalization) == (InputNormalization, fit_normalization)
    assert (mr.analyze, mr.NetworkAnalysis, mr.LayerInfo) == (analyze, NetworkAnalysis, LayerInfo)
