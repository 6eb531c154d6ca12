"""The manifest's group (patient) column: splits and folds never put one patient on both sides."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medres3d.errors import ConfigError, ManifestError
from medres3d.training.manifest import ManifestRow, group_folds, read_manifest, split_rows, split_table


def _rows(labels_and_groups: list[tuple[str, str]]) -> list[ManifestRow]:
    return [ManifestRow(n, Path(f"/{n}"), label, None, f"{n}.nii.gz", group)
            for n, (label, group) in enumerate(labels_and_groups, start=2)]


# random manifests: 2-60 rows, 2-3 classes, patients with one or several scans
manifests = st.lists(st.tuples(st.sampled_from(["normal", "lesion", "cyst"]),
                               st.integers(0, 25).map(lambda g: f"patient{g}")), min_size=2, max_size=60)


@settings(max_examples=150, deadline=None)
@given(manifests, st.floats(0.0, 0.9), st.integers(0, 2**16))
def test_a_validation_split_never_shares_a_patient(entries, fraction, seed):
    rows = _rows(entries)
    train, val = split_rows(rows, fraction, seed)
    assert sorted(r.row for r in train + val) == [r.row for r in rows]
    assert not {r.group for r in train} & {r.group for r in val}
    # every class keeps a training row
    assert {r.label for r in train} == {r.label for r in rows}
    assert split_rows(rows, fraction, seed) == (train, val)   # seeded


@settings(max_examples=100, deadline=None)
@given(manifests, st.integers(2, 5), st.integers(0, 2**16))
def test_folds_partition_the_rows_and_never_share_a_patient(entries, k, seed):
    rows = _rows(entries)
    if len({g for _, g in entries}) < k:
        with pytest.raises(ConfigError, match=f"{k} folds need at least {k} groups"):
            group_folds(rows, k, seed)
        return
    folds = group_folds(rows, k, seed)
    assert len(folds) == k
    held_out = sorted(r.row for _, val in folds for r in val)
    assert held_out == [r.row for r in rows]   # each row validated exactly once
    for train, val in folds:
        assert val
        assert not {r.group for r in train} & {r.group for r in val}
        assert sorted(r.row for r in train + val) == [r.row for r in rows]


def test_folds_are_stratified_when_the_groups_allow_it():
    rows = _rows([("lesion" if n % 4 == 0 else "normal", f"p{n // 2}") for n in range(100)])
    for _, val in group_folds(rows, 5, seed=3):
        lesions = sum(r.label == "lesion" for r in val)
        assert len(val) == 20 and lesions == 5


def test_folds_without_groups_treat_each_row_as_its_own_patient():
    rows = [ManifestRow(n, Path(f"/{n}"), "ab"[n % 2], None, str(n)) for n in range(2, 12)]
    folds = group_folds(rows, 5, seed=0)
    assert [sorted(r.label for r in val) for _, val in folds] == [["a", "b"]] * 5
    assert all(r.group is None for _, val in folds for r in val)   # the caller's rows, unchanged


def test_read_manifest_groups_and_refuses_a_patient_in_two_splits(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split,Group\na.nii,x,train,p1\nb.nii,y,train,p1\nc.nii,x,test,p2\n")
    assert [r.group for r in read_manifest(manifest)] == ["p1", "p1", "p2"]
    manifest.write_text("path,label,split,group\na.nii,x,train,p1\nb.nii,y,val,p1\nc.nii,x,test,p1\n"
                        "d.nii,x,train,p2\ne.nii,x,train,\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    assert "row 6: empty group" in str(err.value)
    manifest.write_text("path,label,split,group\na.nii,x,train,p1\nb.nii,y,val,p1\nc.nii,x,test,p1\n"
                        "d.nii,x,train,p2\n")
    with pytest.raises(ManifestError, match=r"group 'p1' is in train \(row 2\) and val \(row 3\) and test "
                                            r"\(row 4\): a patient's scans must all be in one split"):
        read_manifest(manifest)


def test_split_table_counts_rows_and_patients():
    rows = _rows([("normal", "p1"), ("normal", "p1"), ("lesion", "p2"), ("normal", "p3"), ("lesion", "p3")])
    table = split_table("m.csv", ["lesion", "normal"], {"train": rows[:3], "val": rows[3:]})
    assert table.splitlines() == ["rows (patients) per class (train / val) of m.csv:",
                                  "  lesion   1 (1) / 1 (1)",
                                  "  normal   2 (1) / 1 (1)",
                                  "  total    3 (2) / 2 (1)"]
