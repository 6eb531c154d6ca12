"""atheris harness: arbitrary bytes as a DICOM file through header scanning and loading.

``read_header`` must return a FileHeader or a SkippedFile (never raise); loading the file and its
folder (a one-file series) must give a Volume or a :class:`~medres3d.errors.MedRes3DError`. Any other
exception, a crash, a hang or an allocation over ``-rss_limit_mb`` is a finding. See
``fuzz/README.md``.

Example:
    .venv/bin/python fuzz/make_seeds.py fuzz/corpus_nifti fuzz/corpus_dicom
    .venv/bin/python fuzz/fuzz_dicom.py -atheris_runs=100000 fuzz/corpus_dicom/
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings

import atheris

with atheris.instrument_imports(include=["medres3d", "pydicom"]):
    from medres3d.errors import MedRes3DError
    from medres3d.io.dicom import load_dicom_file, load_dicom_series
    from medres3d.io.dicom.header import read_header
    from medres3d.io.dicom.types import FileHeader, SkippedFile

MAX_VOXELS = 2**24
# pydicom warns and logs about every malformed value; at thousands of inputs a second that is noise
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
logging.getLogger("medres3d").setLevel(logging.CRITICAL)
warnings.simplefilter("ignore")
_DIR = tempfile.mkdtemp(prefix="fuzz_dicom_")
_PATH = os.path.join(_DIR, "x.dcm")


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    header = read_header(_PATH)
    if not isinstance(header, FileHeader | SkippedFile):
        raise TypeError(f"read_header returned {type(header).__name__}")
    for load, target in ((load_dicom_file, _PATH), (load_dicom_series, _DIR)):
        with contextlib.suppress(MedRes3DError):
            load(target, max_voxels=MAX_VOXELS)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
