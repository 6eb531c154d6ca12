"""Orthogonal slice views of a scan in the radiological convention, for notebooks and reports.

The voxel axes are first reordered and flipped to the closest RAS axes (nibabel's orientation
tools: no resampling, so oblique or sheared grids are shown on their own voxel grid). Then:

* axial: viewed from the feet: the patient's right on the viewer's left, anterior at the top;
* coronal: viewed from the front: the patient's right on the viewer's left, head at the top;
* sagittal: viewed from the patient's left: anterior on the viewer's left, head at the top.

Pixels keep their physical aspect ratio (anisotropic spacing is not squashed), and every panel
carries its orientation letters. The slices pass through a world point (RAS millimetres), so
views of one scan before and after resampling show the same anatomy.

Example:
    >>> import numpy as np
    >>> views = orthogonal_slices(np.zeros((4, 5, 6), np.float32), np.eye(4))
    >>> [(v.name, v.image.shape, v.markers) for v in views][0]
    ('axial', (5, 4), ('R', 'L', 'A', 'P'))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medres3d.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["SOFT_TISSUE_WINDOW", "SliceView", "display_window", "orthogonal_slices", "plot_orthogonal"]

SOFT_TISSUE_WINDOW = (40.0, 400.0)  # CT display window (level, width) in HU: -160 to 240 HU
_AIR_HU = -500.0  # a 1st percentile this low means Hounsfield units (air); MR intensities are >= 0


@dataclass(frozen=True)
class SliceView:
    """One displayed slice.

    Attributes:
        name: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        image: 2D array as displayed (row 0 at the top, column 0 at the left).
        overlay: the overlay's slice on the same pixels, or None.
        markers: orientation letters at the (left, right, top, bottom) edges.
        aspect: pixel height / pixel width in millimetres (``imshow(aspect=...)``).
        index: the slice's index along its axis in the RAS-reordered grid.
        crosshair: (column, row) of the world point in ``image``.
    """

    name: str
    image: np.ndarray
    overlay: np.ndarray | None
    markers: tuple[str, str, str, str]
    aspect: float
    index: int
    crosshair: tuple[int, int]


def _as_array_and_affine(image: Any, affine: Any, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """A 3D float array and its 4x4 affine from a Volume, a MetaTensor or an array plus affine."""
    if affine is None:
        affine = getattr(image, "affine", None)
        if affine is None:
            raise ConfigError("an array needs affine=<4x4 voxel-to-RAS matrix>; Volumes and MetaTensors "
                              "carry their own")
    data = getattr(image, "array", image)  # a Volume's voxels
    if hasattr(data, "detach"):  # torch tensor / MetaTensor
        data = data.detach().cpu().numpy()
    data = np.asarray(data)
    if data.ndim == 4:
        if not 0 <= channel < data.shape[0]:
            raise ConfigError(f"channel must be in [0, {data.shape[0] - 1}] for shape {data.shape}, "
                              f"got {channel!r}")
        data = data[channel]
    if data.ndim != 3:
        raise ConfigError(f"image must be 3D (H, W, D) or 4D (C, H, W, D), got shape {data.shape}")
    affine = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=float)
    if affine.shape != (4, 4):
        raise ConfigError(f"affine must be 4x4, got shape {affine.shape}")
    return data, affine


def _percentile_range(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [1, 99])
    return float(low), float(high if high > low else low + 1)


def display_window(values: Any, modality: str | None = None) -> tuple[float, float, str]:
    """Display range and a colour-bar label for a scan: a soft-tissue window for CT, else percentiles.

    A scan is taken as CT when ``modality`` is ``"CT"``, or when the modality is unknown (NIfTI) and
    its 1st percentile is at most -500 (air in Hounsfield units). CT gets :data:`SOFT_TISSUE_WINDOW`
    (W 400 / L 40: -160 to 240 HU), where a 1st-99th percentile range (air to bone) would wash out
    the soft tissue; anything else gets its 1st to 99th percentile.

    Example:
        >>> display_window(np.array([-1000.0, 0.0, 40.0, 700.0]))
        (-160.0, 240.0, 'HU, soft-tissue window (W 400, L 40)')
    """
    values = np.asarray(values)
    name = (modality or "").upper()
    if name == "CT" or (not name and np.percentile(values, 1) <= _AIR_HU):
        level, width = SOFT_TISSUE_WINDOW
        return level - width / 2, level + width / 2, f"HU, soft-tissue window (W {width:g}, L {level:g})"
    low, high = _percentile_range(values)
    return low, high, "intensity (1st to 99th percentile)"


def orthogonal_slices(
    image: Any,
    affine: Any = None,
    *,
    point: Sequence[float] | None = None,
    overlay: Any = None,
    channel: int = 0,
) -> list[SliceView]:
    """Axial, coronal and sagittal slices through ``point`` in the radiological convention.

    Args:
        image: a :class:`~medres3d.io.volume.Volume`, a MetaTensor ``(C, H, W, D)`` with its
            ``.affine``, or an array ``(H, W, D)`` / ``(C, H, W, D)`` with ``affine``.
        affine: the 4x4 voxel-to-RAS matrix when ``image`` is a plain array.
        point: world position (RAS mm) the three slices pass through; default the grid's centre.
        overlay: an array on the same voxel grid as ``image`` (e.g. a heatmap), sliced alike.
        channel: the channel of a 4D image (and overlay) to show.

    Raises:
        ConfigError: a bad shape, a missing affine, or a point outside the volume.

    Example:
        >>> import numpy as np
        >>> scan = np.zeros((3, 3, 3)); scan[2, 2, 1] = 1   # right, anterior voxel
        >>> axial = orthogonal_slices(scan, np.eye(4), point=(2, 2, 1))[0]
        >>> float(axial.image[0, 0])   # top-left: anterior, patient's right
        1.0
    """
    import nibabel as nib

    data, affine = _as_array_and_affine(image, affine, channel)
    extra = None
    if overlay is not None:
        extra, _ = _as_array_and_affine(overlay, affine, channel)
        if extra.shape != data.shape:
            raise ConfigError(f"overlay shape {extra.shape} must match the image's {data.shape}")
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt("RAS")
    )
    canonical = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    data = nib.orientations.apply_orientation(data, transform)
    if extra is not None:
        extra = nib.orientations.apply_orientation(extra, transform)
    shape = np.array(data.shape)
    if point is None:
        ijk = (shape - 1) // 2
    else:
        world = np.asarray(point, dtype=float)
        if world.shape != (3,) or not np.all(np.isfinite(world)):
            raise ConfigError(f"point must be three finite RAS coordinates in mm, got {point!r}")
        continuous = (np.linalg.inv(canonical) @ np.append(world, 1.0))[:3]
        if np.any(continuous < -0.5) or np.any(continuous > shape - 0.5):
            raise ConfigError(f"point {tuple(world)} mm lies outside the volume (voxel {continuous.round(1)} "
                              f"of a {tuple(shape)} grid)")
        ijk = np.clip(np.rint(continuous).astype(int), 0, shape - 1)
    i, j, k = (int(n) for n in ijk)
    ni, nj, nk = (int(n) for n in shape)
    sx, sy, sz = np.linalg.norm(canonical[:3, :3], axis=0)

    # In RAS order, i grows towards the patient's right, j towards anterior, k towards superior;
    # reversing an axis puts its R/A/S end first (at the left or the top of the picture).
    def axial(a: np.ndarray) -> np.ndarray:  # rows: A -> P, columns: R -> L
        return a[::-1, ::-1, k].T

    def coronal(a: np.ndarray) -> np.ndarray:  # rows: S -> I, columns: R -> L
        return a[::-1, j, ::-1].T

    def sagittal(a: np.ndarray) -> np.ndarray:  # rows: S -> I, columns: A -> P
        return a[i, ::-1, ::-1].T

    cuts = (
        ("axial", axial, ("R", "L", "A", "P"), sy / sx, k, (ni - 1 - i, nj - 1 - j)),
        ("coronal", coronal, ("R", "L", "S", "I"), sz / sx, j, (ni - 1 - i, nk - 1 - k)),
        ("sagittal", sagittal, ("A", "P", "S", "I"), sz / sy, i, (nj - 1 - j, nk - 1 - k)),
    )
    return [
        SliceView(name, cut(data), None if extra is None else cut(extra), markers, float(aspect), int(index),
                  crosshair)
        for name, cut, markers, aspect, index, crosshair in cuts
    ]


def plot_orthogonal(
    image: Any,
    affine: Any = None,
    *,
    point: Sequence[float] | None = None,
    channel: int = 0,
    axes: Sequence[Axes] | None = None,
    title: str | None = None,
    cmap: str = "gray",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str | None = None,
    overlay: Any = None,
    overlay_cmap: str = "inferno",
    overlay_range: tuple[float, float] = (0.0, 1.0),
    overlay_alpha: float = 0.45,
    overlay_label: str | None = None,
    outline: Any = None,
    outline_color: str = "lime",
    crosshair: bool = True,
) -> Figure:
    """Draw :func:`orthogonal_slices` on three axes, with orientation letters and colour bars.

    Args:
        image, affine, point, channel, overlay: as :func:`orthogonal_slices`.
        axes: three matplotlib axes to draw on; default a new pyplot figure (shown inline in a
            notebook). For several rows in one figure, give each row its own
            ``fig.subfigures(rows, 1)[r].subplots(1, 3)``, so that the title and the colour bars
            belong to the row. To write files without touching pyplot's backend, draw on the axes
            of a ``matplotlib.figure.Figure`` and call its ``savefig``.
        title: the (sub)figure's title.
        cmap, vmin, vmax: the image's colour map and range (default the 1st..99th percentile).
        colorbar_label: label of the image's colour bar (e.g. "HU").
        overlay_cmap, overlay_range, overlay_alpha, overlay_label: how the overlay is drawn.
        outline: a mask on the image's voxel grid (e.g. the true lesion), drawn as a contour at 0.5.
        outline_color: the contour's colour.
        crosshair: mark the point on each slice.

    Returns:
        The figure.

    Example:
        >>> import numpy as np
        >>> fig = plot_orthogonal(np.random.rand(8, 8, 4), np.diag([1, 1, 2, 1]), colorbar_label="a.u.")
        >>> len(fig.axes)   # three slices and a colour bar
        4
    """
    import matplotlib.pyplot as plt

    views = orthogonal_slices(image, affine, point=point, overlay=overlay, channel=channel)
    outlines: list[SliceView | None] = [None] * 3
    if outline is not None:
        data, resolved = _as_array_and_affine(image, affine, channel)
        mask, _ = _as_array_and_affine(outline, resolved, channel)
        if mask.shape != data.shape:
            raise ConfigError(f"outline shape {mask.shape} must match the image's {data.shape}")
        outlines = orthogonal_slices(mask.astype(np.float32), resolved, point=point)
    if axes is None:
        figure, axes = plt.subplots(1, 3, figsize=(13, 4.6), constrained_layout=True)
    elif len(axes) != 3:
        raise ConfigError(f"axes must be three matplotlib axes (axial, coronal, sagittal), got {len(axes)}")
    figure = axes[0].figure  # a SubFigure for axes of fig.subfigures(...), so each row has its own title
    if title:
        figure.suptitle(title, fontsize=13)
    if vmin is None or vmax is None:
        low, high = _percentile_range(np.concatenate([v.image.ravel() for v in views]))
        vmin = low if vmin is None else vmin
        vmax = high if vmax is None else vmax
    picture = shown = None
    for axis, view, mask_view in zip(axes, views, outlines, strict=True):
        picture = axis.imshow(view.image, cmap=cmap, vmin=vmin, vmax=vmax, aspect=view.aspect,
                              interpolation="nearest")
        if view.overlay is not None:
            shown = axis.imshow(view.overlay, cmap=overlay_cmap, vmin=overlay_range[0], vmax=overlay_range[1],
                                alpha=overlay_alpha, aspect=view.aspect, interpolation="nearest")
        if mask_view is not None and np.ptp(mask_view.image) > 0:
            limits = axis.get_xlim(), axis.get_ylim()  # a contour would shrink them by half a pixel
            axis.contour(mask_view.image, levels=[0.5], colors=outline_color, linewidths=1.2)
            axis.set_xlim(limits[0])
            axis.set_ylim(limits[1])
        if crosshair:
            column, row = view.crosshair
            axis.axvline(column, color="cyan", lw=0.6, alpha=0.6)
            axis.axhline(row, color="cyan", lw=0.6, alpha=0.6)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_xlabel(f"{view.name} (slice {view.index})", fontsize=10)
        left, right, top, bottom = view.markers
        style = {"color": "yellow", "fontsize": 12, "fontweight": "bold", "transform": axis.transAxes}
        axis.text(0.02, 0.5, left, ha="left", va="center", **style)
        axis.text(0.98, 0.5, right, ha="right", va="center", **style)
        axis.text(0.5, 0.98, top, ha="center", va="top", **style)
        axis.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    figure.colorbar(picture, ax=list(axes), shrink=0.85, pad=0.01, label=colorbar_label)
    if shown is not None:
        figure.colorbar(shown, ax=list(axes), shrink=0.85, pad=0.01, label=overlay_label)
    return figure
