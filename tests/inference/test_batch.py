"""Batch inference: discovery, one row per series, error rows, SIGKILL + resume, torchrun shards."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_helpers import all_descendants

from medres3d.errors import ConfigError, OutputWriteError
from medres3d.inference.batch import discover, run_batch
from medres3d.inference.batch_output import ResultWriter, read_results, result_columns
from medres3d.synthetic import ct_phantom, make_affine, make_messy_dicom_tree, write_nifti

CLI = [sys.executable, "-m", "medres3d.cli"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    written = make_messy_dicom_tree(root, shape=(16, 16, 6))
    write_nifti(
        ct_phantom((20, 18, 12), seed=5), make_affine((1.0, 1.0, 2.0)), root / "extra" / "scan.nii.gz"
    )
    return written


def _expected_ids(tree) -> dict[str, str]:
    """id prefix -> expected status, from what the synthetic tree says it wrote."""
    expected = {}
    for series in tree.series:
        folder = series.folder.relative_to(tree.root).as_posix()
        expected[f"{folder}#{series.uid}"] = "error" if series.broken else "ok"
    expected["extra/scan.nii.gz"] = "ok"
    return expected


def _series_key(item_id: str) -> str:
    # a series split by the scanner (here: from its localizer) gets its part in brackets
    return item_id.split(" [")[0]


def _check_rows(rows, tree) -> None:
    expected = _expected_ids(tree)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == len(expected), ids
    assert {_series_key(row["id"]): row["status"] for row in rows} == expected
    for row in rows:
        if row["status"] == "ok":
            assert float(row["p_normal"]) + float(row["p_lesion"]) == pytest.approx(1.0, abs=1e-5)
            assert row["label"] in ("normal", "lesion") and not row["error"]
        else:
            assert row["error"] and not row["label"] and str(tree.root) in row["error"]


def test_discovery_selects_series_and_nifti_and_skips_non_images(tree):
    found = discover(tree.root, workers=1)
    assert sorted(_series_key(item.id) for item in found.items) == sorted(_expected_ids(tree))
    skipped = {Path(path).name for path, _ in found.skipped}
    assert {"seg.dcm", "report", "notes.txt", "DICOMDIR"} <= skipped
    assert any("localizer" in reason for _, reason in found.excluded)
    only_mr = discover(tree.root, modality="mr", workers=1)
    assert [item.modality for item in only_mr.items] == ["MR", ""]  # NIfTI files have no modality
    thin = discover(tree.root, series_description="THIN", workers=1)
    assert [item.description for item in thin.items if item.modality] == ["CT thin normal"]
    # --min-slices against the number of files the synthetic writer reports for each series
    slices = {_series_key(item.id): item.num_slices for item in found.items}
    for series in tree.series:
        assert slices[f"{series.folder.relative_to(tree.root).as_posix()}#{series.uid}"] == len(series.files)
    most = max(len(series.files) for series in tree.series)
    assert [item.id for item in discover(tree.root, min_slices=most + 1, workers=1).items] == [
        "extra/scan.nii.gz"
    ]
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        discover(tree.root, series_description="(")


def test_discovery_counts_the_slices_of_mosaics_and_enhanced_4d_volumes(tmp_path):
    # found by running `medres3d batch` over such folders: each mosaic volume was "1 slice"
    from medres3d.synthetic.dicom_4d import write_enhanced_4d, write_siemens_mosaic

    volumes = [ct_phantom((24, 24, 12), seed=n).astype(float) + 1000 for n in range(2)]
    write_siemens_mosaic(volumes, make_affine(), tmp_path / "mosaic")
    write_enhanced_4d(volumes, make_affine(), tmp_path / "enhanced" / "bold.dcm")
    found = discover(tmp_path, workers=1)
    assert [item.num_slices for item in found.items] == [12] * 4
    assert len(discover(tmp_path, min_slices=12, workers=1).items) == 4


def test_batch_classifies_every_volume_of_4d_series_in_loader_processes(model_file, tmp_path):
    # each volume of an Enhanced 4D file and of a mosaic series is a row, loaded in the loader
    # processes (its DicomSeries, frames included, crosses to them), with its number of slices
    from medres3d.synthetic.dicom_4d import write_enhanced_4d, write_siemens_mosaic

    volumes = [ct_phantom((24, 24, 12), seed=n).astype(float) + 1000 for n in range(3)]
    write_siemens_mosaic(volumes, make_affine(), tmp_path / "root" / "mosaic", b_values=[0, 1000, 1000],
                         gradients=[(0, 0, 0), (1, 0, 0), (0, 1, 0)])  # fmt: skip
    write_enhanced_4d(volumes, make_affine(), tmp_path / "root" / "enhanced" / "bold.dcm")
    out = tmp_path / "results.csv"
    summary = run_batch(model_file, tmp_path / "root", out, workers=2, progress=False, device="cpu")
    rows = read_results(out)
    assert summary.errors == 0 and [row["status"] for row in rows] == ["ok"] * 6
    assert sorted(row["id"].split(" [")[1] for row in rows) == sorted(
        ["b0]", "b1000 dir1]", "b1000 dir2]", "t1]", "t2]", "t3]"]
    )
    assert {int(row["num_slices"]) for row in rows} == {12}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_batch_writes_one_row_per_series_with_status(model_file, tree, tmp_path, fmt):
    out = tmp_path / f"results.{fmt}"
    summary = run_batch(model_file, tree.root, out, workers=0, progress=False, device="cpu")
    rows = read_results(out)
    _check_rows(rows, tree)
    assert (summary.ok, summary.errors, summary.exit_code) == (4, 1, 0)
    if fmt == "csv":
        with open(out, newline="") as handle:
            assert next(csv.reader(handle)) == result_columns(["normal", "lesion"])
    else:
        assert all(isinstance(json.loads(line)["p_lesion"], (float, type(None))) for line in out.open())


def test_cli_batch_exit_code_is_1_only_when_nothing_could_be_processed(model_file, tree, tmp_path):
    broken = next(s for s in tree.series if s.broken).folder
    only_broken = tmp_path / "only_broken"
    shutil.copytree(broken, only_broken / "b")
    args = [*CLI, "batch", str(model_file), "--workers", "0", "--no-progress", "--device", "cpu"]
    failed = subprocess.run([*args, str(only_broken), "--out", str(tmp_path / "b.csv")], capture_output=True)
    assert failed.returncode == 1, failed.stderr.decode()
    assert [row["status"] for row in read_results(tmp_path / "b.csv")] == ["error"]


def test_cli_batch_any_aggregation_equals_the_classifier(model_file, tmp_path):
    from typer.testing import CliRunner

    from medres3d.cli import app
    from medres3d.inference.classifier import Classifier

    phantom = ct_phantom((30, 20, 12), lesion=True, seed=7)
    scan = write_nifti(phantom, make_affine((1.0, 1.0, 2.0)), tmp_path / "in" / "s.nii.gz")
    out = tmp_path / "any.csv"
    args = ["batch", str(model_file), str(tmp_path / "in"), "--out", str(out), "--workers", "0",
            "--no-progress", "--device", "cpu", "--aggregate", "any", "--negative-class", "normal"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = read_results(out)
    expected = Classifier.load(model_file, device="cpu", aggregate="any").predict(scan)
    assert expected.num_windows > 1 and row["label"] == expected.label
    assert float(row["p_lesion"]) == pytest.approx(expected.probabilities["lesion"], abs=1e-6)
    assert float(row["p_normal"]) == pytest.approx(expected.probabilities["normal"], abs=1e-6)


def test_write_errors_raise_output_write_error_and_keep_rows(tmp_path):
    path = tmp_path / "r.csv"
    writer = ResultWriter(path, result_columns(["a", "b"]))
    writer.write({"id": "x", "status": "ok", "p_a": 0.25, "p_b": 0.75})
    os.close(writer._fd)  # the descriptor goes bad under the writer, like a vanished disk
    with pytest.raises(OutputWriteError, match=r"r\.csv"):
        writer.write({"id": "y", "status": "ok"})
    writer._fd = None
    assert [row["id"] for row in read_results(path)] == ["x"]
    with pytest.raises(OutputWriteError, match="cannot open"):
        ResultWriter(tmp_path / "r.csv" / "below-a-file.csv", result_columns(["a"]))


def test_resume_refuses_a_file_written_for_other_classes(tmp_path):
    path = tmp_path / "r.csv"
    ResultWriter(path, result_columns(["a", "b"])).close()
    with pytest.raises(ConfigError, match="cannot resume"):
        ResultWriter(path, result_columns(["a", "c"]), resume=True)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_multi_line_messages_are_written_on_one_line_and_resume(tmp_path, fmt):
    # e.g. SimpleITK's exception messages span lines; the file must keep one line per row (docs)
    path = tmp_path / f"r.{fmt}"
    with ResultWriter(path, result_columns(["a"])) as writer:
        writer.write({"id": "x", "status": "error", "error": "Exception thrown\r\nsitk::ERROR: bad",
                      "warnings": "one\ntwo", "description": "a\rb"})
        writer.write({"id": "y", "status": "ok", "p_a": 1.0})
    lines = path.read_bytes().splitlines()
    assert len(lines) == (3 if fmt == "csv" else 2)
    (first, _) = read_results(path)
    assert (first["error"], first["warnings"], first["description"]) == (
        "Exception thrown sitk::ERROR: bad", "one two", "a b")
    with open(path, "ab") as handle:  # a row cut after its first line, as an OS crash could leave
        handle.write(lines[-1][:5])
    with ResultWriter(path, result_columns(["a"]), resume=True) as resumed:
        assert resumed.done == {"x": "error", "y": "ok"}


@pytest.fixture(scope="module")
def many_scans(tree, tmp_path_factory):
    """The messy tree plus 30 small NIfTI files: enough rows to kill a batch in the middle."""
    root = tmp_path_factory.mktemp("many")
    shutil.copytree(tree.root, root, dirs_exist_ok=True)
    volume = ct_phantom((24, 20, 16), seed=1)
    for index in range(30):
        write_nifti(volume, make_affine((1.0, 1.0, 1.5)), root / "nifti" / f"scan{index:02d}.nii.gz")
    return root


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; nobody may be left to reap it in a container


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the loader worker through /proc")
def test_sigkill_then_resume_gives_every_series_exactly_once(model_file, many_scans, tmp_path):
    out = tmp_path / "results.csv"
    args = [
        *CLI,
        "batch",
        str(model_file),
        str(many_scans),
        "--out",
        str(out),
        "--workers",
        "1",
        "--no-progress",
    ]
    process = subprocess.Popen([*args, "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    workers = []
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:  # header + 2 rows
            workers = all_descendants(process.pid)  # the fork server and its workers
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert workers, "the loader worker process was not found"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "a loader worker outlived the killed batch"
    written = read_results(out)
    total = len(discover(many_scans, workers=1).items)
    assert 2 <= len(written) < total
    with open(out, "ab") as handle:  # what an OS crash mid-write could leave: a cut last line
        handle.write(b"nifti/scan99.nii.gz,/x,,,")
    resumed = subprocess.run([*args, "--device", "cpu", "--resume"], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert f"{len(written)} already done" in resumed.stderr.decode()
    text = out.read_text()
    assert text.endswith("\n") and "scan99" not in text
    rows = list(csv.reader(text.splitlines()))
    assert all(len(row) == len(rows[0]) for row in rows)
    ids = [row[0] for row in rows[1:]]
    assert len(ids) == len(set(ids)) == total


@pytest.mark.slow
def test_torchrun_two_ranks_equal_single_process(model_file, many_scans, tmp_path):
    single = tmp_path / "single.csv"
    run_batch(model_file, many_scans, single, workers=0, progress=False, device="cpu")
    sharded = tmp_path / "sharded.csv"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "medres3d.cli", "batch"]
    command += [str(model_file), str(many_scans), "--out", str(sharded), "--workers", "0", "--no-progress"]
    done = subprocess.run([*command, "--device", "cpu"], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    merged_and_removed = ["sharded.csv", "single.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == merged_and_removed

    # torchrun runs each rank with one thread: the same maths, summed in another order
    numbers = ("p_normal", "p_lesion")

    def comparable(rows):
        return [{k: v for k, v in row.items() if k not in ("seconds", *numbers)} for row in rows]

    sharded_rows, single_rows = read_results(sharded), read_results(single)
    assert comparable(sharded_rows) == comparable(single_rows)
    for a, b in zip(sharded_rows, single_rows, strict=True):
        for name in numbers:
            assert (a[name] == b[name] == "") or float(a[name]) == pytest.approx(
                float(b[name]), rel=1e-4, abs=1e-7
            )
