"""Tests of datasets.randomize: draws are replayable, applies are deterministic, occluders
hit their hidden-fraction ranges as measured from the masks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import randomize as rz
from datasets.shapes import make_shape
from render import DirectionalLight, angles_to_pose, default_intrinsics, rasterize
from tests.helpers import assert_close

SIZE = (48, 48)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def disc_mask(h=48, w=48, cx=24.0, cy=24.0, r=14.0) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return (u - cx) ** 2 + (v - cy) ** 2 <= r * r


# ------------------------------------------------------------------------- backgrounds


@pytest.mark.parametrize("kind", rz.BACKGROUND_KINDS)
def test_procedural_background_is_deterministic_and_textured(kind):
    params = rz.sample_background(gen(1), SIZE, kinds=(kind,))
    assert params == rz.sample_background(gen(1), SIZE, kinds=(kind,))
    image = rz.apply_background(params, SIZE)
    assert image.shape == (3, *SIZE) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert torch.equal(image, rz.apply_background(params, SIZE))
    # not a plain colour: some spatial variation in at least a few draws
    stds = [float(rz.apply_background(rz.sample_background(gen(s), SIZE, kinds=(kind,)), SIZE).std()) for s in range(4)]
    assert max(stds) > 0.03


def test_background_upsamples_beyond_the_canvas():
    params = rz.sample_background(gen(0), (16, 16), kinds=("noise",))
    image = rz.apply_background(params, (200, 300))
    assert image.shape == (3, 200, 300)


def test_photo_background_crops_user_photos(tmp_path):
    red = np.zeros((40, 60, 3), np.uint8)
    red[..., 0] = 200
    Image.fromarray(red).save(tmp_path / "b.png")
    Image.fromarray(np.full((30, 30, 3), 17, np.uint8)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("not a photo")
    photos = rz.list_photos(tmp_path)
    assert [p.split("/")[-1] for p in photos] == ["a.jpg", "b.png"]
    params = rz.sample_background(gen(3), SIZE, photos=photos[1:], photo_probability=1.0)
    assert params.kind == "photo" and params.photo == photos[1]
    image = rz.apply_background(params, SIZE)
    assert_close(image[0], torch.full(SIZE, 200 / 255), atol=1e-5, rtol=0)
    assert float(image[1:].abs().max()) < 1e-6


def test_list_photos_errors(tmp_path):
    with pytest.raises(ValueError, match="background folder not found"):
        rz.list_photos(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        rz.list_photos(tmp_path)


def test_unreadable_photo_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png: cannot read image"):
        rz.sample_background(gen(0), SIZE, photos=(str(bad),), photo_probability=1.0)


def test_background_params_are_checked():
    with pytest.raises(ValueError, match="kind"):
        rz.BackgroundParams(kind="plasma")
    with pytest.raises(ValueError, match="photo"):
        rz.BackgroundParams(kind="photo")


# ------------------------------------------------------------------------- appearance and light


def _render(shape, size=SIZE):
    R, t = angles_to_pose(0.6, 0.3, 0.0, 3.0)
    verts_cam = (shape.mesh.verts @ R.T.float() + t.float())[None]
    K = default_intrinsics(size)
    return verts_cam, rasterize(verts_cam, shape.mesh.faces, K, size)


def test_part_colours_follow_part_ids():
    shape = make_shape("chair", 1)
    _, frags = _render(shape)
    params = rz.sample_appearance(gen(0), shape.num_parts)
    params = dataclasses.replace(params, use_mesh_colors=False, pattern="none")
    albedo = rz.apply_appearance(params, frags, shape.mesh.faces, shape.mesh.verts, shape.part_ids)[0]
    p2f = frags.pix_to_face[0, ..., 0]
    covered = p2f >= 0
    part = shape.part_ids[p2f[covered]]
    expected = torch.tensor(params.part_colors)[part]
    assert_close(albedo[covered], expected)
    assert float(albedo[~covered].abs().max()) == 0.0


def test_solid_pattern_changes_only_patterned_parts():
    shape = make_shape("table", 0)
    _, frags = _render(shape)
    base = rz.AppearanceParams(part_colors=((0.2, 0.4, 0.6), (0.9, 0.1, 0.1)), pattern_parts=(True, False))
    striped = dataclasses.replace(base, pattern="stripes", pattern_color=(1.0, 1.0, 1.0), pattern_strength=1.0, pattern_scale=0.2)
    a0 = rz.apply_appearance(base, frags, shape.mesh.faces, shape.mesh.verts, shape.part_ids)[0]
    a1 = rz.apply_appearance(striped, frags, shape.mesh.faces, shape.mesh.verts, shape.part_ids)[0]
    p2f = frags.pix_to_face[0, ..., 0]
    part = torch.where(p2f >= 0, shape.part_ids[p2f.clamp_min(0)], torch.full_like(p2f, -1))
    changed = (a0 != a1).any(-1)
    assert not bool(changed[part == 1].any())
    assert bool(changed[part == 0].any())


def test_lighting_is_lambertian_with_ambient():
    # one square facing the camera: normal (0, 0, -1) in camera coordinates
    verts = torch.tensor([[[-1.0, -1.0, 4.0], [1.0, -1.0, 4.0], [1.0, 1.0, 4.0], [-1.0, 1.0, 4.0]]])
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])
    K = default_intrinsics(SIZE)
    frags = rasterize(verts, faces, K, SIZE)
    light = DirectionalLight(direction=(0.0, 0.6, 0.8), ambient=0.3, diffuse=0.5, color=(1.0, 0.5, 1.0))
    albedo = torch.full((1, *SIZE, 3), 0.8) * frags.mask[..., None]
    rgb = rz.apply_lighting(light, frags, faces, verts, albedo)[0]
    term = 0.3 + 0.5 * 0.8  # n . -d = 0.8
    covered = frags.mask[0]
    assert_close(rgb[:, covered], (torch.tensor([0.8, 0.4, 0.8]) * term)[:, None].expand(3, int(covered.sum())))
    assert float(rgb[:, ~covered].abs().max()) == 0.0


def _plate_scene(size=SIZE):
    """A square facing the camera (normal (0, 0, -1), camera frame) and a small square
    half a unit in front of it, at its centre."""
    back = [[-1.0, -1.0, 4.0], [1.0, -1.0, 4.0], [1.0, 1.0, 4.0], [-1.0, 1.0, 4.0]]
    front = [[-0.3, -0.3, 3.5], [0.3, -0.3, 3.5], [0.3, 0.3, 3.5], [-0.3, 0.3, 3.5]]
    verts = torch.tensor([back + front])
    faces = torch.tensor([[0, 2, 1], [0, 3, 2], [4, 6, 5], [4, 7, 6]])
    K = default_intrinsics(size)
    return verts, faces, K, rasterize(verts, faces, K, size)


def test_plain_shading_is_lambert_and_effects_do_what_they_say():
    verts, faces, K, frags = _plate_scene()
    light = DirectionalLight(direction=(0.0, 0.6, 0.8), ambient=0.3, diffuse=0.5, color=(1.0, 0.5, 1.0))
    albedo = torch.full((1, *SIZE, 3), 0.6) * frags.mask[..., None]
    plain = rz.apply_shading(light, rz.ShadingParams(), frags, faces, verts, albedo)[0]
    # flat faces: per-pixel normals are the vertex normals, so it is apply_lighting
    assert_close(plain, rz.apply_lighting(light, frags, faces, verts, albedo)[0], atol=1e-5, rtol=1e-5)
    covered = frags.mask[0]
    # highlights only add light, in the light's colour
    shiny = rz.apply_shading(light, rz.ShadingParams(specular=0.5, shininess=4.0), frags, faces, verts, albedo)[0]
    assert bool((shiny >= plain - 1e-6).all()) and float((shiny - plain)[0, covered].max()) > 0.05
    assert_close((shiny - plain)[1], (shiny - plain)[0] * 0.5, atol=1e-5, rtol=1e-4)
    # gamma < 1 lifts the light term (< 1 here)
    lifted = rz.apply_shading(light, rz.ShadingParams(gamma=0.5), frags, faces, verts, albedo)[0]
    assert bool((lifted[:, covered] > plain[:, covered]).all())
    # light into the scene from the left: the small square shadows the big one behind it
    oblique = DirectionalLight(direction=(0.8, 0.0, 1.0), ambient=0.2, diffuse=0.8)
    lit = rz.apply_shading(oblique, rz.ShadingParams(), frags, faces, verts, albedo)[0]
    shadowed = rz.apply_shading(oblique, rz.ShadingParams(self_shadow=True), frags, faces, verts, albedo)[0]
    darker = (shadowed < lit - 0.1).any(0)
    assert bool(darker.any())
    # ... only on the big square (the small one is in front of everything) ...
    front_face = frags.pix_to_face[0, ..., 0] >= 2
    assert not bool((darker & front_face).any())
    assert_close(shadowed[:, front_face], lit[:, front_face])
    # ... and to the right of the small square, at its height (the shadow moves 0.4 units
    # along +x on the big square, 0.1 of it hidden behind the small one)
    rows, cols = darker.nonzero().T
    x0 = int(front_face.nonzero()[:, 1].max())
    assert int(cols.min()) >= x0 and float(rows.float().mean()) == pytest.approx(23.5, abs=1.5)
    assert float(plain[:, ~covered].abs().max()) == 0.0 and float(shadowed[:, ~covered].abs().max()) == 0.0


def test_floor_shadow_darkens_the_ground_below_the_object_only():
    shape = make_shape("chair", 1)
    R, t = angles_to_pose(0.6, 0.5, 0.0, 3.0)  # seen from above
    R, t = R.float(), t.float()
    size = (64, 64)
    K = default_intrinsics(size)
    above = DirectionalLight(direction=(0.0, 1.0, 0.3))  # camera frame: travels down the image, mostly
    params = rz.ShadingParams(floor_shadow=0.6)
    factor = rz.floor_shadow(above, params, shape.mesh.verts, shape.mesh.faces, K, R, t, size)
    mask = rasterize((shape.mesh.verts @ R.T + t)[None], shape.mesh.faces, K, size).mask[0]
    shade = factor < 0.99
    assert bool(shade.any()) and float(factor.min()) == pytest.approx(0.4, abs=1e-4)
    assert float(factor.max()) == 1.0
    # the shadow is attached to the object's foot, below its centre in the image
    rows = shade.nonzero()[:, 0].float()
    assert float(rows.mean()) > float(mask.nonzero()[:, 0].float().mean())
    # no floor: all ones; camera under the floor: all ones
    assert bool((rz.floor_shadow(above, rz.ShadingParams(), shape.mesh.verts, shape.mesh.faces, K, R, t, size) == 1).all())
    R_low, t_low = angles_to_pose(0.6, -1.2, 0.0, 3.0)
    low = rz.floor_shadow(above, params, shape.mesh.verts, shape.mesh.faces, K, R_low.float(), t_low.float(), size)
    assert bool((low == 1).all())


def _room_reference(room, light, floor_y, K, R, t, size):
    """What apply_room should draw with one ray per pixel, traced here in the object frame
    in float64: (H, W, 3) colours and (H, W) coverage."""
    K, R, t = K.double().numpy(), R.double().numpy(), t.double().numpy()
    h, w = size
    v, u = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    dirs = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3).astype(float) @ np.linalg.inv(K).T @ R  # R^T d
    origin = -R.T @ t
    ahead = -np.array([origin[0], 0.0, origin[2]])
    ahead /= np.linalg.norm(ahead)
    c, s = np.cos(room.wall_yaw), np.sin(room.wall_yaw)
    back = np.array([c * ahead[0] + s * ahead[2], 0.0, -s * ahead[0] + c * ahead[2]])
    hits = []  # (distance along the ray, object-frame normal, material)
    if room.floor and origin[1] > floor_y:
        hits.append(((floor_y - origin[1]) / dirs[:, 1], np.array([0.0, 1.0, 0.0]), room.floor_material))
    if room.wall:
        hits.append(((room.wall_distance - origin @ back) / (dirs @ back), -back, room.wall_material))
    best = np.full(len(dirs), np.inf)
    owner = np.full(len(dirs), -1)
    for k, (dist, _, _) in enumerate(hits):
        ok = (dist > 0) & (dist < best)
        best[ok], owner[ok] = dist[ok], k
    rgb = np.zeros((len(dirs), 3))
    toward = -np.array(light.unit_direction())
    for k, (_, normal, material) in enumerate(hits):
        sel = owner == k
        points = origin + dirs[sel] * best[sel, None]
        albedo = np.array(material.part_colors[0]) + (
            rz._solid_pattern(material, torch.from_numpy(points)).numpy()[:, None] * material.pattern_strength
        ) * (np.array(material.pattern_color) - np.array(material.part_colors[0]))
        lambert = light.ambient + light.diffuse * max(0.0, float((R @ normal) @ toward))
        rgb[sel] = np.clip(albedo * lambert * np.array(light.color), 0, 1)
    return rgb.reshape(h, w, 3), (owner >= 0).reshape(h, w)


@pytest.mark.parametrize("elevation, yaw, floor, wall", [(0.5, 0.4, True, True), (0.3, -0.5, True, False),
                                                         (-0.6, 0.2, True, True), (0.2, 0.0, False, True)])
def test_room_planes_are_where_the_geometry_puts_them(elevation, yaw, floor, wall):
    size = (40, 48)
    K = default_intrinsics(size)
    R, t = angles_to_pose(0.7, elevation, 0.1, 4.0)
    R, t = R.float(), t.float()
    material = rz.AppearanceParams(part_colors=((0.8, 0.3, 0.2),), pattern="checkers", pattern_color=(0.1, 0.6, 0.9),
                                   pattern_scale=0.5, pattern_strength=1.0)
    room = rz.RoomParams(floor=floor, wall=wall, wall_distance=3.0, wall_yaw=yaw, floor_material=material,
                         wall_material=dataclasses.replace(material, pattern="stripes", pattern_scale=0.7))
    light = DirectionalLight(direction=(0.3, 0.8, 0.6), ambient=0.3, diffuse=0.6, color=(1.0, 0.9, 0.8))
    rgb, covered = rz.apply_room(room, light, -0.6, K, R, t, size, samples=1)
    want_rgb, want_covered = _room_reference(room, light, -0.6, K, R, t, size)
    assert rgb.shape == (3, *size) and covered.shape == size
    assert torch.equal(covered.bool(), torch.from_numpy(want_covered))
    # the same colours, but for a few pixels on a pattern's edge (float32 vs float64 hits)
    close = np.abs(rgb.permute(1, 2, 0).numpy() - want_rgb).max(-1) < 1e-4
    assert close.mean() > 0.97
    if elevation < 0:  # the camera under the floor: only the wall shows
        assert torch.equal(covered, rz.apply_room(dataclasses.replace(room, floor=False), light, -0.6, K, R, t, size,
                                                  samples=1)[1])
    if floor and not wall:  # a (slightly tilted) horizon: mostly sky above, floor below
        assert float(covered[0].mean()) < 0.5 and float(covered[-1].mean()) == 1.0
    if wall and not floor:  # a wall behind the object fills the view
        assert float(covered.mean()) == 1.0


def test_room_supersampling_blends_the_horizon_and_keeps_the_rest():
    size = (40, 40)
    K = default_intrinsics(size)
    R, t = angles_to_pose(0.0, 0.3, 0.0, 4.0)
    room = rz.RoomParams(wall=False)
    light = DirectionalLight()
    rgb1, cov1 = rz.apply_room(room, light, -0.6, K, R.float(), t.float(), size, samples=1)
    rgb4, cov4 = rz.apply_room(room, light, -0.6, K, R.float(), t.float(), size, samples=4)
    partial = (cov4 > 0) & (cov4 < 1)
    assert 0 < int(partial.sum()) <= 2 * size[1]  # one row of mixed pixels, the horizon's
    assert torch.allclose(cov4[~partial], cov1[~partial])
    full = cov4 == 1
    assert torch.allclose(rgb4[:, full], rgb1[:, full], atol=1e-5)  # a plain floor: one colour
    with pytest.raises(ValueError, match="samples"):
        rz.apply_room(room, light, -0.6, K, R.float(), t.float(), size, samples=0)


def test_sample_room_is_valid_replayable_and_varied():
    draws = [rz.sample_room(gen(s)) for s in range(60)]
    assert draws[4] == rz.sample_room(gen(4))
    assert all(2.0 <= d.wall_distance <= 8.0 and abs(d.wall_yaw) <= 0.6 for d in draws)
    assert 30 < sum(d.floor for d in draws) < 60 and 30 < sum(d.wall for d in draws) < 60
    patterns = {d.floor_material.pattern for d in draws} | {d.wall_material.pattern for d in draws}
    assert patterns == set(rz.PATTERNS)
    with pytest.raises(ValueError, match="RoomParams.wall_distance"):
        rz.RoomParams(wall_distance=0.0)


def test_sample_shading_is_valid_replayable_and_varied():
    draws = [rz.sample_shading(gen(s)) for s in range(40)]
    assert draws[3] == rz.sample_shading(gen(3))
    assert all(0 <= d.specular <= 0.5 and 5 <= d.shininess <= 60 and 0.45 <= d.gamma <= 1 for d in draws)
    assert 10 < sum(d.self_shadow for d in draws) < 40 and 5 < sum(d.floor_shadow > 0 for d in draws) < 40
    for kw, name in ((dict(specular=-0.1), "specular"), (dict(gamma=0.0), "gamma"),
                     (dict(floor_shadow=1.5), "floor_shadow"), (dict(shininess=0.5), "shininess")):
        with pytest.raises(ValueError, match=f"ShadingParams.{name}"):
            rz.ShadingParams(**kw)


def test_sample_light_is_valid_and_replayable():
    light = rz.sample_light(gen(5))
    assert isinstance(light, DirectionalLight) and light == rz.sample_light(gen(5))
    assert light.unit_direction()[2] > 0  # travels into the scene
    assert max(light.color) == pytest.approx(1.0)


def test_photometric_replay_and_range():
    params = rz.sample_photometric(gen(2))
    image = torch.rand(3, *SIZE, generator=gen(0))
    out = rz.apply_photometric(params, image)
    assert torch.equal(out, rz.apply_photometric(params, image))
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    identity = rz.PhotometricParams()
    assert_close(rz.apply_photometric(identity, image), image)


# ------------------------------------------------------------------------- occluders


@pytest.mark.parametrize("level", [1, 2, 3])
def test_occluders_hit_the_level_range(level):
    lo, hi = rz.OCCLUSION_LEVELS[level]
    for seed in range(3):
        mask = disc_mask(r=10.0 + 3 * seed)
        occs, frac = rz.sample_occluders(gen(seed), mask, (lo, hi), categories=("mug", "car"), shape_seeds=2)
        assert occs and lo <= frac <= hi
        measured = float((rz.occluder_mask(occs, SIZE) & mask).sum()) / float(mask.sum())
        assert measured == pytest.approx(frac)


def test_occluder_draws_replay_to_the_same_image():
    mask = disc_mask()
    occs, frac = rz.sample_occluders(gen(11), mask, (0.4, 0.6), categories=("bottle",), shape_seeds=1)
    again, frac2 = rz.sample_occluders(gen(11), mask, (0.4, 0.6), categories=("bottle",), shape_seeds=1)
    assert occs == again and frac == frac2
    image = torch.rand(3, *SIZE, generator=gen(0))
    out, occ_mask = rz.apply_occluders(occs, image)
    out2, occ_mask2 = rz.apply_occluders(again, image)
    assert torch.equal(out, out2) and torch.equal(occ_mask, occ_mask2)
    assert torch.equal(occ_mask, rz.occluder_mask(occs, SIZE))
    assert torch.equal(out[:, ~occ_mask], image[:, ~occ_mask])  # untouched outside the occluders
    assert not torch.equal(out[:, occ_mask], image[:, occ_mask])


def test_both_occluder_kinds_are_drawn():
    kinds = set()
    for seed in range(12):
        occ = rz.sample_occluder(gen(seed), (20.0, 20.0), 15.0, categories=("mug",), shape_seeds=1)
        kinds.add(type(occ).__name__)
    assert kinds == {"ShapeOccluder", "PatchOccluder"}


@pytest.mark.parametrize("outline", ["ellipse", "rectangle", "polygon"])
def test_patch_outline_is_inside_its_square(outline):
    texture = rz.BackgroundParams(kind="checkers", colors=((0, 0, 0), (1, 1, 1)), scale=0.2)
    occ = rz.PatchOccluder(outline=outline, texture=texture, aspect=0.5, radii=(1.0, 0.5, 0.8, 0.6),
                           center=(24.0, 24.0), size=20.0, rotation=0.0)
    mask = rz.occluder_mask([occ], SIZE)
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    assert int(rows.min()) >= 14 and int(rows.max()) <= 34 and int(cols.min()) >= 14 and int(cols.max()) <= 34
    assert int(mask.sum()) > 40


def test_no_occlusion_places_nothing():
    assert rz.sample_occluders(gen(0), disc_mask(), (0.0, 0.0)) == ((), 0.0)


def test_sample_occluders_input_errors():
    with pytest.raises(ValueError, match="fraction_range"):
        rz.sample_occluders(gen(0), disc_mask(), (0.6, 0.2))
    with pytest.raises(ValueError, match="empty mask"):
        rz.sample_occluders(gen(0), torch.zeros(SIZE, dtype=torch.bool), (0.2, 0.4))
    with pytest.raises(ValueError, match="object_mask"):
        rz.sample_occluders(gen(0), disc_mask().float(), (0.2, 0.4))
    with pytest.raises(TypeError, match="torch.Generator"):
        rz.sample_light(0)
