"""Optional PyTorch3D backend returning the same :class:`~render.rasterize.Fragments`.

Only usable where ``pytorch3d`` is importable (it cannot be installed from every package
registry); :func:`available` says whether it is. The conversion to PyTorch3D's
conventions is done here, once:

* PyTorch3D rasterizes vertices given in its NDC screen space: ``+X`` left, ``+Y`` up,
  the shorter image side spanning ``[-1, 1]``, and pixel ``(row i, column j)`` centred at
  ``x = -(2j + 1 - W) / S``, ``y = -(2i + 1 - H) / S`` with ``S = min(H, W)``. Our pixel
  centre is ``(u, v) = (j, i)``, so a camera-frame vertex projected to ``(u, v)`` goes to
  ``x = -(2u + 1 - W) / S``, ``y = -(2v + 1 - H) / S``; its z stays the camera depth, so
  that PyTorch3D's perspective-correct barycentrics and ``zbuf`` match ours.
* PyTorch3D's ``pix_to_face`` indexes packed faces (``b * F + f``); we return ``f``.

All vertices must lie in front of the camera (``z > 0``): the projection to NDC divides
by z. Faces crossing the camera plane are handled by :func:`render.rasterize` only.
"""

from __future__ import annotations

import torch

from .rasterize import Fragments, _check_inputs

__all__ = ["available", "rasterize_pytorch3d"]


def available() -> bool:
    """True when ``pytorch3d`` can be imported."""
    try:
        import pytorch3d.renderer  # noqa: F401
    except Exception:
        return False
    return True


def rasterize_pytorch3d(
    verts: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    image_size: tuple[int, int],
    *,
    faces_per_pixel: int = 1,
    cull_backfaces: bool = False,
) -> Fragments:
    """:func:`render.rasterize` computed by PyTorch3D's ``rasterize_meshes``.

    Same arguments (camera-frame ``verts (B, V, 3)``, ``faces (F, 3)``, ``K``, ``(H, W)``)
    and the same :class:`Fragments` conventions. Raises ``ImportError`` when PyTorch3D is
    missing and ``ValueError`` when a vertex is not in front of the camera.
    """
    if not available():
        raise ImportError("rasterize_pytorch3d needs the pytorch3d package, which is not installed")
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    K, h, w = _check_inputs(verts, faces, K, image_size, faces_per_pixel)
    if bool((verts[..., 2] <= 0).any()):
        raise ValueError("verts: the PyTorch3D backend needs every vertex in front of the camera (z > 0)")
    bsz, nf = verts.shape[0], faces.shape[0]
    z = verts[..., 2]
    proj = verts @ K.transpose(1, 2)
    u, v = proj[..., 0] / z, proj[..., 1] / z
    s = float(min(h, w))
    ndc = torch.stack([-(2 * u + 1 - w) / s, -(2 * v + 1 - h) / s, z], dim=-1)
    meshes = Meshes(verts=list(ndc), faces=[faces] * bsz)
    p2f, zbuf, bary, _ = rasterize_meshes(
        meshes,
        image_size=(h, w),
        blur_radius=0.0,
        faces_per_pixel=int(faces_per_pixel),
        perspective_correct=True,
        cull_backfaces=cull_backfaces,
    )
    offset = (torch.arange(bsz, device=verts.device) * nf).view(bsz, 1, 1, 1)
    p2f = torch.where(p2f >= 0, p2f - offset, p2f)
    return Fragments(pix_to_face=p2f, bary=bary, zbuf=zbuf)
