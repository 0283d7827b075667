"""Tests for datasets/pix3d.py: the Blender-camera conversion, samples, meshes, bad data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from datasets.pix3d import PIX3D_TO_OURS, Pix3D, pix3d_to_pose
from datasets.realdata import DatasetError
from datasets.schema import check_sample
from render import camera_center, project_points
from tests.datasets.fixtures import blender_project, make_pix3d, rotation_about
from tests.helpers import assert_close


@pytest.fixture
def pix(tmp_path):
    return tmp_path, make_pix3d(tmp_path)


def _ours(verts: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(verts) @ PIX3D_TO_OURS.T


# -------------------------------------------------------------------------- conversion


def test_pix3d_to_pose_matches_blender_projection():
    rng = np.random.default_rng(0)
    verts = rng.uniform(-0.5, 0.5, size=(30, 3))
    for _ in range(20):
        rot = rotation_about("y", rng.uniform(-math.pi, math.pi)) @ rotation_about("x", rng.uniform(-0.6, 0.6)) \
            @ rotation_about("z", rng.uniform(-0.3, 0.3))
        trans = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(2.0, 6.0)])
        focal = rng.uniform(20, 80)
        size = (int(rng.integers(20, 400)), int(rng.integers(20, 400)))  # (H, W), either aspect
        K, R, t = pix3d_to_pose(rot, trans, focal, size)
        uv, z = project_points(_ours(verts)[None], K, R, t)
        assert bool((z > 0).all())
        assert_close(uv[0], torch.from_numpy(blender_project(verts, rot, trans, focal, size)),
                     atol=1e-6, rtol=0)


def test_pix3d_canonical_view_is_our_azimuth_zero():
    """Identity rot_mat: the camera sees the model's -z side, x leftward, y up (README)."""
    K, R, t = pix3d_to_pose(np.eye(3), [0.0, 0.0, 3.0], 35.0, (100, 100))
    assert_close(camera_center(R, t), torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64))
    pts = np.array([[0.3, 0.0, 0.0], [0.0, 0.3, 0.0]])  # Pix3D +x, +y
    uv, _ = project_points(_ours(pts)[None], K, R, t)
    assert uv[0, 0, 0] < K[0, 2]  # Pix3D +x appears on the left
    assert uv[0, 1, 1] < K[1, 2]  # +y appears up


def test_pix3d_to_pose_rejects_bad_input():
    with pytest.raises(ValueError, match="focal_length: expected a positive number"):
        pix3d_to_pose(np.eye(3), [0, 0, 1], 0.0, (10, 10))
    with pytest.raises(ValueError, match=r"expected shapes \(3, 3\) and \(3,\)"):
        pix3d_to_pose(np.eye(2), [0, 0, 1], 35.0, (10, 10))


# ------------------------------------------------------------------------------ loader


def test_samples_match_the_blender_scene(pix):
    root, info = pix
    dataset = Pix3D(root)
    assert len(dataset) == 3 and dataset.categories == ["chair", "table"]
    for i, entry in enumerate(info["entries"]):
        sample = dataset[i]
        check_sample(sample)
        w, h = entry["img_size"]
        assert sample["image"].shape == (3, h, w) and sample["mask"].shape == (h, w)
        assert sample["mask"].any() and sample["category"] == entry["category"]
        assert sample["mesh_id"] == entry["model"][len("model/"):]
        assert sample["bbox"].tolist() == [float(v) for v in entry["bbox"]]
        assert sample["K"][0, 0].item() == pytest.approx(entry["focal_length"] * w / 32)
        assert sample["K"][:2, 2].tolist() == [(w - 1) / 2, (h - 1) / 2]
        mesh = dataset.mesh(sample["mesh_id"])
        uv, _ = project_points(mesh.verts[None], sample["K"], sample["R"], sample["t"])
        expected = blender_project(info["verts"], np.array(entry["rot_mat"]), np.array(entry["trans_mat"]),
                                   entry["focal_length"], (h, w))
        assert_close(uv[0], torch.from_numpy(expected).float(), atol=1e-3, rtol=0)
        # the mask covers the projected model (the fixture draws its bounding rectangle)
        u, v = np.clip(np.round(expected).astype(int), 0, [w - 1, h - 1]).T
        assert bool(sample["mask"][v, u].all())
    assert dataset.annotation(1).occluded and not dataset.annotation(0).occluded


def test_sample_angles_describe_R(pix):
    root, _ = pix
    sample = Pix3D(root, ["table"])[0]  # identity rot_mat: the canonical view
    assert sample["azimuth"] == pytest.approx(0.0, abs=1e-6)
    assert sample["elevation"] == pytest.approx(0.0, abs=1e-6)
    assert sample["theta"] == pytest.approx(0.0, abs=1e-6)
    assert sample["distance"] == pytest.approx(2.5)
    chair = Pix3D(root, ["chair"])[1]  # rot_mat = Ry(-2.5): the camera moves by +2.5 rad
    assert chair["azimuth"] == pytest.approx(2.5, abs=1e-5)


def test_mesh_in_our_frame(pix):
    root, info = pix
    dataset = Pix3D(root, ["chair"])
    mesh = dataset.mesh("chair/IKEA_A/model.obj")
    expected = info["verts"] * np.array([-1.0, 1.0, -1.0])
    assert_close(mesh.verts, torch.from_numpy(expected).float())
    assert mesh.verts[:, 1].min().item() == pytest.approx(0.0)  # +y up, as in Pix3D
    assert dataset.mesh("chair/IKEA_A/model.obj") is mesh


def test_category_filter(pix):
    root, _ = pix
    chairs = Pix3D(root, categories=["chair"])
    assert len(chairs) == 2 and chairs.categories == ["chair"]
    assert len(Pix3D(root, categories="table")) == 1


# ---------------------------------------------------------------------------- bad data


def test_bad_files_name_the_file(pix):
    root, info = pix
    with pytest.raises(DatasetError, match=r"missing\.json: no such annotation file"):
        Pix3D(root, annotation_file="missing.json")
    (root / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"bad\.json: cannot read JSON"):
        Pix3D(root, annotation_file="bad.json")
    (root / "img" / "chair" / "0002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"img/chair/0002\.jpg: no such image file"):
        Pix3D(root)
    (root / "model" / "table" / "IKEA_C" / "model.obj").unlink()
    with pytest.raises(DatasetError, match=r"model/table/IKEA_C/model\.obj: no such model file"):
        Pix3D(root, ["table"])


def test_malformed_entries_name_the_field(pix):
    root, info = pix
    entries = info["entries"]
    entries[0]["rot_mat"] = [[1, 0, 0], [0, 2, 0], [0, 0, 1]]
    entries[1].pop("focal_length")
    entries[2]["img_size"] = [21, 20]
    (root / "pix3d.json").write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"pix3d\.json: entry 0 \(img/chair/0001\.png\): rot_mat: expected a rotation"):
        Pix3D(root)
    with pytest.warns(UserWarning, match="skipped 3 of 3 items"):
        skipped = Pix3D(root, skip_invalid=True).skipped
    assert str(skipped[1]).endswith("pix3d.json: entry 1 (img/chair/0002.jpg): missing key 'focal_length'")
    with pytest.raises(DatasetError, match=r"img/table/0001\.jpg: image is 20x20 \(W x H\) but img_size says 21x20"):
        Pix3D(root, ["table"])


def test_corrupt_image_and_model(pix):
    root, _ = pix
    image = root / "img" / "chair" / "0001.png"
    image.write_bytes(image.read_bytes()[:60])
    dataset = Pix3D(root, ["chair"])
    with pytest.raises(DatasetError, match=r"img/chair/0001\.png: cannot read image"):
        dataset[0]
    (root / "model" / "chair" / "IKEA_B" / "model.obj").write_text("v 0 0 0\nv 1 0 0\n")
    with pytest.raises(DatasetError, match=r"model/chair/IKEA_B/model\.obj: "):
        dataset.mesh("chair/IKEA_B/model.obj")


def test_skip_invalid_counts_and_warns(pix):
    root, info = pix
    entries = info["entries"]
    entries[1].pop("focal_length")
    (root / "pix3d.json").write_text(json.dumps(entries))
    (root / "mask" / "table" / "0001.png").unlink()
    with pytest.warns(UserWarning, match=r"skipped 2 of 3 items; first: .*pix3d\.json: entry 1 "
                                         r"\(img/chair/0002\.jpg\): missing key 'focal_length'"):
        dataset = Pix3D(root, skip_invalid=True)
    assert len(dataset) == 1
    check_sample(dataset[0])
    assert dataset.skipped[1].problem == "no such mask file"
