"""datasets: the synthetic pose-data engine and loaders for real pose datasets.

Every dataset yields samples following one schema (:mod:`datasets.schema`).
:mod:`datasets.raycast` draws test images with a second, independent renderer
(``from datasets.raycast import raycast_samples``).
"""

import importlib

from .objectnet3d import NOVEL_CATEGORIES, ObjectNet3D
from .pascal3d import PASCAL3D_CATEGORIES, Pascal3DPlus, pascal_to_pose
from .pix3d import Pix3D, pix3d_to_pose
from .realdata import DatasetError
from .schema import OPTIONAL_KEYS, REQUIRED_KEYS, check_sample
from .sequences import FramePairs, OrbitConfig, OrbitSequences
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
    "SyntheticConfig",
    "SyntheticDataset",
    "SyntheticFolder",
    "contact_sheet",
    "OrbitConfig",
    "OrbitSequences",
    "FramePairs",
    "DatasetError",
    "Pascal3DPlus",
    "PASCAL3D_CATEGORIES",
    "pascal_to_pose",
    "ObjectNet3D",
    "NOVEL_CATEGORIES",
    "Pix3D",
    "pix3d_to_pose",
]

# datasets.synthetic is also a program (python -m datasets.synthetic): import it lazily so
# that running it does not import the module twice.
_LAZY = {"SyntheticConfig", "SyntheticDataset", "SyntheticFolder", "contact_sheet"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(".synthetic", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
