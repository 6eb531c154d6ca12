"""Experiment tracking: each epoch's metrics as TensorBoard events (``logging: tensorboard``).

``metrics.csv`` is always written (it is the run's history and what a resume reads back); with
``logging: tensorboard`` rank 0 also writes every numeric column of each epoch's row (``lr``,
``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``, ``val_balanced_accuracy``,
``val_auc``, ``seconds``) as a scalar at step ``epoch`` into ``output_dir/tensorboard/``, with
:class:`torch.utils.tensorboard.SummaryWriter`. Empty values (no validation rows, an undefined AUC)
are left out. A resumed run purges the events after its checkpoint's epoch, so an interrupted
epoch is not shown twice. View with ``tensorboard --logdir runs/``.

Example:
    >>> writer = open_tensorboard("runs/tiny")                                  # doctest: +SKIP
    >>> log_epoch(writer, {"epoch": 1, "train_loss": 0.7, "val_auc": None})      # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from medres3d.errors import ConfigError

FOLDER = "tensorboard"
INSTALL_HINT = "pip install 'medres3d[tensorboard]'"


def require_tensorboard() -> Any:
    """The ``SummaryWriter`` class; checked when a run starts, not after its first epoch.

    Raises:
        ConfigError: the tensorboard package is not installed (the message names the extra).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConfigError(f"logging: 'tensorboard' needs the tensorboard package ({err}): {INSTALL_HINT}, "
                          "or set logging: csv") from err
    return SummaryWriter


def open_tensorboard(run_dir: str | os.PathLike[str], purge_step: int | None = None) -> Any:
    """A ``SummaryWriter`` on ``run_dir/tensorboard``; ``purge_step``: drop older events from this step on."""
    writer_class = require_tensorboard()
    return writer_class(log_dir=str(Path(run_dir) / FOLDER), purge_step=purge_step)


def log_epoch(writer: Any, row: dict[str, Any]) -> None:
    """Write one epoch's row (a ``metrics.csv`` row) as scalars at step ``row["epoch"]`` and flush."""
    step = int(row["epoch"])
    for name, value in row.items():
        if name == "epoch" or value is None or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(name, float(value), step)
    writer.flush()
