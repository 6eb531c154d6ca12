"""Series discovery: grouping, splitting, localizers, skipped files, choosing a series."""

import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medres3d.errors import CorruptFileError, MultipleSeriesError, NotAnImageError, VolumeLoadError
from medres3d.io import dicom
from medres3d.io.dicom import load_dicom_series, scan_dicom_tree
from medres3d.synthetic import (
    make_affine,
    make_messy_dicom_tree,
    write_dicom_series,
    write_enhanced_dicom,
    write_localizer,
    write_non_image_object,
)

SHAPE = (6, 5, 8)


def _volume(seed):
    return np.random.default_rng(seed).integers(-1000, 1000, size=SHAPE).astype(np.float32)


def test_two_series_and_localizers_in_one_folder_come_back_separately(tmp_path):
    a, b = _volume(0), _volume(1)
    write_dicom_series(
        a,
        make_affine((1, 1, 2)),
        tmp_path,
        series_uid="1.2.3.1",
        study_uid="1.2",
        series_number=2,
        description="A",
    )
    write_dicom_series(
        b,
        make_affine((1, 1, 3)),
        tmp_path,
        series_uid="1.2.3.2",
        study_uid="1.2",
        series_number=3,
        description="B",
    )
    write_localizer(tmp_path, series_uid="1.2.3.1")  # a scout saved inside series A
    write_localizer(tmp_path, series_uid="1.2.3.9", plane="sagittal")  # a scout series of its own

    scan = scan_dicom_tree(tmp_path)

    images = [s for s in scan.series if not s.is_localizer]
    assert [(s.uid, s.num_files, s.description) for s in images] == [("1.2.3.1", 8, "A"), ("1.2.3.2", 8, "B")]
    assert sorted(s.uid for s in scan.series if s.is_localizer) == ["1.2.3.1", "1.2.3.9"]
    assert scan.skipped == []
    with pytest.raises(MultipleSeriesError, match="2 image series found") as info:
        load_dicom_series(tmp_path)
    assert "1.2.3.1" in str(info.value) and "'B'" in str(info.value) and len(info.value.series) == 2
    # one class in medres3d.errors, still importable from medres3d.io.dicom; crosses processes by pickle
    assert dicom.MultipleSeriesError is MultipleSeriesError and isinstance(info.value, VolumeLoadError)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is MultipleSeriesError and str(copy) == str(info.value)

    vol_a = load_dicom_series(tmp_path, series_uid="1.2.3.1")
    np.testing.assert_array_equal(vol_a.array[0], a)
    codes = [w.split(":")[0] for w in vol_a.warnings]
    assert codes == ["localizer-excluded", "localizer-excluded"]  # the one in A, and the other series
    np.testing.assert_array_equal(images[1].load().array[0], b)


def test_orientation_outlier_in_a_series_is_a_localizer(tmp_path):
    array = _volume(2)
    write_dicom_series(array, make_affine((1, 1, 2)), tmp_path, series_uid="1.2.5", study_uid="1.2")
    single = np.zeros((6, 5, 1), np.float32)
    write_dicom_series(
        single, make_affine((1, 1, 1), "sagittal"), tmp_path, series_uid="1.2.5", study_uid="1.2"
    )

    scan = scan_dicom_tree(tmp_path)

    assert [(s.num_files, s.is_localizer, s.part) for s in scan.series] == [
        (8, False, "axial"),
        (1, True, "localizer, sagittal"),
    ]
    vol = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.array[0], array)
    assert vol.warnings[0].startswith("localizer-excluded: 1 localizer file(s)")


def test_echoes_are_split_and_chosen_by_key(tmp_path):
    echo1, echo2 = _volume(3), _volume(4)
    for echo, array in ((1, echo1), (2, echo2)):
        write_dicom_series(
            array,
            make_affine(),
            tmp_path,
            modality="MR",
            series_uid="1.2.6",
            study_uid="1.2",
            echo_number=echo,
        )

    series = scan_dicom_tree(tmp_path).series
    assert [s.key for s in series] == ["1.2.6 [echo 1]", "1.2.6 [echo 2]"]
    with pytest.raises(MultipleSeriesError, match="split into 2 parts"):
        load_dicom_series(tmp_path, series_uid="1.2.6")
    np.testing.assert_array_equal(load_dicom_series(tmp_path, series_uid="1.2.6 [echo 2]").array[0], echo2)


def test_acquisitions_are_split_only_when_their_positions_repeat(tmp_path):
    array = _volume(5)
    affine = make_affine((1, 1, 2))
    # A CT whose two acquisitions cover different ranges: one volume.
    upper = make_affine((1, 1, 2), origin=(0, 0, 8))
    write_dicom_series(array[..., :4], affine, tmp_path / "ranges", series_uid="1.2.7", acquisition_number=1)
    write_dicom_series(array[..., 4:], upper, tmp_path / "ranges", series_uid="1.2.7", acquisition_number=2)
    (whole,) = scan_dicom_tree(tmp_path / "ranges").series
    np.testing.assert_array_equal(whole.load().array[0], array)
    # Two passes over the same range (e.g. before/after contrast): two volumes.
    for acquisition in (1, 2):
        write_dicom_series(
            array + acquisition,
            affine,
            tmp_path / "passes",
            series_uid="1.2.8",
            study_uid="1.2",
            acquisition_number=acquisition,
        )
    parts = scan_dicom_tree(tmp_path / "passes").series
    assert [s.part for s in parts] == ["acquisition 1", "acquisition 2"]
    np.testing.assert_array_equal(parts[1].load().array[0], array + 2)


def test_non_image_and_non_dicom_files_are_skipped_with_reasons(tmp_path):
    array = _volume(6)
    write_dicom_series(array, make_affine(), tmp_path)
    for kind in ("SEG", "SR", "RTSTRUCT", "PR"):
        write_non_image_object(kind, tmp_path / f"{kind.lower()}.dcm")
    write_non_image_object("DICOMDIR", tmp_path / "DICOMDIR")
    (tmp_path / "notes.dcm").write_text("not dicom at all\n")
    (tmp_path / "empty.dcm").write_bytes(b"")

    scan = scan_dicom_tree(tmp_path)

    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert reasons.pop("sr.dcm").endswith(" SR Storage (SR)")
    assert reasons == {
        "DICOMDIR": "not an image: Media Storage Directory Storage (DICOMDIR)",
        "empty.dcm": "empty file (0 bytes)",
        "notes.dcm": "not a DICOM file (no DICM prefix)",
        "pr.dcm": "not an image: Grayscale Softcopy Presentation State Storage (PR)",
        "rtstruct.dcm": "not an image: RT Structure Set Storage (RTSTRUCT)",
        "seg.dcm": "not an image: Segmentation Storage (SEG)",
    }
    vol = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol.array[0], array)
    assert vol.warnings[0].startswith("skipped-files: 7 file(s) not used")


def test_folder_without_images_lists_what_was_skipped(tmp_path):
    write_non_image_object("SR", tmp_path / "report.dcm")
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(NotAnImageError, match=r"no DICOM image series found; 2 file\(s\) not used") as info:
        load_dicom_series(tmp_path)
    assert "SR Storage (SR) (e.g. report.dcm)" in str(info.value) and "readme.txt" in str(info.value)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(NotAnImageError, match=r"no DICOM image series found \(no files\)"):
        load_dicom_series(tmp_path / "nothing")


def test_messy_tree(tmp_path):
    tree = make_messy_dicom_tree(tmp_path, shape=(8, 8, 4))
    scan = scan_dicom_tree(tmp_path)
    images = [s for s in scan.series if not s.is_localizer]
    assert sorted(s.uid for s in images) == sorted(s.uid for s in tree.series)
    skipped = {s.path for s in scan.skipped}
    assert set(tree.non_image) | set(tree.non_dicom) <= skipped
    written = {w.uid: w for w in tree.series}
    for series in images:
        if written[series.uid].broken:
            with pytest.raises(CorruptFileError, match="truncated"):
                series.load()
        else:
            assert series.load().spatial_shape == written[series.uid].shape


def test_threaded_scan_equals_serial_scan(tmp_path):
    # (the process-pool option is gone: slower on 2 cores, and it forked a possibly busy process)
    write_dicom_series(_volume(7), make_affine(), tmp_path / "a")
    write_dicom_series(_volume(8), make_affine((1, 1, 2), "coronal"), tmp_path / "b")
    serial = scan_dicom_tree(tmp_path, workers=1)
    parallel = scan_dicom_tree(tmp_path, workers=2)
    assert [s.files for s in parallel.series] == [s.files for s in serial.series]
    assert [s.headers for s in parallel.series] == [s.headers for s in serial.series]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's complaints about its odd test files
def test_fast_header_parser_agrees_with_pydicom(tmp_path):
    from pydicom.data import get_testdata_file
    from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless

    from medres3d.io.dicom.header import read_header
    from medres3d.io.dicom.rawheader import parse_header, tag_table

    shipped = sorted(Path(get_testdata_file("CT_small.dcm")).parent.glob("*.dcm"))
    write_dicom_series(_volume(9), make_affine((1, 1, 2), "oblique"), tmp_path / "explicit", echo_number=2)
    write_dicom_series(
        _volume(9), make_affine(), tmp_path / "implicit", transfer_syntax=ImplicitVRLittleEndian
    )
    write_enhanced_dicom(
        np.zeros((32, 32, 4)), make_affine(), tmp_path / "enh.dcm", transfer_syntax=JPEG2000Lossless
    )
    write_non_image_object("SEG", tmp_path / "seg.dcm")
    ds = pydicom.dcmread(write_enhanced_dicom(np.zeros((4, 4, 4)), make_affine(), tmp_path / "undefined.dcm"))
    for element in ds.iterall():  # undefined-length sequences and items, which the fast parser walks
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
    ds.save_as(tmp_path / "undefined.dcm")
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    for path in shipped + written:
        assert read_header(path) == read_header(path, fast=False), path.name
    for path in (tmp_path / "undefined.dcm", tmp_path / "enh.dcm", next((tmp_path / "implicit").iterdir())):
        with open(path, "rb") as fp:  # these go through the fast parser, not the pydicom fallback
            assert parse_header(fp, tag_table(["Rows"]))[0]["Rows"] in (4, 32, 5), path.name


def test_entries_that_are_not_regular_files_are_reported_not_opened(tmp_path):
    import os

    array = _volume(10)
    write_dicom_series(array, make_affine(), tmp_path / "ct")
    os.symlink("loop.dcm", tmp_path / "loop.dcm")
    os.symlink(tmp_path / "gone.dcm", tmp_path / "dangling.dcm")
    os.symlink(tmp_path, tmp_path / "ct" / "up")
    os.mkfifo(tmp_path / "pipe.dcm")  # opening it would block forever

    scan = scan_dicom_tree(tmp_path)

    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert reasons["loop.dcm"].startswith("symbolic link loop")
    assert reasons["dangling.dcm"].startswith("dangling symbolic link")
    assert reasons["up"] == "symbolic link to a folder, not followed"
    assert reasons["pipe.dcm"] == "not a regular file (FIFO); not opened"
    (series,) = scan.series
    np.testing.assert_array_equal(series.load().array[0], array)
