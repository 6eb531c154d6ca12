"""Evidence maps: overlap averaging, affines in the scan's world, NIfTI output, resampling."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medres3d.inference.evidence import evidence_map
from medres3d.inference.sliding_window import sliding_window_classify
from medres3d.io.resample import resample_to_grid


def _oblique_affine() -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-40.0, 12.0, 7.5]
    return affine


@pytest.fixture
def result(tiny_net):
    torch.manual_seed(3)
    return sliding_window_classify(torch.randn(1, 20, 12, 8), tiny_net, overlap=0.5)


def test_full_resolution_map_has_the_tensor_affine_and_averages_covering_windows(result):
    affine = _oblique_affine()
    ev = evidence_map(result, affine, cell_size=1, class_names=["a", "b", "c"])
    assert ev.shape == (20, 12, 8)
    np.testing.assert_array_equal(ev.affine, affine)
    # hand computation: a voxel's value is the mean of the probabilities of the windows containing it
    boxes = result.window_boxes.numpy()
    probs = result.window_probabilities.numpy()
    for voxel in [(0, 0, 0), (5, 3, 2), (9, 7, 7), (19, 11, 0), (12, 4, 4)]:
        inside = [all(lo <= v < hi for v, (lo, hi) in zip(voxel, box, strict=True)) for box in boxes]
        np.testing.assert_allclose(ev.array[(slice(None), *voxel)], probs[inside].mean(axis=0), rtol=1e-6)


def test_coarse_cells_tile_the_tensor_in_world_space(result):
    affine = _oblique_affine()
    ev = evidence_map(result, affine)  # one cell per window step (4 voxels on axes 0 and 1)
    assert ev.shape == (5, 3, 1)
    # the coarse grid's outer corners (at +-half a cell) coincide with the tensor's outer voxel corners
    corners_cells = np.array([[-0.5, -0.5, -0.5, 1], [4.5, 2.5, 0.5, 1]]).T
    corners_voxels = np.array([[-0.5, -0.5, -0.5, 1], [19.5, 11.5, 7.5, 1]]).T
    np.testing.assert_allclose(ev.affine @ corners_cells, affine @ corners_voxels, atol=1e-9)
    # every cell is covered by at least one window and averages probabilities (each sums to 1)
    np.testing.assert_allclose(ev.array.sum(axis=0), 1.0, rtol=1e-5)


def test_saved_nifti_carries_the_affine(result, tmp_path):
    affine = _oblique_affine()
    ev = evidence_map(result, affine, cell_size=2, class_names=["a", "b", "c"])
    one = nib.load(ev.save(tmp_path / "b.nii.gz", class_name="b"))
    every = nib.load(ev.save(tmp_path / "all.nii.gz"))
    np.testing.assert_allclose(one.affine, ev.affine, atol=1e-5)
    np.testing.assert_allclose(one.get_fdata(), ev.for_class("b"), rtol=1e-6)
    assert every.shape == (*ev.shape, 3)
    np.testing.assert_allclose(every.get_fdata()[..., 2], ev.for_class(2), rtol=1e-6)


def test_resampled_to_the_scan_grid_has_the_scan_affine(result):
    # the "scan" is the tensor before a 2x downsampling: same world, twice the voxels per axis
    tensor_affine = _oblique_affine()
    scan_affine = tensor_affine @ np.array(
        [[0.5, 0, 0, -0.25], [0, 0.5, 0, -0.25], [0, 0, 0.5, -0.25], [0, 0, 0, 1]]
    )
    ev = evidence_map(result, tensor_affine, cell_size=1).resampled((40, 24, 16), scan_affine, order=0)
    np.testing.assert_array_equal(ev.affine, scan_affine)
    full = evidence_map(result, tensor_affine, cell_size=1)
    # scan voxel (2i+1, 2j+1, 2k+1) lies inside tensor voxel (i, j, k)
    for i, j, k in [(0, 0, 0), (7, 3, 2), (19, 11, 7)]:
        np.testing.assert_allclose(ev.array[:, 2 * i + 1, 2 * j + 1, 2 * k + 1], full.array[:, i, j, k])


def test_resample_matches_scipy_affine_transform_and_fills_outside():
    from scipy.ndimage import affine_transform

    rng = np.random.default_rng(0)
    source = rng.random((1, 10, 9, 8)).astype(np.float32)
    src_affine = _oblique_affine()
    shift = np.eye(4)
    shift[:3, 3] = [1.3, -0.7, 0.4]  # target voxel -> source voxel: (t + shift), kept inside for most
    target_affine = src_affine @ shift
    out = resample_to_grid(source, src_affine, (10, 9, 8), target_affine, order=1)
    reference = affine_transform(source[0], np.eye(3), offset=shift[:3, 3], order=1, mode="nearest")
    np.testing.assert_allclose(out[0, :8, 1:, :7], reference[:8, 1:, :7], rtol=1e-5)
    assert np.all(out[0, 9, :, :] == 0.0)  # source index 10.3 is beyond the last voxel's half-width
