"""Enhanced (multi-frame) MR files holding several volumes, split by their per-frame values, against dcm2niix.

Synthetic files from :func:`medres3d.synthetic.dicom_4d.write_enhanced_4d`; dcm2niix (tests/io/dicom/
dcm2niix_reference.py) writes a diffusion or fMRI file as one 4D NIfTI, echoes and phase as files
of their own.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dcm2niix_reference import assert_diffusion_matches, matched_voxels, run_dcm2niix

from medres3d.errors import MultipleSeriesError
from medres3d.io import load_volume
from medres3d.io.dicom import find_dicom_series, load_dicom_series
from medres3d.synthetic import make_affine
from medres3d.synthetic.dicom_4d import write_enhanced_4d

DIRECTIONS = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]


def _phantom(shape=(24, 20, 10), n=4, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 1000, shape).astype(np.float64) for _ in range(n)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_enhanced_diffusion_file_is_4d_equal_to_dcm2niix(tmp_path, shuffle):
    affine = make_affine((2.0, 2.5, 3.0), "oblique")
    volumes = _phantom()
    write_enhanced_4d(volumes, affine, tmp_path / "in" / "dwi.dcm", b_values=[0, 1000, 1000, 1000],
                      gradients=DIRECTIONS, shuffle_frames=shuffle)  # fmt: skip
    series = find_dicom_series(tmp_path / "in")
    assert [s.part for s in series] == ["b0", "b1000 dir1", "b1000 dir2", "b1000 dir3"]
    assert [s.num_frames for s in series] == [10] * 4 and sum(len(s.frames) for s in series) == 40
    volume = load_dicom_series(tmp_path / "in", as_4d=True)
    assert volume.warnings == []  # no conflicting-duplicate: every frame is in its volume
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(volume.array, np.stack(volumes))
    assert volume.meta["b_values"] == [0.0, 1000.0, 1000.0, 1000.0]
    np.testing.assert_allclose(volume.meta["b_vectors_lps"], DIRECTIONS, atol=1e-6)
    assert volume.meta["repetition_time"] == 3000.0
    assert_diffusion_matches(volume, tmp_path / "in", tmp_path / "out", voxels=not shuffle)
    # Deliberate difference: with frames stored out of order, dcm2niix sorts the voxels but takes
    # its origin from the first stored frame ("Unable to determine slice direction"), off by
    # whole slices; medres3d places every frame by its own position (checked against the truth above).
    # one volume alone, by its key, and through load_volume
    one = load_dicom_series(tmp_path / "in", series_uid=series[2].key)
    np.testing.assert_array_equal(one.array[0], volumes[2])
    assert load_volume(tmp_path / "in", as_4d=True).shape == (4, 24, 20, 10)


def test_enhanced_fmri_file_splits_by_temporal_position(tmp_path):
    volumes = _phantom(n=3)
    write_enhanced_4d(volumes, make_affine((3, 3, 3)), tmp_path / "in" / "bold.dcm", shuffle_frames=True)
    assert [s.part for s in find_dicom_series(tmp_path / "in")] == ["t1", "t2", "t3"]
    volume = load_dicom_series(tmp_path / "in", as_4d=True)
    assert [v["temporal_position"] for v in volume.meta["volumes"]] == [1, 2, 3]
    np.testing.assert_array_equal(volume.array, np.stack(volumes))
    # dcm2niix on the same volumes stored in order (shuffled, it misplaces the origin: see above)
    write_enhanced_4d(volumes, make_affine((3, 3, 3)), tmp_path / "ordered" / "bold.dcm")
    [converted] = run_dcm2niix(tmp_path / "ordered", tmp_path / "out")
    np.testing.assert_array_equal(matched_voxels(volume, converted), volume.array)


def test_enhanced_multi_echo_and_phase_are_volumes_like_dcm2niix(tmp_path):
    volumes = _phantom(n=3)
    write_enhanced_4d(volumes, make_affine((2, 2, 3)), tmp_path / "echo" / "me.dcm", echo_times=[5, 10, 15])
    assert [s.part for s in find_dicom_series(tmp_path / "echo")] == ["TE 5", "TE 10", "TE 15"]
    echoes = load_dicom_series(tmp_path / "echo", as_4d=True)
    assert echoes.meta["echo_times"] == [5.0, 10.0, 15.0]
    converted = run_dcm2niix(tmp_path / "echo", tmp_path / "echo_out")  # _e1, _e2, _e3
    assert len(converted) == 3
    for n, echo in enumerate(converted):
        np.testing.assert_array_equal(matched_voxels(echoes, echo)[0], echoes.array[n])

    magnitude, phase = _phantom(n=2, seed=1)
    phase -= 500  # signed, as phase images are
    write_enhanced_4d([magnitude, phase], make_affine(), tmp_path / "ph" / "fm.dcm", image_kinds=["M", "P"])
    assert [s.part for s in find_dicom_series(tmp_path / "ph")] == ["magnitude", "phase"]
    both = load_dicom_series(tmp_path / "ph", as_4d=True)
    assert [v["image_kind"] for v in both.meta["volumes"]] == ["M", "P"]
    np.testing.assert_array_equal(both.array[1], phase)
    converted = run_dcm2niix(tmp_path / "ph", tmp_path / "ph_out")  # the phase in its own _ph file
    assert len(converted) == 2
    for n, image in enumerate(converted):
        np.testing.assert_array_equal(matched_voxels(both, image)[0], both.array[n])


def test_enhanced_4d_without_distinguishing_values_still_reports_the_duplicates(tmp_path):
    path = write_enhanced_4d(_phantom(n=2), make_affine(), tmp_path / "x.dcm")
    ds = pydicom.dcmread(path)
    for item in ds.PerFrameFunctionalGroupsSequence:
        content = item.FrameContentSequence[0]
        del content.TemporalPositionIndex
        content.DimensionIndexValues = list(content.DimensionIndexValues)[:2]
    ds.save_as(path)
    [series] = find_dicom_series(tmp_path)
    assert series.frames == () and series.num_frames == 20
    volume = series.load()
    # nothing silently dropped: the 10 frames not used are named in a warning
    assert any(w.startswith("conflicting-duplicate: 10 file(s)") for w in volume.warnings)


def test_enhanced_4d_with_a_missing_frame_is_named(tmp_path):
    volumes = _phantom(n=2)
    path = write_enhanced_4d(volumes, make_affine(), tmp_path / "x.dcm", b_values=[0, 1000],
                             gradients=DIRECTIONS[:2])  # fmt: skip
    ds = pydicom.dcmread(path)
    frame_bytes = ds.Rows * ds.Columns * 2
    drop = 14  # slice 5 of the second volume
    del ds.PerFrameFunctionalGroupsSequence[drop]
    ds.PixelData = ds.PixelData[: drop * frame_bytes] + ds.PixelData[(drop + 1) * frame_bytes :]
    ds.NumberOfFrames = 19
    ds.save_as(path)
    parts = find_dicom_series(tmp_path)
    assert [p.num_frames for p in parts] == [10, 9]
    volume = load_dicom_series(tmp_path, as_4d=True)
    assert any("[b1000 dir1] missing-slice" in w for w in volume.warnings)
    np.testing.assert_array_equal(volume.array[0], volumes[0])


def test_enhanced_4d_file_is_decoded_once(tmp_path, monkeypatch):
    from medres3d.io.dicom import multiframe

    write_enhanced_4d(_phantom(n=4), make_affine(), tmp_path / "x.dcm", b_values=[0, 1000, 1000, 1000],
                      gradients=DIRECTIONS)  # fmt: skip
    calls = []
    real = multiframe.read_frames
    monkeypatch.setattr(multiframe, "read_frames", lambda h: calls.append(h.path) or real(h))
    load_dicom_series(tmp_path, as_4d=True)
    assert len(calls) == 1


def _series_uids() -> dict[str, str]:
    uid = pydicom.uid.generate_uid
    return {"series_uid": uid(), "study_uid": uid(), "frame_of_reference_uid": uid()}


def test_one_volume_per_enhanced_file_is_a_4d_series_like_dcm2niix(tmp_path):
    # Siemens XA writes diffusion and fMRI as one Enhanced file per volume: the files repeat each
    # other's positions and were stacked into one volume with a conflicting-duplicate warning
    volumes = _phantom(n=4)
    affine = make_affine((2.0, 2.5, 3.0), "oblique")
    dwi, bold = _series_uids(), _series_uids()
    for n, (b, gradient) in enumerate(zip([0, 1000, 1000, 1000], DIRECTIONS, strict=True)):
        write_enhanced_4d([volumes[n]], affine, tmp_path / "dwi" / f"v{n}.dcm", b_values=[b],
                          gradients=[gradient], instance_number=n + 1, shuffle_frames=n == 2, seed=n,
                          **dwi)  # fmt: skip
        write_enhanced_4d([volumes[n]], affine, tmp_path / "bold" / f"v{n}.dcm", instance_number=n + 1,
                          **bold)  # fmt: skip
    series = find_dicom_series(tmp_path / "dwi")
    assert [s.part for s in series] == ["b0", "b1000 dir1", "b1000 dir2", "b1000 dir3"]
    volume = load_dicom_series(tmp_path / "dwi", as_4d=True)
    assert volume.warnings == []
    np.testing.assert_array_equal(volume.array, np.stack(volumes))
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    assert volume.meta["b_values"] == [0.0, 1000.0, 1000.0, 1000.0]
    np.testing.assert_allclose(volume.meta["b_vectors_lps"], DIRECTIONS, atol=1e-6)
    # fMRI: nothing but the file (its InstanceNumber) tells the volumes apart
    assert [s.part for s in find_dicom_series(tmp_path / "bold")] == ["t1", "t2", "t3", "t4"]
    fmri = load_dicom_series(tmp_path / "bold", as_4d=True)
    np.testing.assert_array_equal(fmri.array, np.stack(volumes))
    # dcm2niix writes each file as its own 3D NIfTI: the same voxels on the same grid (affines
    # checked within 1e-3 mm by matched_voxels), every one of the four volumes once
    converted = run_dcm2niix(tmp_path / "bold", tmp_path / "out")
    matched = [
        [n for n, v in enumerate(volumes) if np.array_equal(matched_voxels(fmri, c)[0], v)] for c in converted
    ]
    assert sorted(m for ms in matched for m in ms) == [0, 1, 2, 3]


def test_a_4d_acquisition_split_over_enhanced_files_is_named_as_one(tmp_path):
    volumes = _phantom(n=4)
    uids = _series_uids()
    b_values = [0, 1000, 1000, 1000]
    write_enhanced_4d(volumes[:2], make_affine(), tmp_path / "f1.dcm", b_values=b_values[:2],
                      gradients=DIRECTIONS[:2], instance_number=1, **uids)  # fmt: skip
    write_enhanced_4d(volumes[2:], make_affine(), tmp_path / "f2.dcm", b_values=b_values[2:],
                      gradients=DIRECTIONS[2:], instance_number=2, **uids)  # fmt: skip
    # directions numbered over the series, not per file; no file name needed to tell them apart
    assert [s.part for s in find_dicom_series(tmp_path)] == ["b0", "b1000 dir1", "b1000 dir2", "b1000 dir3"]
    volume = load_dicom_series(tmp_path, as_4d=True)
    np.testing.assert_array_equal(volume.array, np.stack(volumes))
    np.testing.assert_allclose(volume.meta["b_vectors_lps"], DIRECTIONS, atol=1e-6)


def test_enhanced_isotropic_frames_are_a_part_left_out_of_the_4d_stack_like_dcm2niix(tmp_path):
    volumes = _phantom(n=5)
    write_enhanced_4d(volumes, make_affine((2.0, 2.5, 3.0), "oblique"), tmp_path / "in" / "dwi.dcm",
                      b_values=[0, 1000, 1000, 1000, 1000], gradients=[*DIRECTIONS, (0, 0, 0)])  # fmt: skip
    series = find_dicom_series(tmp_path / "in")  # DiffusionDirectionality ISOTROPIC, no direction
    assert [s.part for s in series] == ["b0", "b1000 dir1", "b1000 dir2", "b1000 dir3", "b1000 isotropic"]
    volume = load_dicom_series(tmp_path / "in", as_4d=True)
    assert [w.split(":")[0] for w in volume.warnings] == ["isotropic-excluded"]
    np.testing.assert_array_equal(volume.array, np.stack(volumes[:4]))
    trace = load_dicom_series(tmp_path / "in", series_uid=series[4].key)
    np.testing.assert_array_equal(trace.array[0], volumes[4])
    # Deliberate difference: from an Enhanced file dcm2niix keeps the isotropic frames in its DWI
    # file, with a zero b-vector at b=1000 (from Philips single-frame files it removes them); the
    # first four of its volumes are ours, the fifth our isotropic part
    [converted] = run_dcm2niix(tmp_path / "in", tmp_path / "out")
    np.testing.assert_array_equal(converted.bvals, [0, 1000, 1000, 1000, 1000])
    np.testing.assert_array_equal(converted.bvecs[4], [0, 0, 0])
    theirs = matched_voxels(volume, converted)
    np.testing.assert_array_equal(theirs[:4], volume.array)
    np.testing.assert_array_equal(theirs[4], trace.array[0])


def test_an_enhanced_4d_file_given_directly_is_split_like_its_folder(tmp_path):
    # as a user passes it: the file itself, not its folder (it was one volume with 30 of 40 frames
    # dropped under a conflicting-duplicate warning, and as_4d refused a file)
    volumes = _phantom(n=4)
    path = write_enhanced_4d(volumes, make_affine(), tmp_path / "dwi.dcm", b_values=[0, 1000, 1000, 1000],
                             gradients=DIRECTIONS)  # fmt: skip
    with pytest.raises(MultipleSeriesError, match=r"4 volumes of one series found .* as_4d=True") as info:
        load_volume(path)
    assert str(path) in str(info.value) and len(info.value.series) == 4
    np.testing.assert_array_equal(load_volume(path, as_4d=True).array, np.stack(volumes))
    one = load_volume(path, series_uid=info.value.series[2].key)
    np.testing.assert_array_equal(one.array[0], volumes[2])
    # a 3D Enhanced file is one volume, as before
    plain = write_enhanced_4d(volumes[:1], make_affine(), tmp_path / "t1" / "t1.dcm")
    np.testing.assert_array_equal(load_volume(plain).array[0], volumes[0])
