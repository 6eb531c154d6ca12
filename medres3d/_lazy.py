"""Lazy package exports: a package's public names are imported only when first used.

``medres3d``, ``medres3d.io`` and ``medres3d.inference`` use this so that importing them does
not pull in torch, MONAI or SimpleITK before a name that needs them is touched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's module-level ``__getattr__`` and ``__dir__`` (PEP 562).

    Args:
        namespace: the package's ``globals()``; it names the package in error messages, caches
            each name once imported (so ``__getattr__`` runs once per name) and holds ``__all__``,
            which ``__dir__`` returns.
        exports: public name -> module that defines it.

    Example:
        >>> ns = {"__name__": "pkg", "__all__": ["pi"]}
        >>> __getattr__, __dir__ = lazy_exports(ns, {"pi": "math"})
        >>> round(__getattr__("pi"), 2), "pi" in ns, __dir__()
        (3.14, True, ['pi'])
        >>> __getattr__("tau")
        Traceback (most recent call last):
        AttributeError: module 'pkg' has no attribute 'tau'
    """

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return namespace["__all__"]

    return __getattr__, __dir__
