"""Multi-sequence scans: one file per channel, stacked on the first channel's grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medres3d.errors import ConfigError, VolumeLoadError
from medres3d.io.channels import coverage, load_channels, load_scan
from medres3d.io.readers import load_volume
from medres3d.io.volume import Volume


def _grid_affine(spacing, origin, degrees=0.0):
    """Voxel-to-RAS affine: a rotation about the S axis times the spacing, then the origin."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _smooth_field(shape, affine):
    """A smooth function of world position, so both resamplers interpolate the same values."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).reshape(3, -1)
    x, y, z = affine[:3, :3] @ ijk + affine[:3, 3:4]
    values = 100 * np.sin(x / 9.0) + 60 * np.cos(y / 7.0) + 2.0 * z + 500
    return values.reshape(shape).astype(np.float32)


@pytest.fixture
def sequences(tmp_path):
    """t1 (16x14x10, 1.5x1.5x3 mm); t2 on the same grid; flair on a rotated, shifted, coarser grid."""
    t1_affine = _grid_affine((1.5, 1.5, 3.0), (-12.0, -10.0, -15.0))
    flair_affine = _grid_affine((2.0, 1.8, 2.5), (-14.0, -13.0, -17.0), degrees=12.0)
    files = {}
    grids = (("t1", (16, 14, 10), t1_affine, 1.0), ("t2", (16, 14, 10), t1_affine, -0.5),
             ("flair", (14, 14, 14), flair_affine, 2.0))
    for name, shape, affine, scale in grids:
        path = tmp_path / f"{name}.nii.gz"
        Volume(scale * _smooth_field(shape, affine)[None], affine).to_nifti(path)
        files[name] = path
    return files


def test_channels_match_per_file_loading_and_simpleitk_resampling(sequences):
    paths = [sequences["t1"], sequences["t2"], sequences["flair"]]
    vol = load_channels(paths, names=["t1", "t2", "flair"])
    t1, t2 = load_volume(paths[0]), load_volume(paths[1])

    assert vol.shape == (3, *t1.spatial_shape)
    np.testing.assert_array_equal(vol.affine, t1.affine)
    np.testing.assert_array_equal(vol.array[0], t1.array[0])
    np.testing.assert_array_equal(vol.array[1], t2.array[0])  # same grid: taken as it is
    assert vol.meta["channels"] == ["t1", "t2", "flair"]
    assert vol.meta["channel_sources"] == [str(p) for p in paths]
    assert vol.meta["resampled_channels"] == ["flair"]
    assert vol.source == str(paths[0])

    # the independent reference: SimpleITK's linear resampling onto the t1 image, identity transform
    reference = sitk.Resample(sitk.ReadImage(str(paths[2])), sitk.ReadImage(str(paths[0])), sitk.Transform(),
                              sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    expected = np.transpose(sitk.GetArrayFromImage(reference), (2, 1, 0))
    flair = load_volume(paths[2])
    # compare where the t1 voxel lies inside flair's grid (by a voxel): edges differ only in how
    # each resampler extends the border
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in vol.spatial_shape], indexing="ij")).reshape(3, -1)
    source = (np.linalg.inv(flair.affine) @ vol.affine)[:3] @ np.vstack([ijk, np.ones(ijk.shape[1])])
    inside = np.all((source >= 1) & (source <= np.array(flair.spatial_shape)[:, None] - 2), axis=0)
    inside = inside.reshape(vol.spatial_shape)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(vol.array[2][inside], expected[inside], rtol=1e-4, atol=1e-2)
    # and the resampled values are the smooth field at the t1 voxels' world positions (2x flair's)
    truth = 2.0 * _smooth_field(vol.spatial_shape, vol.affine)
    assert np.abs(vol.array[2][inside] - truth[inside]).max() < 0.03 * np.ptp(truth)


def test_load_scan_dispatches_on_lists(sequences):
    assert load_scan(sequences["t1"]).num_channels == 1
    assert load_scan((sequences["t1"], sequences["flair"])).meta["channels"] == ["channel_0", "channel_1"]


def test_missing_channel_file_names_the_file(sequences, tmp_path):
    missing = tmp_path / "missing_flair.nii.gz"
    with pytest.raises(VolumeLoadError, match=r"missing_flair\.nii\.gz: no such file"):
        load_channels([sequences["t1"], missing])


def test_channel_outside_the_field_of_view_is_refused(sequences, tmp_path):
    far = tmp_path / "far.nii.gz"
    Volume(np.ones((1, 8, 8, 8), np.float32), _grid_affine((1.0, 1.0, 1.0), (500.0, 0.0, 0.0))).to_nifti(far)
    with pytest.raises(VolumeLoadError, match=r"far.nii.gz: channel 'b' does not overlap .* 'a'"):
        load_channels([sequences["t1"], far], names=["a", "b"])


def test_partial_overlap_is_a_warning(sequences, tmp_path):
    half = tmp_path / "half.nii.gz"
    t1 = load_volume(sequences["t1"])
    Volume(np.ones((1, 8, 14, 10), np.float32), t1.affine).to_nifti(half)  # half of t1 along i
    vol = load_channels([sequences["t1"], half], names=["t1", "half"])
    assert any("half: covers 50%" in w for w in vol.warnings)
    assert vol.array[1, :8].min() == 1.0 and vol.array[1, 9:].max() == 0.0


def test_bad_arguments(sequences, tmp_path):
    four_d = tmp_path / "4d.nii.gz"
    Volume(np.ones((2, 4, 4, 4), np.float32), np.eye(4)).to_nifti(four_d)
    with pytest.raises(VolumeLoadError, match=r"4d\.nii\.gz: holds 2 volumes"):
        load_channels([sequences["t1"], four_d])
    with pytest.raises(ConfigError, match=r"2 channel file.*3 channel name"):
        load_channels([sequences["t1"], sequences["t2"]], names=["a", "b", "c"])
    with pytest.raises(ConfigError, match="list of paths"):
        load_channels(sequences["t1"])
    with pytest.raises(ConfigError, match="at least one path"):
        load_channels([])


def test_coverage_of_shifted_grids():
    assert coverage((4, 4, 4), np.eye(4), (4, 4, 4), np.eye(4)) == 1.0
    assert coverage((4, 4, 4), np.eye(4), (4, 4, 4), _grid_affine((1, 1, 1), (2.0, 0, 0))) == 0.5
    assert coverage((4, 4, 4), np.eye(4), (4, 4, 4), _grid_affine((1, 1, 1), (10.0, 0, 0))) == 0.0
