"""Progress bars: Rich on stderr when stderr is a terminal, nothing otherwise (logs get plain lines).

Example:
    >>> with progress_bar(True) as bar:   # under a test runner stderr is no terminal
    ...     bar is None
    True
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any


def progress_bar(enabled: bool, *, eta: bool = False, transient: bool = False) -> Any:
    """A Rich ``Progress`` on stderr (or a ``nullcontext(None)``): description, bar, count, time.

    Args:
        enabled: False (``--no-progress``, or not rank 0) gives no bar.
        eta: add the estimated time remaining.
        transient: remove the bar when it finishes.
    """
    if not (enabled and sys.stderr.isatty()):
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn()]  # fmt: skip
    if eta:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, transient=transient, console=Console(stderr=True))
