"""Siemens mosaic images (EPI: fMRI, diffusion, ASL): one file holds every slice of one volume.

A mosaic file is a single 2D image whose tiles are the slices, laid out row by row on a square
grid of ``ceil(sqrt(n))`` tiles, ``n`` being NumberOfImagesInMosaic. Its ImagePositionPatient is
the corner of the whole mosaic, not of the first slice, and the slice direction is the CSA
header's SliceNormalVector (the order of the tiles), which may be the opposite of the row x
column cross product. The CSA header is parsed, and the position corrected, by nibabel
(:mod:`nibabel.nicom.csareader`, :class:`nibabel.nicom.dicomwrappers.MosaicWrapper`); this module
checks what they claim against the image before allocating anything, cuts the tiles, and returns
the voxels in medres3d's layout (``array[0, i, j, k]`` is ``tile_k[j, i]``, RAS+ affine, as
:mod:`medres3d.io.dicom.stack`).

Example:
    >>> from medres3d.io.dicom.header import read_header
    >>> vol = load_mosaic(read_header("siemens_dwi_1000.dcm"))   # doctest: +SKIP
    >>> vol.shape, vol.meta["b_value"]                           # doctest: +SKIP
    ((1, 128, 128, 48), 1000.0)
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from medres3d.errors import CorruptFileError, SeriesGeometryError
from medres3d.io.dicom.header import read_dataset_header
from medres3d.io.dicom.pixels import read_frames, rescale_into
from medres3d.io.dicom.stack import Allocator, check_image_size, resolve_dtype, series_meta
from medres3d.io.dicom.types import FileHeader
from medres3d.io.limits import DEFAULT_MAX_VOXELS, check_voxel_count
from medres3d.io.volume import Volume

# What nibabel's MosaicWrapper reads (the CSA image header, geometry, the private block creators).
_MOSAIC_TAGS: list[Any] = [
    "SOPClassUID", "Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "ImageType", 0x00290010, 0x00291010, 0x00190010, 0x0019100A,
]  # fmt: skip
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class MosaicLayout:
    """How one mosaic file holds its volume.

    Attributes:
        num_images: NumberOfImagesInMosaic (the slices).
        tiles: tiles per side of the square mosaic grid.
        rows, columns: size of one slice (tile).
        affine_ras: voxel ``(i, j, k)`` -> RAS+ mm, i along the row direction (tile columns).
        warning: what was assumed, when the header lacked something (None otherwise).
    """

    num_images: int
    tiles: int
    rows: int
    columns: int
    affine_ras: np.ndarray
    warning: str | None = None


# Smaller tiles are no image: a header claiming that many images is damaged.
_MIN_TILE = 4


def mosaic_layout(header: FileHeader) -> MosaicLayout:
    """Read and check the CSA header of a mosaic file: number of images, tiling and geometry.

    Raises:
        CorruptFileError: no (or an unreadable, truncated) CSA image header, no number of images,
            or a number of images that the mosaic's Rows x Columns cannot hold.
        SeriesGeometryError: no ImagePositionPatient/ImageOrientationPatient/PixelSpacing.

    Example:
        >>> layout = mosaic_layout(read_header("siemens_dwi_0.dcm"))   # doctest: +SKIP
        >>> layout.num_images, layout.tiles, layout.rows                 # doctest: +SKIP
        (48, 7, 128)
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel's "highly experimental" notice on import
        from nibabel.nicom import csareader
        from nibabel.nicom.dicomwrappers import MosaicWrapper, WrapperError

    check_image_size(header)
    try:
        ds = read_dataset_header(header.path, _MOSAIC_TAGS)
        csa = csareader.get_csa_header(ds, "image")
    # nibabel's CSA parser raises all of these on damaged headers (struct.error and assert on a cut one)
    except (csareader.CSAReadError, ValueError, KeyError, TypeError, IndexError, OSError, EOFError,
            struct.error, AssertionError) as err:  # fmt: skip
        raise CorruptFileError(
            header.path, f"a Siemens mosaic with an unreadable CSA image header: {err}"
        ) from err
    count = _csa_count(csa, header)
    if count is None:
        raise CorruptFileError(
            header.path,
            "a Siemens mosaic (ImageType MOSAIC) without NumberOfImagesInMosaic, neither in the CSA image "
            "header (0029,1010) nor in (0019,100A): the number of slices is unknown",
        )
    tiles = math.ceil(math.sqrt(count))
    # Tiles are Rows // tiles high, as nibabel and dcm2niix cut them: a mosaic's sides need not be
    # a multiple of the grid (nibabel's 0.dcm: 48 tiles of 36x36 in 256x256, the rest unused).
    if count < 1 or min(header.rows, header.columns) // tiles < _MIN_TILE:
        raise CorruptFileError(
            header.path,
            f"a Siemens mosaic claims {count} images, which a {header.rows}x{header.columns} image cannot "
            f"hold as a {tiles}x{tiles} grid of tiles of at least {_MIN_TILE}x{_MIN_TILE} pixels",
        )
    if header.position is None or header.orientation is None or header.pixel_spacing is None:
        raise SeriesGeometryError(
            header.path, "a Siemens mosaic without ImagePositionPatient/ImageOrientationPatient/PixelSpacing"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel's notices about its wrappers
        try:
            wrapper = MosaicWrapper(ds, csa, count)
            nib_affine = np.asarray(wrapper.affine, dtype=np.float64)
        except (WrapperError, ValueError, TypeError, KeyError, np.linalg.LinAlgError) as err:
            raise SeriesGeometryError(
                header.path, f"the Siemens mosaic's geometry cannot be computed: {err}"
            ) from err
    if nib_affine.shape != (4, 4) or not np.all(np.isfinite(nib_affine)):
        raise SeriesGeometryError(header.path, "the Siemens mosaic's geometry is not finite")
    # nibabel's voxel axes are (row index, column index, slice) in LPS; medres3d's i runs along columns.
    affine_lps = nib_affine[:, [1, 0, 2, 3]]
    note = None
    if not (csa or {}).get("tags", {}).get("SliceNormalVector", {}).get("items"):
        # Without the CSA slice normal, nibabel's fallback normal is column x row (its axes are
        # swapped), the opposite of DICOM's row x column; the tiles are taken to run along the latter.
        row, col = np.asarray(header.orientation[:3]), np.asarray(header.orientation[3:])
        affine_lps[:3, 2] = np.cross(row, col) * np.linalg.norm(affine_lps[:3, 2])
        note = (
            "mosaic-no-slice-normal: the CSA header has no SliceNormalVector, so the order of the "
            "tiles is assumed to run along the row x column normal; check left/right and head/foot"
        )
    return MosaicLayout(
        count, tiles, header.rows // tiles, header.columns // tiles, _LPS_TO_RAS @ affine_lps, note
    )


def _csa_count(csa: dict[str, Any] | None, header: FileHeader) -> int | None:
    from nibabel.nicom import csareader

    if csa is not None:
        try:
            count = csareader.get_n_mosaic(csa)
            if count:
                return int(count)
        except (KeyError, ValueError, TypeError, IndexError):
            pass  # a CSA header without the number: (0019,100A) may still have it
    return header.mosaic_images or None


def read_mosaic_into(out: np.ndarray, header: FileHeader, layout: MosaicLayout) -> None:
    """Decode the mosaic and write its rescaled tiles into ``out`` of shape ``(images, rows, cols)``."""
    mosaic = read_frames(header)[0]
    if mosaic.shape != (header.rows, header.columns):
        raise CorruptFileError(
            header.path, f"decoded mosaic is {mosaic.shape}, the header says {header.rows}x{header.columns}"
        )
    t, r, c = layout.tiles, layout.rows, layout.columns
    # (tile row, row, tile column, column) -> tiles in row-major order, as Siemens lays them out;
    # rows and columns past the last whole tile are not part of any image
    tiles = mosaic[: t * r, : t * c].reshape(t, r, t, c).transpose(0, 2, 1, 3).reshape(t * t, r, c)
    for k in range(layout.num_images):
        rescale_into(out[k], tiles[k], header.slope, header.intercept)


def load_mosaic(
    header: FileHeader,
    *,
    dtype: str = "float32",
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    notes: tuple[str, ...] = (),
    allocate: Allocator | None = None,
) -> Volume:
    """One mosaic file as a 3D Volume, with its diffusion values in ``meta``.

    Args:
        header: the file's header (``header.is_mosaic``).
        dtype: "float32", "float64" or "native" (as :func:`medres3d.io.dicom.load_dicom_series`).
        max_voxels: refuse a mosaic whose slices hold more voxels (None: no limit).
        notes: warnings carried into the volume.
        allocate: the slice-major ``(slices, rows, cols)`` buffer to cut the tiles into (as in
            :func:`~medres3d.io.dicom.stack.build_volume`: one channel of a 4D array).

    Raises:
        CorruptFileError, SeriesGeometryError: as :func:`mosaic_layout`; undecodable pixels.
        ResourceLimitError: more voxels than ``max_voxels``.

    Example:
        >>> vol = load_mosaic(read_header("siemens_dwi_1000.dcm"))   # doctest: +SKIP
    """
    layout = mosaic_layout(header)
    check_voxel_count((1, layout.columns, layout.rows, layout.num_images), header.path, max_voxels)
    out_dtype, dtype_note = resolve_dtype(dtype, [_Rescale(header)], [header])  # type: ignore[list-item]
    buffer = (allocate or np.empty)((layout.num_images, layout.rows, layout.columns), out_dtype)
    read_mosaic_into(buffer, header, layout)
    meta = {
        **series_meta(header),
        **volume_values(header),
        "mosaic": {"num_images": layout.num_images, "tiles": layout.tiles},
        "rescale": {"slope": header.slope, "intercept": header.intercept},
        "num_slices": layout.num_images,
        "warnings": [*notes, *(w for w in (layout.warning, dtype_note) if w)],
    }
    return Volume(
        buffer.transpose(2, 1, 0)[None],
        layout.affine_ras,
        modality=header.modality or None,
        meta=meta,
        source=os.fspath(header.path),
    )


@dataclass(frozen=True)
class _Rescale:
    """The slope and intercept that :func:`resolve_dtype` looks at."""

    header: FileHeader

    @property
    def slope(self) -> float:
        return self.header.slope

    @property
    def intercept(self) -> float:
        return self.header.intercept


def volume_values(header: FileHeader) -> dict[str, Any]:
    """What tells one volume of a 4D series apart, from its header (absent values are None).

    Example:
        >>> volume_values(header)["b_value"]   # doctest: +SKIP
        1000.0
    """
    return {
        "b_value": header.b_value,
        "gradient_lps": list(header.gradient) if header.gradient is not None else None,
        "echo_time": header.echo_time,
        "repetition_time": header.repetition_time,
        "image_kind": header.image_kind or None,
        "acquisition_time": header.acquisition_time or None,
        "temporal_position": header.temporal_position,
        "acquisition": header.acquisition,
    }
