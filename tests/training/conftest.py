"""Fixtures of the training tests: tiny networks and tiny synthetic datasets."""

from __future__ import annotations

import pytest

TINY = dict(initial_num_filters=4, num_filters=(4, 8), stack_depth=(1, 1), initial_stride=1)


@pytest.fixture
def tiny_options() -> dict:
    """Builder options of a network small enough to train in seconds on a CPU."""
    return dict(TINY)


@pytest.fixture
def tiny_net():
    """A fitted tiny network whose BatchNorm statistics moved away from their initial values."""
    import torch

    from medres3d import fit_normalization, resnet3d

    torch.manual_seed(0)
    net = resnet3d((16, 16, 8), 2, normalization="zscore", **TINY)
    batches = [torch.randn(2, 1, 16, 16, 8) * 3 + 5 for _ in range(2)]
    fit_normalization(net, batches)
    net.train()
    with torch.no_grad():
        net(batches[0])
    return net.eval()
