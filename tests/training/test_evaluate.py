"""medres3d.evaluate and `medres3d evaluate`: predictions through the Classifier, metrics, files, failures."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medres3d.errors import ManifestError

sklearn_metrics = pytest.importorskip("sklearn.metrics")

NAMES = ["normal", "lesion"]


@pytest.fixture
def model_file(tmp_path, tiny_net):
    from medres3d import save_model

    return save_model(tiny_net, tmp_path / "model.safetensors", class_names=NAMES)


@pytest.fixture
def study(tmp_path):
    """14 test scans (two larger than the 16x16x8 input), 2 train rows, a corrupt and a missing file."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    lines = ["path,label,split"]
    for i in range(16):
        shape = (24, 16, 8) if i in (3, 7) else (16, 16, 8)
        label = NAMES[i % 2]
        voxels = rng.normal(5.0 + (1.5 if label == "lesion" else 0.0), 3.0, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(voxels, np.eye(4)), tmp_path / f"scan{i}.nii.gz")
        lines.append(f"scan{i}.nii.gz,{label},{'train' if i >= 14 else 'test'}")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    lines += ["broken.nii.gz,lesion,test", "missing.nii.gz,normal,test"]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_metrics_equal_sklearn_on_the_classifiers_own_predictions(model_file, study, tmp_path):
    from medres3d import Classifier
    from medres3d.training.evaluate import evaluate

    result = evaluate(model_file, study, split="test", out_dir=tmp_path / "eval", num_resamples=300,
                      device="cpu")
    # the reference: one predict() per scan, then scikit-learn
    clf = Classifier.load(model_file, device="cpu", evidence=False)
    ok_rows = [(f"scan{i}.nii.gz", NAMES[i % 2]) for i in range(14)]
    probs = np.array([[clf.predict(tmp_path / path).probabilities[n] for n in NAMES] for path, _ in ok_rows])
    y = np.array([NAMES.index(label) for _, label in ok_rows])
    pred = probs.argmax(axis=1)
    m = result.metrics
    assert m["accuracy"].value == pytest.approx(sklearn_metrics.accuracy_score(y, pred))
    assert m["balanced_accuracy"].value == pytest.approx(sklearn_metrics.balanced_accuracy_score(y, pred))
    assert m["roc_auc[lesion]"].value == pytest.approx(sklearn_metrics.roc_auc_score(y, probs[:, 1]),
                                                       abs=1e-6)
    assert m["average_precision[lesion]"].value == pytest.approx(
        sklearn_metrics.average_precision_score(y, probs[:, 1]), abs=1e-6)
    assert m["brier"].value == pytest.approx(sklearn_metrics.brier_score_loss(y, probs[:, 1]), abs=1e-6)
    assert m["f1_macro"].value == pytest.approx(sklearn_metrics.f1_score(y, pred, average="macro"))
    assert result.confusion.tolist() == sklearn_metrics.confusion_matrix(y, pred).tolist()
    # (a percentile interval need not hold the point estimate: ECE is biased upward by resampling)
    assert all(e.low <= e.high for e in m.values() if e.low is not None)
    # failed scans are counted and listed, never dropped silently
    assert result.num_classified == 14 and len(result.scans) == 16
    assert [(s.row, s.path) for s in result.failed] == [(18, "broken.nii.gz"), (19, "missing.nii.gz")]
    assert all("broken.nii.gz" in s.error or "missing.nii.gz" in s.error for s in result.failed)


def test_files_written(model_file, study, tmp_path):
    from medres3d.training.evaluate import evaluate

    out = tmp_path / "eval"
    result = evaluate(model_file, study, out_dir=out, num_resamples=100, device="cpu")
    for name in ("roc.png", "precision_recall.png", "reliability.png", "confusion_matrix.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    saved = json.loads((out / "metrics.json").read_text())
    assert (saved["num_scans"], saved["num_classified"], saved["num_failed"]) == (16, 14, 2)
    assert saved["metrics"]["accuracy"]["value"] == result.metrics["accuracy"].value
    assert saved["bootstrap"]["resamples"] == 100
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16
    assert [r["status"] for r in rows].count("error") == 2
    assert float(rows[0]["p_normal"]) + float(rows[0]["p_lesion"]) == pytest.approx(1.0, abs=1e-5)
    assert rows[3]["num_windows"] != "1"   # the 24-voxel scan was windowed
    table = (out / "metrics.md").read_text()
    assert "14 of 16 scans classified, 2 failed" in table
    assert f"| accuracy | {result.metrics['accuracy'].value:.3f} |" in table
    assert "row 18 `broken.nii.gz`" in table


def test_a_single_class_split_says_why_instead_of_nan(model_file, study, tmp_path):
    from medres3d.training.evaluate import evaluate

    # only the two 'train' rows are evaluated: scan14 (normal) and scan15 (lesion); keep the normal one
    text = study.read_text().replace("scan15.nii.gz,lesion,train", "scan15.nii.gz,lesion,test")
    study.write_text(text)
    result = evaluate(model_file, study, split="train", out_dir=tmp_path / "one", num_resamples=50,
                      device="cpu")
    assert result.metrics["roc_auc_macro"].value is None
    assert "one class only ('normal')" in result.metrics["roc_auc_macro"].reason
    assert "no ROC or precision-recall figure" in result.notes[0]
    assert "undefined" in (tmp_path / "one" / "metrics.md").read_text()
    saved = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert saved["metrics"]["roc_auc_macro"]["value"] is None


def test_manifest_problems_are_named(model_file, study, tmp_path):
    from medres3d.training.evaluate import evaluate

    with pytest.raises(ManifestError, match=r"no rows with split 'val' \(rows per split: train 2, test 16\)"):
        evaluate(model_file, study, split="val", device="cpu")
    no_split = tmp_path / "nosplit.csv"
    no_split.write_text("path,label\nscan0.nii.gz,normal\n")
    with pytest.raises(ManifestError, match=r"no split column.*split='all'"):
        evaluate(model_file, no_split, device="cpu")
    odd = tmp_path / "odd.csv"
    odd.write_text("path,label\nscan0.nii.gz,tumour\n")
    with pytest.raises(ManifestError, match=r"row 2: label 'tumour' is not one of the model's classes"):
        evaluate(model_file, odd, split="all", device="cpu")


def test_cli(model_file, study, tmp_path):
    from typer.testing import CliRunner

    from medres3d.cli import app

    out = tmp_path / "cli"
    run = CliRunner().invoke(app, ["evaluate", str(model_file), str(study), "--out", str(out),
                                   "--resamples", "50", "--device", "cpu"])
    assert run.exit_code == 0, run.output
    assert "| roc_auc[lesion] |" in run.stdout
    assert "error: row 19 missing.nii.gz" in run.stderr
    assert (out / "metrics.json").is_file()
    bad = CliRunner().invoke(app, ["evaluate", str(model_file), str(study), "--out", str(out),
                                   "--split", "tset"])
    assert bad.exit_code == 2 and "did you mean 'test'" in bad.stderr
