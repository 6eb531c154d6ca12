import numpy as np
import pytest

from medres3d.errors import ConfigError
from medres3d.synthetic import ORIENTATIONS, centered_origin, make_affine, slice_geometry


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_affine_columns_are_scaled_orthonormal_directions(orientation):
    affine = make_affine((0.5, 0.8, 2.0), orientation, origin=(1, 2, 3))
    rzs = affine[:3, :3]
    np.testing.assert_allclose(np.linalg.norm(rzs, axis=0), [0.5, 0.8, 2.0])
    directions = rzs / np.linalg.norm(rzs, axis=0)
    np.testing.assert_allclose(directions.T @ directions, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(affine[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(affine[3], [0, 0, 0, 1])


def test_named_orientations_follow_the_documented_axes():
    import nibabel as nib

    codes = {
        o: "".join(nib.aff2axcodes(make_affine(orientation=o))) for o in ("axial", "coronal", "sagittal")
    }
    assert codes == {"axial": "RAS", "coronal": "RSA", "sagittal": "ASR"}
    assert "".join(nib.aff2axcodes(make_affine(flip=(True, False, True)))) == "LAI"


def test_oblique_is_not_axis_aligned():
    directions = make_affine(orientation="oblique")[:3, :3]
    assert np.all(np.abs(directions).max(axis=0) < 0.99)


def test_tilt_shears_the_slice_plane_and_geometry_reports_it():
    affine = make_affine((1, 1, 2), tilt_deg=15.0)
    geometry = slice_geometry(affine, 4)
    assert geometry.tilt_deg == pytest.approx(15.0)
    # Slices still stacked along the table (z), the plane normal tilted away from it.
    np.testing.assert_allclose(np.array(geometry.positions[1]) - geometry.positions[0], [0, 0, 2.0])
    assert geometry.spacing_between_slices == pytest.approx(2.0 * np.cos(np.deg2rad(15.0)))


def test_centered_origin_puts_the_middle_voxel_at_zero():
    affine = centered_origin((9, 5, 7), make_affine((2, 3, 4), "oblique", flip=(True, False, False)))
    np.testing.assert_allclose(affine @ [4, 2, 3, 1], [0, 0, 0, 1], atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"spacing": (1, 0, 1)}, "spacing"),
        ({"orientation": "diagonal"}, "orientation"),
        ({"flip": (True,)}, "flip"),
        ({"tilt_deg": 75}, "tilt_deg"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_affine(**kwargs)
