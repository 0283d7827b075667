"""Interpolation of per-vertex attributes over rasterized fragments."""

from __future__ import annotations

import torch

from .checks import check_shape
from .rasterize import Fragments

__all__ = ["interpolate", "interpolate_reference"]


def interpolate(fragments: Fragments, faces: torch.Tensor, vertex_attrs: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes at every pixel with perspective-correct barycentrics.

    Args:
        fragments: output of :func:`render.rasterize` for ``B`` images of ``(H, W)``.
        faces: ``(F, 3)`` int64, the topology that was rasterized.
        vertex_attrs: ``(B, V, C)`` or ``(1, V, C)`` attributes (features, colours, depth,
            normals...), float; a leading 1 is shared by the whole batch.

    Returns:
        ``(B, H, W, C)`` values of the nearest face (``k = 0``), zero on background.
        Differentiable w.r.t. ``vertex_attrs`` and, through ``fragments.bary``, the
        vertex positions.

    Example:
        >>> import torch
        >>> from render import rasterize, interpolate
        >>> verts = torch.tensor([[[-1.0, -1.0, 5.0], [1.0, -1.0, 5.0], [0.0, 1.0, 5.0]]])
        >>> faces = torch.tensor([[0, 1, 2]])
        >>> K = torch.tensor([[10.0, 0.0, 4.0], [0.0, 10.0, 4.0], [0.0, 0.0, 1.0]])
        >>> frags = rasterize(verts, faces, K, (9, 9))
        >>> colours = torch.eye(3)[None]  # vertex i is the i-th unit colour
        >>> img = interpolate(frags, faces, colours)
        >>> img.shape, img[0, 0, 0].tolist()
        (torch.Size([1, 9, 9, 3]), [0.0, 0.0, 0.0])
    """
    p2f = fragments.pix_to_face[..., 0]
    bsz = p2f.shape[0]
    dims = check_shape("vertex_attrs", vertex_attrs, ["N", "V", "C"])
    if dims["N"] not in (1, bsz):
        raise ValueError(f"vertex_attrs: expected a leading dimension of 1 or {bsz}, got {dims['N']}")
    channels = dims["C"]
    idx = (p2f.reshape(-1) >= 0).nonzero().squeeze(1)
    face = p2f.reshape(-1).index_select(0, idx)
    vid = faces.index_select(0, face).reshape(-1)  # (N * 3,)
    if dims["N"] == 1:
        attrs = vertex_attrs[0].index_select(0, vid)
    else:
        b_idx = torch.div(idx, p2f.shape[1] * p2f.shape[2], rounding_mode="floor")
        vid = vid + (b_idx * dims["V"]).repeat_interleave(3)
        attrs = vertex_attrs.reshape(-1, channels).index_select(0, vid)
    attrs = attrs.view(-1, 3, channels)
    bary = fragments.bary[..., 0, :].reshape(-1, 3).index_select(0, idx).to(attrs.dtype)
    vals = (bary.unsqueeze(-1) * attrs).sum(1)  # (N, C)
    out = vals.new_zeros(p2f.numel(), channels).index_copy(0, idx, vals)
    return out.view(*p2f.shape, channels)


def interpolate_reference(fragments: Fragments, faces: torch.Tensor, vertex_attrs: torch.Tensor) -> torch.Tensor:
    """Slow reference for :func:`interpolate` (a loop over pixels); for tests only."""
    p2f = fragments.pix_to_face[..., 0]
    bsz, h, w = p2f.shape
    rows = []
    for b in range(bsz):
        attrs = vertex_attrs[b if vertex_attrs.shape[0] > 1 else 0]
        for i in range(h):
            for j in range(w):
                f = int(p2f[b, i, j])
                if f < 0:
                    rows.append(attrs.new_zeros(attrs.shape[1]))
                    continue
                bc = fragments.bary[b, i, j, 0].to(attrs.dtype)
                v = faces[f]
                rows.append(bc[0] * attrs[v[0]] + bc[1] * attrs[v[1]] + bc[2] * attrs[v[2]])
    return torch.stack(rows).view(bsz, h, w, -1)
