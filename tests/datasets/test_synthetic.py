"""Tests of datasets.synthetic: determinism, exact labels (checked against independent
re-renders), occlusion levels, replay, export / resume / read-back, command line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from datasets import check_sample
from datasets import randomize as rz
from datasets.synthetic import (
    VIEW_CHANNELS,
    SyntheticConfig,
    SyntheticDataset,
    SyntheticFolder,
    export,
    main,
)
from render import angles_to_pose

SIZE = (48, 48)
REPO = Path(__file__).resolve().parents[2]


def config(**kw) -> SyntheticConfig:
    base = dict(image_size=SIZE, categories=("car", "chair", "mug", "lamp"), shapes_per_category=2)
    base.update(kw)
    return SyntheticConfig(**base)


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


# --------------------------------------------------------------------------- independent checks


def project(verts, K, R, t):
    """float64 pinhole projection, written out (no render code)."""
    X = verts.astype(np.float64) @ R.astype(np.float64).T + t.astype(np.float64)
    K = K.astype(np.float64)
    u = K[0, 0] * X[:, 0] / X[:, 2] + K[0, 1] * X[:, 1] / X[:, 2] + K[0, 2]
    v = K[1, 1] * X[:, 1] / X[:, 2] + K[1, 2]
    return np.stack([u, v], -1), X


def silhouette(verts, faces, K, R, t, size):
    """Pixels whose centre lies in some projected triangle (edge functions, float64)."""
    h, w = size
    uv, _ = project(verts, K, R, t)
    a, b, c = (uv[faces[:, i]] for i in range(3))
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    keep = area != 0
    a, b, c, sign = a[keep], b[keep], c[keep], np.sign(area[keep])[:, None]
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    px, py = jj.ravel()[None], ii.ravel()[None]
    mask = np.zeros(h * w, bool)
    for lo in range(0, len(a), 256):
        s = slice(lo, lo + 256)

        def edge(p, q):
            return ((q[s, 0:1] - p[s, 0:1]) * (py - p[s, 1:2]) - (q[s, 1:2] - p[s, 1:2]) * (px - p[s, 0:1])) * sign[s]

        mask |= ((edge(a, b) >= 0) & (edge(b, c) >= 0) & (edge(c, a) >= 0)).any(0)
    return mask.reshape(h, w)


def ray_depths(verts_cam, faces, K, pixels):
    """Nearest camera depth of the surface along the rays through ``pixels (N, 2)`` (j, i);
    inf where no face is hit. Moller-Trumbore in float64, every ray against every face."""
    Kinv = np.linalg.inv(K.astype(np.float64))
    d = np.concatenate([pixels.astype(np.float64), np.ones((len(pixels), 1))], 1) @ Kinv.T  # z = 1
    v0, v1, v2 = (verts_cam[faces[:, i]].astype(np.float64) for i in range(3))
    e1, e2 = v1 - v0, v2 - v0
    out = np.full(len(d), np.inf)
    for lo in range(0, len(d), 128):
        dd = d[lo:lo + 128, None, :]
        p = np.cross(dd, e2[None])
        det = (e1[None] * p).sum(-1)
        ok = np.abs(det) > 1e-15
        det = np.where(ok, det, 1.0)
        tvec = -v0[None]
        b1 = (tvec * p).sum(-1) / det
        q = np.cross(tvec, e1[None])
        b2 = (dd * q).sum(-1) / det
        z = (e2[None] * q).sum(-1) / det
        hit = ok & (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (z > 0)
        out[lo:lo + 128] = np.where(hit, z, np.inf).min(1)
    return out


# --------------------------------------------------------------------------- determinism, schema


def test_sample_depends_only_on_seed_and_index():
    a = SyntheticDataset(config(occlusion=1), seed=7, length=10)
    b = SyntheticDataset(config(occlusion=1), seed=7, length=10)
    assert_same(a[3], b[3])
    assert_same(a[3], a[3])
    assert not torch.equal(a[3]["image"], a[4]["image"])
    c = SyntheticDataset(config(occlusion=1), seed=8, length=10)
    assert not torch.equal(a[3]["image"], c[3]["image"])
    assert_same(a[-1], a[9])
    with pytest.raises(IndexError):
        a[10]


def test_samples_follow_the_schema():
    ds = SyntheticDataset(config(points=64, vertex_projections=True, views=4, view_size=16), seed=0, length=4)
    for i in range(len(ds)):
        s = ds[i]
        check_sample(s)
        assert s["image"].shape == (3, *SIZE) and 0 <= float(s["image"].min()) and float(s["image"].max()) <= 1
        assert s["points"].shape == (64, 3)
        assert s["vertex_uv"].shape[0] == s["vertex_visible"].shape[0] > 500
        assert s["occlusion"] == 0.0 and not s["occluder_mask"].any()
        assert s["category"] in ("car", "chair", "mug", "lamp")
        assert s["mesh_id"].startswith(s["category"])


def test_angles_describe_the_pose_and_intrinsics_are_in_range():
    cfg = config()
    ds = SyntheticDataset(cfg, seed=1, length=6)
    for i in range(len(ds)):
        s = ds[i]
        R, t = angles_to_pose(s["azimuth"], s["elevation"], s["theta"], s["distance"])
        assert torch.equal(R.float(), s["R"]) and torch.equal(t.float(), s["t"])
        lo, hi = cfg.elevation_range
        assert lo <= s["elevation"] <= hi and cfg.distance_range[0] <= s["distance"] <= cfg.distance_range[1]
        K = s["K"]
        assert K[0, 0] == K[1, 1] and K[0, 1] == 0
        f_lo, f_hi = cfg.focal_range
        assert f_lo * 48 <= float(K[0, 0]) <= f_hi * 48
        assert abs(float(K[0, 2]) - 23.5) <= cfg.center_jitter * 48 + 1e-4


# --------------------------------------------------------------------------- exact labels


def test_mask_is_the_silhouette_of_the_mesh_at_the_labels():
    ds = SyntheticDataset(config(occlusion=2), seed=2, length=8)
    for i in range(len(ds)):
        s = ds[i]
        shape = ds.shape(ds.sample_params(i).mesh_key)
        expected = silhouette(shape.mesh.verts.numpy(), shape.mesh.faces.numpy(), s["K"].numpy(),
                              s["R"].numpy(), s["t"].numpy(), SIZE)
        assert np.array_equal(s["mask"].numpy(), expected), f"sample {i}: {np.sum(s['mask'].numpy() != expected)} pixels differ"


def test_bbox_is_the_extent_of_the_mask():
    ds = SyntheticDataset(config(), seed=4, length=5)
    for i in range(len(ds)):
        s = ds[i]
        rows = np.nonzero(s["mask"].numpy().any(1))[0]
        cols = np.nonzero(s["mask"].numpy().any(0))[0]
        assert s["bbox"].tolist() == [cols[0], rows[0], cols[-1], rows[-1]]


def test_vertex_visibility_agrees_with_an_independent_zbuffer():
    cfg = config(vertex_projections=True, neural_mesh_verts=300)
    ds = SyntheticDataset(cfg, seed=5, length=3)
    h, w = SIZE
    for i in range(len(ds)):
        s = ds[i]
        surface = ds.neural_mesh(ds.sample_params(i).mesh_key)
        uv, X = project(surface.verts.numpy(), s["K"].numpy(), s["R"].numpy(), s["t"].numpy())
        np.testing.assert_allclose(s["vertex_uv"].numpy(), uv, atol=1e-3)
        j, ii = np.floor(uv[:, 0] + 0.5), np.floor(uv[:, 1] + 0.5)
        inside = (j >= 0) & (j < w) & (ii >= 0) & (ii < h)
        # depth at the vertex's pixel and its 4 neighbours, by casting rays (inf: no hit / outside)
        offsets = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
        depth = []
        for dj, di in offsets:
            pj, pi = j + dj, ii + di
            d = ray_depths(X, surface.faces.numpy(), s["K"].numpy(), np.stack([pj, pi], 1))
            d[(pj < 0) | (pj >= w) | (pi < 0) | (pi >= h)] = np.inf
            depth.append(d)
        centre, around = depth[0], np.stack(depth[1:])
        both = np.isfinite(around) & np.isfinite(centre)
        steps = np.abs(np.where(both, around, 0.0) - np.where(both, centre, 0.0))
        slack = X[:, 2] - centre - cfg.visibility_tolerance - steps.max(0)
        expected = inside & (np.isinf(centre) | (slack <= 0))
        decided = np.abs(slack) > 1e-4  # away from the exact tolerance boundary
        got = s["vertex_visible"].numpy()
        assert decided.mean() > 0.95
        assert np.array_equal(got[decided], expected[decided])
        assert 0.2 < got.mean() < 0.8  # roughly the front half of a closed surface


def test_vertex_visibility_matches_the_exact_answer_on_a_cuboid():
    """The surface is convex: a vertex is visible iff one of its faces faces the camera."""
    ds = SyntheticDataset(config(image_size=(96, 96), vertex_projections=True), seed=6, length=4)
    wrong = total = 0
    for i in range(len(ds)):
        s = ds[i]
        surface = ds.neural_mesh(ds.sample_params(i).mesh_key)
        X = surface.verts @ s["R"].T + s["t"]
        tri = X[surface.faces]
        facing = (tri[:, 0] * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])).sum(-1) < 0
        exact = torch.zeros(len(X), dtype=torch.bool)
        exact[surface.faces[facing].reshape(-1)] = True
        uv = s["vertex_uv"]
        exact &= (uv[:, 0] >= -0.5) & (uv[:, 0] < 95.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < 95.5)
        wrong += int((exact != s["vertex_visible"]).sum())
        total += len(X)
    assert wrong / total < 0.03


@pytest.mark.parametrize("level", [1, 2, 3])
def test_occlusion_levels_hit_their_ranges_measured_from_masks(level):
    lo, hi = rz.OCCLUSION_LEVELS[level]
    ds = SyntheticDataset(config(occlusion=level), seed=level, length=3)
    for i in range(len(ds)):
        s = ds[i]
        assert lo <= s["occlusion"] <= hi
        scene = ds.sample_params(i)
        hidden = rz.occluder_mask(scene.occluders, SIZE) & s["mask"]
        assert s["occlusion"] == pytest.approx(float(hidden.sum()) / float(s["mask"].sum()))
        assert torch.equal(s["occluder_mask"], rz.occluder_mask(scene.occluders, SIZE))


def test_custom_occlusion_range():
    ds = SyntheticDataset(config(occlusion=(0.1, 0.15)), seed=0, length=2)
    assert all(0.1 <= ds[i]["occlusion"] <= 0.15 for i in range(2))


def test_points_lie_on_the_mesh_surface():
    ds = SyntheticDataset(config(points=200), seed=0, length=2)
    s = ds[0]
    shape = ds.shape(ds.sample_params(0).mesh_key)
    mesh = trimesh.Trimesh(shape.mesh.verts.double().numpy(), shape.mesh.faces.numpy(), process=False)
    _, dist, _ = trimesh.proximity.closest_point(mesh, s["points"].double().numpy())
    assert float(dist.max()) < 1e-5
    assert torch.equal(s["points"], SyntheticDataset(config(points=200), seed=0, length=2)[0]["points"])


def test_views_are_canonical_renders_of_the_bare_shape():
    ds = SyntheticDataset(config(views=6, view_size=24), seed=0, length=6)
    s = ds[0]
    v = s["views"]
    assert v.shape == (6, len(VIEW_CHANNELS), 24, 24) and v.dtype == torch.float32
    sil, depth, normals = v[:, 0], v[:, 1], v[:, 2:]
    assert set(sil.unique().tolist()) == {0.0, 1.0}
    on = sil > 0
    assert bool((depth[on] > 0).all()) and float(depth[~on].abs().max()) == 0.0
    assert torch.allclose(normals.norm(dim=1)[on], torch.ones(int(on.sum())), atol=1e-4)
    key = ds.sample_params(0).mesh_key
    same = [i for i in range(1, 6) if ds.sample_params(i).mesh_key == key]
    for i in same:  # independent of the pose
        assert torch.equal(ds[i]["views"], v)


# --------------------------------------------------------------------------- replay


def test_replaying_the_parameters_reproduces_the_sample():
    ds = SyntheticDataset(config(occlusion=2), seed=9, length=3)
    for i in range(3):
        scene = ds.sample_params(i)
        assert scene.occluders
        fresh = SyntheticDataset(config(occlusion=2), seed=123, length=1)  # another seed: replay ignores it
        assert_same(fresh.render(scene), ds[i])


def test_replay_with_changed_parameters_keeps_the_labels():
    ds = SyntheticDataset(config(occlusion=1), seed=3, length=1)
    scene = ds.sample_params(0)
    plain = ds.render(dataclasses.replace(scene, occluders=(), photometric=None))
    original = ds[0]
    assert plain["occlusion"] == 0.0
    assert torch.equal(plain["mask"], original["mask"]) and torch.equal(plain["R"], original["R"])
    assert not torch.equal(plain["image"], original["image"])


# --------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(distance_range=(0.5, 3.0)), "distance_range"),
        (dict(occlusion=5), "occlusion"),
        (dict(occlusion=(0.7, 0.2)), "occlusion"),
        (dict(categories=("car", "spaceship")), "spaceship"),
        (dict(image_size=(4, 64)), "image_size"),
        (dict(focal_range=(0.0, 1.0)), "focal_range"),
        (dict(categories=(), mesh_paths=()), "no categories"),
        (dict(lighting="phong"), "lighting"),
    ],
)
def test_bad_config_is_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        config(**kw)


def test_missing_background_folder_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="background folder not found"):
        SyntheticDataset(config(background_dir=str(tmp_path / "nope")))


def test_user_meshes_and_photo_backgrounds(tmp_path):
    box = trimesh.creation.box(extents=(1.0, 0.5, 0.3))
    box.export(tmp_path / "brick.obj")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((20, 30, 3), (10, 200, 30), np.uint8)).save(photos / "green.png")
    cfg = config(categories=(), mesh_paths=(f"block={tmp_path / 'brick.obj'}",), background_dir=str(photos),
                 photo_probability=1.0, photometric=False)
    ds = SyntheticDataset(cfg, seed=0, length=2)
    s = ds[0]
    assert s["category"] == "block" and s["mesh_id"] == "brick"
    background = s["image"][:, ~s["mask"]]
    assert torch.allclose(background, torch.tensor([10, 200, 30]).float().div(255)[:, None], atol=1e-5)


# --------------------------------------------------------------------------- export and read-back


def test_export_resume_and_read_back(tmp_path):
    cfg = config(occlusion=1)
    out = tmp_path / "export"
    assert export(cfg, out, 3, seed=4, progress=False) == 3
    manifest = out / "manifest.jsonl"
    first = manifest.read_text().splitlines()
    assert len(first) == 3
    # simulate a kill while appending the 4th line: a truncated last line
    with open(manifest, "a") as fh:
        fh.write('{"index": 3, "image": "images/0000')
    (out / "images" / ".000003.png.tmp").write_bytes(b"partial")
    assert export(cfg, out, 6, seed=4, progress=False) == 3
    lines = manifest.read_text().splitlines()
    assert lines[:3] == first and len(lines) == 6
    records = [json.loads(line) for line in lines]
    assert sorted(r["index"] for r in records) == list(range(6))
    assert export(cfg, out, 6, seed=4, progress=False) == 0  # nothing left to do
    # an export written before a config field existed resumes (the field at its default)
    meta = json.loads((out / "config.json").read_text())
    del meta["config"]["lighting"]
    (out / "config.json").write_text(json.dumps(meta))
    assert export(cfg, out, 7, seed=4, progress=False) == 1

    ds = SyntheticDataset(cfg, seed=4, length=6)
    folder = SyntheticFolder(out)
    assert len(folder) == 7 and folder.indices == list(range(7))
    for i in range(6):
        got, want = folder[i], ds[i]
        check_sample(got)
        assert got.keys() == want.keys() - {"occluder_mask"}  # not exported (documented)
        assert float((got["image"] - want["image"]).abs().max()) <= 0.5 / 255 + 1e-6
        for k in ("mask", "K", "R", "t", "bbox"):
            assert torch.equal(got[k], want[k]), k
        for k in ("azimuth", "elevation", "theta"):
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-12)
        for k in ("distance", "category", "mesh_id", "occlusion"):
            assert got[k] == want[k], k


def test_export_refuses_a_folder_with_another_config(tmp_path):
    export(config(), tmp_path, 1, seed=0, progress=False)
    with pytest.raises(ValueError, match="different config"):
        export(config(), tmp_path, 2, seed=1, progress=False)


def test_export_with_worker_processes(tmp_path):
    cfg = config()
    assert export(cfg, tmp_path, 4, seed=2, workers=2, progress=False) == 4
    folder = SyntheticFolder(tmp_path)
    ds = SyntheticDataset(cfg, seed=2, length=4)
    assert folder.indices == [0, 1, 2, 3]
    assert torch.equal(folder[2]["mask"], ds[2]["mask"])


# --------------------------------------------------------------------------- command line


def test_cli_export_and_contact_sheet(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["--out", str(out), "--n", "2", "--size", "32", "--categories", "mug", "--occlusion-level", "1",
                 "--shapes-per-category", "1", "--no-progress", "--lighting", "full", "--room-probability", "1"])
    assert code == 0
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["occlusion"] == 1 and config["lighting"] == "full" and config["room_probability"] == 1.0
    sheet = tmp_path / "sheet.png"
    code = main(["contact-sheet", "--out", str(sheet), "--size", "24", "--categories", "car", "mug",
                 "--levels", "0", "2", "--per-level", "1", "--shapes-per-category", "1"])
    assert code == 0
    with Image.open(sheet) as im:
        w, h = im.size
    assert w > 2 * 24 and h > 2 * 24


@pytest.mark.parametrize(
    "args, match",
    [
        (["--n", "-3"], "--n"),
        (["--n", "2", "--size", "0"], "--size"),
        (["--n", "2", "--categories", "spaceship"], "spaceship"),
        (["--n", "2", "--occlusion-level", "7"], "--occlusion-level"),
        (["--n", "2", "--lighting", "phong"], "--lighting"),
        (["--n", "2", "--room-probability", "2"], "room_probability"),
    ],
)
def test_cli_bad_numbers_exit_2_with_one_line(tmp_path, capsys, args, match):
    assert main(["--out", str(tmp_path / "x")] + args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err
    assert not (tmp_path / "x").exists()


def test_cli_missing_background_folder_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "datasets.synthetic", "--out", str(tmp_path / "o"), "--n", "1",
         "--backgrounds", str(tmp_path / "no-such-folder")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-folder" in lines[0] and "background folder not found" in lines[0]
    assert not (tmp_path / "o").exists()


def test_center_on_box_puts_the_2d_box_centre_where_object_puts_the_object_centre():
    # no jitter: "box" centres the object's (amodal) 2D box in the image, "object" the
    # projection of the mesh frame's origin; the same scene otherwise
    size = (96, 96)
    on_box = SyntheticDataset(config(image_size=size, center_jitter=0.0, center_on="box"), seed=4, length=6)
    on_obj = SyntheticDataset(config(image_size=size, center_jitter=0.0), seed=4, length=6)
    gaps = []
    for i in range(6):
        b, o = on_box[i], on_obj[i]
        assert torch.equal(b["R"], o["R"]) and torch.equal(b["t"], o["t"]) and b["K"][0, 0] == o["K"][0, 0]
        x0, y0, x1, y1 = b["bbox"].tolist()
        assert abs((x0 + x1) / 2 - 47.5) <= 1.0 and abs((y0 + y1) / 2 - 47.5) <= 1.0  # pixel-box rounding
        assert float(o["K"][0, 2]) == 47.5 and float(o["K"][1, 2]) == 47.5
        x0, y0, x1, y1 = o["bbox"].tolist()
        gaps.append(max(abs((x0 + x1) / 2 - 47.5), abs((y0 + y1) / 2 - 47.5)))
    assert max(gaps) > 1.5  # "object" leaves the box off centre in some views
    with pytest.raises(ValueError, match="center_on"):
        config(center_on="middle")


def test_rooms_change_only_the_background():
    # the same scenes (poses, object pixels, occluders), in front of a floor and a wall
    plain = SyntheticDataset(config(occlusion=1, photometric=False), seed=2, length=6)
    rooms = SyntheticDataset(config(occlusion=1, photometric=False, room_probability=1.0), seed=2, length=6)
    for i in range(6):
        a, b = plain[i], rooms[i]
        for key in ("R", "t", "K", "mask", "occluder_mask", "bbox"):
            assert torch.equal(a[key], b[key]), key
        assert plain.sample_params(i).room is None and isinstance(rooms.sample_params(i).room, rz.RoomParams)
        shown = a["mask"] & ~a["occluder_mask"]
        assert torch.equal(a["image"][:, shown], b["image"][:, shown])
        assert_same(b, rooms[i])  # replayable
    # a floor or a wall covers part of the background in nearly every room
    behind = [~(plain[i]["mask"] | plain[i]["occluder_mask"]) for i in range(6)]
    changed = [float((plain[i]["image"] != rooms[i]["image"]).any(0)[behind[i]].float().mean()) for i in range(6)]
    assert sum(c > 0.2 for c in changed) >= 4
    some = SyntheticDataset(config(room_probability=0.5), seed=2, length=40)
    assert 8 < sum(some.sample_params(i).room is not None for i in range(40)) < 32
    with pytest.raises(ValueError, match="room_probability"):
        config(room_probability=1.5)


def test_zoomed_out_renders_move_the_camera_back_and_keep_every_other_choice():
    plain = SyntheticDataset(config(), seed=3, length=24)
    zoomed = SyntheticDataset(config(zoom_out_probability=1.0, zoom_out_range=(2.0, 2.0)), seed=3, length=24)
    for i in range(4):
        a, b = plain.sample_params(i), zoomed.sample_params(i)
        assert b.distance == pytest.approx(2.0 * a.distance)
        assert (a.azimuth, a.elevation, a.theta, a.focal, a.mesh_key) == (b.azimuth, b.elevation, b.theta, b.focal,
                                                                          b.mesh_key)
        assert a.background == b.background and a.appearance == b.appearance
        # the centre's offset from the image centre doubles (0.08 -> 0.16 of the side)
        centre = (SIZE[1] - 1) / 2.0
        assert b.principal_point[0] - centre == pytest.approx(2.0 * (a.principal_point[0] - centre))
        side = lambda s: float(max(s["bbox"][2] - s["bbox"][0], s["bbox"][3] - s["bbox"][1]))
        assert side(zoomed[i]) < 0.65 * side(plain[i])
    # factors from the range, a share of the renders, the rest as without
    some = SyntheticDataset(config(zoom_out_probability=0.5, zoom_out_range=(1.5, 3.0)), seed=3, length=24)
    ratios = [some.sample_params(i).distance / plain.sample_params(i).distance for i in range(24)]
    assert 5 < sum(r > 1 for r in ratios) < 19
    assert all(r == 1.0 or 1.5 - 1e-9 <= r <= 3.0 + 1e-9 for r in ratios)
    with pytest.raises(ValueError, match="zoom_out_range"):
        config(zoom_out_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="zoom_out_probability"):
        config(zoom_out_probability=1.5)


def test_background_scale_range_sets_the_pattern_scale():
    coarse = SyntheticDataset(config(background_scale_range=(0.8, 1.2)), seed=4, length=12)
    scales = [coarse.sample_params(i).background.scale for i in range(12)]
    assert all(0.8 <= s <= 1.2 for s in scales) and len(set(scales)) > 1
    default = SyntheticDataset(config(), seed=4, length=12)
    assert all(0.03 <= default.sample_params(i).background.scale <= 0.4 for i in range(12))
    with pytest.raises(ValueError, match="background_scale_range"):
        config(background_scale_range=(0.0, 0.5))


def test_full_lighting_changes_only_the_shading():
    # the same scenes (poses, masks, occluders), shaded with highlights, shadows and gamma
    plain = SyntheticDataset(config(occlusion=1), seed=2, length=6)
    full = SyntheticDataset(config(occlusion=1, lighting="full"), seed=2, length=6)
    changed = 0
    for i in range(6):
        a, b = plain[i], full[i]
        for key in ("R", "t", "K", "mask", "occluder_mask", "bbox"):
            assert torch.equal(a[key], b[key]), key
        assert a["occlusion"] == b["occlusion"]
        assert plain.sample_params(i).shading is None
        shading = full.sample_params(i).shading
        assert isinstance(shading, rz.ShadingParams)
        changed += int(not torch.equal(a["image"], b["image"]))
        assert_same(b, full[i])  # replayable
    assert changed == 6
