"""Orbit sequences: rendered "videos" of objects for self-supervised pretraining.

A sequence is a smooth camera trajectory around one shape over one background: the
azimuth sweeps an arc, the elevation and distance vary slowly (a few sine cycles), a small
in-plane wobble and low-frequency jitter make it less regular, and the object's
appearance, the background and the light (fixed in the object's frame, so the shading
changes as the camera moves) stay the same for the whole sequence. Frames carry exact
pose labels (DESIGN.md's sample schema), so pose-aware embeddings can be evaluated.

:class:`FramePairs` samples the pairs the motion-informed SimSiam recipe trains on
(``../shared/METHODS.md``):

* ``"nearby"``: frames ``j`` and ``j + offset`` of one sequence (consecutive subsampled
  video frames; offset 1 at the default 5 fps is the paper's 200 ms);
* ``"distant"``: any two frames of one sequence;
* ``"same"``: the same frame twice (the two augmentations are the trainer's job).

Everything is deterministic: sequence ``i`` depends only on ``(seed, i)`` and pair ``k``
only on ``(seed, k)``.

Example:
    >>> seqs = OrbitSequences(OrbitConfig(image_size=(32, 32), num_frames=8, categories=("mug",)), seed=0, length=2)
    >>> frame = seqs.frame(0, 3)
    >>> frame["image"].shape, frame["category"]
    (torch.Size([3, 32, 32]), 'mug')
    >>> a, b, meta = FramePairs(seqs, mode="nearby", offset=1, length=5)[0]
    >>> meta["frames"][1] - meta["frames"][0]
    1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from render import DirectionalLight, angles_to_pose, intrinsics, rasterize

from . import randomize as rz
from .shapes import CATEGORIES, Shape

__all__ = ["OrbitConfig", "OrbitParams", "OrbitSequences", "FramePairs", "PAIR_MODES", "sample_orbit", "orbit_poses"]

#: Pair modes of :class:`FramePairs`.
PAIR_MODES = ("nearby", "distant", "same")


@dataclass(frozen=True)
class OrbitConfig:
    """Settings of :class:`OrbitSequences` (angles in degrees, as on command lines).

    Attributes:
        image_size: ``(H, W)`` of every frame.
        num_frames: frames per sequence.
        fps: frames per second of the "video" (metadata for offsets in time).
        categories: shape categories to draw from (default: all of
            :data:`datasets.shapes.CATEGORIES`).
        shapes_per_category: shape seeds per category.
        arc_deg: range of the azimuth sweep of one sequence.
        elevation_deg: range of the mean elevation.
        elevation_swing_deg: amplitude of the slow elevation variation.
        distance: range of the mean camera distance (object radius is 1).
        distance_swing: relative amplitude of the slow distance variation.
        wobble_deg: amplitude of the slow in-plane rotation.
        jitter_deg: standard deviation of the low-frequency angle jitter.
        focal_factor: focal length as a multiple of ``max(H, W)``.
    """

    image_size: tuple[int, int] = (128, 128)
    num_frames: int = 48
    fps: float = 5.0
    categories: tuple[str, ...] | None = None
    shapes_per_category: int = 50
    arc_deg: tuple[float, float] = (120.0, 360.0)
    elevation_deg: tuple[float, float] = (-5.0, 45.0)
    elevation_swing_deg: tuple[float, float] = (0.0, 15.0)
    distance: tuple[float, float] = (2.8, 4.0)
    distance_swing: tuple[float, float] = (0.0, 0.12)
    wobble_deg: tuple[float, float] = (0.0, 8.0)
    jitter_deg: float = 1.0
    focal_factor: float = 1.4

    def __post_init__(self):
        h, w = (int(v) for v in self.image_size)
        if h < 8 or w < 8:
            raise ValueError(f"image_size: expected at least (8, 8), got {self.image_size}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames: expected >= 2, got {self.num_frames}")
        if self.shapes_per_category < 1:
            raise ValueError(f"shapes_per_category: expected >= 1, got {self.shapes_per_category}")
        for name in ("arc_deg", "elevation_deg", "elevation_swing_deg", "distance", "distance_swing", "wobble_deg"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: expected (low, high) with low <= high, got {(lo, hi)}")
        if self.distance[0] <= 1.0:
            raise ValueError(f"distance: the camera must stay outside the unit sphere, got {self.distance}")
        unknown = set(self.categories or ()) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"categories: unknown {sorted(unknown)}; expected some of {', '.join(CATEGORIES)}")


@dataclass(frozen=True)
class OrbitParams:
    """Everything random about one sequence (draw with :func:`sample_orbit`, replayable)."""

    category: str
    shape_seed: int
    azimuth0: float  # radians, and all angles below
    arc: float
    elevation0: float
    elevation_swing: float
    elevation_cycles: float
    elevation_phase: float
    distance0: float
    distance_swing: float
    distance_phase: float
    wobble: float
    wobble_phase: float
    jitter: tuple[tuple[float, float, float], ...]  # per control point: azimuth, elevation, theta
    appearance: rz.AppearanceParams
    background: rz.BackgroundParams
    light_obj: tuple[float, float, float]  # light travel direction in the object frame
    light: DirectionalLight  # ambient, diffuse, colour (direction replaced per frame)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def sample_orbit(generator: torch.Generator, config: OrbitConfig) -> OrbitParams:
    """Draw the parameters of one sequence."""
    g = generator
    categories = config.categories or CATEGORIES
    category = categories[int(torch.randint(len(categories), (), generator=g))]
    shape_seed = int(torch.randint(config.shapes_per_category, (), generator=g))
    shape = rz.cached_shape(category, shape_seed)
    rad = math.radians
    arc = rad(_uniform(g, *config.arc_deg)) * (1 if float(torch.rand((), generator=g)) < 0.5 else -1)
    n_ctrl = 6
    jitter = tuple(
        tuple(float(v) for v in torch.randn(3, generator=g) * rad(config.jitter_deg)) for _ in range(n_ctrl)
    )
    light = rz.sample_light(g)
    d = torch.tensor(light.direction, dtype=torch.float64)
    d = d / d.norm()
    return OrbitParams(
        category=category,
        shape_seed=shape_seed,
        azimuth0=_uniform(g, -math.pi, math.pi),
        arc=arc,
        elevation0=rad(_uniform(g, *config.elevation_deg)),
        elevation_swing=rad(_uniform(g, *config.elevation_swing_deg)),
        elevation_cycles=_uniform(g, 0.5, 2.0),
        elevation_phase=_uniform(g, 0.0, 2 * math.pi),
        distance0=_uniform(g, *config.distance),
        distance_swing=_uniform(g, *config.distance_swing),
        distance_phase=_uniform(g, 0.0, 2 * math.pi),
        wobble=rad(_uniform(g, *config.wobble_deg)),
        wobble_phase=_uniform(g, 0.0, 2 * math.pi),
        jitter=jitter,
        appearance=rz.sample_appearance(g, shape.num_parts),
        background=rz.sample_background(g, config.image_size),
        light_obj=tuple(float(v) for v in d),
        light=light,
    )


def orbit_poses(params: OrbitParams, num_frames: int) -> dict[str, torch.Tensor]:
    """Smooth per-frame ``azimuth, elevation, theta, distance`` (radians), each ``(T,)`` float64.

    The jitter is a smooth curve through the control points of ``params.jitter``
    (linear interpolation), so consecutive frames stay close.
    """
    s = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
    ctrl = torch.tensor(params.jitter, dtype=torch.float64)  # (C, 3)
    pos = s * (ctrl.shape[0] - 1)
    i0 = pos.floor().long().clamp(max=ctrl.shape[0] - 2)
    frac = (pos - i0)[:, None]
    jit = ctrl[i0] * (1 - frac) + ctrl[i0 + 1] * frac
    azimuth = params.azimuth0 + params.arc * s + jit[:, 0]
    elevation = params.elevation0 + params.elevation_swing * torch.sin(
        2 * math.pi * params.elevation_cycles * s + params.elevation_phase
    ) + jit[:, 1]
    elevation = elevation.clamp(-math.radians(80), math.radians(80))
    theta = params.wobble * torch.sin(2 * math.pi * s + params.wobble_phase) + jit[:, 2]
    distance = params.distance0 * (1 + params.distance_swing * torch.sin(2 * math.pi * s + params.distance_phase))
    azimuth = torch.remainder(azimuth + math.pi, 2 * math.pi) - math.pi
    return {"azimuth": azimuth, "elevation": elevation, "theta": theta, "distance": distance}


class OrbitSequences(torch.utils.data.Dataset):
    """Rendered orbit sequences; item ``i`` is the whole sequence ``i`` (see module docstring).

    Args:
        config: an :class:`OrbitConfig`.
        seed: sequence ``i`` depends only on ``(seed, i)``.
        length: number of sequences.

    ``self[i]`` returns a dict with ``frames (T, 3, H, W)``, ``masks (T, H, W)``,
    ``K (3, 3)``, ``R (T, 3, 3)``, ``t (T, 3)``, ``azimuth/elevation/theta/distance (T,)``
    (radians), ``category``, ``mesh_id`` and ``fps``; :meth:`frame` renders a single frame
    as a schema sample.
    """

    def __init__(self, config: OrbitConfig = OrbitConfig(), seed: int = 0, length: int = 100):
        if not isinstance(config, OrbitConfig):
            raise TypeError(f"config: expected an OrbitConfig, got {type(config).__name__}")
        if int(length) < 0:
            raise ValueError(f"length: expected >= 0, got {length}")
        self.config, self.seed, self.length = config, int(seed), int(length)
        h, w = config.image_size
        f = config.focal_factor * max(h, w)
        self.K = intrinsics(f, f, (w - 1) / 2, (h - 1) / 2).to(torch.float32)

    def __len__(self) -> int:
        return self.length

    def params(self, index: int) -> OrbitParams:
        """The random parameters of sequence ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"sequence index {index} out of range [0, {self.length})")
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % (2**63))
        return sample_orbit(g, self.config)

    def render_frames(self, params: OrbitParams, frames: torch.Tensor) -> dict[str, Any]:
        """Render frames ``frames (n,)`` of the sequence drawn as ``params`` (batched).

        Returns ``frames (n, 3, H, W)``, ``masks``, ``R``, ``t``, the angles and the shape's
        ``category`` and ``mesh_id``.
        """
        cfg = self.config
        shape: Shape = rz.cached_shape(params.category, params.shape_seed)
        mesh = shape.mesh
        poses = {k: v[frames] for k, v in orbit_poses(params, cfg.num_frames).items()}
        R, t = angles_to_pose(poses["azimuth"], poses["elevation"], poses["theta"], poses["distance"])
        R, t = R.to(torch.float32), t.to(torch.float32)
        verts_cam = mesh.verts[None] @ R.transpose(1, 2) + t[:, None]
        frags = rasterize(verts_cam, mesh.faces, self.K, cfg.image_size)
        albedo = rz.apply_appearance(params.appearance, frags, mesh.faces, mesh.verts, shape.part_ids, mesh.vertex_colors)
        background = rz.apply_background(params.background, cfg.image_size)
        light_obj = torch.tensor(params.light_obj, dtype=torch.float32)
        images = []
        for i in range(len(frames)):
            d_cam = tuple(float(v) for v in R[i] @ light_obj)
            light = DirectionalLight(
                direction=d_cam, ambient=params.light.ambient, diffuse=params.light.diffuse, color=params.light.color
            )
            one = type(frags)(frags.pix_to_face[i : i + 1], frags.bary[i : i + 1], frags.zbuf[i : i + 1])
            rgb = rz.apply_lighting(light, one, mesh.faces, verts_cam[i : i + 1], albedo[i : i + 1])[0]
            images.append(torch.where(frags.mask[i], rgb, background))
        return {
            "frames": torch.stack(images).to(torch.float32),
            "masks": frags.mask,
            "R": R,
            "t": t,
            **{k: v.to(torch.float32) for k, v in poses.items()},
            "category": shape.category,
            "mesh_id": shape.mesh_id,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        params = self.params(index)
        out = self.render_frames(params, torch.arange(self.config.num_frames))
        out["K"] = self.K.clone()
        out["fps"] = self.config.fps
        return out

    def frame(self, index: int, j: int) -> dict[str, Any]:
        """Frame ``j`` of sequence ``index`` as a sample of DESIGN.md's schema."""
        if not 0 <= j < self.config.num_frames:
            raise IndexError(f"frame index {j} out of range [0, {self.config.num_frames})")
        r = self.render_frames(self.params(index), torch.tensor([j]))
        return _frame_sample(r, 0, self.K)


def _frame_sample(rendered: dict[str, Any], m: int, K: torch.Tensor) -> dict[str, Any]:
    """Frame ``m`` of a rendered batch of frames as a schema sample."""
    mask = rendered["masks"][m]
    ys, xs = mask.nonzero(as_tuple=True)
    bbox = (
        torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).to(torch.float32)
        if ys.numel()
        else torch.zeros(4, dtype=torch.float32)
    )
    return {
        "image": rendered["frames"][m],
        "mask": mask,
        "K": K.clone(),
        "R": rendered["R"][m],
        "t": rendered["t"][m],
        "azimuth": float(rendered["azimuth"][m]),
        "elevation": float(rendered["elevation"][m]),
        "theta": float(rendered["theta"][m]),
        "distance": float(rendered["distance"][m]),
        "category": rendered["category"],
        "mesh_id": rendered["mesh_id"],
        "bbox": bbox,
        "occlusion": 0.0,
    }


class FramePairs(torch.utils.data.Dataset):
    """Pairs of frames of :class:`OrbitSequences` for SimSiam-style training.

    Args:
        sequences: the sequences to draw from.
        mode: ``"nearby"`` (frames ``offset`` apart), ``"distant"`` (two uniformly drawn
            frames of the same sequence) or ``"same"`` (one frame twice).
        offset: frame offset of ``"nearby"`` pairs (>= 1).
        seed: pair ``k`` depends only on ``(seed, k)``.
        length: number of pairs.

    ``self[k]`` returns ``(frame_a, frame_b, meta)`` with two schema samples and
    ``meta = {"sequence": i, "frames": (j1, j2), "mode": mode}``.
    """

    def __init__(self, sequences: OrbitSequences, mode: str = "nearby", offset: int = 1, seed: int = 0, length: int = 1000):
        if mode not in PAIR_MODES:
            raise ValueError(f"mode: expected one of {PAIR_MODES}, got {mode!r}")
        if mode == "nearby" and not 1 <= offset < sequences.config.num_frames:
            raise ValueError(f"offset: expected 1 <= offset < {sequences.config.num_frames}, got {offset}")
        if len(sequences) == 0:
            raise ValueError("sequences: expected at least one sequence")
        self.sequences, self.mode, self.offset = sequences, mode, int(offset)
        self.seed, self.length = int(seed), int(length)

    def __len__(self) -> int:
        return self.length

    def pair_indices(self, k: int) -> tuple[int, int, int]:
        """``(sequence, frame_a, frame_b)`` of pair ``k``."""
        if not 0 <= k < self.length:
            raise IndexError(f"pair index {k} out of range [0, {self.length})")
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + k + 7) % (2**63))
        n = self.sequences.config.num_frames
        i = int(torch.randint(len(self.sequences), (), generator=g))
        if self.mode == "nearby":
            j1 = int(torch.randint(n - self.offset, (), generator=g))
            j2 = j1 + self.offset
            if float(torch.rand((), generator=g)) < 0.5:
                j1, j2 = j2, j1
        elif self.mode == "distant":
            j1, j2 = (int(v) for v in torch.randint(n, (2,), generator=g))
        else:
            j1 = j2 = int(torch.randint(n, (), generator=g))
        return i, j1, j2

    def __getitem__(self, k: int):
        i, j1, j2 = self.pair_indices(k)
        params = self.sequences.params(i)
        frames = torch.tensor([j1, j2])
        r = self.sequences.render_frames(params, frames)
        return _frame_sample(r, 0, self.sequences.K), _frame_sample(r, 1, self.sequences.K), {
            "sequence": i,
            "frames": (j1, j2),
            "mode": self.mode,
        }
