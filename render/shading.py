"""RGB shading of rasterized meshes, normals, texture sampling and soft silhouettes.

Conventions are those of DESIGN.md ("Conventions"): vertices are given in the OpenCV
camera frame (x right, y down, z forward, camera centre at the origin), ``K`` is in
pixels, pixel (row i, column j) has its centre at ``(u, v) = (j, i)``, images are
``(B, 3, H, W)`` RGB in [0, 1] and faces are counter-clockwise seen from outside, so
``(v1 - v0) x (v2 - v0)`` points outward.

* :func:`face_normals`, :func:`vertex_normals` — unit normals (area-weighted at vertices).
* :class:`DirectionalLight` and :func:`shade` — Lambertian shading of
  :class:`~render.rasterize.Fragments` with vertex colours, a UV texture or a constant grey
  albedo, smooth two-sided normals; :func:`render_rgb` rasterizes and shades in one call.
* :class:`ShadowMap` and :func:`directional_shadow` — how lit points are under a
  directional light (a shadow map of the mesh, softened by percentage-closer filtering).
* :func:`sample_texture` — bilinear texture lookup with OBJ texture coordinates.
* :func:`soft_silhouette` — a SoftRas-style soft silhouette, differentiable w.r.t. the
  vertex positions, evaluated only near each face (vectorized, chunked);
  :func:`soft_silhouette_reference` is the slow loop kept for comparison in tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .checks import check_floating, check_image_size, check_intrinsics, check_mesh, check_shape
from .interpolate import interpolate
from .rasterize import DEFAULT_MAX_CANDIDATES, Fragments, _chunks, rasterize

__all__ = [
    "DEFAULT_ALBEDO",
    "DEFAULT_SILHOUETTE_CANDIDATES",
    "DirectionalLight",
    "face_normals",
    "vertex_normals",
    "sample_texture",
    "shade",
    "render_rgb",
    "soft_silhouette",
    "soft_silhouette_reference",
    "directional_shadow",
    "ShadowMap",
]

#: Grey albedo used by :func:`shade` when neither vertex colours nor a texture are given.
DEFAULT_ALBEDO = 0.7

#: Default number of (pixel, face) pairs :func:`soft_silhouette` evaluates at once. Each
#: pair costs a few hundred bytes of temporaries (float32; twice that in float64), so the
#: default bounds the working set to a few hundred MB whatever the mesh and image size.
DEFAULT_SILHOUETTE_CANDIDATES = 1 << 20

_TEXTURE_WRAPS = ("repeat", "clamp")


# --------------------------------------------------------------------------- normals


def _unit(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``v / |v|`` along the last dimension; zero vectors stay zero (finite gradients)."""
    norm_sq = (v * v).sum(-1, keepdim=True).clamp_min(eps * eps)
    return v * torch.rsqrt(norm_sq)


def _face_cross(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """``(B, F, 3)`` ``(v1 - v0) x (v2 - v0)``: outward, with length twice the face area."""
    v0, v1, v2 = (verts.index_select(1, faces[:, i]) for i in range(3))
    return torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)


def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit outward normals of the faces.

    Args:
        verts: ``(B, V, 3)`` float vertex positions (any frame; the normals are in the
            same frame).
        faces: ``(F, 3)`` int64, counter-clockwise seen from outside.

    Returns:
        ``(B, F, 3)`` unit normals ``(v1 - v0) x (v2 - v0)`` normalised; zero for
        degenerate (zero-area) faces. Differentiable w.r.t. ``verts``.

    Example:
        >>> import torch
        >>> verts = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
        >>> face_normals(verts, torch.tensor([[0, 1, 2]])).tolist()
        [[[0.0, 0.0, 1.0]]]
    """
    check_mesh("verts", verts, faces)
    return _unit(_face_cross(verts, faces))


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals.

    Each vertex gets the sum of the outward normals of its faces weighted by their areas,
    normalised.

    Args:
        verts: ``(B, V, 3)`` float vertex positions (any frame; the normals are in the
            same frame).
        faces: ``(F, 3)`` int64, counter-clockwise seen from outside.

    Returns:
        ``(B, V, 3)`` unit normals; zero for vertices used by no face (or only by
        degenerate faces), without NaN values or gradients. Differentiable w.r.t. ``verts``.

    Example:
        >>> import torch
        >>> verts = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]]])
        >>> vertex_normals(verts, torch.tensor([[0, 1, 2]]))[0].tolist()  # vertex 3 is unused
        [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    """
    check_mesh("verts", verts, faces)
    cross = _face_cross(verts, faces)
    acc = torch.zeros_like(verts)
    for i in range(3):
        acc = acc.index_add(1, faces[:, i], cross)
    return _unit(acc)


# --------------------------------------------------------------------------- lighting


@dataclass(frozen=True)
class DirectionalLight:
    """A directional light with an ambient term, in the camera frame.

    Attributes:
        direction: ``(x, y, z)`` the direction in which the light **travels**, in the
            OpenCV camera frame (x right, y down, z forward); normalised internally. The
            default ``(0.3, 0.6, 1.0)`` travels away from the camera, to the right and
            down: the light comes from behind the camera's upper-left, so faces looking at
            the camera are lit.
        ambient: ambient intensity (>= 0).
        diffuse: Lambertian intensity (>= 0).
        color: RGB colour of the light, multiplying both terms.

    A surface point with unit normal ``n`` and albedo ``a`` gets
    ``a * (ambient + diffuse * max(0, n . (-direction))) * color`` (see :func:`shade`).

    Example:
        >>> DirectionalLight(direction=(0.0, 0.0, 1.0), ambient=0.2, diffuse=0.8).unit_direction()
        (0.0, 0.0, 1.0)
    """

    direction: tuple[float, float, float] = (0.3, 0.6, 1.0)
    ambient: float = 0.5
    diffuse: float = 0.5
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        for name in ("direction", "color"):
            value = tuple(getattr(self, name))
            if len(value) != 3 or not all(math.isfinite(float(c)) for c in value):
                raise ValueError(f"DirectionalLight.{name}: expected 3 finite numbers, got {getattr(self, name)!r}")
        if math.hypot(*(float(c) for c in self.direction)) == 0.0:
            raise ValueError(f"DirectionalLight.direction: expected a nonzero vector, got {self.direction!r}")
        for name in ("ambient", "diffuse"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"DirectionalLight.{name}: expected a finite number >= 0, got {value}")

    def unit_direction(self) -> tuple[float, float, float]:
        """The travel direction normalised to unit length."""
        x, y, z = (float(c) for c in self.direction)
        n = math.sqrt(x * x + y * y + z * z)
        return (x / n, y / n, z / n)


# --------------------------------------------------------------------------- textures


def _check_texture(texture: torch.Tensor) -> torch.Tensor:
    """Return a ``(N, 3, Ht, Wt)`` view of a ``(Ht, Wt, 3)`` or ``(N, 3, Ht, Wt)`` texture."""
    if not isinstance(texture, torch.Tensor):
        raise TypeError(f"texture: expected a torch.Tensor, got {type(texture).__name__}")
    check_floating("texture", texture)
    if texture.dim() == 3 and texture.shape[2] == 3:
        texture = texture.permute(2, 0, 1).unsqueeze(0)
    elif not (texture.dim() == 4 and texture.shape[1] == 3):
        raise ValueError(f"texture: expected shape (Ht, Wt, 3) or (B, 3, Ht, Wt), got {tuple(texture.shape)}")
    if texture.shape[2] == 0 or texture.shape[3] == 0:
        raise ValueError(f"texture: expected a non-empty image, got shape {tuple(texture.shape)}")
    return texture


def sample_texture(uv: torch.Tensor, texture: torch.Tensor, *, wrap: str = "repeat") -> torch.Tensor:
    """Bilinear texture lookup at OBJ texture coordinates.

    Texture coordinates follow OBJ: ``u`` runs left to right and ``v`` bottom to top
    over the texture image, whose row 0 is its top row; so ``(0, 0)`` is the bottom-left
    corner of the image, ``(0, 1)`` the top-left corner. Texel ``(row r, column c)`` of a
    ``(Ht, Wt)`` texture has its centre at ``u = (c + 0.5) / Wt``, ``v = 1 - (r + 0.5) / Ht``
    (``torch.nn.functional.grid_sample`` with ``align_corners=False``).

    Args:
        uv: ``(..., 2)`` float texture coordinates. With a batched texture of ``B > 1``
            images, ``uv`` must be ``(B, ..., 2)`` and row ``b`` samples texture ``b``.
        texture: ``(Ht, Wt, 3)`` (as in :class:`render.mesh.Mesh`) or ``(B or 1, 3, Ht, Wt)``
            float RGB; cast to ``uv``'s dtype.
        wrap: what coordinates outside ``[0, 1]`` read. ``"repeat"`` (the default, as in
            OBJ / glTF): the texture tiles the plane, and bilinear filtering blends across
            the opposite edges. ``"clamp"``: the border texels extend outward
            (``padding_mode="border"``).

    Returns:
        ``(..., 3)`` colours, differentiable w.r.t. ``uv`` and ``texture``.

    Example:
        >>> import torch
        >>> texture = torch.zeros(2, 2, 3)
        >>> texture[0, 0] = torch.tensor([1.0, 0.0, 0.0])  # top-left texel is red
        >>> sample_texture(torch.tensor([[0.25, 0.75], [0.25, 0.25]]), texture).tolist()
        [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    if not isinstance(uv, torch.Tensor):
        raise TypeError(f"uv: expected a torch.Tensor, got {type(uv).__name__}")
    check_floating("uv", uv)
    if uv.dim() == 0 or uv.shape[-1] != 2:
        raise ValueError(f"uv: expected shape (..., 2), got {tuple(uv.shape)}")
    if wrap not in _TEXTURE_WRAPS:
        raise ValueError(f"wrap: expected one of {_TEXTURE_WRAPS}, got {wrap!r}")
    tex = _check_texture(texture).to(device=uv.device, dtype=uv.dtype)
    n, _, ht, wt = tex.shape
    if n > 1 and (uv.dim() < 2 or uv.shape[0] != n):
        raise ValueError(
            f"uv: expected shape ({n}, ..., 2) to match the texture batch of {n}, got {tuple(uv.shape)}"
        )
    grid = uv.reshape(n, 1, -1, 2)
    if wrap == "repeat":
        # Tile: take the fractional part, pad the texture by one texel from the opposite
        # edges, and address the padded image so that bilinear filtering wraps around.
        grid = grid - grid.detach().floor()
        tex = torch.cat([tex[..., -1:, :], tex, tex[..., :1, :]], dim=2)
        tex = torch.cat([tex[..., -1:], tex, tex[..., :1]], dim=3)
        x = (2.0 * grid[..., 0] * wt + 2.0) / (wt + 2) - 1.0
        y = (2.0 * (1.0 - grid[..., 1]) * ht + 2.0) / (ht + 2) - 1.0
    else:
        x = 2.0 * grid[..., 0] - 1.0
        y = 1.0 - 2.0 * grid[..., 1]
    out = F.grid_sample(tex, torch.stack([x, y], dim=-1), mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0].transpose(1, 2).reshape(*uv.shape[:-1], 3)


# --------------------------------------------------------------------------- shading


def _per_vertex(name: str, x: torch.Tensor, bsz: int, nv: int, channels: int, dtype) -> torch.Tensor:
    """``(V, C)`` or ``(B or 1, V, C)`` attributes as ``(B or 1, V, C)`` of ``dtype``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    check_floating(name, x)
    if x.dim() == 2:
        check_shape(name, x, [nv, channels])
        x = x.unsqueeze(0)
    elif x.dim() != 3 or x.shape[0] not in (1, bsz) or tuple(x.shape[1:]) != (nv, channels):
        raise ValueError(
            f"{name}: expected shape ({nv}, {channels}) or ({bsz} or 1, {nv}, {channels}), got {tuple(x.shape)}"
        )
    return x.to(dtype)


def _background(background, bsz: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Background as a tensor broadcastable to ``(B, 3, H, W)``."""
    if isinstance(background, torch.Tensor):
        bg = background.to(device=like.device, dtype=like.dtype)
        if bg.dim() == 1 and bg.shape[0] == 3:
            return bg.view(1, 3, 1, 1)
        if bg.dim() == 4 and bg.shape[0] in (1, bsz) and tuple(bg.shape[1:]) == (3, h, w):
            return bg
        raise ValueError(f"background: expected shape (3,) or ({bsz}, 3, {h}, {w}), got {tuple(background.shape)}")
    values = tuple(background)
    if len(values) != 3:
        raise ValueError(f"background: expected an RGB triple, got {background!r}")
    return torch.tensor(values, device=like.device, dtype=like.dtype).view(1, 3, 1, 1)


def _shade(fragments, faces, verts_cam, vertex_colors, uvs, texture, texture_wrap, light, background):
    """Shared body of :func:`shade` and :func:`render_rgb`: ``(image, normals)``."""
    if not isinstance(fragments, Fragments):
        raise TypeError(f"fragments: expected render.Fragments, got {type(fragments).__name__}")
    if not isinstance(light, DirectionalLight):
        raise TypeError(f"light: expected a DirectionalLight, got {type(light).__name__}")
    bsz = check_mesh("verts_cam", verts_cam, faces)
    p2f = fragments.pix_to_face[..., 0]
    if p2f.shape[0] != bsz:
        raise ValueError(f"verts_cam: expected a batch of {p2f.shape[0]} to match the fragments, got {bsz}")
    _, h, w = p2f.shape
    nv, dtype = verts_cam.shape[1], verts_cam.dtype
    if vertex_colors is not None and (uvs is not None or texture is not None):
        raise ValueError("shade: expected either vertex_colors or uvs + texture, got both")
    if (uvs is None) != (texture is None):
        raise ValueError(
            f"shade: expected uvs and texture together, got uvs={'set' if uvs is not None else None}, "
            f"texture={'set' if texture is not None else None}"
        )
    mask = p2f >= 0

    # Albedo (B, H, W, 3).
    if vertex_colors is not None:
        albedo = interpolate(fragments, faces, _per_vertex("vertex_colors", vertex_colors, bsz, nv, 3, dtype))
    elif uvs is not None:
        uv = interpolate(fragments, faces, _per_vertex("uvs", uvs, bsz, nv, 2, dtype))
        albedo = sample_texture(uv, texture, wrap=texture_wrap)
    else:
        albedo = torch.full((1, 1, 1, 3), DEFAULT_ALBEDO, dtype=dtype, device=verts_cam.device)

    # Smooth normals, flipped on pixels that see the back of their face.
    normals = _unit(interpolate(fragments, faces, vertex_normals(verts_cam, faces)))
    with torch.no_grad():
        v0 = verts_cam.index_select(1, faces[:, 0])
        back = ((v0 * _face_cross(verts_cam, faces)).sum(-1) > 0).to(dtype)  # (B, F)
        flip = 1.0 - 2.0 * torch.gather(back, 1, p2f.clamp_min(0).reshape(bsz, -1)).view(bsz, h, w, 1)
    normals = normals * flip

    to_light = -torch.tensor(light.unit_direction(), dtype=dtype, device=verts_cam.device)
    lambert = (normals * to_light).sum(-1, keepdim=True).clamp_min(0.0)
    color = torch.tensor(tuple(float(c) for c in light.color), dtype=dtype, device=verts_cam.device)
    rgb = (albedo * (light.ambient + light.diffuse * lambert) * color).clamp(0.0, 1.0)
    rgb = rgb.permute(0, 3, 1, 2)
    bg = _background(background, bsz, h, w, rgb)
    image = torch.where(mask[:, None], rgb, bg)
    return image, normals.permute(0, 3, 1, 2)


def shade(
    fragments: Fragments,
    faces: torch.Tensor,
    verts_cam: torch.Tensor,
    *,
    vertex_colors: torch.Tensor | None = None,
    uvs: torch.Tensor | None = None,
    texture: torch.Tensor | None = None,
    texture_wrap: str = "repeat",
    light: DirectionalLight = DirectionalLight(),
    background: tuple[float, float, float] | torch.Tensor = (0.0, 0.0, 0.0),
) -> torch.Tensor:
    """Lambertian shading of rasterized fragments.

    Per covered pixel (the nearest face, ``k = 0``):

    * **albedo**: ``vertex_colors`` interpolated, or ``uvs`` interpolated with the
      perspective-correct barycentrics then looked up in ``texture`` (see
      :func:`sample_texture`), or :data:`DEFAULT_ALBEDO` grey when neither is given;
    * **normal**: the area-weighted vertex normals (:func:`vertex_normals`) interpolated
      and renormalised (smooth shading). Shading is two-sided: where the pixel sees the
      back of its face (the geometric normal ``(v1 - v0) x (v2 - v0)`` points away from
      the camera, i.e. ``n . (-p) < 0`` for the points ``p`` of the face, the camera being
      at the origin), the normal is flipped;
    * **colour**: ``albedo * (ambient + diffuse * max(0, n . (-d))) * light.color``
      clamped to [0, 1], ``d`` the light's unit travel direction.

    Pixels where ``fragments.mask`` is False get ``background``.

    Args:
        fragments: output of :func:`render.rasterize` for ``B`` images of ``(H, W)``.
        faces: ``(F, 3)`` int64, the topology that was rasterized.
        verts_cam: ``(B, V, 3)`` float vertex positions in the camera frame, the ones that
            were rasterized (gradients flow to them through barycentrics and normals).
        vertex_colors: optional ``(V, 3)`` or ``(B or 1, V, 3)`` RGB in [0, 1].
        uvs: optional ``(V, 2)`` or ``(B or 1, V, 2)`` OBJ texture coordinates; with
            ``texture``.
        texture: optional ``(Ht, Wt, 3)`` or ``(B or 1, 3, Ht, Wt)`` float RGB; with ``uvs``.
        texture_wrap: ``"repeat"`` or ``"clamp"``, see :func:`sample_texture`.
        light: a :class:`DirectionalLight` (camera frame).
        background: an RGB triple, or a ``(3,)`` or ``(B, 3, H, W)`` tensor.

    Returns:
        ``(B, 3, H, W)`` image in [0, 1], dtype of ``verts_cam``; differentiable w.r.t.
        ``verts_cam``, the colours, uvs, texture and background tensor.

    Example:
        >>> import torch
        >>> from render import rasterize
        >>> verts = torch.tensor([[[-1.0, -1.0, 5.0], [1.0, -1.0, 5.0], [0.0, 1.0, 5.0]]])
        >>> faces = torch.tensor([[0, 1, 2]])
        >>> K = torch.tensor([[10.0, 0.0, 4.0], [0.0, 10.0, 4.0], [0.0, 0.0, 1.0]])
        >>> frags = rasterize(verts, faces, K, (9, 9))
        >>> light = DirectionalLight(direction=(0.0, 0.0, 1.0), ambient=0.25, diffuse=0.5)
        >>> img = shade(frags, faces, verts, vertex_colors=torch.ones(3, 3), light=light)
        >>> img.shape, img[0, :, 4, 4].tolist(), img[0, :, 0, 0].tolist()
        (torch.Size([1, 3, 9, 9]), [0.75, 0.75, 0.75], [0.0, 0.0, 0.0])
    """
    image, _ = _shade(fragments, faces, verts_cam, vertex_colors, uvs, texture, texture_wrap, light, background)
    return image


def render_rgb(
    verts_cam: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    image_size: tuple[int, int],
    *,
    vertex_colors: torch.Tensor | None = None,
    uvs: torch.Tensor | None = None,
    texture: torch.Tensor | None = None,
    texture_wrap: str = "repeat",
    light: DirectionalLight = DirectionalLight(),
    background: tuple[float, float, float] | torch.Tensor = (0.0, 0.0, 0.0),
    cull_backfaces: bool = False,
    z_near: float = 1e-4,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> dict[str, torch.Tensor]:
    """Rasterize (:func:`render.rasterize`) and shade (:func:`shade`) in one call.

    Args:
        verts_cam, faces, K, image_size, cull_backfaces, z_near, max_candidates: as in
            :func:`render.rasterize` (``verts_cam (B, V, 3)`` in the camera frame).
        vertex_colors, uvs, texture, texture_wrap, light, background: as in :func:`shade`.

    Returns:
        A dict with ``image (B, 3, H, W)`` in [0, 1]; ``mask (B, H, W)`` bool (covered
        pixels); ``depth (B, H, W)`` camera z of the nearest hit, 0 on background;
        ``normals (B, 3, H, W)`` unit shading normals in the camera frame (smooth, flipped
        towards the camera where a face is seen from the back), 0 on background.

    Example:
        >>> import torch
        >>> verts = torch.tensor([[[-1.0, -1.0, 5.0], [1.0, -1.0, 5.0], [0.0, 1.0, 5.0]]])
        >>> K = torch.tensor([[10.0, 0.0, 4.0], [0.0, 10.0, 4.0], [0.0, 0.0, 1.0]])
        >>> out = render_rgb(verts, torch.tensor([[0, 2, 1]]), K, (9, 9))  # faces the camera
        >>> sorted(out), float(out["depth"][0, 4, 4]), out["normals"][0, :, 4, 4].tolist()
        (['depth', 'image', 'mask', 'normals'], 5.0, [0.0, 0.0, -1.0])
    """
    fragments = rasterize(
        verts_cam, faces, K, image_size, cull_backfaces=cull_backfaces, z_near=z_near, max_candidates=max_candidates
    )
    image, normals = _shade(fragments, faces, verts_cam, vertex_colors, uvs, texture, texture_wrap, light, background)
    mask = fragments.mask
    depth = torch.where(mask, fragments.zbuf[..., 0], torch.zeros((), dtype=verts_cam.dtype, device=verts_cam.device))
    return {"image": image, "mask": mask, "depth": depth, "normals": normals}


# --------------------------------------------------------------------------- shadows


@dataclass(frozen=True)
class ShadowMap:
    """A shadow map of a mesh under a directional light (build it with :meth:`of`).

    The mesh is rasterized by a distant camera looking along the light's travel
    direction (nearly orthographic: 50 bounding-sphere radii away, the sphere filling its
    square image); :meth:`lit` then says how lit any points are. One map serves any
    number of queries (the object's own pixels, the floor under it, ...).

    Attributes:
        depth: ``(S, S)`` depth of the mesh along the light (``inf`` where it is absent).
        rotation: ``(3, 3)`` rows: the light camera's x, y and z (= travel direction).
        eye: ``(3,)`` the light camera's centre.
        focal: its focal length, pixels (principal point at the image centre).
        texel: the side of one map pixel at the mesh, in the vertices' units.
    """

    depth: torch.Tensor
    rotation: torch.Tensor
    eye: torch.Tensor
    focal: float
    texel: float

    @classmethod
    def of(cls, verts: torch.Tensor, faces: torch.Tensor, direction, resolution: int = 128) -> ShadowMap:
        """The map of ``(V, 3)`` vertices and ``(F, 3)`` faces under a light travelling
        along ``direction`` (``(3,)``, any length > 0, the vertices' frame)."""
        check_mesh("verts", verts[None], faces)
        if int(resolution) < 8:
            raise ValueError(f"resolution: expected >= 8, got {resolution}")
        res = int(resolution)
        dtype, device = verts.dtype, verts.device
        d = torch.as_tensor(direction, dtype=dtype, device=device).reshape(3)
        if not float(d.norm()) > 0:
            raise ValueError(f"direction: expected a nonzero vector, got {d.tolist()}")
        d = d / d.norm()
        centre = (verts.amin(0) + verts.amax(0)) / 2
        radius = float((verts - centre).norm(dim=-1).max().clamp_min(1e-6)) * 1.02
        # a right-handed frame whose z is the travel direction
        helper = torch.tensor([0.0, 1.0, 0.0] if abs(float(d[1])) < 0.9 else [1.0, 0.0, 0.0], dtype=dtype,
                              device=device)
        x = torch.linalg.cross(helper, d)
        x = x / x.norm()
        rot = torch.stack([x, torch.linalg.cross(d, x), d])
        far = 50.0 * radius
        eye = centre - far * d
        focal = (res / 2) * far / radius
        c = (res - 1) / 2
        K = torch.tensor([[focal, 0.0, c], [0.0, focal, c], [0.0, 0.0, 1.0]], dtype=dtype, device=device)
        depth = rasterize(((verts - eye) @ rot.T)[None], faces, K, (res, res)).zbuf[0, ..., 0]
        depth = torch.where(depth < 0, torch.full_like(depth, float("inf")), depth)
        return cls(depth=depth, rotation=rot, eye=eye, focal=focal, texel=2.0 * radius / res)

    def lit(self, points: torch.Tensor, bias: float | torch.Tensor = 0.01) -> torch.Tensor:
        """How lit ``(N, 3)`` points are: ``(N,)`` in [0, 1] (1 lit, 0 in shadow).

        A point is lit where nothing of the mesh lies between it and the light: its depth
        along the light is at most the map's ``+ bias`` (same units as the vertices,
        scalar or ``(N,)``: larger hides self-shadowing "acne" on lit surfaces, smaller
        keeps contact shadows). The four nearest texels are compared and averaged
        (percentage-closer filtering), so shadow edges are soft over about one texel.
        Points outside the map's footprint are lit."""
        if points.ndim != 2 or points.shape[-1] != 3:
            raise ValueError(f"points: expected shape (N, 3), got {tuple(points.shape)}")
        res = self.depth.shape[0]
        c = (res - 1) / 2
        p = (points.to(self.depth.dtype) - self.eye) @ self.rotation.T
        z = p[:, 2]
        u = self.focal * p[:, 0] / z + c
        v = self.focal * p[:, 1] / z + c
        u0, v0 = u.floor(), v.floor()
        bias = torch.as_tensor(bias, dtype=z.dtype, device=z.device)
        lit = torch.zeros_like(z)
        for du in (0, 1):
            for dv in (0, 1):
                uu, vv = u0 + du, v0 + dv
                weight = (1 - (u - uu).abs()) * (1 - (v - vv).abs())
                inside = (uu >= 0) & (uu < res) & (vv >= 0) & (vv < res)
                depth = self.depth[vv.clamp(0, res - 1).long(), uu.clamp(0, res - 1).long()]
                lit = lit + weight * (~inside | (z <= depth + bias)).to(z.dtype)
        return lit.clamp(0.0, 1.0)


def directional_shadow(
    verts: torch.Tensor,
    faces: torch.Tensor,
    direction,
    points: torch.Tensor,
    *,
    resolution: int = 128,
    bias: float | torch.Tensor = 0.01,
) -> torch.Tensor:
    """How lit each point is under a directional light: ``ShadowMap.of(verts, faces,
    direction, resolution).lit(points, bias)`` (:class:`ShadowMap`).

    Args:
        verts: ``(V, 3)`` float vertices (any frame; ``points`` and ``direction`` in the
            same frame).
        faces: ``(F, 3)`` int64.
        direction: ``(3,)`` the direction in which the light travels (any length > 0).
        points: ``(N, 3)`` points to test (e.g. the surface points that pixels see).
        resolution: side of the shadow map, pixels.
        bias: depth slack (:meth:`ShadowMap.lit`).

    Returns:
        ``(N,)`` float in [0, 1]: 1 lit, 0 in shadow.

    Example:
        >>> import torch
        >>> from render import directional_shadow
        >>> tri = torch.tensor([[-1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
        >>> below, beside = [0.0, -1.0, 0.0], [3.0, -1.0, 0.0]
        >>> directional_shadow(tri, torch.tensor([[0, 1, 2]]), (0.0, -1.0, 0.0),
        ...                    torch.tensor([below, beside])).tolist()  # light from above
        [0.0, 1.0]
    """
    return ShadowMap.of(verts, faces, direction, resolution).lit(points, bias)


# --------------------------------------------------------------------------- soft silhouette


def _check_silhouette_inputs(verts, faces, K, image_size, sigma, eps=None):
    """Validate :func:`soft_silhouette` inputs; return ``(K (B, 3, 3), H, W)``."""
    bsz = check_mesh("verts_cam", verts, faces)
    K = check_intrinsics(K, bsz, verts)
    h, w = check_image_size(image_size)
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: expected a finite value > 0 (pixels), got {sigma}")
    if eps is not None and not (0.0 < float(eps) < 1.0):
        raise ValueError(f"eps: expected a value in (0, 1), got {eps}")
    return K, h, w


def _project(verts: torch.Tensor, K: torch.Tensor, z_near: float) -> torch.Tensor:
    """``(B, V, 2)`` pixel coordinates ``(u, v)``; depths are clamped at ``z_near``."""
    z = verts[..., 2:].clamp_min(z_near)
    xy1 = torch.cat([verts[..., :2] / z, torch.ones_like(z)], dim=-1)
    return xy1 @ K[:, :2].transpose(1, 2)


def _pair_logs(table: torch.Tensor, fid: torch.Tensor, lx: torch.Tensor, ly: torch.Tensor, inv_sigma: float):
    """``log(1 - p)`` of (pixel, face) pairs: ``logsigmoid(d / sigma)``.

    ``table (15, N)`` holds per face the three vertices relative to its box corner (rows
    0-5: ``x0, y0, x1, y1, x2, y2``, counter-clockwise in the image, i.e. positive
    ``cross(e0, e1)``), the edges ``e_i = a_{i+1} - a_i`` (rows 6-11) and ``1 / |e_i|^2``
    (rows 12-14). ``fid (P,)`` picks the face of each pair, ``lx, ly (P,)`` are the
    pixel centres relative to the box corner.

    The signed distance ``d`` is the distance to the nearest edge segment, negative when
    the pixel centre is inside (every ``cross(e_i, q - a_i) >= 0``). Only 1D gathers,
    arithmetic and ``clamp``/``minimum`` (no boolean masks or advanced indexing, which
    are slow on CPU).
    """
    t = [row.index_select(0, fid) for row in table]  # 1D gathers: fast, also backward
    dist_sq = cross_min = None
    for i in range(3):
        wx, wy = lx - t[2 * i], ly - t[2 * i + 1]
        ex, ey = t[6 + 2 * i], t[7 + 2 * i]
        s = (torch.addcmul(wx * ex, wy, ey) * t[12 + i]).clamp(0.0, 1.0)
        rx, ry = wx - s * ex, wy - s * ey
        d2 = torch.addcmul(rx * rx, ry, ry)
        c = wy * ex - wx * ey
        dist_sq = d2 if dist_sq is None else torch.minimum(dist_sq, d2)
        cross_min = c if cross_min is None else torch.minimum(cross_min, c)
    tiny = torch.finfo(dist_sq.dtype).tiny
    # Inside (cross_min >= 0, also on an edge, where d is 0 anyway) -> negative distance.
    dist = torch.copysign(dist_sq.clamp_min(tiny).sqrt(), -cross_min.detach())
    return F.logsigmoid(dist * inv_sigma)


def _chunk_log_sum(table, fid, lx, ly, pix, npix: int, inv_sigma: float) -> torch.Tensor:
    """``(npix,)`` per-pixel sums of ``log(1 - p)`` over the pairs of one chunk."""
    logs = _pair_logs(table, fid, lx, ly, inv_sigma)
    return logs.new_zeros(npix).index_add(0, pix, logs)


def soft_silhouette(
    verts_cam: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    image_size: tuple[int, int],
    *,
    sigma: float = 1.0,
    eps: float = 1e-4,
    z_near: float = 1e-4,
    max_candidates: int = DEFAULT_SILHOUETTE_CANDIDATES,
) -> torch.Tensor:
    """SoftRas-style soft silhouette, differentiable w.r.t. the vertex positions.

    Faces are projected to the image with ``K``. For each pixel centre ``q`` and face
    ``f``, ``d(q, f)`` is the signed Euclidean distance in pixels from ``q`` to the
    projected triangle (distance to its nearest edge; negative inside), the face's
    coverage probability is ``p = sigmoid(-d / sigma)``, and the pixel's silhouette value is
    ``1 - prod_f (1 - p)``, computed as ``1 - exp(sum_f logsigmoid(d / sigma))``.

    As in SoftRas, every face counts, facing the camera or not, and there is no depth
    test; interior mesh edges show as faint seams when ``sigma`` is far below a pixel.
    Faces with any vertex closer than ``z_near`` (behind the camera included) are
    **skipped** entirely (no clipping, unlike :func:`render.rasterize`).

    Only the (pixel, face) pairs inside each face's screen bounding box grown by
    ``m = sigma * ln(1 / eps)`` pixels are evaluated: farther away ``p < eps`` is
    neglected (a relative change of at most ``eps`` per face in ``1 - value``). Pairs are
    enumerated face by face (``torch.repeat_interleave`` over box areas) in chunks of at
    most ``max_candidates`` pairs; with gradients enabled and several chunks, each chunk is
    recomputed during backward (activation checkpointing), so memory stays bounded.

    Args:
        verts_cam: ``(B, V, 3)`` float32/float64 vertex positions in the camera frame.
        faces: ``(F, 3)`` int64 vertex indices, shared by the batch.
        K: ``(3, 3)`` or ``(B, 3, 3)`` intrinsics in pixels with last row ``(0, 0, 1)``.
        image_size: ``(H, W)``.
        sigma: softness in pixels (> 0); smaller is sharper.
        eps: coverage probability below which a (pixel, face) pair is neglected, in (0, 1).
        z_near: faces with a vertex at camera depth below this are skipped.
        max_candidates: upper bound on the pairs evaluated at once.

    Returns:
        ``(B, H, W)`` values in [0, 1], dtype of ``verts_cam``; differentiable w.r.t.
        ``verts_cam`` and ``K``.

    Example:
        >>> import torch
        >>> verts = torch.tensor([[[-1.0, -1.0, 5.0], [1.0, -1.0, 5.0], [0.0, 1.0, 5.0]]])
        >>> K = torch.tensor([[10.0, 0.0, 4.0], [0.0, 10.0, 4.0], [0.0, 0.0, 1.0]])
        >>> sil = soft_silhouette(verts, torch.tensor([[0, 1, 2]]), K, (9, 9), sigma=0.5)
        >>> sil.shape, round(float(sil[0, 4, 4]), 3), round(float(sil[0, 0, 0]), 3)
        (torch.Size([1, 9, 9]), 0.857, 0.003)
    """
    K, h, w = _check_silhouette_inputs(verts_cam, faces, K, image_size, sigma, eps)
    if int(max_candidates) < 1:
        raise ValueError(f"max_candidates: expected >= 1, got {max_candidates}")
    bsz, nv = verts_cam.shape[:2]
    nf = faces.shape[0]
    device, dtype = verts_cam.device, verts_cam.dtype
    inv_sigma = 1.0 / float(sigma)
    margin = float(sigma) * math.log(1.0 / float(eps))
    npix = bsz * h * w
    uv = _project(verts_cam, K, float(z_near)).reshape(bsz * nv, 2)
    vid = (torch.arange(bsz, device=device) * nv)[:, None, None] + faces[None]  # (B, F, 3)
    vid = vid.reshape(bsz * nf, 3)

    with torch.no_grad():
        tri = uv.detach().index_select(0, vid.reshape(-1)).view(-1, 3, 2)
        in_front = verts_cam.detach()[..., 2].reshape(-1).index_select(0, vid.reshape(-1)).view(-1, 3)
        lo = tri.amin(1) - margin
        hi = tri.amax(1) + margin
        x0 = lo[:, 0].clamp(-1, w).ceil().long().clamp_min(0)
        x1 = hi[:, 0].clamp(-1, w).floor().long().clamp_max(w - 1)
        y0 = lo[:, 1].clamp(-1, h).ceil().long().clamp_min(0)
        y1 = hi[:, 1].clamp(-1, h).floor().long().clamp_max(h - 1)
        bw, bh = (x1 - x0 + 1).clamp_min(0), (y1 - y0 + 1).clamp_min(0)
        keep = (in_front.amin(1) >= z_near) & (bw > 0) & (bh > 0)
        keep = keep.nonzero().squeeze(1)
        vid, x0, y0, bw, bh = (t.index_select(0, keep) for t in (vid, x0, y0, bw, bh))
        tri = tri.index_select(0, keep)
        # Orient every projected triangle counter-clockwise in the image (positive
        # cross(e0, e1)) by swapping vertices 1 and 2 where needed.
        e0, e1 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        neg = (e0[:, 0] * e1[:, 1] - e0[:, 1] * e1[:, 0]) < 0
        vid = torch.where(neg[:, None], vid[:, [0, 2, 1]], vid)
        area = bw * bh
        base = torch.div(keep, nf, rounding_mode="floor") * (h * w) + y0 * w + x0  # corner pixel

    # Differentiable per-face table (15, N), see _pair_logs.
    corner = torch.stack([x0, y0], dim=1).to(dtype)[:, None]  # (N, 1, 2)
    a = uv.index_select(0, vid.reshape(-1)).view(-1, 3, 2) - corner
    e = a.roll(-1, dims=1) - a
    inv_len_sq = 1.0 / (e * e).sum(-1).clamp_min(torch.finfo(dtype).tiny)
    table = torch.cat([a.reshape(-1, 6), e.reshape(-1, 6), inv_len_sq], dim=1).T.contiguous()

    total = uv.new_zeros(npix)
    chunks = _chunks(area, int(max_candidates))
    use_checkpoint = len(chunks) > 1 and torch.is_grad_enabled() and table.requires_grad
    for lo_f, hi_f in chunks:
        with torch.no_grad():
            counts = area[lo_f:hi_f]
            local = torch.repeat_interleave(torch.arange(hi_f - lo_f, device=device), counts)
            start = torch.cumsum(counts, 0) - counts
            j = torch.arange(local.numel(), device=device) - start.index_select(0, local)
            fid = local + lo_f
            row_w = bw.index_select(0, fid)
            ly = torch.div(j, row_w, rounding_mode="floor")
            lx = j - ly * row_w
            pix = base.index_select(0, fid) + ly * w + lx
            lxf, lyf = lx.to(dtype), ly.to(dtype)
        if use_checkpoint:
            part = checkpoint(_chunk_log_sum, table, fid, lxf, lyf, pix, npix, inv_sigma, use_reentrant=False)
        else:
            part = _chunk_log_sum(table, fid, lxf, lyf, pix, npix, inv_sigma)
        total = total + part
    return (-torch.expm1(total)).view(bsz, h, w)


def soft_silhouette_reference(
    verts_cam: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    image_size: tuple[int, int],
    *,
    sigma: float = 1.0,
    z_near: float = 1e-4,
) -> torch.Tensor:
    """Slow reference for :func:`soft_silhouette`, for tests only.

    A plain loop over images and pixels, every face at once (no bounding boxes, nothing
    neglected): the inside test uses barycentric coordinates and the distance is
    measured to each edge segment by projection, ``1 - prod(1 - p)`` is taken directly.
    Same arguments (without ``eps`` and ``max_candidates``) and output.
    """
    K, h, w = _check_silhouette_inputs(verts_cam, faces, K, image_size, sigma)
    bsz = verts_cam.shape[0]
    out = []
    for b in range(bsz):
        front = (verts_cam[b, :, 2][faces] >= z_near).all(1)
        fcs = faces[front]
        z = verts_cam[b, :, 2:].clamp_min(z_near)  # skipped faces only
        proj = (verts_cam[b] / z) @ K[b].T  # rows (u, v, 1)
        tri = proj[fcs][..., :2]  # (F, 3, 2)
        a, bb, c = tri.unbind(1)
        det = (bb - a)[:, 0] * (c - a)[:, 1] - (bb - a)[:, 1] * (c - a)[:, 0]
        for i in range(h):
            for j in range(w):
                q = torch.tensor([float(j), float(i)], dtype=verts_cam.dtype, device=verts_cam.device)
                # barycentric coordinates of q (Cramer's rule)
                l1 = ((q - a)[:, 0] * (c - a)[:, 1] - (q - a)[:, 1] * (c - a)[:, 0]) / det
                l2 = ((bb - a)[:, 0] * (q - a)[:, 1] - (bb - a)[:, 1] * (q - a)[:, 0]) / det
                inside = (l1 >= 0) & (l2 >= 0) & (l1 + l2 <= 1)
                dists = []
                for p0, p1 in ((a, bb), (bb, c), (c, a)):
                    seg = p1 - p0
                    s = (((q - p0) * seg).sum(-1) / (seg * seg).sum(-1)).clamp(0, 1)
                    foot = p0 + s[:, None] * seg
                    dists.append(torch.linalg.vector_norm(q - foot, dim=-1))
                dist = torch.stack(dists).amin(0)
                d = torch.where(inside, -dist, dist)
                out.append(1 - torch.prod(torch.sigmoid(d / sigma)))
    return torch.stack(out).view(bsz, h, w)
