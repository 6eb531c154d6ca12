"""Writing images as NIfTI: one writer, so every file medres3d writes puts its affine where readers look.

Example:
    >>> import os, tempfile, nibabel as nib
    >>> path = save_nifti(np.ones((2, 3, 4)), np.eye(4), os.path.join(tempfile.mkdtemp(), "m.nii"), "map")
    >>> nib.load(path).get_fdata().shape, nib.load(path).header.get_sform(coded=True)[1]
    ((2, 3, 4), 1)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medres3d.errors import OutputWriteError


def save_nifti(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str], what: str = "image",
               ) -> Path:
    """Write (X, Y, Z) or (X, Y, Z, K) ``data`` as NIfTI, unscaled, in its own dtype.

    The affine goes into the sform (exact up to the header's float32 storage) and the qform (its
    nearest rigid-plus-zoom part), both with code 1 (scanner-anchored world coordinates), units mm,
    so every NIfTI reader finds it. Parent folders are created.

    Raises:
        OutputWriteError: the file cannot be written (the message names ``what``).
    """
    import nibabel as nib

    path = Path(path)
    image = nib.Nifti1Image(data, affine, dtype=data.dtype)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(image, path)
    except OSError as err:
        raise OutputWriteError(path, f"could not write the {what}: {err}") from err
    return path
