"""Accuracy of ``render.rasterize`` against an independent exact ray caster.

For several meshes at random poses, casts one ray per pixel centre with Open3D's Embree
ray caster (or, without Open3D, trimesh's float64 ray/triangle intersector) and compares:

* coverage: fraction of pixels where one hits and the other does not (target <= 0.5%);
* face: among pixels hit by both and away from triangle edges (every reference
  barycentric >= ``--edge-margin``), the fraction that hit the same face (>= 99.9%);
* barycentrics: max abs difference on those pixels (<= 3e-4);
* depth: max relative difference on those pixels (<= 1e-5).

Usage::

    python benchmarks/check_render_accuracy.py [--mesh FILE ...] [--poses 4] [--size 256]

Exits with status 1 if a target is missed. Meshes: procedural shapes with irregular,
interpenetrating and concave parts, plus any mesh files given with ``--mesh``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import trimesh

from render import angles_to_pose, load_mesh, rasterize

TARGETS = {"coverage": 0.005, "same_face": 0.999, "bary": 3e-4, "depth": 1e-5}


def procedural_meshes(seed: int = 0) -> dict[str, trimesh.Trimesh]:
    rng = np.random.default_rng(seed)
    bumpy = trimesh.creation.icosphere(subdivisions=4)
    bumpy.vertices *= (1 + 0.15 * rng.standard_normal(len(bumpy.vertices)))[:, None]
    chair = trimesh.util.concatenate(
        [trimesh.creation.box(extents=(1.0, 0.1, 1.0), transform=trimesh.transformations.translation_matrix(p))
         for p in [(0, 0, 0)]]
        + [trimesh.creation.box(extents=(0.1, 0.8, 0.1), transform=trimesh.transformations.translation_matrix(p))
           for p in [(0.43, -0.4, 0.43), (-0.43, -0.4, 0.43), (0.43, -0.4, -0.43), (-0.43, -0.4, -0.43)]]
        + [trimesh.creation.box(extents=(0.96, 1.0, 0.1), transform=trimesh.transformations.translation_matrix((0, 0.5, -0.43)))]
    )  # parts interpenetrate but no two faces are coplanar (coplanar overlaps tie in depth)
    return {
        "bumpy sphere": bumpy,
        "torus": trimesh.creation.torus(major_radius=0.8, minor_radius=0.3, major_sections=48, minor_sections=24),
        "chair (interpenetrating boxes)": chair,
        "capsule": trimesh.creation.capsule(height=1.2, radius=0.4, count=[24, 24]),
        "annulus": trimesh.creation.annulus(r_min=0.5, r_max=1.0, height=0.5, sections=64),
    }


def cast_open3d(verts_cam: np.ndarray, faces: np.ndarray, dirs: np.ndarray):
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    mesh = o3d.t.geometry.TriangleMesh()
    mesh.vertex.positions = o3d.core.Tensor(verts_cam.astype(np.float32))
    mesh.triangle.indices = o3d.core.Tensor(faces.astype(np.int32))
    scene.add_triangles(mesh)
    rays = o3d.core.Tensor(np.concatenate([np.zeros_like(dirs), dirs], axis=1).astype(np.float32))
    ans = scene.cast_rays(rays)
    face = ans["primitive_ids"].numpy().astype(np.int64)
    hit = face != np.iinfo(np.uint32).max
    face = np.where(hit, face, -1)
    uv = ans["primitive_uvs"].numpy().astype(np.float64)
    bary = np.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
    depth = ans["t_hit"].numpy().astype(np.float64) * dirs[:, 2]
    return face, bary, depth


def cast_trimesh(verts_cam: np.ndarray, faces: np.ndarray, dirs: np.ndarray):
    from trimesh.ray.ray_triangle import RayMeshIntersector

    mesh = trimesh.Trimesh(verts_cam, faces, process=False)
    tri, ray, loc = RayMeshIntersector(mesh).intersects_id(
        np.zeros_like(dirs), dirs, multiple_hits=False, return_locations=True
    )
    face = np.full(len(dirs), -1)
    face[ray] = tri
    bary = np.zeros((len(dirs), 3))
    bary[ray] = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], loc)
    depth = np.zeros(len(dirs))
    depth[ray] = loc[:, 2]
    return face, bary, depth


def compare(mesh: trimesh.Trimesh, pose_seed: int, size: int, edge_margin: float, caster) -> dict[str, float]:
    g = torch.Generator().manual_seed(pose_seed)
    az, el, th = (torch.rand(3, generator=g) * torch.tensor([2 * np.pi, 1.6, 1.0]) - torch.tensor([0, 0.8, 0.5])).tolist()
    R, t = angles_to_pose(torch.tensor(az), torch.tensor(el), torch.tensor(th), torch.tensor(3.5))
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)
    verts = verts - verts.mean(0)
    verts = verts / verts.norm(dim=1).max()
    verts_cam = verts @ R.T.float() + t.float()
    f = size * 1.4
    K = torch.tensor([[f, 0.0, (size - 1) / 2], [0.0, f, (size - 1) / 2], [0.0, 0.0, 1.0]])
    frags = rasterize(verts_cam[None], torch.tensor(mesh.faces, dtype=torch.int64), K, (size, size))
    ours_face = frags.pix_to_face[0, ..., 0].reshape(-1).numpy()
    ours_bary = frags.bary[0, ..., 0, :].reshape(-1, 3).double().numpy()
    ours_depth = frags.zbuf[0, ..., 0].reshape(-1).double().numpy()

    jj, ii = np.meshgrid(np.arange(size), np.arange(size))
    pix = np.stack([jj.ravel(), ii.ravel(), np.ones(size * size)], axis=0)
    dirs = (np.linalg.inv(K.double().numpy()) @ pix).T
    ref_face, ref_bary, ref_depth = caster(verts_cam.double().numpy(), np.asarray(mesh.faces), dirs)

    coverage = np.mean((ours_face >= 0) != (ref_face >= 0))
    interior = (ours_face >= 0) & (ref_face >= 0) & (ref_bary.min(axis=1) >= edge_margin)
    same = ours_face[interior] == ref_face[interior]
    both = interior.copy()
    both[interior] = same
    return {
        "coverage": float(coverage),
        "same_face": float(same.mean()) if same.size else 1.0,
        "bary": float(np.abs(ours_bary[both] - ref_bary[both]).max()) if both.any() else 0.0,
        "depth": float((np.abs(ours_depth[both] - ref_depth[both]) / ref_depth[both]).max()) if both.any() else 0.0,
        "pixels": int(interior.sum()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mesh", nargs="*", default=[], help="extra mesh files (OBJ, PLY, OFF, STL, GLB)")
    parser.add_argument("--poses", type=int, default=4, help="random poses per mesh")
    parser.add_argument("--size", type=int, default=256, help="image size (square)")
    parser.add_argument("--reference", choices=["auto", "open3d", "trimesh"], default="auto",
                        help="ray caster to compare with (auto: Open3D when installed)")
    parser.add_argument("--edge-margin", type=float, default=1e-3,
                        help="a pixel is 'away from edges' when every reference barycentric is >= this")
    args = parser.parse_args(argv)
    use_open3d = args.reference == "open3d"
    if args.reference == "auto":
        try:
            import open3d  # noqa: F401

            use_open3d = True
        except Exception:
            use_open3d = False
    if use_open3d:
        caster, caster_name = cast_open3d, "Open3D Embree (float32)"
    else:
        caster, caster_name = cast_trimesh, "trimesh ray_triangle (float64)"
    meshes = procedural_meshes()
    for path in args.mesh:
        m = load_mesh(path)
        meshes[path] = trimesh.Trimesh(m.verts.numpy(), m.faces.numpy(), process=False)

    print(f"reference: {caster_name}; {args.poses} random poses per mesh; {args.size}x{args.size}")
    header = f"{'mesh':32s} {'faces':>7s} {'coverage diff':>13s} {'same face':>10s} {'max |dbary|':>11s} {'max rel dz':>10s}"
    print(header)
    print("-" * len(header))
    worst = {"coverage": 0.0, "same_face": 1.0, "bary": 0.0, "depth": 0.0}
    for name, mesh in meshes.items():
        for p in range(args.poses):
            r = compare(mesh, p, args.size, args.edge_margin, caster)
            print(f"{name[:32]:32s} {len(mesh.faces):7d} {r['coverage']:13.5%} {r['same_face']:10.5%} "
                  f"{r['bary']:11.2e} {r['depth']:10.2e}")
            worst = {
                "coverage": max(worst["coverage"], r["coverage"]),
                "same_face": min(worst["same_face"], r["same_face"]),
                "bary": max(worst["bary"], r["bary"]),
                "depth": max(worst["depth"], r["depth"]),
            }
    ok = (worst["coverage"] <= TARGETS["coverage"] and worst["same_face"] >= TARGETS["same_face"]
          and worst["bary"] <= TARGETS["bary"] and worst["depth"] <= TARGETS["depth"])
    print("-" * len(header))
    print(f"{'worst':32s} {'':7s} {worst['coverage']:13.5%} {worst['same_face']:10.5%} "
          f"{worst['bary']:11.2e} {worst['depth']:10.2e}")
    print(f"{'target':32s} {'':7s} {'<= 0.5%':>13s} {'>= 99.9%':>10s} {'<= 3e-4':>11s} {'<= 1e-5':>10s}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
