"""Resource guards checked from a file's header, before any voxel is allocated.

A NIfTI or DICOM header is a few hundred bytes that can claim any image size; a hostile or
corrupt file (or a gzip bomb) must not make a batch job allocate tens of gigabytes. Every
reader in :mod:`medres3d.io` calls :func:`check_voxel_count` with the shape the header claims
(channels included) before it reads the data.

``DEFAULT_MAX_VOXELS`` is ``2**30`` (about 1.07e9 voxels, 4 GiB as float32): about 7 times a
large clinical CT (512x512x600 is 1.6e8 voxels), small enough that a refusal protects a laptop.
Rare genuine giants (a 1024x1024x2000 micro-CT is 2.1e9) need the limit raised on purpose;
pass ``max_voxels=None`` to disable the check.

``DEFAULT_MAX_BYTES`` (``2**33``, 8 GiB) bounds the bytes a NIfTI header makes the reader
decompress or read for one image (data offset plus stored voxels): the voxel count alone does not,
since a header can put the data after gigabytes of padding (``vox_offset``) and voxels can be
8 bytes wide. 8 GiB admits any image within ``DEFAULT_MAX_VOXELS`` in any dtype up to 8 bytes (so
the two limits never disagree on a genuine scan); pass ``max_bytes=None`` to disable it.

Example:
    >>> from medres3d.io.limits import check_voxel_count
    >>> check_voxel_count((1, 512, 512, 300), "scan.nii.gz")
    78643200
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from medres3d.errors import ConfigError, ResourceLimitError

DEFAULT_MAX_VOXELS: int = 2**30
DEFAULT_MAX_BYTES: int = 8 * DEFAULT_MAX_VOXELS


def validate_max_voxels(max_voxels: int | None) -> int | None:
    """Return ``max_voxels`` if it is a positive integer or None, else raise ConfigError."""
    return _positive_int_or_none("max_voxels", max_voxels)


def validate_max_bytes(max_bytes: int | None) -> int | None:
    """Return ``max_bytes`` if it is a positive integer or None, else raise ConfigError."""
    return _positive_int_or_none("max_bytes", max_bytes)


def _positive_int_or_none(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def check_voxel_count(
    shape: Sequence[int],
    path: str | os.PathLike[str],
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
) -> int:
    """Refuse an image whose header-claimed ``shape`` exceeds ``max_voxels``.

    Args:
        shape: every dimension the header claims (spatial and channel/time).
        path: the file, named in the error.
        max_voxels: the limit; None disables it.

    Returns:
        The number of voxels (product of ``shape``).

    Raises:
        ResourceLimitError: the product exceeds ``max_voxels``.
        ConfigError: ``max_voxels`` is not a positive integer or None.

    Example:
        >>> check_voxel_count((2000, 2000, 2000), "huge.nii", max_voxels=10**9)
        Traceback (most recent call last):
        ...
        medres3d.errors.ResourceLimitError: huge.nii: header claims 2000x2000x2000 = 8000000000 voxels, \
more than the limit max_voxels=1000000000 (raise it with max_voxels=... if the scan is genuine)
    """
    limit = validate_max_voxels(max_voxels)
    dims = [int(n) for n in shape]
    count = math.prod(dims)
    if limit is not None and count > limit:
        claimed = "x".join(str(n) for n in dims)
        raise ResourceLimitError(
            path,
            f"header claims {claimed} = {count} voxels, more than the limit max_voxels={limit} "
            "(raise it with max_voxels=... if the scan is genuine)",
        )
    return count


def check_byte_count(
    offset: int,
    data_bytes: int,
    path: str | os.PathLike[str],
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> int:
    """Refuse an image whose header needs more than ``max_bytes`` bytes read (or decompressed).

    Args:
        offset: where the header says the voxel data starts.
        data_bytes: the stored voxel bytes the header claims.
        path: the file, named in the error.
        max_bytes: the limit; None disables it.

    Returns:
        ``offset + data_bytes``.

    Raises:
        ResourceLimitError: the total exceeds ``max_bytes``.
        ConfigError: ``max_bytes`` is not a positive integer or None.

    Example:
        >>> check_byte_count(10**10, 2**20, "padded.nii.gz")
        Traceback (most recent call last):
        ...
        medres3d.errors.ResourceLimitError: padded.nii.gz: header needs 10001048576 bytes (data offset \
10000000000 + 1048576 of voxels), more than the limit max_bytes=8589934592 (raise it with max_bytes=... \
if the scan is genuine)
    """
    limit = validate_max_bytes(max_bytes)
    total = int(offset) + int(data_bytes)
    if limit is not None and total > limit:
        raise ResourceLimitError(
            path,
            f"header needs {total} bytes (data offset {offset} + {data_bytes} of voxels), more than the "
            f"limit max_bytes={limit} (raise it with max_bytes=... if the scan is genuine)",
        )
    return total
