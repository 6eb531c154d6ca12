"""NIfTI (``.nii``, ``.nii.gz``) to :class:`~medres3d.io.volume.Volume`, through nibabel.

The header is read and checked first (dimensions, voxel-count limit, data type, affine) so a
hostile or damaged file is refused before its voxels are read. Geometry is nibabel's
``img.affine`` exactly: the sform when ``sform_code > 0``, else the qform when
``qform_code > 0``, else the pixdim-only fallback (recorded as a warning); in the last two cases
a zero, negative or NaN stored voxel size is an error, not nibabel's silent 1 mm. A stored
``sform_code``/``qform_code`` outside NIfTI's codes (nibabel resets it to 0 without a word) is an
``invalid-xform-code`` warning naming the affine used, or an error when only pixdim would be left.
``scl_slope`` / ``scl_inter`` are applied as nibabel applies them. A 4D file's fourth axis
becomes the channels; 5D+ files are accepted only when at most one non-spatial axis is longer
than 1 (e.g. a ``(X, Y, Z, 1, 3)`` vector field gives 3 channels). For ``.nii.gz`` the gzip CRC
is verified, which nibabel alone does not do.

Example:
    >>> from medres3d.io.nifti import load_nifti
    >>> vol = load_nifti("scan.nii.gz")   # doctest: +SKIP
    >>> vol.array.shape, vol.meta["affine_source"]   # doctest: +SKIP
    ((1, 256, 256, 120), 'sform')
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import numpy as np
from isal import igzip  # ISA-L: a drop-in gzip reader, 2-3x faster than zlib
from isal.isal_zlib import error as IsalError

from medres3d.errors import CorruptFileError, ResourceLimitError, UnsupportedFormatError
from medres3d.io.limits import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_VOXELS,
    check_byte_count,
    check_voxel_count,
    validate_max_bytes,
)
from medres3d.io.volume import Volume
from medres3d.io.voxels import check_finite, resolve_dtype, validate_nan_policy

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_TAIL_BYTES = 2**20
_FIRST_READ_BYTES = 2**20
# what nibabel, gzip and zlib raise on damaged input (nibabel's own errors derive from Exception)
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, IsalError)


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES)


def load_nifti(
    path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    nan_policy: str = "raise",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> Volume:
    """Read a ``.nii`` / ``.nii.gz`` file into a Volume ``(C, H, W, D)`` with its RAS+ affine.

    Args:
        path: the NIfTI-1 or NIfTI-2 file.
        dtype: ``"float32"`` (default), ``"float64"`` or ``"native"`` (see :mod:`medres3d.io.voxels`).
        max_voxels: refuse files whose header claims more voxels (None: no limit).
        nan_policy: ``"raise"`` (default), ``"zero"`` or ``"keep"`` for NaN/Inf voxels.
        max_bytes: refuse files whose header needs more bytes read (decompressed for ``.nii.gz``)
            than this: data offset plus stored voxels (None: no limit).

    Raises:
        CorruptFileError: empty, truncated, not NIfTI, bad gzip, zero/negative dimensions,
            singular or non-finite affine, a bad voxel size (``pixdim``) when ``sform_code`` is 0.
        UnsupportedFormatError: 2D, complex or RGB data, more than one non-spatial axis.
        ResourceLimitError: the header claims more than ``max_voxels`` voxels or needs more
            than ``max_bytes`` bytes.
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
    validate_max_bytes(max_bytes)
    path = Path(path)
    _check_file_start(path)
    try:
        img = nib.load(path, mmap=False)
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, *_READ_ERRORS) as err:
        raise CorruptFileError(path, f"not a readable NIfTI header: {err}") from err
    # Nifti1Image/Nifti2Image (one .nii file) derive from Nifti1Pair (a .hdr/.img pair)
    if not isinstance(img, nib.Nifti1Pair):
        raise UnsupportedFormatError(path, f"{type(img).__name__} file named like NIfTI; expected NIfTI-1/2")
    # a pair keeps its header and voxels in two files; a .nii holds both
    image_path = Path(img.file_map["image"].filename)
    header_path = Path(img.file_map["header"].filename) if "header" in img.file_map else image_path
    if image_path != header_path:
        _check_file_start(image_path)

    shape = _checked_shape(img.header, path)
    num_channels = math.prod(shape[3:])
    check_voxel_count((*shape[:3], num_channels), path, max_voxels)
    check_data_dtype(img.header.get_data_dtype(), path)
    # nibabel's reading of the header (data offset, stored dtype and shape, scaling); after loading,
    # img.header's vox_offset reads 0 and only the proxy keeps where the data starts
    proxy = img.dataobj
    voxel_bytes = math.prod(proxy.shape) * proxy.dtype.itemsize
    data_end = check_byte_count(proxy.offset, voxel_bytes, path, max_bytes)
    affine, affine_source, warnings = _checked_affine(img, header_path)
    try:
        if image_path.name.lower().endswith(".gz"):
            data = _read_gzip_verified(proxy, voxel_bytes, image_path, out_dtype, warnings)
        else:
            check_file_size(image_path, data_end)
            data = _read_voxels(img, out_dtype)
    except MemoryError as err:
        raise ResourceLimitError(path, f"not enough memory for {shape} voxels") from err
    except _READ_ERRORS as err:
        reason = f"cannot read the voxel data (truncated or damaged file?): {err}"
        raise CorruptFileError(image_path, reason) from err

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
    compressed_name = path.name.lower().endswith(".gz")
    if compressed_name and start != _GZIP_MAGIC:
        raise CorruptFileError(path, f"named .gz but not gzip-compressed (starts with {start!r})")
    if not compressed_name and start == _GZIP_MAGIC:
        raise CorruptFileError(path, "gzip-compressed but named .nii; rename it to .nii.gz")


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


def check_data_dtype(dtype: np.dtype, path: Path) -> None:
    """Refuse structured (RGB), complex and non-numeric voxel types, naming the file."""
    if dtype.fields is not None:
        raise UnsupportedFormatError(path, f"RGB/structured voxels ({dtype}) are not supported")
    if np.issubdtype(dtype, np.complexfloating):
        raise UnsupportedFormatError(path, f"complex voxels ({dtype}) are not supported")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise UnsupportedFormatError(path, f"voxel type {dtype} is not supported")


def _checked_affine(img, path: Path) -> tuple[np.ndarray, str, list[str]]:
    """nibabel's affine, checked, its source ("sform", "qform", "pixdim"), and a warning list."""
    from nibabel.nifti1 import xform_codes

    header = img.header
    stored = _stored_header(img, path)
    # nibabel resets an out-of-range code to 0 on load (a log line only), which silently changes
    # the affine it picks: the stored codes say what the file meant.
    invalid = [
        f"{name} {int(stored[name])}"
        for name in ("sform_code", "qform_code")
        if int(stored[name]) not in xform_codes.value_set()
    ]
    if int(header["sform_code"]) > 0:
        source = "sform"
    elif int(header["qform_code"]) > 0:
        source = "qform"
    else:
        source = "pixdim"
    valid = f"valid codes are {sorted(xform_codes.value_set())}"
    if invalid and source == "pixdim":
        raise CorruptFileError(
            path,
            f"invalid {' and '.join(invalid)} ({valid}) and no valid transform left: nibabel would treat "
            "the code as 0 and place the voxels by pixdim alone, dropping orientation and origin",
        )
    if source != "sform":
        _check_stored_voxel_size(stored["pixdim"][1:4], path, source)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise CorruptFileError(path, f"the {source} affine has NaN/Inf entries:\n{affine}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CorruptFileError(path, f"the {source} affine is singular (a zero voxel size?):\n{affine}")
    warnings = []
    if invalid:
        warnings.append(
            f"invalid-xform-code: {' and '.join(invalid)} ({valid}) treated as 0, as nibabel does; "
            f"the {source} affine ({source}_code {int(header[source + '_code'])}) was used"
        )
    return affine, source, warnings


def _stored_header(img, path: Path):
    """The header as stored in the file, unchecked (nibabel "fixes" some fields on load)."""
    size = img.header.sizeof_hdr
    try:
        with open(path, "rb") as f:
            block = f.read(_FIRST_READ_BYTES if path.name.lower().endswith(".gz") else size)
        if path.name.lower().endswith(".gz"):
            # only the header's bytes: a damaged or cut stream further on is reported by the voxel read
            block = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(block, size)
        return type(img.header)(block[:size], check=False)
    except _READ_ERRORS as err:
        raise CorruptFileError(path, f"not a readable NIfTI header: {err}") from err


def _check_stored_voxel_size(stored: np.ndarray, path: Path, source: str) -> None:
    """Refuse a zero, negative or NaN stored voxel size (``pixdim[1:4]``) when the affine is built from it.

    nibabel "fixes" the header on load (a zero ``pixdim`` becomes 1, a negative one its absolute
    value, with a log message only), so the stored values are checked. With ``sform_code`` 0 the
    affine is the qform rotation (or the identity) times these sizes: substituting 1 mm or
    dropping a sign would give a plausible but wrong geometry.
    """
    if not np.all(np.isfinite(stored) & (stored > 0)):
        sizes = f"({', '.join(str(v) for v in stored)})"  # str of float32 0.8 is 0.8, not 0.800000011920929
        if source == "qform":
            why = "sform_code is 0 and the qform affine is scaled by these sizes"
        else:
            why = "sform_code and qform_code are 0 and the affine is these sizes alone"
        raise CorruptFileError(
            path,
            f"voxel size pixdim[1:4] is {sizes}, but each must be finite and positive: {why}, so the "
            "geometry is unknown (nibabel would silently use 1 for a 0 and drop a minus sign)",
        )


def _read_voxels(img, out_dtype: np.dtype | None) -> np.ndarray:
    """The voxels with nibabel's scaling, in ``out_dtype`` (None: nibabel's own choice, native order)."""
    if out_dtype is not None:
        return np.asanyarray(img.dataobj, dtype=out_dtype).astype(out_dtype, copy=False)
    return native_or(np.asanyarray(img.dataobj), None)


def native_or(data: np.ndarray, out_dtype: np.dtype | None) -> np.ndarray:
    """``data`` in ``out_dtype``, or (None) in its own type in native byte order."""
    if out_dtype is not None:
        return data.astype(out_dtype, copy=False)
    if not data.dtype.isnative:  # big-endian files: torch and most code need native byte order
        data = data.astype(data.dtype.newbyteorder("="))
    return data


def _read_gzip_verified(
    proxy, voxel_bytes: int, path: Path, out_dtype: np.dtype | None, warnings: list[str]
) -> np.ndarray:
    """Decompress a ``.nii.gz``'s voxels, check the gzip CRC, and scale them as nibabel does.

    The buffer grows with what the stream delivers (:func:`_read_at_most`) instead of being
    allocated at the size the header claims, so a small file whose header claims a large image
    costs about what it decompresses to before it is reported truncated. nibabel alone reads
    only the bytes the header needs and so never reaches the gzip trailer: a file damaged inside
    the deflate stream can decode to wrong voxels without any error. Reading on to the end of
    the stream makes the gzip reader verify the CRC (and the length); at most
    ``_GZIP_TAIL_BYTES`` more are read, so a gzip bomb (a small image followed by gigabytes of
    padding) costs nothing and is reported as unverified instead.
    """
    from nibabel.volumeutils import apply_read_scaling

    with igzip.open(path, "rb") as stream:
        stream.seek(proxy.offset)
        start = stream.tell()  # below proxy.offset when the stream ends first
        raw = _read_at_most(stream, voxel_bytes)
        if raw.size < voxel_bytes:
            raise CorruptFileError(
                path,
                f"truncated: the header needs {proxy.offset + voxel_bytes} bytes (offset + voxels) but the "
                f"gzip stream decompresses to {start + raw.size}",
            )
        tail = len(stream.read(_GZIP_TAIL_BYTES + 1))
    if tail > _GZIP_TAIL_BYTES:
        warnings.append(
            f"more than {_GZIP_TAIL_BYTES} bytes follow the image in the gzip stream; they were not "
            "decompressed, so the gzip CRC was not verified"
        )
    stored = raw.view(proxy.dtype).reshape(proxy.shape, order=proxy.order)
    return native_or(apply_read_scaling(stored, proxy.slope, proxy.inter), out_dtype)


def _read_at_most(stream, count: int) -> np.ndarray:
    """Up to ``count`` bytes of ``stream`` as uint8, in a buffer that grows only as bytes arrive.

    The buffer starts at ``_FIRST_READ_BYTES`` and doubles (``ndarray.resize`` reallocates in
    place where it can), so it never holds more than twice what the stream delivered.
    """
    buffer = np.empty(min(count, _FIRST_READ_BYTES), np.uint8)
    filled = 0
    while filled < count:
        if filled == buffer.size:
            buffer.resize(min(count, 2 * buffer.size), refcheck=False)  # no view of it is alive here
        got = stream.readinto(buffer[filled:])
        if not got:
            break
        filled += got
    return buffer[:filled]


def check_file_size(path: Path, needed: int) -> None:
    """Refuse a file shorter than the ``needed`` bytes its header claims (offset + voxels)."""
    actual = path.stat().st_size
    if actual < needed:
        raise CorruptFileError(
            path, f"truncated: the header needs {needed} bytes (offset + voxels) but the file has {actual}"
        )
