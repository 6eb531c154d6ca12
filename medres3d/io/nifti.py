"""NIfTI (``.nii``, ``.nii.gz``) to :class:`~medres3d.io.volume.Volume`, through nibabel.

The header is read and checked first (dimensions, voxel-count limit, data type, affine) so a
hostile or damaged file is refused before its voxels are read. Geometry is nibabel's
``img.affine`` exactly: the sform when ``sform_code > 0``, else the qform when
``qform_code > 0``, else the pixdim-only fallback (recorded as a warning). ``scl_slope`` /
``scl_inter`` are applied as nibabel applies them. A 4D file's fourth axis becomes the channels;
5D+ files are accepted only when at most one non-spatial axis is longer than 1 (e.g. a
``(X, Y, Z, 1, 3)`` vector field gives 3 channels).

Example:
    >>> from medres3d.io.nifti import load_nifti
    >>> vol = load_nifti("scan.nii.gz")   # doctest: +SKIP
    >>> vol.array.shape, vol.meta["affine_source"]   # doctest: +SKIP
    ((1, 256, 256, 120), 'sform')
"""

from __future__ import annotations

import io
import math
import os
import zlib
from pathlib import Path

import numpy as np

from medres3d.errors import CorruptFileError, ResourceLimitError, UnsupportedFormatError
from medres3d.io.limits import DEFAULT_MAX_VOXELS, check_voxel_count
from medres3d.io.volume import Volume
from medres3d.io.voxels import check_finite, resolve_dtype, validate_nan_policy

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_TAIL_BYTES = 2**20
# what nibabel, gzip and zlib raise on damaged input (nibabel's own errors derive from Exception)
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES)


def load_nifti(
    path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    nan_policy: str = "raise",
) -> Volume:
    """Read a ``.nii`` / ``.nii.gz`` file into a Volume ``(C, H, W, D)`` with its RAS+ affine.

    Args:
        path: the NIfTI-1 or NIfTI-2 file.
        dtype: ``"float32"`` (default), ``"float64"`` or ``"native"`` (see :mod:`medres3d.io.voxels`).
        max_voxels: refuse files whose header claims more voxels (None: no limit).
        nan_policy: ``"raise"`` (default), ``"zero"`` or ``"keep"`` for NaN/Inf voxels.

    Raises:
        CorruptFileError: empty, truncated, not NIfTI, bad gzip, zero/negative dimensions,
            singular or non-finite affine.
        UnsupportedFormatError: 2D, complex or RGB data, more than one non-spatial axis.
        ResourceLimitError: the header claims more than ``max_voxels`` voxels.
        InvalidVoxelsError: NaN/Inf voxels with ``nan_policy="raise"``.

    Example:
        >>> import numpy as np, nibabel as nib, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "t.nii.gz")
        >>> nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([2, 2, 3, 1.0])), path)
        >>> vol = load_nifti(path)
        >>> vol.shape, vol.spacing, vol.array.dtype
        ((1, 4, 5, 6), (2.0, 2.0, 3.0), dtype('float32'))
    """
    import nibabel as nib

    out_dtype = resolve_dtype(dtype)
    validate_nan_policy(nan_policy)
    path = Path(path)
    _check_file_start(path)
    try:
        img = nib.load(path, mmap=False)
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, *_READ_ERRORS) as err:
        raise CorruptFileError(path, f"not a readable NIfTI header: {err}") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise UnsupportedFormatError(path, f"{type(img).__name__} file named like NIfTI; expected NIfTI-1/2")

    shape = _checked_shape(img.header, path)
    num_channels = math.prod(shape[3:])
    check_voxel_count((*shape[:3], num_channels), path, max_voxels)
    _check_data_dtype(img.header.get_data_dtype(), path)
    affine, affine_source = _checked_affine(img, path)
    warnings: list[str] = []
    if path.name.lower().endswith(".gz"):
        img = _decompressed_image(img, path, warnings)
    else:
        _check_uncompressed_size(img, path)

    try:
        if out_dtype is None:
            data = np.asanyarray(img.dataobj)
            if not data.dtype.isnative:  # big-endian files: torch and most code need native order
                data = data.astype(data.dtype.newbyteorder("="))
        else:
            data = np.asanyarray(img.dataobj, dtype=out_dtype).astype(out_dtype, copy=False)
    except MemoryError as err:
        raise ResourceLimitError(path, f"not enough memory for {shape} voxels") from err
    except _READ_ERRORS as err:
        reason = f"cannot read the voxel data (truncated or damaged file?): {err}"
        raise CorruptFileError(path, reason) from err

    if affine_source == "pixdim":
        warnings.append("sform_code and qform_code are both 0: geometry from pixdim only (no orientation)")
    data = check_finite(data, path, nan_policy, warnings)
    # (X, Y, Z[, 1..., C, 1...]) -> (C, X, Y, Z): a view for every layout nibabel returns
    array = np.moveaxis(data.reshape(*shape[:3], num_channels, order="A"), -1, 0)
    header = img.header
    # nibabel moves scl_slope/scl_inter from the header into the data proxy on load
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    meta = {
        "format": type(img).__name__.replace("Image", ""),
        "affine_source": affine_source,
        "sform_code": int(header["sform_code"]),
        "qform_code": int(header["qform_code"]),
        "rescale": {"slope": slope, "intercept": inter} if (slope, inter) != (1.0, 0.0) else None,
        "description": header["descrip"].item().decode("latin-1").strip("\x00 ") or None,
        "stored_dtype": str(header.get_data_dtype()),
        "warnings": warnings,
    }
    return Volume(array, affine, modality=None, meta=meta, source=os.fspath(path))


def _check_file_start(path: Path) -> None:
    """Empty files and gzip-named files that are not gzip get a precise message."""
    try:
        with open(path, "rb") as f:
            start = f.read(2)
    except OSError as err:
        raise CorruptFileError(path, f"cannot open: {err.strerror or err}") from err
    if not start:
        raise CorruptFileError(path, "file is empty (0 bytes)")
    if path.name.lower().endswith(".gz") and start != _GZIP_MAGIC:
        raise CorruptFileError(path, f"named .gz but not gzip-compressed (starts with {start!r})")


def _checked_shape(header, path: Path) -> tuple[int, ...]:
    ndim = int(header["dim"][0])
    dims = [int(n) for n in header["dim"][1 : ndim + 1]]
    if ndim < 1 or ndim > 7:
        raise CorruptFileError(path, f"header dim[0] (number of dimensions) is {ndim}, valid is 1..7")
    if any(n <= 0 for n in dims):
        raise CorruptFileError(path, f"header dimensions {dims} must all be positive")
    if ndim < 3:
        reason = f"{ndim}D image of shape {tuple(dims)}; a 3D or 4D volume is required"
        raise UnsupportedFormatError(path, reason)
    if sum(n > 1 for n in dims[3:]) > 1:
        raise UnsupportedFormatError(
            path,
            f"{ndim}D image of shape {tuple(dims)} has several non-spatial axes longer than 1; "
            "only one (channels/time) is supported",
        )
    return tuple(dims)


def _check_data_dtype(dtype: np.dtype, path: Path) -> None:
    if dtype.fields is not None:
        raise UnsupportedFormatError(path, f"RGB/structured voxels ({dtype}) are not supported")
    if np.issubdtype(dtype, np.complexfloating):
        raise UnsupportedFormatError(path, f"complex voxels ({dtype}) are not supported")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise UnsupportedFormatError(path, f"voxel type {dtype} is not supported")


def _checked_affine(img, path: Path) -> tuple[np.ndarray, str]:
    header = img.header
    if int(header["sform_code"]) > 0:
        source = "sform"
    elif int(header["qform_code"]) > 0:
        source = "qform"
    else:
        source = "pixdim"
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise CorruptFileError(path, f"the {source} affine has NaN/Inf entries:\n{affine}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CorruptFileError(path, f"the {source} affine is singular (a zero voxel size?):\n{affine}")
    return affine, source


def _decompressed_image(img, path: Path, warnings: list[str]):
    """Decompress a ``.nii.gz`` in one bounded pass and return the image over the bytes.

    nibabel reads only the bytes the header needs and so never reaches the gzip trailer: a
    file damaged inside the deflate stream can decode to wrong voxels without any error. Reading
    to the end of the stream lets zlib verify the CRC; the output is capped at the image size
    plus ``_GZIP_TAIL_BYTES`` so a gzip bomb (a small image followed by gigabytes of padding)
    costs nothing.
    """
    header = img.header
    needed = int(header.get_data_offset()) + math.prod(img.shape) * header.get_data_dtype().itemsize
    limit = needed + _GZIP_TAIL_BYTES
    try:
        parts, complete = _gunzip(path.read_bytes(), limit)
    except zlib.error as err:
        raise CorruptFileError(path, f"damaged gzip stream (bad data or CRC): {err}") from err
    except MemoryError as err:
        raise ResourceLimitError(path, f"not enough memory to decompress {needed} bytes") from err
    raw = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(raw) < needed:
        reason = f"truncated: the header needs {needed} bytes decompressed, the gzip stream holds {len(raw)}"
        raise CorruptFileError(path, reason)
    if not complete:
        if len(raw) < limit:
            raise CorruptFileError(path, "truncated: the gzip stream ends without its end marker and CRC")
        warnings.append(
            f"more than {_GZIP_TAIL_BYTES} bytes follow the image in the gzip stream; they were not "
            "decompressed, so the gzip CRC was not verified"
        )
    return type(img).from_stream(io.BytesIO(raw))


def _gunzip(compressed: bytes, limit: int) -> tuple[list[bytes], bool]:
    """Decompress gzip members (bgzip writes many) up to ``limit`` bytes; zlib checks each CRC.

    Returns the decompressed parts and whether the stream ended cleanly (every member complete).
    """
    parts: list[bytes] = []
    total = 0
    while True:
        member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        part = member.decompress(compressed, limit - total)
        parts.append(part)
        total += len(part)
        if not member.eof:
            return parts, False
        compressed = member.unused_data
        # zero padding after the last member is tolerated, as gzip(1) does
        if total >= limit or not compressed.strip(b"\0"):
            return parts, True


def _check_uncompressed_size(img, path: Path) -> None:
    header = img.header
    needed = int(header.get_data_offset()) + math.prod(img.shape) * header.get_data_dtype().itemsize
    actual = path.stat().st_size
    if actual < needed:
        raise CorruptFileError(
            path, f"truncated: the header needs {needed} bytes (offset + voxels) but the file has {actual}"
        )
