"""TensorBoard logging (logging: tensorboard): the event file holds every epoch's metrics."""

from __future__ import annotations

import sys

import pytest

from medres3d.errors import ConfigError


def test_tensorboard_events_hold_the_logged_scalars(small_dataset, make_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from medres3d.training import Trainer

    config = make_config(small_dataset, tmp_path, epochs=2)
    config.logging = "tensorboard"
    result = Trainer(config, verbose=False, progress=False).fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert (tmp_path / "metrics.csv").exists()  # the CSV stays
    for column in ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"):
        scalars = events.Scalars(column)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([row[column] for row in result.history], rel=1e-6)


def test_a_missing_tensorboard_names_the_extra(small_dataset, make_config, tmp_path, monkeypatch):
    from medres3d.training import Trainer

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = make_config(small_dataset, tmp_path, epochs=1)
    config.logging = "tensorboard"
    with pytest.raises(ConfigError, match=r"medres3d\[tensorboard\]"):
        Trainer(config, verbose=False, progress=False).fit()
    assert not (tmp_path / "metrics.csv").exists()  # refused before any epoch
