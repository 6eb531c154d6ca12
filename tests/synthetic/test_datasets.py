import csv

import nibabel as nib
import numpy as np
import pydicom

from medres3d.synthetic import make_messy_dicom_tree, make_phantom_dataset


def test_phantom_dataset_manifest_is_balanced_and_stratified(tmp_path):
    manifest = make_phantom_dataset(tmp_path, n=10, shape=(20, 20, 12), split_fractions=(0.6, 0.2, 0.2))
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == 10
    for label in ("normal", "lesion"):
        splits = sorted(r["split"] for r in rows if r["label"] == label)
        assert splits == ["test", "train", "train", "train", "val"]
    image = nib.load(tmp_path / rows[0]["path"])
    assert image.shape == (20, 20, 12)
    np.testing.assert_allclose(image.header.get_zooms(), (1.5, 1.5, 1.5))


def test_phantom_dataset_as_dicom_series_folders(tmp_path):
    manifest = make_phantom_dataset(tmp_path, n=2, shape=(16, 16, 6), file_format="dicom", modality="MR")
    rows = list(csv.DictReader(manifest.open()))
    files = sorted((tmp_path / rows[0]["path"]).iterdir())
    assert len(files) == 6
    assert pydicom.dcmread(files[0]).Modality == "MR"


def test_messy_tree_contents(tmp_path):
    tree = make_messy_dicom_tree(tmp_path, shape=(16, 16, 6))
    mixed = tree.series[0].folder
    assert mixed == tree.series[1].folder  # two series in one folder
    uids = {
        pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in mixed.iterdir() if f.is_file()
    }
    assert {tree.series[0].uid, tree.series[1].uid} <= uids
    assert pydicom.dcmread(tree.localizers[0]).SeriesInstanceUID == tree.series[0].uid
    broken = next(s for s in tree.series if s.broken)
    header = pydicom.dcmread(broken.files[0], stop_before_pixels=True)
    assert header.Rows == 16
    try:
        pydicom.dcmread(broken.files[0]).pixel_array  # noqa: B018
    except (ValueError, EOFError, AttributeError):
        pass
    else:
        raise AssertionError("a truncated file decoded completely")
    assert [p.name for p in tree.non_dicom] == ["notes.txt"]
    assert (tmp_path / "DICOMDIR").exists()


def test_size_jitter_gives_several_shapes_within_bounds(tmp_path):
    manifest = make_phantom_dataset(tmp_path, n=6, shape=(20, 20, 16), size_jitter=0.25, seed=1)
    shapes = {nib.load(tmp_path / r["path"]).shape for r in csv.DictReader(manifest.open())}
    assert len(shapes) > 1
    for shape in shapes:
        assert all(0.75 * n - 1 <= s <= 1.25 * n + 1 for s, n in zip(shape, (20, 20, 16), strict=True))


def test_messy_tree_refuses_a_non_empty_root(tmp_path):
    import pytest

    from medres3d.errors import ConfigError

    (tmp_path / "old.dcm").write_bytes(b"x")
    with pytest.raises(ConfigError, match="empty"):
        make_messy_dicom_tree(tmp_path)


def test_windows_cut_from_larger_bodies_hold_the_whole_lesion(tmp_path, monkeypatch):
    import medres3d.synthetic.datasets as datasets
    from medres3d.synthetic import centered_origin, make_affine

    bodies = []  # every (volume, mask) the real phantom function drew, in case order
    real_ct_phantom = datasets.ct_phantom

    def recording_ct_phantom(*args, **kwargs):
        drawn = real_ct_phantom(*args, **kwargs)
        bodies.append(drawn)
        return drawn

    monkeypatch.setattr(datasets, "ct_phantom", recording_ct_phantom)
    manifest = make_phantom_dataset(
        tmp_path,
        n=6,
        shape=(16, 16, 12),
        spacing=(2, 2, 2),
        body_shape=(40, 40, 30),
        lesion_contrast=(300, 300),
    )
    for row in csv.DictReader(manifest.open()):
        image = nib.load(tmp_path / row["path"])
        assert image.shape == (16, 16, 12)
        # The window's affine places it inside the body volume centred on the origin.
        corner = image.affine @ [0, 0, 0, 1]
        assert np.all(corner[:3] >= [-40, -40, -30]) and np.all(corner[:3] <= [40 - 32, 40 - 32, 30 - 24])
    # each window is a block of its body at the place its affine says, holding the whole lesion
    body_affine = centered_origin((40, 40, 30), make_affine((2, 2, 2)))
    rows = list(csv.DictReader(manifest.open()))
    assert len(bodies) == len(rows)
    for row, (body, mask) in zip(rows, bodies, strict=True):
        image = nib.load(tmp_path / row["path"])
        start = np.rint(np.linalg.solve(body_affine, image.affine @ [0, 0, 0, 1])[:3]).astype(int)
        box = tuple(slice(a, a + n) for a, n in zip(start, (16, 16, 12), strict=True))
        np.testing.assert_allclose(image.get_fdata(), body[box], atol=1e-3)
        assert mask[box].sum() == mask.sum()
        assert (mask.sum() > 0) == (row["label"] == "lesion")


def test_random_window_holds_the_mask_and_keeps_world_positions():
    from medres3d.synthetic import make_affine, sphere_mask
    from medres3d.synthetic.datasets import _random_window

    volume = np.arange(30 * 28 * 20, dtype=np.float32).reshape(30, 28, 20)
    mask = sphere_mask(volume.shape, (20, 6, 14), 3.0)
    affine = make_affine((2, 1.5, 3), "oblique", origin=(5, -4, 2))
    rng = np.random.default_rng(0)
    for _ in range(20):
        window, window_affine = _random_window(volume, mask, affine, (12, 10, 8), rng)
        start = np.unravel_index(int(window[0, 0, 0]), volume.shape)  # voxel values encode their index
        box = tuple(slice(a, a + n) for a, n in zip(start, (12, 10, 8), strict=True))
        assert mask[box].sum() == mask.sum()
        np.testing.assert_allclose(
            window_affine @ [1, 2, 3, 1], affine @ [start[0] + 1, start[1] + 2, start[2] + 3, 1]
        )
