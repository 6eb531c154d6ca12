import numpy as np
import pydicom
import pytest

from medres3d.synthetic import make_affine, write_enhanced_dicom, write_localizer, write_non_image_object


def _volume_from_frames(ds, affine, shape):
    """Place every frame at the slice index k that its own position and orientation give (inverse affine)."""
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    volume = np.full(shape, np.nan)
    inverse = np.linalg.inv(affine)
    for pixels, item in zip(ds.pixel_array, ds.PerFrameFunctionalGroupsSequence, strict=True):
        rescale = (
            item if "PixelValueTransformationSequence" in item else shared
        ).PixelValueTransformationSequence[0]
        lps = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        index = inverse @ [-lps[0], -lps[1], lps[2], 1.0]
        np.testing.assert_allclose(index[:2], 0.0, atol=1e-4)
        k = round(index[2])
        np.testing.assert_allclose(index[2], k, atol=1e-4)
        # Row direction must be voxel axis i, column direction axis j (both mapped to LPS).
        np.testing.assert_allclose(
            orientation[:3], (affine[:3, 0] / np.linalg.norm(affine[:3, 0])) * [-1, -1, 1], atol=1e-5
        )
        volume[:, :, k] = (pixels * float(rescale.RescaleSlope) + float(rescale.RescaleIntercept)).T
    return volume


@pytest.mark.parametrize("orientation", ["axial", "oblique"])
def test_enhanced_ct_positions_and_per_frame_rescale(tmp_path, small_ct, orientation):
    affine = make_affine((0.7, 0.9, 1.6), orientation, (True, False, False), origin=(3.0, 4.0, 5.0))
    path = write_enhanced_dicom(
        small_ct, affine, tmp_path / "e.dcm", shuffle_frames=True, per_frame_rescale=True
    )
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.EnhancedCTImageStorage
    assert int(ds.NumberOfFrames) == small_ct.shape[2]
    in_stack = [
        int(i.FrameContentSequence[0].InStackPositionNumber) for i in ds.PerFrameFunctionalGroupsSequence
    ]
    assert in_stack != sorted(in_stack)  # frames really are stored out of order
    intercepts = {
        float(i.PixelValueTransformationSequence[0].RescaleIntercept)
        for i in ds.PerFrameFunctionalGroupsSequence
    }
    assert len(intercepts) == 3
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx([0.9, 0.7])
    np.testing.assert_array_equal(_volume_from_frames(ds, affine, small_ct.shape), small_ct)


def test_enhanced_mr_has_mr_class_and_no_rescale(tmp_path):
    volume = np.arange(8 * 6 * 3, dtype=float).reshape(8, 6, 3)
    ds = pydicom.dcmread(write_enhanced_dicom(volume, make_affine(), tmp_path / "mr.dcm", modality="MR"))
    assert ds.SOPClassUID == pydicom.uid.EnhancedMRImageStorage
    assert "PixelValueTransformationSequence" not in ds.SharedFunctionalGroupsSequence[0]
    np.testing.assert_array_equal(ds.pixel_array.transpose(2, 1, 0), volume)


def test_localizer_is_a_2d_orthogonal_scout_that_can_share_a_series(tmp_path):
    path = write_localizer(tmp_path, series_uid="1.2.3.4", size=(40, 50))
    ds = pydicom.dcmread(path)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert ds.SeriesInstanceUID == "1.2.3.4"
    assert (ds.Rows, ds.Columns) == (50, 40)
    orientation = np.array(ds.ImageOrientationPatient, float)
    assert abs(np.cross(orientation[:3], orientation[3:]) @ [0, 0, 1]) < 1e-9  # not an axial plane
    image = ds.pixel_array.astype(float)
    assert image.max() > 10 * max(image[0, 0], 1.0)  # a body in the middle, air at the corner


EXPECTED_CLASSES = {
    "SEG": pydicom.uid.SegmentationStorage,
    "SR": pydicom.uid.BasicTextSRStorage,
    "RTSTRUCT": pydicom.uid.RTStructureSetStorage,
    "PR": pydicom.uid.GrayscaleSoftcopyPresentationStateStorage,
    "DICOMDIR": pydicom.uid.MediaStorageDirectoryStorage,
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_CLASSES))
def test_non_image_objects_carry_their_sop_class(tmp_path, kind):
    path = write_non_image_object(kind, tmp_path / kind, study_uid="1.2.3")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == EXPECTED_CLASSES[kind]
    assert ds.file_meta.MediaStorageSOPClassUID == EXPECTED_CLASSES[kind]
    if kind != "DICOMDIR":
        assert (ds.Modality, ds.StudyInstanceUID) == (kind, "1.2.3")
    assert ("PixelData" in ds) == (kind == "SEG")


def test_seg_frame_is_a_one_bit_mask(tmp_path):
    ds = pydicom.dcmread(write_non_image_object("SEG", tmp_path / "seg.dcm"))
    assert (ds.BitsAllocated, ds.Rows, ds.Columns) == (1, 8, 8)
    assert int(ds.pixel_array.sum()) == 12
