import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medres3d.errors import CorruptFileError, ResourceLimitError, UnsupportedFormatError
from medres3d.io.itk import load_itk

# direction matrices (columns = voxel axes in LPS): axial, coronal, sagittal, flipped, oblique
_c, _s = np.cos(0.4), np.sin(0.4)
_DIRECTIONS = {
    "axial": np.eye(3),
    "coronal": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0.0]]),
    "sagittal": np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0.0]]),
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    "oblique": np.array([[_c, 0, _s], [0, 1, 0], [-_s, 0, _c]])
    @ np.array([[_c, -_s, 0], [_s, _c, 0], [0, 0, 1]]),
}


def _image(array_zyx: np.ndarray, direction: np.ndarray, is_vector: bool = False) -> sitk.Image:
    img = sitk.GetImageFromArray(array_zyx, isVector=is_vector)
    img.SetSpacing((0.6, 0.8, 2.5))
    img.SetOrigin((-30.0, 45.0, 12.0))
    img.SetDirection(tuple(direction.ravel()))
    return img


def _world_ras_of(img: sitk.Image, index) -> np.ndarray:
    x, y, z = img.TransformIndexToPhysicalPoint(tuple(int(i) for i in index))
    return np.array([-x, -y, z])  # SimpleITK's LPS point, in RAS


@pytest.mark.parametrize("orientation", sorted(_DIRECTIONS))
@pytest.mark.parametrize("ext", ["nrrd", "mha", "mhd"])
def test_voxels_and_world_points_equal_simpleitk(tmp_path, orientation, ext):
    array = np.random.default_rng(0).integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    img = _image(array, _DIRECTIONS[orientation])
    path = tmp_path / f"v.{ext}"
    sitk.WriteImage(img, str(path))
    vol = load_itk(path)
    assert vol.shape == (1, 7, 6, 5) and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array[0], sitk.GetArrayFromImage(sitk.ReadImage(str(path))).T)
    for index in [(0, 0, 0), (6, 0, 0), (0, 5, 0), (0, 0, 4), (3, 2, 1)]:
        np.testing.assert_allclose((vol.affine @ [*index, 1])[:3], _world_ras_of(img, index), atol=1e-9)


def test_same_geometry_as_nibabel_reading_the_same_image_as_nifti(tmp_path):
    # SimpleITK writes NIfTI itself (converting LPS->RAS); nibabel reading that must agree with us
    img = _image(np.zeros((5, 6, 7), np.float32), _DIRECTIONS["oblique"])
    sitk.WriteImage(img, str(tmp_path / "v.nii"))
    sitk.WriteImage(img, str(tmp_path / "v.nrrd"))
    expected = nib.load(tmp_path / "v.nii").affine
    np.testing.assert_allclose(load_itk(tmp_path / "v.nrrd").affine, expected, atol=1e-5)


def test_vector_pixels_become_channels(tmp_path):
    array = np.random.default_rng(1).normal(size=(5, 6, 7, 3)).astype(np.float32)
    sitk.WriteImage(_image(array, np.eye(3), is_vector=True), str(tmp_path / "v.nrrd"))
    vol = load_itk(tmp_path / "v.nrrd")
    assert vol.shape == (3, 7, 6, 5)
    for c in range(3):
        np.testing.assert_array_equal(vol.array[c], array[..., c].T)


def test_4d_scalar_image_fourth_axis_becomes_channels(tmp_path):
    array = np.random.default_rng(2).normal(size=(2, 5, 6, 7)).astype(np.float32)  # (t, z, y, x)
    image = sitk.JoinSeries([sitk.GetImageFromArray(volume) for volume in array])
    assert image.GetDimension() == 4
    sitk.WriteImage(image, str(tmp_path / "v.mha"))
    vol = load_itk(tmp_path / "v.mha")
    assert vol.shape == (2, 7, 6, 5)
    np.testing.assert_array_equal(vol.array[1], array[1].T)


def test_native_dtype(tmp_path):
    array = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "v.nrrd"))
    vol = load_itk(tmp_path / "v.nrrd", dtype="native")
    assert vol.array.dtype == np.uint16
    np.testing.assert_array_equal(vol.array[0], array.T)


def test_bad_files(tmp_path):
    (tmp_path / "empty.nrrd").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        load_itk(tmp_path / "empty.nrrd")
    (tmp_path / "text.mha").write_text("not an image at all\n")
    with pytest.raises(CorruptFileError, match="cannot read the header"):
        load_itk(tmp_path / "text.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 20, 20), np.float32)), str(tmp_path / "t.mhd"))
    raw = tmp_path / "t.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(CorruptFileError, match="cannot read the voxels"):
        load_itk(tmp_path / "t.mhd")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 20), np.float32)), str(tmp_path / "flat.nrrd"))
    with pytest.raises(UnsupportedFormatError, match="2D image"):
        load_itk(tmp_path / "flat.nrrd")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 4, 4), np.float32)), str(tmp_path / "big.nrrd"))
    with pytest.raises(ResourceLimitError, match="64 voxels"):
        load_itk(tmp_path / "big.nrrd", max_voxels=63)
