"""The per-scan timeout of batch mode: a scan whose loading never ends costs one error row.

The hanging scan is a FIFO named like a NIfTI file (what a hostile or broken share can hold):
opening it for reading blocks until a writer comes, and none does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from medres3d.errors import ConfigError
from medres3d.inference.batch import run_batch
from medres3d.inference.batch_output import read_results
from medres3d.inference.classifier import Classifier, validate_timeout
from medres3d.synthetic import ct_phantom, make_affine, write_nifti

TIMEOUT = 2.0
HUNG = "scan2.nii.gz"


@pytest.fixture(scope="module")
def root_with_fifo(tmp_path_factory):
    root = tmp_path_factory.mktemp("fifo_tree")
    for n in (0, 1, 3, 4):
        array = ct_phantom((16, 16, 8), lesion=n % 2 == 1, seed=n)
        write_nifti(array, make_affine(), root / f"scan{n}.nii.gz")
    os.mkfifo(root / HUNG)  # sorted between the others: scans before it are done, after it in flight
    return root


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_hung_scan_times_out_and_the_others_are_classified(model_file, root_with_fifo, tmp_path):
    before = _children()
    out = tmp_path / "results.csv"
    start = time.monotonic()
    summary = run_batch(model_file, root_with_fifo, out, workers=2, scan_timeout=TIMEOUT, progress=False,
                        device="cpu")  # fmt: skip
    elapsed = time.monotonic() - start
    assert (summary.ok, summary.errors) == (4, 1)
    rows = read_results(out)
    assert [row["id"] for row in rows] == [f"scan{n}.nii.gz" for n in range(5)]  # discovery order
    hung = rows[2]
    assert hung["status"] == "error" and not hung["label"]
    assert hung["error"].startswith(f"{root_with_fifo / HUNG}: timed out after 2 s while loading")
    assert TIMEOUT <= float(hung["seconds"]) < TIMEOUT + 5
    # the scans in flight when the workers were killed start over and match a direct prediction
    reference = Classifier.load(model_file, device="cpu", evidence=False)
    for row in rows[:2] + rows[3:]:
        assert row["status"] == "ok", row
        expected = reference.predict(row["path"]).probabilities
        assert float(row["p_normal"]) == pytest.approx(expected["normal"], abs=1e-6)
        assert float(row["p_lesion"]) == pytest.approx(expected["lesion"], abs=1e-6)
    assert elapsed < TIMEOUT + 20
    # the killed workers and the pools' other workers are gone (reaped, not zombies)
    assert _children() <= before


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_cli_scan_timeout(model_file, root_with_fifo, tmp_path):
    out = tmp_path / "results.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "medres3d.cli", "batch", str(model_file), str(root_with_fifo),
         "--out", str(out), "--workers", "1", "--scan-timeout", "1.5", "--no-progress", "--device", "cpu"],
        capture_output=True, timeout=50,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "4 ok, 1 error(s)" in done.stderr.decode()  # the summary goes to stderr
    errors = [row["error"] for row in read_results(out) if row["status"] == "error"]
    assert len(errors) == 1
    assert errors[0].startswith(f"{root_with_fifo / HUNG}: timed out after 1.5 s while loading")


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "10", True])
def test_an_invalid_timeout_is_refused_before_the_output_is_touched(bad, model_file, tmp_path):
    out = tmp_path / "results.csv"
    out.write_text("kept\n")
    with pytest.raises(ConfigError, match=r"timeout must be a number of seconds >= 0"):
        run_batch(model_file, tmp_path, out, scan_timeout=bad, progress=False, device="cpu")
    assert out.read_text() == "kept\n"


def test_zero_or_none_means_no_timeout():
    assert validate_timeout(0) is None and validate_timeout(None) is None
    assert validate_timeout(2) == 2.0 and validate_timeout(0.5) == 0.5
