"""The ResNet3D builder (MATLAB ``resnet3dLayers`` parity), its input normalization and ``analyze()``.

Names are imported lazily (as in :mod:`medres3d`), so ``import medres3d.models`` loads no torch.

Example:
    >>> from medres3d.models import resnet3d, analyze
    >>> analyze(resnet3d((224, 224, 64, 3), 10)).name   # doctest: +SKIP
    'ResNet-50'
"""

from __future__ import annotations

from medres3d._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "resnet3d": "medres3d.models.resnet3d",
    "ResNet3D": "medres3d.models.resnet3d",
    "ResNet3DConfig": "medres3d.models.options",
    "BasicBlock": "medres3d.models.blocks",
    "BottleneckBlock": "medres3d.models.blocks",
    "InputNormalization": "medres3d.models.normalization",
    "fit_normalization": "medres3d.models.normalization",
    "analyze": "medres3d.models.analysis",
    "NetworkAnalysis": "medres3d.models.analysis",
    "LayerInfo": "medres3d.models.analysis",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
