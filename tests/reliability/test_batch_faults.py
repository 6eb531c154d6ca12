"""Fault injection for ``medres3d batch``: SIGKILL at random points, a full disk, a dying loader.

The reference is an uninterrupted in-process :func:`run_batch` over the same tree. Every faulty run
is the real command line in a subprocess.
"""

from __future__ import annotations

import csv
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import corpus as c
import numpy as np
import pytest
import torch
from process_helpers import loader_workers

from medres3d.errors import OutputWriteError
from medres3d.inference.batch import run_batch
from medres3d.inference.batch_output import read_results
from medres3d.modelfile import save_model
from medres3d.models.normalization import fit_normalization
from medres3d.models.resnet3d import resnet3d

CLI = [sys.executable, "-m", "medres3d.cli", "batch"]
KILL_SEEDS = (11, 22, 33, 44, 55)
NUM_NIFTI = 30  # enough rows that five runs killed a few rows in each cannot finish the batch
# columns that legitimately differ between runs
VOLATILE = {"seconds"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = resnet3d((16, 16, 16), 2, initial_num_filters=4, num_filters=(4, 8), stack_depth=(1, 1),
                   normalization="zscore")  # fmt: skip
    fit_normalization(net, [torch.randn(2, 1, 16, 16, 16) * 200.0 - 300.0])
    for module in net.modules():  # non-trivial statistics, so that probabilities differ per scan
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return save_model(net, tmp_path_factory.mktemp("model") / "model.safetensors", class_names=["no", "yes"])


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """NIfTI files and DICOM series (one truncated) with distinct contents."""
    root = tmp_path_factory.mktemp("tree")
    for n in range(NUM_NIFTI):
        c.write_nifti(c.ct_phantom((18, 16, 12), lesion=n % 2 == 1, seed=n), c.make_affine(),
                      root / "nifti" / f"scan {n:02d}.nii.gz")  # fmt: skip
    for n in range(2):
        c.dicom_series(root / "dicom" / f"s{n}", array=c.ct_phantom((16, 16, 8), seed=100 + n),
                       affine=c.make_affine())  # fmt: skip
    broken = c.dicom_series(root / "dicom" / "broken", array=c.phantom((16, 16, 8)), affine=c.make_affine())
    c.truncate(broken[3], c.pixel_data_offset(broken[3]) + 10)
    return root


@pytest.fixture(scope="module")
def reference(model: Path, tree: Path, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("ref") / "reference.csv"
    summary = run_batch(model, tree, out, workers=0, progress=False, device="cpu")
    assert (summary.ok, summary.errors) == (NUM_NIFTI + 2, 1)
    return {row["id"]: row for row in read_results(out)}


def _args(model: Path, tree: Path, out: Path, workers: int) -> list[str]:
    return [*CLI, str(model), str(tree), "--out", str(out), "--workers", str(workers), "--no-progress",
            "--device", "cpu"]  # fmt: skip


def _lines(out: Path) -> int:
    try:
        return out.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _check_complete_rows(out: Path) -> list[list[str]]:
    """The file ends with a newline and every line parses into exactly the header's columns."""
    text = out.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "a partial last line"
    rows = list(csv.reader(text.splitlines()))
    assert all(len(row) == len(rows[0]) for row in rows), "a row with the wrong number of cells"
    return rows


def _same_as_reference(rows: list[dict], reference: dict[str, dict]) -> None:
    for row in rows:
        expected = reference[row["id"]]
        for key, value in row.items():
            if key in VOLATILE:
                continue
            if key.startswith("p_") and value:
                assert float(value) == pytest.approx(float(expected[key]), abs=1e-6), (row["id"], key)
            elif key == "error":
                assert value.split(":")[0] == expected[key].split(":")[0], row["id"]
            else:
                assert value == expected[key], (row["id"], key)


def _fork_batch(model: Path, tree: Path, out: Path, *, resume: bool, workers: int) -> int:
    """Run :func:`run_batch` in a forked child (no interpreter start-up: cheap to kill many times)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            run_batch(model, tree, out, resume=resume, workers=workers, progress=False, device="cpu")
            code = 0
        finally:
            os._exit(code)
    return pid


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(
    model: Path, tree: Path, reference: dict[str, dict], tmp_path: Path
) -> None:
    out = tmp_path / "results.csv"
    kills = 0
    for run, seed in enumerate(KILL_SEEDS):
        rng = np.random.default_rng(seed)
        before = _lines(out)
        # kill once the file has grown by a random number of rows, a random few ms later (mid-write
        # and mid-inference both happen); a kill may also land before any row is written
        grow = int(rng.integers(0, 4))
        extra = float(rng.uniform(0, 0.05))
        pid = _fork_batch(model, tree, out, resume=run > 0, workers=run % 2)
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if _lines(out) >= before + grow + (1 if before == 0 else 0):
                time.sleep(extra)
                os.kill(pid, signal.SIGKILL)
                kills += 1
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.002)
        if os.waitstatus_to_exitcode(status) == 0:  # finished before the kill point
            break
        assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
        rows = _check_complete_rows(out) if out.exists() else []
        ids = [row[0] for row in rows[1:]]
        assert len(ids) == len(set(ids)), "a series written twice"
    assert kills >= 3, "too few runs were interrupted to test anything"
    # the last restart is the real command line
    finished = subprocess.run(
        [*_args(model, tree, out, workers=1), "--resume"], capture_output=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    _check_complete_rows(out)
    rows = read_results(out)
    assert sorted(row["id"] for row in rows) == sorted(reference), "each series exactly once"
    _same_as_reference(rows, reference)


def _limit_file_size(limit: int):
    def apply() -> None:
        # ignored signals stay ignored across exec: the over-limit write fails with EFBIG instead
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_disk_full_is_reported_and_keeps_the_rows_written(
    model: Path, tree: Path, reference: dict[str, dict], tmp_path: Path
) -> None:
    out = tmp_path / "results.csv"
    header = next(iter(reference.values()))
    # room for the header and about three rows: the fourth row hits the limit in the middle
    row_size = len(",".join(f"{v}" for v in header.values())) + 1
    limit = len(",".join(header)) + 1 + 3 * row_size + row_size // 2
    done = subprocess.run(_args(model, tree, out, workers=0), capture_output=True, timeout=120,
                          preexec_fn=_limit_file_size(limit))  # fmt: skip
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr[-2000:]
    assert f"error: {out}: cannot write a result row" in stderr, stderr[-2000:]
    assert "File too large" in stderr or "short write" in stderr, stderr[-2000:]
    rows = _check_complete_rows(out)
    assert 2 <= len(rows) - 1 < len(reference)
    _same_as_reference(read_results(out), reference)
    # after the disk is freed, resuming completes the file without repeating a row
    run_batch(model, tree, out, resume=True, workers=0, progress=False, device="cpu")
    assert sorted(row["id"] for row in read_results(out)) == sorted(reference)
    _same_as_reference(read_results(out), reference)


@pytest.mark.timeout(60)
def test_output_on_a_full_device_raises_output_write_error(model: Path, tree: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    with pytest.raises(OutputWriteError, match=r"^/dev/full: cannot write .*No space left on device"):
        run_batch(model, tree, "/dev/full", fmt="csv", workers=0, progress=False, device="cpu")


def _wait(pid: int, seconds: float) -> int | None:
    """The child's wait status, or None after killing it when it has not ended within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_dying_loader_worker_costs_one_row_not_the_batch(
    model: Path, tree: Path, reference: dict[str, dict], tmp_path: Path
) -> None:
    out = tmp_path / "results.csv"
    pid = _fork_batch(model, tree, out, resume=False, workers=1)
    deadline = time.monotonic() + 90
    killed = None
    while time.monotonic() < deadline and killed is None:
        workers = loader_workers(pid) if _lines(out) >= 3 else []
        if workers:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)  # what a segfaulting decoder looks like from outside
        time.sleep(0.005)
    status = _wait(pid, 120)
    if killed is None:
        pytest.skip("inconclusive: the batch finished before a loader worker could be killed")
    assert status is not None, "the batch hung after its loader worker died"
    assert os.waitstatus_to_exitcode(status) == 0, "the batch stopped"
    rows = read_results(out)
    assert sorted(row["id"] for row in rows) == sorted(reference)
    assert sum(row["status"] == "error" for row in rows) <= 1 + sum(
        row["status"] == "error" for row in reference.values()
    )
