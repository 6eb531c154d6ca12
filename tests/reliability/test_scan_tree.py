"""A batch root as found on a share: loops, pipes, unreadable files, folders named like files.

``scan_dicom_tree`` must neither hang (a FIFO blocks a reader forever; a symlink loop recurses
forever) nor stop: every good series is found, and every entry it could not use is reported.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import corpus as c
import pytest

from medres3d.io.dicom import scan_dicom_tree

NOBODY = 65534


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A folder another user can traverse (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="medres3d-reliability-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _hostile_tree(root: Path) -> dict[str, Path]:
    good = c.dicom_series(root / "good")
    other = c.dicom_series(root / "other")
    unreadable = other[0]
    unreadable.chmod(0o000)
    for folder in (root, root / "good", root / "other"):
        folder.chmod(0o755)
    for path in good + other[1:]:
        path.chmod(0o644)
    os.symlink(root, root / "good" / "loop")  # a folder link back to the root
    os.symlink("self.dcm", root / "self.dcm")  # a link to itself (ELOOP)
    os.symlink(root / "nowhere.dcm", root / "dangling.dcm")
    os.mkfifo(root / "pipe.dcm")  # opening it for reading would block forever
    (root / "fake.dcm").mkdir()  # a folder named like a file
    c.garbage(root / "fake.dcm" / "junk.dcm")
    return {
        "good": root / "good",
        "unreadable": unreadable,
        "self-loop": root / "self.dcm",
        "dangling": root / "dangling.dcm",
        "fifo": root / "pipe.dcm",
        "junk": root / "fake.dcm" / "junk.dcm",
    }


def _scan_as_nobody(root: Path) -> dict:
    """Scan ``root`` in a forked child running as an unprivileged user (root reads a 0o000 file)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, scan, report through the pipe, exit without cleanup
        code = 0
        try:
            os.close(read_end)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            scan = scan_dicom_tree(root, workers=1)
            report = {
                "series": [[str(p) for p in s.files] for s in scan.series],
                "skipped": {str(s.path): s.reason for s in scan.skipped},
            }
            os.write(write_end, json.dumps(report).encode())
        except BaseException as err:  # anything escaping is the failure under test
            os.write(write_end, json.dumps({"crash": f"{type(err).__name__}: {err}"}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def _scan(root: Path) -> dict:
    if os.geteuid() == 0:
        return _scan_as_nobody(root)
    scan = scan_dicom_tree(root, workers=1)
    return {
        "series": [[str(p) for p in s.files] for s in scan.series],
        "skipped": {str(s.path): s.reason for s in scan.skipped},
    }


@pytest.mark.timeout(30)
def test_hostile_entries_neither_hang_nor_stop_the_scan(shared_root: Path) -> None:
    entries = _hostile_tree(shared_root)
    report = _scan(shared_root)
    assert "crash" not in report, report
    good = sorted(str(p) for p in entries["good"].iterdir() if p.suffix == ".dcm")
    assert good in report["series"]  # found once, not again through the loop
    assert sum(len(files) for files in report["series"]) == 6 + 5  # "other" minus its unreadable file
    assert "Permission denied" in report["skipped"][str(entries["unreadable"])]
    assert "not a DICOM file" in report["skipped"][str(entries["junk"])]


@pytest.mark.timeout(30)
def test_hostile_entries_are_reported(shared_root: Path) -> None:
    entries = _hostile_tree(shared_root)
    report = _scan(shared_root)
    for kind in ("self-loop", "dangling", "fifo"):
        assert str(entries[kind]) in report["skipped"], kind
