"""Fixtures of the inference tests: tiny real networks, model files and volumes."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import TinyConvNet, make_model_file


@pytest.fixture
def tiny_net() -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet()


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    return make_model_file(tmp_path_factory.mktemp("model") / "model.safetensors")
