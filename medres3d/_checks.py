"""Argument checks shared by every layer: each error names the argument, the value and what is valid.

Example:
    >>> check_choice("aggregate", "mean", ("mean", "max"))
    'mean'
    >>> check_choice("aggregate", "maen", ("mean", "max"))
    Traceback (most recent call last):
    medres3d.errors.ConfigError: aggregate must be one of 'mean', 'max', got 'maen'; did you mean 'mean'?
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from medres3d.errors import ConfigError


def check_choice(name: str, value: Any, valid: Sequence[str]) -> Any:
    """``value`` when it is one of ``valid``, else a ConfigError with the valid values and a guess."""
    if isinstance(value, str) and value in valid:
        return value
    hint = difflib.get_close_matches(str(value).lower(), list(valid), n=1, cutoff=0.6)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(f"{name} must be one of {', '.join(map(repr, valid))}, got {value!r}{extra}")
