"""Inference backends: the forward pass of each window batch in PyTorch, ONNX Runtime or OpenVINO.

Everything else stays medres3d's: preprocessing, sliding windows, aggregation, evidence maps and
per-scan errors (:class:`~medres3d.inference.classifier.Classifier`). A runtime is wrapped in a
:class:`RuntimeNetwork`, a module without parameters that takes a ``(N, C, *spatial_size)`` float
tensor and returns ``(N, num_classes)`` logits, so :func:`~medres3d.inference.sliding_window.
sliding_window_classify` runs it like any network. The runtimes are optional extras, imported only
when asked for (:func:`require_package`).

:func:`read_export` reads an export folder written by
:func:`medres3d.inference.export.export_model` (``medres3d export``): the exported file(s) and the
sidecar ``medres3d-export.json`` with class names, preprocessing, window size and the SHA-256 of
every file, and the source model's calibration temperature (applied by the Classifier as for the
model file); :func:`exported_network` runs it. A changed, damaged or mismatched file is a
:class:`~medres3d.errors.ModelFileError` naming it. :mod:`medres3d.inference.network_loader` picks
between a model file and an export.

Example:
    >>> net = exported_network(read_export("export-dir"), "onnxruntime")   # doctest: +SKIP
    >>> net.spatial_size, net.num_classes                                  # doctest: +SKIP
    ((64, 64, 48), 2)
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from medres3d._checks import check_choice
from medres3d.errors import BackendNotInstalledError, ConfigError, DeviceError, ModelFileError

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
SIDECAR = "medres3d-export.json"
EXPORT_FORMAT = "medres3d-export/1"
# which exported formats each backend can run (OpenVINO reads ONNX files as well as its own IR)
RUNNABLE = {"torch": ("torchscript",), "onnxruntime": ("onnx",), "openvino": ("openvino", "onnx")}
_EXTRAS = {"onnxruntime": "onnx", "onnx": "onnx", "openvino": "openvino"}


def require_package(name: str) -> ModuleType:
    """Import an optional runtime package, or say which extra installs it.

    Raises:
        BackendNotInstalledError: the package is not installed (the message gives the pip command).

    Example:
        >>> require_package("openvino")   # doctest: +SKIP
        <module 'openvino' ...>
    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        extra = _EXTRAS.get(name, name)
        raise BackendNotInstalledError(
            f"the {name} package is needed for this but is not installed: pip install 'medres3d[{extra}]'"
        ) from err


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, hex, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RuntimeNetwork(nn.Module):
    """A window classifier run by an inference runtime, callable like the PyTorch network.

    It has no parameters (the runtime holds the weights) and lives on the CPU: window batches
    reach it as CPU tensors, whatever device the runtime itself computes on.

    Args:
        run: maps a C-contiguous float32 ``(N, C, *spatial_size)`` array to ``(N, K)`` logits.
        spatial_size, in_channels, num_classes: the network's input and output, as on ResNet3D.
        backend, precision, source: what runs it, at which precision, from which file (for repr
            and errors).

    Example:
        >>> net = RuntimeNetwork(lambda a: a.reshape(len(a), -1)[:, :2], spatial_size=(2, 2, 2),
        ...                      in_channels=1, num_classes=2, backend="demo")
        >>> tuple(net(torch.zeros(3, 1, 2, 2, 2)).shape)
        (3, 2)
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], Any],
        *,
        spatial_size: tuple[int, ...],
        in_channels: int,
        num_classes: int,
        backend: str,
        precision: str = "fp32",
        source: str | None = None,
    ) -> None:
        super().__init__()
        self._run = run
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.backend = backend
        self.precision = precision
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, *self.spatial_size)
        if tuple(x.shape[1:]) != expected:
            raise ConfigError(
                f"the {self.backend} network takes (N, {', '.join(map(str, expected))}) windows, got "
                f"{tuple(x.shape)}"
            )
        # the runtimes read plain C-order float32 memory (a channels-last batch is copied here)
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        logits = np.asarray(self._run(array), dtype=np.float32)
        return torch.from_numpy(logits.copy())

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, precision={self.precision!r}, source={self.source!r}"


@dataclass
class ExportedModel:
    """An export folder, as its sidecar describes it (see :func:`read_export`)."""

    folder: Path
    format: str
    model_path: Path
    class_names: list[str]
    preprocessing: Any  # PreprocessingSpec | None
    spatial_size: tuple[int, ...]
    in_channels: int
    num_classes: int
    sidecar: dict[str, Any] = field(default_factory=dict)
    temperature: float | None = None  # the source model file's calibration (None: not calibrated)


def is_export(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is an export folder, its sidecar, or a file in a folder with a sidecar."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return (folder / SIDECAR).is_file()


def read_export(path: str | os.PathLike[str]) -> ExportedModel:
    """Read and check an export folder (or its sidecar, or the exported file inside it).

    Every file the sidecar lists must exist and have the SHA-256 recorded at export time.

    Raises:
        ModelFileError: no sidecar, a damaged sidecar, a missing, changed or damaged exported file.

    Example:
        >>> read_export("export-dir").format    # doctest: +SKIP
        'onnx'
    """
    from medres3d.transforms import PreprocessingSpec

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    sidecar_path = folder / SIDECAR
    if not sidecar_path.is_file():
        raise ModelFileError(path, f"not a medres3d export: no {SIDECAR} beside it (write one with "
                                   "`medres3d export MODEL --format onnx --out DIR`)")
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        if not isinstance(sidecar, dict) or sidecar.get("format") != EXPORT_FORMAT:
            found = sidecar.get("format") if isinstance(sidecar, dict) else type(sidecar).__name__
            raise ValueError(f"format is {found!r}, expected {EXPORT_FORMAT!r}")
        files = {str(k): str(v) for k, v in sidecar["files"].items()}
        exported = ExportedModel(
            folder=folder,
            format=str(sidecar["runtime_format"]),
            model_path=folder / str(sidecar["model"]),
            class_names=[str(n) for n in sidecar["class_names"]],
            preprocessing=(None if sidecar["preprocessing"] is None
                           else PreprocessingSpec.from_dict(sidecar["preprocessing"])),
            spatial_size=tuple(int(s) for s in sidecar["window_size"]),
            in_channels=int(sidecar["in_channels"]),
            num_classes=int(sidecar["num_classes"]),
            sidecar=sidecar,
            temperature=stored_temperature(sidecar.get("calibration")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
        raise ModelFileError(sidecar_path, f"damaged export sidecar: {err}") from err
    if len(exported.class_names) != exported.num_classes:
        raise ModelFileError(sidecar_path, f"{len(exported.class_names)} class names for "
                                           f"{exported.num_classes} outputs")
    for name, digest in files.items():
        file = folder / name
        if not file.is_file():
            raise ModelFileError(file, f"missing: {SIDECAR} lists it as part of this export")
        if file_sha256(file) != digest:
            raise ModelFileError(file, "changed or damaged since export: its SHA-256 differs from the one "
                                       f"in {SIDECAR}; export the model again")
    return exported


def stored_temperature(calibration: Any) -> float | None:
    """The temperature of a ``calibration`` record (model file provenance or export sidecar), or None.

    Raises:
        ValueError: a temperature record whose value is not a positive finite number (the callers
            turn it into a ModelFileError naming the file).

    Example:
        >>> stored_temperature({"method": "temperature", "temperature": 1.5}), stored_temperature(None)
        (1.5, None)
    """
    if not isinstance(calibration, dict) or calibration.get("method") != "temperature":
        return None
    value = calibration.get("temperature")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            np.isfinite(value) and value > 0):
        raise ValueError(f"calibration temperature must be a positive finite number, got {value!r}")
    return float(value)


def _check_io(path: Path, inputs: list[Any], outputs: list[Any], exported: ExportedModel) -> None:
    """The exported graph must take (N, C, *window) and return (N, K) as the sidecar says."""
    expected_in = [exported.in_channels, *exported.spatial_size]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelFileError(path, f"expected one input and one output, found {len(inputs)} and "
                                   f"{len(outputs)}")
    shape_in, shape_out = list(inputs[0])[1:], list(outputs[0])[1:]
    if shape_in != expected_in or shape_out != [exported.num_classes]:
        raise ModelFileError(
            path, f"does not match {SIDECAR}: the file takes (N, {shape_in}) and returns (N, {shape_out}), "
                  f"the sidecar says (N, {expected_in}) and (N, [{exported.num_classes}])"
        )


def _onnxruntime_runner(exported: ExportedModel, device: str | torch.device, precision: str) -> Callable:
    ort = require_package("onnxruntime")
    if precision != "fp32":
        raise ConfigError(f"precision {precision!r} is not available with the onnxruntime backend (its CPU "
                          "provider computes in fp32); use 'fp32', or the openvino or torch backend for bf16")
    available = ort.get_available_providers()
    providers: list[Any] = ["CPUExecutionProvider"]
    target = str(device)
    if target == "auto" and "CUDAExecutionProvider" in available:
        target = "cuda"
    if target.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise DeviceError(f"device {target!r} needs ONNX Runtime's CUDA provider, which this onnxruntime "
                              f"lacks (providers: {', '.join(available)}): pip install onnxruntime-gpu")
        index = int(target.split(":")[1]) if ":" in target else 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    elif target not in ("cpu", "auto"):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:K', got {target!r}")
    try:
        session = ort.InferenceSession(str(exported.model_path), providers=providers)
    except Exception as err:  # ORT raises its own exception types for unreadable or invalid graphs
        raise ModelFileError(exported.model_path, f"onnxruntime cannot load it: {err}") from err
    _check_io(exported.model_path, [i.shape for i in session.get_inputs()],
              [o.shape for o in session.get_outputs()], exported)
    input_name = session.get_inputs()[0].name
    return lambda array: session.run(None, {input_name: array})[0]


def _openvino_runner(exported: ExportedModel, device: str | torch.device, precision: str) -> Callable:
    ov = require_package("openvino")
    if str(device) not in ("auto", "cpu"):
        raise ConfigError(f"the openvino backend runs on the CPU here; device {str(device)!r} is not "
                          "available to it (use 'cpu' or 'auto')")
    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise ConfigError("precision 'bf16' needs a CPU with bf16 instructions (AVX-512 BF16 or AMX); "
                          "this one has none: use 'fp32'")
    try:
        model = core.read_model(str(exported.model_path))
        # explicit: OpenVINO's own default on a bf16-capable CPU is bf16, not fp32
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16"
                                                     else "f32"})
    except Exception as err:  # OpenVINO raises RuntimeError subclasses of its own
        raise ModelFileError(exported.model_path, f"openvino cannot load it: {err}") from err

    def dims(port: Any) -> list[Any]:
        return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]

    _check_io(exported.model_path, [dims(p) for p in compiled.inputs], [dims(p) for p in compiled.outputs],
              exported)
    request = compiled.create_infer_request()

    def run(array: np.ndarray) -> np.ndarray:
        request.infer({0: array})
        return request.get_output_tensor(0).data.copy()

    return run


def _torchscript_runner(exported: ExportedModel, device: str | torch.device, precision: str) -> Callable:
    import warnings

    try:
        with warnings.catch_warnings():  # its deprecation notice: TorchScript export is still offered
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            module = torch.jit.load(str(exported.model_path), map_location="cpu").eval()
    except Exception as err:  # a damaged archive raises RuntimeError from the zip reader
        raise ModelFileError(exported.model_path, f"torch.jit cannot load it: {err}") from err
    dtype = torch.bfloat16 if precision == "bf16" else None

    def run(array: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return module(torch.from_numpy(array)).float().numpy()

    return run


_RUNNERS = {"onnxruntime": _onnxruntime_runner, "openvino": _openvino_runner, "torch": _torchscript_runner}


def exported_network(
    exported: ExportedModel, backend: str, *, precision: str = "fp32", device: str | torch.device = "auto"
) -> RuntimeNetwork:
    """The :class:`RuntimeNetwork` of a read export, run by ``backend``.

    Raises:
        ModelFileError: the backend cannot run this format, or the runtime refuses the file.
        BackendNotInstalledError: the runtime package is missing.

    Example:
        >>> net = exported_network(read_export("export-dir"), "openvino", precision="bf16")  # doctest: +SKIP
    """
    check_choice("backend", backend, BACKENDS)
    check_choice("precision", precision, PRECISIONS)
    if exported.format not in RUNNABLE[backend]:
        runners = [b for b, formats in RUNNABLE.items() if exported.format in formats]
        raise ModelFileError(exported.model_path, f"a {exported.format} export cannot run with backend "
                                                  f"{backend!r}; use --backend {' or '.join(runners)}")
    run = _RUNNERS[backend](exported, device, precision)
    return RuntimeNetwork(run, spatial_size=exported.spatial_size, in_channels=exported.in_channels,
                          num_classes=exported.num_classes, backend=backend, precision=precision,
                          source=str(exported.model_path))
