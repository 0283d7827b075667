"""The one sample schema every dataset in this package yields (DESIGN.md, "Public contracts").

A sample is a ``dict``; keys are absent only when unknown (a real photo without a CAD
model has no ``points``). Frames and units follow ``docs/conventions.md``: ``K`` in pixels
(OpenCV), ``X_cam = R @ X_obj + t`` with the object frame +y up, angles in radians.

==================  =====================  ==============================================
key                 type / shape           meaning
==================  =====================  ==============================================
image               float32 (3, H, W)      RGB in [0, 1]
mask                bool (H, W)            the object's silhouette, including the parts
                                           hidden by occluders (loaders that only know
                                           the visible part say so)
K                   float32 (3, 3)         intrinsics, pixels
R                   float32 (3, 3)         object -> camera rotation
t                   float32 (3,)           object -> camera translation
azimuth             float                  viewpoint angles (radians) and distance, as
elevation           float                  defined by ``render.angles_to_pose``
theta               float
distance            float
category            str                    object category
mesh_id             str                    which shape / CAD model
bbox                float32 (4,)           x0, y0, x1, y1 of the whole object: inclusive
                                           pixel indices (first and last mask column and
                                           row; pixel centres at integers)
occlusion           float                  fraction of the object's pixels hidden, [0, 1]
occluder_mask       bool (H, W)            pixels covered by occluders (synthetic data)
points              float32 (N, 3)         object point cloud, object frame (on request)
vertex_uv           float32 (V, 2)         neural-mesh vertex projections (u, v), pixels
vertex_visible      bool (V,)              not self-occluded and inside the image
views               float32 (Nv, 5, h, w)  the bare shape at fixed canonical views
                                           (synthetic data: silhouette, camera depth,
                                           camera-frame normal xyz; 0 on background)
==================  =====================  ==============================================
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

__all__ = ["REQUIRED_KEYS", "OPTIONAL_KEYS", "check_sample"]

#: Keys every sample carries.
REQUIRED_KEYS = ("image", "K", "category")
#: Keys present when known or requested.
OPTIONAL_KEYS = (
    "mask", "R", "t", "azimuth", "elevation", "theta", "distance", "mesh_id", "bbox", "occlusion",
    "occluder_mask", "points", "vertex_uv", "vertex_visible", "views",
)

_TENSOR_SPECS = {
    "image": (torch.float32, ("3", "H", "W")),
    "mask": (torch.bool, ("H", "W")),
    "occluder_mask": (torch.bool, ("H", "W")),
    "K": (torch.float32, (3, 3)),
    "R": (torch.float32, (3, 3)),
    "t": (torch.float32, (3,)),
    "bbox": (torch.float32, (4,)),
    "points": (torch.float32, ("N", 3)),
    "vertex_uv": (torch.float32, ("V", 2)),
    "vertex_visible": (torch.bool, ("V",)),
    "views": (torch.float32, ("Nv", "5", "h", "w")),
}
_SCALARS = ("azimuth", "elevation", "theta", "distance", "occlusion")


def check_sample(sample: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the key if ``sample`` breaks the schema above.

    >>> import torch
    >>> check_sample({"image": torch.zeros(3, 4, 5), "K": torch.eye(3), "category": "car"})
    >>> check_sample({"image": torch.zeros(4, 5), "K": torch.eye(3), "category": "car"})
    Traceback (most recent call last):
    ...
    ValueError: sample['image']: expected shape (3, H, W), got (4, 5)
    """
    for key in REQUIRED_KEYS:
        if key not in sample:
            raise ValueError(f"sample: missing required key {key!r}")
    unknown = set(sample) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
    if unknown:
        raise ValueError(f"sample: unknown keys {sorted(unknown)}")
    sizes: dict[str, int] = {}
    for key, (dtype, dims) in _TENSOR_SPECS.items():
        if key not in sample:
            continue
        x = sample[key]
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"sample[{key!r}]: expected a tensor, got {type(x).__name__}")
        expected = "(" + ", ".join(str(d) for d in dims) + ")"
        if x.dtype != dtype:
            raise ValueError(f"sample[{key!r}]: expected dtype {dtype}, got {x.dtype}")
        ok = x.dim() == len(dims)
        for d, s in zip(dims, x.shape):
            if not ok:
                break
            if isinstance(d, int) or d.isdigit():
                ok = s == int(d)
            else:
                ok = sizes.setdefault(d, s) == s
        if not ok:
            raise ValueError(f"sample[{key!r}]: expected shape {expected}, got {tuple(x.shape)}")
    for key in _SCALARS:
        if key in sample and not isinstance(sample[key], (float, int)):
            raise ValueError(f"sample[{key!r}]: expected a Python float, got {type(sample[key]).__name__}")
    if "occlusion" in sample and not 0.0 <= float(sample["occlusion"]) <= 1.0:
        raise ValueError(f"sample['occlusion']: expected a fraction in [0, 1], got {sample['occlusion']}")
    for key in ("category", "mesh_id"):
        if key in sample and not isinstance(sample[key], str):
            raise ValueError(f"sample[{key!r}]: expected a str, got {type(sample[key]).__name__}")
