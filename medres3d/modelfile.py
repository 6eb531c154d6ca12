"""Model files: one ``.safetensors`` file holding a ResNet3D and everything needed to use it.

Tensors: every entry of the network's ``state_dict`` (weights, BatchNorm buffers, the input
normalization statistics and their ``fitted`` flag). Header metadata (JSON strings):
``format`` (``"medres3d-model/1"``), ``config`` (the :class:`ResNet3DConfig`), ``class_names``,
``preprocessing`` (a :class:`~medres3d.transforms.PreprocessingSpec` or ``null``) and ``training``
(provenance). Loading never unpickles anything: the header is parsed as JSON and the tensors are
read by safetensors; anything that is not exactly a medres3d model raises
:class:`~medres3d.errors.ModelFileError` naming the file and the reason. The format is described
in ``docs/model_file.md``.

Example:
    >>> from medres3d import resnet3d
    >>> net = resnet3d((32, 32, 16), 2, initial_num_filters=4, num_filters=(4, 8),
    ...                stack_depth=(1, 1))                                      # doctest: +SKIP
    >>> save_model(net, "model.safetensors", class_names=["normal", "lesion"])  # doctest: +SKIP
    >>> read_model("model.safetensors").class_names                             # doctest: +SKIP
    ['normal', 'lesion']
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medres3d._atomic import write_atomically
from medres3d.errors import (
    ConfigError,
    MedRes3DError,
    ModelFileError,
    NormalizationNotFittedError,
)

if TYPE_CHECKING:
    import torch

    from medres3d.models.resnet3d import ResNet3D
    from medres3d.transforms import PreprocessingSpec

FORMAT = "medres3d-model/1"
METADATA_KEYS = ("format", "config", "class_names", "preprocessing", "training")

# A safetensors header is JSON; a real model's header is a few tens of kB. Refusing absurd
# lengths up front keeps a tampered length field from making us read gigabytes.
_MAX_HEADER_BYTES = 64 * 1024 * 1024


@dataclass
class ModelFile:
    """The content of a model file.

    Attributes:
        net: the network, in eval mode, on the requested device.
        class_names: one name per output of the network, in output order.
        preprocessing: how inputs must be prepared, or None when the file carries no spec.
        training: provenance written at training time (data hash, epochs, metrics, versions...).
        path: the file it was read from.
    """

    net: ResNet3D
    class_names: list[str]
    preprocessing: PreprocessingSpec | None
    training: dict[str, Any] = field(default_factory=dict)
    path: str | None = None


def save_model(
    net: ResNet3D,
    path: str | os.PathLike[str],
    *,
    class_names: list[str] | tuple[str, ...],
    preprocessing: PreprocessingSpec | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``net`` and its metadata to one ``.safetensors`` file, atomically.

    The file appears complete or not at all: it is written to a temporary file in the same
    folder and renamed over ``path``.

    Args:
        net: a :class:`~medres3d.models.resnet3d.ResNet3D` (a DDP wrapper is unwrapped).
        path: destination file.
        class_names: one distinct name per network output.
        preprocessing: the spec the training data was prepared with (strongly recommended).
        training: JSON-serializable provenance (data hash, epochs, metrics, versions).

    Returns:
        The path written.

    Example:
        >>> save_model(net, "run/model.safetensors", class_names=["a", "b"],
        ...            preprocessing=PreprocessingSpec.preset("ct"))                # doctest: +SKIP
    """
    from safetensors.torch import save_file

    net = getattr(net, "module", net)
    path = Path(path)
    names = _check_class_names(list(class_names), net.config.num_classes)
    metadata = {
        "format": FORMAT,
        "config": json.dumps(net.config.to_dict()),
        "class_names": json.dumps(names),
        "preprocessing": json.dumps(None if preprocessing is None else preprocessing.to_dict()),
        "training": json.dumps(_json_safe(training or {}), allow_nan=False),
    }
    # safetensors refuses tensors that share storage; copies also detach from autograd and the device.
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in net.state_dict().items()}
    # fsync: a model file is the product of a whole training run; a power loss must not empty it.
    return write_atomically(
        path, lambda tmp: save_file(tensors, tmp, metadata=metadata), "model file", fsync=True
    )


def read_model(path: str | os.PathLike[str], map_location: str = "cpu") -> ModelFile:
    """Read a model file written by :func:`save_model`, validating everything.

    Raises:
        ModelFileError: the file is not a safetensors file (e.g. a pickle), the header is
            damaged, the format or metadata is wrong, or the tensors don't match the config.

    Example:
        >>> mf = read_model("model.safetensors")                  # doctest: +SKIP
        >>> mf.net(x).softmax(1), mf.class_names, mf.preprocessing  # doctest: +SKIP
    """
    from safetensors import safe_open

    path = Path(path)
    raw_meta = _read_header_metadata(path)
    meta = _parse_metadata(path, raw_meta)
    net = _build_network(path, meta["config"])
    class_names = _check_names_in_file(path, meta["class_names"], net.config.num_classes)
    preprocessing = _parse_preprocessing(path, meta["preprocessing"])
    training = meta["training"]
    if not isinstance(training, dict):
        raise ModelFileError(path, f"metadata 'training' must be a JSON object, got {training!r}")

    expected = net.state_dict()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            stored = set(reader.keys())
            _check_tensor_names(path, stored, set(expected))
            tensors = {}
            for name, reference in expected.items():
                tensor = reader.get_tensor(name)
                _check_tensor(path, name, tensor, reference)
                tensors[name] = tensor
    except MedRes3DError:
        raise
    except Exception as err:  # safetensors raises its own error types for damaged payloads
        raise ModelFileError(path, f"the tensor data is damaged or truncated: {err}") from err
    net.load_state_dict(tensors, strict=True)
    net.eval()
    net.to(map_location)
    return ModelFile(net, class_names, preprocessing, training, str(path))


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``training`` metadata of a model file from its header alone (no network, no tensors).

    Raises:
        ModelFileError: as :func:`read_model` for a damaged header or metadata.

    Example:
        >>> read_provenance("model.safetensors").get("calibration")   # doctest: +SKIP
        {'method': 'temperature', 'temperature': 1.42, ...}
    """
    path = Path(path)
    training = _parse_metadata(path, _read_header_metadata(path))["training"]
    if not isinstance(training, dict):
        raise ModelFileError(path, f"metadata 'training' must be a JSON object, got {training!r}")
    return training


def load_model(path: str | os.PathLike[str], map_location: str = "cpu") -> ResNet3D:
    """Load only the network of a model file (see :func:`read_model` for the metadata).

    Example:
        >>> net = load_model("model.safetensors")   # doctest: +SKIP
        >>> net.config.num_classes                  # doctest: +SKIP
        2
    """
    return read_model(path, map_location).net


def require_fitted_normalization(net: ResNet3D, path: str | os.PathLike[str] | None = None) -> None:
    """Refuse a network whose input normalization statistics were never fitted.

    A network with ``normalization="none"`` needs no statistics and passes. Inference calls this
    before using a model: unfitted statistics (mean 0, std 1) would silently feed the network
    inputs on a different scale from its training data.

    Raises:
        NormalizationNotFittedError: naming the file (when given) and how to fix it.

    Example:
        >>> require_fitted_normalization(load_model("model.safetensors"))   # doctest: +SKIP
    """
    try:
        getattr(net, "module", net).input.require_fitted()
    except NormalizationNotFittedError as err:
        if path is None:
            raise
        raise NormalizationNotFittedError(f"{os.fspath(path)}: {err}") from err


def _json_safe(value: Any) -> Any:
    """Provenance as strict JSON: NaN/inf (an undefined AUC) become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ConfigError(f"training provenance value {value!r} of type {type(value).__name__} "
                      "is not JSON-serializable")


def _check_class_names(names: list[Any], num_classes: int) -> list[str]:
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"class_names must be non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"class_names must be distinct, got {names!r}")
    if len(names) != num_classes:
        raise ConfigError(
            f"class_names has {len(names)} names {names!r} but the network has {num_classes} outputs"
        )
    return names


def _other_format(head: bytes) -> str | None:
    """What a file that is not a safetensors file looks like, from its first bytes (None: unknown).

    Only called once the first 8 bytes failed as a header length. A real model file, even a
    truncated one, is never taken for text (its length field has zero high bytes) nor for gzip
    (its header's "{" follows the length field).
    """
    if head[:2] == b"\x1f\x8b" and head[8:9] != b"{":
        return "a gzip-compressed file (a .nii.gz scan?)"
    if head[128:132] == b"DICM":
        return "a DICOM file"
    for order in "<>":
        if len(head) >= 348 and struct.unpack(f"{order}i", head[:4])[0] in (348, 540) and (
                head[344:347] in (b"n+1", b"ni1") or head[4:7] in (b"n+2", b"ni2")):
            return "a NIfTI image (a scan?)"
    text = _as_text(head)
    if text is None or _is_text_pickle(head):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first[:1] in ("{", "["):
        return "a text file (JSON?)"
    if first.startswith(("---", "#")) or ":" in first:
        return "a text file (YAML? a training config?)"
    if "," in first:
        return "a text file (CSV? a manifest?)"
    return "a text file"


def _is_text_pickle(head: bytes) -> bool:
    """A protocol-0 pickle is printable text too; it keeps the binary-file message (not unpickled)."""
    import pickletools

    try:  # genops only decodes opcodes: nothing is imported or executed
        return any(opcode.name == "STOP" for opcode, _, _ in pickletools.genops(head))
    except Exception:  # any decoding failure (ValueError, struct.error...) means "not a pickle"
        return False


def _as_text(head: bytes) -> str | None:
    """``head`` decoded as UTF-8 text of printable characters, or None."""
    for cut in range(4):  # the read may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8-sig")
        except UnicodeDecodeError:
            continue
        return text if text and all(c.isprintable() or c in "\t\n\r\f\v" for c in text) else None
    return None


def _read_header_metadata(path: Path) -> dict[str, Any]:
    """Parse the safetensors header by hand, so that nothing but JSON is ever interpreted."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelFileError(path, f"not a safetensors model file: only {size} bytes")
            (length,) = struct.unpack("<Q", prefix)
            plausible = 2 <= length <= min(size - 8, _MAX_HEADER_BYTES)
            # A real header starts with "{"; only then can the 8 bytes be a length and not the
            # magic of another format (0x80 is also a valid low byte of a header length).
            if not (plausible and handle.read(1) == b"{"):
                handle.seek(0)
                other = _other_format(handle.read(1024))
                if other is not None:
                    raise ModelFileError(path, f"not a medres3d model file: it looks like {other}; pass the "
                                               "model.safetensors file written by `medres3d train`")
                if prefix[:2] == b"PK":
                    raise ModelFileError(path, "not a safetensors model file: it is a zip archive "
                                               "(a torch.save checkpoint?); it was not opened")
                if prefix[:1] == b"\x80":
                    raise ModelFileError(path, "not a safetensors model file: it is a Python pickle "
                                               "(a torch.save checkpoint?); it was not unpickled")
                if not plausible:
                    raise ModelFileError(
                        path, f"not a valid safetensors file: the header length field says {length} "
                              f"bytes but the file has {size - 8} bytes after it (truncated or tampered)")
            handle.seek(8)
            header_bytes = handle.read(length)
    except FileNotFoundError as err:
        raise ModelFileError(path, "file not found") from err
    except IsADirectoryError as err:
        raise ModelFileError(path, "is a folder, not a model file") from err
    except OSError as err:
        raise ModelFileError(path, f"cannot read the file: {err}") from err
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # deep nesting recurses
        raise ModelFileError(path, f"not a valid safetensors file: the header is not valid JSON "
                                   f"(truncated or tampered): {err}") from err
    if not isinstance(header, dict):
        raise ModelFileError(path, "not a valid safetensors file: the header is not a JSON object")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        raise ModelFileError(path, "not a medres3d model file: the safetensors header has no metadata "
                                   f"(expected format {FORMAT!r})")
    _check_data_offsets(path, header, size - 8 - length)
    return meta


def _check_data_offsets(path: Path, header: dict[str, Any], data_size: int) -> None:
    """Every tensor's byte range must lie inside the data section (a tampered header would not)."""
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size):
            raise ModelFileError(path, f"not a valid safetensors file: tensor {name!r} has data offsets "
                                       f"{offsets!r} outside the {data_size}-byte data section")


def _parse_metadata(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    fmt = raw.get("format")
    if fmt != FORMAT:
        found = "no 'format' entry" if fmt is None else f"format {fmt!r}"
        raise ModelFileError(path, f"not a medres3d model file: {found}, expected {FORMAT!r}")
    missing = [k for k in METADATA_KEYS if k not in raw]
    if missing:
        raise ModelFileError(path, f"metadata is missing {', '.join(missing)}")
    parsed = {}
    for key in METADATA_KEYS[1:]:
        try:
            parsed[key] = json.loads(raw[key])
        except (TypeError, json.JSONDecodeError, RecursionError) as err:
            raise ModelFileError(path, f"metadata {key!r} is not valid JSON: {err}") from err
    return parsed


def _build_network(path: Path, config: Any) -> ResNet3D:
    import torch

    from medres3d.models.resnet3d import ResNet3D, ResNet3DConfig

    try:
        parsed = ResNet3DConfig.from_dict(config)
        # Sized on the meta device first (no memory): a tampered config must not make us allocate
        # a network far larger than the tensors the file can hold.
        with torch.device("meta"):
            needed = sum(t.numel() * t.element_size() for t in ResNet3D(parsed).state_dict().values())
    except (ConfigError, TypeError) as err:
        raise ModelFileError(path, f"metadata 'config' is not a valid ResNet3D config: {err}") from err
    size = path.stat().st_size
    if needed > size:
        raise ModelFileError(
            path, f"metadata 'config' describes a network of {needed} bytes of tensors, but the file has "
                  f"only {size} bytes (tampered config?)")
    return ResNet3D(parsed)


def _check_names_in_file(path: Path, names: Any, num_classes: int) -> list[str]:
    if not isinstance(names, list):
        raise ModelFileError(path, f"metadata 'class_names' must be a JSON list, got {names!r}")
    try:
        return _check_class_names(names, num_classes)
    except ConfigError as err:
        raise ModelFileError(path, f"metadata 'class_names' is invalid: {err}") from err


def _parse_preprocessing(path: Path, data: Any) -> PreprocessingSpec | None:
    if data is None:
        return None
    from medres3d.transforms import PreprocessingSpec

    try:
        return PreprocessingSpec.from_dict(data)
    except (ConfigError, TypeError, KeyError) as err:
        raise ModelFileError(path, f"metadata 'preprocessing' is not a valid spec: {err}") from err


def _check_tensor_names(path: Path, stored: set[str], expected: set[str]) -> None:
    missing, unexpected = sorted(expected - stored), sorted(stored - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else ""))
        raise ModelFileError(path, "tensors don't match the config: " + "; ".join(parts))


def _check_tensor(path: Path, name: str, tensor: torch.Tensor, reference: torch.Tensor) -> None:
    if tuple(tensor.shape) != tuple(reference.shape):
        raise ModelFileError(path, f"tensor {name!r} has shape {tuple(tensor.shape)} but the config "
                                   f"needs {tuple(reference.shape)}")
    if tensor.dtype != reference.dtype:
        raise ModelFileError(path, f"tensor {name!r} has dtype {tensor.dtype} but the network "
                                   f"needs {reference.dtype}")
