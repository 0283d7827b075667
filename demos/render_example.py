"""Render a mesh at a few poses: shaded RGB, depth, and a colour-coded feature image.

This is what ``make demo`` runs until pose fitting (``demos/fit_pose.py``) lands. It
exercises the whole render core: mesh loading, viewpoint angles -> pose, rasterization,
interpolation of 16-d per-vertex features (shown through a fixed 16 -> 3 projection), and
Lambertian shading.

Usage::

    python demos/render_example.py [--mesh demos/data/chair.obj] [--out outputs/demo]
                                   [--size 256] [--views 4]

Writes ``view_<i>_{rgb,depth,features}.png`` per view and ``summary.png`` (all views,
one row per kind) into ``--out``. Bad input (missing or unreadable mesh, bad size) gives
a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from render import (
    DirectionalLight,
    MeshError,
    angles_to_pose,
    center_and_scale,
    default_intrinsics,
    interpolate,
    load_mesh,
    rasterize,
    shade,
)
from render.allocator import tune_cpu_allocator

DEFAULT_MESH = Path(__file__).resolve().parent / "data" / "chair.obj"


def vertex_features(verts: torch.Tensor, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth unit features of the object-frame position (random Fourier features)."""
    g = torch.Generator().manual_seed(seed)
    freqs = torch.randn(3, dim // 2, generator=g) * 2.0
    proj = verts @ freqs
    feats = torch.cat([proj.sin(), proj.cos()], dim=-1)
    return torch.nn.functional.normalize(feats, dim=-1)


def features_to_rgb(feat_img: torch.Tensor, mask: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """(H, W, C) features -> (H, W, 3) colours in [0, 1] through a fixed random projection."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.nn.functional.normalize(torch.randn(feat_img.shape[-1], 3, generator=g), dim=0)
    rgb = (feat_img @ proj) * 0.5 + 0.5
    return rgb.clamp(0, 1) * mask[..., None]


def depth_to_rgb(depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Near = bright, far = dark, background black."""
    if not bool(mask.any()):
        return torch.zeros(*depth.shape, 3)
    near, far = depth[mask].min(), depth[mask].max()
    level = 1.0 - 0.8 * (depth - near) / (far - near + 1e-9)
    return (level * mask)[..., None].expand(*depth.shape, 3)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def render_views(mesh_path: Path, out: Path, size: int, views: int) -> list[Path]:
    mesh = load_mesh(mesh_path)
    mesh, _, _ = center_and_scale(mesh, center="bbox", scale="radius", target=1.0)
    faces = mesh.faces
    colors = mesh.vertex_colors
    if colors is None:  # colour by height so the shading reads well
        y = mesh.verts[:, 1]
        t = ((y - y.min()) / (y.max() - y.min() + 1e-9))[:, None]
        colors = (1 - t) * torch.tensor([0.75, 0.45, 0.25]) + t * torch.tensor([0.95, 0.8, 0.55])
    feats = vertex_features(mesh.verts)
    K = default_intrinsics((size, size))
    az = torch.tensor([math.radians(30 + 360 * i / views) for i in range(views)])
    el = torch.tensor([math.radians(20 - 25 * (i % 2)) for i in range(views)])
    R, t = angles_to_pose(az, el, torch.zeros(views), torch.full((views,), 3.2))
    verts_cam = mesh.verts[None] @ R.transpose(1, 2) + t[:, None]
    frags = rasterize(verts_cam, faces, K, (size, size))
    rgb = shade(frags, faces, verts_cam, vertex_colors=colors[None], light=DirectionalLight(),
                background=(1.0, 1.0, 1.0))
    feat = interpolate(frags, faces, feats[None])
    out.mkdir(parents=True, exist_ok=True)
    written, rows = [], {"rgb": [], "depth": [], "features": []}
    for i in range(views):
        mask = frags.mask[i]
        images = {
            "rgb": rgb[i].permute(1, 2, 0),
            "depth": depth_to_rgb(frags.zbuf[i, ..., 0], mask),
            "features": features_to_rgb(feat[i], mask),
        }
        for kind, img in images.items():
            path = out / f"view_{i}_{kind}.png"
            iio.imwrite(path, to_uint8(img))
            written.append(path)
            rows[kind].append(to_uint8(img))
    summary = np.concatenate([np.concatenate(r, axis=1) for r in rows.values()], axis=0)
    iio.imwrite(out / "summary.png", summary)
    written.append(out / "summary.png")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mesh", type=Path, default=DEFAULT_MESH, help="mesh file (OBJ, PLY, OFF, STL, GLB)")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (square)")
    parser.add_argument("--views", type=int, default=4, help="number of viewpoints")
    args = parser.parse_args(argv)
    if args.size < 8 or args.size > 4096:
        print(f"error: --size must be between 8 and 4096, got {args.size}", file=sys.stderr)
        return 2
    if args.views < 1:
        print(f"error: --views must be >= 1, got {args.views}", file=sys.stderr)
        return 2
    tune_cpu_allocator()
    try:
        written = render_views(args.mesh, args.out, args.size, args.views)
    except MeshError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} images to {args.out}/ (see {args.out / 'summary.png'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
