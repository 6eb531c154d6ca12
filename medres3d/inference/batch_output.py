"""Batch results files: CSV or JSON lines, one row per scan, appended row by row, resumable.

Each row is encoded to one complete line and handed to the operating system in a single
``os.write`` on an ``O_APPEND`` descriptor, so the file is valid at every instant (another process
reading it, or a run killed with SIGKILL, sees whole rows only); ``fsync=True`` also forces each row
to the disk (protects against power loss; costs a disk flush per row). Re-opening with
``resume=True`` checks the columns, drops a half-written last line (possible only after an OS
crash or a full disk) and reports which row ids are already there. The format is described in
``docs/batch_output.md``.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "results.csv")
    >>> with ResultWriter(path, result_columns(["normal", "lesion"])) as out:
    ...     out.write({"id": "a.nii.gz", "status": "ok", "label": "lesion", "p_lesion": 0.9})
    >>> [row["label"] for row in read_results(path)]
    ['lesion']
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medres3d._checks import check_choice
from medres3d.errors import ConfigError, OutputWriteError

IDENTIFIER_COLUMNS = (
    "id",
    "path",
    "series_uid",
    "study_uid",
    "patient_id",
    "modality",
    "description",
    "num_slices",
)
FORMATS = ("csv", "jsonl")
FREE_TEXT_COLUMNS = ("description", "error", "warnings")
"""Columns whose line breaks become spaces: every row stays one line (an exception's message may
span several, e.g. SimpleITK's), so the file can be repaired, resumed and filtered line by line."""


def result_columns(class_names: Sequence[str]) -> list[str]:
    """The columns of a results file for a model with these classes, in order.

    Example:
        >>> result_columns(["a", "b"])[-6:]
        ['label', 'p_a', 'p_b', 'num_windows', 'seconds', 'warnings']
    """
    probabilities = [f"p_{name}" for name in class_names]
    return [
        *IDENTIFIER_COLUMNS,
        "status",
        "error",
        "label",
        *probabilities,
        "num_windows",
        "seconds",
        "warnings",
    ]


def format_for(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The file format: ``fmt`` when given, else ``jsonl`` for ``.jsonl``/``.ndjson`` names, else ``csv``.

    Example:
        >>> format_for("out.jsonl"), format_for("out.txt", "csv")
        ('jsonl', 'csv')
    """
    if fmt is not None:
        check_choice("format", fmt, FORMATS)
        return fmt
    return "jsonl" if Path(path).suffix.lower() in (".jsonl", ".ndjson") else "csv"


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


class ResultWriter:
    """Append result rows to a CSV or JSONL file, one complete line per ``write``.

    Args:
        path: the output file.
        columns: the column names (see :func:`result_columns`); extra keys in a row are refused.
        fmt: ``"csv"`` | ``"jsonl"`` (default from the file name, see :func:`format_for`).
        resume: keep an existing file's rows (columns must match) instead of replacing the file.
        fsync: force every row to the disk before ``write`` returns.

    Attributes:
        done: id -> status of the rows already in the file when it was opened with ``resume=True``.

    Raises:
        OutputWriteError: the file cannot be created, read back or written (rows already written
            stay intact).
        ConfigError: resuming a file whose columns differ (e.g. written for another model).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        columns: Sequence[str],
        fmt: str | None = None,
        *,
        resume: bool = False,
        fsync: bool = False,
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.format = format_for(path, fmt)
        self.fsync = fsync
        self.done: dict[str, str] = {}
        exists = resume and self.path.exists() and self.path.stat().st_size > 0
        if exists:
            rows = _repair_and_read(self.path, self.format, self.columns)
            self.done = {row["id"]: row["status"] for row in rows}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if exists else os.O_TRUNC)
            self._fd: int | None = os.open(self.path, flags, 0o644)
        except OSError as err:
            raise OutputWriteError(self.path, f"cannot open the results file for writing: {err}") from err
        if not exists and self.format == "csv":
            self._append(self._encode_csv(self.columns))

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _encode_csv(self, values: Sequence[Any]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        return buffer.getvalue().encode("utf-8")

    def encode(self, row: dict[str, Any]) -> bytes:
        """One row as one complete line (missing columns are empty)."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ConfigError(f"unknown result column(s) {sorted(unknown)}; columns are {self.columns}")
        values = [_cell(row.get(name)) for name in self.columns]
        values = [
            " ".join(value.splitlines()) if name in FREE_TEXT_COLUMNS and isinstance(value, str) else value
            for name, value in zip(self.columns, values, strict=True)
        ]
        if self.format == "csv":
            return self._encode_csv(values)
        record = {
            name: (None if value == "" else value) for name, value in zip(self.columns, values, strict=True)
        }
        return (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (a dict keyed by column name) as one line, flushed to the OS."""
        self._append(self.encode(row))

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            raise OutputWriteError(self.path, "the results file is closed")
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a short write: the disk is full; drop the partial line
                os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
                raise OSError(f"short write ({written} of {len(data)} bytes): no space left on device?")
            if self.fsync:
                os.fsync(self._fd)
        except OSError as err:
            raise OutputWriteError(self.path, f"cannot write a result row: {err}") from err

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _repair_and_read(path: Path, fmt: str, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Drop a half-written last line, check the header, and return the complete rows."""
    try:
        with open(path, "rb+") as handle:
            data = handle.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # bytes after the last newline: a row cut short
                handle.truncate(end)
    except OSError as err:
        raise OutputWriteError(path, f"cannot read the results file to resume it: {err}") from err
    return _parse(path, data[:end].decode("utf-8"), fmt, columns)


def _parse(path: Path, text: str, fmt: str, columns: Sequence[str]) -> list[dict[str, Any]]:
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None:
            return []
        if header != list(columns):
            raise ConfigError(
                f"{path}: cannot resume: its columns {header} differ from this run's {list(columns)} "
                "(another model or version?); choose another --out or drop --resume"
            )
        return [dict(zip(header, values, strict=True)) for values in reader if values]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: cannot resume: line {number} is not JSON ({err})") from err
        if list(record) != list(columns):
            raise ConfigError(
                f"{path}: cannot resume: line {number} has keys {list(record)}, "
                f"this run writes {list(columns)}"
            )
        rows.append(record)
    return rows


def read_results(path: str | os.PathLike[str], fmt: str | None = None) -> list[dict[str, Any]]:
    """The rows of a results file (CSV values are strings; JSONL values keep their JSON types).

    A half-written last line, if any, is ignored (not repaired).

    Example:
        >>> rows = read_results("results.csv")            # doctest: +SKIP
        >>> sum(row["status"] == "ok" for row in rows)    # doctest: +SKIP
    """
    path = Path(path)
    fmt = format_for(path, fmt)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise OutputWriteError(path, f"cannot read the results file: {err}") from err
    text = data[: data.rfind(b"\n") + 1].decode("utf-8")
    if fmt == "csv":
        return [dict(row) for row in csv.DictReader(io.StringIO(text))]
    return [json.loads(line) for line in text.splitlines() if line.strip()]
