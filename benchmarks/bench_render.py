"""Speed and memory of the rasterizer, against Open3D (Embree) and PyTorch3D when installed.

Prints one table:

(a) 256x256 image, icosphere with 5,120 faces, one view: forward rasterization; beside it
    Open3D's Embree ray casting through the same pixel centres, and the ratio.
(b) NeMo-sized feature rendering: a ~1.1k-vertex cuboid, 128-d vertex features, a 32x84
    map: rasterize + interpolate forward and backward for one view, and forward for a
    batch of 144 views.
(c) peak memory (growth of the process's resident set) of (a) with a 327k-face mesh at
    512x512, measured in a fresh subprocess.

Usage::

    python benchmarks/bench_render.py [--repeat 30] [--threads N]

Times are medians over ``--repeat`` runs after a warm-up. The C allocator is tuned with
``render.allocator.tune_cpu_allocator`` (as the demos do) unless ``--default-allocator``
is given; the table header says which.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np
import torch
import trimesh

from render import angles_to_pose, cuboid_surface, interpolate, rasterize
from render.allocator import tune_cpu_allocator


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def icosphere_scene(size=256):
    mesh = trimesh.creation.icosphere(subdivisions=4)  # 5,120 faces
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)[None] + torch.tensor([0.0, 0.0, 3.0])
    faces = torch.tensor(mesh.faces, dtype=torch.int64)
    f = size * 1.0
    K = torch.tensor([[f, 0.0, (size - 1) / 2], [0.0, f, (size - 1) / 2], [0.0, 0.0, 1.0]])
    return verts, faces, K


def open3d_caster(verts, faces, K, size):
    """A function casting Open3D (Embree) rays through every pixel centre, or None."""
    try:
        import open3d as o3d
    except Exception:  # not installed, or its shared libraries are missing
        return None
    scene = o3d.t.geometry.RaycastingScene()
    mesh = o3d.t.geometry.TriangleMesh()
    mesh.vertex.positions = o3d.core.Tensor(verts[0].numpy().astype(np.float32))
    mesh.triangle.indices = o3d.core.Tensor(faces.numpy().astype(np.int32))
    scene.add_triangles(mesh)
    jj, ii = np.meshgrid(np.arange(size), np.arange(size))
    Kinv = np.linalg.inv(K.numpy().astype(np.float64))
    pix = np.stack([jj.ravel(), ii.ravel(), np.ones(size * size)], axis=0)
    dirs = (Kinv @ pix).T
    rays = o3d.core.Tensor(np.concatenate([np.zeros_like(dirs), dirs], axis=1).astype(np.float32))

    def cast():
        ans = scene.cast_rays(rays)
        return ans["primitive_ids"].numpy()

    return cast


def interleaved_median_ms(fns, repeat: int) -> list[float]:
    """Median times of several functions run alternately, so they share the same machine load."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) * 1e3 for ts in times]


def pytorch3d_available() -> bool:
    try:
        import pytorch3d  # noqa: F401
    except Exception:
        return False
    return True


def nemo_scene(batch: int):
    box = trimesh.creation.box(extents=(1.0, 0.6, 2.0))
    surface = cuboid_surface(torch.tensor(box.vertices, dtype=torch.float32), num_verts=1100)
    az = torch.linspace(0, 2 * torch.pi, batch + 1)[:-1]
    el = torch.full_like(az, 0.2)
    R, t = angles_to_pose(az, el, torch.zeros_like(az), torch.full_like(az, 5.0))
    verts_cam = surface.verts[None] @ R.transpose(1, 2) + t[:, None]
    f = 3000.0 / 8 / 5.0 * 1.6  # NeMo's stride-8 camera, object at distance 5, scaled to fill the map
    K = torch.tensor([[f, 0.0, 41.5], [0.0, f, 15.5], [0.0, 0.0, 1.0]])
    return verts_cam, surface.faces, K


def peak_memory_mb(tune: bool) -> tuple[float, int, int]:
    code = textwrap.dedent(
        f"""
        import torch, trimesh
        from render import rasterize
        from render.allocator import tune_cpu_allocator
        if {tune}:
            tune_cpu_allocator()

        def status(key):  # kB, from the kernel's accounting of this process
            with open("/proc/self/status") as fh:
                return next(int(line.split()[1]) for line in fh if line.startswith(key))

        m = trimesh.creation.icosphere(subdivisions=7)
        v = torch.tensor(m.vertices, dtype=torch.float32)[None] + torch.tensor([0., 0., 2.5])
        f = torch.tensor(m.faces, dtype=torch.int64)
        K = torch.tensor([[600., 0., 255.5], [0., 600., 255.5], [0., 0., 1.]])
        del m
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the peak (VmHWM) to the current resident size
        except OSError:
            pass  # the peak then includes building the mesh: an upper bound
        before = status("VmRSS:")
        frags = rasterize(v, f, K, (512, 512))
        after = status("VmHWM:")
        print((after - before) / 1024, f.shape[0], int(frags.mask.sum()))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mb, nfaces, covered = out.stdout.split()
    return float(mb), int(nfaces), int(covered)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per row (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--default-allocator", action="store_true", help="do not tune the C allocator")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = False if args.default_allocator else tune_cpu_allocator()
    rows = []  # (case, ours, reference name, reference, ratio)

    verts, faces, K = icosphere_scene()
    ours_fn = lambda: rasterize(verts, faces, K, (256, 256))  # noqa: E731
    cast = open3d_caster(verts, faces, K, 256)
    if cast is None:
        ours, o3d_ms = median_ms(ours_fn, args.repeat), None
    else:
        ours, o3d_ms = interleaved_median_ms([ours_fn, cast], args.repeat)
    rows.append(
        (
            "(a) 256x256, 5,120-face icosphere, forward",
            f"{ours:.2f} ms",
            "Open3D Embree ray casting" if o3d_ms is not None else "Open3D not installed",
            f"{o3d_ms:.2f} ms" if o3d_ms is not None else "-",
            f"{ours / o3d_ms:.2f}x" if o3d_ms is not None else "-",
        )
    )

    verts1, faces1, K1 = nemo_scene(1)
    feats = torch.nn.functional.normalize(torch.randn(1, int(faces1.max()) + 1, 128), dim=-1)

    def one_view():
        v = verts1.clone().requires_grad_(True)
        f = feats.clone().requires_grad_(True)
        frags = rasterize(v, faces1, K1, (32, 84))
        img = interpolate(frags, faces1, f)
        img.sum().backward()

    rows.append(
        (
            f"(b) cuboid {int(faces1.max()) + 1} verts, 128-d, 32x84: fwd+bwd, 1 view",
            f"{median_ms(one_view, args.repeat):.2f} ms",
            "guidance",
            "<= 10 ms",
            "-",
        )
    )
    verts144, faces144, K144 = nemo_scene(144)
    feats144 = feats.expand(1, -1, -1)

    def batch_fwd():
        with torch.no_grad():
            interpolate(rasterize(verts144, faces144, K144, (32, 84)), faces144, feats144)

    rows.append(
        ("(b) same, forward, batch of 144 views", f"{median_ms(batch_fwd, max(3, args.repeat // 5)):.1f} ms",
         "guidance", "<= 300 ms", "-")
    )

    mb, nfaces, covered = peak_memory_mb(tuned)
    rows.append((f"(c) peak memory, {nfaces:,}-face mesh at 512x512", f"{mb:.0f} MB", "target", "< 4096 MB", "-"))

    if pytorch3d_available():
        from render.pytorch3d_backend import rasterize_pytorch3d

        p3d = median_ms(lambda: rasterize_pytorch3d(verts, faces, K, (256, 256)), args.repeat)
        rows.append(("(a) PyTorch3D rasterize_meshes, same scene", f"{p3d:.2f} ms", "ours", f"{ours:.2f} ms",
                     f"{ours / p3d:.2f}x"))
    else:
        rows.append(("PyTorch3D", "not installed", "-", "-", "-"))

    header = ("case", "ours", "reference", "reference value", "ours / ref")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths))
    allocator = "tuned allocator" if tuned else "default allocator"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, {allocator}")
    print(line)
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
