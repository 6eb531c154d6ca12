"""Loading scans: NIfTI, DICOM series and multi-frame files, ITK formats, into a `Volume`.

Names are imported lazily (as in :mod:`medres3d`), so ``import medres3d.io`` stays light.

Example:
    >>> from medres3d.io import load_volume
    >>> vol = load_volume("scan.nii.gz")   # doctest: +SKIP
"""

from __future__ import annotations

from medres3d._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Volume": "medres3d.io.volume",
    "load_volume": "medres3d.io.readers",
    "load_channels": "medres3d.io.channels",
    "load_nifti": "medres3d.io.nifti",
    "load_itk": "medres3d.io.itk",
    "load_dicom_series": "medres3d.io.dicom",
    "load_dicom_file": "medres3d.io.dicom",
    "find_dicom_series": "medres3d.io.dicom",
    "scan_dicom_tree": "medres3d.io.dicom",
    "DicomSeries": "medres3d.io.dicom",
    "DEFAULT_MAX_VOXELS": "medres3d.io.limits",
    "MedRes3DReader": "medres3d.io.monai_reader",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
