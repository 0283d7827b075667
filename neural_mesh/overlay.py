"""Draw a mesh at a pose over a photo: the at-a-glance check of a fitted pose.

:func:`overlay` renders the mesh at ``(R, t)`` with the photo's own intrinsics ``K``
(:func:`render.render_rgb`: Lambertian shading of one flat colour), blends the render over
the photo with opacity ``alpha`` and draws the outline of the rendered silhouette on top,
so that a pose that does not fit shows as a silhouette beside or across the object.
Frames and pixel centres follow ``docs/conventions.md``: ``X_cam = R @ X + t`` with ``X``
the mesh's own vertex coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from render import DirectionalLight, Mesh, render_rgb
from render.checks import check_finite, check_floating, check_shape

__all__ = ["overlay", "silhouette_outline", "OVERLAY_COLOR", "OUTLINE_COLOR"]

#: Colour (RGB in [0, 1]) of the shaded mesh in :func:`overlay`.
OVERLAY_COLOR = (0.2, 0.75, 1.0)
#: Colour of the silhouette outline in :func:`overlay`.
OUTLINE_COLOR = (1.0, 0.85, 0.0)


def silhouette_outline(mask: torch.Tensor, width: int = 1) -> torch.Tensor:
    """The pixels of ``mask`` within ``width`` pixels (chessboard distance) of a pixel
    outside it; pixels beyond the image border do not count as outside.

    Args:
        mask: ``(H, W)`` bool.
        width: outline thickness in pixels, ``>= 1``.

    Returns:
        ``(H, W)`` bool.

    >>> m = torch.zeros(5, 5, dtype=torch.bool); m[1:4, 1:4] = True
    >>> silhouette_outline(m).int().tolist()[2]
    [0, 1, 0, 1, 0]
    """
    check_shape("mask", mask, ["H", "W"])
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected dtype torch.bool, got {mask.dtype}")
    if int(width) < 1:
        raise ValueError(f"width: expected >= 1, got {width}")
    w = int(width)
    outside = (~mask).to(torch.float32)[None, None]
    near_outside = F.max_pool2d(outside, 2 * w + 1, stride=1, padding=w)[0, 0] > 0
    return mask & near_outside


def overlay(
    image: torch.Tensor,
    mesh: Mesh,
    R: torch.Tensor,
    t: torch.Tensor,
    K: torch.Tensor,
    *,
    alpha: float = 0.5,
    color: Sequence[float] = OVERLAY_COLOR,
    outline_color: Sequence[float] = OUTLINE_COLOR,
    outline_width: int | None = None,
) -> np.ndarray:
    """Render ``mesh`` at pose ``(R, t)`` with intrinsics ``K`` over ``image``.

    Covered pixels become ``(1 - alpha) * photo + alpha * shaded mesh`` (the mesh shaded
    in ``color`` under :class:`render.DirectionalLight`'s default light), then the
    silhouette's outline (:func:`silhouette_outline`) is painted in ``outline_color``.
    Where the mesh misses the image (or lies behind the camera) the photo is unchanged.

    Args:
        image: ``(3, H, W)`` float RGB in [0, 1], the photo.
        mesh: the mesh, in the frame that ``R, t`` map to the camera.
        R: ``(3, 3)``, t: ``(3,)``: ``X_cam = R @ X + t`` for the mesh's vertices ``X``.
        K: ``(3, 3)`` intrinsics of ``image`` (pixels, OpenCV convention).
        alpha: opacity of the shaded mesh, in [0, 1].
        color, outline_color: RGB in [0, 1].
        outline_width: pixels; default ``max(1, round(max(H, W) / 200))``.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Example:
        >>> from render import angles_to_pose, cuboid_surface, default_intrinsics
        >>> box = cuboid_surface(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), num_verts=50, coverage=1)
        >>> R, t = angles_to_pose(0.5, 0.3, 0.0, 6.0)
        >>> out = overlay(torch.zeros(3, 40, 60), box, R, t, default_intrinsics((40, 60)))
        >>> out.shape, out.dtype, out[0, 0].tolist(), bool(out[20, 30].any())
        ((40, 60, 3), dtype('uint8'), [0, 0, 0], True)
    """
    dims = check_shape("image", image, [3, "H", "W"])
    check_floating("image", image)
    check_finite("image", image)
    check_shape("R", R, [3, 3])
    check_shape("t", t, [3])
    check_shape("K", K, [3, 3])
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    H, W = dims["H"], dims["W"]
    width = max(1, round(max(H, W) / 200)) if outline_width is None else int(outline_width)
    dtype, device = mesh.verts.dtype, mesh.verts.device
    R, t, K = (x.to(device, dtype) for x in (R, t, K))
    verts_cam = (mesh.verts @ R.T + t)[None]
    colors = torch.tensor(list(color), dtype=dtype, device=device).expand(mesh.num_verts, 3)
    out = render_rgb(verts_cam, mesh.faces, K, (H, W), vertex_colors=colors, light=DirectionalLight())
    shaded, mask = out["image"][0], out["mask"][0]
    photo = image.to(device, dtype).clamp(0.0, 1.0)
    blended = torch.where(mask[None], (1.0 - alpha) * photo + alpha * shaded, photo)
    edge = silhouette_outline(mask, width)
    line = torch.tensor(list(outline_color), dtype=dtype, device=device)[:, None, None]
    blended = torch.where(edge[None], line.expand(3, H, W), blended)
    return (blended.permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
