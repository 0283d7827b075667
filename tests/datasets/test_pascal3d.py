"""Tests for datasets/pascal3d.py: the PASCAL3D+ projection conversion, the loader (splits,
sources, categories, samples, meshes), Occluded-PASCAL3D+, and bad data."""

from __future__ import annotations

import math
import shutil
import warnings

import numpy as np
import pytest
import torch

from datasets.pascal3d import (
    PASCAL3D_CATEGORIES,
    Pascal3DPlus,
    pascal_to_pose,
)
from datasets.realdata import Z_UP_TO_Y_UP, DatasetError
from datasets.schema import check_sample
from render import angles_to_pose, camera_center, pose_to_angles, project_points
from tests.datasets.fixtures import (
    CAD_HI,
    CAD_LO,
    box_mesh,
    make_occluded,
    make_pascal3d,
    pascal_object,
    project_3d_matlab,
    viewpoint,
    write_record,
)
from tests.helpers import assert_close

def _cad_points_to_ours(x3d: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x3d) @ Z_UP_TO_Y_UP.T


# -------------------------------------------------------------------------- conversion


def test_pascal_to_pose_matches_toolbox_projection():
    rng = np.random.default_rng(0)
    for _ in range(50):
        vp = dict(
            azimuth=rng.uniform(-360, 360), elevation=rng.uniform(-89, 89),
            theta=rng.uniform(-180, 180), distance=rng.uniform(3, 20), focal=rng.uniform(0.5, 2),
            viewport=rng.choice([2000.0, 3000.0]), px=rng.uniform(0, 500), py=rng.uniform(0, 400),
        )
        x3d = rng.uniform(-1, 1, size=(40, 3))
        expected = project_3d_matlab(x3d, **vp) - 1.0  # MATLAB 1-based -> our 0-based
        K, R, t = pascal_to_pose(**vp)
        uv, z = project_points(_cad_points_to_ours(x3d)[None], K, R, t)
        assert bool((z > 0).all())
        assert_close(uv[0], torch.from_numpy(expected), atol=1e-4, rtol=0)


def test_pascal_to_pose_at_the_poles_matches_toolbox():
    x3d = np.random.default_rng(1).uniform(-1, 1, size=(10, 3))
    for elevation in (90.0, -90.0):
        vp = dict(azimuth=33.0, elevation=elevation, theta=7.0, distance=5.0, focal=1.0,
                  viewport=3000.0, px=100.0, py=80.0)
        K, R, t = pascal_to_pose(**vp)
        uv, _ = project_points(_cad_points_to_ours(x3d)[None], K, R, t)
        assert_close(uv[0], torch.from_numpy(project_3d_matlab(x3d, **vp) - 1.0), atol=1e-4, rtol=0)


def test_pascal_to_pose_angle_mapping():
    """Our (a, e, theta, d) = PASCAL3D+'s (a, e, -theta, d), in radians."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        a, e, th, d = rng.uniform(-179, 179), rng.uniform(-80, 80), rng.uniform(-170, 170), rng.uniform(2, 9)
        K, R, t = pascal_to_pose(a, e, th, d, 1.0, 3000.0, 10.0, 10.0)
        angles = torch.tensor([math.radians(a), math.radians(e), math.radians(-th), d], dtype=torch.float64)
        R_ref, t_ref = angles_to_pose(*angles)
        assert_close(R, R_ref, atol=1e-12, rtol=0)
        assert_close(t, t_ref, atol=1e-12, rtol=0)
        got = [float(v) for v in pose_to_angles(R, t)]
        assert got == pytest.approx([math.radians(a), math.radians(e), math.radians(-th), d], abs=1e-9)
        assert K[0, 0].item() == K[1, 1].item() == 3000.0


def test_pascal_azimuth_zero_looks_at_the_cad_front_from_our_plus_z():
    """PASCAL3D+ azimuth 0 puts the camera on the CAD's -y axis; that is our +z (our front)."""
    K, R, t = pascal_to_pose(0.0, 0.0, 0.0, 5.0, 1.0, 3000.0, 50.0, 50.0)
    assert_close(camera_center(R, t), torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64), atol=1e-12, rtol=0)
    assert_close(Z_UP_TO_Y_UP @ torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64),
                 torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    # the CAD's up (+z) appears up in the image, its +x to the right, as in the toolbox
    pts = np.array([[0.0, 0.0, 0.5], [0.5, 0.0, 0.0]])
    uv, _ = project_points(_cad_points_to_ours(pts)[None], K, R, t)
    assert uv[0, 0, 1] < K[1, 2] and uv[0, 1, 0] > K[0, 2]


def test_z_up_to_y_up_is_a_rotation():
    assert_close(Z_UP_TO_Y_UP @ Z_UP_TO_Y_UP.T, torch.eye(3, dtype=torch.float64))
    assert torch.linalg.det(Z_UP_TO_Y_UP).item() == pytest.approx(1.0)


def test_pascal_to_pose_rejects_bad_values():
    with pytest.raises(ValueError, match="distance: expected a positive number"):
        pascal_to_pose(0.0, 0.0, 0.0, 0.0, 1.0, 3000.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="focal: expected a finite number"):
        pascal_to_pose(0.0, 0.0, 0.0, 1.0, float("nan"), 3000.0, 1.0, 1.0)


# ------------------------------------------------------------------------------ loader


@pytest.fixture
def p3d(tmp_path):
    info = make_pascal3d(tmp_path)
    return tmp_path, info


def test_index_by_split_source_and_category(p3d):
    root, _ = p3d
    train = Pascal3DPlus(root, "train", categories=["aeroplane", "car"])
    names = [(train.annotation(i).category, train.annotation(i).annotation.split("/")[-1]) for i in range(len(train))]
    # n01: 1 aeroplane (the person is another class); n02: 1 of 2 aeroplanes has a viewpoint;
    # VOC 2008_000001; car n03
    assert names == [("aeroplane", "n01.mat"), ("aeroplane", "n02.mat"),
                     ("aeroplane", "2008_000001.mat"), ("car", "n03.mat")]
    assert train.num_unannotated == 1
    assert train.categories == ["aeroplane", "car"]
    both = ["aeroplane", "car"]
    assert len(Pascal3DPlus(root, "train", both, sources=("imagenet",))) == 3
    assert len(Pascal3DPlus(root, "train", both, sources=("pascal",))) == 1
    cars = Pascal3DPlus(root, "train", categories=["car"])
    assert cars.categories == ["car"] and len(cars) == 1
    val = Pascal3DPlus(root, "val", categories="aeroplane")
    assert [val.annotation(i).annotation.split("/")[-1] for i in range(len(val))] == ["n04.mat", "2008_000002.mat"]


def test_all_categories_by_default(p3d):
    root, _ = p3d
    dataset = Pascal3DPlus(root, "train")
    assert dataset.categories == list(PASCAL3D_CATEGORIES)
    assert len(dataset) == 4


def test_sample_values(p3d):
    root, info = p3d
    dataset = Pascal3DPlus(root, "train", categories=["aeroplane"], sources=("imagenet",))
    sample = dataset[0]
    check_sample(sample)
    vp = info["viewpoints"]["n01"]
    K, R, t = pascal_to_pose(vp["azimuth"], vp["elevation"], vp["theta"], vp["distance"],
                             vp["focal"], vp["viewport"], vp["px"], vp["py"])
    assert_close(sample["K"], K.float())
    assert_close(sample["R"], R.float())
    assert_close(sample["t"], t.float())
    assert sample["K"].tolist()[0] == [3000.0, 0.0, 14.0]  # px = 15 (1-based) -> 14
    assert sample["azimuth"] == pytest.approx(math.radians(30.0))
    assert sample["elevation"] == pytest.approx(math.radians(15.0))
    assert sample["theta"] == pytest.approx(math.radians(-5.0))
    assert sample["distance"] == pytest.approx(6.0)
    assert sample["bbox"].tolist() == [1.0, 2.0, 29.0, 19.0]  # (2, 3, 30, 20) 1-based
    assert sample["category"] == "aeroplane" and sample["mesh_id"] == "aeroplane/02"
    assert sample["image"].shape == (3, 24, 32) and sample["image"].dtype == torch.float32
    assert "mask" not in sample and "occlusion" not in sample
    obj = dataset.annotation(0)
    assert obj.occluded and not obj.truncated and obj.cad_index == 2 and obj.image.endswith("n01.JPEG")
    check_sample(dataset[1])


def test_coarse_viewpoint_is_used_when_fine_is_empty(p3d):
    root, _ = p3d
    sample = Pascal3DPlus(root, "train", categories=["car"])[0]
    assert sample["azimuth"] == pytest.approx(math.radians(90.0))
    assert sample["elevation"] == pytest.approx(math.radians(10.0))
    assert sample["theta"] == pytest.approx(0.0)
    assert Pascal3DPlus(root, "train", categories=["car"]).annotation(0).viewpoint.coarse


def test_sample_pose_projects_cad_where_the_toolbox_does(p3d):
    root, info = p3d
    dataset = Pascal3DPlus(root, "train", categories=["aeroplane"])
    verts_cad, _ = box_mesh(CAD_LO, CAD_HI)
    for i in range(len(dataset)):
        sample, obj = dataset[i], dataset.annotation(i)
        mesh = dataset.mesh(sample["mesh_id"])
        uv, _ = project_points(mesh.verts[None], sample["K"], sample["R"], sample["t"])
        vp = obj.viewpoint
        expected = project_3d_matlab(verts_cad, vp.azimuth, vp.elevation, vp.theta, vp.distance,
                                     vp.focal, vp.viewport, vp.px, vp.py) - 1.0
        assert_close(uv[0], torch.from_numpy(expected).float(), atol=2e-2, rtol=0)


def test_mesh_is_converted_to_y_up(p3d):
    root, _ = p3d
    dataset = Pascal3DPlus(root, "val")
    mesh = dataset.mesh("aeroplane/01")
    verts_cad, faces = box_mesh(CAD_LO, CAD_HI)
    expected = torch.from_numpy(np.stack([verts_cad[:, 0], verts_cad[:, 2], -verts_cad[:, 1]], 1)).float()
    assert_close(mesh.verts, expected)
    assert mesh.verts[:, 1].min().item() == pytest.approx(0.0)  # stands on y = 0, up is +y
    assert mesh.verts[:, 1].max().item() == pytest.approx(0.8)
    assert torch.equal(mesh.faces, torch.from_numpy(faces))
    assert dataset.mesh("aeroplane/01") is mesh  # cached
    with pytest.raises(ValueError, match="mesh_id: expected '<category>/<NN>'"):
        dataset.mesh("aeroplane-01")


def test_argument_errors(p3d):
    root, _ = p3d
    with pytest.raises(ValueError, match="split: expected 'train' or 'val'"):
        Pascal3DPlus(root, "test")
    with pytest.raises(ValueError, match=r"unknown PASCAL3D\+ categories \['cow'\]"):
        Pascal3DPlus(root, "train", categories=["cow"])
    with pytest.raises(ValueError, match="occlusion_level: expected 0, 1, 2 or 3"):
        Pascal3DPlus(root, "val", occlusion_level=4)
    with pytest.raises(ValueError, match="exists for split 'val'"):
        Pascal3DPlus(root, "train", occlusion_level=1)
    with pytest.raises(ValueError, match="sources: expected some of"):
        Pascal3DPlus(root, "train", sources=("coco",))


# -------------------------------------------------------------------- Occluded-PASCAL3D+


def test_occluded_level_sample(p3d):
    root, _ = p3d
    occ = make_occluded(root, level=2)
    dataset = Pascal3DPlus(root, "val", categories=["aeroplane"], occlusion_level=2)
    assert len(dataset) == 1
    sample = dataset[0]
    check_sample(sample)
    assert dataset.annotation(0).image.endswith("images/aeroplaneFGL2_BGL2/n04.JPEG")
    assert torch.equal(sample["mask"], torch.from_numpy(occ["mask"]))
    assert sample["occlusion"] == pytest.approx(occ["occlusion"])
    # the pose comes from the original PASCAL3D+ annotation of n04
    plain = Pascal3DPlus(root, "val", categories=["aeroplane"], sources=("imagenet",))[0]
    for key in ("K", "R", "t", "bbox"):
        assert torch.equal(sample[key], plain[key])
    assert (sample["azimuth"], sample["mesh_id"]) == (plain["azimuth"], plain["mesh_id"])
    assert float((sample["image"] * 255 - torch.from_numpy(occ["image"]).permute(2, 0, 1)).abs().mean()) < 4


def test_occluded_errors(p3d):
    root, _ = p3d
    with pytest.raises(DatasetError, match=r"lists/aeroplaneFGL1_BGL1\.txt: no such list file"):
        Pascal3DPlus(root, "val", categories=["aeroplane"], occlusion_level=1)
    make_occluded(root, level=1)
    npz = root / "OccludedPASCAL3D" / "annotations" / "aeroplaneFGL1_BGL1" / "n04.npz"
    np.savez(npz, mask=np.zeros((5, 5), np.uint8), occluder_mask=np.zeros((5, 5), bool))
    dataset = Pascal3DPlus(root, "val", categories=["aeroplane"], occlusion_level=1)
    with pytest.raises(DatasetError, match=r"n04\.npz: mask: expected the image size \(24, 32\), got \(5, 5\)"):
        dataset[0]
    npz.write_bytes(b"not a zip file")
    with pytest.raises(DatasetError, match=r"n04\.npz: cannot read npz file"):
        dataset[0]
    npz.unlink()
    with pytest.raises(DatasetError, match=r"n04\.npz: no such occluder annotation file"):
        Pascal3DPlus(root, "val", categories=["aeroplane"], occlusion_level=1)


# ---------------------------------------------------------------------------- bad data


def test_missing_image_names_the_file(p3d):
    root, _ = p3d
    (root / "Images" / "aeroplane_imagenet" / "n02.JPEG").unlink()
    with pytest.raises(DatasetError, match=r"aeroplane_imagenet/n02\.JPEG: no such image file"):
        Pascal3DPlus(root, "train")


def test_missing_annotation_names_the_file(p3d):
    root, _ = p3d
    (root / "Annotations" / "aeroplane_imagenet" / "n01.mat").unlink()
    with pytest.raises(DatasetError, match=r"aeroplane_imagenet/n01\.mat: no such annotation file"):
        Pascal3DPlus(root, "train")


def test_corrupt_annotation_names_the_file(p3d):
    root, _ = p3d
    (root / "Annotations" / "car_imagenet" / "n03.mat").write_bytes(b"MATLAB garbage" * 20)
    with pytest.raises(DatasetError, match=r"car_imagenet/n03\.mat: cannot read MAT file"):
        Pascal3DPlus(root, "train")


def test_malformed_object_names_the_field(p3d):
    root, info = p3d
    vp = dict(info["viewpoints"]["n04"])
    vp["focal"] = -1.0
    write_record(root / "Annotations" / "aeroplane_imagenet" / "n04.mat", "n04.JPEG",
                 [pascal_object("aeroplane", (1, 1, 5, 5), vp, 1)])
    with pytest.raises(DatasetError, match=r"n04\.mat: objects\(1\)\.viewpoint\.focal: expected a positive"):
        Pascal3DPlus(root, "val")
    write_record(root / "Annotations" / "aeroplane_imagenet" / "n04.mat", "n04.JPEG",
                 [pascal_object("aeroplane", (1, 1, 5, 5), viewpoint(None, 3.0, 0.0, 5.0, azimuth_coarse=None))])
    with pytest.raises(DatasetError, match=r"n04\.mat: objects\(1\)\.viewpoint: empty azimuth and no azimuth_coarse"):
        Pascal3DPlus(root, "val")


def test_missing_cad_names_the_file(p3d):
    root, _ = p3d
    (root / "CAD" / "aeroplane" / "02.off").unlink()
    with pytest.raises(DatasetError, match=r"CAD/aeroplane/02\.off: no such CAD file"):
        Pascal3DPlus(root, "train")


def test_corrupt_image_and_cad_name_the_file(p3d):
    root, _ = p3d
    image = root / "Images" / "aeroplane_imagenet" / "n04.JPEG"
    data = image.read_bytes()
    image.write_bytes(b"definitely not a JPEG")
    with pytest.raises(DatasetError, match=r"n04\.JPEG: cannot read image"):
        Pascal3DPlus(root, "val")
    image.write_bytes(data[:-40])  # valid header, truncated pixel data
    dataset = Pascal3DPlus(root, "val", sources=("imagenet",))
    with pytest.raises(DatasetError, match=r"n04\.JPEG: cannot read image"):
        dataset[0]
    (root / "CAD" / "aeroplane" / "01.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 nan\n")
    with pytest.raises(DatasetError, match=r"CAD/aeroplane/01\.off: "):
        dataset.mesh("aeroplane/01")


def test_missing_split_list_names_the_file(p3d):
    root, _ = p3d
    (root / "Image_sets" / "car_imagenet_val.txt").unlink()
    with pytest.raises(DatasetError, match=r"car_imagenet_val\.txt: no such list file"):
        Pascal3DPlus(root, "val", skip_invalid=True)


def test_skip_invalid_counts_and_warns(p3d):
    root, _ = p3d
    (root / "Images" / "aeroplane_imagenet" / "n01.JPEG").unlink()
    (root / "Annotations" / "car_imagenet" / "n03.mat").write_bytes(b"garbage")
    (root / "CAD" / "aeroplane" / "01.off").unlink()  # n02's aeroplane and 2008_000001
    with pytest.warns(UserWarning, match=r"skipped 4 of 4 items; first: .*n01\.JPEG: no such image file"):
        dataset = Pascal3DPlus(root, "train", skip_invalid=True)
    assert len(dataset) == 0
    assert [e.problem for e in dataset.skipped] == [
        "no such image file", "no such CAD file", "no such CAD file",
        dataset.skipped[3].problem,
    ]
    assert dataset.skipped[3].problem.startswith("cannot read MAT file")
    shutil.copy(root / "CAD" / "aeroplane" / "02.off", root / "CAD" / "aeroplane" / "01.off")
    with pytest.warns(UserWarning, match=r"skipped 2 of 4 items"):
        dataset = Pascal3DPlus(root, "train", skip_invalid=True)
    assert len(dataset) == 2
    for i in range(len(dataset)):
        check_sample(dataset[i])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pascal3DPlus(root, "val", skip_invalid=True)  # nothing to skip: no warning
