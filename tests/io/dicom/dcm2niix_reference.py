"""dcm2niix as an independent reference: run it into a temp folder, compare its NIfTI with a Volume.

dcm2niix (the PyPI wheel, in the test extras) writes each series as ``%s_%e.nii`` (series number,
echo) with ``.bval``/``.bvec`` beside diffusion data. It flips the rows (j) of every slice, so
its voxel grid is medres3d's up to a signed permutation of the axes: :func:`matched_voxels`
finds that permutation from the two affines and reorders dcm2niix's voxels onto medres3d's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medres3d.io.volume import Volume


@dataclass
class Converted:
    """One NIfTI written by dcm2niix: voxels (X, Y, Z, T), RAS affine, b-values and FSL b-vectors."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray | None
    bvecs: np.ndarray | None  # (T, 3), FSL convention (image frame, x flipped when det > 0)


def dcm2niix_binary() -> str:
    """The dcm2niix executable, or skip the test (it is in the ``test`` extras)."""
    # the wheel installs it beside the interpreter, which need not be on PATH
    found = shutil.which("dcm2niix") or shutil.which(str(Path(sys.executable).parent / "dcm2niix"))
    if found is None:
        pytest.skip("dcm2niix is not installed (pip install dcm2niix)")
    return found


def run_dcm2niix(folder: Path, out: Path) -> list[Converted]:
    """``dcm2niix -z n -f %s_%e -o out folder``; every .nii it wrote, sorted by name."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [dcm2niix_binary(), "-z", "n", "-f", "%s_%e", "-o", str(out), str(folder)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    converted = []
    for nii in sorted(out.glob("*.nii")):
        image = nib.load(nii)
        data = np.asanyarray(image.dataobj).astype(np.float64)
        bval, bvec = nii.with_suffix(".bval"), nii.with_suffix(".bvec")
        converted.append(
            Converted(
                nii,
                data if data.ndim == 4 else data[..., None],
                image.affine,
                np.loadtxt(bval, ndmin=1) if bval.exists() else None,
                np.loadtxt(bvec, ndmin=2).T if bvec.exists() else None,
            )
        )
    return converted


def voxel_map(volume: Volume, affine: np.ndarray) -> np.ndarray:
    """``inv(volume.affine) @ affine``, checked to be a signed permutation with a whole-voxel shift.

    The affines must agree within 1e-3 mm at every corner of dcm2niix's grid.
    """
    mapping = np.linalg.inv(volume.affine) @ affine
    rounded = np.rint(mapping)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in volume.spatial_shape], indexing="ij")).reshape(3, -1)
    world_ours = volume.affine[:3, :3] @ (rounded[:3, :3] @ corners + rounded[:3, 3:]) + volume.affine[:3, 3:]
    world_theirs = affine[:3, :3] @ corners + affine[:3, 3:]
    assert np.abs(world_ours - world_theirs).max() < 1e-3, (mapping, np.abs(world_ours - world_theirs).max())
    assert sorted(np.abs(rounded[:3, :3]).sum(axis=0)) == [1, 1, 1]
    return rounded


def matched_voxels(volume: Volume, converted: Converted) -> np.ndarray:
    """dcm2niix's voxels reordered onto medres3d's grid: ``(T, H, W, D)``, after checking the affines."""
    mapping = voxel_map(volume, converted.affine)
    theirs = converted.data
    index = np.indices(theirs.shape[:3]).reshape(3, -1)
    ours = (mapping[:3, :3] @ index + mapping[:3, 3:]).astype(np.int64)
    out = np.empty((theirs.shape[3], *volume.spatial_shape))
    for t in range(theirs.shape[3]):
        out[t][tuple(ours)] = theirs[..., t][tuple(index)]
    return out


def bvecs_lps(converted: Converted) -> np.ndarray:
    """dcm2niix's FSL b-vectors in the scanner frame (DICOM LPS), for comparing with meta."""
    rotation = converted.affine[:3, :3] / np.linalg.norm(converted.affine[:3, :3], axis=0)
    fsl = converted.bvecs.copy()
    if np.linalg.det(rotation) > 0:  # FSL's bvecs are in a radiological (x flipped) voxel frame
        fsl[:, 0] *= -1
    ras = fsl @ rotation.T
    return ras * np.array([-1.0, -1.0, 1.0])


def assert_diffusion_matches(volume: Volume, folder: Path, out: Path, *, atol: float = 0.0,
                             voxels: bool = True) -> Converted:
    """dcm2niix's diffusion file of ``folder`` (the one with b-values) against a 4D diffusion ``volume``.

    The affines (within 1e-3 mm, through :func:`matched_voxels`), the voxels (within ``atol``;
    skipped with ``voxels=False``), the b-values and the b-vectors in the scanner frame (1e-4).
    dcm2niix writes one file, and a trace image it removes from the DWI as a second (``_ADC``).
    """
    written = run_dcm2niix(folder, out)
    [converted] = [c for c in written if c.bvals is not None]
    others = [c.path.stem for c in written if c is not converted]
    assert others == [] or (len(others) == 1 and others[0].endswith("_ADC")), others
    if voxels:
        np.testing.assert_allclose(matched_voxels(volume, converted), volume.array, rtol=0, atol=atol)
    np.testing.assert_array_equal(converted.bvals, volume.meta["b_values"])
    np.testing.assert_allclose(volume.meta["b_vectors_lps"], bvecs_lps(converted), atol=1e-4)
    return converted
