"""ResNet3DConfig: MATLAB defaults, normalization of values, and every validation error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medres3d.errors import ConfigError
from medres3d.models.options import MATLAB_NAMES, ResNet3DConfig


def test_matlab_defaults():
    cfg = ResNet3DConfig.create((224, 224, 64, 3), 10)
    assert cfg.initial_filter_size == (7, 7, 7)
    assert cfg.initial_num_filters == 64
    assert cfg.initial_stride == (2, 2, 2)
    assert cfg.initial_pooling == "max"
    assert cfg.residual_block_type == "batchnorm-before-add"
    assert cfg.bottleneck_type == "downsample-first-conv"
    assert cfg.stack_depth == (3, 4, 6, 3)
    assert cfg.num_filters == (64, 128, 256, 512)
    assert cfg.normalization == "zerocenter"
    assert set(MATLAB_NAMES) == {f for f in cfg.to_dict()}


def test_three_element_size_means_one_channel_and_scalars_broadcast():
    cfg = ResNet3DConfig.create(np.array([64, 48, 32]), 2, initial_filter_size=5, initial_stride=[1, 2, 2])
    assert cfg.input_size == (64, 48, 32, 1)
    assert (cfg.in_channels, cfg.spatial_size) == (1, (64, 48, 32))
    assert cfg.initial_filter_size == (5, 5, 5)
    assert cfg.initial_stride == (1, 2, 2)


def test_dict_round_trip_is_json_safe():
    cfg = ResNet3DConfig.create((40, 40, 40, 2), 4, bottleneck_type="none", stack_depth=(2, 1),
                                num_filters=(8, 16), normalization="zscore")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert ResNet3DConfig.from_dict(data) == cfg


@pytest.mark.parametrize(
    ("options", "minimum"),
    [
        ({}, (32, 32, 32)),  # the spec: 2 * 2 * 2^3
        ({"initial_pooling": "none"}, (16, 16, 16)),
        ({"initial_stride": (1, 2, 2)}, (16, 32, 32)),
        ({"stack_depth": (1, 1), "num_filters": (8, 16)}, (8, 8, 8)),
    ],
)
def test_minimum_input_size_rule(options, minimum):
    cfg = ResNet3DConfig.create((64, 64, 64), 2, **options)
    assert cfg.minimum_input_size == minimum
    ResNet3DConfig.create(minimum, 2, **options)  # exactly the minimum is valid


@pytest.mark.parametrize(("axis", "size"), [("h", (31, 32, 32)), ("w", (32, 31, 32)), ("d", (32, 32, 16))])
def test_too_small_input_names_dimension_value_and_minimum(axis, size):
    with pytest.raises(ConfigError) as err:
        ResNet3DConfig.create(size, 2)
    bad = dict(zip("hwd", size, strict=True))[axis]
    assert f"{axis}={bad}" in str(err.value)
    assert "32" in str(err.value)


@pytest.mark.parametrize(
    ("args", "options", "needle"),
    [
        (((32, 32), 2), {}, "input_size must have 3 or 4 elements"),
        (((32, 32, 32, 1, 1), 2), {}, "input_size must have 3 or 4 elements"),
        (((32, 0, 32), 2), {}, "input_size must contain positive integers"),
        (((32, 32.5, 32), 2), {}, "input_size must contain positive integers"),
        ((32, 2), {}, "input_size must be a sequence"),
        (((32, 32, 32), 1), {}, "num_classes must be an integer greater than 1, got 1"),
        (((32, 32, 32), 2.0), {}, "num_classes must be an integer greater than 1"),
        (((32, 32, 32), 2), {"initial_filter_size": 0},
         "initial_filter_size must be a positive integer, got 0"),
        (((32, 32, 32), 2), {"initial_filter_size": (7, 7)}, "initial_filter_size must have 3 elements"),
        (((32, 32, 32), 2), {"initial_num_filters": -4}, "initial_num_filters must be a positive integer"),
        (((32, 32, 32), 2), {"initial_num_filters": True}, "initial_num_filters must be a positive integer"),
        (((32, 32, 32), 2), {"initial_stride": (2, 0, 2)}, "initial_stride must contain positive integers"),
        (((32, 32, 32), 2), {"stack_depth": ()}, "stack_depth must not be empty"),
        (((32, 32, 32), 2), {"stack_depth": (3, 0, 6, 3)}, "stack_depth must contain positive integers"),
        (((32, 32, 32), 2), {"num_filters": (64, 128, 256)},
         "stack_depth and num_filters must have the same"),
        (((32, 32, 32), 2), {"initial_pooling": "avg"}, "initial_pooling must be one of 'max', 'average'"),
        (((32, 32, 32), 2), {"residual_block_type": "batchnorm before add"},
         "did you mean 'batchnorm-before-add'"),
        (((32, 32, 32), 2), {"bottleneck_type": "downsamplefirstconv"},
         "did you mean 'downsample-first-conv'"),
        (((32, 32, 32), 2), {"normalization": "z-score"}, "normalization must be one of"),
        (((32, 32, 32), 2), {"InitialNumFilters": 32}, "did you mean 'initial_num_filters'"),
        (((32, 32, 32), 2), {"dropout": 0.5}, "unknown option 'dropout'; valid options: initial_filter_size"),
    ],
)
def test_invalid_arguments_name_argument_value_and_valid_choices(args, options, needle):
    with pytest.raises(ConfigError, match=None) as err:
        ResNet3DConfig.create(*args, **options)
    assert needle in str(err.value)
    assert isinstance(err.value, ValueError)


def test_from_dict_rejects_missing_required_keys():
    with pytest.raises(ConfigError, match="missing num_classes"):
        ResNet3DConfig.from_dict({"input_size": [32, 32, 32]})
