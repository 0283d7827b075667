"""Domain-randomization primitives for synthetic pose data.

Every randomization comes as a pair, like Kornia's ``generate_parameters`` /
``apply_transform``: a ``sample_*`` function draws a frozen dataclass of *parameters* from
a ``torch.Generator``, and a separate ``apply_*`` function turns parameters into pixels,
deterministically. A draw can therefore be stored, inspected and replayed (the replay gives
the same image, bit for bit, in any process).

* **Backgrounds** (:class:`BackgroundParams`, :func:`sample_background`,
  :func:`apply_background`): procedural textures (``"noise"``, ``"gradient"``,
  ``"stripes"``, ``"checkers"``, ``"blobs"``, ``"leaves"``: a dead-leaves clutter image)
  or a random crop of a photo from a user folder (:func:`list_photos`).
* **Object appearance** (:class:`AppearanceParams`, :func:`sample_appearance`,
  :func:`apply_appearance`): a random colour per part (``Shape.part_ids``) or the mesh's
  own vertex colours, optionally with a procedural *solid* texture (stripes, checkers,
  noise evaluated at the object-frame position of every pixel, so no UV map is needed).
* **Lighting** (:func:`sample_light`, :func:`apply_lighting`): the parameters are a
  :class:`render.DirectionalLight` (camera frame).
* **Photometric jitter** (:class:`PhotometricParams`, :func:`sample_photometric`,
  :func:`apply_photometric`): brightness, contrast, saturation, pixel noise.
* **Occluders** (:class:`ShapeOccluder`, :class:`PatchOccluder`,
  :func:`sample_occluders`, :func:`apply_occluders`): other shapes (rendered from a random
  viewpoint into a sprite) or textured patches (ellipse, rectangle, star polygon), pasted
  over the image. :func:`sample_occluders` places them so that the hidden fraction of a
  given object mask falls in a target range (Occluded-PASCAL3D+ levels, see
  :data:`OCCLUSION_LEVELS`), measured from the masks. Shape sprites are cached per look
  (:func:`sample_occluder`'s ``looks``), shapes per ``(category, seed)``
  (:func:`cached_shape`).

Conventions (camera frame, pixel centres at integers, images ``(3, H, W)`` RGB in [0, 1])
are in ``docs/conventions.md``. Angles are radians.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from render import (
    DirectionalLight,
    Fragments,
    ShadowMap,
    angles_to_pose,
    interpolate,
    intrinsics,
    rasterize,
    vertex_normals,
)
from render.checks import check_image_size

from .shapes import Shape, make_shape

__all__ = [
    "BACKGROUND_KINDS",
    "PATTERNS",
    "PHOTO_EXTENSIONS",
    "OCCLUSION_LEVELS",
    "BackgroundParams",
    "AppearanceParams",
    "PhotometricParams",
    "ShapeOccluder",
    "PatchOccluder",
    "list_photos",
    "sample_background",
    "apply_background",
    "sample_appearance",
    "apply_appearance",
    "sample_light",
    "apply_lighting",
    "ShadingParams",
    "sample_shading",
    "apply_shading",
    "floor_shadow",
    "RoomParams",
    "sample_room",
    "apply_room",
    "shadow_maps",
    "sample_photometric",
    "apply_photometric",
    "sample_occluder",
    "sample_occluders",
    "apply_occluders",
    "occluder_mask",
    "cached_shape",
    "occluder_looks",
    "preload_sprites",
    "sprite_resolution",
]

#: Default ``(low, high)`` pattern scale of procedural backgrounds (fraction of the image's
#: longer side; :func:`sample_background` draws it log-uniformly).
BACKGROUND_SCALE_RANGE = (0.03, 0.4)
#: Procedural background kinds drawn by :func:`sample_background`.
BACKGROUND_KINDS = ("noise", "gradient", "stripes", "checkers", "blobs", "leaves")
#: Solid-texture patterns of :class:`AppearanceParams`.
PATTERNS = ("none", "stripes", "checkers", "noise")
#: File name endings :func:`list_photos` accepts (lower case).
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Hidden-fraction ranges of the occlusion levels, as in Occluded-PASCAL3D+ (level 0: none).
OCCLUSION_LEVELS = {0: (0.0, 0.0), 1: (0.2, 0.4), 2: (0.4, 0.6), 3: (0.6, 0.8)}

RGB = tuple[float, float, float]


# --------------------------------------------------------------------------- drawing helpers


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _randint(g: torch.Generator, n: int) -> int:
    """Uniform integer in ``[0, n)``."""
    return int(torch.randint(n, (), generator=g))


def _subseed(g: torch.Generator) -> int:
    return int(torch.randint(2**62, (), generator=g))


def _colors(g: torch.Generator, n: int, saturation=(0.15, 1.0), value=(0.15, 1.0)) -> torch.Tensor:
    """``(n, 3)`` float32 random colours, uniform in hue and in saturation and value ranges (HSV)."""
    rows = torch.rand(n, 3, generator=g, dtype=torch.float64).tolist()
    s0, s1 = saturation
    v0, v1 = value
    return torch.tensor(
        [colorsys.hsv_to_rgb(h, s0 + (s1 - s0) * s, v0 + (v1 - v0) * v) for h, s, v in rows], dtype=torch.float32
    ).view(n, 3)


def _color(g: torch.Generator, saturation=(0.15, 1.0), value=(0.15, 1.0)) -> RGB:
    """One random colour (see :func:`_colors`) as a tuple rounded to 6 decimals."""
    return tuple(round(float(c), 6) for c in _colors(g, 1, saturation, value)[0])


def _unit_vector(g: torch.Generator) -> tuple[float, float, float]:
    v = torch.randn(3, generator=g, dtype=torch.float64)
    v = v / v.norm().clamp_min(1e-12)
    return tuple(float(c) for c in v)


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) & (2**63 - 1))


def _check_generator(g) -> None:
    if not isinstance(g, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(g).__name__}")


def _palette(s: torch.Tensor, colors: Sequence[RGB]) -> torch.Tensor:
    """Map ``s (H, W)`` in [0, 1] through a piecewise-linear colour ramp -> ``(3, H, W)``."""
    table = torch.tensor(colors, dtype=torch.float32)  # (n, 3)
    n = table.shape[0]
    x = s.clamp(0.0, 1.0) * (n - 1)
    out = table[0].view(3, 1, 1) + (table[1] - table[0]).view(3, 1, 1) * x.clamp(max=1.0)
    for k in range(2, n):  # add the next segment's slope beyond its knot
        out = out + (table[k] - table[k - 1]).view(3, 1, 1) * (x - (k - 1)).clamp(0.0, 1.0)
    return out


def _value_noise(g: torch.Generator, h: int, w: int, cells: float, octaves: int) -> torch.Tensor:
    """Smooth fractal value noise ``(H, W)`` normalised to [0, 1]; ``cells`` along the longer side.

    The octaves are summed on a canvas of at most 64 pixels along the longer side, then
    upsampled once (the noise is smooth at that scale; it keeps backgrounds cheap).
    """
    side = max(h, w)
    scale = min(1.0, 64.0 / side)
    ch, cw = max(2, round(h * scale)), max(2, round(w * scale))
    acc = torch.zeros(1, 1, ch, cw)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = min(cells * 2**o, 32.0)
        gh, gw = max(2, math.ceil(c * h / side) + 1), max(2, math.ceil(c * w / side) + 1)
        grid = torch.rand(1, 1, gh, gw, generator=g)
        acc += amp * F.interpolate(grid, size=(ch, cw), mode="bicubic", align_corners=True)
        total += amp
        amp *= 0.5
    if (ch, cw) != (h, w):
        acc = F.interpolate(acc, size=(h, w), mode="bilinear", align_corners=False)
    acc = acc[0, 0]
    lo, hi = acc.min(), acc.max()
    return (acc - lo) / (hi - lo).clamp_min(1e-6)


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``x, y (H, W)`` in units of the longer image side."""
    side = float(max(h, w))
    y = (torch.arange(h, dtype=torch.float32) + 0.5) / side
    x = (torch.arange(w, dtype=torch.float32) + 0.5) / side
    return x.expand(h, w), y[:, None].expand(h, w)


# --------------------------------------------------------------------------- backgrounds


@dataclass(frozen=True)
class BackgroundParams:
    """Parameters of a background image (see :func:`apply_background`).

    Attributes:
        kind: one of :data:`BACKGROUND_KINDS`, or ``"photo"``.
        colors: 2 to 4 RGB colours of the pattern's colour ramp (procedural kinds).
        scale: pattern period / cell size as a fraction of the image's longer side.
        angle: orientation of gradients, stripes and checkers (radians).
        seed: seed of the pattern's own random details (noise grids, blob layout).
        photo: the photo's path (``kind == "photo"``).
        crop: ``(x0, y0, w, h)`` of the crop as fractions of the photo's width and height.
        flip: mirror the crop left-right.
    """

    kind: str
    colors: tuple[RGB, ...] = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    scale: float = 0.25
    angle: float = 0.0
    seed: int = 0
    photo: str | None = None
    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    flip: bool = False

    def __post_init__(self):
        if self.kind not in BACKGROUND_KINDS + ("photo",):
            raise ValueError(f"BackgroundParams.kind: expected one of {BACKGROUND_KINDS + ('photo',)}, got {self.kind!r}")
        if self.kind == "photo" and not self.photo:
            raise ValueError("BackgroundParams.photo: expected a path for kind 'photo', got None")
        if self.kind != "photo" and not 2 <= len(self.colors) <= 4:
            raise ValueError(f"BackgroundParams.colors: expected 2 to 4 colours, got {len(self.colors)}")
        if not self.scale > 0:
            raise ValueError(f"BackgroundParams.scale: expected > 0, got {self.scale}")


def list_photos(folder: str | os.PathLike) -> tuple[str, ...]:
    """The image files (by extension, :data:`PHOTO_EXTENSIONS`) directly in ``folder``, sorted.

    Raises:
        ValueError: ``folder`` is not a directory or holds no image files (the message
            names the folder).
    """
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{folder}: background folder not found (not a directory)")
    photos = tuple(sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_EXTENSIONS))
    if not photos:
        raise ValueError(f"{folder}: no images ({', '.join(PHOTO_EXTENSIONS)}) in the background folder")
    return photos


@functools.lru_cache(maxsize=32)
def _load_photo(path: str) -> torch.Tensor:
    """``(3, h, w)`` uint8 RGB of an image file; ``ValueError`` naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ValueError(f"{path}: image too small ({array.shape[1]}x{array.shape[0]})")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def sample_background(
    generator: torch.Generator,
    image_size: tuple[int, int],
    *,
    photos: Sequence[str] = (),
    photo_probability: float = 0.5,
    kinds: Sequence[str] = BACKGROUND_KINDS,
    scale_range: tuple[float, float] = BACKGROUND_SCALE_RANGE,
) -> BackgroundParams:
    """Draw background parameters.

    Args:
        generator: the source of randomness.
        image_size: ``(H, W)`` of the image the background is for (a photo crop keeps
            its aspect ratio).
        photos: paths of photos (e.g. :func:`list_photos`); with probability
            ``photo_probability`` a random crop of one of them is used.
        kinds: the procedural kinds to draw from otherwise.
        scale_range: ``(low, high)`` of their pattern scale (log-uniform).
    """
    _check_generator(generator)
    h, w = check_image_size(image_size)
    g = generator
    use_photo = bool(photos) and _uniform(g, 0.0, 1.0) < photo_probability
    if use_photo:
        path = str(photos[_randint(g, len(photos))])
        ph, pw = _load_photo(path).shape[1:]
        aspect = w / h
        frac = _uniform(g, 0.35, 1.0)
        cw = frac * min(pw, ph * aspect)
        ch = cw / aspect
        x0 = _uniform(g, 0.0, pw - cw)
        y0 = _uniform(g, 0.0, ph - ch)
        flip = _uniform(g, 0.0, 1.0) < 0.5
        return BackgroundParams(kind="photo", photo=path, crop=(x0 / pw, y0 / ph, cw / pw, ch / ph), flip=flip)
    kind = kinds[_randint(g, len(kinds))]
    ncolors = 2 + _randint(g, 3)
    colors = tuple(_color(g, saturation=(0.0, 0.9), value=(0.1, 1.0)) for _ in range(ncolors))
    scale = math.exp(_uniform(g, math.log(scale_range[0]), math.log(scale_range[1])))
    angle = _uniform(g, 0.0, math.pi)
    return BackgroundParams(kind=kind, colors=colors, scale=scale, angle=angle, seed=_subseed(g))


def apply_background(params: BackgroundParams, image_size: tuple[int, int]) -> torch.Tensor:
    """Render background parameters to a ``(3, H, W)`` float32 image in [0, 1] (CPU).

    Procedural kinds (coordinates in units of the image's longer side, ``p = scale``):
    ``"noise"`` fractal value noise with cells of size ``p`` through the colour ramp;
    ``"gradient"`` the ramp along direction ``angle`` plus faint noise; ``"stripes"``
    ``sin`` stripes of period ``p`` across ``angle``, sharpened; ``"checkers"`` rotated
    checkers of cell ``p`` with noisy shading; ``"blobs"`` soft discs of the ramp's
    colours and random colours on ``colors[0]``; ``"leaves"`` a dead-leaves image
    (overlapping discs and rectangles with power-law sizes up to ``p``, natural-image-like
    clutter). They are drawn on a canvas of at most :data:`_CANVAS` pixels along the longer
    side and upsampled (bilinear) beyond that. ``"photo"``: the crop, resized with
    antialiasing (and mirrored if ``flip``).
    """
    h, w = check_image_size(image_size)
    if params.kind == "photo":
        return _photo_crop(params, h, w)
    scale = min(1.0, _CANVAS / max(h, w))
    ch, cw = max(2, round(h * scale)), max(2, round(w * scale))
    image = _procedural(params, ch, cw)
    if (ch, cw) != (h, w):
        image = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return image.clamp(0.0, 1.0)


#: Longest side of the canvas procedural backgrounds are drawn on.
_CANVAS = 128


def _procedural(params: BackgroundParams, h: int, w: int) -> torch.Tensor:
    g = _rng(params.seed)
    x, y = _grid(h, w)
    ca, sa = math.cos(params.angle), math.sin(params.angle)
    p = params.scale
    if params.kind == "noise":
        octaves = 2 + _randint(g, 3)
        return _palette(_value_noise(g, h, w, 1.0 / p, octaves), params.colors)
    if params.kind == "gradient":
        along = x * ca + y * sa
        s = (along - along.min()) / (along.max() - along.min()).clamp_min(1e-6)
        s = s + 0.15 * (_value_noise(g, h, w, 1.0 / max(p, 0.1), 2) - 0.5)
        return _palette(s, params.colors)
    if params.kind == "stripes":
        along = x * ca + y * sa
        sharp = _uniform(g, 1.0, 8.0)
        s = 0.5 + 0.5 * torch.tanh(sharp * torch.sin(2 * math.pi * along / p))
        s = s * (0.85 + 0.15 * _value_noise(g, h, w, 4.0, 2))
        return _palette(s, params.colors[:2])
    if params.kind == "checkers":
        along, across = x * ca + y * sa, -x * sa + y * ca
        parity = (torch.floor(along / p) + torch.floor(across / p)).remainder(2)
        return _palette(parity, params.colors[:2]) * (0.75 + 0.25 * _value_noise(g, h, w, 3.0, 2))
    # Blobs and leaves paint many small boxes: numpy has less overhead per small op.
    extent = w / max(h, w), h / max(h, w)
    palette = np.asarray(params.colors, dtype=np.float32)
    side = float(max(h, w))
    xs = ((np.arange(w, dtype=np.float32) + 0.5) / side)[None, :]
    ys = ((np.arange(h, dtype=np.float32) + 0.5) / side)[:, None]
    image = np.empty((h, w, 3), dtype=np.float32)
    image[:] = palette[0]
    if params.kind == "blobs":
        n = 6 + _randint(g, 15)
        r = torch.rand(n, 6, generator=g).tolist()
        random_colours = _colors(g, n).numpy()
        for k, (rx, ry, rr, rs, rc, rp) in enumerate(r):
            cx, cy = rx * extent[0], ry * extent[1]
            radius = (0.2 + 0.8 * rr) * max(p, 0.05) * 1.5
            sx = 0.5 + rs
            colour = palette[min(int(rc * len(palette)), len(palette) - 1)] if rp < 0.6 else random_colours[k]
            # alpha < 1e-3 beyond 1.3 radii: paint only that box
            r0, r1, c0, c1 = _box(cx, cy, 1.3 * radius * max(sx, 1.0 / sx), side, h, w)
            if r1 <= r0 or c1 <= c0:
                continue
            d2 = ((xs[:, c0:c1] - cx) / sx) ** 2 + ((ys[r0:r1] - cy) * sx) ** 2
            alpha = (1.0 / (1.0 + np.exp(np.minimum((d2 - radius**2) / (0.1 * radius**2), 50.0))))[..., None]
            patch = image[r0:r1, c0:c1]
            patch += alpha * (colour - patch)
    else:
        # leaves: radii with density ~ r^-3 between r_min and r_max (scale invariant);
        # later leaves cover earlier ones
        n = 30 + _randint(g, 30)
        r = torch.rand(n, 9, generator=g).tolist()
        random_colours = _colors(g, n).numpy()
        r_max = max(p, 0.05) * 1.5
        r_min = r_max / 8.0
        for k, (rx, ry, rr, rc, rp, rshade, rangle, rratio, rdisc) in enumerate(r):
            cx, cy = rx * (extent[0] + 0.2) - 0.1, ry * (extent[1] + 0.2) - 0.1
            radius = 1.0 / math.sqrt(1.0 / r_min**2 - rr * (1.0 / r_min**2 - 1.0 / r_max**2))
            colour = palette[min(int(rc * len(palette)), len(palette) - 1)] if rp < 0.5 else random_colours[k]
            colour = np.clip(colour * (0.7 + 0.45 * rshade), 0.0, 1.0)
            r0, r1, c0, c1 = _box(cx, cy, radius * math.sqrt(2.0), side, h, w)
            if r1 <= r0 or c1 <= c0:
                continue
            dx, dy = xs[:, c0:c1] - cx, ys[r0:r1] - cy
            if rdisc < 0.5:
                inside = dx * dx + dy * dy <= radius * radius
            else:
                a = rangle * math.pi
                u, v = dx * math.cos(a) + dy * math.sin(a), dy * math.cos(a) - dx * math.sin(a)
                inside = (np.abs(u) <= radius) & (np.abs(v) <= radius * (0.3 + 0.7 * rratio))
            image[r0:r1, c0:c1][inside] = colour
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def _box(cx: float, cy: float, reach: float, side: float, h: int, w: int) -> tuple[int, int, int, int]:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of the pixels within ``reach`` of
    ``(cx, cy)`` (coordinates in units of the longer side ``side``, see :func:`_grid`)."""
    c0 = max(0, int(math.floor((cx - reach) * side - 0.5)))
    c1 = min(w, int(math.ceil((cx + reach) * side - 0.5)) + 1)
    r0 = max(0, int(math.floor((cy - reach) * side - 0.5)))
    r1 = min(h, int(math.ceil((cy + reach) * side - 0.5)) + 1)
    return r0, r1, c0, c1


def _photo_crop(params: BackgroundParams, h: int, w: int) -> torch.Tensor:
    photo = _load_photo(params.photo)
    ph, pw = photo.shape[1:]
    x0, y0, cw, ch = params.crop
    c0, c1 = int(math.floor(x0 * pw)), int(math.ceil((x0 + cw) * pw))
    r0, r1 = int(math.floor(y0 * ph)), int(math.ceil((y0 + ch) * ph))
    c0, r0 = min(max(c0, 0), pw - 1), min(max(r0, 0), ph - 1)
    c1, r1 = max(min(c1, pw), c0 + 1), max(min(r1, ph), r0 + 1)
    crop = photo[:, r0:r1, c0:c1].unsqueeze(0).float() / 255.0
    out = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    if params.flip:
        out = out.flip(-1)
    return out.clamp(0.0, 1.0)


# --------------------------------------------------------------------------- appearance


@dataclass(frozen=True)
class AppearanceParams:
    """Colours and solid texture of an object (see :func:`apply_appearance`).

    Attributes:
        use_mesh_colors: keep the mesh's own vertex colours (if it has them) instead of
            ``part_colors``.
        part_colors: one RGB colour per part id (ids beyond the tuple wrap around).
        pattern: one of :data:`PATTERNS`.
        pattern_color: the pattern's second colour.
        pattern_scale: period of the pattern in object units (bounding radius 1).
        pattern_strength: mix weight of ``pattern_color`` where the pattern is on, [0, 1].
        pattern_axis: unit vector (object frame) across which stripes run.
        pattern_parts: per part id, whether it carries the pattern (wraps like
            ``part_colors``).
        seed: seed of the noise pattern's random directions and phases.
    """

    part_colors: tuple[RGB, ...]
    use_mesh_colors: bool = False
    pattern: str = "none"
    pattern_color: RGB = (0.0, 0.0, 0.0)
    pattern_scale: float = 0.3
    pattern_strength: float = 0.0
    pattern_axis: tuple[float, float, float] = (1.0, 0.0, 0.0)
    pattern_parts: tuple[bool, ...] = (True,)
    seed: int = 0

    def __post_init__(self):
        if len(self.part_colors) == 0:
            raise ValueError("AppearanceParams.part_colors: expected at least one colour, got none")
        if self.pattern not in PATTERNS:
            raise ValueError(f"AppearanceParams.pattern: expected one of {PATTERNS}, got {self.pattern!r}")
        if len(self.pattern_parts) == 0:
            raise ValueError("AppearanceParams.pattern_parts: expected at least one entry, got none")


def sample_appearance(
    generator: torch.Generator, num_parts: int, *, mesh_color_probability: float = 0.2
) -> AppearanceParams:
    """Draw object colours: per-part colours (often a shared hue), a pattern on some parts."""
    _check_generator(generator)
    if num_parts < 1:
        raise ValueError(f"num_parts: expected >= 1, got {num_parts}")
    g = generator
    use_mesh = _uniform(g, 0.0, 1.0) < mesh_color_probability
    base = [_color(g) for _ in range(min(num_parts, 1 + _randint(g, 3)))]
    colors = []
    for _ in range(num_parts):
        c = base[_randint(g, len(base))]
        jitter = _uniform(g, 0.8, 1.2)
        colors.append(tuple(round(min(1.0, v * jitter), 6) for v in c))
    pattern = PATTERNS[_randint(g, len(PATTERNS))] if _uniform(g, 0.0, 1.0) < 0.6 else "none"
    return AppearanceParams(
        part_colors=tuple(colors),
        use_mesh_colors=use_mesh,
        pattern=pattern,
        pattern_color=_color(g),
        pattern_scale=math.exp(_uniform(g, math.log(0.08), math.log(0.6))),
        pattern_strength=_uniform(g, 0.3, 1.0),
        pattern_axis=_unit_vector(g),
        pattern_parts=tuple(_uniform(g, 0.0, 1.0) < 0.6 for _ in range(num_parts)),
        seed=_subseed(g),
    )


def _solid_pattern(params: AppearanceParams, pos: torch.Tensor) -> torch.Tensor:
    """Pattern weight in [0, 1] at object-frame points ``pos (..., 3)`` -> ``(...)``."""
    axis = torch.tensor(params.pattern_axis, dtype=pos.dtype)
    p = params.pattern_scale
    if params.pattern == "stripes":
        return (torch.sin(2 * math.pi * (pos @ axis) / p) > 0).to(pos.dtype)
    if params.pattern == "checkers":
        cells = torch.floor(pos / p).sum(-1)
        return cells.remainder(2)
    if params.pattern == "noise":  # a sum of random plane waves, thresholded softly
        g = _rng(params.seed)
        dirs = torch.randn(6, 3, generator=g).to(pos.dtype)
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
        phase = torch.rand(6, generator=g).to(pos.dtype) * 2 * math.pi
        freq = (2 * math.pi / p) * (0.5 + torch.rand(6, generator=g).to(pos.dtype))
        waves = torch.sin((pos @ dirs.T) * freq + phase).sum(-1) / math.sqrt(3.0)
        return torch.sigmoid(3.0 * waves)
    return torch.zeros(pos.shape[:-1], dtype=pos.dtype)


def apply_appearance(
    params: AppearanceParams,
    fragments: Fragments,
    faces: torch.Tensor,
    verts_obj: torch.Tensor,
    part_ids: torch.Tensor,
    vertex_colors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pixel albedo of a rasterized object.

    Args:
        params: the appearance.
        fragments: rasterization of the object (``pix_to_face (B, H, W, k)``; slot 0 used).
        faces: ``(F, 3)`` int64, the rasterized topology.
        verts_obj: ``(V, 3)`` the vertices in the **object frame** (solid textures are
            fixed to the object).
        part_ids: ``(F,)`` int64 part id per face.
        vertex_colors: optional ``(V, 3)`` mesh colours, used when
            ``params.use_mesh_colors``.

    Returns:
        ``(B, H, W, 3)`` albedo in [0, 1], zero on background pixels.
    """
    p2f = fragments.pix_to_face[..., 0]
    covered = (p2f >= 0).unsqueeze(-1)
    face = p2f.clamp_min(0)
    part = part_ids.to(p2f.device).index_select(0, face.reshape(-1)).view(face.shape)
    if params.use_mesh_colors and vertex_colors is not None:
        albedo = interpolate(fragments, faces, vertex_colors.to(torch.float32)[None])
    else:
        table = torch.tensor(params.part_colors, dtype=torch.float32)
        albedo = table.index_select(0, part.remainder(table.shape[0]).reshape(-1)).view(*part.shape, 3)
    if params.pattern != "none" and params.pattern_strength > 0:
        pos = interpolate(fragments, faces, verts_obj.to(torch.float32)[None])
        weight = _solid_pattern(params, pos)
        on = torch.tensor(params.pattern_parts, dtype=torch.float32)
        on = on.index_select(0, part.remainder(on.numel()).reshape(-1)).view(part.shape)
        weight = (weight * on * params.pattern_strength).unsqueeze(-1)
        colour = torch.tensor(params.pattern_color, dtype=torch.float32)
        albedo = albedo + weight * (colour - albedo)
    return torch.where(covered, albedo.clamp(0.0, 1.0), torch.zeros((), dtype=albedo.dtype))


# --------------------------------------------------------------------------- lighting


def sample_light(generator: torch.Generator) -> DirectionalLight:
    """Draw a :class:`render.DirectionalLight` (camera frame).

    The light travels into the scene (positive z) from a random side, mostly from above;
    ambient in [0.25, 0.6], diffuse in [0.3, 0.8], a slightly tinted white colour.
    """
    _check_generator(generator)
    g = generator
    direction = (_uniform(g, -1.0, 1.0), _uniform(g, -0.4, 1.0), _uniform(g, 0.3, 1.5))
    ambient = _uniform(g, 0.25, 0.6)
    diffuse = _uniform(g, 0.3, 0.8)
    tint = [1.0 - _uniform(g, 0.0, 0.2) for _ in range(3)]
    top = max(tint)
    return DirectionalLight(
        direction=tuple(round(c, 6) for c in direction),
        ambient=round(ambient, 6),
        diffuse=round(diffuse, 6),
        color=tuple(round(c / top, 6) for c in tint),
    )


def apply_lighting(
    light: DirectionalLight,
    fragments: Fragments,
    faces: torch.Tensor,
    verts_cam: torch.Tensor,
    albedo: torch.Tensor,
) -> torch.Tensor:
    """Lambertian shading of a per-pixel albedo, Gouraud style (fast on the CPU).

    At every vertex, with its area-weighted unit normal ``n`` (:func:`render.vertex_normals`,
    camera frame) and the light's unit travel direction ``d``, the light term
    ``ambient + diffuse * max(0, s * n . -d)`` is evaluated for both sides ``s = +-1``;
    the terms are interpolated with the perspective-correct barycentrics and each pixel
    uses the side of its face it sees (two-sided, as in :func:`render.shade`). Then
    ``rgb = clamp(albedo * term * color, 0, 1)``.

    Args:
        light: camera-frame light.
        fragments, faces: the rasterization and its topology.
        verts_cam: ``(B, V, 3)`` camera-frame vertices that were rasterized.
        albedo: ``(B, H, W, 3)`` from :func:`apply_appearance`.

    Returns:
        ``(B, 3, H, W)`` float32 RGB in [0, 1], black on background.
    """
    verts_cam = verts_cam.to(torch.float32)
    to_light = -torch.tensor(light.unit_direction(), dtype=torch.float32)
    lam = vertex_normals(verts_cam, faces) @ to_light  # (B, V)
    terms = torch.stack([lam.clamp_min(0.0), (-lam).clamp_min(0.0)], -1) * light.diffuse + light.ambient
    both = interpolate(fragments, faces, terms)  # (B, H, W, 2), 0 on background
    p2f = fragments.pix_to_face[..., 0]
    bsz = p2f.shape[0]
    v0, v1, v2 = (verts_cam.index_select(1, faces[:, i]) for i in range(3))
    back = (v0 * torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)).sum(-1) > 0  # (B, F): sees the inner side
    back_pix = torch.gather(back, 1, p2f.clamp_min(0).reshape(bsz, -1)).view(p2f.shape)
    term = torch.where(back_pix, both[..., 1], both[..., 0]).unsqueeze(-1)
    colour = torch.tensor(light.color, dtype=torch.float32)
    return (albedo.to(torch.float32) * term * colour).clamp(0.0, 1.0).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class ShadingParams:
    """Lighting effects beyond :func:`apply_lighting`'s Lambert term (see :func:`apply_shading`).

    Photos and other renderers show highlights, shadows the object casts on itself and
    on the ground, and a camera response that is not linear; a model trained only on
    Lambert-shaded renders meets those for the first time at test time.

    Attributes:
        specular: strength of Blinn-Phong highlights (0: none), in the light's colour.
        shininess: Blinn-Phong exponent (larger: smaller, sharper highlights).
        gamma: exponent on the light term (1: linear; < 1 lifts the shaded side, as a
            camera's gamma curve does to linear radiance).
        self_shadow: parts of the object shadow other parts (a shadow map of the mesh).
        floor_shadow: darkening of the background where the object's shadow falls on a
            floor through its lowest point (+y up in the object frame); 0: no floor.
    """

    specular: float = 0.0
    shininess: float = 20.0
    gamma: float = 1.0
    self_shadow: bool = False
    floor_shadow: float = 0.0

    def __post_init__(self):
        for name, lo, hi in (("specular", 0.0, 1.0), ("gamma", 0.1, 10.0), ("floor_shadow", 0.0, 1.0)):
            value = float(getattr(self, name))
            if not lo <= value <= hi:
                raise ValueError(f"ShadingParams.{name}: expected a value in [{lo:g}, {hi:g}], got {value}")
        if not float(self.shininess) >= 1.0:
            raise ValueError(f"ShadingParams.shininess: expected >= 1, got {self.shininess}")


def sample_shading(generator: torch.Generator) -> ShadingParams:
    """Draw :class:`ShadingParams`: highlights of strength 0-0.5 (exponent 5-60), a light
    term gamma of 0.45-1, self-shadows in 80% of draws and a floor shadow (darkening
    0.3-0.75) in 60%."""
    _check_generator(generator)
    g = generator
    specular = _uniform(g, 0.0, 0.5)
    shininess = _uniform(g, 5.0, 60.0)
    gamma = _uniform(g, 0.45, 1.0)
    self_shadow = _uniform(g, 0.0, 1.0) < 0.8
    floor = _uniform(g, 0.0, 1.0) < 0.6
    strength = _uniform(g, 0.3, 0.75)
    return ShadingParams(specular=round(specular, 6), shininess=round(shininess, 6), gamma=round(gamma, 6),
                         self_shadow=self_shadow, floor_shadow=round(strength, 6) if floor else 0.0)


def _shadow_bias(texel: float, cos: torch.Tensor) -> torch.Tensor:
    """Slope-scaled depth slack of :meth:`render.ShadowMap.lit`: one and a half texels,
    plus two per unit of the surface's slope to the light."""
    c = cos.abs().clamp(0.1, 1.0)
    return texel * (1.5 + 2.0 * ((1 - c * c).sqrt() / c).clamp_max(5.0))


def shadow_maps(light: DirectionalLight, shading: ShadingParams | None, verts_cam: torch.Tensor,
                faces: torch.Tensor, resolution: int = 128) -> list[ShadowMap] | None:
    """One :class:`render.ShadowMap` per image of ``(B, V, 3)`` camera-frame vertices,
    to share between :func:`apply_shading` and :func:`floor_shadow`; ``None`` when
    ``shading`` casts no shadows."""
    if shading is None or not (shading.self_shadow or shading.floor_shadow > 0):
        return None
    verts_cam = verts_cam.to(torch.float32)
    return [ShadowMap.of(v, faces, light.unit_direction(), resolution) for v in verts_cam]


def apply_shading(
    light: DirectionalLight,
    shading: ShadingParams,
    fragments: Fragments,
    faces: torch.Tensor,
    verts_cam: torch.Tensor,
    albedo: torch.Tensor,
    shadows: Sequence[ShadowMap] | None = None,
) -> torch.Tensor:
    """Per-pixel shading with :class:`ShadingParams`' effects (the richer alternative
    to :func:`apply_lighting`).

    With the pixel's interpolated unit normal ``n`` (two-sided, facing the camera),
    ``l = -light direction``, the half vector ``h`` of ``l`` and the view direction, and
    ``s`` in [0, 1] how lit the pixel's surface point is (1 without ``self_shadow``;
    else by the mesh's :class:`render.ShadowMap`):
    ``rgb = clamp((albedo * (ambient + diffuse * s * max(0, n . l)) ** gamma
    + specular * s * max(0, n . h) ** shininess) * color, 0, 1)``.

    Args:
        light, shading: the light (camera frame) and the effects.
        fragments, faces: the rasterization and its topology.
        verts_cam: ``(B, V, 3)`` camera-frame vertices that were rasterized.
        albedo: ``(B, H, W, 3)`` from :func:`apply_appearance`.
        shadows: per image, the mesh's shadow map (:func:`shadow_maps`; built here when
            needed and not given).

    Returns:
        ``(B, 3, H, W)`` float32 RGB in [0, 1], black on background.
    """
    verts_cam = verts_cam.to(torch.float32)
    to_light = -torch.tensor(light.unit_direction(), dtype=torch.float32)
    normals = F.normalize(interpolate(fragments, faces, vertex_normals(verts_cam, faces)), dim=-1)
    points = interpolate(fragments, faces, verts_cam)  # (B, H, W, 3) camera frame
    view = F.normalize(-points, dim=-1)
    facing = (normals * view).sum(-1, keepdim=True)
    normals = torch.where(facing < 0, -normals, normals)  # two-sided: the side the camera sees
    cos = normals @ to_light
    lit = torch.ones_like(cos)
    mask = fragments.pix_to_face[..., 0] >= 0
    if shading.self_shadow:
        if shadows is None:
            shadows = shadow_maps(light, shading, verts_cam, faces)
        for b, smap in enumerate(shadows):
            sel = mask[b]
            if bool(sel.any()):
                lit[b][sel] = smap.lit(points[b][sel], _shadow_bias(smap.texel, cos[b][sel]))
    term = (light.ambient + light.diffuse * lit * cos.clamp_min(0.0)).clamp_min(0.0) ** shading.gamma
    half = F.normalize(to_light + view, dim=-1)
    spec = shading.specular * lit * (normals * half).sum(-1).clamp_min(0.0) ** shading.shininess
    colour = torch.tensor(light.color, dtype=torch.float32)
    rgb = (albedo.to(torch.float32) * term.unsqueeze(-1) + spec.unsqueeze(-1)) * colour
    rgb = torch.where(mask.unsqueeze(-1), rgb, torch.zeros((), dtype=rgb.dtype))
    return rgb.clamp(0.0, 1.0).permute(0, 3, 1, 2)


def _floor_plane(R: torch.Tensor, t: torch.Tensor, floor_y: float) -> tuple[torch.Tensor, float]:
    """The floor ``y = floor_y`` (object frame) in the camera frame: ``n . X = offset``
    with ``n`` the object's up axis; the camera (origin) is above it when ``offset < 0``."""
    normal = R[:, 1]
    return normal, float(normal @ (normal * floor_y + t))


def _pixel_rays(K: torch.Tensor, h: int, w: int, samples: int = 1) -> torch.Tensor:
    """Camera-frame rays (``z = 1``) through ``samples x samples`` points of every pixel
    (its centre when 1): ``(H * samples, W * samples, 3)``."""
    offs = (torch.arange(samples, dtype=torch.float32) + 0.5) / samples - 0.5
    v = (torch.arange(h, dtype=torch.float32)[:, None] + offs[None]).reshape(-1)
    u = (torch.arange(w, dtype=torch.float32)[:, None] + offs[None]).reshape(-1)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv, torch.ones_like(uu)], -1) @ torch.linalg.inv(K.to(torch.float32)).T


def floor_shadow(
    light: DirectionalLight,
    shading: ShadingParams,
    verts: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    image_size: tuple[int, int],
    shadow: ShadowMap | None = None,
) -> torch.Tensor:
    """The factor by which the object's shadow on a floor darkens the background.

    The floor is the plane through the object's lowest point, normal to its +y axis
    (object frame). Every pixel whose ray meets that plane in front of the camera (the
    camera above it) gets the point where it does, tested against a shadow map of the
    mesh; ``factor = 1 - floor_shadow * (1 - lit)``. Multiply the background by it.

    Args:
        light, shading: the light (camera frame) and the effects.
        verts: ``(V, 3)`` object-frame vertices; ``faces`` ``(F, 3)``.
        K, R, t: the camera (``X_cam = R @ X + t``).
        image_size: ``(H, W)``.
        shadow: the mesh's shadow map in the camera frame (:func:`shadow_maps`; built
            here when not given).

    Returns:
        ``(H, W)`` float32 in [0, 1] (all ones when ``floor_shadow`` is 0 or the camera
        is below the floor).
    """
    h, w = check_image_size(image_size)
    ones = torch.ones(h, w, dtype=torch.float32)
    if shading.floor_shadow == 0.0:
        return ones
    verts = verts.to(torch.float32)
    R, t, K = R.to(torch.float32), t.to(torch.float32), K.to(torch.float32)
    normal, offset = _floor_plane(R, t, float(verts[:, 1].min()))
    if offset >= 0:
        return ones
    rays = _pixel_rays(K, h, w)
    along = rays @ normal
    hits = along < -1e-6  # rays going down to the floor
    if not bool(hits.any()):
        return ones
    points = rays[hits] * (offset / along[hits]).unsqueeze(-1)
    if shadow is None:
        shadow = ShadowMap.of(verts @ R.T + t, faces, light.unit_direction())
    lit = shadow.lit(points, 1.5 * shadow.texel)
    out = ones.clone()
    out[hits] = 1.0 - shading.floor_shadow * (1.0 - lit)
    return out


# --------------------------------------------------------------------------- rooms


@dataclass(frozen=True)
class RoomParams:
    """A floor and a wall around the object, in 3D (see :func:`apply_room`).

    Procedural 2D backgrounds never show what photos of objects usually do: a floor
    receding to a horizon and a wall behind, their patterns foreshortened by perspective.
    Here they are planes in the object's frame (+y up), seen through the sample's camera.

    Attributes:
        floor: a floor through the object's lowest point, normal to +y (shown when the
            camera is above it).
        wall: a vertical wall behind the object.
        wall_distance: the wall's distance from the object's origin (object units).
        wall_yaw: the wall's turn about +y away from facing the camera, radians.
        floor_material, wall_material: their colours and solid patterns
            (:class:`AppearanceParams` of one part; ``pattern_scale`` in object units).
    """

    floor: bool = True
    wall: bool = True
    wall_distance: float = 4.0
    wall_yaw: float = 0.0
    floor_material: AppearanceParams = AppearanceParams(part_colors=((0.5, 0.5, 0.5),))
    wall_material: AppearanceParams = AppearanceParams(part_colors=((0.7, 0.7, 0.7),))

    def __post_init__(self):
        if not (math.isfinite(self.wall_distance) and self.wall_distance > 0):
            raise ValueError(f"RoomParams.wall_distance: expected a distance > 0, got {self.wall_distance!r}")


def _room_material(g: torch.Generator) -> AppearanceParams:
    pattern = PATTERNS[1 + _randint(g, len(PATTERNS) - 1)] if _uniform(g, 0.0, 1.0) < 0.75 else "none"
    return AppearanceParams(
        part_colors=(_color(g),),
        pattern=pattern,
        pattern_color=_color(g),
        pattern_scale=math.exp(_uniform(g, math.log(0.15), math.log(2.5))),
        pattern_strength=_uniform(g, 0.4, 1.0),
        pattern_axis=_unit_vector(g),
        seed=_subseed(g),
    )


def sample_room(generator: torch.Generator) -> RoomParams:
    """Draw a :class:`RoomParams`: a floor and a wall each 80 % of the time, the wall 2 to
    8 units behind the object and turned up to 35 degrees, patterned (75 %) materials."""
    _check_generator(generator)
    g = generator
    floor, wall = _uniform(g, 0.0, 1.0) < 0.8, _uniform(g, 0.0, 1.0) < 0.8
    return RoomParams(floor=floor, wall=wall, wall_distance=_uniform(g, 2.0, 8.0),
                      wall_yaw=_uniform(g, -0.6, 0.6), floor_material=_room_material(g),
                      wall_material=_room_material(g))


def _material_albedo(material: AppearanceParams, points: torch.Tensor) -> torch.Tensor:
    """Albedo ``(N, 3)`` of a one-part material at object-frame ``points (N, 3)``."""
    albedo = torch.tensor(material.part_colors[0], dtype=points.dtype).expand(len(points), 3)
    if material.pattern == "none" or material.pattern_strength == 0:
        return albedo
    weight = (_solid_pattern(material, points) * material.pattern_strength).unsqueeze(-1)
    return albedo + weight * (torch.tensor(material.pattern_color, dtype=points.dtype) - albedo)


def apply_room(
    room: RoomParams,
    light: DirectionalLight,
    floor_y: float,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    image_size: tuple[int, int],
    samples: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray-trace the room's planes: their Lambert-lit colour and the pixels they cover.

    Each pixel's ``samples x samples`` rays meet the floor (``y = floor_y`` in the object
    frame, when the camera is above it) and the wall (a vertical plane ``wall_distance``
    behind the object's origin, facing the camera's horizontal viewing direction turned
    by ``wall_yaw``); the nearer hit in front of the camera counts. Its albedo is the
    plane's material at the hit point (object frame), lit by ``light`` like the object
    (:func:`apply_lighting`).

    Args:
        room: the planes and their materials.
        light: the scene's light (camera frame).
        floor_y: height of the floor in the object frame (the object's lowest point).
        K, R, t: the camera (``X_cam = R @ X + t``).
        image_size: ``(H, W)``.
        samples: rays per pixel side (anti-aliasing).

    Returns:
        ``rgb (3, H, W)`` (the pixels' covered share of it) and ``coverage (H, W)`` in
        [0, 1], float32: composite as ``rgb + (1 - coverage) * background``.
    """
    h, w = check_image_size(image_size)
    if samples < 1:
        raise ValueError(f"samples: expected >= 1, got {samples}")
    R, t, K = R.to(torch.float32), t.to(torch.float32), K.to(torch.float32)
    s = int(samples)
    rays = _pixel_rays(K, h, w, s)  # (H*s, W*s, 3)
    depth = torch.full(rays.shape[:2], math.inf)
    which = torch.full(rays.shape[:2], -1, dtype=torch.long)
    planes = []  # (normal towards the camera, offset, material): n . X = offset, camera frame
    if room.floor:
        normal, offset = _floor_plane(R, t, floor_y)
        if offset < 0:  # the camera above it
            planes.append((normal, offset, room.floor_material))
    if room.wall:
        camera = -R.T @ t  # object frame
        ahead = -camera * torch.tensor([1.0, 0.0, 1.0])  # towards the object, level
        if float(ahead.norm()) < 1e-6:  # looking straight down
            ahead = torch.tensor([0.0, 0.0, -1.0])
        c, sn = math.cos(room.wall_yaw), math.sin(room.wall_yaw)
        back = torch.tensor([[c, 0.0, sn], [0.0, 1.0, 0.0], [-sn, 0.0, c]]) @ (ahead / ahead.norm())
        # the wall: back . X_obj = distance, i.e. R back . X = distance - back . camera
        planes.append((-(R @ back), float(back @ camera) - room.wall_distance, room.wall_material))
    for k, (normal, offset, _) in enumerate(planes):
        along = rays @ normal
        hit_depth = offset / along  # > 0 where along < 0, as offset < 0: in front of the camera
        hit = (along < -1e-9) & (hit_depth < depth)
        depth = torch.where(hit, hit_depth, depth)
        which = torch.where(hit, torch.full_like(which, k), which)
    rgb = torch.zeros(*rays.shape[:2], 3)
    toward = -torch.tensor(light.unit_direction(), dtype=torch.float32)
    colour = torch.tensor(light.color, dtype=torch.float32)
    for k, (normal, _, material) in enumerate(planes):
        sel = which == k
        if not bool(sel.any()):
            continue
        points = (rays[sel] * depth[sel].unsqueeze(-1) - t) @ R  # object frame: R^T (X - t)
        lambert = light.ambient + light.diffuse * max(0.0, float(normal @ toward))
        rgb[sel] = (_material_albedo(material, points) * lambert * colour).clamp(0.0, 1.0)
    covered = (which >= 0).to(torch.float32)
    pool = lambda x: F.avg_pool2d(x[None], s)[0]  # noqa: E731
    return pool(rgb.permute(2, 0, 1)), pool(covered[None])[0]


# --------------------------------------------------------------------------- photometric


@dataclass(frozen=True)
class PhotometricParams:
    """Camera-level jitter (see :func:`apply_photometric`).

    Attributes:
        brightness: added to every channel.
        contrast: scale about the image mean.
        saturation: 0 grey, 1 unchanged.
        noise_std: standard deviation of Gaussian pixel noise.
        seed: seed of the noise.
    """

    brightness: float = 0.0
    contrast: float = 1.0
    saturation: float = 1.0
    noise_std: float = 0.0
    seed: int = 0


def sample_photometric(generator: torch.Generator) -> PhotometricParams:
    """Draw mild photometric jitter (brightness +-0.08, contrast and saturation 0.8-1.2, noise <= 0.03)."""
    _check_generator(generator)
    g = generator
    return PhotometricParams(
        brightness=_uniform(g, -0.08, 0.08),
        contrast=_uniform(g, 0.8, 1.2),
        saturation=_uniform(g, 0.7, 1.3),
        noise_std=_uniform(g, 0.0, 0.03),
        seed=_subseed(g),
    )


def apply_photometric(params: PhotometricParams, image: torch.Tensor) -> torch.Tensor:
    """Apply :class:`PhotometricParams` to a ``(3, H, W)`` image; returns a new image in [0, 1].

    ``out = contrast * (grey + saturation * (image - grey) - m) + m + brightness + noise``
    with ``grey`` the per-pixel channel mean and ``m`` the image mean.
    """
    grey = image.mean(0, keepdim=True)
    m = float(image.mean())
    c, s = params.contrast, params.saturation
    out = torch.add(image, grey, alpha=(1.0 - s) / s) if s != 0 else grey.expand_as(image).clone()
    out.mul_(c * s if s != 0 else c).add_((1.0 - c) * m + params.brightness)
    if params.noise_std > 0:
        out.add_(torch.randn(image.shape, generator=_rng(params.seed)), alpha=params.noise_std)
    return out.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- occluders


@dataclass(frozen=True)
class ShapeOccluder:
    """Another shape, rendered from a viewpoint into a square sprite and pasted on the image.

    Attributes:
        category, shape_seed: the shape (``datasets.shapes.make_shape(category, seed)``).
        azimuth, elevation: the viewpoint of the sprite (radians, distance 3).
        appearance, light: its colours and lighting.
        center: ``(u, v)`` pixel where the sprite's centre lands.
        size: side of the sprite's square in the image, pixels.
        rotation: in-plane rotation of the sprite (radians; positive turns it clockwise
            as displayed).
        resolution: the sprite's own pixel resolution.
    """

    category: str
    shape_seed: int
    azimuth: float
    elevation: float
    appearance: AppearanceParams
    light: DirectionalLight
    center: tuple[float, float] = (0.0, 0.0)
    size: float = 1.0
    rotation: float = 0.0
    resolution: int = 64


@dataclass(frozen=True)
class PatchOccluder:
    """A textured 2D patch pasted on the image.

    Attributes:
        outline: ``"ellipse"``, ``"rectangle"`` or ``"polygon"`` (star-shaped about its centre).
        aspect: height / width of the ellipse or rectangle (the longer side fills the sprite).
        radii: polygon radii (fractions of the sprite's half side) at equally spaced angles.
        texture: the patch's texture, a procedural :class:`BackgroundParams`.
        center, size, rotation, resolution: as in :class:`ShapeOccluder`.
    """

    outline: str
    texture: BackgroundParams
    aspect: float = 1.0
    radii: tuple[float, ...] = ()
    center: tuple[float, float] = (0.0, 0.0)
    size: float = 1.0
    rotation: float = 0.0
    resolution: int = 64

    def __post_init__(self):
        if self.outline not in ("ellipse", "rectangle", "polygon"):
            raise ValueError(f"PatchOccluder.outline: expected 'ellipse', 'rectangle' or 'polygon', got {self.outline!r}")
        if self.outline == "polygon" and len(self.radii) < 3:
            raise ValueError(f"PatchOccluder.radii: expected at least 3 radii for a polygon, got {len(self.radii)}")


Occluder = ShapeOccluder | PatchOccluder

#: Distance of the sprite camera from a shape occluder's centre (bounding radius 1).
_SPRITE_DISTANCE = 3.0


@functools.lru_cache(maxsize=1024)
def cached_shape(category: str, seed: int) -> Shape:
    """``datasets.shapes.make_shape(category, seed)`` behind a process-wide LRU cache
    (1024 shapes; shapes are immutable, so sharing them is safe)."""
    return make_shape(category, seed)


def _sprite_key(occ: Occluder) -> Occluder:
    return dataclasses.replace(occ, center=(0.0, 0.0), size=1.0, rotation=0.0)


def _sprite(key: Occluder) -> torch.Tensor:
    """``(1, 4, r, r)`` float32 premultiplied RGBA sprite of an occluder (placement ignored).

    Shape sprites are kept in a large cache (as float16: a finite set of looks recurs, see
    ``looks`` in :func:`sample_occluder`), patch sprites in a small one (reused only
    between placement search and pasting).
    """
    if isinstance(key, ShapeOccluder):
        return _shape_sprite(key).to(torch.float32)
    return _patch_sprite(key)


@functools.lru_cache(maxsize=1024)
def _shape_sprite(key: ShapeOccluder) -> torch.Tensor:
    return _render_sprite(key).to(torch.float16)


@functools.lru_cache(maxsize=32)
def _patch_sprite(key: PatchOccluder) -> torch.Tensor:
    return _render_sprite(key)


def _render_sprite(key: Occluder) -> torch.Tensor:
    r = int(key.resolution)
    if isinstance(key, ShapeOccluder):
        shape = cached_shape(key.category, key.shape_seed)
        mesh = shape.mesh
        R, t = angles_to_pose(key.azimuth, key.elevation, 0.0, _SPRITE_DISTANCE)
        f = 0.5 * r * math.sqrt(_SPRITE_DISTANCE**2 - 1.0) * 0.98
        K = intrinsics(f, f, (r - 1) / 2.0, (r - 1) / 2.0)
        verts = mesh.verts.to(torch.float32)
        verts_cam = (verts @ R.T.to(torch.float32) + t.to(torch.float32))[None]
        frags = rasterize(verts_cam, mesh.faces, K.to(torch.float32), (r, r))
        albedo = apply_appearance(key.appearance, frags, mesh.faces, verts, shape.part_ids, mesh.vertex_colors)
        rgb = apply_lighting(key.light, frags, mesh.faces, verts_cam, albedo)[0]
        alpha = frags.mask[0].to(torch.float32)[None]
    else:
        rgb = apply_background(key.texture, (r, r))
        c = (torch.arange(r, dtype=torch.float32) + 0.5) / r * 2.0 - 1.0
        x, y = c.expand(r, r), c[:, None].expand(r, r)
        ax, ay = (1.0, key.aspect) if key.aspect <= 1.0 else (1.0 / key.aspect, 1.0)
        if key.outline == "ellipse":
            inside = (x / ax) ** 2 + (y / ay) ** 2 <= 1.0
        elif key.outline == "rectangle":
            inside = (x.abs() <= ax) & (y.abs() <= ay)
        else:
            radii = torch.tensor(key.radii, dtype=torch.float32)
            n = radii.numel()
            phi = torch.atan2(y, x).remainder(2 * math.pi) / (2 * math.pi) * n
            i0 = phi.floor().long().clamp(0, n - 1)
            frac = phi - i0.to(phi.dtype)
            bound = radii[i0] + (radii[(i0 + 1) % n] - radii[i0]) * frac
            inside = x * x + y * y <= bound * bound
        alpha = inside.to(torch.float32)[None]
    return torch.cat([rgb * alpha, alpha], 0)[None]


def _local_coords(occ: Occluder, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Sprite coordinates in [-1, 1] (``grid_sample``, ``align_corners=False``) of pixels ``(u, v)``."""
    du = u.to(torch.float32) - occ.center[0]
    dv = v.to(torch.float32) - occ.center[1]
    c, s = math.cos(occ.rotation), math.sin(occ.rotation)
    inv = 2.0 / occ.size
    return torch.stack([(c * inv) * du + (s * inv) * dv, (c * inv) * dv - (s * inv) * du], -1)


def _sample_sprite(occ: Occluder, u: torch.Tensor, v: torch.Tensor, channels: slice) -> torch.Tensor:
    """Bilinear samples ``(C, N)`` of the occluder's sprite at pixels ``u, v (N,)``."""
    sprite = _sprite(_sprite_key(occ))[:, channels]
    grid = _local_coords(occ, u, v).view(1, 1, -1, 2)
    return F.grid_sample(sprite, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, :, 0]


def _footprint(occ: Occluder, h: int, w: int) -> tuple[int, int, int, int]:
    """Pixel rows ``[r0, r1)`` and columns ``[c0, c1)`` the occluder can touch."""
    reach = occ.size / math.sqrt(2.0) + 1.0
    c0 = max(0, int(math.floor(occ.center[0] - reach)))
    c1 = min(w, int(math.ceil(occ.center[0] + reach)) + 1)
    r0 = max(0, int(math.floor(occ.center[1] - reach)))
    r1 = min(h, int(math.ceil(occ.center[1] + reach)) + 1)
    return r0, r1, c0, c1


def occluder_mask(occluders: Sequence[Occluder], image_size: tuple[int, int]) -> torch.Tensor:
    """``(H, W)`` bool: the pixels covered by any of the occluders (their sprite's alpha >= 0.5)."""
    h, w = check_image_size(image_size)
    mask = torch.zeros(h, w, dtype=torch.bool)
    for occ in occluders:
        r0, r1, c0, c1 = _footprint(occ, h, w)
        if r1 <= r0 or c1 <= c0:
            continue
        v, u = torch.meshgrid(torch.arange(r0, r1), torch.arange(c0, c1), indexing="ij")
        alpha = _sample_sprite(occ, u.reshape(-1), v.reshape(-1), slice(3, 4))[0]
        mask[r0:r1, c0:c1] |= (alpha >= 0.5).view(r1 - r0, c1 - c0)
    return mask


def apply_occluders(occluders: Sequence[Occluder], image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste occluders over an image, in order.

    A pixel belongs to an occluder where its sprite's (bilinearly resampled) alpha is at
    least 0.5; there the image takes the sprite's colour (un-premultiplied).

    Args:
        occluders: :class:`ShapeOccluder` / :class:`PatchOccluder` parameters.
        image: ``(3, H, W)`` float image.

    Returns:
        ``(image, mask)``: the new ``(3, H, W)`` image and ``(H, W)`` bool union of the
        occluders' pixels (equal to :func:`occluder_mask`).
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected shape (3, H, W), got {tuple(image.shape)}")
    h, w = image.shape[1:]
    out = image.clone()
    mask = torch.zeros(h, w, dtype=torch.bool)
    for occ in occluders:
        r0, r1, c0, c1 = _footprint(occ, h, w)
        if r1 <= r0 or c1 <= c0:
            continue
        v, u = torch.meshgrid(torch.arange(r0, r1), torch.arange(c0, c1), indexing="ij")
        rgba = _sample_sprite(occ, u.reshape(-1), v.reshape(-1), slice(0, 4)).view(4, r1 - r0, c1 - c0)
        on = rgba[3] >= 0.5
        rgb = (rgba[:3] / rgba[3:].clamp_min(1e-6)).clamp(0.0, 1.0)
        out[:, r0:r1, c0:c1] = torch.where(on, rgb.to(out.dtype), out[:, r0:r1, c0:c1])
        mask[r0:r1, c0:c1] |= on
    return out, mask


def _look_seed(category: str, seed: int, look: int) -> int:
    return zlib.crc32(f"{category}/{seed}/{look}".encode())


def _draw_look(g: torch.Generator, category: str, seed: int, resolution: int) -> ShapeOccluder:
    parts = max(1, cached_shape(category, seed).num_parts)
    return ShapeOccluder(
        category=category,
        shape_seed=seed,
        azimuth=_uniform(g, -math.pi, math.pi),
        elevation=_uniform(g, -0.3, 1.0),
        appearance=sample_appearance(g, parts),
        light=sample_light(g),
        resolution=resolution,
    )


def occluder_looks(category: str, seed: int, looks: int, resolution: int) -> tuple[ShapeOccluder, ...]:
    """The ``looks`` fixed looks of a shape occluder (see :func:`sample_occluder`), unplaced."""
    return tuple(_draw_look(_rng(_look_seed(category, seed, k)), category, seed, resolution) for k in range(looks))


def preload_sprites(occluders: Sequence[ShapeOccluder]) -> None:
    """Render (and cache) the sprites of shape occluders now, e.g. all of :func:`occluder_looks`."""
    for occ in occluders:
        _sprite(_sprite_key(occ))


def sample_occluder(
    generator: torch.Generator,
    center: tuple[float, float],
    size: float,
    *,
    categories: Sequence[str] = (),
    shape_seeds: int = 4,
    shape_probability: float = 0.5,
    looks: int | None = 4,
    resolution: int = 64,
) -> Occluder:
    """Draw one occluder centred at ``center`` with side ``size`` (pixels).

    With probability ``shape_probability`` (and if ``categories`` is not empty) it is a
    :class:`ShapeOccluder` of a random category and shape seed in ``[0, shape_seeds)``,
    seen from a random viewpoint with random colours and light; otherwise a
    :class:`PatchOccluder` with a procedural texture, outline and aspect.

    ``looks``: when set, a shape occluder's viewpoint, appearance and light are one of
    ``looks`` fixed draws per ``(category, seed)`` (seeded from them, not from
    ``generator``), so its rendered sprite recurs and is cached: occluding costs a few
    times less. ``None`` draws them freely. Placement (centre, size, rotation) is always
    continuous.
    """
    _check_generator(generator)
    g = generator
    rotation = _uniform(g, -math.pi, math.pi)
    if categories and _uniform(g, 0.0, 1.0) < shape_probability:
        category = categories[_randint(g, len(categories))]
        seed = _randint(g, max(1, shape_seeds))
        gl = _rng(_look_seed(category, seed, _randint(g, int(looks)))) if looks else g
        occ = _draw_look(gl, category, seed, resolution)
        # shapes mostly stay upright
        return dataclasses.replace(occ, center=center, size=size, rotation=rotation * 0.25)
    outline = ("ellipse", "rectangle", "polygon")[_randint(g, 3)]
    radii = tuple(round(_uniform(g, 0.45, 1.0), 6) for _ in range(5 + _randint(g, 6))) if outline == "polygon" else ()
    texture = sample_background(g, (resolution, resolution))
    return PatchOccluder(
        outline=outline,
        texture=dataclasses.replace(texture, scale=texture.scale * 2.0),
        aspect=math.exp(_uniform(g, math.log(0.35), math.log(1.0 / 0.35))),
        radii=radii,
        center=center,
        size=size,
        rotation=rotation,
        resolution=resolution,
    )


def sprite_resolution(image_size: tuple[int, int]) -> int:
    """Default sprite resolution for an image size: half the longer side, in [32, 256]."""
    return min(256, max(32, max(image_size) // 2))


def sample_occluders(
    generator: torch.Generator,
    object_mask: torch.Tensor,
    fraction_range: tuple[float, float],
    *,
    categories: Sequence[str] = (),
    shape_seeds: int = 4,
    shape_probability: float = 0.5,
    looks: int | None = 4,
    max_occluders: int = 3,
    attempts: int = 12,
    resolution: int | None = None,
) -> tuple[tuple[Occluder, ...], float]:
    """Place occluders so that the hidden fraction of ``object_mask`` falls in a range.

    Per attempt: draw 1 to ``max_occluders`` occluders centred on random object pixels with
    random relative sizes (:func:`sample_occluder`), then search (bisection on a common
    size factor) for a factor whose hidden fraction ``|mask & occluders| / |mask|`` (read
    from the masks, see :func:`occluder_mask`) lies in ``fraction_range``. If no attempt
    succeeds the closest placement found is returned (the measured value says so).

    Args:
        generator: the source of randomness.
        object_mask: ``(H, W)`` bool, the object's full (amodal) silhouette.
        fraction_range: ``(lo, hi)``, e.g. :data:`OCCLUSION_LEVELS` ``[level]``;
            ``(0, 0)`` places nothing.
        categories, shape_seeds, shape_probability, looks: see :func:`sample_occluder`.
        max_occluders: at most this many occluders.
        attempts: how many independent placements to try.
        resolution: sprite resolution (default half the longer image side, in [32, 256]).

    Returns:
        ``(occluders, hidden_fraction)``.
    """
    _check_generator(generator)
    if object_mask.dim() != 2 or object_mask.dtype != torch.bool:
        raise ValueError(f"object_mask: expected a (H, W) bool tensor, got {tuple(object_mask.shape)} {object_mask.dtype}")
    lo, hi = (float(v) for v in fraction_range)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"fraction_range: expected 0 <= lo <= hi <= 1, got {fraction_range}")
    if hi == 0.0:
        return (), 0.0
    g = generator
    h, w = object_mask.shape
    if resolution is None:
        resolution = sprite_resolution((h, w))
    ys, xs = object_mask.nonzero(as_tuple=True)
    n = xs.numel()
    if n == 0:
        raise ValueError("object_mask: expected at least one object pixel, got an empty mask")
    extent = math.sqrt(float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)))
    # Aim inside the range, away from its ends.
    margin = min(0.01, (hi - lo) / 4)
    tlo, thi = lo + margin, hi - margin

    def hidden(occs):
        covered = torch.zeros(n, dtype=torch.bool)
        for occ in occs:
            covered |= _sample_sprite(occ, xs, ys, slice(3, 4))[0] >= 0.5
        return float(covered.sum()) / n

    best, best_frac, best_err = (), 0.0, math.inf
    for _ in range(attempts):
        count = 1 + _randint(g, max_occluders)
        occs = []
        for _ in range(count):
            k = _randint(g, n)
            centre = (float(xs[k]), float(ys[k]))
            size = extent * _uniform(g, 0.5, 1.2)
            occs.append(
                sample_occluder(
                    g, centre, size, categories=categories, shape_seeds=shape_seeds,
                    shape_probability=shape_probability, looks=looks, resolution=resolution,
                )
            )
        base = [o.size for o in occs]
        k_lo, k_hi = 0.05, 4.0 * max(h, w) / max(base)

        def scaled(k):
            return [dataclasses.replace(o, size=s * k) for o, s in zip(occs, base)]

        for _ in range(20):
            k = math.sqrt(k_lo * k_hi)
            cand = scaled(k)
            frac = hidden(cand)
            err = 0.0 if tlo <= frac <= thi else min(abs(frac - tlo), abs(frac - thi))
            if err < best_err:
                best, best_frac, best_err = tuple(cand), frac, err
            if err == 0.0:
                return best, best_frac
            if frac < tlo:
                k_lo = k
            else:
                k_hi = k
            if k_hi / k_lo < 1.001:
                break
    return best, best_frac
