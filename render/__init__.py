"""render: the differentiable feature-rendering core.

Cameras and pose conventions, mesh I/O, rasterization, attribute interpolation and RGB
shading, in pure PyTorch (CPU and CUDA). Conventions: see docs/conventions.md.
"""

from .interpolate import interpolate, interpolate_reference
from .rasterize import Fragments, rasterize, rasterize_reference

__all__ = [
    "Fragments",
    "rasterize",
    "rasterize_reference",
    "interpolate",
    "interpolate_reference",
]
