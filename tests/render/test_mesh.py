"""Tests for render/mesh.py: the Mesh structure, file I/O, validation and the surfaces."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from render.mesh import (
    Mesh,
    MeshError,
    center_and_scale,
    cuboid_surface,
    is_closed_outward,
    load_mesh,
    remesh_surface,
    save_mesh,
    validate_mesh,
)
from tests.helpers import assert_close

# ------------------------------------------------------------------------------ fixtures


def _to_mesh(tm: trimesh.Trimesh, name: str = "fixture") -> Mesh:
    return Mesh(
        torch.tensor(tm.vertices, dtype=torch.float32),
        torch.tensor(tm.faces, dtype=torch.int64),
        name=name,
    )


def _colored_sphere() -> trimesh.Trimesh:
    sphere = trimesh.creation.icosphere(subdivisions=1)
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(len(sphere.vertices), 4), dtype=np.uint8)
    rgba[:, 3] = 255
    sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=rgba)
    return sphere


def _texture_image() -> np.ndarray:
    """A (16, 8, 3) uint8 image whose top half is red and bottom half blue."""
    image = np.zeros((16, 8, 3), dtype=np.uint8)
    image[:8] = [255, 0, 0]
    image[8:] = [0, 0, 255]
    image[0, 0] = [1, 2, 3]  # a pixel that tells rows and columns apart
    return image


def _textured_box(material: str = "simple") -> trimesh.Trimesh:
    box = trimesh.creation.box()
    uv = np.random.default_rng(1).random((len(box.vertices), 2))
    image = Image.fromarray(_texture_image())
    if material == "simple":
        mat = trimesh.visual.material.SimpleMaterial(image=image)
    else:
        mat = trimesh.visual.material.PBRMaterial(baseColorTexture=image)
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=mat)
    return box


def _write_text(path, text: str):
    path.write_text(text)
    return path


def _export(tm: trimesh.Trimesh, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tm.export(path)
    return path



# ----------------------------------------------------------------------------- Mesh type


def test_mesh_properties_and_to_return_new_mesh():
    mesh = Mesh(
        torch.eye(3),
        torch.tensor([[0, 1, 2]]),
        vertex_colors=torch.full((3, 3), 0.5),
        name="tri",
    )
    moved = mesh.to("cpu")
    assert (mesh.num_verts, mesh.num_faces) == (3, 1)
    assert moved is not mesh
    assert moved.name == "tri"
    assert_close(moved.vertex_colors, mesh.vertex_colors)


def test_mesh_rejects_bad_shapes_and_dtypes():
    faces = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"verts: expected shape \(V, 3\), got \(3, 2\)"):
        Mesh(torch.zeros(3, 2), faces)
    with pytest.raises(TypeError, match="faces: expected dtype torch.int64"):
        Mesh(torch.eye(3), faces.int())
    with pytest.raises(ValueError, match="vertex_colors: expected shape"):
        Mesh(torch.eye(3), faces, vertex_colors=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="uvs and texture: expected both or neither"):
        Mesh(torch.eye(3), faces, uvs=torch.zeros(3, 2))


def test_to_trimesh_keeps_geometry_and_colors():
    tm = _colored_sphere()
    colors = torch.tensor(tm.visual.vertex_colors[:, :3] / 255.0, dtype=torch.float32)
    mesh = Mesh(
        torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces), colors
    )
    out = mesh.to_trimesh()
    assert_close(torch.tensor(out.vertices), torch.tensor(tm.vertices), atol=1e-6, rtol=0)
    assert np.array_equal(out.faces, tm.faces)
    assert np.array_equal(out.visual.vertex_colors, tm.visual.vertex_colors)


# -------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("ext", ["obj", "ply", "off", "glb"])
def test_load_round_trips_vertices_and_faces(tmp_path, ext):
    source = trimesh.creation.icosphere(subdivisions=2)
    path = tmp_path / f"sphere.{ext}"
    source.export(path)
    mesh = load_mesh(path)
    assert mesh.verts.dtype == torch.float32 and mesh.faces.dtype == torch.int64
    assert mesh.name == str(path)
    assert_close(mesh.verts, torch.tensor(source.vertices), atol=1e-6, rtol=0)
    assert torch.equal(mesh.faces, torch.tensor(source.faces))


def test_load_stl_welds_triangle_soup(tmp_path):
    source = trimesh.creation.icosphere(subdivisions=2)
    path = tmp_path / "sphere.stl"
    source.export(path)
    mesh = load_mesh(path)
    loaded = mesh.to_trimesh()
    assert mesh.num_verts == len(source.vertices)
    assert mesh.num_faces == len(source.faces)
    assert loaded.is_watertight
    assert loaded.volume == pytest.approx(source.volume, rel=1e-5)
    # the same vertex set (order aside): every vertex has its twin in the source
    gaps = np.linalg.norm(loaded.vertices[:, None] - source.vertices[None], axis=2)
    assert gaps.min(axis=1).max() < 1e-6 and gaps.min(axis=0).max() < 1e-6


@pytest.mark.parametrize("ext, atol", [("ply", 0.0), ("glb", 0.0), ("obj", 1.0 / 255)])
def test_load_keeps_vertex_colors(tmp_path, ext, atol):
    source = _colored_sphere()
    path = tmp_path / f"colored.{ext}"
    source.export(path)
    mesh = load_mesh(path)
    expected = torch.tensor(source.visual.vertex_colors[:, :3] / 255.0)
    assert mesh.vertex_colors is not None and mesh.uvs is None
    assert_close(mesh.vertex_colors, expected, atol=atol + 1e-6, rtol=0)


@pytest.mark.parametrize("ext, material", [("obj", "simple"), ("glb", "pbr")])
def test_load_keeps_uvs_and_texture(tmp_path, ext, material):
    source = _textured_box(material)
    path = tmp_path / f"textured.{ext}"
    source.export(path)
    if ext == "obj":
        assert {p.suffix for p in tmp_path.iterdir()} == {".obj", ".mtl", ".png"}
    mesh = load_mesh(path)
    assert mesh.uvs is not None and mesh.vertex_colors is None
    assert mesh.uvs.shape == (mesh.num_verts, 2) and mesh.uvs.dtype == torch.float32
    assert mesh.texture.shape == (16, 8, 3) and mesh.texture.dtype == torch.float32
    assert_close(mesh.texture, torch.tensor(_texture_image() / 255.0))
    assert_close(mesh.verts, torch.tensor(source.vertices), atol=1e-6, rtol=0)
    assert_close(mesh.uvs, torch.tensor(source.visual.uv), atol=1e-6, rtol=0)


def test_load_obj_splits_vertices_at_uv_seams(tmp_path):
    path = _write_text(
        tmp_path / "seam.obj",
        "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\n"
        "vt 0 0\nvt 1 0\nvt 0 1\nvt 1 1\nvt 0.5 0.5\n"
        "f 1/1 2/2 3/3\nf 2/5 4/4 3/3\n",
    )
    # no material: uvs without an image carry no appearance, only geometry is kept
    mesh = load_mesh(path)
    assert mesh.uvs is None and mesh.texture is None and mesh.vertex_colors is None
    assert (mesh.num_verts, mesh.num_faces) == (5, 2)
    corners = mesh.verts[mesh.faces]
    assert_close(corners[0], [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    assert_close(corners[1], [[1, 0, 0], [1, 1, 0], [0, 1, 0]])


def test_load_base_color_material_becomes_vertex_colors(tmp_path):
    box = trimesh.creation.box()
    box.visual = trimesh.visual.TextureVisuals(
        material=trimesh.visual.material.PBRMaterial(baseColorFactor=[255, 51, 0, 255])
    )
    path = tmp_path / "plain.glb"
    box.export(path)
    mesh = load_mesh(path)
    assert mesh.texture is None
    assert_close(mesh.vertex_colors, torch.tensor([[1.0, 0.2, 0.0]]).expand(8, 3))


def test_load_obj_diffuse_only_material_becomes_vertex_colors(tmp_path):
    _write_text(tmp_path / "plain.mtl", "newmtl paint\nKd 0.2 0.4 0.6\n")
    path = _write_text(
        tmp_path / "plain.obj",
        "mtllib plain.mtl\nusemtl paint\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n",
    )
    mesh = load_mesh(path)
    assert mesh.texture is None
    expected = torch.tensor([[0.2, 0.4, 0.6]]).expand(3, 3)
    assert_close(mesh.vertex_colors, expected, atol=1 / 255, rtol=0)


def test_load_glb_base_color_factor_multiplies_texture(tmp_path):
    box = _textured_box("pbr")
    box.visual.material.baseColorFactor = [255, 255, 0, 255]
    path = tmp_path / "tinted.glb"
    box.export(path)
    expected = torch.tensor(_texture_image() / 255.0) * torch.tensor([1.0, 1.0, 0.0])
    assert_close(load_mesh(path).texture, expected)


def test_load_face_colors_become_vertex_colors(tmp_path):
    box = trimesh.creation.box()
    box.visual.face_colors = [255, 0, 0, 255]
    path = tmp_path / "faces.ply"
    box.export(path)
    assert_close(load_mesh(path).vertex_colors, torch.tensor([[1.0, 0.0, 0.0]]).expand(8, 3))


def test_load_scene_applies_transforms_and_concatenates(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box(), node_name="a")
    shifted = trimesh.transformations.translation_matrix([3.0, 0.0, 0.0])
    scene.add_geometry(trimesh.creation.box(), node_name="b", transform=shifted)
    path = tmp_path / "scene.glb"
    scene.export(path)
    mesh = load_mesh(path)
    assert (mesh.num_verts, mesh.num_faces) == (16, 24)
    assert_close(mesh.verts.amin(0), [-0.5, -0.5, -0.5])
    assert_close(mesh.verts.amax(0), [3.5, 0.5, 0.5])
    assert mesh.to_trimesh().volume == pytest.approx(2.0)


def test_load_mixed_scene_gives_vertex_colors(tmp_path):
    colored = trimesh.creation.box()
    colored.visual.vertex_colors = [0, 255, 0, 255]
    scene = trimesh.Scene()
    scene.add_geometry(_textured_box("pbr"), node_name="textured")
    shifted = trimesh.transformations.translation_matrix([3.0, 0.0, 0.0])
    scene.add_geometry(colored, node_name="colored", transform=shifted)
    path = tmp_path / "mixed.glb"
    scene.export(path)
    mesh = load_mesh(path)
    assert mesh.texture is None and mesh.vertex_colors.shape == (16, 3)
    green = mesh.verts[:, 0] > 2.0
    assert_close(mesh.vertex_colors[green], torch.tensor([[0.0, 1.0, 0.0]]).expand(8, 3))
    # texture colours sampled at the uvs: red (top half) or blue (bottom half)
    sampled = mesh.vertex_colors[~green]
    assert bool(((sampled[:, 0] > 0.99) | (sampled[:, 2] > 0.99)).all())


# --------------------------------------------------------------------------- load errors


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(MeshError, match=r"missing\.obj: no such file"):
        load_mesh(tmp_path / "missing.obj")


def test_load_unsupported_extension_raises(tmp_path):
    path = _write_text(tmp_path / "mesh.xyz", "0 0 0\n")
    with pytest.raises(MeshError, match=r"mesh\.xyz: unsupported mesh format '\.xyz'"):
        load_mesh(path)


@pytest.mark.parametrize("ext", ["obj", "ply", "off", "glb", "gltf", "stl"])
def test_load_garbage_bytes_raises(tmp_path, ext):
    path = tmp_path / f"garbage.{ext}"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(MeshError, match=rf"garbage\.{ext}: cannot read mesh file"):
        load_mesh(path)


def test_load_empty_obj_raises(tmp_path):
    path = _write_text(tmp_path / "empty.obj", "")
    with pytest.raises(MeshError, match=r"empty\.obj: cannot read mesh file"):
        load_mesh(path)


def test_load_point_cloud_raises(tmp_path):
    path = tmp_path / "cloud.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(path)
    with pytest.raises(MeshError, match=r"cloud\.ply: mesh has no faces"):
        load_mesh(path)


def test_load_nan_vertex_raises(tmp_path):
    path = _write_text(tmp_path / "nan.obj", "v 0 0 0\nv 1 0 nan\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(MeshError, match=r"nan\.obj: 1 of 3 vertices have NaN/inf"):
        load_mesh(path)


def test_load_all_degenerate_faces_raises(tmp_path):
    path = _write_text(
        tmp_path / "flat.obj", "v 0 0 0\nv 1 1 1\nv 2 2 2\nf 1 2 3\nf 1 1 2\n"
    )
    with pytest.raises(MeshError, match=r"flat\.obj: all 2 faces are degenerate"):
        load_mesh(path)


def test_load_out_of_range_index_raises(tmp_path):
    path = _write_text(tmp_path / "bad_index.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 7\n")
    with pytest.raises(MeshError, match=r"bad_index\.obj: cannot read mesh file \(IndexError"):
        load_mesh(path)


def test_load_drops_some_degenerate_faces_with_warning(tmp_path):
    path = _write_text(
        tmp_path / "partly.obj",
        "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 3\nf 2 4 3\nf 1 2 2\n",
    )
    with pytest.warns(UserWarning, match=r"partly\.obj: dropped 1 degenerate"):
        mesh = load_mesh(path)
    assert torch.equal(mesh.faces, torch.tensor([[0, 1, 2], [1, 3, 2]]))
    assert mesh.num_verts == 4


# ---------------------------------------------------------------------------- validation


def test_validate_mesh_converts_dtypes():
    verts, faces = validate_mesh(np.eye(3), np.array([[0, 1, 2]], dtype=np.int32))
    assert verts.dtype == torch.float32 and faces.dtype == torch.int64


@pytest.mark.parametrize(
    "verts, faces, message",
    [
        (torch.eye(3), torch.tensor([[0, 1, 3]]), r"out of range: expected 0 <= index < 3"),
        (torch.eye(3), torch.tensor([[-1, 1, 2]]), r"out of range"),
        (torch.zeros(3, 2), torch.tensor([[0, 1, 2]]), r"verts: expected shape \(V, 3\)"),
        (torch.eye(3), torch.tensor([0, 1, 2]), r"faces: expected shape \(F, 3\)"),
        (torch.eye(3), torch.tensor([[0.0, 1.0, 2.0]]), r"faces: expected an integer dtype"),
        (torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), r"no vertices"),
        (torch.eye(3), torch.zeros(0, 3, dtype=torch.int64), r"no faces"),
        (
            torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, float("inf"), 0]]),
            torch.tensor([[0, 1, 2]]),
            r"1 of 3 vertices have NaN/inf",
        ),
    ],
)
def test_validate_mesh_errors_name_the_mesh(verts, faces, message):
    with pytest.raises(MeshError, match=r"^car\.obj: .*" + message):
        validate_mesh(verts, faces, name="car.obj")


def test_validate_mesh_flags_float32_collinear_faces():
    # collinear in exact arithmetic, off the line by float32 rounding only
    verts = torch.tensor([[0.1, 0.2, 0.3], [0.2, 0.4, 0.6], [0.3, 0.6, 0.9], [1.0, 0.0, 0.0]])
    faces = torch.tensor([[0, 1, 2], [0, 1, 3]])
    with pytest.warns(UserWarning, match="dropped 1 degenerate"):
        _, kept = validate_mesh(verts, faces)
    assert torch.equal(kept, torch.tensor([[0, 1, 3]]))


def test_validate_mesh_keeps_small_valid_faces():
    verts = torch.tensor([[0.0, 0, 0], [1e-4, 0, 0], [0, 1e-4, 0], [10.0, 10.0, 10.0]])
    _, faces = validate_mesh(verts, torch.tensor([[0, 1, 2]]))
    assert faces.shape == (1, 3)


# -------------------------------------------------------------------------------- saving


def test_save_mesh_round_trips_texture_and_colors(tmp_path):
    textured = load_mesh(_export(_textured_box(), tmp_path / "src" / "box.obj"))
    save_mesh(textured, tmp_path / "out.obj")
    assert (tmp_path / "out.mtl").is_file() and (tmp_path / "out.png").is_file()
    again = load_mesh(tmp_path / "out.obj")
    assert_close(again.uvs, textured.uvs, atol=1e-6, rtol=0)
    assert_close(again.texture, textured.texture)

    colors = torch.rand(42, 3, generator=torch.Generator().manual_seed(0))
    sphere = _to_mesh(trimesh.creation.icosphere(subdivisions=1))
    colored = Mesh(sphere.verts, sphere.faces, vertex_colors=colors)
    save_mesh(colored, tmp_path / "colored.ply")
    again = load_mesh(tmp_path / "colored.ply")
    assert_close(again.vertex_colors, colors, atol=0.5 / 255 + 1e-6, rtol=0)
    assert torch.equal(again.faces, colored.faces)


def test_save_mesh_rejects_unsupported_extension(tmp_path):
    mesh = Mesh(torch.eye(3), torch.tensor([[0, 1, 2]]))
    with pytest.raises(MeshError, match=r"tri\.dae: unsupported mesh format"):
        save_mesh(mesh, tmp_path / "tri.dae")


# ------------------------------------------------------------------------- normalisation


def _offset_box() -> Mesh:
    box = trimesh.creation.box(extents=(2.0, 4.0, 1.0))
    box.apply_translation([1.0, -2.0, 3.0])
    return _to_mesh(box, "box")


def test_center_and_scale_bbox_radius():
    mesh = _offset_box()
    out, center, scale = center_and_scale(mesh, center="bbox", scale="radius", target=2.0)
    assert_close(center, [1.0, -2.0, 3.0])
    assert_close(out.verts.amin(0) + out.verts.amax(0), torch.zeros(3), atol=1e-6, rtol=0)
    assert out.verts.norm(dim=1).max().item() == pytest.approx(2.0)
    assert scale == pytest.approx(2.0 / (0.5 * 21**0.5))
    assert_close(out.verts / scale + center, mesh.verts)
    assert out.faces is mesh.faces and out.name == mesh.name


def test_center_and_scale_diagonal_and_none():
    mesh = _offset_box()
    out, center, scale = center_and_scale(mesh, center=None, scale="diagonal", target=1.0)
    assert_close(center, torch.zeros(3))
    diagonal = (out.verts.amax(0) - out.verts.amin(0)).norm().item()
    assert diagonal == pytest.approx(1.0)
    same, center, scale = center_and_scale(mesh, center=None, scale=None)
    assert scale == 1.0
    assert_close(same.verts, mesh.verts)


def test_center_and_scale_centroid_ignores_tessellation():
    # a box whose +x side is finely subdivided: the vertex mean shifts, the centroid does not
    v, f = trimesh.remesh.subdivide_to_size(
        trimesh.creation.box().vertices, trimesh.creation.box().faces, max_edge=0.1
    )
    tm = trimesh.Trimesh(v, f, process=False)
    mesh = _to_mesh(tm)
    _, center, _ = center_and_scale(mesh, center="centroid", scale=None)
    assert_close(center, torch.zeros(3), atol=1e-6, rtol=0)


def test_center_and_scale_rejects_unknown_mode():
    with pytest.raises(ValueError, match="center: expected 'bbox', 'centroid' or None"):
        center_and_scale(_offset_box(), center="mean")
    with pytest.raises(ValueError, match="target: expected a positive size"):
        center_and_scale(_offset_box(), target=0.0)


# -------------------------------------------------------------------------------- cuboid


@pytest.mark.parametrize(
    "extent", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (4.0, 1.0, 0.5), (20.0, 1.0, 1.0)]
)
@pytest.mark.parametrize("num_verts", [100, 500, 1000, 1100, 3000])
def test_cuboid_surface_vertex_count_within_tolerance(extent, num_verts):
    corners = torch.tensor([[0.0, 0.0, 0.0], list(extent)])
    mesh = cuboid_surface(corners, num_verts=num_verts, coverage=1.0)
    assert abs(mesh.num_verts / num_verts - 1) <= 0.15
    # a closed grid surface: V - E + F = 2 with E = 3F / 2
    assert mesh.num_faces == 2 * mesh.num_verts - 4


def test_is_closed_outward_needs_every_face_wound_outward_on_a_closed_surface():
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    verts, faces = torch.tensor(box.vertices), torch.tensor(box.faces)
    assert is_closed_outward(verts, faces)
    one_flipped = faces.clone()
    one_flipped[3] = one_flipped[3].flip(0)
    assert not is_closed_outward(verts, one_flipped)
    assert not is_closed_outward(verts, faces.flip(1))  # closed and consistent, but inside out
    assert not is_closed_outward(verts, faces[1:])  # open
    # two pieces: both must enclose a positive volume
    two_verts = torch.cat([verts, verts + 5.0])
    assert is_closed_outward(two_verts, torch.cat([faces, faces + 8]))
    assert not is_closed_outward(two_verts, torch.cat([faces, faces.flip(1) + 8]))
    # an unwelded soup shares no edge between faces
    soup = verts[faces].reshape(-1, 3)
    assert not is_closed_outward(soup, torch.arange(soup.shape[0]).reshape(-1, 3))
    assert not is_closed_outward(verts, faces[:0])


def test_cuboid_surface_is_closed_with_outward_normals():
    mesh = cuboid_surface(torch.tensor([[-1.0, -2.0, -0.5], [3.0, 2.0, 0.5]]), 1000, 1.0)
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume == pytest.approx(4.0 * 4.0 * 1.0, rel=1e-5)
    outward = ((tm.triangles_center - [1.0, 0.0, 0.0]) * tm.face_normals).sum(axis=1)
    assert (outward > 0).all()
    assert len(tm.faces) == len(np.unique(np.sort(tm.faces, axis=1), axis=0))


def test_cuboid_surface_spacing_is_nearly_equal():
    mesh = cuboid_surface(torch.tensor([[0.0, 0.0, 0.0], [4.0, 1.0, 2.0]]), 1000, 1.0)
    edges = mesh.verts[mesh.faces[:, [1, 2, 0]]] - mesh.verts[mesh.faces]
    axis_steps = edges.abs().reshape(-1, 3)
    steps = [axis_steps[:, k][axis_steps[:, k] > 1e-6].min().item() for k in range(3)]
    assert max(steps) / min(steps) < 1.2


def test_cuboid_surface_extent_is_the_coverage_quantile_interval():
    points = torch.randn(2000, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor(
        [1.0, 2.0, 0.5]
    )
    mesh = cuboid_surface(points, num_verts=500, coverage=0.9, padding=0.1)
    low = np.quantile(points.double().numpy(), 0.05, axis=0) - 0.1
    high = np.quantile(points.double().numpy(), 0.95, axis=0) + 0.1
    assert_close(mesh.verts.amin(0), torch.tensor(low), atol=1e-5, rtol=0)
    assert_close(mesh.verts.amax(0), torch.tensor(high), atol=1e-5, rtol=0)
    full = cuboid_surface(points, num_verts=500, coverage=1.0)
    assert_close(full.verts.amin(0), points.amin(0))
    assert_close(full.verts.amax(0), points.amax(0))


def test_cuboid_surface_accepts_mesh_and_is_deterministic():
    mesh = _to_mesh(trimesh.creation.icosphere(2), "sphere")
    first, second = cuboid_surface(mesh), cuboid_surface(mesh.verts.double())
    assert torch.equal(first.verts, second.verts) and torch.equal(first.faces, second.faces)
    assert first.verts.dtype == torch.float32
    assert "sphere" in first.name


def test_cuboid_surface_rejects_flat_input_and_bad_arguments():
    flat = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    with pytest.raises(MeshError, match="zero extent along y"):
        cuboid_surface(flat, coverage=1.0)
    assert cuboid_surface(flat, num_verts=100, coverage=1.0, padding=0.01).num_faces > 0
    with pytest.raises(ValueError, match=r"coverage: expected a value in \(0, 1\]"):
        cuboid_surface(flat, coverage=0.0)
    with pytest.raises(ValueError, match="num_verts: expected at least 8"):
        cuboid_surface(flat, num_verts=4)


# ---------------------------------------------------------------------------- remeshing


def _edge_lengths(mesh: Mesh) -> np.ndarray:
    return mesh.to_trimesh().edges_unique_length


@pytest.mark.parametrize("num_verts", [300, 1000])
def test_remesh_sphere_count_uniformity_and_closeness(num_verts):
    sphere = _to_mesh(trimesh.creation.icosphere(subdivisions=3), "sphere")
    out = remesh_surface(sphere, num_verts=num_verts)
    assert abs(out.num_verts / num_verts - 1) <= 0.2
    lengths = _edge_lengths(out)
    assert lengths.std() / lengths.mean() < 0.3
    # vertices lie on the input polyhedron (inscribed in the unit sphere)
    radii = out.verts.norm(dim=1)
    assert radii.max().item() <= 1.0 + 1e-5 and radii.min().item() > 0.98
    tm = out.to_trimesh()
    assert tm.is_watertight
    assert tm.volume == pytest.approx(trimesh.creation.icosphere(3).volume, rel=0.03)


def test_remesh_box_keeps_orientation_and_surface():
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    out = remesh_surface(_to_mesh(box, "box"), num_verts=500)
    assert abs(out.num_verts / 500 - 1) <= 0.2
    lengths = _edge_lengths(out)
    assert lengths.std() / lengths.mean() < 0.3
    _, distance, _ = trimesh.proximity.closest_point(box, out.verts.double().numpy())
    assert distance.max() < 1e-5
    tm = out.to_trimesh()
    assert tm.volume > 0.9 * box.volume  # positive: normals point outward
    outward = (tm.triangles_center * tm.face_normals).sum(axis=1)
    assert (outward > 0).mean() > 0.99


def _stool() -> trimesh.Trimesh:
    """A seat on four legs 0.07 thick: thinner than a 200- or 400-vertex remesh's spacing."""
    parts = [trimesh.creation.box(extents=(1.0, 0.1, 1.0))]
    for x, z in itertools.product((-0.4, 0.4), repeat=2):
        leg = trimesh.creation.cylinder(radius=0.035, height=0.7, sections=16)
        leg.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
        leg.apply_translation([x, -0.4, z])
        parts.append(leg)
    return trimesh.util.concatenate(parts)


def test_remesh_keeps_parts_thinner_than_the_spacing():
    """Cells that wrapped around a thin leg left it without triangles: legs vanished."""
    stool = _stool()
    points, _ = trimesh.sample.sample_surface(stool, 4000, seed=0)
    for num_verts in (200, 400):
        out = remesh_surface(_to_mesh(stool, "stool"), num_verts=num_verts)
        spacing = math.sqrt(2.0 * stool.area / (math.sqrt(3.0) * num_verts))
        _, distance, _ = trimesh.proximity.closest_point(out.to_trimesh(), points)
        assert distance.max() < 0.6 * spacing, num_verts  # every leg is there, all along
    assert is_closed_outward(out.verts, out.faces)  # closed like its input, so it can be culled


def test_remesh_welds_unshared_vertices_and_is_deterministic():
    soup = trimesh.creation.box()
    unwelded = Mesh(
        torch.tensor(soup.vertices[soup.faces].reshape(-1, 3), dtype=torch.float32),
        torch.arange(3 * len(soup.faces)).reshape(-1, 3),
        name="soup",
    )
    first = remesh_surface(unwelded, num_verts=200)
    second = remesh_surface(unwelded, num_verts=200)
    assert torch.equal(first.verts, second.verts) and torch.equal(first.faces, second.faces)
    assert first.to_trimesh().is_watertight
    assert "soup" in first.name


def test_remesh_rejects_a_bad_normal_weight():
    with pytest.raises(ValueError, match="normal_weight"):
        remesh_surface(_to_mesh(trimesh.creation.box(), "box"), 100, normal_weight=-1.0)


def test_remesh_rejects_zero_area_surface():
    flat = Mesh(torch.tensor([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]]), torch.tensor([[0, 1, 2]]))
    with pytest.raises(MeshError, match="zero area"):
        remesh_surface(flat)
