"""The functional-group reader (medres3d.io.dicom.framegroups) against pydicom.

The byte reader must give exactly what pydicom reads from the same file, on a real Philips
Enhanced MR file (nibabel's test data), on synthetic Enhanced files in every encoding the writers
produce, and with undefined-length sequences; what it does not handle (big endian, Deflated,
damage) goes through pydicom, and damage never escapes as a foreign exception.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from medres3d.errors import MedRes3DError
from medres3d.io.dicom import load_dicom_series
from medres3d.io.dicom.framegroups import (
    IMAGE_POSITION,
    PLANE_POSITION,
    frame_groups_from_dataset,
    parse_frame_groups,
    read_frame_groups,
)
from medres3d.io.dicom.header import read_header
from medres3d.synthetic import make_affine
from medres3d.synthetic.dicom_4d import write_enhanced_4d
from medres3d.synthetic.dicom_writer import write_enhanced_dicom

PHILIPS = Path(nibabel.__file__).parent / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"


def _philips(tmp_path: Path) -> Path:
    out = tmp_path / "philips" / "mprage.dcm"
    out.parent.mkdir()
    with gzip.open(PHILIPS) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def _by_pydicom(path: Path):
    return frame_groups_from_dataset(pydicom.dcmread(path, stop_before_pixels=True))


def _by_bytes(path: Path):
    header = read_header(path)
    with open(path, "rb") as fp:
        data = fp.read(header.pixel_offset)
    return parse_frame_groups(data, implicit=header.transfer_syntax == ImplicitVRLittleEndian)


def _enhanced_4d(path: Path, shuffle: bool = False) -> Path:
    rng = np.random.default_rng(3)
    volumes = [rng.integers(0, 1000, (12, 10, 5)).astype(float) for _ in range(3)]
    gradients = [(0, 0, 0), (1, 0, 0), (0, 0.6, 0.8)]
    affine = make_affine((2.0, 2.0, 3.0), "oblique")
    return write_enhanced_4d(
        volumes, affine, path, b_values=[0, 1000, 1000], gradients=gradients, shuffle_frames=shuffle
    )


def test_real_philips_file_reads_as_pydicom_reads_it(tmp_path):
    path = _philips(tmp_path)
    groups = _by_bytes(path)
    assert groups is not None and groups == _by_pydicom(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert len(groups.per_frame) == int(ds.NumberOfFrames) == 176
    for f in (0, 87, 175):  # straight from pydicom's attribute access
        plane = ds.PerFrameFunctionalGroupsSequence[f].PlanePositionSequence[0]
        expected = [float(v) for v in plane.ImagePositionPatient]
        assert groups.macro(f, PLANE_POSITION)[IMAGE_POSITION] == expected


def _enhanced_3d(path: Path, **options) -> Path:
    return write_enhanced_dicom(np.arange(240.0).reshape(6, 8, 5), make_affine(), path, **options)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: _enhanced_3d(p, modality="MR", per_frame_rescale=True, shuffle_frames=True),
        lambda p: _enhanced_3d(p, transfer_syntax=ImplicitVRLittleEndian),
        lambda p: _enhanced_3d(p, transfer_syntax=RLELossless),
        lambda p: _enhanced_4d(p, shuffle=True),
    ],
    ids=["explicit-rescale-shuffled", "implicit", "rle", "diffusion-4d"],
)
def test_synthetic_files_read_as_pydicom_reads_them(tmp_path, make):
    path = make(tmp_path / "e.dcm")
    groups = _by_bytes(path)
    assert groups is not None and groups == _by_pydicom(path)
    assert groups.per_frame and all(groups.macro(f, PLANE_POSITION) for f in range(len(groups.per_frame)))


def test_undefined_length_sequences_and_items(tmp_path):
    path = _enhanced_4d(tmp_path / "defined.dcm")
    ds = pydicom.dcmread(path)
    for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        # a private sequence in every frame, nested two deep, as Philips writes (2005,140F): skipped
        inner = pydicom.Dataset()
        inner.add_new(0x20051001, "FD", [float(n), 2.5])
        inner.add_new(0x20051002, "SQ", pydicom.Sequence([pydicom.Dataset(), pydicom.Dataset()]))
        outer = pydicom.Dataset()
        outer.add_new(0x20050010, "LO", "PHILIPS MR IMAGING DD 005")
        outer.add_new(0x20051003, "SQ", pydicom.Sequence([inner]))
        item.add_new(0x20050010, "LO", "PHILIPS MR IMAGING DD 005")
        item.add_new(0x2005140F, "SQ", pydicom.Sequence([outer]))
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
    ds.save_as(tmp_path / "undefined.dcm")
    raw = (tmp_path / "undefined.dcm").read_bytes()
    assert b"\xfe\xff\xdd\xe0" in raw  # sequence delimiters were written
    groups = _by_bytes(tmp_path / "undefined.dcm")
    assert groups is not None and groups == _by_pydicom(path)


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_encodings_go_through_pydicom(tmp_path, syntax):
    array = np.arange(240.0).reshape(6, 8, 5)
    plain = write_enhanced_dicom(array, make_affine(), tmp_path / "plain.dcm", modality="MR")
    other = tmp_path / "other.dcm"
    if syntax == ExplicitVRBigEndian:  # the writers do not write big endian (retired); pydicom converts
        ds = pydicom.dcmread(plain)
        ds.PixelData = ds.pixel_array.astype(">u2").tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
        pydicom.dcmwrite(other, ds, implicit_vr=False, little_endian=False, enforce_file_format=True)
    else:
        write_enhanced_dicom(array, make_affine(), other, modality="MR", transfer_syntax=syntax)
    assert read_frame_groups(read_header(other)) == _by_pydicom(plain)
    np.testing.assert_array_equal(load_dicom_series(other).array, array[None])


def test_damage_in_the_functional_groups_never_escapes(tmp_path):
    path = _enhanced_4d(tmp_path / "e.dcm")
    header = read_header(path)
    data = path.read_bytes()
    start = data.find(b"\x00\x52\x30\x92")  # PerFrameFunctionalGroupsSequence
    assert 0 < start < header.pixel_offset
    rng = np.random.default_rng(0)
    outcomes = set()
    for n in range(40):
        damaged = bytearray(data)
        where = int(rng.integers(start, header.pixel_offset))
        if n % 2:
            damaged[where : where + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        else:
            damaged[where] ^= 0xFF
        bad = tmp_path / f"bad{n}" / "e.dcm"
        bad.parent.mkdir()
        bad.write_bytes(bytes(damaged))
        parsed = parse_frame_groups(bytes(damaged[: header.pixel_offset]), implicit=False)
        assert parsed is None or len(parsed.per_frame) <= 15
        try:
            load_dicom_series(bad.parent, as_4d=True)
            outcomes.add("loaded")
        except MedRes3DError as err:
            assert str(bad) in str(err) or str(bad.parent) in str(err)
            outcomes.add(type(err).__name__)
    assert len(outcomes) > 1  # some damage is harmless (a value), some is refused


def test_truncated_per_frame_sequence_is_refused_naming_the_file(tmp_path):
    path = _enhanced_4d(tmp_path / "in" / "e.dcm")
    header = read_header(path)
    data = path.read_bytes()
    start = data.find(b"\x00\x52\x30\x92")
    # cut in the middle of the per-frame groups: the byte reader and pydicom both fail
    path.write_bytes(data[: (start + header.pixel_offset) // 2])
    with pytest.raises(MedRes3DError, match=r"e\.dcm"):
        load_dicom_series(path.parent, as_4d=True)
