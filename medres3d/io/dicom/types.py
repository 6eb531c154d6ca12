"""The records of a DICOM header scan: one image file's header (``FileHeader``), or why a file was skipped.

They are plain frozen dataclasses, shared by the header readers (:mod:`.rawheader`, :mod:`.header`),
the grouping (:mod:`.scan`) and the loaders (:mod:`.series`, :mod:`.multiframe`), and pickled
between processes.

Example:
    >>> SkippedFile(Path("x.dcm"), "not DICOM").reason
    'not DICOM'
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

# Transfer syntaxes whose pixel data is a plain array at the element's file offset.
NATIVE_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})

@dataclass(frozen=True)
class SkippedFile:
    """A file a scan did not use, and why.

    Attributes:
        path: the file.
        reason: a human explanation (e.g. "not an image: Segmentation Storage (SEG)").
        kind: "empty", "not-dicom", "unreadable", "non-image", "unsupported" or "resource"; tells
            which error a direct load of this file raises.
    """

    path: Path
    reason: str
    kind: str = "non-image"


@dataclass(frozen=True)
class FileHeader:
    """What a header-only read of one image file says (values already parsed and validated).

    ``position``/``orientation``/``pixel_spacing`` are None when absent or malformed; the series
    loader names the file in its error then. ``pixel_offset`` is the file offset of the pixel data
    element (None when the file has none).
    """

    path: Path
    sop_class_uid: str
    modality: str
    patient_id: str
    study_uid: str
    series_uid: str
    series_number: int | None
    description: str
    image_type: tuple[str, ...]
    acquisition: int | None
    instance_number: int | None
    temporal_position: int | None
    echo: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    slope: float
    intercept: float
    transfer_syntax: str
    pixel_offset: int | None
    is_enhanced: bool
    # What tells the volumes of a 4D series apart (None or "" when the header has none).
    echo_time: float | None = None
    repetition_time: float | None = None
    acquisition_time: str = ""
    b_value: float | None = None
    gradient: tuple[float, float, float] | None = None  # diffusion direction, scanner frame (LPS)
    mosaic_images: int | None = None  # Siemens NumberOfImagesInMosaic (0019,100A)
    philips_scale_slope: float | None = None  # Philips MR Scale Slope (2005,100E), for precise values

    def with_values(self, **changes: object) -> FileHeader:
        """A copy with ``changes``: ``dataclasses.replace`` without its ``__init__`` call.

        The scan makes one header per frame of an Enhanced 4D file (thousands); ``replace`` costs
        about 16 µs a call, this about 3. The class is frozen and has no ``__post_init__``, so a
        copy of its fields is a valid instance.

        Example:
            >>> from pydicom.data import get_testdata_file
            >>> from medres3d.io.dicom.header import read_header
            >>> read_header(get_testdata_file("CT_small.dcm")).with_values(b_value=1000.0).b_value
            1000.0
        """
        unknown = set(changes) - _FIELD_NAMES
        if unknown:
            raise TypeError(f"FileHeader has no field(s) {sorted(unknown)}")
        copy = object.__new__(FileHeader)
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(changes)
        return copy

    @property
    def is_multiframe(self) -> bool:
        """True for a file whose frames are the slices (Enhanced CT/MR, RT Dose...)."""
        return self.frames > 1 or self.is_enhanced

    @property
    def is_isotropic_diffusion(self) -> bool:
        """True for a diffusion image with b > 0 and a zero gradient: a derived isotropic (trace) image.

        Philips stores its trace image this way in the DWI series; dcm2niix leaves it out of the DWI file.
        """
        return bool(self.b_value) and self.gradient is not None and not any(self.gradient)

    @property
    def is_localizer(self) -> bool:
        """True when ImageType says LOCALIZER (scout / topogram / survey)."""
        return "LOCALIZER" in self.image_type

    @property
    def is_mosaic(self) -> bool:
        """True for a Siemens mosaic: ImageType MOSAIC, or NumberOfImagesInMosaic in the header."""
        return "MOSAIC" in self.image_type or self.mosaic_images is not None

    @property
    def image_kind(self) -> str:
        """"M", "P", "R" or "I" (magnitude, phase, real, imaginary) from ImageType; "" if unknown.

        ImageType's third value (Siemens, Philips) or any value spelling the kind out (GE, Philips).
        """
        words = {"M": "M", "MAGNITUDE": "M", "P": "P", "PHASE": "P", "R": "R", "REAL": "R",
                 "I": "I", "IMAGINARY": "I"}  # fmt: skip
        if len(self.image_type) > 2 and self.image_type[2] in words:
            return words[self.image_type[2]]
        found = {words[v] for v in self.image_type[2:] if v in words and len(v) > 1}
        return found.pop() if len(found) == 1 else ""

    @property
    def is_native(self) -> bool:
        """True when the pixel data is an uncompressed array readable at ``pixel_offset``."""
        return self.transfer_syntax in NATIVE_SYNTAXES and self.pixel_offset is not None


_FIELD_NAMES = frozenset(f.name for f in fields(FileHeader))
