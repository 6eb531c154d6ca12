"""Radiological slice views: a marker voxel at a known world position lands where a radiologist expects it."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest

from medres3d.errors import ConfigError
from medres3d.synthetic import centered_origin, make_affine
from medres3d.viz import SOFT_TISSUE_WINDOW, display_window, orthogonal_slices, plot_orthogonal

SHAPE = (9, 10, 11)
SPACING = (1.0, 1.5, 2.0)


def _marker_volume(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A volume with one voxel set: the one nearest to 4 mm right, 4 mm anterior, 6 mm superior of centre."""
    ijk = np.indices(SHAPE).reshape(3, -1).T
    world = nib.affines.apply_affine(affine, ijk)
    nearest = int(np.argmin(np.linalg.norm(world - [4.0, 4.0, 6.0], axis=1)))
    volume = np.zeros(SHAPE, np.float32)
    volume[tuple(ijk[nearest])] = 1.0
    return volume, world[nearest]


def _spacing_along_world_axes(affine: np.ndarray) -> np.ndarray:
    # The voxel axis closest to each world axis (R, A, S) and its step length in mm.
    columns = affine[:3, :3]
    return np.array([np.linalg.norm(columns[:, np.argmax(np.abs(columns[axis]))]) for axis in range(3)])


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("flip", [(False, False, False), (True, True, False), (False, True, True)])
def test_marker_is_right_anterior_superior_on_screen(orientation, flip):
    affine = centered_origin(SHAPE, make_affine(SPACING, orientation, flip=flip))
    volume, where = _marker_volume(affine)
    views = orthogonal_slices(volume, affine, point=where)
    assert [v.name for v in views] == ["axial", "coronal", "sagittal"]
    assert [v.markers for v in views] == [("R", "L", "A", "P"), ("R", "L", "S", "I"), ("A", "P", "S", "I")]
    sr, sa, ss = _spacing_along_world_axes(affine)
    np.testing.assert_allclose([v.aspect for v in views], [sa / sr, ss / sr, ss / sa])
    for view in views:
        (row, column), = np.argwhere(view.image == 1.0)
        assert (column, row) == view.crosshair
        height, width = view.image.shape
        # The marker is right (axial, coronal) / anterior (sagittal) of the centre: the viewer's left;
        # anterior (axial) / superior (coronal, sagittal): the top.
        assert column < (width - 1) / 2, view.name
        assert row < (height - 1) / 2, view.name


def test_default_point_is_the_grid_centre_and_overlay_follows_the_image():
    volume = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    views = orthogonal_slices(volume, np.eye(4), overlay=2 * volume)
    assert [v.index for v in views] == [5, 4, 4]  # k, j, i of the centre voxel (4, 4, 5)
    for view in views:
        np.testing.assert_array_equal(view.overlay, 2 * view.image)
    np.testing.assert_array_equal(views[0].image, volume[::-1, ::-1, 5].T)


def test_bad_inputs_name_the_problem():
    volume = np.zeros(SHAPE, np.float32)
    with pytest.raises(ConfigError, match="outside the volume"):
        orthogonal_slices(volume, np.eye(4), point=(100.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="overlay shape"):
        orthogonal_slices(volume, np.eye(4), overlay=np.zeros((2, 2, 2)))
    with pytest.raises(ConfigError, match="affine"):
        orthogonal_slices(volume)


def test_plot_draws_three_slices_and_colour_bars():
    volume = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    figure = plot_orthogonal(volume[None], np.diag([*SPACING, 1.0]), overlay=volume[None],
                             colorbar_label="a.u.")
    assert len(figure.axes) == 5  # three slices, the image's and the overlay's colour bars
    assert [a.get_xlabel() for a in figure.axes[:3]] == ["axial (slice 5)", "coronal (slice 4)",
                                                         "sagittal (slice 4)"]
    plt.close(figure)


def test_outline_is_drawn_around_the_marker_on_each_slice():
    affine = centered_origin(SHAPE, make_affine(SPACING, "coronal", flip=(True, False, False)))
    volume, where = _marker_volume(affine)
    figure = plot_orthogonal(volume, affine, point=where, outline=volume > 0)
    views = orthogonal_slices(volume, affine, point=where)
    for axis, view in zip(figure.axes[:3], views, strict=True):
        (contour,) = [c for c in axis.collections if hasattr(c, "allsegs")]
        points = np.concatenate(contour.allsegs[0])  # (x, y) = (column, row)
        # the 0.5 level of a one-voxel mask lies within half a pixel of the marker's pixel
        assert np.all(np.abs(points - view.crosshair) <= 0.5 + 1e-9), view.name
    plt.close(figure)


def test_display_window_is_soft_tissue_for_ct_and_percentiles_otherwise():
    level, width = SOFT_TISSUE_WINDOW
    ct = np.random.default_rng(1).normal(40.0, 30.0, size=1000)  # no air: HU only by its modality
    assert display_window(ct, "CT")[:2] == (level - width / 2, level + width / 2) == (-160.0, 240.0)
    with_air = np.concatenate([ct, np.full(100, -1000.0)])
    assert display_window(with_air)[:2] == (-160.0, 240.0)  # unknown modality, Hounsfield-like values
    mr = np.random.default_rng(2).gamma(2.0, 100.0, size=1000)
    assert display_window(mr, "MR")[:2] == pytest.approx(tuple(np.percentile(mr, [1, 99])))
    assert display_window(ct)[:2] == pytest.approx(tuple(np.percentile(ct, [1, 99])))
