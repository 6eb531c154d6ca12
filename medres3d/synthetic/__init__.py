"""Synthetic CT/MRI phantoms and writers of realistic test files (NIfTI, DICOM series and objects).

Used by the tests of every part of medres3d and by ``medres3d demo``. Nothing here needs torch.

Example:
    >>> import tempfile
    >>> from medres3d.synthetic import ct_phantom, make_affine, write_dicom_series
    >>> vol = ct_phantom((32, 32, 16), lesion=True, seed=1)
    >>> files = write_dicom_series(vol, make_affine((1, 1, 2), "axial"), tempfile.mkdtemp())
    >>> len(files)
    16
"""

from medres3d.synthetic.datasets import MessyTree, make_messy_dicom_tree, make_phantom_dataset
from medres3d.synthetic.dicom_common import SUPPORTED_SYNTAXES, SliceGeometry, slice_geometry
from medres3d.synthetic.dicom_objects import write_non_image_object
from medres3d.synthetic.dicom_writer import write_dicom_series, write_enhanced_dicom, write_localizer
from medres3d.synthetic.geometry import ORIENTATIONS, centered_origin, make_affine
from medres3d.synthetic.nifti_writer import write_nifti
from medres3d.synthetic.phantoms import ct_phantom, mri_phantom, sphere_mask

__all__ = [
    "ORIENTATIONS",
    "SUPPORTED_SYNTAXES",
    "MessyTree",
    "SliceGeometry",
    "centered_origin",
    "ct_phantom",
    "make_affine",
    "make_messy_dicom_tree",
    "make_phantom_dataset",
    "mri_phantom",
    "slice_geometry",
    "sphere_mask",
    "write_dicom_series",
    "write_enhanced_dicom",
    "write_localizer",
    "write_nifti",
    "write_non_image_object",
]
