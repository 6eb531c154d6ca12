"""Independent references for the DICOM tests: SimpleITK's series reader and nibabel's canonical form."""

from __future__ import annotations

import nibabel as nib
import numpy as np

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def sitk_series(folder):
    """(array indexed (i, j, k), RAS affine) from SimpleITK's GDCM series reader of ``folder``."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    affine = np.eye(4)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    # SimpleITK arrays are (k, j, i) with LPS geometry.
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), _LPS_TO_RAS @ affine


def canonical(array, affine):
    """Voxels and affine reoriented to the closest RAS axes (nibabel), so different voxel orders compare."""
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float)))
    return np.asarray(image.dataobj), image.affine


def assert_same_world(array, affine, ref_array, ref_affine, atol=1e-4):
    """Equal voxels at equal world positions, whatever each side's voxel axis order and direction."""
    got, got_affine = canonical(array, affine)
    want, want_affine = canonical(ref_array, ref_affine)
    np.testing.assert_allclose(got_affine, want_affine, atol=atol)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
