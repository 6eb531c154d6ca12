"""`Volume`: voxels ``(C, H, W, D)`` with their RAS+ world geometry and metadata.

Every loader in :mod:`medres3d.io` returns a Volume, whatever the file format, so the rest of
medres3d sees one geometry convention: ``affine`` maps a voxel index ``(i, j, k)`` (along H, W,
D) to RAS+ world millimetres, exactly as a NIfTI sform does (DICOM's LPS is converted on load).

Example:
    >>> import numpy as np
    >>> from medres3d.io.volume import Volume
    >>> vol = Volume(np.zeros((1, 4, 5, 6), np.float32), np.diag([0.5, 0.5, 2.0, 1.0]), modality="CT")
    >>> vol.spacing, vol.orientation, vol.num_channels
    ((0.5, 0.5, 2.0), 'RAS', 1)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medres3d.errors import ConfigError

if TYPE_CHECKING:
    from monai.data import MetaTensor

# dtypes a NIfTI-1 file stores exactly; others are widened on write (bool -> uint8, float16 -> float32).
_NIFTI_DTYPES = frozenset(
    np.dtype(t)
    for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")
)


@dataclass(eq=False)
class Volume:
    """A 3D scan with channels: voxels, RAS+ affine, modality, metadata and source.

    Attributes:
        array: voxels, shape ``(C, H, W, D)``; float32 unless a loader was asked for the native dtype.
        affine: 4x4 float64 matrix mapping voxel indices to RAS+ world coordinates in millimetres.
        modality: ``"CT"``, ``"MR"``... when the file says so, else None.
        meta: identifiers (patient/study/series), description, rescale used, and ``warnings``
            (a list of strings about anything suspicious the loader found; always present).
        source: the file or folder the volume came from, if any.

    Example:
        >>> import numpy as np
        >>> vol = Volume(np.ones((2, 3, 3, 3), np.float32), np.eye(4))
        >>> vol.shape, vol.num_channels, vol.warnings
        ((2, 3, 3, 3), 2, [])
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            raise ConfigError(f"Volume.array must be a numpy array, got {type(self.array).__name__}")
        if self.array.ndim != 4:
            raise ConfigError(
                f"Volume.array must be 4D (C, H, W, D), but it is {self.array.ndim}D with shape "
                f"{self.array.shape}; add a channel axis with array[None] for a single-channel volume"
            )
        if 0 in self.array.shape:
            raise ConfigError(f"Volume.array must not have an empty dimension, got shape {self.array.shape}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ConfigError(f"Volume.affine must be 4x4, got shape {affine.shape}")
        if not np.all(np.isfinite(affine)):
            raise ConfigError(f"Volume.affine must be finite, got\n{affine}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ConfigError(f"Volume.affine must be invertible (non-zero spacing), got\n{affine}")
        self.affine = affine
        if self.source is not None:
            self.source = os.fspath(self.source)
        self.meta.setdefault("warnings", [])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(C, H, W, D)``."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(H, W, D)``."""
        return self.shape[1:]  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        """Number of channels ``C`` (e.g. MRI sequences or a 4D NIfTI's volumes)."""
        return self.shape[0]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along H, W, D: the norms of the affine's first three columns."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(n) for n in norms)  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis code such as ``"RAS"`` or ``"LPS"``: the world direction each voxel axis points to most."""
        from nibabel.orientations import aff2axcodes

        return "".join(aff2axcodes(self.affine))

    @property
    def warnings(self) -> list[str]:
        """The loader's warnings (missing slice, uneven spacing...); empty when all was regular."""
        return self.meta["warnings"]

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        memory = _human_bytes(self.array.nbytes)
        return (
            f"Volume(shape={self.shape}, spacing=({spacing}), orientation={self.orientation!r}, "
            f"modality={self.modality!r}, dtype={self.array.dtype}, memory={memory}, "
            f"warnings={len(self.warnings)}, source={self.source!r})"
        )

    def to_nifti(self, path: str | os.PathLike[str]) -> None:
        """Write the volume to a ``.nii`` or ``.nii.gz`` file, losslessly.

        Voxels keep their dtype when NIfTI stores it (bool is written as uint8, float16 as float32)
        and are written unscaled. One channel gives a 3D file, several a 4D file with channels last
        (NIfTI's convention), which :func:`medres3d.load_volume` reads back as channels. The affine
        goes into the sform (exact up to the header's float32 storage) and the qform (its nearest
        rigid-plus-zoom part), both with code 1 (scanner), so every NIfTI reader finds it.

        Raises:
            OutputWriteError: the file cannot be written.

        Example:
            >>> import numpy as np, tempfile, os
            >>> vol = Volume(np.arange(24, dtype=np.int16).reshape(1, 2, 3, 4), np.diag([1, 2, 3, 1.0]))
            >>> vol.to_nifti(os.path.join(tempfile.mkdtemp(), "vol.nii.gz"))
        """
        from medres3d.io.writers import save_nifti

        data = self.array
        if data.dtype not in _NIFTI_DTYPES:
            data = data.astype(np.uint8 if data.dtype == np.bool_ else np.float32)
        spatial_last = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
        save_nifti(spatial_last, self.affine, path, "NIfTI file")

    def to_metatensor(self) -> MetaTensor:
        """The voxels as a MONAI ``MetaTensor`` ``(C, H, W, D)`` carrying the RAS affine.

        The tensor shares memory with ``array`` where torch can. Its meta holds what MONAI's own
        readers put there (``affine``, ``original_affine``, ``spatial_shape``, ``space="RAS"``,
        ``original_channel_dim=0``, ``filename_or_obj``) plus ``modality``, so MONAI transforms
        (Orientation, Spacing...) treat it like a loaded image.

        Example:
            >>> import numpy as np
            >>> t = Volume(np.zeros((1, 2, 2, 2), np.float32), np.diag([2, 2, 2, 1.0])).to_metatensor()
            >>> tuple(t.shape), float(t.affine[0, 0])
            ((1, 2, 2, 2), 2.0)
        """
        import torch
        from monai.data import MetaTensor
        from monai.utils import MetaKeys, SpaceKeys

        array = self.array
        if any(stride < 0 for stride in array.strides):  # torch cannot view negative strides
            array = np.ascontiguousarray(array)
        meta = {
            MetaKeys.ORIGINAL_AFFINE: self.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(self.spatial_shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: 0,
            "filename_or_obj": self.source or "",
            "modality": self.modality or "",
        }
        return MetaTensor(torch.as_tensor(array), affine=torch.as_tensor(self.affine), meta=meta)


def _human_bytes(n: int) -> str:
    size, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
