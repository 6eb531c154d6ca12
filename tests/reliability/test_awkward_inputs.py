"""Inputs that are odd but usable: they must load (with the right warnings), with exact geometry.

Also the gzip bombs, run where an allocation beyond the guard would fail loudly: in a child process
whose address space is capped with ``RLIMIT_AS``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import corpus as c
import nibabel as nib
import numpy as np
import pytest

from medres3d.errors import SeriesGeometryError
from medres3d.io.readers import load_volume

# The child process may map this much address space: Python, NumPy and nibabel need ~0.5 GB of it;
# a loader that believed a bomb's header would need tens of GB.
CHILD_ADDRESS_SPACE = 2 * 2**30


def _world(volume, index) -> np.ndarray:
    return (volume.affine @ np.r_[index, 1.0])[:3]


@pytest.mark.timeout(20)
def test_missing_slices_warn_by_default_and_raise_when_strict(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    c.dicom_series(folder, skip_slices=[2])
    volume = load_volume(folder)
    assert volume.shape == (1, 8, 8, 6)  # the grid keeps the missing position
    assert [w.split(":")[0] for w in volume.warnings] == ["missing-slice"]
    # the slices around the gap stay at their true positions: the writer's affine
    np.testing.assert_allclose(volume.affine, c.small_affine(), atol=1e-4)
    with pytest.raises(SeriesGeometryError, match="missing-slice"):
        load_volume(folder, strict=True)


@pytest.mark.timeout(20)
def test_identical_duplicates_are_dropped_and_conflicting_ones_raise_when_strict(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    files = c.dicom_series(folder, duplicate_slices=[1])
    volume = load_volume(folder)
    assert [w.split(":")[0] for w in volume.warnings] == ["duplicate-slice"]
    assert volume.shape == (1, 8, 8, 6)
    c.edit_dicom(files[-1], lambda ds: setattr(ds, "PixelData", bytes(len(ds.PixelData))))
    volume = load_volume(folder)
    assert [w.split(":")[0] for w in volume.warnings] == ["conflicting-duplicate"]
    # the first file by name is kept: slice 1's original pixels, not the zeroed copy
    np.testing.assert_allclose(volume.array[0, :, :, 1], c.phantom()[:, :, 1], atol=0.5)
    with pytest.raises(SeriesGeometryError, match="conflicting-duplicate"):
        load_volume(folder, strict=True)


@pytest.mark.timeout(20)
def test_gantry_tilt_loads_with_the_sheared_affine(tmp_path: Path) -> None:
    affine = c.small_affine(tilt_deg=15.0)
    folder = tmp_path / "tilted"
    c.dicom_series(folder, affine=affine)
    volume = load_volume(folder, strict=True)
    assert any(w.startswith("gantry-tilt: slices are stacked 15.00 degrees") for w in volume.warnings)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-4)
    np.testing.assert_allclose(volume.array[0], c.phantom(), atol=0.5)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", ["scan with spaces.nii.gz", "Körper_頭部 ü.nii", "ñ é/ct 1.nii.gz"])
def test_unicode_and_spaces_in_nifti_names_load(tmp_path: Path, name: str) -> None:
    path = c.valid_nifti(tmp_path / name)
    volume = load_volume(path)
    reference = nib.load(path)
    np.testing.assert_array_equal(volume.array[0], np.asarray(reference.dataobj, dtype=np.float32))
    np.testing.assert_allclose(volume.affine, reference.affine)
    assert volume.source == str(path)


@pytest.mark.timeout(20)
def test_unicode_and_spaces_in_dicom_folder_and_file_names_load(tmp_path: Path) -> None:
    folder = tmp_path / "Patient Müller" / "CT 胸部 (1)"
    c.dicom_series(folder, file_prefix="slice ü ", file_suffix=" ☃.dcm")
    volume = load_volume(folder, strict=True)
    assert volume.warnings == []
    np.testing.assert_allclose(volume.array[0], c.phantom(), atol=0.5)
    np.testing.assert_allclose(volume.affine, c.small_affine(), atol=1e-4)


@pytest.mark.timeout(30)
def test_trailing_gzip_bomb_costs_only_the_image(tmp_path: Path) -> None:
    # 4 MB on disk, 1 GiB of zeros after a valid 8x8x6 image once gunzipped
    path = c.gzip_bomb_nifti(tmp_path / "bomb.nii.gz", 2**30)
    assert path.stat().st_size < 8 * 2**20
    tracemalloc.start()
    try:
        volume = load_volume(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"peak traced allocation {peak} bytes"
    np.testing.assert_array_equal(volume.array[0], c.phantom().astype(np.int16).astype(np.float32))
    assert any("were not decompressed" in w for w in volume.warnings)


def _load_in_capped_child(path: Path) -> dict:
    """Load ``path`` in a child limited to CHILD_ADDRESS_SPACE; return what it raised."""
    script = textwrap.dedent(
        """
        import json, sys
        from medres3d.io.readers import load_volume
        try:
            load_volume(sys.argv[1])
            print(json.dumps({"error": None}))
        except Exception as err:
            print(json.dumps({"error": type(err).__name__, "message": str(err)}))
        """
    )

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))

    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=cap,
        env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("name", "build", "expected"),
    [
        # header claims 64e9 voxels over a 1 GiB stream of zeros: refused from the header
        ("claim.nii.gz", lambda p: c.huge_claim_gzip_bomb(p, (4000, 4000, 4000)), "ResourceLimitError"),
        # header claims 1024x1024x512 int16 (1 GiB, under the voxel limit) over a 64 MiB stream
        (
            "short.nii.gz",
            lambda p: c.huge_claim_gzip_bomb(p, (1024, 1024, 512), 1),
            "CorruptFileError",
        ),
        # a valid image followed by 4 GiB of zeros: loads, the tail is never inflated
        ("tail.nii.gz", lambda p: c.gzip_bomb_nifti(p, 4 * 2**30), None),
    ],
)
def test_gzip_bombs_under_an_address_space_cap(tmp_path: Path, name: str, build, expected) -> None:
    path = build(tmp_path / name)
    assert path.stat().st_size < 16 * 2**20
    outcome = _load_in_capped_child(path)
    assert outcome["error"] == expected, outcome
    if expected:
        assert outcome["message"].startswith(f"{path}: ")
