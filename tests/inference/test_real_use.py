"""Batch and predict in the state a user's process is in (issue 10).

A model trained by the real ``medres3d train`` command; a parent process that has loaded it and
run predictions with more than one torch thread (its OpenMP pool is running) before the loader
processes start; then ``medres3d batch`` with its default options, ``predict --workers 2`` and
``predict_many(workers=2)`` over real-size NIfTI files and DICOM series, with output to a file.
Loader workers forked from such a parent hung on every scan (``_share_fd_cpu_``); these tests
time out on that code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medres3d.cli import app
from medres3d.inference.batch_output import read_results
from medres3d.inference.classifier import Classifier
from medres3d.synthetic import ct_phantom, make_affine, make_phantom_dataset, write_dicom_series, write_nifti

CONFIG = Path(__file__).parents[2] / "sample_configs" / "tiny.yaml"
NUM_NIFTI = 24
NUM_DICOM = 6
SCAN_SHAPE = (256, 256, 48)  # a real MRI/CT matrix; 1 x 1 x 3 mm voxels
BOUND_S = 150  # the whole batch; a hang costs the 600 s scan timeout per scan


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    """A model file written by ``medres3d train`` (a fresh process), on 5 mm phantoms."""
    root = tmp_path_factory.mktemp("train")
    manifest = make_phantom_dataset(root / "data", 16, shape=(16, 16, 16), spacing=(5.0, 5.0, 5.0),
                                    split_fractions=(0.75, 0.25, 0.0), lesion_contrast=(300.0, 400.0),
                                    lesion_radius_mm=(8.0, 12.0), seed=3)  # fmt: skip
    config = yaml.safe_load(CONFIG.read_text())
    config["data"]["manifest"] = str(manifest)
    config["preprocessing"]["overrides"]["spacing"] = [5.0, 5.0, 5.0]  # real-size scans are resampled
    config["model"]["input_size"] = [16, 16, 16]
    config["output_dir"] = str(root / "run")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "medres3d.cli", "train", str(path), "--no-progress"],
                          capture_output=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return root / "run" / "model.safetensors"


@pytest.fixture(scope="module")
def real_size_tree(tmp_path_factory) -> Path:
    """24 NIfTI files and 6 DICOM series of 256 x 256 x 48 voxels (1 x 1 x 3 mm)."""
    root = tmp_path_factory.mktemp("scans")
    affine = make_affine((1.0, 1.0, 3.0))
    for n in range(NUM_NIFTI + NUM_DICOM):
        array = ct_phantom(SCAN_SHAPE, spacing=(1.0, 1.0, 3.0), lesion=n % 2 == 1, lesion_radius_mm=15.0,
                           lesion_hu=350.0, seed=n).astype(np.int16)  # fmt: skip
        if n < NUM_NIFTI:
            write_nifti(array, affine, root / "nifti" / f"scan{n:02d}.nii.gz")
        else:
            write_dicom_series(array, affine, root / "dicom" / f"series{n:02d}")
    return root


@pytest.fixture
def busy_parent(trained_model, real_size_tree):
    """This process in a user's state: the model loaded and run with 2 torch threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    clf = Classifier.load(trained_model, device="cpu")
    for scan in sorted((real_size_tree / "nifti").iterdir())[:2]:
        assert clf.predict(scan).ok
    yield clf
    torch.set_num_threads(threads)


def _scans(root: Path) -> list[Path]:
    return sorted((root / "nifti").iterdir()) + sorted((root / "dicom").iterdir())


@pytest.mark.slow
@pytest.mark.timeout(2 * BOUND_S)
def test_cli_batch_with_default_options_after_predictions_in_this_process(
    busy_parent, trained_model, real_size_tree, tmp_path
):
    out = tmp_path / "results.csv"
    start = time.monotonic()
    result = CliRunner().invoke(app, ["batch", str(trained_model), str(real_size_tree), "--out", str(out)])
    elapsed = time.monotonic() - start
    assert result.exit_code == 0, result.output
    rows = read_results(out)
    assert len(rows) == NUM_NIFTI + NUM_DICOM
    assert [row["error"] for row in rows if row["status"] != "ok"] == []
    assert elapsed < BOUND_S
    # the same numbers as the busy parent's own predictions
    by_path = {Path(row["path"]).name: row for row in rows}
    for scan in (_scans(real_size_tree)[0], _scans(real_size_tree)[-1]):
        expected = busy_parent.predict(scan).probabilities
        row = by_path[scan.name]
        assert {k: float(row[f"p_{k}"]) for k in expected} == pytest.approx(expected, abs=1e-5)
    # a second call after the first, resuming into the same file, has nothing left to do
    again = CliRunner().invoke(app, ["batch", str(trained_model), str(real_size_tree), "--out", str(out),
                                     "--resume"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert f"0 ok, 0 error(s), {NUM_NIFTI + NUM_DICOM} already done" in again.output


@pytest.mark.slow
@pytest.mark.timeout(2 * BOUND_S)
def test_predict_many_with_workers_after_predictions_in_this_process(busy_parent, real_size_tree):
    scans = _scans(real_size_tree)
    start = time.monotonic()
    predictions = list(busy_parent.predict_many(scans, workers=2, timeout=BOUND_S))
    assert time.monotonic() - start < BOUND_S
    assert [p.error for p in predictions if not p.ok] == []
    assert [p.num_windows for p in predictions] == [predictions[0].num_windows] * len(scans)
    assert predictions[0].num_windows > 1  # 256 x 256 x 48 at 5 mm is larger than the 16^3 input


@pytest.mark.slow
@pytest.mark.timeout(2 * BOUND_S)
def test_cli_predict_with_two_workers_after_predictions_in_this_process(
    busy_parent, trained_model, real_size_tree, tmp_path
):
    scans = [str(p) for p in _scans(real_size_tree)[::3]]
    result = CliRunner().invoke(app, ["predict", str(trained_model), *scans, "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["status"] for r in records] == ["ok"] * len(scans)
    assert [r["scan"] for r in records] == scans


@pytest.mark.slow
@pytest.mark.timeout(2 * BOUND_S)
def test_cli_batch_in_a_fresh_process_with_default_options(trained_model, real_size_tree, tmp_path):
    out = tmp_path / "results.jsonl"
    done = subprocess.run([sys.executable, "-m", "medres3d.cli", "batch", str(trained_model),
                           str(real_size_tree), "--out", str(out)],
                          capture_output=True, timeout=BOUND_S)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    rows = read_results(out)
    assert [row["status"] for row in rows] == ["ok"] * (NUM_NIFTI + NUM_DICOM)
    assert "warm-up" in done.stderr.decode()


@pytest.mark.slow
@pytest.mark.timeout(2 * BOUND_S)
def test_torchrun_two_ranks_with_default_options(trained_model, real_size_tree, tmp_path):
    out = tmp_path / "results.csv"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "medres3d.cli", "batch"]
    command += [str(trained_model), str(real_size_tree), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, timeout=BOUND_S)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    rows = read_results(out)
    assert [row["status"] for row in rows] == ["ok"] * (NUM_NIFTI + NUM_DICOM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # the parts were merged
