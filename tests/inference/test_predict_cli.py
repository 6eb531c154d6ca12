"""``medres3d predict`` as a user reads it: names that tell scans apart, warm-up apart, hints."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from medres3d.cli import app
from medres3d.inference.classifier import Classifier
from medres3d.synthetic import ct_phantom, make_affine, write_nifti


def _patches(tmp_path, count=3):
    folder = tmp_path / "a_rather_long_project_folder_name" / "derived" / "patches"
    return [write_nifti(ct_phantom((16, 16, 16), seed=n), make_affine(), folder / f"grey_{n:06d}.nii.gz")
            for n in range(count)]  # fmt: skip


def test_the_table_shows_what_tells_the_scans_apart_in_a_narrow_terminal(model_file, tmp_path):
    scans = _patches(tmp_path)
    done = subprocess.run([sys.executable, "-m", "medres3d.cli", "predict", str(model_file),
                           *map(str, scans), "--device", "cpu"],
                          capture_output=True, text=True, env={"COLUMNS": "80", "PATH": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr
    for n in range(3):
        assert f"grey_{n:06d}.nii.gz" in done.stdout
    assert "warm-up" in done.stdout


def test_warm_up_is_paid_once_and_kept_out_of_the_scans_seconds(model_file):
    import time

    clf = Classifier.load(model_file, device="cpu", evidence=False)
    assert clf.warmup_seconds is None
    calls = []
    slow_first = clf.net.forward

    def forward(x):  # a first forward pass that costs 1 s, as a cold start can
        if not calls:
            time.sleep(1.0)
        calls.append(len(x))
        return slow_first(x)

    clf.net.forward = forward
    scan = np.zeros((16, 16, 16), np.float32)
    first = clf.predict(scan)
    assert clf.warmup_seconds >= 1.0
    assert first.seconds < 0.5  # the cold start is the warm-up's, not the scan's
    warm_up = clf.warmup_seconds
    clf.predict(scan)
    assert clf.warmup_seconds == warm_up and len(calls) == 3  # warm-up, two scans: not paid again


def test_predict_on_a_folder_of_nifti_files_says_what_to_do(model_file, tmp_path):
    folder = _patches(tmp_path)[0].parent
    result = CliRunner().invoke(app, ["predict", str(model_file), str(folder), "--device", "cpu"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # the table folds long lines
    assert "no DICOM image series found" in text
    assert "holds 3 NIfTI/ITK image file(s) (e.g. grey_000000.nii.gz)" in text
    assert "pass the files themselves" in text and "medres3d batch MODEL" in text
