"""runtime.py (device, autocast, torchrun place) and the old import paths of the 0.1 layout."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

from medres3d._moved import MOVED
from medres3d.errors import ConfigError, DeviceError
from medres3d.runtime import autocast_dtype, process_place, resolve_device


def test_one_device_rule():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:K', got 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="'cuda:1' was asked for but CUDA is not available"):
            resolve_device("cuda:1")


def test_one_autocast_rule():
    cpu = torch.device("cpu")
    assert autocast_dtype(None, cpu) is None and autocast_dtype(False, cpu) is None
    assert autocast_dtype("none", cpu) is None
    assert autocast_dtype(True, cpu) == autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="amp 'fp16' needs CUDA"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(ConfigError, match="amp must be None, True, False"):
        autocast_dtype("int8", cpu)


@pytest.mark.parametrize(("env", "message"), [
    ({"RANK": "x"}, "RANK must be an integer, got 'x'"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 and WORLD_SIZE=2 are inconsistent"),
])  # fmt: skip
def test_torchrun_variables_are_checked(env, message):
    with pytest.raises(ConfigError, match=message):
        process_place(env)


def test_torchrun_place():
    place = process_place({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"})
    assert (place.rank, place.world_size, place.local_rank, place.distributed) == (1, 3, 1, True)
    assert not process_place({}).distributed


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_import_paths_work_with_a_deprecation_warning(old):
    code = (f"import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            f"import medres3d\ntry:\n    import {old}\nexcept DeprecationWarning as w:\n    print(w)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert f"{old} moved to {MOVED[old]}" in done.stdout, done.stderr
    with pytest.warns(DeprecationWarning):
        sys.modules.pop(old, None)
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
