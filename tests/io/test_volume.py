import nibabel as nib
import numpy as np
import pytest

from medres3d.errors import ConfigError, ResourceLimitError
from medres3d.io.limits import check_voxel_count
from medres3d.io.volume import Volume


def _oblique_affine() -> np.ndarray:
    # rotation about z by 30 degrees, anisotropic zooms, flipped first axis, offset origin
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.8, 0.6, 2.5])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    return affine


def test_properties_follow_the_affine():
    affine = _oblique_affine()
    vol = Volume(np.zeros((2, 3, 4, 5), np.float32), affine, modality="MR")
    np.testing.assert_allclose(vol.spacing, (0.8, 0.6, 2.5))
    assert vol.orientation == "".join(nib.aff2axcodes(affine))
    assert (vol.shape, vol.spatial_shape, vol.num_channels) == ((2, 3, 4, 5), (3, 4, 5), 2)
    assert vol.warnings == [] and vol.meta["warnings"] is vol.warnings


def test_repr_names_geometry_and_memory():
    array = np.zeros((1, 64, 64, 32), np.float32)
    vol = Volume(array, np.diag([-1, -1, 2, 1.0]), modality="CT", source="a.nii")
    text = repr(vol)
    for part in ("(1, 64, 64, 32)", "(1, 1, 2)", "'LPS'", "'CT'", "float32", "512.0 KiB", "'a.nii'"):
        assert part in text


@pytest.mark.parametrize(
    ("array", "affine", "words"),
    [
        (np.zeros((3, 4, 5), np.float32), np.eye(4), "4D"),
        (np.zeros((1, 0, 4, 5), np.float32), np.eye(4), "empty"),
        (np.zeros((1, 2, 2, 2), np.float32), np.eye(3), "4x4"),
        (np.zeros((1, 2, 2, 2), np.float32), np.diag([1, 0, 1, 1.0]), "invertible"),
        (np.zeros((1, 2, 2, 2), np.float32), np.full((4, 4), np.nan), "finite"),
    ],
)
def test_invalid_construction_is_a_config_error(array, affine, words):
    with pytest.raises(ConfigError, match=words):
        Volume(array, affine)


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint8", "float64", "int64"])
@pytest.mark.parametrize("channels", [1, 3])
def test_to_nifti_round_trip_is_lossless(tmp_path, dtype, channels):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(channels, 5, 6, 7)) * 100).astype(dtype)
    affine = _oblique_affine()
    path = tmp_path / "v.nii.gz"
    Volume(array, affine).to_nifti(path)
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    assert data.dtype == np.dtype(dtype)
    expected = array[0] if channels == 1 else np.moveaxis(array, 0, -1)
    np.testing.assert_array_equal(data, expected)
    # the sform stores float32: exact to float32 precision, and both codes are set
    np.testing.assert_allclose(img.affine, affine, rtol=0, atol=1e-5)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.header.get_qform(), affine, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_to_nifti_then_load_volume_gives_the_volume_back(tmp_path, dtype):
    from medres3d.io.readers import load_volume

    array = (np.random.default_rng(5).normal(size=(2, 4, 5, 6)) * 50).astype(dtype)
    vol = Volume(array, _oblique_affine(), modality="MR")
    vol.to_nifti(tmp_path / "v.nii.gz")
    back = load_volume(tmp_path / "v.nii.gz", dtype="native")
    assert back.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, vol.affine, rtol=0, atol=1e-5)


def test_to_nifti_widens_bool(tmp_path):
    array = np.zeros((1, 2, 3, 4), bool)
    array[0, 1, 2, 3] = True
    Volume(array, np.eye(4)).to_nifti(tmp_path / "m.nii")
    data = np.asanyarray(nib.load(tmp_path / "m.nii").dataobj)
    assert data.dtype == np.uint8 and data.sum() == 1 and data[1, 2, 3] == 1


def test_to_metatensor_carries_affine_and_meta():
    affine = _oblique_affine()
    array = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    tensor = Volume(array[:, ::-1], affine, modality="CT", source="s.nii").to_metatensor()
    np.testing.assert_array_equal(tensor.numpy(), array[:, ::-1])
    np.testing.assert_allclose(tensor.affine.numpy(), affine)
    assert tensor.meta["space"] == "RAS" and tensor.meta["filename_or_obj"] == "s.nii"
    assert tuple(tensor.meta["spatial_shape"]) == (3, 4, 5)


def test_voxel_limit_refuses_before_allocation():
    assert check_voxel_count((2, 3, 4), "x.nii", max_voxels=24) == 24
    with pytest.raises(ResourceLimitError, match=r"x\.nii: header claims 2x3x5 = 30 voxels"):
        check_voxel_count((2, 3, 5), "x.nii", max_voxels=24)
    assert check_voxel_count((10**6, 10**6), "x.nii", max_voxels=None) == 10**12
    with pytest.raises(ConfigError, match="max_voxels"):
        check_voxel_count((1,), "x.nii", max_voxels=0)
