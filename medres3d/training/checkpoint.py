"""Resume checkpoints: everything needed to continue a training run where it stopped.

One file, ``checkpoint.pt`` in the run folder, rewritten atomically after every epoch: model,
optimizer, scheduler and AMP-scaler states, the best weights so far, the metrics history, the
early-stopping counter and the RNG states (torch, CUDA, numpy, Python). It is written with
``torch.save`` and read back with ``torch.load(weights_only=True)``, which unpickles only
tensors and plain containers: a hostile checkpoint cannot run code. The numpy RNG state is
stored as a tensor for that reason.

Example:
    >>> state = load_checkpoint("runs/tiny/checkpoint.pt")      # doctest: +SKIP
    >>> state["epoch"], state["best_metric"]                     # doctest: +SKIP
    (3, 0.41)
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medres3d._atomic import write_atomically
from medres3d.errors import ModelFileError

FORMAT = "medres3d-checkpoint/1"


def rng_state() -> dict[str, Any]:
    """The states of every random generator training draws from."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors and plain containers only) atomically to ``path``.

    Example:
        >>> save_checkpoint("run/checkpoint.pt", {"epoch": 1, "model": net.state_dict()})  # doctest: +SKIP
    """
    payload = {"format": FORMAT, **state}
    return write_atomically(Path(path), lambda tmp: torch.save(payload, tmp), "checkpoint")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything that needs pickle code.

    Raises:
        ModelFileError: missing, damaged, not a checkpoint, or holding objects other than
            tensors and plain containers.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ModelFileError(path, "checkpoint not found") from err
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise ModelFileError(path, f"not a readable medres3d checkpoint (only tensors and plain data "
                                   f"are accepted): {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ModelFileError(path, f"not a medres3d checkpoint: format {found!r}, expected {FORMAT!r}")
    return state
