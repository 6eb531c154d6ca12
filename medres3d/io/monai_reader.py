"""`MedRes3DReader`: medres3d's loader as a MONAI ``ImageReader``.

``LoadImage(reader=MedRes3DReader())`` and ``LoadImaged(keys, reader=MedRes3DReader())`` then
read NIfTI, DICOM series folders (with medres3d's series checks), multi-frame DICOM and ITK
files inside any MONAI pipeline. The data comes back channel-first ``(C, H, W, D)`` with
``original_channel_dim=0`` (so ``EnsureChannelFirst`` leaves it alone) and the RAS affine in
``affine`` / ``original_affine`` (``space="RAS"``), as MONAI's own readers report it.

Example:
    >>> from monai.transforms import LoadImage
    >>> from medres3d.io.monai_reader import MedRes3DReader
    >>> image = LoadImage(reader=MedRes3DReader(), image_only=True)("scan.nii.gz")  # doctest: +SKIP
    >>> image.shape, image.affine.shape                                              # doctest: +SKIP
    (torch.Size([1, 256, 256, 120]), torch.Size([4, 4]))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medres3d.errors import VolumeLoadError
from medres3d.io.itk import is_itk_path
from medres3d.io.nifti import is_nifti_path
from medres3d.io.readers import DICOM_SUFFIXES, load_volume
from medres3d.io.volume import Volume

PathLike = str | os.PathLike[str]


class MedRes3DReader(ImageReader):
    """A MONAI ImageReader that loads with :func:`medres3d.load_volume`.

    Args:
        **load_options: passed to :func:`~medres3d.io.readers.load_volume` (``max_voxels``,
            ``strict``, ``nan_policy``, ``series_uid``, ``dtype``); ``read(..., **kwargs)``
            overrides them per call.

    Several files given together become the channels of one image; they must share the same
    grid (shape and affine), or a VolumeLoadError names the first that does not.

    Example:
        >>> from monai.transforms import LoadImaged
        >>> load = LoadImaged(keys="image", reader=MedRes3DReader(strict=True))
        >>> sample = load({"image": "ct_series_folder/"})   # doctest: +SKIP
    """

    def __init__(self, **load_options: Any) -> None:
        super().__init__()
        self.load_options = load_options

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every name is a NIfTI, ITK or DICOM file, or a folder (a DICOM series)."""
        return all(_supported(Path(name)) for name in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Volume | list[Volume]:
        """Load each file or folder as a Volume (a list when several are given)."""
        options = {**self.load_options, **kwargs}
        volumes = [load_volume(name, **options) for name in ensure_tuple(data)]
        return volumes if len(volumes) > 1 else volumes[0]

    def get_data(self, img: Volume | Sequence[Volume]) -> tuple[np.ndarray, dict]:
        """The voxels ``(C, H, W, D)`` (channels of several volumes concatenated) and MONAI metadata."""
        volumes = list(img) if isinstance(img, Sequence) else [img]
        first = volumes[0]
        for other in volumes[1:]:
            if other.spatial_shape != first.spatial_shape or not np.allclose(
                other.affine, first.affine, atol=1e-4
            ):
                raise VolumeLoadError(
                    other.source or "(volume)",
                    f"its grid (shape {other.spatial_shape}, affine) differs from that of {first.source} "
                    f"(shape {first.spatial_shape}); files stacked as channels must share one grid",
                )
        array = first.array if len(volumes) == 1 else np.concatenate([v.array for v in volumes], axis=0)
        meta = {
            MetaKeys.AFFINE: first.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: first.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(first.spatial_shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: 0,
            "modality": first.modality or "",
            # one string, not a list: MONAI's collate needs equal-length lists across a batch
            "warnings": "\n".join(w for v in volumes for w in v.warnings),
        }
        return array, meta


def _supported(path: Path) -> bool:
    if path.is_dir():
        return True
    suffix = path.suffix.lower()
    return is_nifti_path(path) or is_itk_path(path) or suffix in DICOM_SUFFIXES or suffix == ""
