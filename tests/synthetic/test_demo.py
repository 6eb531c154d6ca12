"""The quick demo end to end: every step produces its files and its numbers are consistent."""

import csv

import nibabel as nib
import numpy as np
import pytest

from medres3d.demo import QUICK, run_demo
from medres3d.errors import ConfigError


@pytest.mark.slow
def test_quick_demo_produces_model_metrics_evidence_and_batch_rows(tmp_path):
    lines: list[str] = []
    report = run_demo(tmp_path / "demo", quick=True, log=lines.append)
    assert len(lines) == 5
    for path in report.files.values():
        assert path.exists(), path
    # Metrics of the held-out test split, with a confusion matrix counting every test row.
    with report.files["manifest"].open() as handle:
        test_rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    confusion = np.array(report.confusion)
    assert confusion.sum() == len(test_rows)
    assert report.metrics["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    # The evidence map lies on the large volume's grid.
    evidence = nib.load(report.files["evidence_nifti"])
    scan = nib.load(report.files["large_volume"])
    assert evidence.shape == scan.shape == QUICK.body_shape
    np.testing.assert_allclose(evidence.affine, scan.affine, atol=1e-5)
    assert report.large_volume["num_windows"] > 1
    # Batch: the two CT series are classified, the truncated one is an error row, the MR is excluded.
    statuses = sorted(row[2] for row in report.batch["table"])
    assert statuses == ["error", "ok", "ok"]
    assert {row[1] for row in report.batch["table"]} == {"CT"}
    assert report.batch["excluded"] >= 1
    assert "truncated" in next(row[5] for row in report.batch["table"] if row[2] == "error")
    assert "batch over the DICOM tree" in report.summary()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        run_demo(tmp_path, quick=True)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
