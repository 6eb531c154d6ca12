"""The exception types of medres3d.

Every error a user can trigger derives from :class:`MedRes3DError`, so a pipeline can catch
one type. Errors about a file or folder carry the ``path`` and a human ``reason`` and put both
in the message, so a batch error row says which scan failed and why.

Example:
    >>> from medres3d.errors import CorruptFileError
    >>> err = CorruptFileError("scan.dcm", "file is empty (0 bytes)")
    >>> print(err)
    scan.dcm: file is empty (0 bytes)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medres3d.io.dicom.series import DicomSeries


class MedRes3DError(Exception):
    """Base class of every error raised by medres3d on purpose."""


class ConfigError(MedRes3DError, ValueError):
    """An argument, option or configuration value is invalid (names the value and what is valid)."""


class FileError(MedRes3DError):
    """A problem with one file or folder; the message starts with its path."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across worker processes despite the two-argument init
        return (type(self), (self.path, self.reason))


class VolumeLoadError(FileError):
    """A scan could not be turned into a volume."""


class CorruptFileError(VolumeLoadError):
    """The file is empty, truncated, not of the format its name or header claims, or undecodable."""


class UnsupportedFormatError(VolumeLoadError):
    """The file is valid but of a kind medres3d does not read (unknown extension, 2D/5D, RGB...)."""


class NotAnImageError(VolumeLoadError):
    """A DICOM object without pixels (SEG, SR, RTSTRUCT, PR, DICOMDIR), or a folder with no series."""


class MultipleSeriesError(VolumeLoadError):
    """A folder holds several image series and none was chosen; ``series`` lists them."""

    def __init__(self, path: str | os.PathLike[str], reason: str, series: Sequence[DicomSeries] = ()) -> None:
        super().__init__(path, reason)
        self.series = list(series)

    def __reduce__(self):  # the list of series is not needed to rebuild the message
        return (type(self), (self.path, self.reason))


class SeriesGeometryError(VolumeLoadError):
    """A DICOM series whose slices do not form one regular volume (raised in strict mode)."""


class ResourceLimitError(VolumeLoadError):
    """A header claims more voxels or bytes than the configured limit; refused before allocation."""


class InvalidVoxelsError(VolumeLoadError):
    """Voxels are NaN/Inf or otherwise unusable."""


class ModelFileError(FileError):
    """A model file is not a valid medres3d model (tampered header, shape mismatch, pickle...)."""


class ManifestError(FileError):
    """A training manifest row is invalid; the reason names the row number."""


class BackendNotInstalledError(MedRes3DError, ImportError):
    """An optional inference runtime (ONNX Runtime, OpenVINO) was asked for but is not installed;
    the message names the extra to install (``pip install 'medres3d[openvino]'``)."""


class DeviceError(MedRes3DError, RuntimeError):
    """A device that was asked for is not there (no CUDA, or fewer GPUs than the index)."""


class NetworkOutputError(MedRes3DError, RuntimeError):
    """A network returned something other than ``(N, K)`` logits for a batch of N windows."""


class NormalizationNotFittedError(MedRes3DError):
    """Inference was asked of a network whose input normalization statistics were never fitted."""


class OutputWriteError(FileError):
    """Writing results failed (disk full, permission); rows already written are intact."""
