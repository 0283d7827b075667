"""Test images from a second, independent renderer: ray casting with its own shading.

Everything else in the project draws images with one rasterizer (:mod:`render`) and one
appearance model (:mod:`datasets.randomize`); a model trained on those renders could
exploit their quirks and still fail on any other image. This module makes held-out test
scenes with none of that code: rays are cast through every pixel (Open3D's Embree ray
caster when Open3D is installed, else a brute-force ray/triangle test), and the hits are
shaded here:

* the object stands on a textured **floor** (when the camera is above it) in front of a
  textured **wall**, in a 3D scene, so it casts a **shadow**;
* materials are procedural 3D patterns (solid, stripes, wood rings, 3D checkers) with
  Lambert diffuse, Blinn-Phong highlights and flat (object) or smooth (primitives)
  normals, under one directional light plus ambient light; shadows come from a second ray;
* **distractors** (boxes, spheres, cylinders) stand around the object without hiding it,
  and at occlusion levels 1-3 **3D occluders** float between the camera and the object
  until the hidden share of the object lies in the level's range
  (:data:`datasets.randomize.OCCLUSION_LEVELS`);
* 2 x 2 supersampling, gamma 2.2 and sensor noise.

Each of those can be switched off (``off=``, :data:`EFFECTS`) to find out which of them a
model trained on the engine's renders struggles with: the scene is otherwise the same
(every random draw is still made), so two runs differ by that one effect.

What it shares with the engine: the mesh's canonical frame (:func:`render.load_mesh` and
:func:`render.center_and_scale`: bounding-box centre, unit bounding sphere), the pose
convention (:func:`render.angles_to_pose`) and the viewpoint ranges of
:class:`datasets.synthetic.SyntheticConfig`'s defaults. Samples carry the engine's keys
(``image, mask, occluder_mask, occlusion, K, R, t, azimuth, elevation, theta, distance,
bbox, category, mesh_id``; :func:`datasets.check_sample` holds) in the canonical frame.

    python -m datasets.raycast --mesh demos/data/chair.obj --out data/raycast --n 8 \\
        --level 2 [--size 256] [--seed 0] [--off shadows textures ...]

writes ``0000.png ...`` and ``ground_truth.jsonl`` (one line per image: ``K`` as ``[fx,
fy, cx, cy]`` for ``fit_pose.py --K``, ``R`` and ``t`` in the mesh file's own frame,
``X_cam = R @ X_file + t``, as ``demos/fit_pose.py --json`` reports them; the angles; the
hidden fraction).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import trimesh

from render import Mesh, MeshError, angles_to_pose, center_and_scale, load_mesh

from .randomize import OCCLUSION_LEVELS

__all__ = ["EFFECTS", "RaycastScene", "file_frame_translation", "make_scene", "raycast_samples", "main"]

#: what ``off=`` can switch off, one at a time or together; the rest of the scene stays
#: the same (the random draws are made either way):
#: ``floor``, ``wall`` (the sky gradient shows instead), ``distractors``, ``shadows``,
#: ``highlights`` (no Blinn-Phong term), ``textures`` (every material a solid colour),
#: ``object_texture`` (the object's material a solid colour, the scene's still patterned),
#: ``supersampling`` (one ray per pixel: aliased edges), ``gamma`` (linear output) and
#: ``noise`` (no exposure change, no sensor noise)
EFFECTS = ("floor", "wall", "distractors", "shadows", "highlights", "textures", "object_texture", "supersampling",
           "gamma", "noise")

#: viewpoint ranges (those of SyntheticConfig's defaults; radians, radii, image sides)
AZIMUTH = (-math.pi, math.pi)
ELEVATION = (math.radians(-10.0), math.radians(50.0))
THETA = (math.radians(-15.0), math.radians(15.0))
DISTANCE = (4.0, 6.0)
FOCAL = (1.5, 2.1)
CENTER_JITTER = 0.08


# ----------------------------------------------------------------------- ray casting


class _Caster:
    """First hits of rays on a triangle soup: Open3D's Embree ray caster when Open3D is
    installed, else a brute-force Moller-Trumbore test of every ray against every
    triangle (chunked; fine for test-sized images)."""

    def __init__(self, verts: np.ndarray, faces: np.ndarray):
        self.verts = np.asarray(verts, dtype=np.float64)
        self.faces = np.asarray(faces, dtype=np.int64)
        try:
            import open3d as o3d
        except ImportError:
            o3d = None
        self._o3d = o3d
        if o3d is not None:
            self._scene = o3d.t.geometry.RaycastingScene()
            self._scene.add_triangles(o3d.core.Tensor(self.verts.astype(np.float32)),
                                      o3d.core.Tensor(self.faces.astype(np.uint32)))
        else:
            tri = torch.from_numpy(self.verts[self.faces]).to(torch.float32)  # (F, 3, 3)
            self._v0 = tri[:, 0]
            self._e1 = tri[:, 1] - tri[:, 0]
            self._e2 = tri[:, 2] - tri[:, 0]
            # bounding spheres of runs of consecutive faces, to skip most of them per chunk
            group = torch.arange(tri.shape[0]) // self.GROUP
            lo = torch.full((int(group[-1]) + 1, 3), math.inf).scatter_reduce(
                0, group[:, None].expand(-1, 3), tri.amin(1), "amin")
            hi = torch.full_like(lo, -math.inf).scatter_reduce(0, group[:, None].expand(-1, 3), tri.amax(1), "amax")
            self._centre = (lo + hi) / 2
            self._radius = (hi - lo).norm(dim=1) / 2 + 1e-4
            self._group = group

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(N, 3)`` rays -> distance along ``dirs`` ``(N,)`` (inf: miss), face ``(N,)``
        (-1: miss), barycentrics ``(N, 3)``."""
        if self._o3d is not None:
            rays = np.concatenate([origins, dirs], 1).astype(np.float32)
            ans = self._scene.cast_rays(self._o3d.core.Tensor(rays))
            dist = ans["t_hit"].numpy().astype(np.float64)
            face = ans["primitive_ids"].numpy().astype(np.int64)
            uv = ans["primitive_uvs"].numpy().astype(np.float64)
        else:
            dist, face, uv = self._brute_force(torch.from_numpy(np.asarray(origins, dtype=np.float64)),
                                               torch.from_numpy(np.asarray(dirs, dtype=np.float64)))
        hit = np.isfinite(dist)
        face = np.where(hit, face, -1)
        bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], 1) * hit[:, None]
        return dist, face, bary

    #: faces per bounding sphere of the brute-force caster
    GROUP = 16

    def _brute_force(self, o: torch.Tensor, d: torch.Tensor, chunk: int = 256):
        n = o.shape[0]
        o, d = o.to(torch.float32), d.to(torch.float32)
        dist = torch.full((n,), math.inf, dtype=torch.float64)
        face = torch.full((n,), -1, dtype=torch.int64)
        uv = torch.zeros(n, 2, dtype=torch.float64)
        for a in range(0, n, chunk):
            oc, dc = o[a:a + chunk, None, :], d[a:a + chunk, None, :]
            # spheres any ray of the chunk meets (rays are pixel-ordered: coherent)
            to_c = self._centre[None] - oc  # (n, G, 3)
            along = (to_c * dc).sum(-1)
            miss2 = (to_c * to_c).sum(-1) - along**2
            meet = ((miss2 <= self._radius**2) & (along + self._radius > 0)).any(0)
            keep = meet[self._group].nonzero()[:, 0]
            if keep.numel() == 0:
                continue
            v0, e1, e2 = self._v0[keep], self._e1[keep], self._e2[keep]
            p = torch.cross(dc.expand(-1, e2.shape[0], -1), e2[None].expand(dc.shape[0], -1, -1), dim=-1)
            det = (e1[None] * p).sum(-1)
            ok = det.abs() > 1e-10
            inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
            s = oc - v0[None]
            u = (s * p).sum(-1) * inv
            q = torch.cross(s, e1[None].expand_as(s), dim=-1)
            v = (dc * q).sum(-1) * inv
            t = (e2[None] * q).sum(-1) * inv
            ok &= (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6)
            t = torch.where(ok, t, torch.full_like(t, math.inf))
            best, idx = t.min(1)
            dist[a:a + chunk] = best.double()
            face[a:a + chunk] = keep[idx]
            rows = torch.arange(idx.shape[0])
            uv[a:a + chunk, 0] = u[rows, idx]
            uv[a:a + chunk, 1] = v[rows, idx]
        return dist.numpy(), face.numpy(), uv.numpy()


# -------------------------------------------------------------------------- materials


def _hsv(rng: np.random.Generator, sat=(0.1, 0.9), val=(0.2, 0.95)) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)))


def _material(rng: np.random.Generator, scale: float, solid: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A random procedural 3D albedo: points ``(N, 3)`` -> linear RGB ``(N, 3)``;
    ``solid``: its first colour only (the same draws are made)."""
    kind = rng.choice(["solid", "stripes", "wood", "checker"])
    a, b = _hsv(rng), _hsv(rng)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    period = scale * rng.uniform(0.1, 0.5)
    if kind == "solid" or solid:
        return lambda p: np.broadcast_to(a, p.shape).copy()
    if kind == "stripes":
        return lambda p: np.where((np.floor(p @ axis / period) % 2 == 0)[:, None], a, b)
    if kind == "wood":
        def wood(p: np.ndarray) -> np.ndarray:
            radial = np.linalg.norm(p - (p @ axis)[:, None] * axis, axis=1)
            s = 0.5 + 0.5 * np.sin(2 * math.pi * radial / period + 3.0 * np.sin(p @ axis * 2.0 / scale))
            return a * s[:, None] + b * (1 - s[:, None])
        return wood
    return lambda p: np.where((np.floor(p / period).sum(1) % 2 == 0)[:, None], a, b)


@dataclass
class _Item:
    """One solid of the scene: its faces ``[start, stop)`` in the merged soup."""

    role: str  # "object", "occluder", "distractor", "floor", "wall"
    start: int
    stop: int
    albedo: Callable[[np.ndarray], np.ndarray]
    smooth: bool
    specular: float
    shininess: float


def _primitive(rng: np.random.Generator, size: float):

    kind = rng.choice(["box", "sphere", "cylinder", "capsule"])
    if kind == "box":
        mesh = trimesh.creation.box(extents=size * rng.uniform(0.4, 1.2, size=3))
    elif kind == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=2, radius=size * rng.uniform(0.3, 0.6))
    elif kind == "cylinder":
        mesh = trimesh.creation.cylinder(radius=size * rng.uniform(0.1, 0.35), height=size * rng.uniform(0.6, 1.6),
                                         sections=24)
    else:
        mesh = trimesh.creation.capsule(radius=size * rng.uniform(0.1, 0.3), height=size * rng.uniform(0.4, 1.2),
                                        count=[12, 12])
    rot = trimesh.transformations.random_rotation_matrix(rng.uniform(0, 1, size=3))
    mesh.apply_transform(rot)
    return mesh, kind in ("sphere", "cylinder", "capsule")


# ---------------------------------------------------------------------------- scenes


@dataclass
class RaycastScene:
    """One rendered scene (arrays in the canonical frame; see the module docstring)."""

    image: np.ndarray  # (H, W, 3) float in [0, 1]
    mask: np.ndarray  # (H, W) bool, the whole object (amodal)
    occluder_mask: np.ndarray  # (H, W) bool, pixels an occluder covers
    occlusion: float
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    angles: tuple[float, float, float, float]  # azimuth, elevation, theta, distance


def _camera_rays(K: np.ndarray, R: np.ndarray, t: np.ndarray, size: tuple[int, int], ss: int):
    """Rays (object frame) through ``ss x ss`` sub-pixel points of every pixel, pixel-major."""
    h, w = size
    offs = (np.arange(ss) + 0.5) / ss - 0.5
    v, u, dv, du = np.meshgrid(np.arange(h), np.arange(w), offs, offs, indexing="ij")
    pix = np.stack([(u + du).ravel(), (v + dv).ravel(), np.ones(u.size)], 1)
    d_cam = pix @ np.linalg.inv(K).T
    dirs = d_cam @ R  # R^T d for each row
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origin = -R.T @ t
    return np.broadcast_to(origin, dirs.shape).copy(), dirs


def _render(items: list[_Item], item_of: np.ndarray, verts: np.ndarray, faces: np.ndarray, caster: _Caster,
            K, R, t, size: tuple[int, int], rng: np.random.Generator, off: frozenset[str] = frozenset()) -> np.ndarray:
    """Shade the scene with 2 x 2 samples per pixel (1 with ``supersampling`` off):
    ``(H, W, 3)`` in [0, 1]. ``item_of`` maps each face to its index in ``items``."""
    h, w = size
    ss = 1 if "supersampling" in off else 2
    origins, dirs = _camera_rays(K, R, t, size, ss)
    dist, face, bary = caster.cast(origins, dirs)
    hit = face >= 0
    light = rng.normal(size=3)
    light[1] = abs(light[1]) + 0.8  # from above
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.15, 0.4)
    sky_top, sky_bottom = _hsv(rng, val=(0.4, 1.0)), _hsv(rng, val=(0.2, 0.8))
    rows = np.repeat(np.arange(h), w * ss * ss) / max(h - 1, 1)
    color = sky_top * (1 - rows[:, None]) + sky_bottom * rows[:, None]
    idx = np.nonzero(hit)[0]
    f = face[idx]
    tri = verts[faces[f]]  # (n, 3, 3)
    points = (bary[idx, :, None] * tri).sum(1)
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    fn /= np.linalg.norm(fn, axis=1, keepdims=True).clip(1e-12)
    normals = fn.copy()
    vnormals = _vertex_normals(verts, faces)
    owner = item_of[f]
    for k, item in enumerate(items):
        sel = owner == k
        if not sel.any():
            continue
        if item.smooth:
            n = (bary[idx[sel], :, None] * vnormals[faces[f[sel]]]).sum(1)
            normals[sel] = n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
    view = -dirs[idx]
    flip = (normals * view).sum(1) < 0
    normals[flip] *= -1
    fn[(fn * view).sum(1) < 0] *= -1
    # shadows: a second ray towards the light
    if "shadows" in off:
        lit = np.ones(len(idx), dtype=bool)
    else:
        s_dist, _, _ = caster.cast(points + 1e-3 * fn, np.broadcast_to(light, points.shape).copy())
        lit = ~np.isfinite(s_dist)
    diffuse = np.clip(normals @ light, 0, None) * lit
    half = light[None] + view
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    shade = np.zeros((len(idx), 3))
    for k, item in enumerate(items):
        sel = owner == k
        if not sel.any():
            continue
        albedo = item.albedo(points[sel])
        specular = 0.0 if "highlights" in off else item.specular
        spec = specular * lit[sel] * np.clip((normals[sel] * half[sel]).sum(1), 0, None) ** item.shininess
        shade[sel] = albedo * (ambient + (1 - ambient) * diffuse[sel, None]) + spec[:, None]
    color[idx] = shade
    image = color.reshape(h, w, ss * ss, 3).mean(2)
    image = np.clip(image, 0, 1)
    if "gamma" not in off:
        image = image ** (1 / 2.2)
    gain, noise = rng.uniform(0.8, 1.15), rng.normal(0, rng.uniform(0.0, 0.02), image.shape)
    if "noise" not in off:
        image = image * gain + noise
    return np.clip(image, 0, 1)


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (trimesh's are angle-weighted)."""
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.linalg.norm(vn, axis=1, keepdims=True).clip(1e-12)


def _effects_off(off: Sequence[str]) -> frozenset[str]:
    if isinstance(off, str):
        off = (off,)
    unknown = sorted(set(off) - set(EFFECTS))
    if unknown:
        raise ValueError(f"off: unknown effect(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(EFFECTS)}")
    return frozenset(off)


def make_scene(obj_verts: np.ndarray, obj_faces: np.ndarray, size: tuple[int, int], level: int,
               rng: np.random.Generator, max_tries: int = 60, off: Sequence[str] = (),
               distance_scale: float = 1.0, center_jitter: float = CENTER_JITTER) -> RaycastScene:
    """One scene of the canonical-frame mesh at occlusion ``level`` (0-3), without the
    effects named in ``off`` (:data:`EFFECTS`), the camera ``distance_scale`` times
    :data:`DISTANCE` away and the object's centre up to ``center_jitter`` image sides from
    the image centre (the same random draws whatever these two are)."""
    if level not in OCCLUSION_LEVELS:
        raise ValueError(f"level: expected one of {sorted(OCCLUSION_LEVELS)}, got {level!r}")
    off = _effects_off(off)
    h, w = size
    az, el = rng.uniform(*AZIMUTH), rng.uniform(*ELEVATION)
    theta, dist = rng.uniform(*THETA), rng.uniform(*DISTANCE) * distance_scale
    f = rng.uniform(*FOCAL) * max(h, w)
    cx = (w - 1) / 2 + rng.uniform(-center_jitter, center_jitter) * w
    cy = (h - 1) / 2 + rng.uniform(-center_jitter, center_jitter) * h
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    Rt, tt = angles_to_pose(torch.tensor(az, dtype=torch.float64), torch.tensor(el, dtype=torch.float64),
                            torch.tensor(theta, dtype=torch.float64), torch.tensor(dist, dtype=torch.float64))
    R, t = Rt.numpy(), tt.numpy()
    cam = -R.T @ t

    items: list[_Item] = []
    soup_v: list[np.ndarray] = []
    soup_f: list[np.ndarray] = []
    count = [0, 0]  # verts, faces so far

    def add(role: str, v: np.ndarray, fc: np.ndarray, smooth: bool, scale: float = 1.0, keep: bool = True) -> None:
        # the draws are made even for a solid that is left out, so the rest of the scene stays
        solid = "textures" in off or (role == "object" and "object_texture" in off)
        item = _Item(role, count[1], count[1] + len(fc), _material(rng, scale, solid=solid), smooth,
                     specular=rng.uniform(0.0, 0.5), shininess=rng.uniform(5, 60))
        if not keep:
            return
        soup_v.append(v)
        soup_f.append(fc + count[0])
        items.append(item)
        count[0] += len(v)
        count[1] += len(fc)

    floor_y = float(obj_verts[:, 1].min())
    has_floor = cam[1] > floor_y + 0.3
    add("object", obj_verts, obj_faces, smooth=False)
    if has_floor:
        floor = trimesh.creation.box(extents=[60.0, 0.01, 60.0])
        floor.apply_translation([0, floor_y - 0.005, 0])
        add("floor", np.asarray(floor.vertices), np.asarray(floor.faces), False, 4.0, keep="floor" not in off)
    # a wall behind the object, facing the camera
    back = -cam / np.linalg.norm(cam)
    wall = trimesh.creation.box(extents=[60.0, 60.0, 0.01])
    z = np.array([0, 0, 1.0])
    axis = np.cross(z, back)
    if np.linalg.norm(axis) > 1e-9:
        ang = math.acos(float(np.clip(z @ back, -1, 1)))
        wall.apply_transform(trimesh.transformations.rotation_matrix(ang, axis))
    elif z @ back < 0:
        wall.apply_transform(trimesh.transformations.rotation_matrix(math.pi, [0, 1, 0]))
    wall.apply_translation(back * rng.uniform(2.5, 8.0))
    add("wall", np.asarray(wall.vertices), np.asarray(wall.faces), False, 4.0, keep="wall" not in off)

    # one ray through each pixel centre: placement and masks are measured on these
    origins, pixel_dirs = _camera_rays(K, R, t, size, 1)
    obj_dist, _, _ = _Caster(obj_verts, obj_faces).cast(origins, pixel_dirs)
    amodal = np.isfinite(obj_dist)
    if not amodal.any():
        raise RuntimeError("the object misses the image")
    # distractors beside or behind the object, kept only if they hide none of it
    for _ in range(rng.integers(0, 4)):
        prim, smooth = _primitive(rng, rng.uniform(0.5, 1.2))
        offset = rng.normal(size=3)
        offset[1] = 0
        offset /= np.linalg.norm(offset).clip(1e-9)
        centre = offset * rng.uniform(1.8, 3.5)
        centre[1] = floor_y - prim.bounds[0, 1] if has_floor else rng.uniform(-0.5, 0.5)
        prim.apply_translation(centre)
        if np.linalg.norm(cam - centre) <= 1.5:
            continue
        d, _, _ = _Caster(np.asarray(prim.vertices), np.asarray(prim.faces)).cast(origins, pixel_dirs)
        if not (d[amodal] < obj_dist[amodal]).any():
            add("distractor", np.asarray(prim.vertices), np.asarray(prim.faces), smooth,
                keep="distractors" not in off)
    # occluders between the camera and the object until the level's range is reached
    low, high = OCCLUSION_LEVELS[level]
    hidden = np.zeros(h * w, dtype=bool)
    occluders: list[tuple[np.ndarray, np.ndarray, bool]] = []
    surface = cam + pixel_dirs[amodal] * obj_dist[amodal][:, None]
    tries = 0
    while level > 0 and hidden[amodal].mean() < low and tries < max_tries:
        tries += 1
        target = surface[rng.integers(len(surface))]
        along = rng.uniform(0.35, 0.8)
        scale = rng.uniform(0.3, 1.1) * along
        prim, smooth = _primitive(rng, scale)
        prim.apply_translation(cam + along * (target - cam))
        if (np.linalg.norm(prim.vertices - cam, axis=1) < 0.3).any():
            continue
        d, _, _ = _Caster(np.asarray(prim.vertices), np.asarray(prim.faces)).cast(origins, pixel_dirs)
        now = hidden | (d < obj_dist)
        if now[amodal].mean() > high:
            continue
        hidden = now
        occluders.append((np.asarray(prim.vertices), np.asarray(prim.faces), smooth))
    if level > 0 and not low <= hidden[amodal].mean() <= high:
        raise RuntimeError(f"could not reach occlusion level {level}")
    for v, fc, smooth in occluders:
        add("occluder", v, fc, smooth)

    verts = np.concatenate(soup_v)
    faces = np.concatenate(soup_f)
    item_of = np.concatenate([np.full(it.stop - it.start, k, dtype=np.int64) for k, it in enumerate(items)])
    caster = _Caster(verts, faces)
    image = _render(items, item_of, verts, faces, caster, K, R, t, size, rng, off)
    # masks from the pixel centres (as the occluders were placed): what each centre sees first
    _, first, _ = caster.cast(origins, pixel_dirs)
    is_occluder = np.array([it.role == "occluder" for it in items])
    occ_mask = ((first >= 0) & is_occluder[item_of[first]]).reshape(h, w)
    mask = amodal.reshape(h, w)
    occlusion = float((mask & occ_mask).sum() / mask.sum())
    if level > 0 and not low <= occlusion <= high:  # e.g. the floor in front of an occluder
        raise RuntimeError(f"occlusion {occlusion:.2f} outside level {level}")
    return RaycastScene(image=image, mask=mask, occluder_mask=occ_mask, occlusion=occlusion, K=K, R=R, t=t,
                        angles=(az, el, theta, dist))


# --------------------------------------------------------------------------- samples


def _canonical(mesh: Mesh):
    canon, c, s = center_and_scale(mesh, center="bbox", scale="radius")
    return canon.verts.double().numpy(), canon.faces.long().numpy(), c.double().numpy(), float(s)


def file_frame_translation(R: np.ndarray, t: np.ndarray, c: np.ndarray, s: float) -> np.ndarray:
    """``t`` of a canonical-frame pose in the mesh file's frame, where the canonical
    vertices are ``(X_file - c) * s``: ``X_cam / s = R @ X_file + (t / s - R @ c)`` (the
    same image: the scene scaled by ``1 / s``)."""
    return np.asarray(t) / s - np.asarray(R) @ np.asarray(c)


def _sample(scene: RaycastScene, mesh_id: str) -> dict[str, Any]:
    ys, xs = np.nonzero(scene.mask)
    f32 = torch.float32
    return {
        "image": torch.from_numpy(scene.image.astype(np.float32)).permute(2, 0, 1).contiguous(),
        "mask": torch.from_numpy(scene.mask),
        "occluder_mask": torch.from_numpy(scene.occluder_mask),
        "occlusion": scene.occlusion,
        "K": torch.from_numpy(scene.K).to(f32),
        "R": torch.from_numpy(scene.R).to(f32),
        "t": torch.from_numpy(scene.t).to(f32),
        "azimuth": scene.angles[0], "elevation": scene.angles[1], "theta": scene.angles[2],
        "distance": scene.angles[3],
        "bbox": torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()], dtype=f32),
        "category": "user",
        "mesh_id": mesh_id,
    }


def raycast_samples(mesh: str | Path | Mesh, n: int, level: int = 0, size: int | Sequence[int] = 128,
                    seed: int = 0, progress: bool = False, off: Sequence[str] = (),
                    distance_scale: float = 1.0, center_jitter: float = CENTER_JITTER) -> list[dict[str, Any]]:
    """``n`` ray-cast test samples of a mesh (a file, or a loaded :class:`render.Mesh`) at
    occlusion ``level`` (module docstring), without the effects named in ``off``
    (:data:`EFFECTS`); ``distance_scale`` and ``center_jitter`` as in :func:`make_scene`
    (e.g. wider framings: the object smaller and anywhere in a larger image).

    Scene ``i`` depends only on ``(seed, level, i)``; switching an effect off leaves the
    rest of it as it was (unless the scene then misses its occlusion level, e.g. without
    a floor that hid part of an occluder, and the next attempt's scene is drawn).

    Raises:
        render.MeshError: the mesh file cannot be read.
        ValueError: bad ``n``, ``level``, ``size`` or ``off``.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    hw = (size, size) if isinstance(size, int) else tuple(int(x) for x in size)
    if len(hw) != 2 or min(hw) < 8:
        raise ValueError(f"size: expected a side or (H, W) of at least 8 pixels, got {size!r}")
    if level not in OCCLUSION_LEVELS:
        raise ValueError(f"level: expected one of {sorted(OCCLUSION_LEVELS)}, got {level!r}")
    off = _effects_off(off)
    if not (math.isfinite(distance_scale) and distance_scale > 0):
        raise ValueError(f"distance_scale: expected a number > 0, got {distance_scale!r}")
    if not (0.0 <= center_jitter <= 0.5):
        raise ValueError(f"center_jitter: expected a fraction of the image in [0, 0.5], got {center_jitter!r}")
    if not isinstance(mesh, Mesh):
        mesh = load_mesh(mesh)
    verts, faces, _, _ = _canonical(mesh)
    mesh_id = Path(mesh.name).stem or mesh.name
    out = []
    items = range(n)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc=f"ray-casting L{level}", unit="img", file=sys.stderr)
    for i in items:
        for attempt in range(20):
            rng = np.random.default_rng([seed, level, i, attempt])
            try:
                scene = make_scene(verts, faces, hw, level, rng, off=off, distance_scale=distance_scale,
                                   center_jitter=center_jitter)
                break
            except RuntimeError:
                continue
        else:
            raise RuntimeError(f"scene {i}: no viewpoint reached occlusion level {level} in 20 tries")
        out.append(_sample(scene, mesh_id))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m datasets.raycast",
                                description="Write test images of a mesh from the ray-casting renderer.")
    p.add_argument("--mesh", required=True, help="mesh file (+y up, front to +z)")
    p.add_argument("--out", required=True, help="output folder (PNGs and ground_truth.jsonl)")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--level", type=int, default=0, choices=sorted(OCCLUSION_LEVELS))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--off", nargs="+", default=[], choices=EFFECTS, metavar="EFFECT",
                   help=f"switch these effects off, the scenes otherwise unchanged: {', '.join(EFFECTS)}")
    args = p.parse_args(argv)
    if args.n < 1 or args.size < 8:
        print("error: --n must be >= 1 and --size >= 8", file=sys.stderr)
        return 2
    import imageio.v3 as iio

    try:
        mesh = load_mesh(args.mesh)
    except MeshError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _, _, c, s = _canonical(mesh)
    samples = raycast_samples(mesh, args.n, args.level, args.size, args.seed, progress=True, off=args.off)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, sample in enumerate(samples):
        name = f"{i:04d}.png"
        iio.imwrite(out / name, (sample["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        K = sample["K"]
        lines.append(json.dumps({
            "image": name, "K": [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])],
            "R": sample["R"].tolist(),
            "t": file_frame_translation(sample["R"].double().numpy(), sample["t"].double().numpy(), c, s).tolist(),
            "azimuth_deg": math.degrees(sample["azimuth"]), "elevation_deg": math.degrees(sample["elevation"]),
            "theta_deg": math.degrees(sample["theta"]), "occlusion": sample["occlusion"],
        }))
    (out / "ground_truth.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(samples)} images and ground_truth.jsonl to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
