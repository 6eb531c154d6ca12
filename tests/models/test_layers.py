"""MATLAB/TensorFlow "same" padding, checked against the spec's formula and against geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medres3d.models.layers import SameAvgPool3d, SameConv3d, SameMaxPool3d, same_padding


def spec_padding(n: int, k: int, s: int) -> tuple[int, int]:
    # ../shared/spec/resnet3d.md, "Padding same": total max((ceil(n/s)-1)*s + k - n, 0), floor half first.
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return math.floor(total / 2), total - math.floor(total / 2)


@pytest.mark.parametrize("n", [7, 8, 15, 16, 31, 32, 224, 225])
@pytest.mark.parametrize(("k", "s"), [(7, 2), (3, 2), (3, 1), (1, 2), (1, 1), (5, 3)])
def test_same_padding_matches_spec_formula(n, k, s):
    assert same_padding(n, k, s) == spec_padding(n, k, s)


def test_spec_examples():
    assert same_padding(224, 7, 2) == (2, 3)  # the stem on even sizes
    assert same_padding(112, 3, 2) == (0, 1)  # the pool on even sizes
    assert same_padding(223, 7, 2) == (3, 3)


@pytest.mark.parametrize("n", [9, 10, 11, 12])
def test_strided_conv_is_the_dense_conv_sampled_on_matlab_grid(n):
    """TF-"same" stride 2 reads windows starting at 2i - before; a stride-1 symmetric conv of the
    same kernel reads windows starting at j - 3. So the strided output must equal the dense
    output at j = 2i - before + 3, whatever the parity."""
    torch.manual_seed(0)
    conv = SameConv3d(2, 3, 7, stride=2)
    x = torch.randn(1, 2, n, n + 1, n + 2)
    out = conv(x)
    dense = F.conv3d(x, conv.weight, padding=3)
    index = []
    for size in x.shape[2:]:
        before, _ = same_padding(size, 7, 2)
        index.append(torch.arange(math.ceil(size / 2)) * 2 - before + 3)
    expected = dense[:, :, index[0]][:, :, :, index[1]][:, :, :, :, index[2]]
    assert out.shape[2:] == tuple(math.ceil(s / 2) for s in x.shape[2:])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_symmetric_case_equals_pytorch_same_padding():
    torch.manual_seed(0)
    conv = SameConv3d(2, 2, 3, stride=1)
    x = torch.randn(1, 2, 6, 7, 5)
    torch.testing.assert_close(conv(x), F.conv3d(x, conv.weight, padding="same"))
    assert conv.bias is None


def test_max_pool_pads_after_on_even_sizes():
    x = torch.rand(1, 1, 6, 6, 6)
    out = SameMaxPool3d()(x)
    ref = np.pad(x[0, 0].numpy(), [(0, 1)] * 3)  # (0, 1) zero padding on each axis
    expected = np.array([[[ref[2 * i:2 * i + 3, 2 * j:2 * j + 3, 2 * k:2 * k + 3].max() for k in range(3)]
                          for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(out[0, 0].numpy(), expected)


def test_average_pool_counts_padded_zeros():
    out = SameAvgPool3d()(torch.ones(1, 1, 4, 4, 4))
    assert out.shape == (1, 1, 2, 2, 2)
    # Last window along each axis holds 2 real voxels and 1 padded zero: (2/3)^3 at the far corner.
    assert out[0, 0, 0, 0, 0].item() == pytest.approx(1.0)
    assert out[0, 0, 1, 1, 1].item() == pytest.approx((2 / 3) ** 3)
