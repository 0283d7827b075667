"""Synthetic renders: domain-randomized images of shapes with exact pose labels.

:class:`SyntheticDataset` is a ``torch.utils.data.Dataset`` whose sample ``index`` depends
only on ``(seed, index)`` (a ``torch.Generator`` is seeded from both, see
:func:`index_generator`), so DataLoader workers, resumed exports and DDP shards agree.
Samples follow the schema of :mod:`datasets.schema`:

* ``image (3, H, W)``: a shape (:mod:`datasets.shapes`, or the user's meshes) with random
  per-part colours and solid textures, random light, over a procedural or photo
  background, optionally behind occluders, with mild photometric jitter
  (:mod:`datasets.randomize`);
* ``mask (H, W)``: the object's **full** silhouette (amodal: also under occluders), which
  equals the mesh rendered at the sample's ``K, R, t``;
* ``K, R, t`` and ``azimuth, elevation, theta, distance`` with
  ``(R, t) = render.angles_to_pose(azimuth, elevation, theta, distance)`` exactly (then
  rounded to float32). Off-centre objects come from a shifted principal point (as in
  PASCAL3D+, where the object centre projects to the principal point), so the angles
  always describe ``R, t``;
* ``category``, ``mesh_id``; ``bbox`` ``(x0, y0, x1, y1)``: the first and last mask
  column and row, **inclusive pixel indices** (pixel centres, ``docs/conventions.md``);
  absent if the object misses the image entirely;
* ``occlusion``: the fraction of ``mask`` pixels covered by occluders (read from the
  masks; 0 without occluders); ``occluder_mask (H, W)``: the pixels the occluders cover. ``SyntheticConfig.occlusion`` = 1, 2, 3 places occluders
  until it lies in 20-40 %, 40-60 %, 60-80 % (Occluded-PASCAL3D+ levels).

On request (see :class:`SyntheticConfig`):

* ``points (N, 3)``: object-frame surface samples (``trimesh.sample.sample_surface``,
  seed 0, so fixed per mesh);
* ``vertex_uv (V, 2)`` + ``vertex_visible (V,)``: the vertices of the shape's neural-mesh
  surface (``render.cuboid_surface`` or ``render.remesh_surface``, ``neural_mesh_kind``; about
  ``neural_mesh_verts`` vertices) projected with
  ``K, R, t``; a vertex is visible when its pixel ``(round(v), round(u))`` lies in the
  image and either no face of the surface covers that pixel or the vertex's camera depth
  is at most the surface's z-buffer there plus ``visibility_tolerance`` (object units;
  the bounding radius is 1) plus the z-buffer's local depth step (:func:`vertex_visibility`;
  on a convex cuboid this agrees with the exact answer for about 99 % of the vertices,
  the rest sit on the silhouette). Occluders do not count (the schema's meaning);
* ``views (V, 5, s, s)``: the bare shape rendered at ``V`` fixed canonical views
  (:func:`canonical_views`: azimuths ``360 k / V`` degrees, elevation 30 degrees,
  distance 3, theta 0, :func:`view_intrinsics`), channels ``[silhouette, depth,
  nx, ny, nz]``: silhouette 0/1, camera-frame depth (0 on background), unit camera-frame
  normals facing the camera (0 on background). Independent of the sample's pose;
  computed once per mesh. (Not in ``datasets.schema`` yet.)

Replay: :meth:`SyntheticDataset.sample_params` returns the frozen :class:`SceneParams`
of a sample (every random choice, occluders included), and
:meth:`SyntheticDataset.render` turns them back into the same sample.

Command line (``python -m datasets.synthetic -h``)::

    python -m datasets.synthetic --out DIR --n N [--size S] [--categories car chair ...]
        [--occlusion-level L] [--seed S] [--backgrounds FOLDER] [--workers W]
    python -m datasets.synthetic contact-sheet --out sheet.png [--size 96] [--per-level 2]

The first writes ``DIR/images/000000.png``, ``DIR/masks/000000.png`` and one line per
sample in ``DIR/manifest.jsonl`` (``K, R, t``, angles in degrees, distance, category,
mesh_id, bbox, occlusion, file names) plus ``DIR/config.json``; it shows a progress bar
and resumes after an interruption (indices already in the manifest are skipped; files are
written atomically and the manifest line only after them; a partial last line is
dropped). :class:`SyntheticFolder` reads such a folder back as the same samples (up to
8-bit quantisation of the image; occluder masks are not exported). The second writes a PNG grid of random samples, one
row per category and columns per occlusion level, with the amodal mask outlined.

Throughput, measured with ``.venv/bin/python benchmarks/bench_data.py`` (default config:
all 16 categories, 8 shapes each, procedural backgrounds, no extras; steady state, i.e.
shape pool and occluder sprites built) on a 2-vCPU VM shared with other jobs, torch 2.13
CPU; ranges over 3-4 runs (the spread is the VM's load)::

    samples/s                       1 process, 1 thread   DataLoader, 2 workers (batches of 16 or single)
    128x128, no occluders                 61 - 78                  56 - 72
    128x128, level 2 (40-60 % hidden)     42 - 54                  41 - 57
    256x256, no occluders                 24 - 44                  36 - 38
    256x256, level 2                      21 - 26                  20 - 39

During these runs a busy loop got only 0.9 to 2.0 of the 2 cores (the benchmark prints
it), so the 2-worker column shows the VM's contention more than the scaling. About 40 %
of a 128x128 sample is the rasterizer; the rest is shading, backgrounds and occluders.
The first samples of a process are slower (shapes and occluder sprites are built on
first use; :meth:`SyntheticDataset.preload` builds them up front). Images are not
anti-aliased (hard object edges).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import trimesh
from PIL import Image, ImageDraw

from render import (
    DirectionalLight,
    Mesh,
    angles_to_pose,
    cuboid_surface,
    intrinsics,
    project_points,
    rasterize,
    remesh_surface,
    render_rgb,
)
from render.cli import Parser, positive_int

from . import randomize as rz
from .shapes import CATEGORIES, Shape, load_shape

__all__ = [
    "SyntheticConfig",
    "SceneParams",
    "SyntheticDataset",
    "SyntheticFolder",
    "index_generator",
    "canonical_views",
    "view_intrinsics",
    "render_views",
    "vertex_visibility",
    "zbuf_slope",
    "export",
    "contact_sheet",
    "main",
    "VIEW_CHANNELS",
]

#: Channels of the ``views`` key.
VIEW_CHANNELS = ("silhouette", "depth", "nx", "ny", "nz")
#: Elevation (radians) and distance of the canonical views.
VIEW_ELEVATION = math.radians(30.0)
VIEW_DISTANCE = 3.0
#: :attr:`SyntheticConfig.lighting` choices.
LIGHTINGS = ("lambert", "full")
#: salt of the seed of :attr:`SceneParams.shading`'s own random stream
_SHADING_STREAM = 0x5AD1
_ROOM_STREAM = 0x2001
_ZOOM_STREAM = 0x200A
#: the farthest a zoomed-out render moves the object's centre from the image centre
#: (:attr:`SyntheticConfig.zoom_out_probability`), as a fraction of the image side
ZOOM_OUT_MAX_JITTER = 0.25

_MASK64 = (1 << 64) - 1


def _range(name: str, value, lo: float | None = None, hi: float | None = None) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"SyntheticConfig.{name}: expected a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and a <= b):
        raise ValueError(f"SyntheticConfig.{name}: expected finite low <= high, got {value!r}")
    if lo is not None and a < lo or hi is not None and b > hi:
        bounds = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
        raise ValueError(f"SyntheticConfig.{name}: expected values {bounds}, got {value!r}")
    return a, b


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of :class:`SyntheticDataset` (angles in radians, lengths in object units:
    every shape is centred with bounding-sphere radius 1).

    Attributes:
        image_size: ``(H, W)``.
        categories: procedural shape categories (:data:`datasets.shapes.CATEGORIES`);
            ``None`` means all of them, ``()`` none (only ``mesh_paths``).
        shapes_per_category: the mesh pool per category: ``make_shape(category, seed)``
            for seeds ``0 .. n-1``.
        mesh_paths: user meshes, each ``"path"`` (category ``"user"``) or
            ``"category=path"``; loaded with ``datasets.shapes.load_shape``.
        azimuth_range, elevation_range, theta_range: uniform viewpoint ranges (radians).
        distance_range: uniform camera distance range (> 1, outside the bounding sphere).
        focal_range: uniform focal length range, in units of the longer image side.
        center_jitter: the principal point (where the object centre projects) is the
            image centre plus a uniform offset of up to ``center_jitter * (W, H)``.
        center_on: what that jittered image centre holds: ``"object"`` (the object's
            centre, the mesh frame's origin: the principal point itself) or ``"box"``
            (the centre of the object's 2D box, as a crop around a detector's box puts
            it; the principal point moves by the box centre's offset from the origin's
            projection, which depends on the view).
        occlusion: occlusion level 0-3 (:data:`datasets.randomize.OCCLUSION_LEVELS`) or a
            ``(low, high)`` hidden-fraction range.
        occluder_shape_probability: chance that an occluder is another shape (else a
            textured patch).
        occluder_looks: a shape occluder's viewpoint, colours and light are one of this
            many fixed draws per occluder shape, so its sprite is rendered once and cached
            (about 2x faster occlusion); 0 draws them freely
            (``looks`` of :func:`datasets.randomize.sample_occluder`).
        max_occluders: 1 to this many occluders per image.
        background_dir: a folder of photos to crop backgrounds from (else only
            procedural backgrounds).
        photo_probability: chance of a photo background when ``background_dir`` is set.
        mesh_color_probability: chance to keep the mesh's own vertex colours.
        photometric: apply brightness / contrast / saturation / noise jitter.
        lighting: ``"lambert"`` (Lambert shading, Gouraud style:
            :func:`datasets.randomize.apply_lighting`; default) or ``"full"`` (also
            highlights, self-shadows, a shadow on the floor and a light-term gamma, drawn
            per image: :func:`datasets.randomize.sample_shading`; slower to render). The
            effects come from a random stream of their own: every other choice of a sample
            (pose, colours, occluders...) is the same under both.
        room_probability: chance that a floor and a wall stand around the object in 3D,
            in front of the procedural background (:func:`datasets.randomize.sample_room`,
            :func:`datasets.randomize.apply_room`): a horizon, foreshortened patterns.
            Drawn from a random stream of its own, like ``lighting``'s effects.
        zoom_out_probability: chance that a render frames the object wider: the camera
            ``f`` times farther away and the object's centre ``f`` times farther from the
            image centre (up to :data:`ZOOM_OUT_MAX_JITTER`), ``f`` drawn log-uniformly
            from ``zoom_out_range``; the object then spans less of the image, as in a
            user's photo. Drawn from a random stream of its own, like ``lighting``'s.
        zoom_out_range: ``(low, high)`` factors ``f >= 1`` of a zoomed-out render.
        background_scale_range: ``(low, high)`` pattern scale of the procedural
            backgrounds, as a fraction of the image's longer side, drawn log-uniformly
            (``scale`` of :class:`datasets.randomize.BackgroundParams`); larger: coarser.
        points: number of surface points in ``points`` (0: key absent).
        vertex_projections: add ``vertex_uv`` and ``vertex_visible``.
        neural_mesh_verts: vertex target of the neural-mesh surface.
        neural_mesh_kind: ``"cuboid"`` (NeMo's cuboid around the shape,
            ``render.cuboid_surface``; for categories) or ``"remesh"`` (vertices on the
            shape's own surface, ``render.remesh_surface``; for a known mesh).
        visibility_tolerance: depth slack of the visibility test (object units), added to
            the z-buffer's local step (:func:`vertex_visibility`).
        views: number of canonical views in ``views`` (0: key absent).
        view_size: side of each view, pixels.
    """

    image_size: tuple[int, int] = (128, 128)
    categories: tuple[str, ...] | None = None
    shapes_per_category: int = 8
    mesh_paths: tuple[str, ...] = ()
    azimuth_range: tuple[float, float] = (-math.pi, math.pi)
    elevation_range: tuple[float, float] = (math.radians(-10.0), math.radians(50.0))
    theta_range: tuple[float, float] = (math.radians(-15.0), math.radians(15.0))
    distance_range: tuple[float, float] = (4.0, 6.0)
    focal_range: tuple[float, float] = (1.5, 2.1)
    center_jitter: float = 0.08
    center_on: str = "object"
    occlusion: int | tuple[float, float] = 0
    occluder_shape_probability: float = 0.5
    occluder_looks: int = 4
    max_occluders: int = 3
    background_dir: str | None = None
    photo_probability: float = 0.5
    mesh_color_probability: float = 0.2
    photometric: bool = True
    lighting: str = "lambert"
    room_probability: float = 0.0
    zoom_out_probability: float = 0.0
    zoom_out_range: tuple[float, float] = (1.5, 3.0)
    background_scale_range: tuple[float, float] = rz.BACKGROUND_SCALE_RANGE
    points: int = 0
    vertex_projections: bool = False
    neural_mesh_verts: int = 1000
    neural_mesh_kind: str = "cuboid"
    visibility_tolerance: float = 0.02
    views: int = 0
    view_size: int = 64

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        try:
            h, w = (int(v) for v in self.image_size)
        except (TypeError, ValueError):
            raise ValueError(f"SyntheticConfig.image_size: expected (H, W), got {self.image_size!r}") from None
        if h < 8 or w < 8:
            raise ValueError(f"SyntheticConfig.image_size: expected H, W >= 8, got {(h, w)}")
        put("image_size", (h, w))
        if self.categories is not None:
            if isinstance(self.categories, str):
                raise ValueError(f"SyntheticConfig.categories: expected a sequence of names, got the string {self.categories!r}")
            cats = tuple(str(c) for c in self.categories)
            unknown = [c for c in cats if c not in CATEGORIES]
            if unknown:
                raise ValueError(f"SyntheticConfig.categories: unknown {unknown}; known: {', '.join(CATEGORIES)}")
            put("categories", tuple(dict.fromkeys(cats)))
        if isinstance(self.mesh_paths, str):
            raise ValueError(f"SyntheticConfig.mesh_paths: expected a sequence of paths, got the string {self.mesh_paths!r}")
        put("mesh_paths", tuple(str(p) for p in self.mesh_paths))
        if not self.mesh_paths and self.categories == ():
            raise ValueError("SyntheticConfig: expected some shapes, got no categories and no mesh_paths")
        if int(self.shapes_per_category) < 1:
            raise ValueError(f"SyntheticConfig.shapes_per_category: expected >= 1, got {self.shapes_per_category}")
        put("shapes_per_category", int(self.shapes_per_category))
        put("azimuth_range", _range("azimuth_range", self.azimuth_range))
        put("elevation_range", _range("elevation_range", self.elevation_range, -math.pi / 2, math.pi / 2))
        put("theta_range", _range("theta_range", self.theta_range))
        d = _range("distance_range", self.distance_range)
        if d[0] <= 1.0:
            raise ValueError(f"SyntheticConfig.distance_range: expected distances > 1 (outside the bounding sphere), got {d}")
        put("distance_range", d)
        f = _range("focal_range", self.focal_range)
        if f[0] <= 0:
            raise ValueError(f"SyntheticConfig.focal_range: expected positive focal factors, got {f}")
        put("focal_range", f)
        if not 0.0 <= float(self.center_jitter) <= 0.5:
            raise ValueError(f"SyntheticConfig.center_jitter: expected a value in [0, 0.5], got {self.center_jitter}")
        if self.center_on not in ("object", "box"):
            raise ValueError(f"SyntheticConfig.center_on: expected 'object' or 'box', got {self.center_on!r}")
        occ = self.occlusion
        if isinstance(occ, (int, np.integer)) and not isinstance(occ, bool):
            if int(occ) not in rz.OCCLUSION_LEVELS:
                raise ValueError(f"SyntheticConfig.occlusion: expected a level 0-3 or a (low, high) fraction range, got {occ}")
            put("occlusion", int(occ))
        else:
            put("occlusion", _range("occlusion", occ, 0.0, 1.0))
        put("zoom_out_range", _range("zoom_out_range", self.zoom_out_range, 1.0))
        scales = _range("background_scale_range", self.background_scale_range)
        if scales[0] <= 0.0:
            raise ValueError(f"SyntheticConfig.background_scale_range: expected scales > 0, got {scales}")
        put("background_scale_range", scales)
        for name in ("occluder_shape_probability", "photo_probability", "mesh_color_probability", "room_probability",
                     "zoom_out_probability"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"SyntheticConfig.{name}: expected a probability in [0, 1], got {getattr(self, name)}")
        if int(self.max_occluders) < 1:
            raise ValueError(f"SyntheticConfig.max_occluders: expected >= 1, got {self.max_occluders}")
        if self.background_dir is not None:
            put("background_dir", str(self.background_dir))
        for name, low in (("points", 0), ("views", 0), ("neural_mesh_verts", 8), ("view_size", 8), ("occluder_looks", 0)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"SyntheticConfig.{name}: expected >= {low}, got {getattr(self, name)}")
            put(name, int(getattr(self, name)))
        if self.lighting not in LIGHTINGS:
            raise ValueError(f"SyntheticConfig.lighting: expected one of {LIGHTINGS}, got {self.lighting!r}")
        if self.neural_mesh_kind not in ("cuboid", "remesh"):
            raise ValueError(f"SyntheticConfig.neural_mesh_kind: expected 'cuboid' or 'remesh', got {self.neural_mesh_kind!r}")
        if not float(self.visibility_tolerance) >= 0:
            raise ValueError(f"SyntheticConfig.visibility_tolerance: expected >= 0, got {self.visibility_tolerance}")

    @property
    def occlusion_range(self) -> tuple[float, float]:
        """The hidden-fraction range of :attr:`occlusion`."""
        if isinstance(self.occlusion, int):
            return rz.OCCLUSION_LEVELS[self.occlusion]
        return self.occlusion

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists); :meth:`from_dict` inverts it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyntheticConfig:
        """Build a config from :meth:`to_dict` output (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"SyntheticConfig: unknown fields {unknown}")
        data = dict(data)
        if isinstance(data.get("occlusion"), list):
            data["occlusion"] = tuple(data["occlusion"])
        return cls(**data)


@dataclass(frozen=True)
class SceneParams:
    """Every random choice of one sample; :meth:`SyntheticDataset.render` replays it.

    Attributes:
        index: the sample index.
        category: the object category.
        mesh_key: ``("shape", category, seed)`` or ``("file", category, path)``.
        azimuth, elevation, theta, distance: the viewpoint (radians; object units).
        focal: focal length, pixels.
        principal_point: ``(cx, cy)``, pixels.
        appearance, light, background, photometric, shading, room: see
            :mod:`datasets.randomize` (``photometric`` None when disabled, ``shading``
            None under Lambert lighting, ``room`` None without a floor and wall).
        occluders: the occluders, in paste order.
    """

    index: int
    category: str
    mesh_key: tuple
    azimuth: float
    elevation: float
    theta: float
    distance: float
    focal: float
    principal_point: tuple[float, float]
    appearance: rz.AppearanceParams
    light: DirectionalLight
    background: rz.BackgroundParams
    photometric: rz.PhotometricParams | None
    occluders: tuple = ()
    shading: rz.ShadingParams | None = None
    room: rz.RoomParams | None = None


def index_generator(seed: int, index: int) -> torch.Generator:
    """A ``torch.Generator`` seeded from ``(seed, index)`` by a SplitMix64 mix of both."""

    def mix(x: int) -> int:
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        return x ^ (x >> 31)

    value = mix(mix(int(seed) & _MASK64) ^ (int(index) & _MASK64))
    return torch.Generator().manual_seed(value & ((1 << 63) - 1))


# --------------------------------------------------------------------------- canonical views


def canonical_views(num_views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``R (V, 3, 3)``, ``t (V, 3)`` (float32) of the fixed views of ``views``.

    Azimuth ``2 pi k / V`` (``k = 0 .. V-1``), elevation :data:`VIEW_ELEVATION`, theta 0,
    distance :data:`VIEW_DISTANCE`, looking at the object centre.
    """
    if int(num_views) < 1:
        raise ValueError(f"num_views: expected >= 1, got {num_views}")
    az = torch.arange(int(num_views), dtype=torch.float64) * (2 * math.pi / int(num_views))
    R, t = angles_to_pose(az, VIEW_ELEVATION, 0.0, VIEW_DISTANCE)
    return R.to(torch.float32), t.to(torch.float32)


def view_intrinsics(size: int) -> torch.Tensor:
    """``K (3, 3)`` of the canonical views: the bounding sphere fills 95 % of the ``size`` square."""
    f = 0.95 * (size / 2.0) * math.sqrt(VIEW_DISTANCE**2 - 1.0)
    return intrinsics(f, f, (size - 1) / 2.0, (size - 1) / 2.0).to(torch.float32)


def render_views(mesh: Mesh, num_views: int = 12, size: int = 64) -> torch.Tensor:
    """The bare mesh at :func:`canonical_views`: ``(V, 5, size, size)`` float32.

    Channels :data:`VIEW_CHANNELS`: silhouette (0/1), camera depth (0 on background) and
    camera-frame unit normals facing the camera (0 on background). One batched render.
    """
    R, t = canonical_views(num_views)
    verts = mesh.verts.to(torch.float32)
    verts_cam = torch.einsum("vij,nj->vni", R, verts) + t[:, None]
    out = render_rgb(verts_cam, mesh.faces, view_intrinsics(size), (size, size))
    sil = out["mask"].to(torch.float32)[:, None]
    normals = out["normals"].to(torch.float32) * sil
    return torch.cat([sil, out["depth"].to(torch.float32)[:, None], normals], 1)


# --------------------------------------------------------------------------- visibility


def zbuf_slope(zbuf: torch.Tensor) -> torch.Tensor:
    """``(H, W)``: per covered pixel, the largest ``|zbuf|`` step to a covered 4-neighbour
    (0 where no neighbour is covered, and on background; ``zbuf < 0`` is background).

    >>> zbuf_slope(torch.tensor([[2.0, 2.5, -1.0], [3.0, 2.5, 2.0]])).tolist()
    [[1.0, 0.5, 0.0], [1.0, 0.5, 0.5]]
    """
    covered = zbuf >= 0
    slope = torch.zeros_like(zbuf)
    for dim in (0, 1):
        step = (zbuf.narrow(dim, 1, zbuf.shape[dim] - 1) - zbuf.narrow(dim, 0, zbuf.shape[dim] - 1)).abs()
        both = covered.narrow(dim, 1, zbuf.shape[dim] - 1) & covered.narrow(dim, 0, zbuf.shape[dim] - 1)
        step = torch.where(both, step, torch.zeros_like(step))
        lo = slope.narrow(dim, 0, zbuf.shape[dim] - 1)
        hi = slope.narrow(dim, 1, zbuf.shape[dim] - 1)
        lo.copy_(torch.maximum(lo, step))
        hi.copy_(torch.maximum(hi, step))
    return slope


def vertex_visibility(
    verts_cam: torch.Tensor, zbuf: torch.Tensor, K: torch.Tensor, tolerance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project vertices and test them against the z-buffer of their own surface.

    Args:
        verts_cam: ``(V, 3)`` camera-frame vertices.
        zbuf: ``(H, W)`` z-buffer of the surface they belong to (``-1`` on background,
            as in :class:`render.Fragments`).
        K: ``(3, 3)`` intrinsics.
        tolerance: depth slack (object units).

    Returns:
        ``uv (V, 2)`` pixel coordinates and ``visible (V,)`` bool: the vertex is in front
        of the camera, its pixel ``(i, j) = (floor(v + 0.5), floor(u + 0.5))`` is in the
        image, and that pixel is background (the vertex is on the silhouette) or
        ``z <= zbuf[i, j] + tolerance + zbuf_slope(zbuf)[i, j]``: the slope term (the
        largest depth step to a covered neighbouring pixel) absorbs the depth difference
        between the vertex and its pixel's centre on surfaces seen at grazing angles, while
        a vertex behind another part of the surface stays hidden.
    """
    uv, z = project_points(verts_cam[None], K)
    uv, z = uv[0], z[0]
    h, w = zbuf.shape
    j = torch.floor(uv[:, 0] + 0.5)
    i = torch.floor(uv[:, 1] + 0.5)
    inside = (j >= 0) & (j < w) & (i >= 0) & (i < h) & (z > 0)
    flat = i.clamp(0, h - 1).long() * w + j.clamp(0, w - 1).long()
    zb = zbuf.reshape(-1).index_select(0, flat)
    slack = zbuf_slope(zbuf).reshape(-1).index_select(0, flat) + tolerance
    visible = inside & ((zb < 0) | (z <= zb + slack))
    return uv, visible


# --------------------------------------------------------------------------- dataset


def _parse_mesh_path(entry: str) -> tuple[str, str]:
    """``"category=path"`` or ``"path"`` -> ``(category, path)``."""
    head, sep, tail = entry.partition("=")
    if sep and head and "/" not in head and os.sep not in head and not Path(entry).exists():
        return head, tail
    return "user", entry


class SyntheticDataset(torch.utils.data.Dataset):
    """Domain-randomized renders of shapes with exact pose labels (module docstring).

    Args:
        config: a :class:`SyntheticConfig`.
        seed: the dataset seed; sample ``index`` depends only on ``(seed, index)``.
        length: the number of samples (``len``).

    Raises:
        ValueError: a bad background folder or unreadable user mesh (one line, naming it).

    Example:
        >>> ds = SyntheticDataset(SyntheticConfig(image_size=(32, 32), categories=("car",)), seed=0, length=4)
        >>> s = ds[0]
        >>> s["image"].shape, s["mask"].dtype, s["category"]
        (torch.Size([3, 32, 32]), torch.bool, 'car')
    """

    def __init__(self, config: SyntheticConfig = SyntheticConfig(), seed: int = 0, length: int = 1000):
        if not isinstance(config, SyntheticConfig):
            raise TypeError(f"config: expected a SyntheticConfig, got {type(config).__name__}")
        if int(length) < 0:
            raise ValueError(f"length: expected >= 0, got {length}")
        self.config = config
        self.seed = int(seed)
        self.length = int(length)
        self.photos = rz.list_photos(config.background_dir) if config.background_dir is not None else ()
        categories = CATEGORIES if config.categories is None else config.categories
        pool: dict[str, list[tuple]] = {c: [("shape", c, s) for s in range(config.shapes_per_category)] for c in categories}
        for entry in config.mesh_paths:
            category, path = _parse_mesh_path(entry)
            if not Path(path).is_file():
                raise ValueError(f"{path}: mesh file not found")
            pool.setdefault(category, []).append(("file", category, path))
        self._pool = pool
        self._categories = tuple(pool)
        self._occluder_categories = tuple(categories) or tuple(CATEGORIES)
        self._shapes: dict[tuple, Shape] = {}
        self._extras: dict[tuple, Any] = {}

    def __len__(self) -> int:
        return self.length

    # -- caches -------------------------------------------------------------

    def shape(self, mesh_key: tuple) -> Shape:
        """The shape of a ``mesh_key`` (procedural ones from :func:`datasets.randomize.cached_shape`,
        files loaded once per dataset)."""
        kind, category, ref = mesh_key
        if kind == "shape":
            return rz.cached_shape(category, ref)
        shape = self._shapes.get(mesh_key)
        if shape is None:
            shape = self._shapes[mesh_key] = load_shape(ref, category=category)
        return shape

    def preload(self, sprites: bool = False) -> None:
        """Build every shape of the pool now (and the neural-mesh surfaces, points and views
        the config asks for); with ``sprites``, also render the occluder sprites of every
        look (``occluder_looks``; seconds to a minute). Later samples then run at
        steady-state speed (the caches fill up by themselves over the first thousands of
        samples otherwise)."""
        for keys in self._pool.values():
            for key in keys:
                self.shape(key)
                if self.config.vertex_projections:
                    self.neural_mesh(key)
                if self.config.points:
                    self._points(key)
                if self.config.views:
                    self._views(key)
        if self.config.occlusion_range[1] > 0:
            resolution = rz.sprite_resolution(self.config.image_size)
            for category in self._occluder_categories:
                for seed in range(self.config.shapes_per_category):
                    rz.cached_shape(category, seed)
                    if sprites and self.config.occluder_looks:
                        rz.preload_sprites(rz.occluder_looks(category, seed, self.config.occluder_looks, resolution))

    def _cached(self, what: str, mesh_key: tuple, build):
        key = (what, mesh_key)
        value = self._extras.get(key)
        if value is None:
            value = self._extras[key] = build(self.shape(mesh_key))
        return value

    def neural_mesh(self, mesh_key: tuple) -> Mesh:
        """The (cached) neural-mesh surface of a shape (:attr:`SyntheticConfig.neural_mesh_kind`)."""
        n = self.config.neural_mesh_verts
        if self.config.neural_mesh_kind == "remesh":
            return self._cached("remesh", mesh_key, lambda s: remesh_surface(s.mesh, num_verts=n))
        return self._cached("cuboid", mesh_key, lambda s: cuboid_surface(s.mesh, num_verts=n))

    def _points(self, mesh_key: tuple) -> torch.Tensor:
        def build(shape):
            pts, _ = trimesh.sample.sample_surface(shape.mesh.to_trimesh(), self.config.points, seed=0)
            return torch.as_tensor(np.asarray(pts), dtype=torch.float32)

        return self._cached("points", mesh_key, build)

    def _views(self, mesh_key: tuple) -> torch.Tensor:
        return self._cached("views", mesh_key, lambda s: render_views(s.mesh, self.config.views, self.config.view_size))

    # -- drawing ------------------------------------------------------------

    def _index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        return index

    def _draw_scene(self, g: torch.Generator, index: int) -> SceneParams:
        cfg = self.config
        h, w = cfg.image_size
        u = rz._uniform
        category = self._categories[rz._randint(g, len(self._categories))]
        keys = self._pool[category]
        mesh_key = keys[rz._randint(g, len(keys))]
        shape = self.shape(mesh_key)
        azimuth = u(g, *cfg.azimuth_range)
        elevation = u(g, *cfg.elevation_range)
        theta = u(g, *cfg.theta_range)
        distance = u(g, *cfg.distance_range)
        focal = u(g, *cfg.focal_range) * max(h, w)
        jitter_x, jitter_y = u(g, -1.0, 1.0), u(g, -1.0, 1.0)
        jitter = cfg.center_jitter
        if cfg.zoom_out_probability > 0:
            zg = index_generator(self.seed ^ _ZOOM_STREAM, index)
            if u(zg, 0.0, 1.0) < cfg.zoom_out_probability:
                factor = math.exp(u(zg, *(math.log(f) for f in cfg.zoom_out_range)))
                distance *= factor
                jitter = max(jitter, min(ZOOM_OUT_MAX_JITTER, jitter * factor))
        cx = (w - 1) / 2.0 + jitter_x * jitter * w
        cy = (h - 1) / 2.0 + jitter_y * jitter * h
        if cfg.center_on == "box":
            # the principal point moves the whole projection rigidly: put the projected
            # vertices' box centre where the origin would have been
            R, t = angles_to_pose(azimuth, elevation, theta, distance)
            K = intrinsics(focal, focal, cx, cy).to(torch.float32)
            uv = project_points(shape.mesh.verts.to(torch.float32)[None], K, R.to(torch.float32),
                                t.to(torch.float32))[0][0]
            box_u = (float(uv[:, 0].min()) + float(uv[:, 0].max())) / 2.0
            box_v = (float(uv[:, 1].min()) + float(uv[:, 1].max())) / 2.0
            cx, cy = 2.0 * cx - box_u, 2.0 * cy - box_v
        parts = max(1, shape.num_parts)
        appearance = rz.sample_appearance(g, parts, mesh_color_probability=cfg.mesh_color_probability)
        light = rz.sample_light(g)
        background = rz.sample_background(g, (h, w), photos=self.photos, photo_probability=cfg.photo_probability,
                                          scale_range=cfg.background_scale_range)
        photometric = rz.sample_photometric(g) if cfg.photometric else None
        # from a stream of its own, so that "full" lighting leaves every other choice as it is
        shading = rz.sample_shading(index_generator(self.seed ^ _SHADING_STREAM, index)) if cfg.lighting == "full" else None
        room = None
        if cfg.room_probability > 0:
            rg = index_generator(self.seed ^ _ROOM_STREAM, index)
            if rz._uniform(rg, 0.0, 1.0) < cfg.room_probability:
                room = rz.sample_room(rg)
        return SceneParams(
            index=index, category=category, mesh_key=mesh_key, azimuth=azimuth, elevation=elevation,
            theta=theta, distance=distance, focal=focal, principal_point=(cx, cy), appearance=appearance,
            light=light, background=background, photometric=photometric, shading=shading, room=room,
        )

    def camera(self, scene: SceneParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``K, R, t`` (float32) of a scene: ``(R, t) = angles_to_pose(...)`` rounded to float32."""
        R, t = angles_to_pose(scene.azimuth, scene.elevation, scene.theta, scene.distance)
        K = intrinsics(scene.focal, scene.focal, scene.principal_point[0], scene.principal_point[1])
        return K.to(torch.float32), R.to(torch.float32), t.to(torch.float32)

    def _render_object(self, scene: SceneParams):
        shape = self.shape(scene.mesh_key)
        K, R, t = self.camera(scene)
        verts = shape.mesh.verts.to(torch.float32)
        verts_cam = (verts @ R.T + t)[None]
        frags = rasterize(verts_cam, shape.mesh.faces, K, self.config.image_size)
        return shape, K, R, t, verts_cam, frags

    def _sample_occluders(self, g: torch.Generator, mask: torch.Tensor) -> tuple:
        lo, hi = self.config.occlusion_range
        if hi == 0.0 or not bool(mask.any()):
            return ()
        occluders, _ = rz.sample_occluders(
            g, mask, (lo, hi), categories=self._occluder_categories,
            shape_seeds=self.config.shapes_per_category,
            shape_probability=self.config.occluder_shape_probability,
            looks=self.config.occluder_looks or None,
            max_occluders=self.config.max_occluders,
        )
        return occluders

    def sample_params(self, index: int) -> SceneParams:
        """Every random choice of sample ``index`` (renders the object's mask to place occluders)."""
        index = self._index(index)
        g = index_generator(self.seed, index)
        scene = self._draw_scene(g, index)
        frags = self._render_object(scene)[-1]
        return dataclasses.replace(scene, occluders=self._sample_occluders(g, frags.mask[0]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        g = index_generator(self.seed, index)
        scene = self._draw_scene(g, index)
        rendered = self._render_object(scene)
        scene = dataclasses.replace(scene, occluders=self._sample_occluders(g, rendered[-1].mask[0]))
        return self._compose(scene, rendered)

    def render(self, scene: SceneParams) -> dict[str, Any]:
        """The sample of a :class:`SceneParams` (e.g. from :meth:`sample_params`), replayed."""
        return self._compose(scene, self._render_object(scene))

    # -- composing ----------------------------------------------------------

    def _compose(self, scene: SceneParams, rendered) -> dict[str, Any]:
        cfg = self.config
        shape, K, R, t, verts_cam, frags = rendered
        mesh = shape.mesh
        mask = frags.mask[0]
        albedo = rz.apply_appearance(scene.appearance, frags, mesh.faces, mesh.verts, shape.part_ids, mesh.vertex_colors)
        background = rz.apply_background(scene.background, cfg.image_size)
        if scene.room is not None:
            floor_y = float(mesh.verts[:, 1].min())
            room, covered = rz.apply_room(scene.room, scene.light, floor_y, K, R, t, cfg.image_size)
            background = room + (1.0 - covered) * background
        if scene.shading is None:
            rgb = rz.apply_lighting(scene.light, frags, mesh.faces, verts_cam, albedo)[0]
        else:
            shadows = rz.shadow_maps(scene.light, scene.shading, verts_cam, mesh.faces)
            rgb = rz.apply_shading(scene.light, scene.shading, frags, mesh.faces, verts_cam, albedo, shadows)[0]
            background = background * rz.floor_shadow(scene.light, scene.shading, mesh.verts, mesh.faces, K, R, t,
                                                      cfg.image_size, shadows[0] if shadows else None)
        image = torch.where(mask, rgb, background)
        occlusion = 0.0
        occ_mask = torch.zeros_like(mask)
        if scene.occluders:
            image, occ_mask = rz.apply_occluders(scene.occluders, image)
            total = int(mask.sum())
            occlusion = float((mask & occ_mask).sum()) / total if total else 0.0
        if scene.photometric is not None:
            image = rz.apply_photometric(scene.photometric, image)
        sample: dict[str, Any] = {
            "image": image.to(torch.float32).contiguous(),
            "mask": mask.contiguous(),
            "K": K,
            "R": R,
            "t": t,
            "azimuth": float(scene.azimuth),
            "elevation": float(scene.elevation),
            "theta": float(scene.theta),
            "distance": float(scene.distance),
            "category": scene.category,
            "mesh_id": str(shape.mesh_id),
            "occlusion": occlusion,
            "occluder_mask": occ_mask.to(torch.bool).contiguous(),
        }
        if bool(mask.any()):
            rows = mask.any(1).nonzero()[:, 0]
            cols = mask.any(0).nonzero()[:, 0]
            sample["bbox"] = torch.tensor(
                [float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])], dtype=torch.float32
            )
        if cfg.points:
            sample["points"] = self._points(scene.mesh_key)
        if cfg.vertex_projections:
            surface = self.neural_mesh(scene.mesh_key)
            surf_cam = surface.verts @ R.T + t
            zbuf = rasterize(surf_cam[None], surface.faces, K, cfg.image_size).zbuf[0, ..., 0]
            uv, visible = vertex_visibility(surf_cam, zbuf, K, cfg.visibility_tolerance)
            sample["vertex_uv"] = uv.to(torch.float32)
            sample["vertex_visible"] = visible
        if cfg.views:
            sample["views"] = self._views(scene.mesh_key)
        return sample


# --------------------------------------------------------------------------- export


MANIFEST = "manifest.jsonl"
CONFIG_FILE = "config.json"
_FORMAT = 1


def _record(index: int, sample: dict[str, Any], image_name: str, mask_name: str) -> dict[str, Any]:
    rec = {
        "index": index,
        "image": image_name,
        "mask": mask_name,
        "K": sample["K"].tolist(),
        "R": sample["R"].tolist(),
        "t": sample["t"].tolist(),
        "azimuth": math.degrees(sample["azimuth"]),
        "elevation": math.degrees(sample["elevation"]),
        "theta": math.degrees(sample["theta"]),
        "distance": sample["distance"],
        "category": sample["category"],
        "mesh_id": sample["mesh_id"],
        "bbox": sample["bbox"].tolist() if "bbox" in sample else None,
        "occlusion": sample["occlusion"],
    }
    return rec


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def _write_png(array: np.ndarray, path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_sample(dataset: SyntheticDataset, root: Path, index: int) -> dict[str, Any]:
    sample = dataset[index]
    image_name, mask_name = f"images/{index:06d}.png", f"masks/{index:06d}.png"
    _write_png(_to_uint8(sample["image"]), root / image_name)
    _write_png(sample["mask"].numpy().astype(np.uint8) * 255, root / mask_name)
    return _record(index, sample, image_name, mask_name)


def _read_manifest(path: Path, repair: bool) -> list[dict[str, Any]]:
    """Records of a manifest; a partial or unparsable **last** line is dropped (and cut
    from the file if ``repair``). A bad line elsewhere is a ``ValueError``."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    keep = len(data)
    if not data.endswith(b"\n") and data:
        keep = len(data) - len(lines[-1])
    lines = lines[:-1]  # after the last newline: empty or partial
    records = []
    for n, line in enumerate(lines):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "index" not in rec:
                raise ValueError("not a sample record")
        except ValueError as e:
            if n == len(lines) - 1:
                keep -= len(line) + 1
                break
            raise ValueError(f"{path}: line {n + 1} is not a valid record ({e})") from None
        records.append(rec)
    if repair and keep != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    return records


_WORKER: dict[str, Any] = {}


def _worker_init(config: dict, seed: int, root: str) -> None:
    torch.set_num_threads(1)
    _WORKER["dataset"] = SyntheticDataset(SyntheticConfig.from_dict(config), seed=seed, length=2**62)
    _WORKER["root"] = Path(root)


def _worker_job(index: int) -> dict[str, Any]:
    return _write_sample(_WORKER["dataset"], _WORKER["root"], index)


def export(
    config: SyntheticConfig,
    out_dir: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> int:
    """Write samples ``0 .. n-1`` of ``SyntheticDataset(config, seed)`` to ``out_dir``.

    Layout: ``images/IIIIII.png`` (RGB), ``masks/IIIIII.png`` (0/255), ``manifest.jsonl``
    (one JSON object per sample, written after its files: ``index``, ``image``,
    ``mask``, ``K``, ``R``, ``t``, ``azimuth``/``elevation``/``theta`` in degrees,
    ``distance``, ``category``, ``mesh_id``, ``bbox`` or null, ``occlusion``) and
    ``config.json`` (config and seed). Resumable: indices already in the manifest are
    skipped and a partial last manifest line is dropped first. Extras (``points``,
    ``vertex_uv``, ``views``) are not exported.

    Returns:
        The number of samples written by this call.

    Raises:
        ValueError: ``out_dir`` holds an export with a different config or seed, or a
            corrupt manifest.
    """
    if int(n) < 0:
        raise ValueError(f"n: expected >= 0, got {n}")
    if int(workers) < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    meta = {"format": _FORMAT, "seed": int(seed), "config": config.to_dict()}
    meta_path = root / CONFIG_FILE
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError as e:
            raise ValueError(f"{meta_path}: unreadable ({e})") from None
        try:  # an export by an older version lacks fields added since, at their defaults
            old = {**old, "config": SyntheticConfig.from_dict(old["config"]).to_dict()}
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
        if old != meta:
            raise ValueError(f"{meta_path}: this folder holds an export with a different config or seed; use another --out")
    dataset = SyntheticDataset(config, seed=seed, length=int(n))  # validates before writing anything
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    if not meta_path.exists():
        tmp = meta_path.with_name(f".{CONFIG_FILE}.tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, meta_path)
    manifest = root / MANIFEST
    records = _read_manifest(manifest, repair=True)
    done = {int(r["index"]) for r in records if (root / r["image"]).exists() and (root / r["mask"]).exists()}
    todo = [i for i in range(int(n)) if i not in done]
    if not todo:
        return 0
    from tqdm import tqdm

    bar = tqdm(total=int(n), initial=int(n) - len(todo), unit="img", disable=not progress, desc="synthetic")
    written = 0
    with open(manifest, "a", encoding="utf-8") as fh:

        def append(rec):
            nonlocal written
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            written += 1
            bar.update(1)

        try:
            if workers == 1:
                for i in todo:
                    append(_write_sample(dataset, root, i))
            else:
                ctx = multiprocessing.get_context("spawn")
                with ctx.Pool(int(workers), initializer=_worker_init, initargs=(config.to_dict(), int(seed), str(root))) as pool:
                    for rec in pool.imap_unordered(_worker_job, todo, chunksize=4):
                        append(rec)
        finally:
            bar.close()
    return written


class SyntheticFolder(torch.utils.data.Dataset):
    """Read an :func:`export` folder back as samples, ordered by index.

    Samples have the schema keys the export wrote (``image`` from the 8-bit PNG, ``mask``,
    ``K``, ``R``, ``t``, angles in radians, ``distance``, ``category``, ``mesh_id``,
    ``bbox`` (absent if null), ``occlusion``). A partial last manifest line (an export
    still running or interrupted) is ignored, not repaired.

    Raises:
        ValueError: no manifest, a corrupt manifest, or a missing image file (naming it).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise ValueError(f"{manifest}: no manifest (not a synthetic export folder?)")
        records = _read_manifest(manifest, repair=False)
        self.records = sorted({int(r["index"]): r for r in records}.values(), key=lambda r: int(r["index"]))
        self.indices = [int(r["index"]) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        image_path, mask_path = self.root / rec["image"], self.root / rec["mask"]
        try:
            with Image.open(image_path) as im:
                image = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0
            with Image.open(mask_path) as im:
                mask = torch.from_numpy(np.asarray(im.convert("L")) >= 128)
        except OSError as e:
            raise ValueError(f"{e.filename or image_path}: cannot read image ({e})") from None
        sample = {
            "image": image,
            "mask": mask,
            "K": torch.tensor(rec["K"], dtype=torch.float32),
            "R": torch.tensor(rec["R"], dtype=torch.float32),
            "t": torch.tensor(rec["t"], dtype=torch.float32),
            "azimuth": math.radians(rec["azimuth"]),
            "elevation": math.radians(rec["elevation"]),
            "theta": math.radians(rec["theta"]),
            "distance": float(rec["distance"]),
            "category": rec["category"],
            "mesh_id": rec["mesh_id"],
            "occlusion": float(rec["occlusion"]),
        }
        if rec.get("bbox") is not None:
            sample["bbox"] = torch.tensor(rec["bbox"], dtype=torch.float32)
        return sample


# --------------------------------------------------------------------------- contact sheet


def _outline(mask: torch.Tensor) -> torch.Tensor:
    """Mask pixels with a 4-neighbour outside the mask."""
    pad = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1))[0, 0]
    inner = (pad[:-2, 1:-1] > 0) & (pad[2:, 1:-1] > 0) & (pad[1:-1, :-2] > 0) & (pad[1:-1, 2:] > 0)
    return mask & ~inner


def contact_sheet(
    config: SyntheticConfig,
    out_path: str | os.PathLike,
    *,
    seed: int = 0,
    levels: Sequence[int] = (0, 1, 2, 3),
    per_level: int = 2,
    annotate: bool = True,
) -> Path:
    """Write a PNG grid of samples: one row per category (and one for user meshes), for each
    occlusion level ``per_level`` columns. With ``annotate``, the amodal mask is outlined
    in yellow and the measured occlusion printed under each tile.

    Returns:
        The path written.
    """
    h, w = config.image_size
    categories = list(CATEGORIES if config.categories is None else config.categories)
    rows: list[tuple[str, SyntheticConfig]] = [(c, dataclasses.replace(config, categories=(c,), mesh_paths=())) for c in categories]
    if config.mesh_paths:
        rows.append(("user", dataclasses.replace(config, categories=())))
    label_w, head_h, foot_h, gap = 76, 16, 12 if annotate else 0, 2
    cols = len(levels) * per_level
    sheet = Image.new("RGB", (label_w + cols * (w + gap), head_h + len(rows) * (h + foot_h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for li, level in enumerate(levels):
        x = label_w + li * per_level * (w + gap)
        draw.text((x + 2, 2), f"L{level} {rz.OCCLUSION_LEVELS[level]}", fill=(0, 0, 0))
    for r, (name, cfg) in enumerate(rows):
        y = head_h + r * (h + foot_h + gap)
        draw.text((2, y + h // 2 - 5), name, fill=(0, 0, 0))
        for li, level in enumerate(levels):
            ds = SyntheticDataset(dataclasses.replace(cfg, occlusion=level), seed=seed * 10007 + r * 101 + li, length=per_level)
            for k in range(per_level):
                sample = ds[k]
                tile = sample["image"].clone()
                if annotate:
                    edge = _outline(sample["mask"])
                    tile[:, edge] = torch.tensor([1.0, 0.9, 0.0])[:, None]
                x = label_w + (li * per_level + k) * (w + gap)
                sheet.paste(Image.fromarray(_to_uint8(tile)), (x, y))
                if annotate:
                    draw.text((x + 1, y + h), f"occ {100 * sample['occlusion']:.0f}%", fill=(0, 0, 0))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- command line


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 8:
        raise argparse.ArgumentTypeError(f"expected S or HxW with sides >= 8, got {text!r}")
    return parts[0], parts[1]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--categories", nargs="+", metavar="NAME", help=f"shape categories (default all: {', '.join(CATEGORIES)})")
    p.add_argument("--meshes", nargs="+", default=[], metavar="[CATEGORY=]PATH", help="user meshes added to the pool")
    p.add_argument("--shapes-per-category", type=positive_int, default=SyntheticConfig.shapes_per_category)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backgrounds", metavar="FOLDER", help="folder of photos to crop backgrounds from")
    p.add_argument("--lighting", choices=LIGHTINGS, default=SyntheticConfig.lighting,
                   help="Lambert shading, or also highlights, self- and floor shadows and a light-term gamma "
                        "(SyntheticConfig.lighting)")
    p.add_argument("--room-probability", type=float, default=SyntheticConfig.room_probability, metavar="P",
                   help="chance of a 3D floor and wall around the object (SyntheticConfig.room_probability)")


def _config(args, size, occlusion) -> SyntheticConfig:
    return SyntheticConfig(
        image_size=size,
        categories=tuple(args.categories) if args.categories else None,
        shapes_per_category=args.shapes_per_category,
        mesh_paths=tuple(args.meshes),
        occlusion=occlusion,
        background_dir=args.backgrounds,
        lighting=args.lighting,
        room_probability=args.room_probability,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "contact-sheet":
        p = Parser(prog="synthetic contact-sheet", description="Write a PNG grid of samples per category and occlusion level.")
        p.add_argument("--out", required=True, help="output PNG path")
        p.add_argument("--size", type=_size, default=(96, 96), help="tile size S or HxW (default 96)")
        p.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 3], choices=[0, 1, 2, 3])
        p.add_argument("--per-level", type=positive_int, default=2, help="samples per category and level")
        p.add_argument("--no-annotate", action="store_true", help="no mask outline / occlusion text")
        _common(p)
        try:
            args = p.parse_args(argv[1:])
        except SystemExit as e:  # -h or a usage error (already printed, one line)
            return int(e.code or 0)
        try:
            config = _config(args, args.size, 0)
            path = contact_sheet(config, args.out, seed=args.seed, levels=args.levels, per_level=args.per_level,
                                 annotate=not args.no_annotate)
        except (ValueError, OSError) as e:
            print(f"synthetic contact-sheet: error: {e}", file=sys.stderr)
            return 2
        print(path)
        return 0

    p = Parser(
        prog="synthetic",
        description="Export synthetic samples (PNGs + manifest.jsonl); 'contact-sheet' as the first "
        "argument writes a PNG grid instead (see 'contact-sheet -h').",
    )
    p.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    p.add_argument("--n", type=positive_int, required=True, help="number of samples (indices 0 .. n-1)")
    p.add_argument("--size", type=_size, default=(128, 128), help="image size S or HxW (default 128)")
    p.add_argument("--occlusion-level", type=int, default=0, choices=[0, 1, 2, 3])
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes")
    p.add_argument("--no-progress", action="store_true")
    _common(p)
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        config = _config(args, args.size, args.occlusion_level)
        written = export(config, args.out, args.n, seed=args.seed, workers=args.workers, progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"synthetic: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synthetic: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"{args.out}: wrote {written} samples ({args.n} in total)")
    return 0


if __name__ == "__main__":
    from render.allocator import tune_cpu_allocator

    tune_cpu_allocator()
    sys.exit(main())
