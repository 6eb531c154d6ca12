"""``medres3d batch MODEL scans.csv``: a list of scans, one per row (multi-sequence models need it)."""

from __future__ import annotations

import pytest

from medres3d.errors import ConfigError
from medres3d.inference.batch import discover_listed, run_batch
from medres3d.inference.batch_output import read_results
from medres3d.inference.classifier import Classifier
from medres3d.synthetic import ct_phantom, make_affine, write_nifti
from medres3d.transforms import PreprocessingSpec


@pytest.fixture
def two_channel_model(tmp_path):
    import torch

    from medres3d.modelfile import save_model
    from medres3d.models.normalization import fit_normalization
    from medres3d.models.resnet3d import resnet3d

    torch.manual_seed(0)
    net = resnet3d((16, 16, 16, 2), 2, initial_num_filters=4, num_filters=(4, 8), stack_depth=(1, 1),
                   normalization="zscore")  # fmt: skip
    fit_normalization(net, [torch.randn(2, 2, 16, 16, 16) * 100.0])
    spec = PreprocessingSpec(spacing=None, channels=("t1", "t2"))
    return save_model(net, tmp_path / "two.safetensors", class_names=["normal", "lesion"], preprocessing=spec)


def _scans(tmp_path, n=3):
    for k in range(n):
        for channel in ("t1", "t2"):
            write_nifti(ct_phantom((16, 16, 16), seed=10 * k + len(channel)), make_affine(),
                        tmp_path / f"p{k}" / f"{channel}.nii.gz")  # fmt: skip


def test_a_multi_sequence_batch_from_a_scan_list_equals_predict_on_the_lists(two_channel_model, tmp_path):
    _scans(tmp_path)
    listing = tmp_path / "scans.csv"
    rows = [f"p{k},p{k}/t1.nii.gz,p{k}/t2.nii.gz" for k in range(3)] + ["p9,p9/t1.nii.gz,p9/t2.nii.gz"]
    listing.write_text("id,t1,t2\n" + "\n".join(rows) + "\n")
    out = tmp_path / "results.csv"
    summary = run_batch(two_channel_model, listing, out, workers=0, progress=False, device="cpu")
    assert (summary.ok, summary.errors) == (3, 1)
    results = {row["id"]: row for row in read_results(out)}
    assert "p9/t1.nii.gz" in results["p9"]["error"]  # the missing file is named in its row
    clf = Classifier.load(two_channel_model, device="cpu", evidence=False)
    for k in range(3):
        expected = clf.predict([tmp_path / f"p{k}" / "t1.nii.gz", tmp_path / f"p{k}" / "t2.nii.gz"])
        got = {name: float(results[f"p{k}"][f"p_{name}"]) for name in clf.class_names}
        assert got == pytest.approx(expected.probabilities, abs=1e-6)


def test_a_single_input_model_takes_a_scan_list_with_a_path_column(model_file, tmp_path):
    write_nifti(ct_phantom((16, 16, 16), seed=1), make_affine(), tmp_path / "a.nii.gz")
    listing = tmp_path / "list.csv"
    listing.write_text("path\na.nii.gz\n")
    out = tmp_path / "results.csv"
    assert run_batch(model_file, listing, out, workers=0, progress=False, device="cpu").ok == 1
    assert read_results(out)[0]["id"] == "a.nii.gz"


@pytest.mark.parametrize(("text", "message"), [
    ("path,t1\nx,y\n", r"needs a header and the column\(s\) \['t1', 't2'\].*missing \['t2'\]"),
    ("t1,t2\na,\n", "row 2: empty t2"),
    ("id,t1,t2\nx,a,b\nx,c,d\n", "row 3: id 'x' is used by an earlier row"),
])  # fmt: skip
def test_a_bad_scan_list_is_refused_naming_the_file(tmp_path, text, message):
    listing = tmp_path / "scans.csv"
    listing.write_text(text)
    with pytest.raises(ConfigError, match=message):
        discover_listed(listing, ["t1", "t2"])


def test_a_multi_sequence_model_on_a_folder_says_it_needs_a_list(two_channel_model, tmp_path):
    with pytest.raises(ConfigError, match=r"takes 2 files per scan \(t1, t2\): give a CSV listing the scans"):
        run_batch(two_channel_model, tmp_path, tmp_path / "out.csv", workers=0, progress=False, device="cpu")
