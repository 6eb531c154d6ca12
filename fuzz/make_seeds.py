"""Write small valid seed files for the fuzz harnesses (NIfTI and DICOM) with medres3d.synthetic.

Example:
    .venv/bin/python fuzz/make_seeds.py fuzz/corpus_nifti fuzz/corpus_dicom
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from medres3d.synthetic import ct_phantom, make_affine, write_dicom_series, write_enhanced_dicom, write_nifti


def main(nifti_dir: str, dicom_dir: str) -> None:
    nifti, dicom = Path(nifti_dir), Path(dicom_dir)
    nifti.mkdir(parents=True, exist_ok=True)
    dicom.mkdir(parents=True, exist_ok=True)
    volume = ct_phantom((6, 5, 4), seed=0)
    for n, (suffix, dtype, orientation) in enumerate(
        [(".nii", np.int16, "axial"), (".nii.gz", np.float32, "oblique"), (".nii", np.uint8, "sagittal")]
    ):
        # the harness reads the suffix from the first byte: 0 -> .nii, 1 -> .nii.gz
        path = write_nifti(
            np.clip(volume, 0, 255) if dtype == np.uint8 else volume,
            make_affine((1, 2, 3), orientation),
            nifti / f"tmp{suffix}",
            dtype=dtype,
        )
        (nifti / f"seed{n}").write_bytes(bytes([int(suffix == ".nii.gz")]) + path.read_bytes())
        path.unlink()
    syntaxes = ["1.2.840.10008.1.2.1", ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless]
    for n, syntax in enumerate(syntaxes):
        first = write_dicom_series(volume, make_affine(), dicom / "tmp", transfer_syntax=syntax)[0]
        (dicom / f"slice{n}.dcm").write_bytes(first.read_bytes())
        for leftover in (dicom / "tmp").iterdir():
            leftover.unlink()
    (dicom / "tmp").rmdir()
    write_enhanced_dicom(volume, make_affine((1, 1, 2), "coronal"), dicom / "enhanced.dcm")


if __name__ == "__main__":
    main(*sys.argv[1:3])
