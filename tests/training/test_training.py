"""End-to-end training on synthetic phantoms: learning, reloading, statistics, resume, bad data."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medres3d.errors import ManifestError
from medres3d.io.readers import load_volume
from medres3d.modelfile import read_model, require_fitted_normalization
from medres3d.training.checkpoint import load_checkpoint
from medres3d.training.config import load_config
from medres3d.training.trainer import Trainer, weights_sha256
from medres3d.transforms import preprocess

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(manifest, split):
    with open(manifest, newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["split"] == split]


@pytest.mark.slow
def test_learns_lesions_from_nifti_and_dicom_and_reloads_identically(lesion_dataset, tmp_path, make_config):
    cfg = make_config(lesion_dataset, tmp_path / "run", epochs=6)
    result = Trainer(cfg, progress=False).fit()

    assert result.completed and result.epochs_run == 6
    assert result.final_metrics["val_accuracy"] >= 0.8  # chance is 0.5 (6 + 6 validation scans)
    run = tmp_path / "run"
    for name in ("training_curves.png", "confusion_matrix.png"):
        assert (run / name).read_bytes()[:8] == PNG_MAGIC
    with open(run / "metrics.csv", newline="") as handle:
        logged = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in logged] == list(range(1, 7))
    assert float(logged[-1]["val_loss"]) == pytest.approx(result.history[-1]["val_loss"])
    resolved = load_config(run / "config.yaml")
    assert resolved.data.class_names == ["lesion", "normal"] == result.class_names
    assert resolved.model.stack_depth == [1, 1] and resolved.model.input_size == [20, 20, 16, 1]

    # The file alone reproduces the validation predictions through the public io path.
    model = read_model(result.model_path)
    require_fitted_normalization(model.net, result.model_path)
    assert model.training["data_sha256"] and model.training["num_val"] == 12
    assert model.training["weights_sha256"] == weights_sha256(model.net) == result.weights_sha256
    probabilities, labels = [], []
    for row in _rows(lesion_dataset, "val"):
        x = preprocess(load_volume(lesion_dataset.parent / row["path"]), model.preprocessing)
        with torch.no_grad():
            probabilities.append(torch.softmax(model.net(x.as_tensor()[None]), 1)[0].numpy())
        labels.append(model.class_names.index(row["label"]))
    probabilities = np.array(probabilities)
    accuracy = float((probabilities.argmax(1) == np.array(labels)).mean())
    loss = float(-np.log(probabilities[np.arange(len(labels)), labels]).mean())
    assert accuracy == result.final_metrics["val_accuracy"]
    assert loss == pytest.approx(result.final_metrics["val_loss"], rel=1e-5)


def _padded(image: np.ndarray, size, value: float) -> np.ndarray:
    """Symmetric constant padding to at least ``size`` (MONAI: diff // 2 before, the rest after)."""
    widths = [(0, 0)] + [((max(s - n, 0)) // 2, max(s - n, 0) - (max(s - n, 0)) // 2)
                         for n, s in zip(image.shape[1:], size, strict=True)]
    return np.pad(image, widths, constant_values=value)


def test_normalization_statistics_match_numpy(small_dataset, tmp_path, make_config):
    # Validation accuracy cannot improve by more than 0.5: early stopping ends the run at epoch 2.
    stopping = {"patience": 1, "metric": "val_accuracy", "min_delta": 0.5}
    cfg = make_config(small_dataset, tmp_path / "run", epochs=5, patches=True, early_stopping=stopping,
                      population_bn_stats=False)
    result = Trainer(cfg, progress=False).fit()
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1
    best = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["best_state"]
    saved = load_file(result.model_path)
    assert all(torch.equal(saved[name], best[name]) for name in saved)  # output_network: best
    again = Trainer(cfg, resume=True, progress=False).fit()  # a finished run is not trained further
    assert again.stopped_early and again.epochs_run == 2 and again.weights_sha256 == result.weights_sha256
    model = read_model(result.model_path)
    spec = model.preprocessing
    volumes = [_padded(preprocess(load_volume(small_dataset.parent / r["path"]), spec).numpy(),
                       (20, 20, 16), spec.background_value) for r in _rows(small_dataset, "train")]
    assert any(v.shape[1:] != (20, 20, 16) for v in volumes)  # padding and larger volumes both occur
    voxels = np.concatenate([v.reshape(-1) for v in volumes]).astype(np.float64)
    stats = model.net.input
    for name, reference in (("mean", voxels.mean()), ("std", voxels.std()), ("min", voxels.min()),
                            ("max", voxels.max())):
        value = getattr(stats, name).item()
        assert abs(value - reference) <= np.spacing(np.float32(reference)), name  # float32 rounding


def test_resume_continues_exactly(small_dataset, tmp_path, make_config):
    # every random and stateful part on: patches, augmentation, SGD momentum, step schedule, bf16
    augment = {"flip": {"prob": 0.5}, "noise": {"prob": 0.5, "std": 0.05}, "shift": {"prob": 0.5},
               "affine": {"prob": 0.5}}
    options = dict(epochs=2, patches=True, augmentation=augment, optimizer="sgd", schedule="step",
                   step_size=1, amp="bf16", grad_clip=1.0, class_weights="auto")
    straight = Trainer(make_config(small_dataset, tmp_path / "a", **options), progress=False).fit()

    first = Trainer(make_config(small_dataset, tmp_path / "b", **options), progress=False).fit(until_epoch=1)
    assert not first.completed and first.model_path is None
    assert not (tmp_path / "b" / "model.safetensors").exists()
    resumed = Trainer(make_config(small_dataset, tmp_path / "b", **options), resume=True,
                      progress=False).fit()

    a, b = load_file(straight.model_path), load_file(resumed.model_path)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(straight.history) == drop(resumed.history)


def test_population_batchnorm_statistics(small_dataset, tmp_path, make_config):
    cfg = make_config(small_dataset, tmp_path / "run", epochs=1, batch_size=3, population_bn_stats=True,
                      data={"val_fraction": 0.0})
    # without a split column every row trains: take the manifest's rows in order, as the pass does
    manifest = tmp_path / "all.csv"
    manifest.write_text("path,label\n" + "".join(f"{small_dataset.parent / r['path']},{r['label']}\n"
                                                 for r in _rows(small_dataset, "train")))
    cfg.data.manifest = manifest
    model = read_model(Trainer(cfg, progress=False).fit().model_path)
    net, spec = model.net, model.preprocessing
    images = torch.stack([preprocess(load_volume(small_dataset.parent / r["path"]), spec).as_tensor()
                          for r in _rows(small_dataset, "train")])
    means, variances = [], []
    with torch.no_grad():
        for batch in images.split(3):
            out = net.conv1(net.input(batch)).double()
            means.append(out.mean(dim=(0, 2, 3, 4)))
            variances.append(out.var(dim=(0, 2, 3, 4), unbiased=True))
    # momentum=None: the running statistics are the plain averages over the batches of the pass
    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.bn1.running_mean.double(), torch.stack(means).mean(0), **close)
    torch.testing.assert_close(net.bn1.running_var.double(), torch.stack(variances).mean(0), **close)
    assert int(net.bn1.num_batches_tracked) == 2


def test_bad_rows_are_reported_together_before_training(small_dataset, tmp_path, make_config):
    root = small_dataset.parent
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (root / "not_dicom").mkdir(exist_ok=True)
    (root / "not_dicom" / "notes.txt").write_text("no images here")
    good = _rows(small_dataset, "train")
    lines = ["path,label,split"] + [f"{r['path']},{r['label']},train" for r in good[:3]]
    lines += ["broken.nii.gz,lesion,train", f"{good[3]['path']},{good[3]['label']},val",
              "not_dicom,normal,val"]
    manifest = root / "bad.csv"
    manifest.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    with pytest.raises(ManifestError) as info:
        Trainer(make_config(manifest, run), progress=False).fit()
    message = str(info.value)
    assert message.startswith(str(manifest)) and "2 problem(s)" in message
    assert "row 5: " in message and "broken.nii.gz" in message and "row 7: " in message
    assert not (run / "metrics.csv").exists() and not (run / "checkpoint.pt").exists()

    manifest.write_text("\n".join([*lines[:3], "missing.nii.gz,lesion,train", "x.nii.gz,tumour,val"]) + "\n")
    with pytest.raises(ManifestError, match=r"row 5: label 'tumour' is not in the class list"):
        Trainer(make_config(manifest, run, data={"class_names": ["lesion", "normal"]}), progress=False).fit()
    with pytest.raises(ManifestError, match=r"2 problem\(s\): row 4: 'missing.nii.gz' does not exist"):
        Trainer(make_config(manifest, run), progress=False).fit()


@pytest.mark.parametrize("cache", ["disk", "memory"])
def test_cache_decodes_each_scan_once(small_dataset, tmp_path, make_config, monkeypatch, cache):
    import medres3d.io.readers as readers

    calls = []
    real = readers.load_volume

    def counting(path, **options):
        calls.append(str(path))
        return real(path, **options)

    monkeypatch.setattr(readers, "load_volume", counting)
    cfg = make_config(small_dataset, tmp_path / "run", epochs=2, data={"cache": cache})
    Trainer(cfg, progress=False).fit()
    assert len(calls) == len(set(calls)) == 8  # 6 train + 2 val scans, over 2 epochs and 3 validations
    if cache == "disk":
        assert len(list((tmp_path / "run" / "cache").rglob("*.pt"))) == 8


def _with_typo(small_dataset, tmp_path):
    """The small phantoms' manifest with one training 'normal' row labelled 'norml'."""
    with open(small_dataset, newline="") as handle:
        rows = list(csv.DictReader(handle))
    typo = next(i for i, r in enumerate(rows) if r["label"] == "normal" and r["split"] == "train")
    rows[typo]["label"] = "norml"
    manifest = tmp_path / "typo.csv"
    manifest.write_text("path,label,split\n" + "".join(
        f"{small_dataset.parent / r['path']},{r['label']},{r['split']}\n" for r in rows))
    return manifest, typo + 2  # spreadsheet row number


def test_a_typo_label_is_refused_after_showing_the_rows_per_class(small_dataset, tmp_path, make_config,
                                                                   capsys):
    manifest, row = _with_typo(small_dataset, tmp_path)
    run = tmp_path / "run"
    with pytest.raises(ManifestError) as info:
        Trainer(make_config(manifest, run), progress=False).fit()
    message = str(info.value)
    assert message.startswith(f"{manifest}: ")
    assert f"label 'norml' (1 row: row {row}) looks like a typo of 'normal' (3 rows)" in message
    assert "data.class_names" in message
    table = capsys.readouterr().err
    assert f"rows per class (train / val) of {manifest}:" in table
    for line in (r"^  norml +1 / 0$", r"^  normal +2 / 1$", r"^  lesion +3 / 1$"):
        assert re.search(line, table, re.MULTILINE), table
    assert not run.exists() or not any(run.iterdir())  # refused before anything was written


def test_listed_class_names_accept_a_rare_label_and_epochs_log_without_a_terminal(
        small_dataset, tmp_path, make_config, capsys):
    manifest, _ = _with_typo(small_dataset, tmp_path)
    names = ["lesion", "normal", "norml"]
    cfg = make_config(manifest, tmp_path / "run", epochs=2, data={"class_names": names})
    result = Trainer(cfg, progress=True).fit(until_epoch=1)  # progress on, but stderr is no terminal here
    assert result.class_names == names
    assert result.class_counts == {"train": {"lesion": 3, "normal": 2, "norml": 1},
                                   "val": {"lesion": 1, "normal": 1, "norml": 0}}
    assert result.best_metrics == {k: result.history[0][k] for k in
                                   ("val_loss", "val_accuracy", "val_balanced_accuracy", "val_auc")}
    err = capsys.readouterr().err
    assert re.search(r"^epoch 1/2  loss \d\.\d{4}  val_loss .*  lr 0\.01  \(\d+\.\d s\)$", err,
                     re.MULTILINE), err


def test_a_progress_bar_only_on_a_terminal(monkeypatch):
    import io

    from rich.progress import Progress

    from medres3d._progress import progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_bar(True).__enter__() is None
    monkeypatch.setattr("sys.stderr", Terminal())
    assert isinstance(progress_bar(True), Progress) and progress_bar(False).__enter__() is None
