"""Minimal valid DICOM objects without an image volume: SEG, SR, RTSTRUCT, PR and DICOMDIR.

A scanner export or PACS folder mixes these with image series; a loader must recognise and skip them.
Each carries its proper SOP Class UID and the mandatory identifying modules; a SEG has a tiny
one-bit frame, since segmentations do carry pixel data.

Example:
    >>> import tempfile, os, pydicom
    >>> p = write_non_image_object("SR", os.path.join(tempfile.mkdtemp(), "report.dcm"))
    >>> pydicom.dcmread(p).SOPClassUID.name
    'Basic Text SR Storage'
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    MediaStorageDirectoryStorage,
    RTStructureSetStorage,
    SegmentationStorage,
)

from medres3d.errors import ConfigError
from medres3d.synthetic.dicom_common import new_uid, now_strings, patient_study_series, save

SOP_CLASSES = {
    "SEG": SegmentationStorage,
    "SR": BasicTextSRStorage,
    "RTSTRUCT": RTStructureSetStorage,
    "PR": GrayscaleSoftcopyPresentationStateStorage,
    "DICOMDIR": MediaStorageDirectoryStorage,
}


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def write_non_image_object(
    kind: str,
    path: str | os.PathLike[str],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "PHANTOM",
    frame_of_reference_uid: str | None = None,
) -> Path:
    """Write a minimal SEG, SR, RTSTRUCT, PR or DICOMDIR object to ``path``.

    Args:
        kind: "SEG", "SR", "RTSTRUCT", "PR" or "DICOMDIR" (a Media Storage Directory; name the file
            ``DICOMDIR`` to look like a real one).
        path: the file to write.
        study_uid, series_uid, patient_id, frame_of_reference_uid: identifiers (fresh UIDs when None);
            pass a real series' study to mix the object into that study.

    Example:
        >>> import tempfile, os, pydicom
        >>> p = write_non_image_object("SEG", os.path.join(tempfile.mkdtemp(), "seg.dcm"))
        >>> pydicom.dcmread(p).Modality
        'SEG'
    """
    if kind not in SOP_CLASSES:
        raise ConfigError(f"kind must be one of {sorted(SOP_CLASSES)}, got {kind!r}")
    sop_class = SOP_CLASSES[kind]
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = new_uid()
    if kind == "DICOMDIR":
        _dicomdir(ds)
        return save(ds, path, ExplicitVRLittleEndian, sop_class)
    patient_study_series(
        ds,
        modality=kind,
        patient_id=patient_id,
        study_uid=study_uid or new_uid(),
        series_uid=series_uid or new_uid(),
        series_number=900 + sorted(SOP_CLASSES).index(kind),
        description=f"Synthetic {kind}",
    )
    ds.InstanceNumber = 1
    {"SEG": _seg, "SR": _sr, "RTSTRUCT": _rtstruct, "PR": _pr}[kind](ds, frame_of_reference_uid or new_uid())
    return save(ds, path, ExplicitVRLittleEndian, sop_class)


def _seg(ds: Dataset, frame_of_reference_uid: str) -> None:
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SegmentationType = "BINARY"
    ds.ContentLabel = "LESION"
    ds.ContentCreatorName = "medres3d"
    ds.ContentDescription = "Synthetic segmentation"
    ds.LossyImageCompression = "00"
    segment = Dataset()
    segment.SegmentNumber = 1
    segment.SegmentLabel = "lesion"
    segment.SegmentAlgorithmType = "MANUAL"
    segment.SegmentedPropertyCategoryCodeSequence = [
        _code("49755003", "SCT", "Morphologically Altered Structure")
    ]
    segment.SegmentedPropertyTypeCodeSequence = [_code("4147007", "SCT", "Mass")]
    ds.SegmentSequence = [segment]
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [1.0, 1.0]
    measures.SliceThickness = 1.0
    shared.PixelMeasuresSequence = [measures]
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frame = Dataset()
    position = Dataset()
    position.ImagePositionPatient = [0.0, 0.0, 0.0]
    frame.PlanePositionSequence = [position]
    identification = Dataset()
    identification.ReferencedSegmentNumber = 1
    frame.SegmentIdentificationSequence = [identification]
    ds.PerFrameFunctionalGroupsSequence = [frame]
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 3:6] = 1
    ds.NumberOfFrames = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = mask.shape
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.PixelData = pack_bits(mask)


def _sr(ds: Dataset, frame_of_reference_uid: str) -> None:
    del frame_of_reference_uid  # an SR has no spatial frame of reference
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic imaging report")]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    finding.TextValue = "Synthetic phantom: no real patient."
    ds.ContentSequence = [finding]


def _rtstruct(ds: Dataset, frame_of_reference_uid: str) -> None:
    date, time = now_strings()
    ds.StructureSetLabel = "SYNTH"
    ds.StructureSetDate, ds.StructureSetTime = date, time
    reference = Dataset()
    reference.FrameOfReferenceUID = frame_of_reference_uid
    ds.ReferencedFrameOfReferenceSequence = [reference]
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = frame_of_reference_uid
    roi.ROIName = "lesion"
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = [roi]
    contour = Dataset()
    contour.ContourGeometricType = "CLOSED_PLANAR"
    square = [[-5.0, -5.0, 0.0], [5.0, -5.0, 0.0], [5.0, 5.0, 0.0], [-5.0, 5.0, 0.0]]
    contour.NumberOfContourPoints = len(square)
    contour.ContourData = [c for point in square for c in point]
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = [contour]
    ds.ROIContourSequence = [roi_contour]
    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = "GTV"
    observation.ROIInterpreter = ""
    ds.RTROIObservationsSequence = [observation]


def _pr(ds: Dataset, frame_of_reference_uid: str) -> None:
    del frame_of_reference_uid  # a presentation state refers to images, not to a frame of reference
    date, time = now_strings()
    ds.PresentationCreationDate, ds.PresentationCreationTime = date, time
    ds.ContentLabel = "SYNTH"
    ds.ContentDescription = "Soft-tissue window"
    ds.ContentCreatorName = "medres3d"
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 40, 400
    ds.SoftcopyVOILUTSequence = [voi]
    ds.PresentationLUTShape = "IDENTITY"


def _dicomdir(ds: Dataset) -> None:
    ds.FileSetID = "SYNTH"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = []
