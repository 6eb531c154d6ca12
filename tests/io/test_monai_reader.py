import nibabel as nib
import numpy as np
import pytest
from monai.data import MetaTensor
from monai.transforms import LoadImage, LoadImaged, Orientation

from medres3d.errors import VolumeLoadError
from medres3d.io.monai_reader import MedRes3DReader
from medres3d.synthetic import ct_phantom, make_affine, write_dicom_series


@pytest.fixture
def nifti(tmp_path):
    array = np.random.default_rng(0).integers(-1000, 1000, size=(8, 9, 5)).astype(np.int16)
    affine = make_affine((0.8, 0.9, 2.0), "sagittal", origin=(5.0, -3.0, 10.0))
    nib.save(nib.Nifti1Image(array, affine), tmp_path / "a.nii.gz")
    return tmp_path / "a.nii.gz"


def test_load_image_matches_nibabel_and_monai_nibabel_reader(nifti):
    image = LoadImage(reader=MedRes3DReader(), image_only=True)(nifti)
    ref = nib.load(nifti)
    assert isinstance(image, MetaTensor) and tuple(image.shape) == (1, 8, 9, 5)
    np.testing.assert_array_equal(image[0].numpy(), ref.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(image.affine.numpy(), ref.affine)
    # MONAI's own NIfTI reader, channel-first, gives the same tensor and geometry
    monai_image = LoadImage(image_only=True, ensure_channel_first=True)(nifti)
    np.testing.assert_array_equal(image.numpy(), monai_image.numpy())
    np.testing.assert_allclose(image.affine.numpy(), monai_image.affine.numpy())
    assert image.meta["space"] == "RAS" and image.meta["original_channel_dim"] == 0
    np.testing.assert_array_equal(image.meta["original_affine"], ref.affine)


def test_ensure_channel_first_leaves_channel_first_data_alone(nifti):
    image = LoadImage(reader=MedRes3DReader(), image_only=True, ensure_channel_first=True)(nifti)
    assert tuple(image.shape) == (1, 8, 9, 5)


def test_dictionary_pipeline_reads_a_dicom_folder_and_reorients(tmp_path):
    phantom = ct_phantom((10, 8, 6), seed=1).round()
    affine = make_affine((1.0, 1.2, 2.5), "coronal", flip=(True, False, True))
    write_dicom_series(phantom, affine, tmp_path / "series")
    sample = LoadImaged(keys="image", reader=MedRes3DReader())({"image": str(tmp_path / "series")})
    image = sample["image"]
    assert image.meta["modality"] == "CT"
    # the loader may order the slices differently; compared in canonical (RAS) voxel order
    loaded = nib.as_closest_canonical(nib.Nifti1Image(image[0].numpy(), image.affine.numpy()))
    expected = nib.as_closest_canonical(nib.Nifti1Image(phantom, affine))
    np.testing.assert_array_equal(loaded.get_fdata(), expected.get_fdata())
    np.testing.assert_allclose(loaded.affine, expected.affine, atol=1e-4)
    # MONAI's Orientation works from the affine we put in the meta: same result as nibabel's
    ras = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)
    np.testing.assert_array_equal(ras[0].numpy(), expected.get_fdata())
    np.testing.assert_allclose(ras.affine.numpy(), expected.affine, atol=1e-4)


def test_several_files_become_channels_and_must_share_a_grid(tmp_path, nifti):
    other = np.ones((8, 9, 5), np.float32)
    nib.save(nib.Nifti1Image(other, nib.load(nifti).affine), tmp_path / "b.nii.gz")
    image = LoadImage(reader=MedRes3DReader(), image_only=True)([nifti, tmp_path / "b.nii.gz"])
    assert tuple(image.shape) == (2, 8, 9, 5)
    np.testing.assert_array_equal(image[1].numpy(), other)
    nib.save(nib.Nifti1Image(other, np.eye(4)), tmp_path / "c.nii.gz")
    with pytest.raises(VolumeLoadError, match="share one grid"):
        LoadImage(reader=MedRes3DReader(), image_only=True)([nifti, tmp_path / "c.nii.gz"])


def test_verify_suffix(tmp_path):
    reader = MedRes3DReader()
    assert reader.verify_suffix(["a.nii.gz", "b.nrrd", "c.dcm", "IM0001", str(tmp_path)])
    assert not reader.verify_suffix(["a.nii.gz", "notes.txt"])
