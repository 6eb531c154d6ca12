"""Exporting a model file for an inference runtime: ONNX, OpenVINO IR or TorchScript, verified.

:func:`export_model` writes the network (BatchNorm folded, the input normalization inside, a
dynamic batch dimension, fixed window size) and the sidecar ``medres3d-export.json`` (class names,
preprocessing spec, window size, the calibration temperature, the source model file's SHA-256, the
SHA-256 of every exported file, versions) into one folder, so that everything a Classifier needs
travels together. The export is then loaded back through the same path inference uses and checked
against PyTorch on a probe batch (a batch size unlike the traced one, so the dynamic batch is
checked too); the sidecar is written last, only when that check passes, so a folder without it is
not an export.

Example:
    >>> result = export_model("model.safetensors", "export-onnx", "onnx")   # doctest: +SKIP
    >>> result.max_abs_difference < result.tolerance                        # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medres3d._atomic import write_atomically
from medres3d._checks import check_choice
from medres3d.errors import ConfigError, ModelFileError
from medres3d.inference.backends import (
    EXPORT_FORMAT,
    SIDECAR,
    exported_network,
    file_sha256,
    read_export,
    require_package,
)
from medres3d.inference.prepare_network import fold_batchnorm

FORMATS = ("onnx", "openvino", "torchscript")
FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin"), "torchscript": ("model.pt",)}
VERIFY_BACKEND = {"onnx": "onnxruntime", "openvino": "openvino", "torchscript": "torch"}
ONNX_OPSET = 17
TOLERANCE = 1e-4
"""Largest logit difference accepted at verification, relative to max(1, largest |logit|), fp32."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how the verification went."""

    folder: Path
    format: str
    files: list[Path]
    sidecar: Path
    max_abs_difference: float | None = None  # None: not verified
    tolerance: float = TOLERANCE
    probe_batch: int = 3
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def probe_batch(net: nn.Module, batch: int, seed: int = 0) -> torch.Tensor:
    """A reproducible batch on the scale the network was fitted to (its input normalization's statistics).

    Random values on the fitted scale make the probe exercise the network as real inputs do;
    standard-normal voxels on a CT scale of -1000..1000 would be nearly constant to it.

    Example:
        >>> probe_batch(net, 3).shape              # doctest: +SKIP
        torch.Size([3, 1, 64, 64, 48])
    """
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, net.in_channels, *net.spatial_size)
    layer = getattr(net, "input", None)
    view = (1, -1, 1, 1, 1)
    if layer is None or layer.mode == "none" or not layer.is_fitted:
        return torch.randn(shape, generator=generator)
    if layer.mode in ("zerocenter", "zscore"):
        spread = torch.where(layer.std > 0, layer.std, 1.0).view(view)
        return layer.mean.view(view) + spread * torch.randn(shape, generator=generator)
    return layer.min.view(view) + (layer.max - layer.min).view(view) * torch.rand(shape, generator=generator)


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    # Tracing warns that the "same" padding's Python integers become constants: intended, since an
    # export runs at its fixed window size (checked at load); the legacy exporter's deprecation
    # notice is not actionable for users (the new exporter needs onnxscript, not a dependency).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        yield


def _write_onnx(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    require_package("onnx")  # the legacy exporter serializes through it
    with _quiet_tracing():
        torch.onnx.export(
            net, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True,
        )


def _write_openvino(net: nn.Module, example: torch.Tensor, folder: Path) -> None:
    ov = require_package("openvino")
    with tempfile.TemporaryDirectory(prefix="medres3d-onnx-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        _write_onnx(net, example, onnx_path)
        model = ov.convert_model(str(onnx_path))
    # fp16 weight compression (OpenVINO's default when saving) would cost the 1e-4 fp32 agreement
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)


def _write_torchscript(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(net, (example,))
        torch.jit.save(traced, str(path))


def export_model(
    model_file: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    format: str = "onnx",
    *,
    verify: bool = True,
    probe_size: int = 3,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export a model file's network for a runtime, with its sidecar, and verify it.

    Args:
        model_file: a medres3d model file (``.safetensors``).
        out_dir: the export folder (created; files of an earlier export of the same format replaced).
        format: ``"onnx"`` (ONNX Runtime, OpenVINO), ``"openvino"`` (OpenVINO IR: ``model.xml`` and
            ``model.bin``) or ``"torchscript"`` (``torch.jit``; no Python model code needed).
        verify: load the export back with its runtime and compare its logits with PyTorch's.
        probe_size: windows in the verification batch (2 are traced: another size checks the
            dynamic batch dimension).
        tolerance: largest accepted logit difference relative to ``max(1, largest |logit|)``.

    Raises:
        ModelFileError: a bad model file, or the export disagrees with PyTorch (no sidecar is then
            written, so the folder is not usable as an export).
        NormalizationNotFittedError: the network's input normalization was never fitted.
        BackendNotInstalledError: the exporter's or runtime's package is missing.

    Example:
        >>> export_model("model.safetensors", "export-ov", "openvino").files   # doctest: +SKIP
        [PosixPath('export-ov/model.xml'), PosixPath('export-ov/model.bin')]
    """
    from medres3d import __version__
    from medres3d.modelfile import read_model, require_fitted_normalization

    check_choice("format", format, FORMATS)
    if isinstance(probe_size, bool) or not isinstance(probe_size, int) or probe_size < 1:
        raise ConfigError(f"probe_size must be a positive integer, got {probe_size!r}")
    start = time.perf_counter()
    # the packages first: a missing one must not leave an empty or half-written folder behind
    for package in {"onnx": ("onnx",), "openvino": ("onnx", "openvino"), "torchscript": ()}[format]:
        require_package(package)
    model_file = Path(model_file)
    model = read_model(model_file)
    require_fitted_normalization(model.net, model_file)
    reference = model.net.eval()
    net = fold_batchnorm(reference)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SIDECAR).unlink(missing_ok=True)  # until verified, the folder is not an export
    example = probe_batch(reference, 2, seed=1)
    if format == "onnx":
        _write_onnx(net, example, folder / "model.onnx")
    elif format == "openvino":
        _write_openvino(net, example, folder)
    else:
        _write_torchscript(net, example, folder / "model.pt")
    files = [folder / name for name in FILES[format]]
    sidecar: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "runtime_format": format,
        "model": FILES[format][0],
        "files": {path.name: file_sha256(path) for path in files},
        "class_names": model.class_names,
        "preprocessing": None if model.preprocessing is None else model.preprocessing.to_dict(),
        "window_size": list(reference.spatial_size),
        "in_channels": reference.in_channels,
        "num_classes": reference.num_classes,
        "input": {"name": "input", "shape": ["batch", reference.in_channels, *reference.spatial_size],
                  "dtype": "float32", "normalization": "inside the network"},
        "output": {"name": "logits", "shape": ["batch", reference.num_classes]},
        "source_model": {"file": model_file.name, "sha256": file_sha256(model_file)},
        # the temperature is applied to scan probabilities, outside the network, so it travels here
        # (None when the model was not calibrated); TTA is an inference option and is not recorded
        "calibration": _calibration(model_file, model.training),
        "versions": _versions(format, __version__),
    }
    result = ExportResult(folder=folder, format=format, files=files, sidecar=folder / SIDECAR,
                          tolerance=tolerance, probe_batch=probe_size)
    # written to a scratch name first: verification loads the export through read_export, which
    # needs the sidecar, but the real sidecar must appear only once the check has passed
    text = json.dumps(sidecar, indent=2)
    if verify:
        result.max_abs_difference = _verify(reference, folder, format, text, probe_size, tolerance)
        sidecar["verification"] = {"max_abs_logit_difference": result.max_abs_difference,
                                   "probe_batch": probe_size, "tolerance": tolerance,
                                   "against": "PyTorch eager fp32, BatchNorm not folded"}
        text = json.dumps(sidecar, indent=2)
    write_atomically(result.sidecar, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                     "export sidecar")
    result.seconds = time.perf_counter() - start
    return result


def _calibration(model_file: Path, training: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model file's temperature calibration for the sidecar (None when it has none)."""
    from medres3d.inference.backends import stored_temperature

    calibration = (training or {}).get("calibration")
    try:
        temperature = stored_temperature(calibration)
    except ValueError as err:
        raise ModelFileError(model_file, str(err)) from err
    return None if temperature is None else {"method": "temperature", "temperature": temperature}


def _verify(reference: nn.Module, folder: Path, format: str, sidecar_text: str, probe_size: int,
            tolerance: float) -> float:
    probe = probe_batch(reference, probe_size, seed=2)
    with torch.inference_mode():
        expected = reference(probe).float()
    with tempfile.TemporaryDirectory(prefix="medres3d-verify-") as scratch:
        # the exported files are linked (or copied) beside a provisional sidecar in a scratch folder
        for name in FILES[format]:
            target = Path(scratch) / name
            try:
                os.link(folder / name, target)
            except OSError:
                shutil.copyfile(folder / name, target)
        (Path(scratch) / SIDECAR).write_text(sidecar_text, encoding="utf-8")
        net = exported_network(read_export(scratch), VERIFY_BACKEND[format], precision="fp32", device="cpu")
        with torch.inference_mode():
            got = net(probe)
    difference = float((got - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if not difference <= tolerance * scale:  # also catches NaN
        raise ModelFileError(
            folder / FILES[format][0],
            f"verification failed: logits differ from PyTorch by {difference:.3g} (tolerance "
            f"{tolerance * scale:.3g}) on a probe batch of {probe_size}; no {SIDECAR} written",
        )
    return difference


def _versions(format: str, medres3d_version: str) -> dict[str, str]:
    versions = {"medres3d": medres3d_version, "torch": torch.__version__.split("+")[0]}
    if format in ("onnx", "openvino"):
        versions["onnx_opset"] = str(ONNX_OPSET)
    if format == "openvino":
        versions["openvino"] = require_package("openvino").__version__
    return versions
