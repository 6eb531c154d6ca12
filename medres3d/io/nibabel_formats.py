"""Analyze, NIfTI pairs, FreeSurfer MGH/MGZ and MINC1/MINC2 to a Volume, through nibabel.

``.hdr``/``.img`` (and their ``.gz`` forms) are Analyze 7.5 or a NIfTI pair, told apart by the
header's magic: a NIfTI pair goes through :func:`medres3d.io.nifti.load_nifti` (sform/qform rules,
stored-header checks), Analyze through here. ``.mgh``/``.mgz`` are FreeSurfer volumes, ``.mnc`` is
MINC1 (netCDF) or MINC2 (HDF5, read with h5py). Every affine is nibabel's ``img.affine`` exactly
(RAS+ world; for Analyze, which stores no orientation, nibabel's default: voxel sizes, x flipped,
origin from the header or the centre, with an ``analyze-orientation`` warning).

As for NIfTI, the header is read and checked first (dimensions against ``max_voxels``, bytes
against ``max_bytes`` and the file size) so a header claiming a huge image is refused before
anything is allocated. nibabel reads a MINC1 file's variables eagerly when it is opened, so its
header is first read through a memory map (no allocation). A fourth axis (MGH frames, Analyze
time, MINC's non-spatial dimension wherever it is stored) becomes the channels.

Example:
    >>> from medres3d.io.nibabel_formats import load_nibabel
    >>> vol = load_nibabel("brain.mgz")    # doctest: +SKIP
    >>> vol.meta["format"]                 # doctest: +SKIP
    'MGH'
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from medres3d.errors import CorruptFileError, ResourceLimitError, UnsupportedFormatError
from medres3d.io.limits import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_VOXELS,
    check_byte_count,
    check_voxel_count,
    validate_max_bytes,
)
from medres3d.io.nifti import check_data_dtype, check_file_size, load_nifti, native_or
from medres3d.io.volume import Volume
from medres3d.io.voxels import check_finite, resolve_dtype, validate_nan_policy

NIBABEL_SUFFIXES: tuple[str, ...] = (".hdr", ".img", ".hdr.gz", ".img.gz", ".mgh", ".mgz", ".mnc")
_GZIP_MAGIC = b"\x1f\x8b"
_NETCDF_MAGIC = b"CDF"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# What nibabel, netCDF, h5py and gzip raise on damaged files (nibabel's own errors derive from Exception).
_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, zlib.error, struct.error)


def is_nibabel_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in one of :data:`NIBABEL_SUFFIXES` (any case)."""
    return os.fspath(path).lower().endswith(NIBABEL_SUFFIXES)


def load_nibabel(
    path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    nan_policy: str = "raise",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> Volume:
    """Read an Analyze / NIfTI-pair / MGH / MGZ / MINC file into a Volume ``(C, H, W, D)``.

    Args:
        path: the file (for a pair, either the ``.hdr`` or the ``.img``).
        dtype: ``"float32"`` (default), ``"float64"`` or ``"native"`` (nibabel's scaled type).
        max_voxels: refuse files whose header claims more voxels (None: no limit).
        nan_policy: ``"raise"`` (default), ``"zero"`` or ``"keep"`` for NaN/Inf voxels.
        max_bytes: refuse files whose header needs more bytes read (decompressed for ``.gz`` and
            ``.mgz``) than this (None: no limit; MINC's bytes are bounded by ``max_voxels``).

    Raises:
        CorruptFileError: empty, truncated or unreadable file, the other file of a pair missing,
            zero/negative dimensions, a singular or non-finite affine.
        UnsupportedFormatError: 2D, complex or RGB data, several non-spatial axes.
        ResourceLimitError: the header claims more than ``max_voxels`` voxels or ``max_bytes`` bytes.
        InvalidVoxelsError: NaN/Inf voxels with ``nan_policy="raise"``.

    Example:
        >>> import numpy as np, nibabel as nib, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "t.mgz")
        >>> nib.save(nib.MGHImage(np.zeros((4, 5, 6), np.float32), np.diag([2, 2, 3, 1.0])), path)
        >>> vol = load_nibabel(path)
        >>> vol.shape, vol.spacing, vol.meta["format"]
        ((1, 4, 5, 6), (2.0, 2.0, 3.0), 'MGH')
    """
    import nibabel as nib

    out_dtype = resolve_dtype(dtype)
    validate_nan_policy(nan_policy)
    validate_max_bytes(max_bytes)
    path = Path(path)
    start = _file_start(path)
    if path.name.lower().endswith(".mnc"):
        _check_minc_header(path, start, max_voxels)
    try:
        img = nib.load(path, mmap=False)
    except nib.filebasedimages.ImageFileError as err:
        raise CorruptFileError(path, f"not a readable {_kind(path)} file: {err}") from err
    except (nib.spatialimages.HeaderDataError, nib.minc1.MincError, *_READ_ERRORS) as err:
        raise CorruptFileError(
            path, f"not a readable {_kind(path)} header: {type(err).__name__}: {err}"
        ) from err
    image_path = Path(img.file_map["image"].filename)
    if not image_path.is_file():  # nibabel opens the voxel file of a pair only when reading voxels
        raise CorruptFileError(path, f"the voxel file of this pair, {image_path.name}, is missing")
    if isinstance(img, nib.Nifti1Pair):
        return load_nifti(
            path, dtype=dtype, max_voxels=max_voxels, nan_policy=nan_policy, max_bytes=max_bytes
        )
    if not isinstance(img, nib.AnalyzeImage | nib.MGHImage | nib.Minc1Image):
        raise UnsupportedFormatError(
            path, f"nibabel reads it as {type(img).__name__}, not a supported volume"
        )

    shape = tuple(int(n) for n in img.shape)
    spatial, channel_axis = _axes(img, shape, path)
    num_channels = shape[channel_axis] if channel_axis is not None else 1
    check_voxel_count((num_channels, *(shape[a] for a in spatial)), path, max_voxels)
    check_data_dtype(np.dtype(img.get_data_dtype()), path)
    if not isinstance(img, nib.Minc1Image):  # Analyze and MGH: an offset and raw voxels
        proxy = img.dataobj
        data_end = check_byte_count(proxy.offset, math.prod(shape) * proxy.dtype.itemsize, path, max_bytes)
        if not image_path.name.lower().endswith((".gz", ".mgz")):
            check_file_size(image_path, data_end)
    affine = _checked_affine(img, path)
    try:
        data = native_or(np.asanyarray(img.dataobj), out_dtype)
    except MemoryError as err:
        raise ResourceLimitError(path, f"not enough memory for {shape} voxels") from err
    except (nib.minc1.MincError, *_READ_ERRORS) as err:
        reason = f"cannot read the voxel data (truncated or damaged file?): {type(err).__name__}: {err}"
        raise CorruptFileError(image_path, reason) from err

    warnings: list[str] = []
    if isinstance(img, nib.AnalyzeImage):
        warnings.append(
            "analyze-orientation: Analyze 7.5 stores voxel sizes but no orientation; the affine is "
            "nibabel's default (x flipped, i.e. radiological storage, origin from the header or the centre)"
        )
    data = check_finite(data, path, nan_policy, warnings)
    if channel_axis is None:
        array = data.reshape(*(shape[a] for a in spatial), 1, order="A")
        array = np.moveaxis(array, -1, 0)
    else:
        array = np.moveaxis(data, [channel_axis, *spatial], [0, 1, 2, 3])
    meta = {
        "format": _format_name(img),
        "affine_source": "nibabel",
        "stored_dtype": str(img.get_data_dtype()),
        "warnings": warnings,
    }
    return Volume(array, affine, modality=None, meta=meta, source=os.fspath(path))


def _file_start(path: Path) -> bytes:
    """The first bytes of the file; an empty file, or a ``.gz`` that is not gzip, is refused here."""
    try:
        with open(path, "rb") as f:
            start = f.read(8)
    except OSError as err:
        raise CorruptFileError(path, f"cannot open: {err.strerror or err}") from err
    if not start:
        raise CorruptFileError(path, "file is empty (0 bytes)")
    if path.name.lower().endswith((".gz", ".mgz")) and start[:2] != _GZIP_MAGIC:
        raise CorruptFileError(
            path, f"named {path.suffix} but not gzip-compressed (starts with {start[:4]!r})"
        )
    return start


def _check_minc_header(path: Path, start: bytes, max_voxels: int | None) -> None:
    """A MINC1 file's image shape checked through a memory map, before nibabel reads it whole.

    nibabel opens MINC1 (netCDF) from a file object, which reads every variable into memory at
    once: a header claiming a huge image would be allocated before any check. MINC2 (HDF5) is
    read lazily by h5py, so nibabel's own header read is enough there.
    """
    if start.startswith(_HDF5_MAGIC):
        return
    if not start.startswith(_NETCDF_MAGIC):
        raise CorruptFileError(
            path, f"not a MINC file: neither netCDF (MINC1) nor HDF5 (MINC2), starts with {start[:4]!r}"
        )
    from nibabel.externals.netcdf import netcdf_file

    try:
        with netcdf_file(path, "r", mmap=True) as mincfile:
            image = mincfile.variables.get("image")
            shape = None if image is None else tuple(int(n) for n in image.shape)
            del image  # the mmap closes only when no array refers to it
    except _READ_ERRORS as err:
        # a truncated file ends before the variables its header declares
        raise CorruptFileError(
            path, f"not a readable MINC1 file (truncated?): {type(err).__name__}: {err}"
        ) from err
    if shape is None:
        raise CorruptFileError(path, "MINC1 file without an 'image' variable")
    check_voxel_count(shape, path, max_voxels)


def _axes(img, shape: tuple[int, ...], path: Path) -> tuple[list[int], int | None]:
    """The three spatial axes of the data array (in the affine's order) and the channel axis, if any."""
    import nibabel as nib

    if any(n <= 0 for n in shape):
        raise CorruptFileError(path, f"header dimensions {list(shape)} must all be positive")
    if len(shape) < 3:
        raise UnsupportedFormatError(
            path, f"{len(shape)}D image of shape {shape}; a 3D or 4D volume is required"
        )
    if isinstance(img, nib.Minc1Image):
        # MINC names its dimensions; the affine maps the "*space" ones, in stored order, and a time
        # (or other) dimension may come first. nibabel keeps the names on its (private) file wrapper.
        names = list(getattr(img.dataobj.minc_file, "_dim_names", ()))
        spatial = [a for a, name in enumerate(names) if str(name).endswith("space")]
        if len(spatial) != 3 or len(names) != len(shape):
            raise UnsupportedFormatError(
                path, f"MINC dimensions {names}: three spatial dimensions are required"
            )
    else:
        spatial = [0, 1, 2]
    others = [a for a in range(len(shape)) if a not in spatial and shape[a] > 1]
    if len(others) > 1:
        raise UnsupportedFormatError(
            path,
            f"{len(shape)}D image of shape {shape} has several non-spatial axes longer than 1; "
            "only one (channels/time) is supported",
        )
    if others:
        return spatial, others[0]
    singletons = [a for a in range(len(shape)) if a not in spatial]
    return spatial, singletons[0] if len(singletons) == 1 else None


def _checked_affine(img, path: Path) -> np.ndarray:
    affine = np.asarray(img.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise CorruptFileError(path, f"the affine is not a finite 4x4 matrix:\n{affine}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CorruptFileError(path, f"the affine is singular (a zero voxel size?):\n{affine}")
    return affine


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".mgh", ".mgz")):
        return "MGH/MGZ"
    if name.endswith(".mnc"):
        return "MINC"
    return "Analyze/NIfTI-pair"


def _format_name(img) -> str:
    import nibabel as nib

    if isinstance(img, nib.Minc2Image):
        return "MINC2"
    if isinstance(img, nib.Minc1Image):
        return "MINC1"
    if isinstance(img, nib.MGHImage):
        return "MGH"
    return "Analyze"
