"""Tests for the procedural shape library (datasets/shapes.py)."""

from __future__ import annotations

import functools
import math
import re
import warnings

import numpy as np
import pytest
import torch

from datasets.shapes import CATEGORIES, Shape, load_shape, make_shape, shape_contact_sheet, shape_from_mesh
from render import Mesh, MeshError, angles_to_pose, default_intrinsics, rasterize, save_mesh, validate_mesh

REQUIRED = ("car", "chair", "table", "sofa", "bed", "bench", "bottle", "mug", "airplane", "monitor", "bookshelf",
            "lamp")
SEEDS = (0, 1, 2)


@functools.cache
def shape(category: str, seed: int) -> Shape:
    return make_shape(category, seed)


def part(s: Shape, name: str) -> np.ndarray:
    """``(N, 3)`` float64 vertices of the named part."""
    faces = s.mesh.faces[s.part_ids == s.part_names.index(name)]
    return s.mesh.verts.double().numpy()[np.unique(faces.numpy())]


def signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return float(np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() / 6.0)


def axis_volumes(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``(3,)``: the flux of ``x e_x``, ``y e_y`` and ``z e_z`` through the surface. For a
    closed surface each equals its volume (divergence theorem), and a face wound the wrong
    way lowers the one of its normal's axis: the y sides of a box turned inward leave the
    total volume positive but make the y flux negative."""
    tri = verts[faces]
    doubled_area_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return (tri.mean(axis=1) * doubled_area_normals).sum(axis=0) / 2.0


all_shapes = pytest.mark.parametrize("category,seed", [(c, s) for c in CATEGORIES for s in SEEDS])


# ------------------------------------------------------------------------------ library


def test_categories_include_the_required_ones():
    assert set(REQUIRED) <= set(CATEGORIES)
    assert len(CATEGORIES) == len(set(CATEGORIES)) >= 12


@all_shapes
def test_every_category_builds_a_valid_coloured_mesh(category, seed):
    s = shape(category, seed)
    mesh = s.mesh
    assert s.category == category and s.mesh_id == f"{category}-{seed:05d}" and mesh.name == s.mesh_id
    assert mesh.verts.dtype == torch.float32 and mesh.faces.dtype == torch.int64
    assert 200 <= mesh.num_faces <= 5000
    assert torch.isfinite(mesh.verts).all()
    assert mesh.vertex_colors is not None and mesh.vertex_colors.shape == (mesh.num_verts, 3)
    assert 0 <= float(mesh.vertex_colors.min()) and float(mesh.vertex_colors.max()) <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a degenerate face would be dropped with a warning
        validate_mesh(mesh.verts, mesh.faces, name=s.mesh_id)


@all_shapes
def test_part_ids_cover_every_face_and_every_part(category, seed):
    s = shape(category, seed)
    assert s.part_ids.dtype == torch.int64 and s.part_ids.shape == (s.mesh.num_faces,)
    assert s.num_parts == len(s.part_names) == len(set(s.part_names)) >= 2
    assert torch.bincount(s.part_ids, minlength=s.num_parts).min() > 0
    assert int(s.part_ids.max()) == s.num_parts - 1


@all_shapes
def test_parts_share_no_vertex_and_every_vertex_is_used(category, seed):
    s = shape(category, seed)
    owner = torch.full((s.mesh.num_verts,), -1, dtype=torch.int64)
    owner[s.mesh.faces] = s.part_ids[:, None].expand(-1, 3)  # last writer wins
    assert (owner >= 0).all()
    assert (owner[s.mesh.faces] == s.part_ids[:, None]).all()  # so no vertex has two owners


@all_shapes
def test_parts_are_closed_and_oriented_outward(category, seed):
    s = shape(category, seed)
    verts, faces = s.mesh.verts.double().numpy(), s.mesh.faces.numpy()
    for p, name in enumerate(s.part_names):
        part_faces = faces[s.part_ids.numpy() == p]
        volume = signed_volume(verts, part_faces)
        assert volume > 0, f"{s.mesh_id}: part {name} is inside out"
        # every face outward, not only most of them: the flux along each axis is the volume
        np.testing.assert_allclose(axis_volumes(verts, part_faces), volume, rtol=1e-6,
                                   err_msg=f"{s.mesh_id}: part {name} has faces wound inward")
        # closed: the volume does not depend on the origin (it would for an open surface)
        shifted = signed_volume(verts + np.array([0.3, -0.2, 0.5]), part_faces)
        assert math.isclose(shifted, signed_volume(verts, part_faces), rel_tol=1e-4, abs_tol=1e-9)


@all_shapes
def test_canonical_frame_is_centred_with_unit_radius(category, seed):
    verts = shape(category, seed).mesh.verts.double()
    centre = (verts.amin(0) + verts.amax(0)) / 2
    assert centre.abs().max() < 1e-6
    assert abs(float(verts.norm(dim=1).max()) - 1.0) < 1e-5


def test_same_category_and_seed_give_identical_shapes():
    for category in CATEGORIES:
        a, b = make_shape(category, 1), shape(category, 1)
        assert a.mesh.verts.equal(b.mesh.verts) and a.mesh.faces.equal(b.mesh.faces)
        assert a.mesh.vertex_colors.equal(b.mesh.vertex_colors) and a.part_ids.equal(b.part_ids)
        assert a.part_names == b.part_names


def test_different_seeds_give_different_proportions():
    for category in CATEGORIES:
        extents = set()
        for seed in SEEDS:
            v = shape(category, seed).mesh.verts
            extents.add(tuple(np.round((v.amax(0) - v.amin(0)).numpy(), 4)))
        assert len(extents) == len(SEEDS), category


def test_shapes_are_pinned_across_processes():
    # the generator is seeded with crc32(category), not the per-process salted hash():
    # these values were computed in another process and must never change silently
    chair, car = make_shape("chair", 0), make_shape("car", 5)
    assert (chair.mesh.num_faces, chair.part_names) == (724, ("seat", "back", "legs"))
    assert float(chair.mesh.verts.double().abs().sum()) == pytest.approx(762.485, abs=1e-3)
    assert float(car.mesh.verts.double().abs().sum()) == pytest.approx(640.393, abs=1e-3)


# ------------------------------------------------------------------------------ frame


LOWEST = {  # the part that touches the ground (y = min y)
    "car": "wheels", "chair": "legs", "table": "legs", "sofa": "legs", "bed": "legs", "bench": "legs",
    "bottle": "body", "mug": "body", "monitor": "stand", "bookshelf": "frame", "lamp": "base",
    "bicycle": "wheels", "boat": "hull", "bus": "wheels", "motorbike": "wheels",
}
HIGHEST = {  # the part that reaches the top (y = max y)
    "car": "cabin", "chair": "back", "table": "top", "sofa": "back", "bed": "headboard", "bottle": "cap",
    "monitor": "frame", "bookshelf": "frame", "bus": "body",
}


@pytest.mark.parametrize("category", sorted(LOWEST))
def test_objects_stand_upright_on_their_base(category):
    for seed in SEEDS:
        s = shape(category, seed)
        y = s.mesh.verts[:, 1].double().numpy()
        assert part(s, LOWEST[category])[:, 1].min() == pytest.approx(y.min(), abs=1e-6), s.mesh_id
        if category in HIGHEST:
            assert part(s, HIGHEST[category])[:, 1].max() == pytest.approx(y.max(), abs=1e-6), s.mesh_id


@pytest.mark.parametrize("category,back,front", [
    ("chair", "back", "seat"), ("sofa", "back", "cushions"), ("bench", "back", "seat"), ("bed", "headboard", "mattress"),
    ("car", "taillights", "headlights"), ("bus", "taillights", "headlights"), ("bicycle", "saddle", "handlebar"),
    ("motorbike", "seat", "headlight"), ("monitor", "stand", "screen"),
])
def test_front_faces_plus_z(category, back, front):
    for seed in range(6):
        s = shape(category, seed)
        if back not in s.part_names or front not in s.part_names:
            continue
        assert part(s, back)[:, 2].mean() < part(s, front)[:, 2].mean(), s.mesh_id


def test_chair_back_is_behind_the_seat():
    for seed in range(6):
        s = shape("chair", seed)
        assert part(s, "back")[:, 2].min() < part(s, "seat")[:, 2].min() + 1e-6
        assert part(s, "back")[:, 1].max() > part(s, "seat")[:, 1].max()


def test_vehicles_point_their_nose_to_plus_z():
    for seed in range(6):
        for category in ("car", "bus"):
            s = shape(category, seed)
            assert part(s, "headlights")[:, 2].max() == pytest.approx(float(s.mesh.verts[:, 2].max()), abs=1e-6)
        plane = shape("airplane", seed)
        nose = part(plane, "fuselage")
        tip = nose[nose[:, 2].argmax()]
        assert tip[2] == pytest.approx(float(plane.mesh.verts[:, 2].max()), abs=1e-6)
        assert abs(tip[0]) < 1e-6
        assert part(plane, "tail")[:, 2].mean() < part(plane, "wings")[:, 2].mean()
        boat = shape("boat", seed)
        hull = part(boat, "hull")
        assert abs(hull[hull[:, 2].argmax(), 0]) < 1e-6  # a pointed bow at +z
        stern = hull[hull[:, 2] < hull[:, 2].min() + 1e-6]
        assert np.abs(stern[:, 0]).max() > 0.1  # a wide transom at -z


def test_mug_handle_points_to_plus_x():
    for seed in range(6):
        s = shape("mug", seed)
        handle = part(s, "handle")
        assert handle[:, 0].max() == pytest.approx(float(s.mesh.verts[:, 0].max()), abs=1e-6)
        assert handle[:, 0].mean() > part(s, "body")[:, 0].mean() + 0.3
        assert np.abs(handle[:, 2]).max() < 0.2


def test_table_long_side_is_along_x():
    for seed in range(6):
        v = shape("table", seed).mesh.verts
        extent = v.amax(0) - v.amin(0)
        assert extent[0] >= extent[2] - 1e-5


def _visible_parts(s: Shape, azimuth_deg: float, size: int = 32) -> set[str]:
    R, t = angles_to_pose(math.radians(azimuth_deg), math.radians(10.0), 0.0, 3.0)
    frags = rasterize((s.mesh.verts @ R.T + t)[None], s.mesh.faces, default_intrinsics((size, size)), (size, size))
    faces = frags.pix_to_face[0, ..., 0]
    return {s.part_names[int(p)] for p in s.part_ids[faces[faces >= 0]].unique()}


def test_screen_and_shelves_are_seen_from_the_front_only():
    for seed in SEEDS:
        monitor, shelf = shape("monitor", seed), shape("bookshelf", seed)
        assert "screen" in _visible_parts(monitor, 0.0) and "screen" not in _visible_parts(monitor, 180.0)
        assert "shelves" in _visible_parts(shelf, 0.0) and "shelves" not in _visible_parts(shelf, 180.0)


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_renders_a_silhouette(category):
    s = shape(category, 0)
    R, t = angles_to_pose(math.radians(30.0), math.radians(20.0), 0.0, 3.0)
    frags = rasterize((s.mesh.verts @ R.T + t)[None], s.mesh.faces, default_intrinsics((24, 24)), (24, 24))
    covered = (frags.pix_to_face[0, ..., 0] >= 0).float().mean()
    assert 0.03 < covered < 0.9
    assert not (frags.pix_to_face[0, [0, -1], :, 0] >= 0).any()  # the unit sphere fits the view


# ------------------------------------------------------------------------------ errors


def test_unknown_category_raises_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown shape category 'nope'.*car, chair, table"):
        make_shape("nope", 0)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed_raises(seed):
    with pytest.raises(ValueError, match="seed: expected an int >= 0"):
        make_shape("car", seed)


def test_shape_checks_part_ids():
    s = shape("mug", 0)
    with pytest.raises(ValueError, match=r"part_ids: expected shape \(\d+,\)"):
        Shape(s.mesh, s.part_ids[:-1], "mug", "m")
    with pytest.raises(TypeError, match="part_ids: expected an int64 tensor"):
        Shape(s.mesh, s.part_ids.int(), "mug", "m")
    with pytest.raises(ValueError, match=r"part_ids: expected values < 1"):
        Shape(s.mesh, s.part_ids, "mug", "m", part_names=("body",))


# ------------------------------------------------------------------------------ user meshes


def test_shape_from_mesh_centres_scales_and_keeps_colours():
    verts = torch.tensor([[0.0, 0, 0], [4, 0, 0], [0, 2, 0], [0, 0, 2]])
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    colors = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
    s = shape_from_mesh(Mesh(verts, faces, vertex_colors=colors, name="some/dir/tet.obj"), category="toy")
    assert (s.category, s.mesh_id, s.num_parts, s.part_names) == ("toy", "tet", 1, ("object",))
    assert s.part_ids.equal(torch.zeros(4, dtype=torch.int64))
    assert s.mesh.vertex_colors.equal(colors)
    v = s.mesh.verts
    assert ((v.amin(0) + v.amax(0)) / 2).abs().max() < 1e-6
    assert float(v.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-6)
    # no rotation: only a uniform scale and a shift
    assert torch.allclose((v[1] - v[0]) / (v[2] - v[0]).norm(), torch.tensor([2.0, 0, 0]), atol=1e-6)
    assert shape_from_mesh(Mesh(verts, faces), mesh_id="x").mesh_id == "x"


def test_shape_from_mesh_rejects_nan_vertices():
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [float("nan"), 1, 0]])
    with pytest.raises(MeshError, match="bad.obj: 1 of 3 vertices have NaN"):
        shape_from_mesh(Mesh(verts, torch.tensor([[0, 1, 2]]), name="bad.obj"))


def test_load_shape_reads_a_mesh_file(tmp_path):
    path = tmp_path / "my_mug.ply"
    save_mesh(shape("mug", 1).mesh, path)
    s = load_shape(path, category="mug")
    assert (s.category, s.mesh_id, s.num_parts) == ("mug", "my_mug", 1)
    assert s.mesh.num_faces == shape("mug", 1).mesh.num_faces
    assert s.mesh.vertex_colors is not None
    torch.testing.assert_close(s.mesh.verts, shape("mug", 1).mesh.verts, atol=1e-5, rtol=0)
    with pytest.raises(MeshError, match=re.escape(str(tmp_path / "missing.obj"))):
        load_shape(tmp_path / "missing.obj")


def test_contact_sheet_tiles_the_shapes():
    shapes = [shape("mug", 0), shape("chair", 0), shape("lamp", 0)]
    sheet = shape_contact_sheet(shapes, image_size=16)
    assert sheet.shape == (32, 32, 3) and sheet.dtype == np.uint8
    assert (sheet[16:, 16:] == 255).all()  # the empty fourth tile stays white
    assert (sheet[:16, :16] < 250).any()
