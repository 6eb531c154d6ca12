"""Cross-validation: grouped folds, out-of-fold predictions, the summary, resume after a kill mid-fold."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.fixture(scope="module")
def grouped_manifest(lesion_dataset):
    """The 32 lesion phantoms, two scans per patient, without a split column (CV folds everything)."""
    lines = lesion_dataset.read_text().splitlines()[1:]
    rows = [line.split(",")[:2] for line in lines if line]
    path = lesion_dataset.parent / "grouped.csv"
    path.write_text("path,label,group\n" + "".join(f"{p},{label},p{i // 2}\n"
                                                  for i, (p, label) in enumerate(rows)))
    return path


def _weights_hash(model_path):
    from medres3d.modelfile import read_model

    return read_model(model_path).training["weights_sha256"]


def _oof(run_dir):
    with open(run_dir / "oof_predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cv_run(grouped_manifest, make_config, tmp_path_factory):
    from medres3d.training.cv import cross_validate

    out = tmp_path_factory.mktemp("cv") / "run"
    return cross_validate(make_config(grouped_manifest, out, epochs=2), folds=3, verbose=False)


def test_folds_oof_predictions_and_summary(cv_run):
    run = cv_run.run_dir
    assert [f.model_path for f in cv_run.folds] == [run / f"fold_{i}" / "model.safetensors"
                                                    for i in (1, 2, 3)]
    assert all(f.model_path.is_file() and f.trained for f in cv_run.folds)
    rows = _oof(run)
    assert sorted(int(r["row"]) for r in rows) == list(range(2, 34))   # every row out of fold exactly once
    fold_of = {}
    for r in rows:
        assert fold_of.setdefault(r["group"], r["fold"]) == r["fold"]   # a patient in one fold only
    assert {f.num_train + f.num_val for f in cv_run.folds} == {32}
    # the summary against scikit-learn on the out-of-fold CSV
    accuracies = []
    for f in cv_run.folds:
        part = [r for r in rows if r["fold"] == str(f.fold)]
        y = [r["label"] for r in part]
        accuracies.append(sklearn_metrics.accuracy_score(y, [r["predicted"] for r in part]))
        assert f.metrics["accuracy"] == pytest.approx(accuracies[-1])
    summary = cv_run.summary["accuracy"]
    assert summary["folds"] == pytest.approx(accuracies)
    assert summary["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["sd"] == pytest.approx(np.std(accuracies, ddof=1))
    lesion = np.array([r["label"] == "lesion" for r in rows])
    p_lesion = np.array([float(r["p_lesion"]) for r in rows])
    assert cv_run.pooled["roc_auc_macro"].value == pytest.approx(
        sklearn_metrics.roc_auc_score(lesion, p_lesion), abs=1e-5)
    saved = json.loads((run / "cv_summary.json").read_text())
    assert saved["summary"]["accuracy"]["mean"] == pytest.approx(summary["mean"])
    assert "| accuracy |" in (run / "cv_summary.md").read_text()
    assert (run / "roc_folds.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_after_a_kill_mid_fold_gives_the_same_folds(cv_run, grouped_manifest, make_config, tmp_path,
                                                           monkeypatch):
    from medres3d.training import cv

    original = cv.Trainer.fit

    def killed_in_fold_2(self, until_epoch=None):
        if self.config.output_dir.name == "fold_2":
            original(self, until_epoch=1)   # one epoch and its checkpoint, then the "kill"
            raise KeyboardInterrupt
        return original(self, until_epoch)

    config = make_config(grouped_manifest, tmp_path / "run", epochs=2)
    monkeypatch.setattr(cv.Trainer, "fit", killed_in_fold_2)
    with pytest.raises(KeyboardInterrupt):
        cv.cross_validate(config, folds=3, verbose=False)
    monkeypatch.setattr(cv.Trainer, "fit", original)
    fold_1 = tmp_path / "run" / "fold_1" / "model.safetensors"
    assert fold_1.is_file() and not (tmp_path / "run" / "fold_2" / "model.safetensors").exists()
    assert (tmp_path / "run" / "fold_2" / "checkpoint.pt").is_file()
    stamp = fold_1.stat().st_mtime_ns

    resumed = cv.cross_validate(config, folds=3, resume=True, verbose=False)
    assert [f.trained for f in resumed.folds] == [False, True, True]
    assert fold_1.stat().st_mtime_ns == stamp   # not trained again
    # the resumed fold continued from its checkpoint: the same weights as the uninterrupted run
    for done, again in zip(cv_run.folds, resumed.folds, strict=True):
        assert _weights_hash(again.model_path) == _weights_hash(done.model_path)
    assert resumed.summary == cv_run.summary


def test_cli_folds(grouped_manifest, make_config, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from medres3d.cli import app

    config = make_config(grouped_manifest, tmp_path / "run", epochs=1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    run = CliRunner().invoke(app, ["train", str(path), "--folds", "2", "--no-progress"])
    assert run.exit_code == 0, run.output
    assert "2-fold cross-validation" in run.stdout and "| roc_auc_macro |" in run.stdout
    assert (tmp_path / "run" / "fold_2" / "model.safetensors").is_file()
    too_many = CliRunner().invoke(app, ["train", str(path), "--folds", "40", "--no-progress"])
    assert too_many.exit_code == 2 and "40 folds need at least 40 groups (patients); the manifest has 16" in (
        too_many.stderr)
