"""atheris harness: arbitrary bytes as a ``.nii`` / ``.nii.gz`` file through ``load_nifti``.

The only acceptable outcomes are a Volume or a :class:`~medres3d.errors.MedRes3DError`; any other
exception, a crash, a hang (``-timeout``) or an allocation over ``-rss_limit_mb`` is a finding.
The first input byte picks the file name's suffix, so one corpus exercises both the plain and the
gzip path. See ``fuzz/README.md``.

Example:
    .venv/bin/python fuzz/make_seeds.py fuzz/corpus_nifti fuzz/corpus_dicom
    .venv/bin/python fuzz/fuzz_nifti.py -atheris_runs=100000 fuzz/corpus_nifti/
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["medres3d", "nibabel"]):
    from medres3d.errors import MedRes3DError
    from medres3d.io.nifti import load_nifti

# Far above any seed, far below the fuzzer's memory limit: a header claiming more is refused
# before allocation, which is one of the paths under test.
MAX_VOXELS = 2**24
# nibabel logs every header field it repairs; at thousands of inputs a second that is only noise
logging.getLogger("nibabel").setLevel(logging.CRITICAL)
_DIR = tempfile.mkdtemp(prefix="fuzz_nifti_")
_PATHS = (os.path.join(_DIR, "x.nii"), os.path.join(_DIR, "x.nii.gz"))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    path = _PATHS[data[0] & 1]
    with open(path, "wb") as f:
        f.write(data[1:])
    with contextlib.suppress(MedRes3DError):
        load_nifti(path, max_voxels=MAX_VOXELS)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
