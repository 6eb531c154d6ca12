"""The training manifest: the CSV of scans and labels, its validation, and the splits.

A manifest is a CSV with a header and columns ``path,label[,split][,group]``. ``path`` is a NIfTI
file, another format :func:`medres3d.io.load_volume` reads, or a DICOM series folder, relative to
the manifest's folder. A multi-sequence manifest has one column per channel instead of ``path``
(``path_t1,path_t2,path_flair,label``: the columns the config's ``data.channels`` names, in
channel order); each row is then one scan of several files (:attr:`ManifestRow.scan`).
``split`` is ``train``, ``val`` or ``test`` (test rows are ignored by training); without the
column a stratified fraction of rows becomes the validation split.
``group`` names the patient (or any unit whose scans are not independent): a group never has
scans on both sides of a split or a cross-validation fold (:func:`split_rows`, :func:`group_folds`),
and a split column that puts one group in two splits is refused.

Row numbers in messages count the header as row 1, as a spreadsheet shows them.

Every row is checked before training starts (:func:`read_manifest` for the file's structure and
labels, :func:`check_files` for missing files, and the trainer's first pass for volumes that fail
to load), and all problems are reported together in one :class:`~medres3d.errors.ManifestError`.

The MONAI datasets built from the rows are in :mod:`medres3d.training.datasets`.

Example:
    >>> rows = read_manifest("data/manifest.csv")                 # doctest: +SKIP
    >>> names = class_names_of(rows)                              # doctest: +SKIP
    >>> train, val = split_rows(rows, val_fraction=0.2, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medres3d.errors import ConfigError, ManifestError

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "split", "group")


@dataclass(frozen=True)
class ManifestRow:
    """One scan of the manifest.

    Attributes:
        row: row number in the CSV (header = row 1).
        path: absolute path of the file or folder.
        label: class name as written.
        split: "train", "val", "test", or None when the manifest has no split column.
        written_path: the path as written in the manifest (used for the data hash).
        group: the patient (group) the scan belongs to, or None without a group column.
        channels: a multi-sequence manifest's absolute paths, one per channel column in channel
            order (``path`` is then the first); empty for a single-``path`` manifest.
    """

    row: int
    path: Path
    label: str
    split: str | None
    written_path: str
    group: str | None = None
    channels: tuple[Path, ...] = ()

    @property
    def scan(self) -> Path | tuple[Path, ...]:
        """What a loader gets: the path, or the channel paths of a multi-sequence row.

        Example:
            >>> ManifestRow(2, Path("/d/a.nii"), "x", None, "a.nii").scan
            PosixPath('/d/a.nii')
        """
        return self.channels or self.path


def read_manifest(manifest: str | os.PathLike[str], channels: Sequence[str] | None = None
                  ) -> list[ManifestRow]:
    """Parse a manifest CSV; structural problems of every row are reported together.

    ``channels`` names the columns of a multi-sequence manifest (one file per channel, in
    channel order; matched case-insensitively); the ``path`` column is then not needed. A row's
    ``written_path`` lists its channel paths joined by ``;``.

    Raises:
        ManifestError: missing file, missing columns, empty path (or channel path), label or
            group, unknown split value, a group in two splits.

    Example:
        >>> read_manifest("data/manifest.csv")[0]   # doctest: +SKIP
        ManifestRow(row=2, path=PosixPath('/data/scan001.nii.gz'), label='normal', split='train', ...)
    """
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            written = list(reader.fieldnames or [])
            records = [(n, {_column(k): (v or "").strip() for k, v in rec.items() if k is not None})
                       for n, rec in enumerate(reader, start=2)]
    except FileNotFoundError as err:
        raise ManifestError(manifest, "manifest file not found") from err
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(manifest, f"cannot read the manifest as a UTF-8 CSV: {err}") from err
    channel_columns = None if channels is None else [_column(c) for c in channels]
    columns = _check_columns(manifest, written, channel_columns)
    has_split, has_group = "split" in columns, "group" in columns
    rows, problems = [], []
    for number, record in records:
        path, label, split = record.get("path", ""), record.get("label", ""), record.get("split")
        group = record.get("group")
        written_channels = [record.get(c, "") for c in channel_columns or ()]
        if channel_columns is not None:
            path = ";".join(written_channels)
            problems += [f"row {number}: empty {c}" for c, p in zip(channel_columns, written_channels,
                                                                     strict=True) if not p]
        elif not path:
            problems.append(f"row {number}: empty path")
        if not label:
            problems.append(f"row {number}: empty label")
        if has_split and split not in SPLITS:
            problems.append(f"row {number}: split {split!r} is not one of {', '.join(SPLITS)}")
        if has_group and not group:
            problems.append(f"row {number}: empty group (with a group column every row names its patient)")
        resolved = tuple((manifest.parent / p).resolve() for p in written_channels)
        rows.append(ManifestRow(number, resolved[0] if resolved else (manifest.parent / path).resolve(),
                                label, split if has_split else None, path, group if has_group else None,
                                resolved))
    if has_split and has_group and not problems:
        problems += _groups_across_splits(rows)
    if problems:
        raise ManifestError(manifest, summarize_problems(problems))
    if not rows:
        raise ManifestError(manifest, "the manifest has a header but no rows")
    return rows


def _groups_across_splits(rows: Sequence[ManifestRow]) -> list[str]:
    """One problem per group whose rows are in more than one split (the leak a group column prevents)."""
    where: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        where.setdefault(str(r.group), {}).setdefault(str(r.split), []).append(r.row)
    problems = []
    for group, splits in where.items():
        if len(splits) > 1:
            parts = " and ".join(f"{split} ({_row_list(numbers)})" for split, numbers in splits.items())
            problems.append(f"group {group!r} is in {parts}: a patient's scans must all be in one split")
    return problems


def _row_list(numbers: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:5]) + (", ..." if len(numbers) > 5 else "")
    return f"row{'s' if len(numbers) > 1 else ''} {shown}"


def _column(name: str) -> str:
    # Spreadsheets write "Label" or " label "; the columns are matched as the user means them.
    return name.strip().casefold()


def _check_columns(manifest: Path, written: Sequence[str], channels: Sequence[str] | None = None
                   ) -> list[str]:
    """The header's column names, matched case-insensitively; refuses duplicates and missing columns.

    With ``channels`` those columns replace ``path`` among the required ones.
    """
    columns = [_column(c) for c in written]
    found = ", ".join(repr(c) for c in written) or "none"
    required = ["path", "label"] if channels is None else [*channels, "label"]
    known = {*MANIFEST_COLUMNS, *required}
    twice = sorted({c for c in columns if columns.count(c) > 1 and c in known})
    if twice:
        raise ManifestError(manifest, f"the header names the column(s) {', '.join(twice)} more than "
                                      f"once (names are matched case-insensitively); found columns: {found}")
    missing = [c for c in required if c not in columns]
    if missing:
        hints = [f"{close[0]!r} for {c!r}?" for c in missing
                 if (close := difflib.get_close_matches(c, columns, n=1, cutoff=0.6))]
        hint = f"; did you mean {', '.join(hints)}" if hints else ""
        raise ManifestError(manifest, f"the header must name the columns {','.join(required)}"
                                      "[,split][,group] (in any case); "
                                      f"missing {', '.join(missing)}; found columns: {found}{hint}")
    return columns


def class_names_of(rows: Sequence[ManifestRow], class_names: Sequence[str] | None = None,
                   manifest: str | os.PathLike[str] = "manifest") -> list[str]:
    """The class list: ``class_names`` if given (every label must be in it), else the sorted labels.

    Example:
        >>> rows = [ManifestRow(n, Path(p), label, None, p)
        ...         for n, p, label in ((2, "a", "lesion"), (3, "b", "normal"))]
        >>> class_names_of(rows)
        ['lesion', 'normal']
    """
    if class_names is None:
        names = sorted({r.label for r in rows})
        if len(names) < 2:
            raise ManifestError(manifest, f"training needs at least 2 classes; every row has label {names}")
        return names
    known = set(class_names)
    problems = [f"row {r.row}: label {r.label!r} is not in the class list {list(class_names)}"
                for r in rows if r.label not in known]
    if problems:
        raise ManifestError(manifest, summarize_problems(problems))
    return list(class_names)


def count_labels(rows: Sequence[ManifestRow]) -> dict[str, int]:
    """Rows per label, in sorted label order.

    Example:
        >>> count_labels([ManifestRow(n, Path(p), label, None, p)
        ...               for n, p, label in ((2, "a", "white"), (3, "b", "grey"), (4, "c", "white"))])
        {'grey': 1, 'white': 2}
    """
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.label] = counts.get(r.label, 0) + 1
    return dict(sorted(counts.items()))


def check_label_typos(rows: Sequence[ManifestRow], manifest: str | os.PathLike[str] = "manifest") -> None:
    """Refuse labels that look like a slip of another label rather than a class of their own.

    Without ``data.class_names`` every distinct label becomes a class, so one ``wite`` among
    hundreds of ``white`` would silently train an extra output. A label is suspicious when it is

    - the same as another label but for case or separators (``White``, ``non-lesion`` / ``non_lesion``);
    - one letter away from a label with at least twice its rows (a letter left out, added, replaced
      or two letters swapped, and difflib ratio >= 0.8; edits of digits or of one-letter words,
      as in ``grade1`` / ``grade2`` or ``type_a`` / ``type_b``, name real classes and pass);
    - or rare: at most 2 rows and under 5% of the rows of the largest class.

    Listing the classes in ``data.class_names`` accepts them all; the trainer then skips this check.

    Raises:
        ManifestError: naming each suspicious label, its rows, the label it looks like and its row count.

    Example:
        >>> rows = [ManifestRow(n, Path(str(n)), "wite" if n == 9 else "white", None, str(n))
        ...         for n in range(2, 42)]
        >>> check_label_typos(rows, "m.csv")   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        medres3d.errors.ManifestError: m.csv: 1 problem(s): label 'wite' (1 row: row 9) looks like a ...
    """
    counts = count_labels(rows)
    largest = max(counts, key=lambda name: counts[name], default=None)
    problems = []
    for name, count in counts.items():
        others = sorted((n for n in counts if n != name), key=lambda n: -counts[n])
        alike = [n for n in others if _squeezed(n) == _squeezed(name)
                 and (counts[n], name) > (count, n)]  # of a pair with equal counts, report one
        slips = [n for n in others if 2 * count <= counts[n] and _one_slip_apart(name, n)]
        if alike:
            twin, why = alike[0], "it differs only in case or separators"
        elif slips:
            twin, why = slips[0], "they are one letter apart"
        elif largest is not None and count <= 2 and count < 0.05 * counts[largest]:
            twin = max(others, key=lambda n: (difflib.SequenceMatcher(None, name, n).ratio(), counts[n]))
            why = f"it has under 5% of the rows of the largest class {largest!r}"
        else:
            continue
        numbers = [r.row for r in rows if r.label == name]
        where = ", ".join(str(n) for n in numbers[:5]) + (", ..." if len(numbers) > 5 else "")
        plural = "s" if count > 1 else ""
        problems.append(f"label {name!r} ({count} row{plural}: row{plural} {where}) looks like a typo of "
                        f"{twin!r} ({counts[twin]} rows): {why}")
    if problems:
        raise ManifestError(manifest, summarize_problems(problems) + "; fix the labels, or list every class "
                                      "in data.class_names to train such a label as a class of its own")


def _squeezed(label: str) -> str:
    return "".join(c for c in label.casefold() if c.isalnum())


def _one_slip_apart(a: str, b: str) -> bool:
    """One letter left out, added, replaced, or two neighbours swapped; not a digit, not a one-letter word."""
    a, b = a.casefold(), b.casefold()
    if difflib.SequenceMatcher(None, a, b).ratio() < 0.8:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
    same_length = len(a) == len(b)
    if len(b) == len(a) + 1 and a[i:] == b[i + 1:]:
        edited, word = {b[i]}, _word_length(b, i)
    elif same_length and i < len(a) and a[i + 1:] == b[i + 1:]:
        edited, word = {a[i], b[i]}, _word_length(a, i)
    elif same_length and i + 1 < len(a) and (a[i], a[i + 1]) == (b[i + 1], b[i]) and a[i + 2:] == b[i + 2:]:
        edited, word = {a[i], a[i + 1]}, 2
    else:
        return False
    return word > 1 and not any(c.isdigit() for c in edited)


def _word_length(text: str, index: int) -> int:
    """Length of the run of letters and digits around ``text[index]`` (0 on a separator)."""
    if not text[index].isalnum():
        return 0
    start, end = index, index + 1
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    return end - start


def check_files(rows: Sequence[ManifestRow], manifest: str | os.PathLike[str]) -> dict[int, str]:
    """Check that every row's file or folder exists; returns a stamp per row for the data hash.

    The stamp lists names, sizes and modification times (of every file of a DICOM folder, of
    every channel file of a multi-sequence row), so the hash changes when a scan is replaced; it
    does not read the contents.

    Raises:
        ManifestError: listing every row whose path (or channel path) is missing or is an empty folder.
    """
    stamps, problems = {}, []
    for r in rows:
        written = r.written_path.split(";") if r.channels else [r.written_path]
        parts: list[str] = []
        for path, shown in zip(r.channels or (r.path,), written, strict=True):
            part = _stamp_parts(path, shown, r.row, problems)
            if part is None:
                break
            parts += part
        else:
            stamps[r.row] = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    if problems:
        raise ManifestError(manifest, summarize_problems(problems))
    return stamps


def _stamp_parts(path: Path, written: str, row: int, problems: list[str]) -> list[str] | None:
    """The stamp lines of one file or folder, or None with the problem appended."""
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            if not files:
                problems.append(f"row {row}: folder {written!r} is empty")
                return None
            return [f"{p.relative_to(path).as_posix()}:{_stat(p)}" for p in files]
        if path.is_file():
            return [_stat(path)]
        problems.append(f"row {row}: {written!r} does not exist ({path})")
    except OSError as err:
        problems.append(f"row {row}: cannot read {written!r}: {err}")
    return None


def data_hash(rows: Sequence[ManifestRow], stamps: Mapping[int, str]) -> str:
    """SHA-256 over every row (path as written, label, split) and its file stamp.

    Example:
        >>> len(data_hash([ManifestRow(2, Path("/a"), "x", None, "a")], {2: "0"}))
        64
    """
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r.written_path, r.label, r.split, stamps[r.row]]).encode())
    return digest.hexdigest()


def split_rows(rows: Sequence[ManifestRow], val_fraction: float, seed: int
               ) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """(train, val): the split column when present, else a stratified random ``val_fraction``.

    Test rows are left out of both. Without a split column each class keeps at least one training
    row and, when ``val_fraction > 0`` and it has two or more rows, gives at least one to validation.
    With a group column whole groups are held out: each class gets as close to ``val_fraction``
    of its rows as whole groups allow, keeping at least one training row (and, where some group
    can give one without taking a class's last training row, at least one validation row).

    Example:
        >>> rows = [ManifestRow(n, Path(str(n)), "ab"[n % 2], None, str(n)) for n in range(2, 12)]
        >>> train, val = split_rows(rows, 0.2, seed=0)
        >>> len(train), len(val), sorted(r.label for r in val)
        (8, 2, ['a', 'b'])
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if rows and rows[0].split is not None:
        return [r for r in rows if r.split == "train"], [r for r in rows if r.split == "val"]
    if rows and rows[0].group is not None:
        val_groups = _grouped_holdout(rows, val_fraction, seed)
        return [r for r in rows if r.group not in val_groups], [r for r in rows if r.group in val_groups]
    rng = np.random.default_rng(seed)
    val_rows: set[int] = set()
    for label in sorted({r.label for r in rows}):
        members = [r.row for r in rows if r.label == label]
        count = min(round(len(members) * val_fraction), len(members) - 1)
        if val_fraction > 0 and len(members) >= 2:
            count = max(count, 1)
        val_rows.update(rng.permutation(members)[:count].tolist())
    return [r for r in rows if r.row not in val_rows], [r for r in rows if r.row in val_rows]


def _label_counts(rows: Sequence[ManifestRow], names: Sequence[str]) -> np.ndarray:
    counts = np.zeros(len(names), dtype=np.int64)
    for r in rows:
        counts[names.index(r.label)] += 1
    return counts


def _by_group(rows: Sequence[ManifestRow]) -> dict[str, list[ManifestRow]]:
    groups: dict[str, list[ManifestRow]] = {}
    for r in rows:
        groups.setdefault(str(r.group), []).append(r)
    return groups


def _grouped_holdout(rows: Sequence[ManifestRow], val_fraction: float, seed: int) -> set[str]:
    """The groups held out for validation: greedy, largest groups first, towards each class's target."""
    names = sorted({r.label for r in rows})
    groups = _by_group(rows)
    counts = {g: _label_counts(members, names) for g, members in groups.items()}
    total = _label_counts(rows, names)
    target = total * val_fraction
    rng = np.random.default_rng(seed)
    # a random order, then largest first: small groups fill the remainder that large ones leave
    order = sorted(rng.permutation(sorted(groups)).tolist(), key=lambda g: -len(groups[g]))
    held, val = set(), np.zeros(len(names), dtype=np.int64)
    if val_fraction == 0:
        return held
    for g in order:
        after = val + counts[g]
        if (total - after >= 1).all() and np.abs(target - after).sum() < np.abs(target - val).sum():
            held.add(g)
            val = after
    for c in np.flatnonzero((val == 0) & (total >= 2)):  # a class with no validation row yet
        fits = [g for g in order
                if g not in held and counts[g][c] > 0 and (total - val - counts[g] >= 1).all()]
        if fits:
            smallest = min(fits, key=lambda g: len(groups[g]))
            held.add(smallest)
            val = val + counts[smallest]
    return held


def group_folds(rows: Sequence[ManifestRow], folds: int, seed: int
                ) -> list[tuple[list[ManifestRow], list[ManifestRow]]]:
    """Stratified, grouped K-fold: ``folds`` pairs (train, validation) whose validation parts
    partition the rows; a group (patient) is never on both sides. Without a group column every
    row is its own group. Test rows (split column ``test``) are left out.

    Groups are dealt largest first, each to the fold where the classes' shares of the rows stay
    most even (the idea of scikit-learn's ``StratifiedGroupKFold``), ties to the fold with the
    fewest rows.

    Raises:
        ConfigError: ``folds`` < 2, or fewer groups than folds.

    Example:
        >>> rows = [ManifestRow(n, Path(str(n)), "ab"[n % 2], None, str(n), f"p{n // 2}")
        ...         for n in range(2, 22)]
        >>> [len(val) for _, val in group_folds(rows, 5, seed=0)]
        [4, 4, 4, 4, 4]
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2, got {folds!r}")
    rows = [r for r in rows if r.split != "test"]
    originals = {r.row: r for r in rows}
    if rows and rows[0].group is None:
        rows = [ManifestRow(r.row, r.path, r.label, r.split, r.written_path, f"row {r.row}") for r in rows]
    groups = _by_group(rows)
    if len(groups) < folds:
        raise ConfigError(f"{folds} folds need at least {folds} groups (patients); the manifest has "
                          f"{len(groups)}")
    names = sorted({r.label for r in rows})
    total = np.maximum(_label_counts(rows, names), 1)
    rng = np.random.default_rng(seed)
    order = sorted(rng.permutation(sorted(groups)).tolist(), key=lambda g: -len(groups[g]))
    fold_counts = np.zeros((folds, len(names)))
    assigned: dict[str, int] = {}
    for g in order:
        counts = _label_counts(groups[g], names)
        spread = []
        for f in range(folds):
            trial = fold_counts.copy()
            trial[f] += counts
            spread.append(float((trial / total).std(axis=0).sum()))
        best = min(range(folds), key=lambda f: (round(spread[f], 12), fold_counts[f].sum(), f))
        fold_counts[best] += counts
        assigned[g] = best
    return [([originals[r.row] for r in rows if assigned[str(r.group)] != f],
             [originals[r.row] for r in rows if assigned[str(r.group)] == f]) for f in range(folds)]


def split_table(manifest: str | os.PathLike[str], names: Sequence[str],
                splits: Mapping[str, Sequence[ManifestRow]]) -> str:
    """Rows per class of each split, with the patients (groups) per class when there is a group column.

    Example:
        >>> rows = [ManifestRow(n, Path(str(n)), "ab"[n % 2], None, str(n), f"p{n // 4}")
        ...         for n in range(2, 10)]
        >>> print(split_table("m.csv", ["a", "b"], {"train": rows[:4], "val": rows[4:]}))
        rows (patients) per class (train / val) of m.csv:
          a       2 (2) / 2 (2)
          b       2 (2) / 2 (2)
          total   4 (2) / 4 (2)
    """
    grouped = any(r.group is not None for part in splits.values() for r in part)

    def cell(part: Sequence[ManifestRow]) -> str:
        return f"{len(part)} ({len({r.group for r in part})})" if grouped else str(len(part))

    width = max(len(name) for name in (*names, "total"))
    what = "rows (patients)" if grouped else "rows"
    lines = [f"{what} per class ({' / '.join(splits)}) of {manifest}:"]
    for label in (*names, None):
        cells = [cell([r for r in part if label is None or r.label == label]) for part in splits.values()]
        lines.append(f"  {label or 'total':<{width}}  {cells[0]:>6} / " + " / ".join(cells[1:]))
    return "\n".join(lines)


def _stat(path: Path) -> str:
    info = path.stat()
    return f"{info.st_size}:{info.st_mtime_ns}"


def summarize_problems(problems: Sequence[str], limit: int = 20) -> str:
    """``"N problem(s): row 3: ...; row 7: ..."``, at most ``limit`` of them spelled out."""
    shown = "; ".join(problems[:limit])
    more = f"; ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} problem(s): {shown}{more}"
