"""Shading, normals, texture sampling and soft silhouettes: conventions, references, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from render.rasterize import rasterize
from render.shading import (
    DEFAULT_ALBEDO,
    DirectionalLight,
    face_normals,
    render_rgb,
    sample_texture,
    shade,
    soft_silhouette,
    soft_silhouette_reference,
    vertex_normals,
)
from tests.helpers import assert_close

AMBIENT_ONLY = DirectionalLight(direction=(0.0, 0.0, 1.0), ambient=1.0, diffuse=0.0)


def pinhole(f, cx, cy, dtype=torch.float64):
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def quad(center, axis_u, axis_v, half, dtype=torch.float64):
    """A quad ``center + half * (s * axis_u + t * axis_v)``, s, t in {-1, 1}, facing the camera.

    Vertices: 0 (s=-1, t=-1), 1 (s=1, t=-1), 2 (s=1, t=1), 3 (s=-1, t=1); with axis_u = +x
    and axis_v = +y (down) in the camera frame, vertex 0 is the top-left one. Faces are
    wound so that their normal points towards the camera for that orientation.
    """
    c, a, b = (torch.tensor(x, dtype=dtype) for x in (center, axis_u, axis_v))
    st = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=dtype)
    verts = c + half * (st[:, :1] * a + st[:, 1:] * b)
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])
    return verts[None], faces, st


def random_triangles(seed, batch=2, num_faces=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    verts = torch.randn(batch, 3 * num_faces, 3, generator=g, dtype=dtype) * 0.6
    verts[..., 2] += 3.0
    faces = torch.arange(3 * num_faces).view(num_faces, 3)
    K = pinhole(14.0, 6.5, 5.5, dtype).repeat(batch, 1, 1)
    K[1:, 0, 0] = 12.0
    K[1:, 0, 1] = 0.4  # skew
    return verts, faces, K


def icosphere(distance=3.0, subdivisions=1, seed=0, dtype=torch.float64):
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions)
    R = torch.tensor(Rotation.random(random_state=seed).as_matrix(), dtype=dtype)
    verts = torch.tensor(mesh.vertices, dtype=dtype) @ R.T + torch.tensor([0.1, -0.05, distance], dtype=dtype)
    return verts[None], torch.tensor(mesh.faces, dtype=torch.int64)


# --------------------------------------------------------------------------- normals


def test_vertex_normals_are_area_weighted_and_zero_safe():
    # A "roof": two faces sharing the edge 0-1, areas 1/2 and 1, normals +z and -x.
    verts = torch.tensor([[[0.0, 0, 0], [0, 1, 0], [1, 0, 0], [7, 7, 7], [0, 0, -2]]], dtype=torch.float64)
    faces = torch.tensor([[0, 2, 1], [0, 1, 4]])
    assert_close(face_normals(verts, faces), [[[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]])
    # vertices 0, 1 are shared: (1/2 * (0, 0, 1) + 1 * (-1, 0, 0)), normalised
    verts = verts.clone().requires_grad_(True)
    normals = vertex_normals(verts, faces)
    expected_shared = torch.tensor([-2.0, 0.0, 1.0]) / math.sqrt(5.0)
    assert_close(normals[0, 0], expected_shared)
    assert_close(normals[0, 1], expected_shared)
    assert_close(normals[0, 2], [0.0, 0.0, 1.0])
    assert_close(normals[0, 4], [-1.0, 0.0, 0.0])
    assert_close(normals[0, 3], [0.0, 0.0, 0.0])  # unused vertex: zero, not NaN
    (normals * torch.randn_like(normals)).sum().backward()
    assert torch.isfinite(verts.grad).all()


def test_vertex_normals_of_sphere_are_radial():
    verts, faces = icosphere(distance=0.0, subdivisions=2, dtype=torch.float32)
    normals = vertex_normals(verts, faces)
    radial = verts - verts.mean(1, keepdim=True)
    cos = (normals * radial).sum(-1) / radial.norm(dim=-1)
    assert cos.min() > 0.995
    assert_close(normals.norm(dim=-1), torch.ones(1, verts.shape[1]))


# --------------------------------------------------------------------------- shading


@pytest.mark.parametrize("batched_background", [False, True])
def test_constant_vertex_colour_with_ambient_only_light(device, dtype, batched_background):
    verts, faces, _ = quad((0.1, 0.0, 4.0), (1, 0, 0), (0, 1, 0), 1.0, dtype)
    verts, faces = verts.repeat(2, 1, 1).to(device), faces.to(device)
    K = pinhole(20.0, 8.0, 7.0, dtype).to(device)
    frags = rasterize(verts, faces, K, (15, 17))
    colour = torch.tensor([0.2, 0.5, 0.9], dtype=dtype, device=device)
    if batched_background:
        background = torch.rand(2, 3, 15, 17, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    else:
        background = (0.1, 0.0, 1.0)
    image = shade(frags, faces, verts, vertex_colors=colour.expand(4, 3), light=AMBIENT_ONLY, background=background)
    assert image.shape == (2, 3, 15, 17) and image.dtype == dtype and image.device == verts.device
    mask = frags.mask
    assert 0 < mask.sum() < mask.numel()
    inside = image.permute(0, 2, 3, 1)[mask]
    assert_close(inside, colour.expand_as(inside))  # up to rounding of sum(bary) * colour
    if not batched_background:
        background = torch.tensor(background, dtype=dtype, device=device)[None, :, None, None]
    outside = (~mask)[:, None].expand_as(image)
    assert torch.equal(image[outside], background.expand_as(image)[outside])


def test_lambert_front_tilted_and_unlit_planes():
    K = pinhole(20.0, 8.0, 8.0)
    light = DirectionalLight(direction=(0.0, 0.0, 1.0), ambient=0.2, diffuse=0.7, color=(1.0, 0.5, 0.25))
    albedo = torch.tensor([0.9, 0.8, 1.0], dtype=torch.float64)
    colours = albedo.expand(4, 3)
    # facing the camera: the light travels along +z, onto the front face
    verts, faces, _ = quad((0.0, 0.0, 4.0), (1, 0, 0), (0, 1, 0), 1.0)
    img = shade(rasterize(verts, faces, K, (17, 17)), faces, verts, vertex_colors=colours, light=light)
    assert_close(img[0, :, 8, 8], albedo * 0.9 * torch.tensor(light.color, dtype=torch.float64))
    # tilted about the camera's x axis by alpha: ambient + diffuse * cos(alpha)
    for alpha in (0.3, 1.0):
        axis_v = (0.0, math.cos(alpha), math.sin(alpha))
        verts, faces, _ = quad((0.0, 0.0, 4.0), (1, 0, 0), axis_v, 1.0)
        frags = rasterize(verts, faces, K, (17, 17))
        img = shade(frags, faces, verts, vertex_colors=torch.ones(4, 3, dtype=torch.float64), light=light)
        expected = (0.2 + 0.7 * math.cos(alpha)) * torch.tensor(light.color, dtype=torch.float64)
        inside = img.permute(0, 2, 3, 1)[frags.mask]
        assert_close(inside, expected.expand_as(inside))
    # lit from behind the surface (light travels towards the camera): ambient only
    behind = DirectionalLight(direction=(0.0, 0.3, -1.0), ambient=0.2, diffuse=0.7)
    verts, faces, _ = quad((0.0, 0.0, 4.0), (1, 0, 0), (0, 1, 0), 1.0)
    img = shade(rasterize(verts, faces, K, (17, 17)), faces, verts, vertex_colors=colours, light=behind)
    assert_close(img[0, :, 8, 8], albedo * 0.2)


def test_shading_is_two_sided():
    K = pinhole(20.0, 8.0, 8.0)
    light = DirectionalLight(direction=(0.2, -0.3, 1.0), ambient=0.3, diffuse=0.7)
    verts, faces, _ = quad((0.0, 0.0, 4.0), (1, 0, 0), (0.0, math.cos(0.5), math.sin(0.5)), 1.0)
    front = render_rgb(verts, faces, K, (17, 17), light=light)
    back = render_rgb(verts, faces.flip(1), K, (17, 17), light=light)  # wound the other way
    assert torch.equal(front["mask"], back["mask"])
    assert_close(back["image"], front["image"])
    assert_close(back["normals"], front["normals"])
    mask = front["mask"][0]
    assert (front["normals"][0, 2][mask] < 0).all()  # shading normals face the camera
    assert (front["image"][0][:, mask] > 0.3 * DEFAULT_ALBEDO + 1e-3).all()  # diffuse light reaches it


def test_render_rgb_outputs_and_gradients(device):
    verts, faces = icosphere(distance=3.0, subdivisions=1, dtype=torch.float32)
    verts, faces = verts.to(device).requires_grad_(True), faces.to(device)
    K = pinhole(12.0, 7.5, 6.5, torch.float32).to(device)
    out = render_rgb(verts, faces, K, (14, 16), background=(0.0, 0.0, 1.0))
    frags = rasterize(verts, faces, K, (14, 16))
    assert out["image"].shape == (1, 3, 14, 16) and out["normals"].shape == (1, 3, 14, 16)
    assert out["mask"].dtype == torch.bool and torch.equal(out["mask"], frags.mask)
    mask = out["mask"]
    assert_close(out["depth"][mask], frags.zbuf[..., 0][mask])
    assert (out["depth"][~mask] == 0).all() and (out["normals"].permute(0, 2, 3, 1)[~mask] == 0).all()
    assert_close(out["normals"].norm(dim=1)[mask], torch.ones(int(mask.sum()), device=device))
    assert (out["image"] >= 0).all() and (out["image"] <= 1).all()
    assert (out["image"][0, 2][~mask[0]] == 1).all()
    out["image"].mul(torch.randn_like(out["image"])).sum().backward()
    assert torch.isfinite(verts.grad).all() and verts.grad.abs().sum() > 0


# --------------------------------------------------------------------------- textures


def test_texture_checker_respects_v_up():
    red, green, blue, white = torch.eye(3, dtype=torch.float64).unbind(0) + (torch.ones(3, dtype=torch.float64),)
    texture = torch.zeros(8, 8, 3, dtype=torch.float64)
    texture[:4, :4], texture[:4, 4:], texture[4:, :4], texture[4:, 4:] = red, green, blue, white
    verts, faces, st = quad((0.0, 0.0, 4.0), (1, 0, 0), (0, 1, 0), 1.0)
    uvs = torch.stack([(st[:, 0] + 1) / 2, (1 - st[:, 1]) / 2], dim=1)  # top-left vertex: (0, 1)
    K = pinhole(36.0, 9.5, 9.5)
    frags = rasterize(verts, faces, K, (20, 20))
    image = shade(frags, faces, verts, uvs=uvs, texture=texture, light=AMBIENT_ONLY)
    top, bottom, left, right = slice(2, 7), slice(13, 18), slice(2, 7), slice(13, 18)
    blocks = [(top, left, red), (top, right, green), (bottom, left, blue), (bottom, right, white)]
    for rows, cols, colour in blocks:
        patch = image[0, :, rows, cols]
        assert_close(patch, colour[:, None, None].expand_as(patch), msg=f"rows {rows}, cols {cols}")
    # the same through a (1, 3, Ht, Wt) texture
    image_chw = shade(frags, faces, verts, uvs=uvs, texture=texture.permute(2, 0, 1)[None], light=AMBIENT_ONLY)
    assert_close(image_chw, image)


def test_texture_lookup_is_perspective_correct():
    # A quad slanted 60 degrees about the vertical axis: depth varies across it.
    theta, half, center = math.radians(60.0), 1.5, torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64)
    axis_u = (math.cos(theta), 0.0, math.sin(theta))
    verts, faces, st = quad(tuple(center.tolist()), axis_u, (0, 1, 0), half)
    uvs = torch.stack([(st[:, 0] + 1) / 2, (1 - st[:, 1]) / 2], dim=1)
    # texture whose red channel is u and green channel is v at every texel centre
    n = 16
    ramp = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    zeros = torch.zeros(n, n, dtype=torch.float64)
    texture = torch.stack([ramp.expand(n, n), (1 - ramp)[:, None].expand(n, n), zeros], dim=-1)
    f, c, size = 20.0, 10.0, 21
    K = pinhole(f, c, c)
    frags = rasterize(verts, faces, K, (size, size))
    image = shade(frags, faces, verts, uvs=uvs, texture=texture, texture_wrap="clamp", light=AMBIENT_ONLY)
    # analytic: intersect each pixel's ray with the plane, read (s, t) off the quad's axes
    a, b = torch.tensor(axis_u, dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    normal = torch.linalg.cross(a, b, dim=0)
    ii, jj = torch.meshgrid(*(torch.arange(size, dtype=torch.float64),) * 2, indexing="ij")
    rays = torch.stack([(jj - c) / f, (ii - c) / f, torch.ones_like(jj)], dim=-1)
    hit = rays * ((center @ normal) / (rays @ normal))[..., None]
    u = ((hit - center) @ a / half + 1) / 2
    v = (1 - (hit - center) @ b / half) / 2
    check = frags.mask[0] & (u > 0.05) & (u < 0.95) & (v > 0.05) & (v < 0.95)
    assert check.sum() > 40
    assert_close(image[0, 0][check], u[check])
    assert_close(image[0, 1][check], v[check])
    # the texture's midpoint lands on the projection of the quad's 3D centre (pixel (10, 10)) ...
    assert_close(image[0, :2, 10, 10], [0.5, 0.5])
    # ... not at the 2D midpoint of the projected corners (what affine interpolation would give)
    proj_u = f * verts[0, :, 0] / verts[0, :, 2] + c
    mid_2d = float(proj_u.min() + proj_u.max()) / 2
    assert abs(mid_2d - 10.0) > 1.0
    u_affine = (10.0 - float(proj_u.min())) / float(proj_u.max() - proj_u.min())
    assert abs(u_affine - 0.5) > 0.05


def test_sample_texture_wrap_modes_and_batches():
    g = torch.Generator().manual_seed(0)
    texture = torch.rand(4, 5, 3, generator=g, dtype=torch.float64)
    centres = torch.tensor([[0.1, 0.875], [0.5, 0.375]], dtype=torch.float64)  # texel (0, 0), (2, 2)
    expected = torch.stack([texture[0, 0], texture[2, 2]])
    for wrap in ("repeat", "clamp"):
        assert_close(sample_texture(centres, texture, wrap=wrap), expected)
    # repeat tiles the plane and blends across opposite edges; clamp extends the border
    shifted = centres + torch.tensor([2.0, -1.0], dtype=torch.float64)
    assert_close(sample_texture(shifted, texture), expected)
    left_edge = torch.tensor([0.0, 0.875], dtype=torch.float64)
    assert_close(sample_texture(left_edge, texture), (texture[0, 0] + texture[0, 4]) / 2)
    assert_close(sample_texture(left_edge, texture, wrap="clamp"), texture[0, 0])
    assert_close(sample_texture(torch.tensor([-3.0, 7.0], dtype=torch.float64), texture, wrap="clamp"), texture[0, 0])
    # batched texture: row b of uv samples texture b
    batch = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)
    uv = torch.rand(2, 6, 7, 2, generator=g, dtype=torch.float64)
    out = sample_texture(uv, batch)
    assert out.shape == (2, 6, 7, 3)
    for b in range(2):
        assert_close(out[b], sample_texture(uv[b], batch[b].permute(1, 2, 0)))


def test_sample_texture_gradcheck():
    g = torch.Generator().manual_seed(1)
    texture = torch.rand(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    uv = (torch.rand(5, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3).requires_grad_(True)
    for wrap in ("repeat", "clamp"):
        assert torch.autograd.gradcheck(lambda x, t: sample_texture(x, t, wrap=wrap), (uv, texture))


# --------------------------------------------------------------------------- soft silhouette


def test_soft_silhouette_matches_reference_values_and_gradients(device):
    verts, faces, K = random_triangles(seed=3)
    verts[1, 4, 2] = -0.5  # one face crosses the camera plane: skipped by both
    verts, faces, K = verts.to(device).requires_grad_(True), faces.to(device), K.to(device)
    weights = torch.randn(2, 11, 13, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(device)
    for sigma in (0.7, 2.0):
        ref = soft_silhouette_reference(verts, faces, K, (11, 13), sigma=sigma)
        (g_ref,) = torch.autograd.grad((ref * weights).sum(), verts)
        for max_candidates in (1 << 20, 50):  # one chunk; many (checkpointed) chunks
            fast = soft_silhouette(verts, faces, K, (11, 13), sigma=sigma, eps=1e-15, max_candidates=max_candidates)
            (g_fast,) = torch.autograd.grad((fast * weights).sum(), verts)
            assert_close(fast, ref, atol=1e-12, rtol=1e-10)
            assert_close(g_fast, g_ref, atol=1e-10, rtol=1e-8)
    assert 0.05 < float(ref.detach().mean()) < 0.95


def test_soft_silhouette_default_eps_neglects_only_tiny_contributions():
    verts, faces, K = random_triangles(seed=5, dtype=torch.float32)
    size = (11, 13)
    fast = soft_silhouette(verts, faces, K, size, sigma=0.5)  # boxes much smaller than the image
    ref = soft_silhouette_reference(verts.double(), faces, K.double(), size, sigma=0.5)
    assert fast.dtype == torch.float32
    # each neglected face changes 1 - value by a relative 1e-4 at most
    assert_close(fast, ref, atol=5 * 1e-4, rtol=0.0)


def test_soft_silhouette_tends_to_the_hard_mask():
    verts, faces = icosphere(distance=3.0, subdivisions=0)
    K = pinhole(36.0, 13.5, 13.0)
    size = (27, 28)
    sil = soft_silhouette(verts, faces, K, size, sigma=0.05)
    mask = rasterize(verts, faces, K, size).mask
    # distance from every pixel centre to every projected edge
    uv = (verts[0] / verts[0, :, 2:]) @ K.T
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    p0, p1 = uv[edges[:, 0], :2], uv[edges[:, 1], :2]
    ii, jj = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in size), indexing="ij")
    q = torch.stack([jj, ii], dim=-1).reshape(-1, 1, 2)
    seg = p1 - p0
    s = (((q - p0) * seg).sum(-1) / (seg * seg).sum(-1)).clamp(0, 1)
    dist = (q - (p0 + s[..., None] * seg)).norm(dim=-1).amin(1).view(size)
    far = dist > 1.0
    assert (far & mask[0]).sum() > 20 and (far & ~mask[0]).sum() > 100
    assert_close(sil[0][far], mask[0][far].double(), atol=1e-6, rtol=0.0)


def test_silhouette_iou_gradient_moves_the_mesh_towards_the_target():
    verts, faces, _ = quad((0.0, 0.0, 5.0), (1, 0, 0), (0, 1, 0), 1.0)
    K = pinhole(20.0, 11.5, 11.5)
    size = (24, 24)
    shift = torch.tensor([0.5, -0.25, 0.0], dtype=torch.float64)  # 2 px right, 1 px up
    target = rasterize(verts + shift, faces, K, size).mask.double()

    def loss(offset):
        sil = soft_silhouette(verts + offset, faces, K, size, sigma=1.0)
        inter = (sil * target).sum()
        return 1 - inter / (sil.sum() + target.sum() - inter)

    offset = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    value = loss(offset)
    (grad,) = torch.autograd.grad(value, offset)
    assert grad[0] < -1e-3 and grad[1] > 1e-3  # descending moves it right and up
    with torch.no_grad():
        stepped = loss(-0.05 * grad / grad[:2].norm())
    assert stepped < value - 1e-3


def test_soft_silhouette_gradcheck():
    g = torch.Generator().manual_seed(7)
    verts = torch.randn(1, 4, 3, generator=g, dtype=torch.float64) * 0.5
    verts[..., 2] += 3.0
    faces = torch.tensor([[0, 1, 2], [0, 3, 1]])
    K = pinhole(6.0, 2.5, 2.0)
    verts.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: soft_silhouette(v, faces, K, (5, 6), sigma=0.8, eps=1e-12), (verts,)
    )


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_with_expected_vs_got():
    verts, faces, _ = quad((0.0, 0.0, 4.0), (1, 0, 0), (0, 1, 0), 1.0)
    K = pinhole(20.0, 8.0, 8.0)
    frags = rasterize(verts, faces, K, (17, 17))
    with pytest.raises(ValueError, match=r"verts: expected shape \(B, V, 3\), got \(4, 3\)"):
        vertex_normals(verts[0], faces)
    with pytest.raises(TypeError, match="faces: expected dtype torch.int64, got torch.int32"):
        face_normals(verts, faces.int())
    with pytest.raises(ValueError, match=r"vertex_colors: expected shape \(4, 3\).*got \(5, 3\)"):
        shade(frags, faces, verts, vertex_colors=torch.ones(5, 3))
    with pytest.raises(ValueError, match="expected uvs and texture together"):
        shade(frags, faces, verts, uvs=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="either vertex_colors or uvs"):
        shade(frags, faces, verts, vertex_colors=torch.ones(4, 3), uvs=torch.zeros(4, 2), texture=torch.ones(2, 2, 3))
    with pytest.raises(ValueError, match=r"verts_cam: expected a batch of 1 to match the fragments, got 2"):
        shade(frags, faces, verts.repeat(2, 1, 1))
    with pytest.raises(ValueError, match=r"background: expected shape \(3,\) or \(1, 3, 17, 17\), got \(3, 17, 17\)"):
        shade(frags, faces, verts, background=torch.zeros(3, 17, 17))
    with pytest.raises(ValueError, match=r"texture: expected shape \(Ht, Wt, 3\) or \(B, 3, Ht, Wt\), got \(4, 4, 4\)"):
        sample_texture(torch.zeros(5, 2), torch.ones(4, 4, 4))
    with pytest.raises(TypeError, match="texture: expected dtype float32 or float64, got torch.uint8"):
        sample_texture(torch.zeros(5, 2), torch.ones(4, 4, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"uv: expected shape \(\.\.\., 2\), got \(5, 3\)"):
        sample_texture(torch.zeros(5, 3), torch.ones(4, 4, 3))
    with pytest.raises(ValueError, match=r"uv: expected shape \(2, \.\.\., 2\).*got \(3, 5, 2\)"):
        sample_texture(torch.zeros(3, 5, 2), torch.ones(2, 3, 4, 4))
    with pytest.raises(ValueError, match="wrap: expected one of"):
        sample_texture(torch.zeros(5, 2), torch.ones(4, 4, 3), wrap="mirror")
    for sigma in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=f"sigma: expected a finite value > 0 \\(pixels\\), got {sigma}"):
            soft_silhouette(verts, faces, K, (17, 17), sigma=sigma)
    with pytest.raises(ValueError, match=r"K: expected shape \(3, 3\), got \(2, 3\)"):
        soft_silhouette(verts, faces, K[:2], (17, 17))
    with pytest.raises(ValueError, match=r"eps: expected a value in \(0, 1\), got 1.5"):
        soft_silhouette(verts, faces, K, (17, 17), eps=1.5)
    with pytest.raises(ValueError, match="verts_cam: expected finite values"):
        soft_silhouette(verts * float("nan"), faces, K, (17, 17))
    with pytest.raises(ValueError, match="DirectionalLight.direction: expected a nonzero vector"):
        DirectionalLight(direction=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"DirectionalLight.ambient: expected a finite number >= 0, got -0.5"):
        DirectionalLight(ambient=-0.5)
    with pytest.raises(ValueError, match=r"DirectionalLight.color: expected 3 finite numbers"):
        DirectionalLight(color=(1.0, 1.0))


# --------------------------------------------------------------------------- shadows


def _sphere():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    return torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces, dtype=torch.int64)


def test_a_sphere_shadows_its_far_side_and_the_ground_beneath_it():
    from render.shading import ShadowMap, directional_shadow

    verts, faces = _sphere()
    down = (0.0, -1.0, 0.0)  # light from above
    smap = ShadowMap.of(verts, faces, down)
    points = torch.tensor([
        [0.0, 1.0, 0.0],  # the top: faces the light
        [0.0, -1.0, 0.0],  # the bottom: behind the sphere
        [0.0, -3.0, 0.0],  # the ground beneath
        [0.3, -2.0, -0.2],  # under the sphere, off-centre
        [2.0, -3.0, 0.0],  # the ground beside it
        [0.0, 3.0, 0.0],  # above, between the sphere and the light
    ])
    lit = smap.lit(points, bias=2 * smap.texel)
    assert lit.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    # a light travelling along +x: the -x side is lit, the +x side and what lies beyond it are not
    side = directional_shadow(verts, faces, (1.0, 0.0, 0.0),
                              torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.1, 0.0]]), bias=0.05)
    assert side.tolist() == [1.0, 0.0, 0.0]
    assert smap.texel == pytest.approx(2 * 1.02 * float(verts.norm(dim=-1).max()) / 128, rel=1e-5)


def test_shadow_edges_are_soft_over_about_one_texel():
    from render.shading import ShadowMap

    # a plate y = 0, x in [-1, 1]; points below it across its edge at x = 1
    verts = torch.tensor([[-1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]])
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])
    smap = ShadowMap.of(verts, faces, (0.0, -1.0, 0.0), resolution=32)
    xs = torch.linspace(0.5, 1.5, 201)
    lit = smap.lit(torch.stack([xs, torch.full_like(xs, -1.0), torch.zeros_like(xs)], -1))
    assert float(lit[0]) == 0.0 and float(lit[-1]) == 1.0
    assert bool((lit[1:] >= lit[:-1] - 1e-6).all())  # monotone across the edge
    ramp = xs[(lit > 0.05) & (lit < 0.95)]
    assert 0 < float(ramp.max() - ramp.min()) <= 2.5 * smap.texel
    assert abs(float(xs[(lit - 0.5).abs().argmin()]) - 1.0) <= 1.5 * smap.texel


def test_shadow_map_rejects_bad_input():
    from render.shading import ShadowMap

    verts, faces = _sphere()
    with pytest.raises(ValueError, match="direction"):
        ShadowMap.of(verts, faces, (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="resolution"):
        ShadowMap.of(verts, faces, (0.0, 1.0, 0.0), resolution=4)
    with pytest.raises(ValueError, match="points"):
        ShadowMap.of(verts, faces, (0.0, 1.0, 0.0)).lit(torch.zeros(5, 2))
