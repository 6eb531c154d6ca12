"""Voxel-level options shared by every reader: the output dtype and the NaN/Inf policy.

``dtype="float32"`` (the default) gives float32 voxels with any rescaling applied;
``"float64"`` the same in double precision; ``"native"`` keeps the stored type where no rescaling
applies (a rescaled image comes back in the float type its reader computes it in).

NaN and infinite voxels would silently poison a network's output (one NaN makes every logit
NaN), so by default they are an error. ``nan_policy``:

- ``"raise"`` (default): :class:`~medres3d.errors.InvalidVoxelsError` with the count;
- ``"zero"``: replace them with 0 and record a warning on the Volume;
- ``"keep"``: leave them and record a warning.

Example:
    >>> import numpy as np
    >>> warnings = []
    >>> check_finite(np.array([1.0, np.nan], np.float32), "x.nii", "zero", warnings)
    array([1., 0.], dtype=float32)
    >>> warnings
    ['1 of 2 voxels were NaN or infinite and were replaced by 0 (nan_policy="zero")']
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np

from medres3d.errors import ConfigError, InvalidVoxelsError

NanPolicy = Literal["raise", "zero", "keep"]
NAN_POLICIES: tuple[str, ...] = ("raise", "zero", "keep")
DTYPES: tuple[str, ...] = ("float32", "float64", "native")


def resolve_dtype(dtype: str | np.dtype | type) -> np.dtype | None:
    """The numpy dtype asked for, or None for ``"native"``; ConfigError for anything else."""
    if isinstance(dtype, str) and dtype == "native":
        return None
    try:
        resolved = np.dtype(dtype)
    except TypeError as err:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}") from err
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return resolved


def validate_nan_policy(nan_policy: str) -> str:
    """Return ``nan_policy`` if valid, else raise ConfigError naming the valid values."""
    if nan_policy not in NAN_POLICIES:
        raise ConfigError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    return nan_policy


def check_finite(
    array: np.ndarray,
    path: str | os.PathLike[str],
    nan_policy: str,
    warnings: list[str],
) -> np.ndarray:
    """Apply ``nan_policy`` to ``array`` (in place for "zero") and return it.

    Integer arrays are returned untouched. The common all-finite case costs a min and a max
    (no temporary array); the count is computed only when something is wrong.

    Raises:
        InvalidVoxelsError: NaN/Inf voxels with ``nan_policy="raise"``.
    """
    validate_nan_policy(nan_policy)
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return array
    # min/max propagate NaN and expose +-Inf, without allocating a mask
    if np.isfinite(array.min()) and np.isfinite(array.max()):
        return array
    bad = ~np.isfinite(array)
    count = int(np.count_nonzero(bad))
    if nan_policy == "raise":
        raise InvalidVoxelsError(
            path,
            f"{count} of {array.size} voxels are NaN or infinite; pass nan_policy='zero' to replace "
            "them with 0 or nan_policy='keep' to keep them",
        )
    if nan_policy == "zero":
        if not array.flags.writeable:
            array = array.copy()
        array[bad] = 0
        warnings.append(
            f'{count} of {array.size} voxels were NaN or infinite and were replaced by 0 (nan_policy="zero")'
        )
    else:
        warnings.append(f'{count} of {array.size} voxels are NaN or infinite (kept: nan_policy="keep")')
    return array
