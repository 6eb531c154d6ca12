"""Loading the network a Classifier runs: a model file or an export folder, for one backend.

:func:`load_network` takes a model file (``.safetensors``) or an export folder (``medres3d
export``, see :mod:`medres3d.inference.backends`). A model file for a runtime backend is exported
to ONNX in a temporary folder first (a few seconds; ``medres3d export`` once is the way to deploy).

Example:
    >>> loaded = load_network("model.safetensors", backend="onnxruntime")  # doctest: +SKIP
    >>> loaded.net.backend, loaded.class_names                             # doctest: +SKIP
    ('onnxruntime', ['normal', 'lesion'])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medres3d._checks import check_choice
from medres3d.inference.backends import BACKENDS, PRECISIONS, exported_network, is_export, read_export
from medres3d.inference.prepare_network import prepare_network


@dataclass
class LoadedNetwork:
    """What :func:`load_network` returns: the network to run, its metadata and Classifier options."""

    net: nn.Module
    class_names: list[str]
    preprocessing: Any  # PreprocessingSpec | None
    device: str | torch.device
    options: dict[str, Any] = field(default_factory=dict)
    temperature: float | None = None  # calibration from the model file or the export's sidecar


def load_network(
    path: str | os.PathLike[str],
    *,
    backend: str = "torch",
    precision: str | None = None,
    device: str | torch.device = "auto",
) -> LoadedNetwork:
    """Load a model file or an export folder for ``backend`` at ``precision``.

    ``precision`` None keeps each backend's default: fp32 on the CPU, and for PyTorch on CUDA the
    project's autocast default (bf16). ``"bf16"`` with PyTorch is autocast on CPU or GPU.

    Raises:
        ModelFileError: a bad model file or export, or one the backend cannot run.
        BackendNotInstalledError: the runtime package is missing (the message says what to install).
        ConfigError: an unknown backend or precision, or a precision the backend lacks.

    Example:
        >>> loaded = load_network("model.safetensors", backend="openvino")     # doctest: +SKIP
    """
    check_choice("backend", backend, BACKENDS)
    if precision is not None:
        check_choice("precision", precision, PRECISIONS)
    if is_export(path):
        exported = read_export(path)
        # "cpu": window batches reach a runtime as CPU arrays, whatever device it computes on
        net = exported_network(exported, backend, precision=precision or "fp32", device=device)
        return LoadedNetwork(net, exported.class_names, exported.preprocessing, "cpu",
                             temperature=exported.temperature)
    if backend == "torch":
        from medres3d.modelfile import read_model

        model = read_model(path)
        # BatchNorm folded and channels-last-3d: the fastest PyTorch variant measured on CPU for
        # ResNet-50 and the small network (benchmarks/RESULTS.md); the network just read from the
        # file is nobody else's, so the unfolded copy is dropped
        net = prepare_network(model.net, fold=True, channels_last=True)
        options: dict[str, Any] = {"channels_last": True}
        if precision is not None:
            options["amp"] = "bf16" if precision == "bf16" else False
        return LoadedNetwork(net, model.class_names, model.preprocessing, device, options,
                             _model_temperature(path, model.training))
    return _export_and_load(path, backend, precision or "fp32", device)


def _export_and_load(path: str | os.PathLike[str], backend: str, precision: str,
                     device: str | torch.device) -> LoadedNetwork:
    """A model file for a runtime backend: exported to a temporary folder, loaded, the folder removed."""
    import tempfile

    from medres3d.inference.export import export_model

    # the runtimes keep what they need in memory once loaded, so the files can go at once; OpenVINO
    # reads the ONNX file directly (converting to its own format first would only add time)
    with tempfile.TemporaryDirectory(prefix="medres3d-export-") as folder:
        export_model(path, folder, "onnx", verify=False)
        exported = read_export(folder)
        net = exported_network(exported, backend, precision=precision, device=device)
    net.source = os.fspath(path)
    return LoadedNetwork(net, exported.class_names, exported.preprocessing, "cpu",
                         temperature=exported.temperature)


def _model_temperature(path: str | os.PathLike[str], training: dict[str, Any] | None) -> float | None:
    """The calibration temperature a model file's provenance records (None: not calibrated)."""
    from medres3d.errors import ModelFileError
    from medres3d.inference.backends import stored_temperature

    try:
        return stored_temperature((training or {}).get("calibration"))
    except ValueError as err:
        raise ModelFileError(path, str(err)) from err
