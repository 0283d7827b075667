"""The procedural shape library of the synthetic data engine, plus user mesh files.

:func:`make_shape` builds one object of a category in :data:`CATEGORIES` from simple
closed primitives (boxes, surfaces of revolution, extruded polygons, swept tubes, convex
hulls) with randomized proportions, part counts and styles. It is deterministic in
``(category, seed)``: the random generator is seeded with the seed and a CRC-32 of the
category name (never Python's salted ``hash``), so every process and machine builds the
same mesh. :func:`shape_from_mesh` and :func:`load_shape` bring any other mesh into the
same frame. Categories are what category-level, category-agnostic and held-out ("novel
category") experiments split on.

**Canonical frame** (the object frame of ``docs/conventions.md``, made precise):

* **+y is up**; every object stands on its base (its lowest point is the bottom of its
  legs, wheels, base plate or hull), so it sits naturally on a ground plane ``y = min y``.
* **The front faces +z**: a vehicle's nose (car, bus, motorbike, bicycle, boat and
  airplane; the airplane's nose is its largest z), the side a person sits on or faces
  (chair, sofa, bench: the back rest is at -z), the screen of a monitor, the open side of
  a bookshelf (its back panel is at -z), the foot end of a bed (the headboard is at -z),
  a long side of a table, the reach of a desk lamp's arm. A mug's handle points to **+x**
  (the mug is seen from its front with the handle on the right). Bottles, table and floor
  lamps, round tables and (up to the handle) mugs are rotationally symmetric about y:
  their front is a convention, not something an image can tell.
* **+x** completes a right-handed frame (x = y cross z): seen from the front (camera on
  +z, ``azimuth = 0``), +x is to the right.
* **Centred and scaled**: the centre of the axis-aligned bounding box is the origin and
  the largest vertex norm (the bounding-sphere radius about the origin) is 1.

**Meshes**: float32 vertices, int64 faces counter-clockwise seen from outside (outward
normals); every part is a union of closed surfaces, and parts share no vertex, so
per-part colours live in ``Mesh.vertex_colors``. Vertices are split along sharp creases
(dihedral angle above 40 degrees) and shared on smooth surfaces, so smooth (vertex-normal)
shading looks right. Each shape has a few hundred to a few thousand faces.

**Categories**, their parts (``Shape.part_names``; bracketed ones only in some styles)
and what varies besides the proportions:

=========  ====================================================  =========================
category   parts                                                 styles
=========  ====================================================  =========================
car        body, cabin, wheels, headlights, taillights           sedan, hatchback, SUV
chair      seat, back, legs, [arms]                              panel or slatted back;
                                                                 square, round or office
                                                                 (5-star) legs; stretchers
table      top, legs, [apron]                                    round or rectangular;
                                                                 four legs, pedestal,
                                                                 trestle
sofa       base, back, [arms], cushions, legs                    1-3 seat cushions
bed        frame, mattress, headboard, [footboard], [blanket],   1-2 pillows
           pillows, legs
bench      seat, legs, [back], [arms]                            1-5 slats; legs or panels
bottle     body, cap, [label]                                    wine, water, flask
mug        body, handle                                          round to square handle,
                                                                 taper
airplane   fuselage, wings, tail, [engines], [propeller]         airliner (2 or 4 engines,
                                                                 T-tail), light, fighter
monitor    frame, screen, stand                                  neck + plate or disc, or
                                                                 two feet; back bulge
bookshelf  frame, shelves, [books]                               2-7 compartments
lamp       base, stem, shade                                     table, floor, desk (arm
                                                                 reaching to +z)
bicycle    wheels, frame, handlebar, saddle                      diamond or step-through
boat       hull, [cabin, windows] or [mast, sail]                motor boat or sail boat
bus        body, windows, wheels, headlights, taillights         single or double decker,
                                                                 2 or 3 axles
motorbike  wheels, engine, body, seat, fork, headlight, exhaust  windscreen, bar rise
=========  ====================================================  =========================

>>> shape = make_shape("chair", seed=3)
>>> shape.mesh_id, shape.num_parts == len(shape.part_names)
('chair-00003', True)
>>> round(float(shape.mesh.verts.norm(dim=1).max()), 5)
1.0
>>> make_shape("chair", seed=3).mesh.verts.equal(shape.mesh.verts)
True
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import ConvexHull

from render import (
    Mesh,
    angles_to_pose,
    center_and_scale,
    default_intrinsics,
    load_mesh,
    render_rgb,
    validate_mesh,
)

__all__ = [
    "CATEGORIES",
    "Shape",
    "make_shape",
    "shape_from_mesh",
    "load_shape",
    "shape_contact_sheet",
]

#: Dihedral angle (degrees) above which vertices are split (a crease in the shading).
_CREASE_DEGREES = 40.0

#: Sections around surfaces of revolution and tubes.
_SECTIONS = 20


# ------------------------------------------------------------------------------ the shape


@dataclass(frozen=True, eq=False)
class Shape:
    """One object of the shape library: a coloured mesh split into named parts.

    Attributes:
        mesh: the mesh in the canonical frame (module docstring), with ``vertex_colors``
            (one default colour per part, or the file's appearance for user meshes).
        part_ids: ``(F,)`` int64, the part of each face, in ``[0, num_parts)``. Parts
            share no vertex.
        category: the category (one of :data:`CATEGORIES`, or e.g. ``"user"``).
        mesh_id: ``"<category>-<seed:05d>"`` for procedural shapes, the file stem for
            loaded ones.
        part_names: the name of each part (``part_names[i]`` names ``part_ids == i``),
            e.g. ``("seat", "back", "legs")``; names depend on the category and on the
            shape's style (optional parts such as armrests appear only when present).
    """

    mesh: Mesh
    part_ids: torch.Tensor
    category: str
    mesh_id: str
    part_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.part_ids, torch.Tensor) or self.part_ids.dtype != torch.int64:
            got = getattr(self.part_ids, "dtype", type(self.part_ids).__name__)
            raise TypeError(f"part_ids: expected an int64 tensor, got {got}")
        if tuple(self.part_ids.shape) != (self.mesh.num_faces,):
            raise ValueError(
                f"part_ids: expected shape ({self.mesh.num_faces},) (one per face), "
                f"got {tuple(self.part_ids.shape)}"
            )
        if self.part_ids.numel() and int(self.part_ids.min()) < 0:
            raise ValueError(f"part_ids: expected values >= 0, got {int(self.part_ids.min())}")
        if self.part_names and self.part_ids.numel() and int(self.part_ids.max()) >= len(self.part_names):
            raise ValueError(
                f"part_ids: expected values < {len(self.part_names)} (len(part_names)), "
                f"got {int(self.part_ids.max())}"
            )

    @property
    def num_parts(self) -> int:
        """Number of parts ``P`` (``len(part_names)``, else ``max(part_ids) + 1``)."""
        if self.part_names:
            return len(self.part_names)
        return int(self.part_ids.max()) + 1 if self.part_ids.numel() else 0


# ------------------------------------------------------------------------------ primitives
# Each primitive returns welded ``(verts (V, 3) float64, faces (F, 3) int64)`` of a closed
# surface; ``_Builder.add`` orients it outward and splits its creases.


def _rings_to_mesh(rings: Sequence[np.ndarray], closed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Stitch a sequence of rings into a surface.

    Each entry is a ``(S, 3)`` ring (all rings the same ``S``) or a ``(3,)`` pole. Poles
    may only come first or last (they cap the ends with a fan); ``closed`` joins the last
    ring to the first (a torus-like loop, no poles).
    """
    verts, index = [], []
    count = 0
    for ring in rings:
        ring = np.asarray(ring, dtype=np.float64)
        if ring.ndim == 1:
            verts.append(ring[None])
            index.append(count)
            count += 1
        else:
            verts.append(ring)
            index.append(np.arange(count, count + len(ring)))
            count += len(ring)
    faces = []
    pairs = list(zip(index[:-1], index[1:]))
    if closed:
        pairs.append((index[-1], index[0]))
    for a, b in pairs:
        if isinstance(a, int):  # pole -> ring
            faces.append(np.stack([np.full(len(b), a), np.roll(b, -1), b], axis=1))
        elif isinstance(b, int):  # ring -> pole
            faces.append(np.stack([a, np.roll(a, -1), np.full(len(a), b)], axis=1))
        else:
            a1, b1 = np.roll(a, -1), np.roll(b, -1)
            faces.append(np.stack([a, a1, b1], axis=1))
            faces.append(np.stack([a, b1, b], axis=1))
    return np.concatenate(verts), np.concatenate(faces).astype(np.int64)


def _lathe(profile: Sequence[tuple[float, float]], sections: int = _SECTIONS) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about the y axis of a profile of ``(radius, y)`` points.

    Points with radius 0 become poles; open ends are capped flat.
    """
    prof = [(float(r) if r > 1e-9 else 0.0, float(y)) for r, y in profile]
    if prof[0][0] > 0:
        prof.insert(0, (0.0, prof[0][1]))
    if prof[-1][0] > 0:
        prof.append((0.0, prof[-1][1]))
    angles = 2 * np.pi * np.arange(sections) / sections
    cos, sin = np.cos(angles), np.sin(angles)
    rings = []
    for r, y in prof:
        if r <= 0:
            rings.append(np.array([0.0, y, 0.0]))
        else:
            rings.append(np.stack([r * cos, np.full(sections, y), r * sin], axis=1))
    return _rings_to_mesh(rings)


def _cylinder(p0, p1, radius: float, sections: int = _SECTIONS, radius1: float | None = None):
    """A (possibly tapered) closed cylinder from point ``p0`` (radius) to ``p1`` (radius1)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    r1 = radius if radius1 is None else radius1
    return _tube(np.stack([p0, p1]), np.array([radius, r1]), sections)


def _tube(path, radius, sections: int = 12, closed: bool = False):
    """A tube of circular cross-section swept along a polyline ``path (N, 3)``.

    ``radius`` is a float or ``(N,)``. Open tubes are capped flat; ``closed`` makes a loop
    (use it for planar loops only: the frame is parallel-transported).
    """
    path = np.asarray(path, dtype=np.float64)
    n = len(path)
    radius = np.broadcast_to(np.asarray(radius, dtype=np.float64), (n,))
    if closed:
        tangents = np.roll(path, -1, axis=0) - np.roll(path, 1, axis=0)
    else:
        tangents = np.gradient(path, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    # a normal perpendicular to the first tangent, then parallel transport
    helper = np.eye(3)[int(np.argmin(np.abs(tangents[0])))]
    normal = np.cross(tangents[0], helper)
    normal /= np.linalg.norm(normal)
    angles = 2 * np.pi * np.arange(sections) / sections
    rings = []
    for i in range(n):
        normal = normal - (normal @ tangents[i]) * tangents[i]
        normal /= np.linalg.norm(normal)
        binormal = np.cross(tangents[i], normal)
        circle = np.cos(angles)[:, None] * normal + np.sin(angles)[:, None] * binormal
        rings.append(path[i] + radius[i] * circle)
    if not closed:
        rings = [path[0]] + rings + [path[-1]]
    return _rings_to_mesh(rings, closed=closed)


def _band(path, center, half_width: float, thickness: float):
    """A strip of rectangular cross-section along an arc ``path (N, 3)`` in a y-z plane.

    The cross-section spans ``half_width`` either side along x and ``thickness`` radially
    outward from the path, radial meaning away from ``center`` (a mudguard over a wheel).
    """
    path = np.asarray(path, dtype=np.float64)
    radial = path - np.asarray(center, float)
    radial[:, 0] = 0.0
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    x = np.array([half_width, 0.0, 0.0])
    rings = [np.stack([p - x, p + x, p + x + thickness * n, p - x + thickness * n]) for p, n in zip(path, radial)]
    return _rings_to_mesh([path[0] + thickness * radial[0] / 2] + rings + [path[-1] + thickness * radial[-1] / 2])


def _torus(center, major: float, minor: float, axis: int = 0, segments: int = 40, sections: int = 12):
    """A torus (a tyre) about an axis (0 = x, 1 = y, 2 = z) through ``center``."""
    t = 2 * np.pi * np.arange(segments) / segments
    u, v = [a for a in range(3) if a != axis]
    path = np.zeros((segments, 3))
    path[:, u], path[:, v] = major * np.cos(t), major * np.sin(t)
    return _tube(path + np.asarray(center, float), minor, sections, closed=True)


def _ellipsoid(center, radii, sections: int = _SECTIONS, stacks: int = 10):
    """An axis-aligned ellipsoid."""
    phi = np.linspace(0, np.pi, stacks + 1)
    verts, faces = _lathe([(np.sin(p), -np.cos(p)) for p in phi], sections)
    return verts * np.asarray(radii, float) + np.asarray(center, float), faces


def _prism(poly, c0: float, c1: float, axes: tuple[int, int, int] = (2, 1, 0), segments: int = 1):
    """A convex polygon extruded between ``c0`` and ``c1``.

    ``poly (N, 2)`` gives coordinates along ``axes[0]`` and ``axes[1]``; the extrusion
    runs along ``axes[2]`` (default: a side profile in (z, y) extruded along x).
    """
    poly = np.asarray(poly, dtype=np.float64)
    centroid = poly.mean(axis=0)

    def lift(points2, c):
        out = np.zeros((len(points2), 3)) if points2.ndim == 2 else np.zeros(3)
        out[..., axes[0]], out[..., axes[1]], out[..., axes[2]] = points2[..., 0], points2[..., 1], c
        return out

    cs = np.linspace(c0, c1, segments + 1)
    rings = [lift(centroid, c0)] + [lift(poly, c) for c in cs] + [lift(centroid, c1)]
    return _rings_to_mesh(rings)


def _convex(points):
    """The convex hull of a point cloud (faces oriented outward)."""
    hull = ConvexHull(np.asarray(points, dtype=np.float64))
    faces = hull.simplices.copy()
    v = hull.points
    normals = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    flip = (normals * hull.equations[:, :3]).sum(axis=1) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    used = np.unique(faces)
    remap = np.full(len(v), -1)
    remap[used] = np.arange(len(used))
    return v[used], remap[faces].astype(np.int64)


def _box(lo, hi, max_edge: float):
    """An axis-aligned box ``[lo, hi]``, each side a grid of squares about ``max_edge``.

    Sides are separate grids (the box's edges are creases), oriented outward.
    """
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    verts, faces, count = [], [], 0
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        nu = max(1, math.ceil((hi[u] - lo[u]) / max_edge))
        nv = max(1, math.ceil((hi[v] - lo[v]) / max_edge))
        gu, gv = np.meshgrid(np.linspace(lo[u], hi[u], nu + 1), np.linspace(lo[v], hi[v], nv + 1), indexing="ij")
        idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
        a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
        quad = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])  # normal u x v
        # u x v is +axis where (u, v, axis) is a cyclic permutation of (x, y, z), i.e. for
        # the x and z sides; for the y sides (u, v) = (x, z) and x x z = -y
        sign = -1 if axis == 1 else 1
        for side, value in ((-1, lo[axis]), (1, hi[axis])):
            grid = np.zeros((idx.size, 3))
            grid[:, u], grid[:, v], grid[:, axis] = gu.ravel(), gv.ravel(), value
            f = quad if side * sign > 0 else quad[:, [0, 2, 1]]
            verts.append(grid)
            faces.append(f + count)
            count += len(grid)
    return np.concatenate(verts), np.concatenate(faces).astype(np.int64)


def _rot(axis: int, angle: float) -> np.ndarray:
    """Right-handed rotation by ``angle`` radians about axis 0 (x), 1 (y) or 2 (z)."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = [a for a in range(3) if a != axis]
    if axis == 1:  # keep the cyclic order z -> x
        u, v = v, u
    r = np.eye(3)
    r[u, u], r[u, v], r[v, u], r[v, v] = c, -s, s, c
    return r


def _place(piece, rotation=None, pivot=(0.0, 0.0, 0.0), translation=(0.0, 0.0, 0.0)):
    """Rotate a piece about ``pivot`` then translate it."""
    verts, faces = piece
    pivot = np.asarray(pivot, float)
    if rotation is not None:
        verts = (verts - pivot) @ np.asarray(rotation).T + pivot
    return verts + np.asarray(translation, float), faces


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed surface, positive when its faces are oriented outward."""
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return float(np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() / 6.0)


def _split_creases(verts: np.ndarray, faces: np.ndarray, degrees: float = _CREASE_DEGREES):
    """Duplicate vertices along edges whose dihedral angle exceeds ``degrees``.

    Corners of faces meeting at a vertex share it only if they are linked through edges
    between faces whose normals differ by at most ``degrees`` (auto-smooth).
    """
    num_faces = len(faces)
    normals = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
    corner = np.arange(3 * num_faces).reshape(num_faces, 3)
    e_from, e_to = faces.ravel(), faces[:, [1, 2, 0]].ravel()
    c_from, c_to = corner.ravel(), corner[:, [1, 2, 0]].ravel()
    face_of = np.repeat(np.arange(num_faces), 3)
    key = np.minimum(e_from, e_to) * (len(verts) + 1) + np.maximum(e_from, e_to)
    order = np.argsort(key, kind="stable")
    _, start, counts = np.unique(key[order], return_index=True, return_counts=True)
    first = start[counts == 2]
    a, b = order[first], order[first + 1]
    smooth = (normals[face_of[a]] * normals[face_of[b]]).sum(axis=1) >= math.cos(math.radians(degrees))
    a, b = a[smooth], b[smooth]
    partner_from = np.where(e_from[b] == e_from[a], c_from[b], c_to[b])
    partner_to = np.where(e_to[b] == e_to[a], c_to[b], c_from[b])
    rows = np.concatenate([c_from[a], c_to[a]])
    cols = np.concatenate([partner_from, partner_to])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(3 * num_faces, 3 * num_faces))
    num, labels = connected_components(graph, directed=False)
    new_verts = np.zeros((num, 3))
    new_verts[labels] = verts[faces.ravel()]
    return new_verts, labels.reshape(num_faces, 3).astype(np.int64)


class _Builder:
    """Collects closed pieces into named parts, then makes the canonical :class:`Shape`."""

    def __init__(self, max_edge: float):
        self.max_edge = max_edge
        self.pieces: list[tuple[str, np.ndarray, np.ndarray, tuple[float, float, float]]] = []

    def add(self, part: str, piece, color) -> None:
        verts, faces = piece
        if _signed_volume(verts, faces) < 0:
            faces = faces[:, [0, 2, 1]]
        verts, faces = _split_creases(verts, faces)
        self.pieces.append((part, verts, faces, tuple(float(c) for c in color)))

    def box(self, part: str, lo, hi, color, rotation=None, pivot=(0.0, 0.0, 0.0)) -> None:
        self.add(part, _place(_box(lo, hi, self.max_edge), rotation, pivot), color)

    def build(self, category: str, seed: int) -> Shape:
        names = list(dict.fromkeys(p[0] for p in self.pieces))
        verts, faces, colors, part_ids = [], [], [], []
        count = 0
        for name, v, f, color in self.pieces:
            verts.append(v)
            faces.append(f + count)
            colors.append(np.tile(color, (len(v), 1)))
            part_ids.append(np.full(len(f), names.index(name)))
            count += len(v)
        v = np.concatenate(verts)
        v = v - (v.min(axis=0) + v.max(axis=0)) / 2
        v = v / np.linalg.norm(v, axis=1).max()
        mesh_id = f"{category}-{seed:05d}"
        mesh = Mesh(
            verts=torch.from_numpy(v.astype(np.float32)),
            faces=torch.from_numpy(np.concatenate(faces).astype(np.int64)),
            vertex_colors=torch.from_numpy(np.concatenate(colors).astype(np.float32)),
            name=mesh_id,
        )
        return Shape(
            mesh=mesh,
            part_ids=torch.from_numpy(np.concatenate(part_ids).astype(np.int64)),
            category=category,
            mesh_id=mesh_id,
            part_names=tuple(names),
        )


# ------------------------------------------------------------------------------ palettes

_PAINT = [(0.75, 0.1, 0.1), (0.1, 0.25, 0.6), (0.85, 0.85, 0.85), (0.15, 0.15, 0.17), (0.55, 0.57, 0.6),
          (0.9, 0.75, 0.15), (0.15, 0.45, 0.25), (0.95, 0.95, 0.95), (0.45, 0.1, 0.15)]
_WOOD = [(0.55, 0.35, 0.18), (0.7, 0.5, 0.3), (0.4, 0.25, 0.12), (0.82, 0.68, 0.48), (0.3, 0.2, 0.12)]
_FABRIC = [(0.35, 0.4, 0.5), (0.6, 0.2, 0.2), (0.75, 0.7, 0.6), (0.25, 0.45, 0.35), (0.5, 0.5, 0.52),
           (0.2, 0.22, 0.3), (0.8, 0.55, 0.3)]
_METAL = [(0.6, 0.6, 0.62), (0.2, 0.2, 0.22), (0.75, 0.72, 0.65), (0.35, 0.35, 0.38)]
_PLASTIC = [(0.9, 0.9, 0.88), (0.15, 0.15, 0.16), (0.8, 0.2, 0.2), (0.2, 0.4, 0.75), (0.95, 0.8, 0.2),
            (0.3, 0.6, 0.35)]
_GLASS = [(0.2, 0.45, 0.25), (0.45, 0.3, 0.12), (0.55, 0.75, 0.85), (0.3, 0.35, 0.55), (0.85, 0.88, 0.9)]
_PAPER = [(0.95, 0.93, 0.85), (0.9, 0.2, 0.15), (0.2, 0.3, 0.6), (0.95, 0.8, 0.3)]
_TYRE = (0.08, 0.08, 0.09)
_WINDOW = (0.15, 0.2, 0.28)
_HEADLIGHT = (0.98, 0.95, 0.75)
_TAILLIGHT = (0.85, 0.05, 0.05)


def _pick(rng: np.random.Generator, palette):
    return palette[int(rng.integers(len(palette)))]


# ------------------------------------------------------------------------------ categories
# Each builder works in its own units (roughly metres, or the object's main radius) with
# +y up, the front to +z and the ground at y = 0; ``_Builder.build`` centres and scales.


def _car(rng) -> _Builder:
    style = rng.choice(["sedan", "hatchback", "suv"])
    suv = style == "suv"
    L, W = rng.uniform(3.8, 5.0), rng.uniform(1.65, 1.95)
    b = _Builder(max_edge=L / 12)
    r = rng.uniform(0.3, 0.38) + 0.05 * suv
    y0 = rng.uniform(0.15, 0.25) + 0.1 * suv
    hb = rng.uniform(0.5, 0.65) + 0.15 * suv
    y1 = y0 + hb
    nose = rng.uniform(0.2, 0.5)
    yn = y0 + 0.45 * hb
    body = [(-L / 2 + 0.15, y0), (L / 2 - 0.25, y0), (L / 2, yn), (L / 2 - nose, y1), (-L / 2 + 0.2, y1),
            (-L / 2, y0 + 0.5 * hb)]
    paint = _pick(rng, _PAINT)
    b.add("body", _prism(body, -W / 2, W / 2, segments=4), paint)
    # cabin: a trapezoid side profile (windscreen slanted forward)
    hc = rng.uniform(0.42, 0.58)
    if style == "sedan":
        zr = -L / 2 + L * rng.uniform(0.12, 0.2)
        zf = zr + L * rng.uniform(0.5, 0.6)
        rear = hc * rng.uniform(0.9, 1.5)
    else:
        zr = -L / 2 + rng.uniform(0.15, 0.3)
        zf = zr + L * rng.uniform(0.62, 0.72)
        rear = hc * rng.uniform(0.05, 0.4)
    zf = min(zf, L / 2 - nose - 0.1)
    screen = hc * rng.uniform(0.9, 1.5)
    roof = (zf - screen) - (zr + rear)
    if roof < 0.5:  # keep a roof at least 0.5 long
        screen -= (0.5 - roof) / 2
        rear -= (0.5 - roof) / 2
    cabin = [(zr, y1), (zf, y1), (zf - screen, y1 + hc), (zr + rear, y1 + hc)]
    wc = W * rng.uniform(0.8, 0.9)
    b.add("cabin", _prism(cabin, -wc / 2, wc / 2, segments=3), _WINDOW)
    # wheels
    tw = rng.uniform(0.18, 0.26)
    wheelbase = L * rng.uniform(0.56, 0.64)
    shift = L * rng.uniform(-0.03, 0.03)
    for z in (wheelbase / 2 + shift, -wheelbase / 2 + shift):
        for side in (-1, 1):
            x = side * (W / 2 - tw / 2 + 0.03)
            b.add("wheels", _cylinder((x - tw / 2, r, z), (x + tw / 2, r, z), r, 24), _TYRE)
    # lights: boxes sunk into the nose and the tail
    hl_h, hl_w = 0.1, W * rng.uniform(0.15, 0.22)
    for side in (-1, 1):
        x = side * (W / 2 - 0.1 - hl_w / 2)
        b.box("headlights", (x - hl_w / 2, yn - 0.02, L / 2 - 0.3), (x + hl_w / 2, yn + hl_h, L / 2 + 0.015),
              _HEADLIGHT)
        yt = y0 + 0.5 * hb
        b.box("taillights", (x - hl_w / 2, yt, -L / 2 - 0.02), (x + hl_w / 2, yt + hl_h, -L / 2 + 0.3), _TAILLIGHT)
    return b


def _chair(rng) -> _Builder:
    w, d = rng.uniform(0.42, 0.56), rng.uniform(0.4, 0.52)
    h, t = rng.uniform(0.4, 0.5), rng.uniform(0.03, 0.08)
    b = _Builder(max_edge=0.08)
    legs_style = rng.choice(["square", "round", "pedestal"], p=[0.5, 0.3, 0.2])
    wood, fabric = _pick(rng, _WOOD), _pick(rng, _FABRIC)
    frame = _pick(rng, _METAL) if legs_style == "pedestal" else wood
    seat_color = fabric if rng.random() < 0.5 else wood
    b.box("seat", (-w / 2, h - t, -d / 2), (w / 2, h, d / 2), seat_color)
    # back: solid panel or posts with slats, tilted backwards about the seat's rear edge
    hb, bt = rng.uniform(0.35, 0.6), rng.uniform(0.02, 0.05)
    tilt = -math.radians(rng.uniform(0, 15))  # negative about x: the top goes to -z
    pivot, rot = (0.0, h, -d / 2), _rot(0, tilt)
    if rng.random() < 0.5:
        b.box("back", (-w / 2, h, -d / 2), (w / 2, h + hb, -d / 2 + bt), seat_color, rot, pivot)
    else:
        post = rng.uniform(0.025, 0.045)
        rail = rng.uniform(0.05, 0.12)
        for side in (-1, 1):
            x = side * (w / 2 - post / 2)
            b.box("back", (x - post / 2, h, -d / 2), (x + post / 2, h + hb, -d / 2 + bt), wood, rot, pivot)
        b.box("back", (-w / 2 + post, h + hb - rail, -d / 2), (w / 2 - post, h + hb, -d / 2 + bt), wood, rot, pivot)
        slats = int(rng.integers(1, 5))
        inner = w - 2 * post
        sw = inner / (2 * slats + 1)
        for k in range(slats):
            x0 = -w / 2 + post + (2 * k + 1) * sw
            b.box("back", (x0, h, -d / 2 + bt * 0.2), (x0 + sw, h + hb - rail, -d / 2 + bt * 0.8), wood, rot, pivot)
    # legs
    lt = rng.uniform(0.025, 0.05)
    if legs_style == "pedestal":
        b.add("legs", _cylinder((0, 0.07, 0), (0, h - t, 0), rng.uniform(0.02, 0.035), 16), frame)
        spread = rng.uniform(0.25, 0.32)
        for k in range(5):
            angle = 2 * math.pi * k / 5
            b.box("legs", (-0.02, 0.04, 0), (0.02, 0.08, spread), frame, _rot(1, angle))
            cx, cz = spread * math.sin(angle), spread * math.cos(angle)
            b.add("legs", _cylinder((cx, 0, cz), (cx, 0.04, cz), 0.025, 12), _TYRE)
    else:
        inset = rng.uniform(0.0, 0.03)
        for sx in (-1, 1):
            for sz in (-1, 1):
                x, z = sx * (w / 2 - lt / 2 - inset), sz * (d / 2 - lt / 2 - inset)
                if legs_style == "square":
                    b.box("legs", (x - lt / 2, 0, z - lt / 2), (x + lt / 2, h - t, z + lt / 2), frame)
                else:
                    b.add("legs", _cylinder((x, 0, z), (x, h - t, z), lt * 0.35, 12, radius1=lt / 2), frame)
        if legs_style == "square" and rng.random() < 0.5:  # stretchers
            ys = rng.uniform(0.1, 0.2)
            for sx in (-1, 1):
                x = sx * (w / 2 - lt / 2 - inset)
                b.box("legs", (x - lt / 3, ys, -d / 2 + inset), (x + lt / 3, ys + lt / 1.5, d / 2 - inset), frame)
    # armrests
    if rng.random() < 0.35:
        ah, aw = rng.uniform(0.18, 0.26), rng.uniform(0.04, 0.07)
        for side in (-1, 1):
            x = side * (w / 2 - aw / 2)
            b.box("arms", (x - aw / 2, h + ah - 0.03, -d / 2 + bt), (x + aw / 2, h + ah, d / 2), frame)
            b.box("arms", (x - 0.015, h, d / 2 - 0.07), (x + 0.015, h + ah - 0.03, d / 2 - 0.04), frame)
    return b


def _table(rng) -> _Builder:
    height, tt = rng.uniform(0.68, 0.78), rng.uniform(0.025, 0.06)
    wood = _pick(rng, _WOOD)
    legs_color = wood if rng.random() < 0.6 else _pick(rng, _METAL)
    round_top = rng.random() < 0.3
    b = _Builder(max_edge=0.15)
    if round_top:
        radius = rng.uniform(0.4, 0.7)
        b.add("top", _lathe([(radius, height - tt), (radius, height)], 32), wood)
        half_x = half_z = radius * 0.6
    else:
        length = rng.uniform(0.9, 2.0)
        depth = length * rng.uniform(0.45, 0.75)
        b.box("top", (-length / 2, height - tt, -depth / 2), (length / 2, height, depth / 2), wood)
        inset = rng.uniform(0.03, 0.12)
        half_x, half_z = length / 2 - inset, depth / 2 - inset
    style = rng.choice(["pedestal", "four"]) if round_top else rng.choice(["four", "four", "trestle"])
    lt = rng.uniform(0.04, 0.08)
    if style == "four":
        round_legs = rng.random() < 0.4
        for sx in (-1, 1):
            for sz in (-1, 1):
                x, z = sx * (half_x - lt / 2), sz * (half_z - lt / 2)
                if round_legs:
                    b.add("legs", _cylinder((x, 0, z), (x, height - tt, z), lt * 0.35, 12, radius1=lt / 2), legs_color)
                else:
                    b.box("legs", (x - lt / 2, 0, z - lt / 2), (x + lt / 2, height - tt, z + lt / 2), legs_color)
        if not round_top and rng.random() < 0.5:  # apron
            ah = rng.uniform(0.06, 0.12)
            y0 = height - tt - ah
            b.box("apron", (-half_x, y0, half_z - lt / 2 - 0.01), (half_x, height - tt, half_z - lt / 2 + 0.01), wood)
            b.box("apron", (-half_x, y0, -half_z + lt / 2 - 0.01), (half_x, height - tt, -half_z + lt / 2 + 0.01), wood)
            b.box("apron", (half_x - lt / 2 - 0.01, y0, -half_z), (half_x - lt / 2 + 0.01, height - tt, half_z), wood)
            b.box("apron", (-half_x + lt / 2 - 0.01, y0, -half_z), (-half_x + lt / 2 + 0.01, height - tt, half_z), wood)
    elif style == "pedestal":
        foot = rng.uniform(0.25, 0.4)
        b.add("legs", _lathe([(foot, 0.0), (foot, 0.03), (0.06, 0.08)], 24), legs_color)
        b.add("legs", _cylinder((0, 0.05, 0), (0, height - tt, 0), rng.uniform(0.04, 0.07), 16), legs_color)
    else:  # trestle: two slabs at the ends joined by a stretcher
        for sx in (-1, 1):
            x = sx * (half_x - lt / 2)
            b.box("legs", (x - lt / 2, 0, -half_z), (x + lt / 2, 0.05, half_z), legs_color)
            b.box("legs", (x - lt / 2, 0.05, -half_z * 0.25), (x + lt / 2, height - tt, half_z * 0.25), legs_color)
        b.box("legs", (-half_x, 0.25, -0.03), (half_x, 0.31, 0.03), legs_color)
    return b


def _sofa(rng) -> _Builder:
    L, D = rng.uniform(1.5, 2.4), rng.uniform(0.8, 1.0)
    b = _Builder(max_edge=0.12)
    leg_h, seat_h = rng.uniform(0.03, 0.12), rng.uniform(0.4, 0.48)
    ct = rng.uniform(0.1, 0.16)
    base_top = seat_h - ct
    back_h, back_t = rng.uniform(0.7, 0.95), rng.uniform(0.15, 0.25)
    fabric = _pick(rng, _FABRIC)
    b.box("base", (-L / 2, leg_h, -D / 2), (L / 2, base_top, D / 2), fabric)
    b.box("back", (-L / 2, base_top, -D / 2), (L / 2, back_h, -D / 2 + back_t), fabric)
    arms = rng.random() < 0.85
    arm_w = rng.uniform(0.08, 0.22) if arms else 0.0
    if arms:
        arm_h = min(seat_h + rng.uniform(0.1, 0.25), back_h - 0.1)
        for side in (-1, 1):
            x0 = side * L / 2
            b.box("arms", (min(x0, x0 - side * arm_w), base_top, -D / 2 + back_t),
                  (max(x0, x0 - side * arm_w), arm_h, D / 2), fabric)
    n = int(rng.integers(1, 4))
    inner = L - 2 * arm_w
    gap = 0.01
    cushion = tuple(min(1.0, c * 1.12) for c in fabric)
    for k in range(n):
        x0 = -L / 2 + arm_w + k * inner / n + gap
        b.box("cushions", (x0, base_top, -D / 2 + back_t), (x0 + inner / n - 2 * gap, seat_h, D / 2 - 0.02), cushion)
    legs = _pick(rng, _WOOD)
    for sx in (-1, 1):
        for sz in (-1, 1):
            x, z = sx * (L / 2 - 0.06), sz * (D / 2 - 0.06)
            b.box("legs", (x - 0.025, 0, z - 0.025), (x + 0.025, leg_h, z + 0.025), legs)
    return b


def _bed(rng) -> _Builder:
    W, L = rng.uniform(0.9, 1.9), rng.uniform(1.9, 2.2)
    b = _Builder(max_edge=0.2)
    leg_h, frame_top = rng.uniform(0.05, 0.15), rng.uniform(0.25, 0.4)
    mat_top = frame_top + rng.uniform(0.15, 0.3)
    wood = _pick(rng, _WOOD)
    b.box("frame", (-W / 2, leg_h, -L / 2), (W / 2, frame_top, L / 2), wood)
    b.box("mattress", (-W / 2 + 0.02, frame_top, -L / 2 + 0.02), (W / 2 - 0.02, mat_top, L / 2 - 0.02),
          (0.93, 0.93, 0.9))
    hb_t, hb_h = rng.uniform(0.04, 0.1), mat_top + rng.uniform(0.35, 0.8)
    b.box("headboard", (-W / 2 - 0.02, 0, -L / 2 - hb_t), (W / 2 + 0.02, hb_h, -L / 2), wood)
    if rng.random() < 0.5:
        fb_h = mat_top + rng.uniform(-0.1, 0.15)
        b.box("footboard", (-W / 2 - 0.02, 0, L / 2), (W / 2 + 0.02, fb_h, L / 2 + hb_t), wood)
    if rng.random() < 0.7:
        b.box("blanket", (-W / 2 + 0.01, mat_top - 0.1, -L / 2 + L * rng.uniform(0.3, 0.45)),
              (W / 2 - 0.01, mat_top + 0.02, L / 2 - 0.01), _pick(rng, _FABRIC))
    pillows = 2 if W > 1.3 else 1
    pw = (W - 0.2) / pillows
    for k in range(pillows):
        x = -W / 2 + 0.1 + (k + 0.5) * pw
        b.add("pillows", _ellipsoid((x, mat_top + 0.05, -L / 2 + 0.25), (pw * 0.45, 0.07, 0.18)), (0.97, 0.97, 0.97))
    for sx in (-1, 1):
        for sz in (-1, 1):
            x, z = sx * (W / 2 - 0.05), sz * (L / 2 - 0.05)
            b.box("legs", (x - 0.03, 0, z - 0.03), (x + 0.03, leg_h, z + 0.03), wood)
    return b


def _bench(rng) -> _Builder:
    L, D, H = rng.uniform(1.1, 2.0), rng.uniform(0.3, 0.5), rng.uniform(0.4, 0.48)
    b = _Builder(max_edge=0.15)
    wood, metal = _pick(rng, _WOOD), _pick(rng, _METAL)
    legs_color = metal if rng.random() < 0.5 else wood
    st = rng.uniform(0.03, 0.06)
    slats = int(rng.integers(1, 6))
    gap = 0.015 if slats > 1 else 0.0
    sd = (D - gap * (slats - 1)) / slats
    for k in range(slats):
        z0 = -D / 2 + k * (sd + gap)
        b.box("seat", (-L / 2, H - st, z0), (L / 2, H, z0 + sd), wood)
    inset = rng.uniform(0.05, 0.2)
    lt = rng.uniform(0.04, 0.07)
    back = rng.random() < 0.5
    back_h = H + rng.uniform(0.3, 0.45)
    if rng.random() < 0.5:  # four legs
        for sx in (-1, 1):
            for sz in (-1, 1):
                x, z = sx * (L / 2 - inset), sz * (D / 2 - lt / 2 - 0.01)
                top = back_h if (back and sz < 0) else H - st
                b.box("legs", (x - lt / 2, 0, z - lt / 2), (x + lt / 2, top, z + lt / 2), legs_color)
    else:  # side panels
        for sx in (-1, 1):
            x = sx * (L / 2 - inset)
            b.box("legs", (x - lt / 2, 0, -D / 2 + 0.02), (x + lt / 2, H - st, D / 2 - 0.02), legs_color)
            if back:
                b.box("legs", (x - lt / 2, H - st, -D / 2 - 0.03), (x + lt / 2, back_h, -D / 2 + 0.02), legs_color)
    if back:
        rails = int(rng.integers(1, 4))
        rh = (back_h - H - 0.05) / (2 * rails)
        for k in range(rails):
            y0 = back_h - (2 * k + 1) * rh
            b.box("back", (-L / 2, y0, -D / 2 - 0.03), (L / 2, y0 + rh * 1.4, -D / 2), wood)
        if rng.random() < 0.5:
            for side in (-1, 1):
                x = side * (L / 2 - inset)
                b.box("arms", (x - 0.03, H + 0.2, -D / 2), (x + 0.03, H + 0.24, D / 2), legs_color)
                b.box("arms", (x - 0.02, H, D / 2 - 0.06), (x + 0.02, H + 0.2, D / 2 - 0.02), legs_color)
    return b


def _bottle(rng) -> _Builder:
    R = 1.0
    b = _Builder(max_edge=0.5)
    style = rng.choice(["wine", "water", "flask"])
    hb = rng.uniform(2.0, 3.0) if style == "flask" else rng.uniform(2.8, 5.0)
    rn = rng.uniform(0.25, 0.45)
    hs = rng.uniform(0.8, 1.5) if style == "wine" else rng.uniform(0.3, 0.9)
    hn = rng.uniform(1.0, 2.2) if style == "wine" else rng.uniform(0.3, 0.9)
    rb = R * (rng.uniform(0.6, 0.8) if style == "flask" else 1.0)
    profile = [(rb * 0.9, 0.0), (rb, 0.08)]
    if style == "flask":  # a bulging body
        profile += [(R * math.sin(math.pi * (0.25 + 0.5 * s)) ** 0.5, hb * s) for s in np.linspace(0.1, 0.9, 7)]
    else:
        profile.append((R, hb))
    for s in np.linspace(0.15, 1.0, 6):  # shoulder: quarter ellipse (or a straight cone)
        if style == "water":
            rs = R + (rn - R) * s
        else:
            rs = rn + (R - rn) * math.cos(s * math.pi / 2)
        profile.append((rs, hb + hs * (math.sin(s * math.pi / 2) if style != "water" else s)))
    top = hb + hs + hn
    profile += [(rn, top - 0.1), (rn * 1.12, top - 0.05), (rn * 1.12, top), (0.0, top)]
    glass = _pick(rng, _GLASS)
    b.add("body", _lathe(profile, 24), glass)
    cap_h = rng.uniform(0.25, 0.6)
    b.add("cap", _lathe([(rn * 1.18, top - cap_h), (rn * 1.18, top + 0.03)], 24), _pick(rng, _PLASTIC + _METAL))
    if rng.random() < 0.7 and style != "flask":
        y0 = hb * rng.uniform(0.2, 0.35)
        y1 = hb * rng.uniform(0.65, 0.85)
        b.add("label", _lathe([(R * 1.015, y0), (R * 1.015, y1)], 24), _pick(rng, _PAPER))
    return b



def _mug(rng) -> _Builder:
    R, H = 1.0, rng.uniform(1.6, 2.6)
    b = _Builder(max_edge=0.5)
    t, rt = rng.uniform(0.06, 0.12), R * rng.uniform(1.0, 1.12)
    bottom = rng.uniform(0.1, 0.2)
    profile = [(0.0, 0.0), (R - 0.05, 0.0), (R, 0.05), (rt, H), (rt - t, H), (R - t, bottom), (0.0, bottom)]
    color = _pick(rng, _PLASTIC + [(0.95, 0.95, 0.92), (0.2, 0.3, 0.5), (0.6, 0.35, 0.25)])
    b.add("body", _lathe(profile, 28), color)
    # handle: a C-shaped tube in the x-y plane on +x, its ends sunk into the wall
    ya, yb = H * rng.uniform(0.72, 0.85), H * rng.uniform(0.15, 0.32)
    reach, tr = rng.uniform(0.45, 0.8), rng.uniform(0.07, 0.13)
    squareness = rng.uniform(0.35, 1.0)  # exponent: 1 round, lower is squarer
    s = np.linspace(0, np.pi, 17)
    ymid, yhalf = (ya + yb) / 2, (ya - yb) / 2
    y = ymid + yhalf * np.sign(np.cos(s)) * np.abs(np.cos(s)) ** squareness
    wall = R + (rt - R) * y / H - t / 2
    x = wall + (reach + t / 2) * np.abs(np.sin(s)) ** squareness
    b.add("handle", _tube(np.stack([x, y, np.zeros_like(s)], axis=1), tr, 12), color)
    return b


def _airplane(rng) -> _Builder:
    style = rng.choice(["airliner", "light", "fighter"])
    b = _Builder(max_edge=0.2)
    Lf = 1.0
    rf = rng.uniform(*{"airliner": (0.045, 0.065), "light": (0.055, 0.075), "fighter": (0.045, 0.06)}[style])
    nose = rf * (rng.uniform(3.0, 5.0) if style == "fighter" else rng.uniform(1.2, 2.2))
    tail = Lf * rng.uniform(0.18, 0.3)
    # fuselage: a lathe along y, then turned so that +y goes to +z (nose at +z)
    profile = [(0.0, -Lf / 2), (rf * 0.3, -Lf / 2 + 0.005)]
    profile += [(rf * (0.3 + 0.7 * s ** 0.7), -Lf / 2 + tail * s) for s in np.linspace(0.2, 1.0, 5)]
    profile += [(rf * math.cos(a), Lf / 2 - nose + nose * math.sin(a)) for a in np.linspace(0, math.pi / 2, 7)[:-1]]
    profile.append((0.0, Lf / 2))
    paint = _pick(rng, [(0.92, 0.92, 0.93), (0.75, 0.77, 0.8), (0.55, 0.58, 0.6), (0.9, 0.9, 0.85)])
    b.add("fuselage", _place(_lathe(profile, 20), _rot(0, math.pi / 2)), paint)
    # wings: two convex planforms in (x, z), extruded along y
    if style == "airliner":
        span, cr = rng.uniform(0.42, 0.6), rng.uniform(0.15, 0.22)
        ct, sweep, yw = cr * rng.uniform(0.25, 0.45), rng.uniform(22, 35), -rf * 0.45
    elif style == "light":
        span, cr = rng.uniform(0.5, 0.7), rng.uniform(0.13, 0.18)
        ct, sweep, yw = cr * rng.uniform(0.65, 1.0), rng.uniform(-2, 5), rf * 0.8
    else:
        span, cr = rng.uniform(0.22, 0.32), rng.uniform(0.35, 0.5)
        ct, sweep, yw = cr * rng.uniform(0.05, 0.2), rng.uniform(40, 58), 0.0
    zle = rng.uniform(0.05, 0.15) + (cr / 2 if style == "fighter" else 0.0) - (0.1 if style == "fighter" else 0.0)
    tw = rng.uniform(0.012, 0.02)
    dihedral = math.radians(rng.uniform(0, 6) if style == "airliner" else rng.uniform(-1, 3))
    tan = math.tan(math.radians(sweep))
    wing_color = tuple(c * 0.95 for c in paint)
    for side in (-1, 1):
        tip = zle - span * tan
        planform = [(0, zle), (side * span, tip), (side * span, tip - ct), (0, zle - cr)]
        wing = _prism(planform, yw - tw / 2, yw + tw / 2, axes=(0, 2, 1))
        b.add("wings", _place(wing, _rot(2, side * dihedral), pivot=(0, yw, 0)), wing_color)
    # tail: horizontal stabilisers and a vertical fin
    st, crt = span * rng.uniform(0.3, 0.42), min(cr * rng.uniform(0.5, 0.7), 0.18)
    zt = -Lf / 2 + crt + 0.02
    fin_h, fin_c = rng.uniform(0.1, 0.18), rng.uniform(0.12, 0.2)
    fin_sweep = math.tan(math.radians(rng.uniform(30, 50)))
    t_tail = style != "fighter" and rng.random() < 0.2
    yt = rf * 0.5 + fin_h - 0.01 if t_tail else 0.0
    for side in (-1, 1):
        tip = zt - st * tan * 0.8 - 0.01
        planform = [(0, zt), (side * st, tip), (side * st, tip - crt * 0.5), (0, zt - crt)]
        b.add("tail", _prism(planform, yt - tw / 2, yt + tw / 2, axes=(0, 2, 1)), wing_color)
    z0 = -Lf / 2 + 0.01
    tip_te = max(z0 + fin_c * 0.35 - fin_h * fin_sweep, -Lf / 2 + 0.005)  # the tip's trailing edge
    fin = [(z0 + fin_c, rf * 0.3), (tip_te + fin_c * 0.6, rf * 0.5 + fin_h), (tip_te, rf * 0.5 + fin_h), (z0, rf * 0.3)]
    b.add("tail", _prism(fin, -tw / 2, tw / 2), wing_color)
    # engines under the wings, or a propeller
    if style == "airliner":
        rn, ln = rng.uniform(0.025, 0.04), rng.uniform(0.1, 0.16)
        positions = [0.35] if rng.random() < 0.75 else [0.3, 0.62]
        for frac in positions:
            for side in (-1, 1):
                x = side * span * frac
                z_front = zle - span * frac * tan + ln * 0.45
                y = yw + x * side * math.tan(dihedral) - tw / 2 - rn * 0.9
                b.add("engines", _cylinder((x, y, z_front - ln), (x, y, z_front), rn * 0.8, 16, radius1=rn),
                      (0.5, 0.52, 0.55))
    elif style == "light":
        blade = rng.uniform(0.12, 0.18)
        b.box("propeller", (-0.012, -blade, Lf / 2 - 0.01), (0.012, blade, Lf / 2), (0.15, 0.15, 0.15))
    return b


def _monitor(rng) -> _Builder:
    W = rng.uniform(0.45, 0.75)
    Hs, T = W / rng.uniform(1.25, 2.0), rng.uniform(0.02, 0.05)
    b = _Builder(max_edge=0.1)
    bezel, chin = rng.uniform(0.008, 0.03), rng.uniform(0.0, 0.04)
    y0 = rng.uniform(0.06, 0.2)
    housing = _pick(rng, [(0.1, 0.1, 0.11), (0.2, 0.2, 0.22), (0.85, 0.85, 0.86), (0.6, 0.6, 0.62)])
    b.box("frame", (-W / 2, y0, -T), (W / 2, y0 + Hs, 0.0), housing)
    b.box("screen", (-W / 2 + bezel, y0 + bezel + chin, -0.005), (W / 2 - bezel, y0 + Hs - bezel, 0.003),
          (0.05, 0.07, 0.12))
    back = T
    if rng.random() < 0.5:  # a bulge behind the panel
        depth = rng.uniform(0.02, 0.08)
        b.box("frame", (-W * 0.3, y0 + Hs * 0.2, -T - depth), (W * 0.3, y0 + Hs * 0.75, -T), housing)
        back = T + depth
    style = rng.choice(["plate", "disc", "feet"])
    stand = housing if rng.random() < 0.6 else _pick(rng, _METAL)
    if style == "feet":
        for side in (-1, 1):
            x = side * (W / 2 - W * 0.15)
            b.box("stand", (x - 0.015, 0.01, -T / 2 - 0.01), (x + 0.015, y0 + 0.02, -T / 2 + 0.01), stand)
            b.box("stand", (x - 0.02, 0.0, -0.12), (x + 0.02, 0.015, 0.06), stand)
    else:
        nw, nt = rng.uniform(0.04, 0.1), rng.uniform(0.015, 0.03)
        zn = -back - nt / 2
        b.box("stand", (-nw / 2, 0.01, zn - nt / 2), (nw / 2, y0 + Hs * 0.45, zn + nt / 2), stand)
        if style == "plate":
            bw, bd = rng.uniform(0.18, 0.3), rng.uniform(0.14, 0.2)
            b.box("stand", (-bw / 2, 0, zn - bd * 0.5), (bw / 2, 0.015, zn + bd * 0.5), stand)
        else:
            rb = rng.uniform(0.08, 0.12)
            disc = _lathe([(rb, 0.0), (rb, 0.01), (rb * 0.8, 0.018)], 24)
            b.add("stand", _place(disc, translation=(0.0, 0.0, zn)), stand)
    return b


def _bookshelf(rng) -> _Builder:
    W, H, D = rng.uniform(0.6, 1.2), rng.uniform(0.8, 2.0), rng.uniform(0.25, 0.4)
    t, kick = rng.uniform(0.015, 0.03), rng.uniform(0.0, 0.08)
    b = _Builder(max_edge=0.2)
    wood = _pick(rng, _WOOD + [(0.95, 0.95, 0.93), (0.15, 0.15, 0.15)])
    for side in (-1, 1):
        x = side * (W / 2 - t / 2)
        b.box("frame", (x - t / 2, 0, -D / 2), (x + t / 2, H, D / 2), wood)
    b.box("frame", (-W / 2 + t, H - t, -D / 2), (W / 2 - t, H, D / 2), wood)
    b.box("frame", (-W / 2 + t, kick, -D / 2), (W / 2 - t, kick + t, D / 2), wood)
    b.box("frame", (-W / 2 + t, kick + t, -D / 2), (W / 2 - t, H - t, -D / 2 + 0.01), wood)
    if kick > 0.02:
        b.box("frame", (-W / 2 + t, 0, D / 2 - t - 0.01), (W / 2 - t, kick, D / 2 - 0.01), wood)
    rows = max(2, round((H - kick) / rng.uniform(0.28, 0.4)))
    pitch = (H - kick - t) / rows
    for k in range(1, rows):
        y = kick + k * pitch
        b.box("shelves", (-W / 2 + t, y, -D / 2 + 0.01), (W / 2 - t, y + t, D / 2 - 0.005), wood)
    if rng.random() < 0.75:
        for k in range(rows):
            if rng.random() < 0.3:
                continue
            floor, room = kick + t + k * pitch, pitch - t
            x = -W / 2 + t + 0.005
            end = W / 2 - t - (W - 2 * t) * rng.uniform(0.0, 0.5)
            while True:
                bw = rng.uniform(0.02, 0.05)
                if x + bw > end:
                    break
                bh, bd = room * rng.uniform(0.6, 0.9), (D - 0.01) * rng.uniform(0.65, 0.9)
                color = _pick(rng, _FABRIC + _PAPER)
                b.add("books", _box((x, floor, -D / 2 + 0.01), (x + bw, floor + bh, -D / 2 + 0.01 + bd), 1.0), color)
                x += bw + 0.002
    return b


def _lamp(rng) -> _Builder:
    style = rng.choice(["table", "floor", "desk"])
    b = _Builder(max_edge=0.1)
    metal, shade_color = _pick(rng, _METAL + _PLASTIC[:3]), _pick(rng, _PAPER + [(0.9, 0.85, 0.7)])
    if style == "desk":
        rb = rng.uniform(0.07, 0.11)
        b.add("base", _lathe([(rb, 0.0), (rb, 0.02), (rb * 0.7, 0.035)], 24), metal)
        lower, upper = rng.uniform(0.25, 0.4), rng.uniform(0.25, 0.4)
        a1 = math.radians(rng.uniform(-20, 15))  # lower arm tilt from vertical (+: forward)
        a2 = math.radians(rng.uniform(50, 100))  # upper arm angle from vertical, reaching forward
        p0 = np.array([0.0, 0.03, 0.0])
        p1 = p0 + lower * np.array([0.0, math.cos(a1), math.sin(a1)])
        p2 = p1 + upper * np.array([0.0, math.cos(a2), math.sin(a2)])
        ar = rng.uniform(0.008, 0.014)
        b.add("stem", _cylinder(p0, p1, ar, 12), metal)
        b.add("stem", _cylinder(p1, p2, ar, 12), metal)
        b.add("stem", _ellipsoid(p1, (ar * 1.8,) * 3, 12, 6), metal)
        # a cone pointing down and forward, hanging from the end of the arm
        sh, sr = rng.uniform(0.1, 0.16), rng.uniform(0.06, 0.1)
        cone = _lathe([(0.0, 0.0), (ar * 1.5, 0.0), (sr, -sh), (sr * 0.95, -sh)], 24)
        b.add("shade", _place(cone, _rot(0, math.radians(rng.uniform(10, 40))), translation=p2), shade_color)
        return b
    floor = style == "floor"
    rb = rng.uniform(0.15, 0.22) if floor else rng.uniform(0.07, 0.14)
    if not floor and rng.random() < 0.5:  # a vase-like base
        hv = rng.uniform(0.12, 0.25)
        b.add("base", _lathe([(rb * 0.6, 0.0), (rb, hv * 0.4), (rb * 0.8, hv * 0.8), (rb * 0.3, hv)], 24), metal)
        base_top = hv
    else:
        bh = rng.uniform(0.02, 0.05)
        b.add("base", _lathe([(rb, 0.0), (rb, bh), (rb * 0.6, bh * 1.3)], 24), metal)
        base_top = bh
    stem_h = rng.uniform(1.1, 1.6) if floor else rng.uniform(0.2, 0.4)
    top = base_top + stem_h
    b.add("stem", _cylinder((0, base_top * 0.9, 0), (0, top, 0), rng.uniform(0.008, 0.015), 12), metal)
    sh = rng.uniform(0.15, 0.3)
    r0 = rng.uniform(0.12, 0.22)
    r1 = r0 * rng.uniform(0.45, 0.95)
    y0 = top - sh * rng.uniform(0.3, 0.6)
    b.add("shade", _lathe([(r0, y0), (r1, y0 + sh)], 24), shade_color)
    return b


def _bicycle(rng) -> _Builder:
    rw, tr = rng.uniform(0.3, 0.36), rng.uniform(0.014, 0.028)
    wb = rng.uniform(0.95, 1.1)
    b = _Builder(max_edge=0.2)
    paint = _pick(rng, _PAINT)
    rear, front = np.array([0.0, rw, -wb / 2]), np.array([0.0, rw, wb / 2])
    for hub in (rear, front):
        b.add("wheels", _torus(hub, rw - tr, tr, axis=0, segments=40, sections=10), _TYRE)
        b.add("wheels", _cylinder(hub - (0.03, 0, 0), hub + (0.03, 0, 0), 0.02, 12), (0.6, 0.6, 0.62))
        spokes = int(rng.integers(6, 13))
        for k in range(spokes):
            a = 2 * math.pi * k / spokes
            rim = hub + (rw - 2 * tr) * np.array([0.0, math.cos(a), math.sin(a)])
            b.add("wheels", _cylinder(hub, rim, 0.004, 6), (0.7, 0.7, 0.72))
    bb = np.array([0.0, rw - rng.uniform(0.0, 0.07), -wb / 2 + rng.uniform(0.38, 0.45)])
    seat_len, seat_angle = rng.uniform(0.45, 0.6), math.radians(rng.uniform(14, 20))
    st = bb + seat_len * np.array([0.0, math.cos(seat_angle), -math.sin(seat_angle)])
    head = math.radians(rng.uniform(15, 22))
    axis = np.array([0.0, math.cos(head), -math.sin(head)])
    ht_top = front + axis * (st[1] + rng.uniform(-0.02, 0.08) - rw) / math.cos(head)
    ht_bot = ht_top - axis * rng.uniform(0.12, 0.18)
    ft = rng.uniform(0.014, 0.022)
    step_through = rng.random() < 0.25
    top_end = bb + (st - bb) * 0.55 if step_through else st
    for p, q in ((bb, st), (bb, ht_bot), (top_end, ht_top), (ht_bot, ht_top)):
        b.add("frame", _cylinder(p, q, ft, 12), paint)
    for side in (-1, 1):  # stays and fork blades straddle the wheels
        off = np.array([side * (tr + 0.012), 0.0, 0.0])
        b.add("frame", _cylinder(bb, rear + off, ft * 0.6, 10), paint)
        b.add("frame", _cylinder(st, rear + off, ft * 0.6, 10), paint)
        b.add("frame", _cylinder(ht_bot, front + off, ft * 0.7, 10), paint)
    # handlebar: a stem up from the head tube, then a bar across x (ends curved back for risers)
    stem_top = ht_top + axis * rng.uniform(0.04, 0.1)
    half = rng.uniform(0.2, 0.3)
    sweep = rng.uniform(0.0, 0.08)
    xs = np.linspace(-half, half, 13)
    bar = np.stack([xs, np.full_like(xs, stem_top[1]), stem_top[2] - sweep * (np.abs(xs) / half) ** 2], axis=1)
    black = (0.12, 0.12, 0.12)
    b.add("handlebar", _cylinder(ht_top, stem_top, ft * 0.8, 10), black)
    b.add("handlebar", _tube(bar, 0.012, 10), black)
    # saddle on a seat post
    post_top = st + np.array([0.0, rng.uniform(0.05, 0.15), 0.0])
    b.add("saddle", _cylinder(st, post_top, ft * 0.7, 10), (0.6, 0.6, 0.62))
    length = rng.uniform(0.22, 0.3)
    z0 = post_top[2] - length * 0.45
    planform = [(-0.075, z0), (0.075, z0), (0.025, z0 + length), (-0.025, z0 + length)]
    b.add("saddle", _prism(planform, post_top[1], post_top[1] + 0.04, axes=(0, 2, 1)), black)
    return b


def _boat(rng) -> _Builder:
    L, W, D = 1.0, rng.uniform(0.26, 0.4), rng.uniform(0.1, 0.18)
    b = _Builder(max_edge=0.1)
    zb = rng.uniform(-0.1, 0.15)  # where the bow starts to narrow
    transom = rng.uniform(0.7, 0.9)
    sheer = rng.uniform(0.0, 0.06)
    points = []
    for z in np.linspace(-L / 2, L / 2, 21):
        if z > zb:
            half = W / 2 * math.sqrt(max(0.0, 1 - ((z - zb) / (L / 2 - zb)) ** 2))
        else:
            half = W / 2 * (transom + (1 - transom) * math.sqrt(max(0.0, (z + L / 2) / (zb + L / 2))))
        s = max(0.0, (z - zb) / (L / 2 - zb))
        deck, keel = D + sheer * s ** 2, D * (0.1 + 0.5 * s ** 2)
        if half < 1e-3:
            points.append((0.0, deck, z))
            continue
        for x, y in ((half, deck), (half * 0.9, D * 0.45 + keel * 0.5), (half * 0.4, keel), (0.0, keel * 0.8)):
            points += [(x, y, z), (-x, y, z)]
    hull_color = _pick(rng, [(0.95, 0.95, 0.95), (0.75, 0.1, 0.1), (0.1, 0.2, 0.45), (0.15, 0.15, 0.15)])
    b.add("hull", _convex(np.unique(np.round(points, 9), axis=0)), hull_color)
    style = rng.choice(["motor", "sail"])
    white = (0.93, 0.93, 0.92)
    if style == "motor":
        cl, ch = rng.uniform(0.2, 0.35), rng.uniform(0.07, 0.14)
        cz = rng.uniform(-0.25, 0.0)
        cw = W * rng.uniform(0.55, 0.75)
        z0, z1 = cz - cl / 2, cz + cl / 2
        cabin = [(z0, D - 0.01), (z1, D - 0.01), (z1 - ch * 0.8, D + ch), (z0, D + ch)]
        b.add("cabin", _prism(cabin, -cw / 2, cw / 2, segments=2), white)
        b.box("windows", (-cw / 2 - 0.003, D + ch * 0.45, cz - cl / 2 + 0.03),
              (cw / 2 + 0.003, D + ch * 0.8, cz + cl / 2 - ch * 0.8 * 0.8 - 0.02), _WINDOW)
    else:
        mz, mh = rng.uniform(0.02, 0.15), rng.uniform(0.8, 1.2)
        b.add("mast", _cylinder((0, D - 0.02, mz), (0, D + mh, mz), 0.008, 10), (0.6, 0.6, 0.62))
        boom = rng.uniform(0.3, 0.45)
        sail = [(mz - 0.01, D + 0.06), (mz - 0.01, D + mh * 0.95), (mz - boom, D + 0.06)]
        b.add("sail", _prism(sail, -0.003, 0.003), white)
        if rng.random() < 0.6:  # a jib in front of the mast
            jib = [(mz + 0.015, D + 0.05), (mz + 0.015, D + mh * 0.8), (min(mz + 0.3, L / 2 - 0.05), D + 0.05)]
            b.add("sail", _prism(jib, -0.003, 0.003), white)
    return b


def _bus(rng) -> _Builder:
    L, W = rng.uniform(9.0, 13.0), 2.55
    b = _Builder(max_edge=1.0)
    decker = rng.random() < 0.25
    H = rng.uniform(4.1, 4.4) if decker else rng.uniform(2.8, 3.3)
    c, ch = 0.35, rng.uniform(0.05, 0.3)
    top = c + H
    profile = [(-W / 2, c), (W / 2, c), (W / 2, top - ch), (W / 2 - ch, top), (-W / 2 + ch, top), (-W / 2, top - ch)]
    paint = _pick(rng, _PAINT)
    b.add("body", _prism(profile, -L / 2, L / 2, axes=(0, 1, 2), segments=8), paint)
    bands = [(0.45, 0.85)] if not decker else [(0.3, 0.5), (0.65, 0.9)]
    for lo, hi in bands:
        for side in (-1, 1):
            x = side * W / 2
            x0, x1 = sorted((x, x + side * 0.02))
            b.box("windows", (x0, c + H * lo, -L / 2 + 0.5), (x1, c + H * hi, L / 2 - 1.2), _WINDOW)
    screen_bottom = c + H * (0.25 if decker else 0.35)
    b.box("windows", (-W / 2 + 0.12, screen_bottom, L / 2), (W / 2 - 0.12, top - 0.1 * H - ch, L / 2 + 0.02), _WINDOW)
    b.box("windows", (-W / 2 + 0.3, c + H * 0.55, -L / 2 - 0.02), (W / 2 - 0.3, c + H * 0.85 - ch, -L / 2), _WINDOW)
    r, tw = rng.uniform(0.45, 0.55), 0.3
    axles = [L / 2 - rng.uniform(2.0, 2.8), -L / 2 + rng.uniform(2.5, 3.5)]
    if L > 12:
        axles.append(axles[-1] + 1.4)
    for z in axles:
        for side in (-1, 1):
            x = side * (W / 2 - tw / 2 + 0.04)
            b.add("wheels", _cylinder((x - tw / 2, r, z), (x + tw / 2, r, z), r, 24), _TYRE)
    for side in (-1, 1):
        x = side * (W / 2 - 0.35)
        b.box("headlights", (x - 0.18, c + 0.25, L / 2 - 0.05), (x + 0.18, c + 0.45, L / 2 + 0.03), _HEADLIGHT)
        b.box("taillights", (x - 0.1, c + 0.3, -L / 2 - 0.03), (x + 0.1, c + 0.7, -L / 2 + 0.05), _TAILLIGHT)
    return b


def _motorbike(rng) -> _Builder:
    rw, tr = rng.uniform(0.28, 0.33), rng.uniform(0.04, 0.06)
    wb = rng.uniform(1.3, 1.5)
    b = _Builder(max_edge=0.15)
    paint = _pick(rng, _PAINT)
    rear, front = np.array([0.0, rw, -wb / 2]), np.array([0.0, rw, wb / 2])
    for hub in (rear, front):
        b.add("wheels", _torus(hub, rw - tr, tr, axis=0, segments=40, sections=12), _TYRE)
        b.add("wheels", _cylinder(hub - (0.05, 0, 0), hub + (0.05, 0, 0), (rw - tr) * 0.95, 24), (0.55, 0.56, 0.58))
    # engine block low between the wheels, tank above it, tail and seat to the back
    ey = rw * rng.uniform(0.75, 1.0)
    b.box("engine", (-0.14, ey - 0.15, -0.2), (0.14, ey + 0.18, 0.22), (0.3, 0.3, 0.32))
    tank_y = ey + rng.uniform(0.25, 0.35)
    tank = [(-0.12, tank_y - 0.1), (0.3, tank_y - 0.12), (0.25, tank_y + 0.12), (-0.05, tank_y + 0.14),
            (-0.15, tank_y + 0.05)]
    b.add("body", _prism(tank, -0.13, 0.13, segments=2), paint)
    seat_y = tank_y + rng.uniform(0.0, 0.06)
    seat = [(-0.6, seat_y - 0.02), (-0.14, seat_y - 0.05), (-0.12, seat_y + 0.07), (-0.55, seat_y + 0.08)]
    b.add("seat", _prism(seat, -0.12, 0.12, segments=2), (0.1, 0.1, 0.1))
    tail = [(-0.65, seat_y - 0.12), (-0.15, tank_y - 0.12), (-0.15, seat_y - 0.02), (-0.7, seat_y + 0.02)]
    b.add("body", _prism(tail, -0.1, 0.1, segments=2), paint)
    b.add("body", _cylinder((0, ey, -0.1), rear + (0.0, 0.05, 0.0), 0.04, 12), (0.3, 0.3, 0.32))  # swing arm
    # fork, handlebar, headlight
    rake = math.radians(rng.uniform(22, 32))
    axis = np.array([0.0, math.cos(rake), -math.sin(rake)])
    top = front + axis * (tank_y + 0.15 - rw) / math.cos(rake)
    for side in (-1, 1):
        off = np.array([side * (tr + 0.03), 0.0, 0.0])
        b.add("fork", _cylinder(front + off, top + off, 0.022, 12), (0.7, 0.7, 0.72))
    half = rng.uniform(0.3, 0.4)
    rise = rng.uniform(0.0, 0.12)
    xs = np.linspace(-half, half, 13)
    ends = (xs / half) ** 2
    bar = np.stack([xs, top[1] + 0.06 + rise * ends, top[2] - 0.05 - 0.1 * ends], axis=1)
    b.add("fork", _tube(bar, 0.014, 10), (0.15, 0.15, 0.15))
    light = top - axis * 0.06 + np.array([0.0, 0.0, 0.1])
    b.add("headlight", _cylinder(light - (0, 0, 0.06), light, 0.065, 20, radius1=0.075), _HEADLIGHT)
    if rng.random() < 0.4:  # a small windscreen above the headlight
        z, y = light[2] - 0.04, light[1] + 0.06
        screen = [(z, y), (z + 0.04, y), (z - 0.06, y + rng.uniform(0.15, 0.3)), (z - 0.08, y + 0.1)]
        b.add("body", _prism(screen, -0.12, 0.12), (0.25, 0.3, 0.38))
    # mudguards: arcs over both wheels
    for hub, start, stop in ((front, -0.3, 1.2), (rear, -1.3, 0.3)):
        arc = np.linspace(start, stop, 12)
        path = hub + (rw + 0.03) * np.stack([np.zeros_like(arc), np.cos(arc), np.sin(arc)], axis=1)
        b.add("body", _band(path, hub, tr + 0.025, 0.012), paint)
    ex = [(0.17, ey - 0.1, 0.1), (0.17, ey - 0.12, -0.3), (0.18, ey - 0.05, -0.6 - rng.uniform(0, 0.1))]
    b.add("exhaust", _tube(np.array(ex), 0.035, 12), (0.7, 0.7, 0.72))
    return b


_BUILDERS: dict[str, Callable[[np.random.Generator], _Builder]] = {
    "car": _car,
    "chair": _chair,
    "table": _table,
    "sofa": _sofa,
    "bed": _bed,
    "bench": _bench,
    "bottle": _bottle,
    "mug": _mug,
    "airplane": _airplane,
    "monitor": _monitor,
    "bookshelf": _bookshelf,
    "lamp": _lamp,
    "bicycle": _bicycle,
    "boat": _boat,
    "bus": _bus,
    "motorbike": _motorbike,
}

#: The procedural categories, in a fixed order.
CATEGORIES: tuple[str, ...] = tuple(_BUILDERS)


# ------------------------------------------------------------------------------ public API


def make_shape(category: str, seed: int) -> Shape:
    """Build the procedural shape ``seed`` of ``category``.

    Args:
        category: one of :data:`CATEGORIES`.
        seed: an int ``>= 0``. The shape depends only on ``(category, seed)``: the random
            generator is ``numpy.random.default_rng([seed, crc32(category)])``.

    Returns:
        A :class:`Shape` in the canonical frame (module docstring), ``mesh_id``
        ``f"{category}-{seed:05d}"``, one default colour per part (some, e.g. a car's
        paint, drawn from a small palette).

    Raises:
        ValueError: unknown category (the message lists the valid ones) or negative seed.

    >>> shape = make_shape("mug", 0)
    >>> shape.category, shape.part_names
    ('mug', ('body', 'handle'))
    """
    if category not in _BUILDERS:
        raise ValueError(f"unknown shape category {category!r}; expected one of: {', '.join(CATEGORIES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    rng = np.random.default_rng([int(seed), zlib.crc32(category.encode("utf-8"))])
    return _BUILDERS[category](rng).build(category, int(seed))


def shape_from_mesh(mesh: Mesh, category: str = "user", mesh_id: str | None = None) -> Shape:
    """Wrap any mesh as a one-part :class:`Shape` in the canonical frame.

    The mesh is centred at its bounding-box centre and scaled so that its largest vertex
    norm is 1 (:func:`render.center_and_scale`); it is **not** rotated, so it must already
    be +y up with its front to +z. Colours or texture are kept. Degenerate faces are
    dropped with a warning (:func:`render.validate_mesh`).

    Args:
        mesh: the mesh.
        category: its category label.
        mesh_id: its id; default the stem of ``mesh.name`` (a path for loaded meshes).

    Raises:
        render.MeshError: NaN/inf vertices, no faces, every face degenerate, ...

    >>> import torch
    >>> from render import Mesh
    >>> tri = Mesh(torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 2, 0]]), torch.tensor([[0, 1, 2]]), name="a/tri.obj")
    >>> shape = shape_from_mesh(tri)
    >>> shape.mesh_id, shape.num_parts, shape.mesh.verts[0].tolist()  # centred, radius 1
    ('tri', 1, [-0.7071067690849304, -0.7071067690849304, 0.0])
    """
    verts, faces = validate_mesh(mesh.verts, mesh.faces, name=mesh.name)
    mesh = Mesh(verts.to(mesh.verts.dtype), faces, mesh.vertex_colors, mesh.uvs, mesh.texture, mesh.name)
    mesh, _, _ = center_and_scale(mesh, center="bbox", scale="radius")
    if mesh_id is None:
        mesh_id = Path(mesh.name).stem or mesh.name
    part_ids = torch.zeros(mesh.num_faces, dtype=torch.int64, device=mesh.verts.device)
    return Shape(mesh=mesh, part_ids=part_ids, category=category, mesh_id=mesh_id, part_names=("object",))


def load_shape(path: str | Path, category: str = "user") -> Shape:
    """Load a mesh file (:func:`render.load_mesh`) as a one-part :class:`Shape`.

    ``mesh_id`` is the file stem; see :func:`shape_from_mesh` for the frame.

    Raises:
        render.MeshError: missing, unreadable, empty or degenerate file (one-line message
            naming the file).
    """
    return shape_from_mesh(load_mesh(path), category=category, mesh_id=Path(path).stem)


def shape_contact_sheet(
    shapes: Sequence[Shape],
    image_size: int = 128,
    *,
    azimuth_deg: float = 35.0,
    elevation_deg: float = 20.0,
    columns: int | None = None,
) -> np.ndarray:
    """Render shapes side by side at a three-quarter view, for eyeballing.

    Each shape is rendered with :func:`render.render_rgb` (its vertex colours, white
    background) from ``azimuth_deg`` / ``elevation_deg`` at distance 2.8 with
    :func:`render.default_intrinsics`, so the unit bounding sphere fits the tile.

    Returns:
        ``(rows * image_size, columns * image_size, 3)`` uint8 RGB; ``columns`` defaults
        to ``ceil(sqrt(len(shapes)))``.
    """
    if not shapes:
        raise ValueError("shapes: expected at least one shape, got none")
    columns = columns or math.ceil(math.sqrt(len(shapes)))
    rows = math.ceil(len(shapes) / columns)
    size = (image_size, image_size)
    K = default_intrinsics(size)
    R, t = angles_to_pose(math.radians(azimuth_deg), math.radians(elevation_deg), 0.0, 2.8)
    sheet = np.full((rows * image_size, columns * image_size, 3), 255, dtype=np.uint8)
    for i, shape in enumerate(shapes):
        mesh = shape.mesh.to("cpu")
        verts = mesh.verts.double() @ R.double().T + t.double()
        colors = mesh.vertex_colors.double() if mesh.vertex_colors is not None else None
        with torch.no_grad():
            out = render_rgb(
                verts[None], mesh.faces, K.double(), size, vertex_colors=colors, background=(1.0, 1.0, 1.0)
            )
        tile = (out["image"][0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        r, c = divmod(i, columns)
        sheet[r * image_size:(r + 1) * image_size, c * image_size:(c + 1) * image_size] = tile
    return sheet
