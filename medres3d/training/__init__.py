"""Training: configs, the manifest and its datasets, the trainer, checkpoints, torchrun, metrics, plots.

Names are imported lazily (as in :mod:`medres3d`), so ``import medres3d.training`` stays light.

Example:
    >>> from medres3d.training import Trainer, load_config
    >>> result = Trainer(load_config("sample_configs/tiny.yaml")).fit()   # doctest: +SKIP
"""

from __future__ import annotations

from medres3d._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Trainer": "medres3d.training.trainer",
    "TrainResult": "medres3d.training.trainer",
    "TrainConfig": "medres3d.training.config",
    "load_config": "medres3d.training.config",
    "read_manifest": "medres3d.training.manifest",
    "ManifestRow": "medres3d.training.manifest",
    "evaluate": "medres3d.training.evaluate",
    "EvaluationResult": "medres3d.training.evaluate",
    "cross_validate": "medres3d.training.cv",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
