"""Tests of datasets.raycast: the second renderer agrees with the project's rasterizer on
geometry (while sharing none of its code), reaches the occlusion levels, is deterministic,
and its command line writes ground truth in the mesh file's frame."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import check_sample
from datasets import raycast as rc
from render import center_and_scale, load_mesh, project_points, rasterize

REPO = Path(__file__).resolve().parents[2]
CHAIR = REPO / "demos" / "data" / "chair.obj"
SIZE = 32


@pytest.fixture(scope="module")
def samples():
    return {level: rc.raycast_samples(CHAIR, 2, level, SIZE, seed=5) for level in (0, 2)}


def canonical_chair():
    mesh, c, s = center_and_scale(load_mesh(CHAIR), center="bbox", scale="radius")
    return mesh, c, s


def test_samples_follow_the_schema_and_reach_the_levels(samples):
    for level, batch in samples.items():
        assert len(batch) == 2
        for s in batch:
            check_sample(s)
            assert s["image"].shape == (3, SIZE, SIZE)
            assert 0 <= float(s["image"].min()) and float(s["image"].max()) <= 1
            R = s["R"].double()
            assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-5)
            low, high = rc.OCCLUSION_LEVELS[level]
            assert low <= s["occlusion"] <= high
            assert bool(s["mask"].any())


def test_object_mask_matches_the_rasterizer(samples):
    # two renderers that share no code agree on where the object is
    mesh, _, _ = canonical_chair()
    for s in samples[0] + samples[2]:
        verts_cam = mesh.verts.double() @ s["R"].double().T + s["t"].double()
        frags = rasterize(verts_cam[None], mesh.faces, s["K"].double()[None], (SIZE, SIZE), cull_backfaces=False)
        ours = frags.mask[0]
        inter = (ours & s["mask"]).sum().item()
        union = (ours | s["mask"]).sum().item()
        assert inter / union > 0.9


def test_pose_matches_the_angles(samples):
    from render import angles_to_pose

    s = samples[0][0]
    R, t = angles_to_pose(s["azimuth"], s["elevation"], s["theta"], s["distance"])
    assert torch.allclose(R.float(), s["R"], atol=1e-5) and torch.allclose(t.float(), s["t"], atol=1e-5)


def test_deterministic_per_seed_and_index():
    a = rc.raycast_samples(CHAIR, 2, 1, 24, seed=3)
    b = rc.raycast_samples(CHAIR, 1, 1, 24, seed=3)
    c = rc.raycast_samples(CHAIR, 1, 1, 24, seed=4)
    assert torch.equal(a[0]["image"], b[0]["image"])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], c[0]["image"])


@pytest.mark.parametrize("effect", ["shadows", "textures", "object_texture", "supersampling", "gamma", "noise"])
def test_an_effect_switched_off_leaves_the_rest_of_the_scene(samples, effect):
    base = samples[2][0]
    [other] = rc.raycast_samples(CHAIR, 1, 2, SIZE, seed=5, off=[effect])
    for key in ("mask", "occluder_mask", "K", "R", "t"):
        assert torch.equal(base[key], other[key]), key
    assert other["occlusion"] == base["occlusion"]
    assert not torch.equal(base["image"], other["image"])


def test_without_floor_wall_distractors_and_noise_the_background_is_the_sky_gradient():
    [s] = rc.raycast_samples(CHAIR, 1, 0, 48, seed=2, off=["floor", "wall", "distractors", "noise"])
    image, mask = s["image"], s["mask"]
    # pixels clear of the object (and of its anti-aliased edge): one colour per row
    near = torch.nn.functional.max_pool2d(mask[None, None].float(), 5, 1, 2)[0, 0] > 0
    rows = [image[:, y][:, ~near[y]] for y in range(48) if (~near[y]).sum() > 1]
    assert len(rows) > 20
    assert max(float((r - r[:, :1]).abs().max()) for r in rows) < 1e-5
    assert float((rows[0][:, 0] - rows[-1][:, 0]).abs().max()) > 1e-3  # a gradient, not a flat colour
    [full] = rc.raycast_samples(CHAIR, 1, 0, 48, seed=2, off=["noise"])
    assert torch.equal(full["mask"], mask)  # the same viewpoint, with its floor and wall
    assert not torch.equal(full["image"], image)


def test_solid_materials_make_the_same_draws():
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    points = np.random.default_rng(2).normal(size=(50, 3))
    textured = [rc._material(a, 1.0)(points) for _ in range(8)]
    solid = [rc._material(b, 1.0, solid=True)(points) for _ in range(8)]
    assert a.uniform() == b.uniform()
    assert all(np.allclose(s, s[:1]) for s in solid)
    assert any(not np.allclose(t, t[:1]) for t in textured)
    assert all(np.allclose(s, t) for s, t in zip(solid, textured) if np.allclose(t, t[:1]))  # solid kinds agree


def test_brute_force_caster_agrees_with_open3d(monkeypatch):
    pytest.importorskip("open3d")
    mesh, _, _ = canonical_chair()
    verts, faces = mesh.verts.double().numpy(), mesh.faces.numpy()
    rng = np.random.default_rng(0)
    origins = np.tile([[0.3, 0.5, 4.0]], (500, 1))
    dirs = rng.normal(size=(500, 3)) * 0.15 + [0, -0.1, -1]
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    fast = rc._Caster(verts, faces).cast(origins, dirs)
    monkeypatch.setitem(sys.modules, "open3d", None)
    slow = rc._Caster(verts, faces).cast(origins, dirs)
    assert (np.isfinite(fast[0]) == np.isfinite(slow[0])).mean() > 0.99
    both = np.isfinite(fast[0]) & np.isfinite(slow[0])
    assert both.sum() > 50
    assert np.allclose(fast[0][both], slow[0][both], atol=1e-4)


def test_brute_force_caster_hits_a_triangle_exactly(monkeypatch):
    monkeypatch.setitem(sys.modules, "open3d", None)
    caster = rc._Caster(np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), np.array([[0, 1, 2]]))
    dist, face, bary = caster.cast(np.array([[0.2, 0.3, 2.0], [0.9, 0.9, 2.0]]), np.array([[0.0, 0, -1], [0, 0, -1]]))
    assert dist[0] == pytest.approx(2.0) and face[0] == 0
    assert bary[0] == pytest.approx([0.5, 0.2, 0.3])
    assert np.isinf(dist[1]) and face[1] == -1


def test_cli_writes_images_and_file_frame_ground_truth(tmp_path, capsys):
    out = tmp_path / "ray"
    assert rc.main(["--mesh", str(CHAIR), "--out", str(out), "--n", "1", "--size", "32", "--level", "1"]) == 0
    assert (out / "0000.png").is_file()
    rows = [json.loads(x) for x in (out / "ground_truth.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    fx, fy, cx, cy = row["K"]
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=torch.float64)
    R, t = torch.tensor(row["R"], dtype=torch.float64), torch.tensor(row["t"], dtype=torch.float64)
    # the file's own vertices project where the canonical ones do under the sample's pose
    sample = rc.raycast_samples(CHAIR, 1, 1, 32, seed=0)[0]
    canon, _, _ = canonical_chair()
    file_verts = load_mesh(CHAIR).verts.double()
    a = project_points(file_verts[None], K, R, t)[0]
    b = project_points(canon.verts.double()[None], sample["K"].double(), sample["R"].double(), sample["t"].double())[0]
    assert torch.allclose(a, b, atol=1e-3)


def test_cli_unreadable_mesh_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.obj"
    bad.write_text("this is not a mesh\n")
    assert rc.main(["--mesh", str(bad), "--out", str(tmp_path / "o"), "--n", "1", "--size", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.obj" in err[0]
    assert not (tmp_path / "o").exists()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="level"):
        rc.raycast_samples(CHAIR, 1, level=7)
    with pytest.raises(ValueError, match="size"):
        rc.raycast_samples(CHAIR, 1, size=4)
    with pytest.raises(ValueError, match="unknown effect.*'fog'"):
        rc.raycast_samples(CHAIR, 1, off=["shadows", "fog"])
    with pytest.raises(ValueError, match="distance_scale"):
        rc.raycast_samples(CHAIR, 1, distance_scale=0.0)
    with pytest.raises(ValueError, match="center_jitter"):
        rc.raycast_samples(CHAIR, 1, center_jitter=0.7)
