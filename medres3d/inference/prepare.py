"""Preparing one scan for the network: load it, apply the model file's preprocessing, record how.

:func:`prepare_scan` is what a loader process runs for each scan of a batch, so its result,
:class:`PreparedScan`, holds plain NumPy arrays: they travel back through a pipe as bytes, never
through torch's shared-memory tensor pickling (which deadlocked in workers forked from a busy
parent, issue 10). A failure is a :class:`FailedScan` value (:func:`prepare_or_fail`), so a stream
of thousands of scans goes on past a bad one.

The size rule (docs/inference.md): with the spec's ``size_mode="window"`` (the default) the
``spatial_size`` crop is a training-time convenience and is not applied here: the whole scan goes
to the sliding windows, larger ones in several windows, smaller ones padded. ``"crop-or-pad"`` and
``"resize"`` are the model's deliberate choice and are applied, with a warning whenever they change
the scan's size.

Example:
    >>> prepared = prepare_scan("scan.nii.gz", model_file.preprocessing)   # doctest: +SKIP
    >>> prepared.array.shape, prepared.meta["preprocessed_shape"]          # doctest: +SKIP
    ((1, 40, 40, 40), [40, 40, 40])
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medres3d.errors import ConfigError, MedRes3DError

if TYPE_CHECKING:
    import torch

    from medres3d.io.volume import Volume
    from medres3d.transforms import PreprocessingSpec


@dataclass
class PreparedScan:
    """A scan loaded and preprocessed, ready for the network (what loader processes hand back).

    Attributes:
        array: (C, H, W, D) float32 voxels on the preprocessed grid.
        affine: the preprocessed grid's RAS affine (voxel index to world mm).
        scan_shape, scan_affine: the loaded scan's own grid (for evidence maps in the scan's grid).
        warnings: loader warnings and any crop, pad or resize of the size step.
        source: the scan's path (None for an in-memory scan).
        seconds: time spent loading and preprocessing.
        meta: how the size was matched: ``preprocessed_shape`` (before the size step),
            ``shape`` (what the network's windows see) and ``size_mode``.
        volume: the loaded scan, when asked for (never sent between processes).
    """

    array: np.ndarray
    affine: np.ndarray
    scan_shape: tuple[int, ...]
    scan_affine: np.ndarray
    warnings: list[str]
    source: str | None
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)
    volume: Volume | None = None

    @property
    def tensor(self) -> torch.Tensor:
        """The voxels as a torch tensor sharing this scan's memory."""
        import torch

        return torch.from_numpy(self.array)


@dataclass
class FailedScan:
    """A scan that could not be prepared; carried through the loader as a value, not raised."""

    source: str | None
    error: str
    seconds: float


def as_volume(scan: Any, channels: Sequence[str] | None = None) -> Volume:
    """A path, Volume, DicomSeries, array (H, W, D) / (C, H, W, D) or tensor, as a Volume.

    A list or tuple of paths is one multi-sequence scan, one file per channel in ``channels``
    order (:func:`medres3d.io.channels.load_channels`).

    Raises:
        ConfigError: a list whose length is not the number of ``channels``, or another type.

    Example:
        >>> import numpy as np
        >>> as_volume(np.zeros((4, 4, 2))).array.shape
        (1, 4, 4, 2)
    """
    from medres3d.io.channels import load_scan
    from medres3d.io.volume import Volume

    if isinstance(scan, Volume):
        return scan
    if isinstance(scan, (list, tuple)):
        if channels is not None and len(scan) != len(channels):
            raise ConfigError(_channel_count_message(channels, f"{len(scan)} file(s)", scan))
        return load_scan(list(scan), channels)
    if isinstance(scan, (str, os.PathLike)):
        return load_scan(scan)
    if callable(getattr(scan, "load", None)):  # a DicomSeries found by scan_dicom_tree
        return scan.load()
    import torch

    if isinstance(scan, torch.Tensor):
        scan = scan.detach().cpu().numpy()
    if isinstance(scan, np.ndarray):
        array = scan[None] if scan.ndim == 3 else scan
        volume = Volume(np.asarray(array, dtype=np.float32), np.eye(4))
        volume.meta["warnings"].append("array input: assumed 1 mm voxels in RAS order (identity affine)")
        return volume
    raise ConfigError(
        "a scan must be a path, a list of paths (one per channel), a Volume, a DicomSeries, a numpy array "
        "or a torch tensor, "
        f"got {type(scan).__name__}"
    )


def _channel_count_message(channels: Sequence[str], got: str, scan: Any) -> str:
    shown = scan_source(scan) or type(scan).__name__
    return (f"{shown}: the model takes {len(channels)} channel(s) {list(channels)}, one file each in this "
            f"order, but the scan has {got}")


def _shape(values: Any) -> list[int]:
    return [int(s) for s in values]


def _match_size(tensor: Any, spec: PreprocessingSpec) -> tuple[Any, list[str]]:
    """Apply the spec's deliberate size step (``crop-or-pad`` / ``resize``), saying what it did."""
    from medres3d.transforms import size_transform

    step = size_transform(spec)
    before = _shape(tensor.shape[1:])
    if step is None or spec.size_mode == "window" or before == list(spec.spatial_size):
        return tensor, []
    out = step(tensor)
    after = _shape(out.shape[1:])
    if spec.size_mode == "resize":
        done = "resized"
    elif any(b > a for b, a in zip(before, after, strict=True)):
        done = "centre-cropped (part of the scan was not seen)" if all(
            b >= a for b, a in zip(before, after, strict=True)) else "centre-cropped and padded"
    else:
        done = "padded"
    return out, [
        f"preprocessed scan {'x'.join(map(str, before))} was {done} to {'x'.join(map(str, after))} "
        f"as the model file asks (preprocessing size_mode={spec.size_mode!r})"
    ]


def prepare_scan(
    scan: Any, preprocessing: PreprocessingSpec | None, *, keep_volume: bool = False
) -> PreparedScan:
    """Load ``scan`` and apply ``preprocessing`` (the model file's spec), timing both.

    Without a spec the scan's voxels are used as they are (with a warning). ``keep_volume`` keeps
    the loaded scan in the result (e.g. to display it under an overlay). The size step follows
    the spec's ``size_mode`` (see the module docstring): by default the whole scan is kept.

    Example:
        >>> import numpy as np
        >>> from medres3d.transforms import PreprocessingSpec
        >>> spec = PreprocessingSpec(spacing=None, spatial_size=(8, 8, 8))
        >>> prepared = prepare_scan(np.zeros((16, 8, 8), np.float32), spec)
        >>> prepared.array.shape, prepared.meta["size_mode"]
        ((1, 16, 8, 8), 'window')
    """
    start = time.perf_counter()
    channels = getattr(preprocessing, "channels", None)
    volume = as_volume(scan, channels)
    if channels is not None and volume.num_channels != len(channels):
        raise ConfigError(_channel_count_message(channels, f"{volume.num_channels} channel(s)", scan))
    warnings = list(volume.warnings)
    size_mode = None
    if preprocessing is None:
        array = volume.array
        affine = volume.affine
        preprocessed_shape = _shape(array.shape[1:])
        warnings.append("the model file has no preprocessing spec: the scan's voxels were used as they are")
    else:
        from medres3d.transforms import preprocess

        size_mode = preprocessing.size_mode
        # the size step is applied (or not) below, where what it does can be reported
        prepared = preprocess(volume, dataclasses.replace(preprocessing, spatial_size=None))
        preprocessed_shape = _shape(prepared.shape[1:])
        prepared, size_warnings = _match_size(prepared, preprocessing)
        warnings.extend(size_warnings)
        affine = np.asarray(prepared.affine, dtype=np.float64)
        array = prepared.as_tensor().float().numpy()
    source = volume.source if volume.source is not None else (
        os.fspath(scan) if isinstance(scan, (str, os.PathLike)) else None)
    return PreparedScan(
        array=np.ascontiguousarray(array, dtype=np.float32),
        affine=affine,
        scan_shape=tuple(volume.array.shape[1:]),
        scan_affine=volume.affine,
        warnings=warnings,
        source=source,
        seconds=time.perf_counter() - start,
        meta={"preprocessed_shape": preprocessed_shape, "shape": _shape(array.shape[1:]),
              "size_mode": size_mode},
        volume=volume if keep_volume else None,
    )


def describe_error(err: Exception) -> str:
    """An exception as one error text: project errors already name the file and the reason.

    Example:
        >>> describe_error(KeyError("x"))
        "KeyError: 'x'"
    """
    return str(err) if isinstance(err, MedRes3DError) else f"{type(err).__name__}: {err}"


def scan_source(scan: Any) -> str | None:
    """The path of ``scan`` when it is one (or a DicomSeries' folder, or the first of a list of
    channel files), else None.

    Example:
        >>> scan_source("a.nii.gz"), scan_source(["t1.nii", "t2.nii"]), scan_source(3)
        ('a.nii.gz', 't1.nii', None)
    """
    if isinstance(scan, (list, tuple)) and scan and isinstance(scan[0], (str, os.PathLike)):
        return os.fspath(scan[0])
    if isinstance(scan, (str, os.PathLike)):
        return os.fspath(scan)
    folder = getattr(scan, "folder", None)
    return os.fspath(folder) if folder is not None else None


def prepare_or_fail(scan: Any, preprocessing: PreprocessingSpec | None) -> PreparedScan | FailedScan:
    """Prepare one scan; a failure is returned as a value so that a stream of scans goes on.

    Example:
        >>> prepare_or_fail("missing.nii.gz", None).error   # doctest: +ELLIPSIS
        'missing.nii.gz: ...'
    """
    start = time.perf_counter()
    try:
        return prepare_scan(scan, preprocessing)
    except Exception as err:  # a per-scan failure must not stop a batch of thousands
        return FailedScan(scan_source(scan), describe_error(err), time.perf_counter() - start)
