"""Manifest parsing and checks: every bad row is reported, with its spreadsheet row number."""

from __future__ import annotations

from pathlib import Path

import pytest

from medres3d.errors import ManifestError
from medres3d.training.manifest import (
    check_files,
    check_label_typos,
    class_names_of,
    count_labels,
    data_hash,
    read_manifest,
    split_rows,
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def test_rows_resolve_relative_to_the_manifest(tmp_path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.nii.gz").write_bytes(b"x")
    rows = read_manifest(_write(tmp_path, "path,label\nscans/a.nii.gz,normal\n"))
    assert rows[0].row == 2 and rows[0].path == tmp_path / "scans" / "a.nii.gz" and rows[0].split is None


def test_structural_problems_are_all_listed(tmp_path):
    manifest = _write(tmp_path, "path,label,split\na.nii,x,train\n,y,train\nb.nii,,val\nc.nii,x,holdout\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    message = str(info.value)
    assert message.startswith(str(manifest))
    assert "3 problem(s)" in message
    for expected in ("row 3: empty path", "row 4: empty label", "row 5: split 'holdout'"):
        assert expected in message


def test_missing_columns_and_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="missing label"):
        read_manifest(_write(tmp_path, "path,class\na.nii,x\n"))
    with pytest.raises(ManifestError, match="manifest file not found"):
        read_manifest(tmp_path / "nope.csv")


def test_labels_outside_the_class_list_name_their_rows(tmp_path):
    rows = read_manifest(_write(tmp_path, "path,label\na,normal\nb,lesion\nc,tumour\nd,lesoin\n"))
    with pytest.raises(ManifestError) as info:
        class_names_of(rows, ["normal", "lesion"], "m.csv")
    assert "row 4: label 'tumour'" in str(info.value) and "row 5: label 'lesoin'" in str(info.value)
    assert class_names_of(rows) == ["lesion", "lesoin", "normal", "tumour"]


def test_missing_files_and_empty_folders_are_listed(tmp_path):
    (tmp_path / "ok.nii.gz").write_bytes(b"x")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "1.dcm").write_bytes(b"y")
    (tmp_path / "empty").mkdir()
    rows = read_manifest(_write(tmp_path, "path,label\nok.nii.gz,a\nseries,b\ngone.nii.gz,a\nempty,b\n"))
    with pytest.raises(ManifestError) as info:
        check_files(rows, "m.csv")
    message = str(info.value)
    assert "2 problem(s)" in message and "row 4: 'gone.nii.gz' does not exist" in message
    assert "row 5: folder 'empty' is empty" in message
    stamps = check_files(rows[:2], "m.csv")
    before = data_hash(rows[:2], stamps)
    (tmp_path / "series" / "2.dcm").write_bytes(b"z")  # a slice added to the series changes the hash
    assert data_hash(rows[:2], check_files(rows[:2], "m.csv")) != before
    assert data_hash(rows[:2], stamps) == before


def test_split_column_and_stratified_split(tmp_path):
    rows = read_manifest(_write(tmp_path, "path,label,split\na,x,train\nb,y,val\nc,x,test\nd,y,train\n"))
    train, val = split_rows(rows, 0.5, seed=0)
    assert [r.row for r in train] == [2, 5] and [r.row for r in val] == [3]
    text = "path,label\n" + "".join(f"s{i},{'xy'[i % 2] if i < 16 else 'z'}\n" for i in range(20))
    rows = read_manifest(_write(tmp_path, text))
    train, val = split_rows(rows, 0.25, seed=3)
    assert sorted(r.label for r in val) == ["x", "x", "y", "y", "z"]   # round(8 * 0.25), round(4 * 0.25)
    assert len(train) + len(val) == 20 and not {r.row for r in train} & {r.row for r in val}
    assert split_rows(rows, 0.25, seed=3) == (train, val)


def test_a_single_row_class_stays_in_training_at_any_val_fraction(tmp_path):
    rows = read_manifest(_write(tmp_path, "path,label\na,x\nb,x\nc,x\nd,y\n"))
    for fraction in (0.2, 0.6, 0.9):
        train, val = split_rows(rows, fraction, seed=0)
        assert [r.label for r in train].count("y") == 1 and "y" not in [r.label for r in val], fraction
        assert [r.label for r in train].count("x") >= 1 and [r.label for r in val].count("x") >= 1


def test_column_names_match_in_any_case_and_missing_ones_are_explained(tmp_path):
    rows = read_manifest(_write(tmp_path, " Path ,LABEL,Split\na.nii,x,train\nb.nii,y,val\n"))
    assert [(r.written_path, r.label, r.split) for r in rows] == [("a.nii", "x", "train"),
                                                                  ("b.nii", "y", "val")]
    with pytest.raises(ManifestError) as info:
        read_manifest(_write(tmp_path, "Path,Lable,Split\na.nii,x,train\n"))
    message = str(info.value)
    assert "missing label" in message and "found columns: 'Path', 'Lable', 'Split'" in message
    assert "path,label[,split]" in message and "did you mean 'lable' for 'label'?" in message
    with pytest.raises(ManifestError, match="names the column\\(s\\) label more than once"):
        read_manifest(_write(tmp_path, "path,Label,label\na.nii,x,y\n"))


def _labelled(tmp_path: Path, counts: dict[str, int]) -> list:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return read_manifest(_write(tmp_path, "path,label\n" + "".join(f"s{i},{x}\n"
                                                                    for i, x in enumerate(labels))))


@pytest.mark.parametrize(
    ("counts", "suspect", "twin", "why"),
    [({"white": 40, "grey": 30, "wite": 1}, "wite", "white", "one letter apart"),
     ({"lesion": 3, "normal": 4, "lesoin": 1}, "lesoin", "lesion", "one letter apart"),   # swapped letters
     ({"normal": 5, "Normal": 5, "lesion": 5}, "normal", "Normal", "only in case or separators"),
     ({"non_lesion": 6, "non-lesion": 2, "lesion": 6}, "non-lesion", "non_lesion", "only in case"),
     ({"normal": 60, "lesion": 50, "tumour": 2}, "tumour", "normal", "under 5% of the rows of the largest")],
)
def test_labels_that_look_like_typos_are_refused(tmp_path, counts, suspect, twin, why):
    rows = _labelled(tmp_path, counts)
    with pytest.raises(ManifestError) as info:
        check_label_typos(rows, "data/m.csv")
    message = str(info.value)
    assert message.startswith("data/m.csv: 1 problem(s): ") and why in message
    first, plural = next(r.row for r in rows if r.label == suspect), "s" * (counts[suspect] > 1)
    assert f"label {suspect!r} ({counts[suspect]} row{plural}: row{plural} {first}" in message
    assert f"looks like a typo of {twin!r} ({counts[twin]} rows)" in message
    assert "list every class in data.class_names" in message


@pytest.mark.parametrize(
    "counts",
    [{"normal": 40, "abnormal": 10},              # an affix, not a slip
     {"grade1": 30, "grade2": 5, "grade3": 12},   # digits name real classes
     {"type_a": 20, "type_b": 4},                 # so do one-letter words
     {"white": 3, "wite": 2},                     # one letter apart but not rarer than half
     {"normal": 30, "lesion": 2},                 # rare, but not under 5% of the largest class
     {"a": 1, "b": 1}],
)
def test_similar_or_small_classes_that_are_not_typos_pass(tmp_path, counts):
    assert check_label_typos(_labelled(tmp_path, counts), "m.csv") is None
    assert count_labels(_labelled(tmp_path, counts)) == dict(sorted(counts.items()))
