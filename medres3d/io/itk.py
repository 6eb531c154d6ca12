"""Other ITK formats (NRRD, MetaImage, GIPL, VTK, MRC, ``.mnc2``...) to a Volume, through SimpleITK.

The header is read first (``ImageFileReader.ReadImageInformation``) so the voxel-count guard
and the dimension checks run before any voxel is read. ITK's physical space is LPS: a voxel
index ``n`` maps to ``origin + direction @ (spacing * n)``; the RAS+ affine is that map with
the first two world axes negated. Vector pixels (e.g. an RGB or multi-echo NRRD) and the fourth
axis of a 4D scalar image become channels.

Example:
    >>> from medres3d.io.itk import load_itk
    >>> vol = load_itk("scan.nrrd")   # doctest: +SKIP
    >>> vol.orientation              # doctest: +SKIP
    'LPS'
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medres3d.errors import CorruptFileError, ResourceLimitError, UnsupportedFormatError
from medres3d.io.limits import DEFAULT_MAX_VOXELS, check_voxel_count
from medres3d.io.volume import Volume
from medres3d.io.voxels import check_finite, resolve_dtype, validate_nan_policy

ITK_SUFFIXES: tuple[str, ...] = (
    ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz", ".vtk", ".mnc2", ".mrc",
)  # .mnc goes to nibabel (medres3d.io.nibabel_formats), which reads MINC1 as well as MINC2
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_METAIMAGE_MODALITIES = {"MET_MOD_CT": "CT", "MET_MOD_MR": "MR", "MET_MOD_PET": "PT", "MET_MOD_US": "US"}


def is_itk_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in one of :data:`ITK_SUFFIXES` (any case)."""
    return os.fspath(path).lower().endswith(ITK_SUFFIXES)


def itk_affine(origin, spacing, direction) -> np.ndarray:
    """RAS+ 4x4 affine of a 3D ITK image from its LPS origin, spacing and row-major direction.

    Example:
        >>> affine = itk_affine((1.0, 2.0, 3.0), (0.5, 0.5, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> affine.diagonal().tolist(), affine[:3, 3].tolist()
        ([-0.5, -0.5, 2.0, 1.0], [-1.0, -2.0, 3.0])
    """
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


def load_itk(
    path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    nan_policy: str = "raise",
) -> Volume:
    """Read a 3D (or 4D, or vector-pixel) image that SimpleITK reads into a Volume ``(C, H, W, D)``.

    Args:
        path: the image file (``.nrrd``, ``.mha``, ``.mhd``...).
        dtype: ``"float32"`` (default), ``"float64"`` or ``"native"``.
        max_voxels: refuse images whose header claims more voxels (None: no limit).
        nan_policy: ``"raise"`` (default), ``"zero"`` or ``"keep"`` for NaN/Inf voxels.

    Raises:
        CorruptFileError: empty, unreadable or truncated file, or a singular geometry.
        UnsupportedFormatError: 2D or 5D images, complex pixels, a 4D image with vector pixels.
        ResourceLimitError: the header claims more than ``max_voxels`` voxels.
        InvalidVoxelsError: NaN/Inf voxels with ``nan_policy="raise"``.

    Example:
        >>> import numpy as np, SimpleITK as sitk, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "t.mha")
        >>> sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 5, 4), np.int16)), path)
        >>> load_itk(path).shape      # SimpleITK's array is (z, y, x); a Volume is (C, x, y, z)
        (1, 4, 5, 6)
    """
    import SimpleITK as sitk

    out_dtype = resolve_dtype(dtype)
    validate_nan_policy(nan_policy)
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CorruptFileError(path, "file is empty (0 bytes)")
    except OSError as err:
        raise CorruptFileError(path, f"cannot open: {err.strerror or err}") from err

    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise CorruptFileError(path, f"SimpleITK cannot read the header: {_sitk_reason(err)}") from err

    size = tuple(int(n) for n in reader.GetSize())
    ndim = reader.GetDimension()
    components = int(reader.GetNumberOfComponents())
    pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    if ndim not in (3, 4):
        raise UnsupportedFormatError(path, f"{ndim}D image of size {size}; a 3D or 4D volume is required")
    if ndim == 4 and components > 1:
        raise UnsupportedFormatError(path, f"4D image with {components}-component pixels is not supported")
    if "complex" in pixel_type:
        raise UnsupportedFormatError(path, f"complex pixels ({pixel_type}) are not supported")
    num_channels = size[3] if ndim == 4 else components
    check_voxel_count((num_channels, *size[:3]), path, max_voxels)

    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(ndim, ndim)[:3, :3]
    affine = itk_affine(reader.GetOrigin()[:3], reader.GetSpacing()[:3], direction)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CorruptFileError(path, f"singular or non-finite geometry (spacing/direction):\n{affine}")

    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise CorruptFileError(path, f"SimpleITK cannot read the voxels: {_sitk_reason(err)}") from err
    except MemoryError as err:
        raise ResourceLimitError(path, f"not enough memory for {size} voxels") from err
    view = sitk.GetArrayViewFromImage(image)  # (z, y, x[, c]) or (t, z, y, x); valid while `image` lives
    if ndim == 4:
        view = view.transpose(0, 3, 2, 1)
    elif components > 1:
        view = view.transpose(3, 2, 1, 0)
    else:
        view = view.T[None]
    array = np.array(view) if out_dtype is None else view.astype(out_dtype)

    warnings: list[str] = []
    array = check_finite(array, path, nan_policy, warnings)
    meta = {
        "format": reader.GetImageIOFromFileName(os.fspath(path)).replace("ImageIO", ""),
        "stored_dtype": pixel_type,
        "itk_metadata": {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()},
        "warnings": warnings,
    }
    modality = _METAIMAGE_MODALITIES.get(meta["itk_metadata"].get("Modality", ""))
    return Volume(array, affine, modality=modality, meta=meta, source=os.fspath(path))


def _sitk_reason(err: RuntimeError) -> str:
    # SimpleITK messages start with a C++ source location; the last line is the useful part
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = lines[-1] if lines else repr(err)
    return reason.removeprefix("sitk::ERROR: ")[:300]
