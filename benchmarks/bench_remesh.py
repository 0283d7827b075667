"""How well ``render.remesh_surface`` keeps each procedural shape (the neural meshes' surface).

For one shape per category of the synthetic engine (or the mesh files given with
``--mesh``), remeshes the surface to ``--num-verts`` vertices and prints a table:

* closed in / out: whether the welded input, and the remesh, are closed with every face
  wound outward (``render.is_closed_outward``: the fit culls back faces only then);
* gap: the largest distance from points sampled on the input surface to the remesh, in
  the shape's units (procedural shapes: unit bounding sphere) and in vertex spacings; a
  part the remesh lost shows as a gap of several spacings;
* edge CV: the spread of the remesh's edge lengths (std / mean);
* seconds to remesh.

Usage::

    .venv/bin/python benchmarks/bench_remesh.py [--num-verts 400] [--normal-weight 0.5]
        [--seed 0] [--mesh FILE ...]

``--normal-weight`` is ``remesh_surface``'s (0: cells by position alone, as before the
remesh kept thin parts).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from datasets.shapes import CATEGORIES, make_shape
from render import Mesh, MeshError, is_closed_outward, load_mesh, remesh_surface
from render.mesh import NORMAL_WEIGHT


def surface_stats(mesh: Mesh, num_verts: int, normal_weight: float, samples: int = 3000) -> dict:
    """The table's columns for one mesh (module docstring)."""
    welded = trimesh.Trimesh(mesh.verts.double().numpy(), mesh.faces.numpy())  # merges vertices
    t0 = time.perf_counter()
    out = remesh_surface(mesh, num_verts, normal_weight=normal_weight)
    seconds = time.perf_counter() - t0
    points, _ = trimesh.sample.sample_surface(welded, samples, seed=0)
    remeshed = out.to_trimesh()
    _, gap, _ = trimesh.proximity.closest_point(remeshed, points)
    spacing = math.sqrt(2.0 * welded.area / (math.sqrt(3.0) * num_verts))
    lengths = remeshed.edges_unique_length
    return {
        "closed_in": is_closed_outward(torch.from_numpy(welded.vertices), torch.from_numpy(welded.faces)),
        "closed_out": is_closed_outward(out.verts, out.faces),
        "verts": out.num_verts,
        "gap": float(gap.max()),
        "gap_spacings": float(gap.max()) / spacing,
        "edge_cv": float(lengths.std() / lengths.mean()),
        "seconds": seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-verts", type=int, default=400, help="remesh vertex target (the builds' default)")
    p.add_argument("--normal-weight", type=float, default=NORMAL_WEIGHT,
                   help="weight of the normal in the clustering, in vertex spacings (remesh_surface's normal_weight)")
    p.add_argument("--seed", type=int, default=0, help="which procedural shape of each category")
    p.add_argument("--mesh", nargs="+", default=[], help="mesh files instead of the procedural shapes")
    args = p.parse_args(argv)
    if args.num_verts < 4 or not (math.isfinite(args.normal_weight) and args.normal_weight >= 0):
        p.error("expected --num-verts >= 4 and --normal-weight >= 0")
    if args.mesh:
        try:
            meshes = {Path(m).name: load_mesh(m) for m in args.mesh}
        except MeshError as error:  # names the file
            p.error(str(error))
    else:
        meshes = {c: make_shape(c, args.seed).mesh for c in CATEGORIES}
    print(f"remesh_surface to {args.num_verts} vertices, normal weight {args.normal_weight:g}")
    print("| mesh | closed in | closed out | vertices | gap | gap / spacing | edge CV | s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for name, mesh in meshes.items():
        r = surface_stats(mesh, args.num_verts, args.normal_weight)
        rows.append(r)
        print(f"| {name} | {'yes' if r['closed_in'] else 'no'} | {'yes' if r['closed_out'] else 'no'} | "
              f"{r['verts']} | {r['gap']:.3f} | {r['gap_spacings']:.2f} | {r['edge_cv']:.2f} | {r['seconds']:.2f} |")
    closed_in = [r for r in rows if r["closed_in"]]
    print(f"\nclosed remeshes of closed inputs: {sum(r['closed_out'] for r in closed_in)} of {len(closed_in)}; "
          f"largest gap {max(r['gap_spacings'] for r in rows):.2f} spacings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
