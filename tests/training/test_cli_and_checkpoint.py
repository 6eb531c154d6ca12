"""The `medres3d train` command's error path, and resume checkpoints that refuse pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medres3d.checkpoint import load_checkpoint, save_checkpoint
from medres3d.cli import app
from medres3d.errors import ModelFileError


def test_train_command_reports_config_errors(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data: {manifest: m.csv}\nmodel: {input_size: [16, 16, 8]}\ntraining: {epocs: 3}\n")
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "training.epocs: unknown key" in result.output and "did you mean 'epochs'" in result.output


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
