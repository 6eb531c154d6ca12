"""The `medres3d train` command (its log lines, its summary, its error path), and resume checkpoints."""

from __future__ import annotations

import csv
import pickle
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medres3d.cli import app
from medres3d.errors import ModelFileError
from medres3d.modelfile import read_model
from medres3d.training.checkpoint import load_checkpoint, save_checkpoint


def test_train_command_reports_config_errors(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data: {manifest: m.csv}\nmodel: {input_size: [16, 16, 8]}\ntraining: {epocs: 3}\n")
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "training.epocs: unknown key" in result.output and "did you mean 'epochs'" in result.output


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory, make_config):
    """``medres3d train --no-progress`` run once on the small phantoms: (CLI result, run folder)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    config = run.parent / "train.yaml"
    config.write_text(make_config(small_dataset, run, epochs=2).to_yaml())
    result = CliRunner().invoke(app, ["train", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    return result, run


def _logged(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_train_logs_one_plain_unwrapped_line_per_epoch(trained):
    result, run = trained
    lines = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    logged = _logged(run)
    assert len(lines) == len(logged) == 2
    for line, row in zip(lines, logged, strict=True):
        value = {k: re.escape(f"{float(v):.4f}") for k, v in row.items()}
        lr = re.escape(f"{float(row['lr']):.3g}")
        expected = (rf"epoch {row['epoch']}/2  loss {value['train_loss']}  val_loss {value['val_loss']}  "
                    rf"val_acc {value['val_accuracy']}  .*  lr {lr}  \(\d+\.\d s\)")
        # the whole line in one piece (a Rich console would have wrapped it at 80 columns)
        assert len(line) > 80 and re.fullmatch(expected, line), line
    assert "\x1b[" not in result.stderr and "━" not in result.stderr  # no bar, no terminal codes


def test_train_prints_rows_per_class_and_split_first(trained, small_dataset):
    result, _ = trained
    with open(small_dataset, newline="") as handle:
        rows = list(csv.DictReader(handle))
    table = result.stderr.split("epoch 1/2")[0]
    assert f"rows per class (train / val) of {small_dataset}:" in table
    for name in ("lesion", "normal"):
        counts = [sum(r["label"] == name and r["split"] == split for r in rows) for split in ("train", "val")]
        assert re.search(rf"^  {name} +{counts[0]} / {counts[1]}$", table, re.MULTILINE), table


def test_train_summary_shows_the_logged_best_epoch_and_the_final_model(trained):
    result, run = trained
    model = read_model(run / "model.safetensors")
    best = model.training["best_epoch"]
    row = _logged(run)[best - 1]
    final = model.training["final_metrics"]
    assert (f"best epoch {best} (logged: val_loss {float(row['val_loss']):.4f}, "
            f"val_accuracy {float(row['val_accuracy']):.4f}") in result.stdout
    # tiny.yaml re-estimates the BatchNorm statistics: the saved model is measured again
    assert (f"final model after BatchNorm re-estimation (weights of epoch {best}): "
            f"val_loss {final['val_loss']:.4f}, val_accuracy {final['val_accuracy']:.4f}") in result.stdout


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_pickled_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "checkpoint.pt"
    torch.save({"format": "medres3d-checkpoint/1", "epoch": _Payload(marker)}, bad)
    with pytest.raises(ModelFileError, match="only tensors and plain data"):
        load_checkpoint(bad)
    assert not marker.exists()
    bad.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(ModelFileError):
        load_checkpoint(bad)
    assert not marker.exists()


def test_checkpoint_round_trip_and_format_check(tmp_path):
    state = {"epoch": 3, "model": {"w": torch.arange(4.0)}, "history": [{"val_auc": None}]}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.pt", state))
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    torch.save({"epoch": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a medres3d checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
