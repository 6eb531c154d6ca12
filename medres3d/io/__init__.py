"""Loading scans: NIfTI, DICOM series and multi-frame files, ITK formats, into a `Volume`.

Names are imported lazily (as in :mod:`medres3d`), so ``import medres3d.io`` stays light.

Example:
    >>> from medres3d.io import load_volume
    >>> vol = load_volume("scan.nii.gz")   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Volume": "medres3d.io.volume",
    "load_volume": "medres3d.io.readers",
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


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'medres3d.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
