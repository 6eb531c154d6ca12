"""Old import paths of modules that moved in the 0.2 layout keep working, with a DeprecationWarning.

A meta path finder answers an import of an old name with the module at its new place (the same
module object, so ``isinstance`` checks and monkeypatching see one module). Installed by
``import medres3d``; the old paths go away in 0.3.

Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     from medres3d.metrics import roc_auc_ovr
    >>> roc_auc_ovr.__module__, caught[0].category.__name__
    ('medres3d.training.metrics', 'DeprecationWarning')
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

# old module path -> new module path (docs/architecture.md)
MOVED: dict[str, str] = {
    "medres3d.config": "medres3d.training.config",
    "medres3d.checkpoint": "medres3d.training.checkpoint",
    "medres3d.distributed": "medres3d.training.distributed",
    "medres3d.metrics": "medres3d.training.metrics",
    "medres3d.plots": "medres3d.training.plots",
    "medres3d.explain": "medres3d.inference.gradcam",
    "medres3d.io.dicom_rawheader": "medres3d.io.dicom.rawheader",
    "medres3d.io.dicom_header": "medres3d.io.dicom.header",
    "medres3d.io.dicom_pixels": "medres3d.io.dicom.pixels",
    "medres3d.io.dicom_geometry": "medres3d.io.dicom.geometry",
    "medres3d.io.dicom_series": "medres3d.io.dicom.series",
    "medres3d.io.dicom_multiframe": "medres3d.io.dicom.multiframe",
    "medres3d.io.dicom_scan": "medres3d.io.dicom.scan",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new path."""

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there ({spec.name} will be removed in "
                      "medres3d 0.3)", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module at the new path is already imported."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
