"""Tests for datasets/objectnet3d.py: splits, category groups, samples, meshes, bad data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datasets.objectnet3d import NOVEL_CATEGORIES, ObjectNet3D
from datasets.pascal3d import pascal_to_pose
from datasets.realdata import DatasetError
from datasets.schema import check_sample
from render import project_points
from tests.datasets.fixtures import CAD_HI, CAD_LO, box_mesh, make_objectnet3d, project_3d_matlab
from tests.helpers import assert_close


@pytest.fixture
def on3d(tmp_path):
    return tmp_path, make_objectnet3d(tmp_path)


def test_novel_categories_constant():
    assert len(NOVEL_CATEGORIES) == 20 == len(set(NOVEL_CATEGORIES))
    assert {"bed", "filing_cabinet", "wheelchair", "iron", "tub"} <= set(NOVEL_CATEGORIES)


def test_splits_and_category_groups(on3d):
    root, _ = on3d
    train = ObjectNet3D(root, "train")
    assert [train.annotation(i).category for i in range(len(train))] == ["bed", "aeroplane", "toaster"]
    assert train.categories == ["aeroplane", "bed", "toaster"]
    assert train.num_unannotated == 1  # the second bed of n002 has no viewpoint
    assert len(ObjectNet3D(root, "val")) == 1
    assert len(ObjectNet3D(root, "trainval")) == 4
    assert ObjectNet3D(root, "test").annotation(0).category == "guitar"
    novel = ObjectNet3D(root, "trainval", "novel")
    assert sorted(novel.annotation(i).category for i in range(len(novel))) == ["bed", "iron"]
    assert novel.categories == sorted(NOVEL_CATEGORIES)
    base = ObjectNet3D(root, "trainval", "base")
    assert base.categories == ["aeroplane", "toaster"]
    picked = ObjectNet3D(root, "train", ["toaster"])
    assert len(picked) == 1 and picked.categories == ["toaster"]
    with pytest.raises(ValueError, match="split: expected one of"):
        ObjectNet3D(root, "minival")
    with pytest.raises(ValueError, match="categories: expected None, 'novel', 'base'"):
        ObjectNet3D(root, "train", "toaster")


def test_sample_values_and_projection(on3d):
    root, info = on3d
    dataset = ObjectNet3D(root, "train")
    verts_cad, _ = box_mesh(CAD_LO, CAD_HI)
    for i in range(len(dataset)):
        sample = dataset[i]
        check_sample(sample)
        obj = dataset.annotation(i)
        vp = info["viewpoints"][obj.category]
        K, R, t = pascal_to_pose(vp["azimuth"], vp["elevation"], vp["theta"], vp["distance"],
                                 vp["focal"], vp["viewport"], vp["px"], vp["py"])
        assert_close(sample["R"], R.float())
        assert_close(sample["t"], t.float())
        assert_close(sample["K"], K.float())
        assert sample["azimuth"] == pytest.approx(math.radians(vp["azimuth"]))
        assert sample["theta"] == pytest.approx(math.radians(-vp["theta"]))
        assert sample["mesh_id"] == f"{obj.category}/01"
        assert sample["bbox"].tolist() == [v - 1 for v in obj.bbox]
        mesh = dataset.mesh(sample["mesh_id"])
        uv, _ = project_points(mesh.verts[None], sample["K"], sample["R"], sample["t"])
        expected = project_3d_matlab(verts_cad, vp["azimuth"], vp["elevation"], vp["theta"],
                                     vp["distance"], vp["focal"], vp["viewport"], vp["px"], vp["py"]) - 1
        assert_close(uv[0], torch.from_numpy(expected).float(), atol=2e-2, rtol=0)
    assert dataset[0]["category"] == "bed" and dataset[0]["image"].shape == (3, 24, 32)


def test_mesh_is_y_up(on3d):
    root, _ = on3d
    mesh = ObjectNet3D(root, "val").mesh("iron/01")
    verts_cad, _ = box_mesh(CAD_LO, CAD_HI)
    expected = np.stack([verts_cad[:, 0], verts_cad[:, 2], -verts_cad[:, 1]], 1)
    assert_close(mesh.verts, torch.from_numpy(expected).float())
    with pytest.raises(ValueError, match="mesh_id: expected '<class>/<NN>'"):
        ObjectNet3D(root, "val").mesh("iron")


def test_bad_files_name_the_file(on3d):
    root, _ = on3d
    (root / "Images" / "n003.JPEG").unlink()
    with pytest.raises(DatasetError, match=r"Images/n003\.JPEG: no such image file"):
        ObjectNet3D(root, "val")
    (root / "Annotations" / "n004.mat").write_bytes(b"\x00" * 300)
    with pytest.raises(DatasetError, match=r"Annotations/n004\.mat: cannot read MAT file"):
        ObjectNet3D(root, "test")
    (root / "CAD" / "off" / "toaster" / "01.off").unlink()
    with pytest.raises(DatasetError, match=r"CAD/off/toaster/01\.off: no such CAD file"):
        ObjectNet3D(root, "train")
    (root / "Image_sets" / "val.txt").unlink()
    with pytest.raises(DatasetError, match=r"Image_sets/val\.txt: no such list file"):
        ObjectNet3D(root, "val", skip_invalid=True)
    (root / "CAD" / "off" / "bed" / "01.off").write_text("not an OFF file")
    with pytest.raises(DatasetError, match=r"CAD/off/bed/01\.off: "):
        ObjectNet3D(root, "train", ["bed"]).mesh("bed/01")


def test_corrupt_image_pixels_raise_on_access(on3d):
    root, _ = on3d
    image = root / "Images" / "n001.JPEG"
    image.write_bytes(image.read_bytes()[:-40])
    dataset = ObjectNet3D(root, "train")
    with pytest.raises(DatasetError, match=r"n001\.JPEG: cannot read image"):
        dataset[0]


def test_skip_invalid_counts_and_warns(on3d):
    root, _ = on3d
    (root / "Images" / "n001.JPEG").unlink()  # bed + aeroplane: one invalid item (the image)
    (root / "CAD" / "off" / "toaster" / "01.off").unlink()
    (root / "Annotations" / "n003.mat").unlink()
    with pytest.warns(UserWarning, match=r"skipped 3 of 3 items; first: .*n001\.JPEG: no such image file"):
        dataset = ObjectNet3D(root, "trainval", skip_invalid=True)
    assert len(dataset) == 0
    assert [e.problem for e in dataset.skipped] == [
        "no such image file", "no such CAD file", "no such annotation file"]
    with pytest.warns(UserWarning, match=r"skipped 1 of 1 items"):
        assert len(ObjectNet3D(root, "val", skip_invalid=True)) == 0
