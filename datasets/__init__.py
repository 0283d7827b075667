"""datasets: the synthetic pose-data engine and loaders for real pose datasets.

Every dataset yields samples following one schema (:mod:`datasets.schema`).
"""

from .objectnet3d import NOVEL_CATEGORIES, ObjectNet3D
from .pascal3d import PASCAL3D_CATEGORIES, Pascal3DPlus, pascal_to_pose
from .pix3d import Pix3D, pix3d_to_pose
from .realdata import DatasetError
from .schema import OPTIONAL_KEYS, REQUIRED_KEYS, check_sample
from .shapes import CATEGORIES, Shape, load_shape, make_shape, shape_contact_sheet, shape_from_mesh

__all__ = [
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "check_sample",
    "CATEGORIES",
    "Shape",
    "make_shape",
    "shape_from_mesh",
    "load_shape",
    "shape_contact_sheet",
    "DatasetError",
    "Pascal3DPlus",
    "PASCAL3D_CATEGORIES",
    "pascal_to_pose",
    "ObjectNet3D",
    "NOVEL_CATEGORIES",
    "Pix3D",
    "pix3d_to_pose",
]
