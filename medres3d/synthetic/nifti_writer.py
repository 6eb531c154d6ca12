"""Write synthetic arrays as NIfTI-1 files (nibabel).

Example:
    >>> import numpy as np, tempfile, os
    >>> from medres3d.synthetic import make_affine, write_nifti
    >>> path = write_nifti(np.zeros((4, 4, 4)), make_affine(), os.path.join(tempfile.mkdtemp(), "a.nii.gz"))
    >>> path.name
    'a.nii.gz'
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from medres3d.errors import ConfigError

_SCANNER = 1  # NIfTI xform code "scanner anatomical"


def write_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike[str],
    *,
    dtype: npt.DTypeLike | None = None,
) -> Path:
    """Write a 3D array (i, j, k) or a 4D channels-last array (i, j, k, c) with a RAS affine.

    Both the sform and the qform get the affine with code "scanner" (1), so every reader agrees.
    A sheared affine (gantry tilt) is exact only in the sform: the qform cannot hold a shear, so it is
    then left unset (code 0) rather than approximated.

    Args:
        array: the voxels; written as float32 for floating input unless ``dtype`` says otherwise.
        affine: 4x4 voxel-to-world (RAS, mm) matrix.
        path: ``.nii`` or ``.nii.gz`` file to create (parent folders are created).
        dtype: on-disk data type, e.g. ``np.int16``; values are rounded and must fit it.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from medres3d.synthetic import make_affine
        >>> p = write_nifti(np.ones((4, 4, 4, 2)), make_affine(), os.path.join(tempfile.mkdtemp(), "c.nii"))
        >>> nib.load(p).shape
        (4, 4, 4, 2)
    """
    arr = np.asarray(array)
    if arr.ndim not in (3, 4):
        raise ConfigError(f"array must be 3D (i, j, k) or 4D (i, j, k, c), got shape {arr.shape}")
    aff = np.asarray(affine, dtype=float)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ConfigError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    out = Path(path)
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise ConfigError(f"path must end in .nii or .nii.gz, got {out.name!r}")
    if dtype is not None:
        target = np.dtype(dtype)
        if np.issubdtype(target, np.integer):
            info = np.iinfo(target)
            rounded = np.rint(arr)
            if arr.size and (rounded.min() < info.min or rounded.max() > info.max):
                raise ConfigError(
                    f"values span [{rounded.min()}, {rounded.max()}], outside dtype {target} "
                    f"range [{info.min}, {info.max}]"
                )
            arr = rounded.astype(target)
        else:
            arr = arr.astype(target)
    elif np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.float32:
        arr = arr.astype(np.float32)

    img = nib.Nifti1Image(arr, aff)
    img.set_sform(aff, code=_SCANNER)
    rzs = aff[:3, :3]
    gram = rzs.T @ rzs
    orthogonal = np.allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-6 * float(np.abs(gram).max()))
    if orthogonal:
        img.set_qform(aff, code=_SCANNER)
    else:
        img.set_qform(None, code=0)
    img.header.set_xyzt_units("mm", "sec")
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, out)
    return out
