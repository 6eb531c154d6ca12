"""The per-scan timeout: a scan whose loading never ends costs one error, not the batch.

The hanging scan is an object whose ``load()`` never returns (a decoder stuck in a loop, a read
blocked on a dead network share); a FIFO named like a scan, the hostile file a share can hold,
is refused by ``load_volume`` at once and so costs one error row without waiting for the timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from inference_helpers import HangingScan, HangsOnFirstLoad
from process_helpers import loader_workers

from medres3d.errors import ConfigError
from medres3d.inference.batch import run_batch
from medres3d.inference.batch_output import read_results
from medres3d.inference.classifier import Classifier
from medres3d.inference.loader_pool import validate_timeout
from medres3d.synthetic import ct_phantom, make_affine, write_nifti

TIMEOUT = 2.0
FIFO = "scan2.nii.gz"


@pytest.fixture(scope="module")
def root_with_fifo(tmp_path_factory):
    root = tmp_path_factory.mktemp("fifo_tree")
    for n in (0, 1, 3, 4):
        array = ct_phantom((16, 16, 8), lesion=n % 2 == 1, seed=n)
        write_nifti(array, make_affine(), root / f"scan{n}.nii.gz")
    os.mkfifo(root / FIFO)  # sorted between the others
    return root


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_hung_scan_times_out_and_the_others_are_classified(model_file, root_with_fifo):
    scans = [root_with_fifo / f"scan{n}.nii.gz" for n in (0, 1, 3, 4)]
    inputs = [scans[0], scans[1], HangingScan(), scans[2], scans[3]]  # scans after it are in flight
    clf = Classifier.load(model_file, device="cpu", evidence=False)
    before = set(loader_workers())
    start = time.monotonic()
    results = list(clf.predict_many(inputs, workers=2, prefetch=1, timeout=TIMEOUT))
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == ["ok", "ok", "error", "ok", "ok"]
    assert "timed out after 2 s while loading" in results[2].error
    assert TIMEOUT <= results[2].seconds < TIMEOUT + 5
    # the scans in flight when the workers were killed start over and match a direct prediction
    for scan, result in zip(scans, results[:2] + results[3:], strict=True):
        expected = clf.predict(scan).probabilities
        assert result.probabilities == pytest.approx(expected, abs=1e-6)
    assert elapsed < TIMEOUT + 20
    # the killed workers and the pools' other workers are gone (reaped, not zombies); the fork
    # server they were forked from stays, for the next batch
    assert set(loader_workers()) <= before


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_cli_batch_fifo_is_an_error_row_without_waiting(model_file, root_with_fifo, tmp_path):
    out = tmp_path / "results.jsonl"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "medres3d.cli", "batch", str(model_file), str(root_with_fifo),
         "--out", str(out), "--workers", "1", "--scan-timeout", "30", "--no-progress", "--device", "cpu"],
        capture_output=True, timeout=50,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert time.monotonic() - start < 30  # refused at once, not timed out
    assert "4 ok, 1 error(s)" in done.stderr.decode()  # the summary goes to stderr
    errors = [row["error"] for row in read_results(out) if row["status"] == "error"]
    assert len(errors) == 1
    assert errors[0].startswith(f"{root_with_fifo / FIFO}: not a regular file")


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


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_scans_lost_in_a_row_are_blamed_on_the_pool_and_the_rest_load_in_this_process(model_file, tmp_path):
    paths = []
    for n in range(5):
        paths.append(write_nifti(ct_phantom((16, 16, 8), seed=n), make_affine(), tmp_path / f"s{n}.nii.gz"))
    flaky = [HangsOnFirstLoad(paths[n], tmp_path / f"tried{n}") for n in range(3)]
    clf = Classifier.load(model_file, device="cpu", evidence=False)
    # one worker, one scan in flight: each flaky scan hangs once, in its own pool
    results = list(clf.predict_many([*flaky, *paths[3:]], workers=1, prefetch=1, timeout=1.0))
    assert [r.status for r in results] == ["error", "error", "ok", "ok", "ok"]
    assert "timed out after 1 s" in results[0].error and "in a row" not in results[0].error
    assert "2 scans in a row failed this way: the loader processes, not the files" in results[1].error
    # the third is retried alone, loads, and so the pool is to blame: the rest load here
    for result in results[3:]:
        assert any("loaded in the main process: the loader processes failed 3 scans in a row" in w
                   for w in result.warnings)  # fmt: skip
    expected = clf.predict(paths[3]).probabilities
    assert results[3].probabilities == pytest.approx(expected, abs=1e-6)
