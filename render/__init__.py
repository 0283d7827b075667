"""render: the differentiable feature-rendering core.

Cameras and pose conventions, mesh I/O and neural-mesh surfaces, rasterization,
attribute interpolation and RGB shading, in pure PyTorch (CPU and CUDA). Conventions
(camera axes, pixel centres, viewpoint angles) are in ``docs/conventions.md``.

Example: render a sphere's depth at azimuth 30 degrees::

    >>> import math, torch, trimesh
    >>> from render import angles_to_pose, default_intrinsics, rasterize
    >>> sphere = trimesh.creation.icosphere(subdivisions=2)
    >>> verts = torch.tensor(sphere.vertices, dtype=torch.float32)
    >>> faces = torch.tensor(sphere.faces, dtype=torch.int64)
    >>> R, t = angles_to_pose(math.radians(30), 0.2, 0.0, 4.0)
    >>> K = default_intrinsics((64, 64))
    >>> frags = rasterize((verts @ R.T + t)[None], faces, K, (64, 64))
    >>> round(float(frags.zbuf[0, 31, 31, 0]), 1)  # the front of the unit sphere, 1 before its centre
    3.0
"""

from .cameras import (
    DEFAULT_FOCAL_FACTOR,
    angles_to_pose,
    camera_center,
    default_intrinsics,
    geodesic_distance,
    intrinsics,
    intrinsics_from_fov,
    intrinsics_from_opengl_projection,
    look_at,
    mean_rotation,
    opencv_to_opengl,
    opencv_to_pytorch3d,
    opencv_to_pytorch3d_view,
    opengl_projection,
    opengl_to_opencv,
    pose_to_angles,
    project_points,
    pytorch3d_to_opencv,
    pytorch3d_to_opencv_view,
    rotation_z,
)
from .interpolate import interpolate, interpolate_reference
from .mesh import (
    MESH_FORMATS,
    Mesh,
    MeshError,
    center_and_scale,
    cuboid_surface,
    is_closed_outward,
    load_mesh,
    remesh_surface,
    save_mesh,
    validate_mesh,
)
from .rasterize import Fragments, rasterize, rasterize_reference
from .shading import (
    DirectionalLight,
    ShadowMap,
    directional_shadow,
    face_normals,
    render_rgb,
    sample_texture,
    shade,
    soft_silhouette,
    soft_silhouette_reference,
    vertex_normals,
)

__all__ = [
    # cameras and pose conventions
    "DEFAULT_FOCAL_FACTOR",
    "angles_to_pose",
    "pose_to_angles",
    "look_at",
    "rotation_z",
    "camera_center",
    "project_points",
    "intrinsics",
    "intrinsics_from_fov",
    "default_intrinsics",
    "geodesic_distance",
    "mean_rotation",
    "opencv_to_pytorch3d",
    "pytorch3d_to_opencv",
    "opencv_to_pytorch3d_view",
    "pytorch3d_to_opencv_view",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "opengl_projection",
    "intrinsics_from_opengl_projection",
    # meshes
    "MESH_FORMATS",
    "Mesh",
    "MeshError",
    "load_mesh",
    "save_mesh",
    "validate_mesh",
    "center_and_scale",
    "cuboid_surface",
    "is_closed_outward",
    "remesh_surface",
    # rasterization and interpolation
    "Fragments",
    "rasterize",
    "rasterize_reference",
    "interpolate",
    "interpolate_reference",
    # shading
    "DirectionalLight",
    "face_normals",
    "vertex_normals",
    "sample_texture",
    "shade",
    "render_rgb",
    "soft_silhouette",
    "soft_silhouette_reference",
    "directional_shadow",
    "ShadowMap",
]
