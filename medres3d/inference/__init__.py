"""Inference: sliding-window classification, the Classifier, evidence maps and batch runs.

Names are imported lazily (as in :mod:`medres3d`), so ``import medres3d.inference`` stays light.

Example:
    >>> from medres3d.inference import Classifier
    >>> clf = Classifier.load("model.safetensors")   # doctest: +SKIP
"""

from __future__ import annotations

from medres3d._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "sliding_window_classify": "medres3d.inference.sliding_window",
    "SlidingWindowResult": "medres3d.inference.sliding_window",
    "aggregate_windows": "medres3d.inference.aggregation",
    "resolve_negative_class": "medres3d.inference.aggregation",
    "WindowGrid": "medres3d.inference.windows",
    "Classifier": "medres3d.inference.classifier",
    "Prediction": "medres3d.inference.classifier",
    "EvidenceMap": "medres3d.inference.evidence",
    "evidence_map": "medres3d.inference.evidence",
    "discover": "medres3d.inference.batch",
    "run_batch": "medres3d.inference.batch",
    "read_results": "medres3d.inference.batch_output",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
