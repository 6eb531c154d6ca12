"""medres3d: 3D residual networks for CT and MRI classification.

The public names are imported lazily, so ``import medres3d`` (and ``medres3d --help``) stays
fast: torch, MONAI and SimpleITK load only when a name that needs them is first used.

Example:
    >>> import medres3d as mr
    >>> net = mr.resnet3d((64, 64, 32), num_classes=2)   # doctest: +SKIP
    >>> mr.analyze(net).name                              # doctest: +SKIP
    'ResNet-50'
"""

from __future__ import annotations

from medres3d._lazy import lazy_exports
from medres3d._moved import install as _install_moved_paths

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ResNet3D": "medres3d.models.resnet3d",
    "ResNet3DConfig": "medres3d.models.resnet3d",
    "resnet3d": "medres3d.models.resnet3d",
    "InputNormalization": "medres3d.models.normalization",
    "fit_normalization": "medres3d.models.normalization",
    "analyze": "medres3d.models.analysis",
    "NetworkAnalysis": "medres3d.models.analysis",
    "LayerInfo": "medres3d.models.analysis",
    "Volume": "medres3d.io.volume",
    "load_volume": "medres3d.io.readers",
    "find_dicom_series": "medres3d.io.dicom",
    "scan_dicom_tree": "medres3d.io.dicom",
    "DicomSeries": "medres3d.io.dicom",
    "MedRes3DReader": "medres3d.io.monai_reader",
    "PreprocessingSpec": "medres3d.transforms",
    "preprocess": "medres3d.transforms",
    "build_transforms": "medres3d.transforms",
    "save_model": "medres3d.modelfile",
    "load_model": "medres3d.modelfile",
    "read_model": "medres3d.modelfile",
    "ModelFile": "medres3d.modelfile",
    "Trainer": "medres3d.training.trainer",
    "TrainConfig": "medres3d.training.config",
    "load_config": "medres3d.training.config",
    "sliding_window_classify": "medres3d.inference.sliding_window",
    "Classifier": "medres3d.inference.classifier",
    "Prediction": "medres3d.inference.classifier",
    "run_batch": "medres3d.inference.batch",
    "evaluate": "medres3d.training.evaluate",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
_install_moved_paths()  # old module paths of the 0.1 layout still import, with a DeprecationWarning
