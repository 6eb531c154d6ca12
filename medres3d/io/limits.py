"""Resource guards checked from a file's header, before any voxel is allocated.

A NIfTI or DICOM header is a few hundred bytes that can claim any image size; a hostile or
corrupt file (or a gzip bomb) must not make a batch job allocate tens of gigabytes. Every
reader in :mod:`medres3d.io` calls :func:`check_voxel_count` with the shape the header claims
(channels included) before it reads the data.

``DEFAULT_MAX_VOXELS`` is ``2**30`` (about 1.07e9 voxels, 4 GiB as float32): about 7 times a
large clinical CT (512x512x600 is 1.6e8 voxels), small enough that a refusal protects a laptop.
Rare genuine giants (a 1024x1024x2000 micro-CT is 2.1e9) need the limit raised on purpose;
pass ``max_voxels=None`` to disable the check.

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


def validate_max_voxels(max_voxels: int | None) -> int | None:
    """Return ``max_voxels`` if it is a positive integer or None, else raise ConfigError."""
    if max_voxels is None:
        return None
    if isinstance(max_voxels, bool) or not isinstance(max_voxels, int) or max_voxels <= 0:
        raise ConfigError(f"max_voxels must be a positive integer or None, got {max_voxels!r}")
    return max_voxels


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
