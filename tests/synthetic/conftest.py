"""Helpers shared by the synthetic-data tests: SimpleITK as the independent geometry reference."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest


def _sitk_to_ras(image) -> tuple[np.ndarray, np.ndarray]:
    """(array indexed i, j, k; RAS affine) of a SimpleITK image (whose geometry is LPS)."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(image.GetSpacing())[None, :]
    affine[:3, 3] = image.GetOrigin()
    return array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The voxels and affine reordered to the closest RAS axes (nibabel), to compare two grids."""
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine))
    return np.asarray(image.dataobj), image.affine


@pytest.fixture
def small_ct() -> np.ndarray:
    """A small CT phantom with distinct axis lengths (a transposition cannot go unnoticed), whole HU."""
    from medres3d.synthetic import ct_phantom

    return np.rint(ct_phantom((14, 11, 7), noise_hu=30.0, seed=5)).astype(np.float32)


@pytest.fixture
def sitk_to_ras():
    """Function: SimpleITK image -> (array i, j, k; RAS affine)."""
    return _sitk_to_ras


@pytest.fixture
def canonical():
    """Function: (array, affine) -> the same grid reordered to the closest RAS axes."""
    return _canonical
