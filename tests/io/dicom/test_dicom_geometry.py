"""Slice planning (medres3d.io.dicom.geometry) against hand-computed geometry."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medres3d.errors import SeriesGeometryError
from medres3d.io.dicom.geometry import plan_stack

AXIAL = (1, 0, 0, 0, 1, 0)


def _labels(n):
    return [f"s{i}" for i in range(n)]


def test_slices_are_ordered_by_position_along_the_normal_not_by_input_order():
    depths = [4.0, -2.0, 1.0, 7.0, 10.0]
    pos = np.array([[5.0, -3.0, z] for z in depths])
    plan = plan_stack(pos, AXIAL, (0.5, 0.8), _labels(5))
    assert [src for src, _ in plan.slices] == list(np.argsort(depths))
    assert [k for _, k in plan.slices] == [0, 1, 2, 3, 4]
    assert plan.warnings == [] and plan.errors == [] and plan.missing == []
    expected = np.array([[0.8, 0, 0, 5], [0, 0.5, 0, -3], [0, 0, 3, -2], [0, 0, 0, 1]])
    np.testing.assert_allclose(plan.affine_lps, expected)
    np.testing.assert_allclose(plan.affine_ras, np.diag([-1, -1, 1, 1]) @ expected)


def test_oblique_normal_is_row_cross_column():
    row = np.array([np.cos(0.3), np.sin(0.3), 0.0])
    col = np.array([-np.sin(0.3) * np.cos(0.2), np.cos(0.3) * np.cos(0.2), np.sin(0.2)])
    normal = np.cross(row, col)
    origin = np.array([1.0, 2.0, 3.0])
    pos = np.array([origin + k * 1.5 * normal for k in (2, 0, 1)])
    plan = plan_stack(pos, (*row, *col), (1.0, 1.0), _labels(3))
    assert [src for src, _ in plan.slices] == [1, 2, 0]
    np.testing.assert_allclose(plan.affine_lps[:3, 2], 1.5 * normal)
    np.testing.assert_allclose(plan.affine_lps[:3, 3], origin)


def test_missing_slice_keeps_every_real_slice_on_its_true_position():
    depths = [0.0, 2.0, 4.0, 8.0, 10.0]  # 6.0 is missing
    pos = np.array([[0, 0, z] for z in depths])
    plan = plan_stack(pos, AXIAL, (1, 1), _labels(5))
    assert plan.num_slices == 6 and plan.missing == [3]
    ks = dict(plan.slices)
    for src, z in enumerate(depths):
        np.testing.assert_allclose((plan.affine_lps @ [0, 0, ks[src], 1])[2], z)
    assert plan.warnings[0].startswith("missing-slice: 1 slice(s) missing between s2 and s3")
    assert plan.errors == plan.warnings


def test_uneven_spacing_is_reported_with_the_worst_offset():
    depths = [0.0, 1.0, 2.0, 3.3, 4.0, 5.0]
    plan = plan_stack(np.array([[0, 0, z] for z in depths]), AXIAL, (1, 1), _labels(6))
    assert plan.num_slices == 6 and plan.missing == []
    assert len(plan.warnings) == 1 and plan.warnings[0].startswith("uneven-spacing:")
    assert "0.300 mm" in plan.warnings[0] and "s3" in plan.warnings[0]
    np.testing.assert_allclose(plan.affine_lps[2, 2], 1.0)  # the median spacing


def test_gantry_tilt_gives_the_true_inter_slice_vector():
    tilt = np.radians(15)
    step = np.array([0.0, -np.sin(tilt), np.cos(tilt)]) * 2.0  # sheared along y (LPS)
    pos = np.array([k * step for k in range(6)])[::-1]
    plan = plan_stack(pos, AXIAL, (1, 1), _labels(6))
    np.testing.assert_allclose(plan.affine_lps[:3, 2], step)
    np.testing.assert_allclose(plan.affine_lps[:3, 3], [0, 0, 0], atol=1e-12)
    assert plan.errors == [] and len(plan.warnings) == 1
    assert plan.warnings[0].startswith("gantry-tilt: slices are stacked 15.00 degrees")


def test_duplicates_are_listed_for_the_caller():
    pos = np.array([[0, 0, 0.0], [0, 0, 1.0], [0, 0, 1.0], [0, 0, 2.0]])
    plan = plan_stack(pos, AXIAL, (1, 1), _labels(4))
    assert plan.duplicates == [(2, 1)]
    assert [src for src, _ in plan.slices] == [0, 1, 3] and plan.num_slices == 3


def test_single_slice_plan_has_one_grid_slice():
    plan = plan_stack(np.array([[0, 0, 0.0], [0, 0, 0.0]]), AXIAL, (1, 1), ["a", "b"])
    assert plan.num_slices == 1 and plan.duplicates == [(1, 0)]


@pytest.mark.parametrize(
    ("orientation", "spacing", "positions", "words"),
    [
        ((1, 0, 0, 0, 0, 0), (1, 1), [[0, 0, 0], [0, 0, 1]], "zero direction"),
        ((1, 0, 0, 0.5, 0.866, 0), (1, 1), [[0, 0, 0], [0, 0, 1]], "not perpendicular"),
        ((1, 0, 0, 0, 1), (1, 1), [[0, 0, 0], [0, 0, 1]], "6 finite numbers"),
        (AXIAL, (0, 1), [[0, 0, 0], [0, 0, 1]], "PixelSpacing"),
        (AXIAL, (1, 1), [[0, 0, 0], [5, 0, 0]], "same plane"),
        (AXIAL, (1, 1), [[0, 0, np.nan], [0, 0, 1]], "not finite"),
    ],
)
def test_invalid_geometry_raises_with_the_reason(orientation, spacing, positions, words):
    with pytest.raises(SeriesGeometryError, match=words):
        plan_stack(np.array(positions, dtype=float), orientation, spacing, ["a", "b"], where="series/")


@settings(max_examples=40, deadline=None)
@given(
    angles=st.tuples(*[st.floats(-3.1, 3.1)] * 3),
    spacing=st.floats(0.2, 8.0),
    num=st.integers(2, 12),
    seed=st.integers(0, 2**16),
)
def test_any_rotation_and_shuffle_recovers_the_grid(angles, spacing, num, seed):
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("xyz", angles).as_matrix()
    row, col, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    origin = np.array([12.0, -7.0, 30.0])
    order = np.random.default_rng(seed).permutation(num)
    pos = np.array([origin + k * spacing * normal for k in order])
    plan = plan_stack(pos, (*row, *col), (0.5, 0.6), _labels(num))
    assert [order[src] for src, _ in plan.slices] == list(range(num))
    assert plan.warnings == [] and plan.missing == [] and plan.duplicates == []
    np.testing.assert_allclose(plan.affine_lps[:3, 2], spacing * normal, atol=1e-9)
    np.testing.assert_allclose(plan.affine_lps[:3, 3], origin, atol=1e-9)
