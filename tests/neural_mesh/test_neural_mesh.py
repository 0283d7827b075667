"""Tests for neural_mesh/neural_mesh.py: construction, validation, save/load and its errors."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import trimesh
from safetensors.torch import load_file, save_file

from neural_mesh.neural_mesh import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    ModelError,
    NeuralMesh,
    mesh_hash,
)
from render import Mesh
from tests.helpers import assert_close


def _box_mesh() -> Mesh:
    box = trimesh.creation.box(extents=(2.0, 1.2, 1.6))
    return Mesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces), name="box")


def _sphere_mesh() -> Mesh:
    ico = trimesh.creation.icosphere(subdivisions=2)
    return Mesh(torch.tensor(ico.vertices, dtype=torch.float32), torch.tensor(ico.faces), name="sphere")


def _model(**kwargs) -> NeuralMesh:
    args = {"num_verts": 200, "feature_dim": 8, "clutter_size": 5, "generator": torch.Generator().manual_seed(0)}
    args.update(kwargs)
    return NeuralMesh.from_mesh(_box_mesh(), **args)


# -------------------------------------------------------------------------- construction


def test_from_mesh_cuboid_has_unit_features_and_meta():
    nm = _model()
    assert 180 <= nm.num_verts <= 220
    assert nm.features.shape == (nm.num_verts, 8) and nm.clutter.shape == (5, 8)
    assert_close(nm.features.norm(dim=1), torch.ones(nm.num_verts))
    assert_close(nm.clutter.norm(dim=1), torch.ones(5))
    assert nm.meta["kind"] == "cuboid" and nm.meta["source"] == "box"
    assert nm.meta["source_hash"] == mesh_hash(_box_mesh().verts, _box_mesh().faces)
    # the cuboid of a box is the box itself
    assert_close(nm.verts.amin(0), torch.tensor([-1.0, -0.6, -0.8]), atol=1e-5, rtol=0)
    assert nm.verts.dtype == torch.float32 and nm.faces.dtype == torch.int64


def test_from_mesh_remesh_kind_lies_on_the_surface():
    nm = NeuralMesh.from_mesh(_sphere_mesh(), num_verts=120, kind="remesh", feature_dim=4, clutter_size=2)
    assert nm.meta["kind"] == "remesh"
    assert 100 <= nm.num_verts <= 140
    assert_close(nm.verts.norm(dim=1), torch.ones(nm.num_verts), atol=0.02, rtol=0)


def test_from_mesh_is_deterministic_given_a_generator():
    a, b = _model(), _model()
    assert torch.equal(a.features, b.features) and torch.equal(a.clutter, b.clutter)
    c = _model(generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a.features, c.features)


def test_from_mesh_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind: expected one of cuboid, remesh, got 'sphere'"):
        _model(kind="sphere")
    with pytest.raises(ValueError, match="feature_dim, clutter_size: expected >= 1"):
        _model(feature_dim=0)


def test_constructor_checks_shapes_dtypes_and_values():
    nm = _model()
    with pytest.raises(ValueError, match=r"features: expected shape \(\d+, C\), got \(3, 8\)"):
        dataclasses.replace(nm, features=torch.zeros(3, 8))
    with pytest.raises(ValueError, match=r"clutter: expected shape \(M, 8\), got \(5, 7\)"):
        dataclasses.replace(nm, clutter=torch.zeros(5, 7))
    with pytest.raises(TypeError, match="faces: expected dtype torch.int64, got torch.int32"):
        dataclasses.replace(nm, faces=nm.faces.int())
    with pytest.raises(ValueError, match="features: expected finite values"):
        dataclasses.replace(nm, features=torch.full_like(nm.features, float("nan")))
    with pytest.raises(ValueError, match=r"faces: expected indices in \[0, "):
        dataclasses.replace(nm, faces=nm.faces + nm.num_verts)


def test_to_and_normalized():
    nm = _model()
    moved = nm.to("cpu")
    assert moved is not nm and torch.equal(moved.features, nm.features)
    scaled = dataclasses.replace(nm, features=nm.features * 3.0)
    assert_close(scaled.normalized().features, nm.features)


# ---------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    nm = dataclasses.replace(_model(), meta={"kind": "cuboid", "note": "trained", "epochs": 3})
    nm.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE])
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary leftovers
    back = NeuralMesh.load(tmp_path / "model")
    for name in ("verts", "faces", "features", "clutter"):
        assert torch.equal(getattr(back, name), getattr(nm, name)), name
    assert back.meta == nm.meta
    config = json.loads((tmp_path / "model" / CONFIG_FILE).read_text())
    assert config["format_version"] == FORMAT_VERSION and config["feature_dim"] == 8


def test_save_overwrites_an_existing_directory(tmp_path):
    _model().save(tmp_path / "m")
    other = _model(generator=torch.Generator().manual_seed(5), feature_dim=4)
    other.save(tmp_path / "m")
    back = NeuralMesh.load(tmp_path / "m")
    assert torch.equal(back.features, other.features)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_rejects_meta_that_is_not_json(tmp_path):
    nm = dataclasses.replace(_model(), meta={"bad": object()})
    with pytest.raises(ValueError, match="meta: expected JSON-serialisable values"):
        nm.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model"
    _model().save(path)
    return path


def _edit_config(path, **changes):
    config = json.loads((path / CONFIG_FILE).read_text())
    config.update(changes)
    (path / CONFIG_FILE).write_text(json.dumps(config))


def _rewrite_weights(path, tensors):
    save_file(tensors, str(path / WEIGHTS_FILE))
    _edit_config(path, weights_sha256=None)


def test_load_error_missing_directory(tmp_path):
    with pytest.raises(ModelError, match=re.escape(f"{tmp_path / 'nope'}: no such neural-mesh directory")):
        NeuralMesh.load(tmp_path / "nope")


def test_load_error_missing_config(saved):
    (saved / CONFIG_FILE).unlink()
    with pytest.raises(ModelError, match=re.escape(f"{saved / CONFIG_FILE}: missing (not a neural-mesh directory?)")):
        NeuralMesh.load(saved)


def test_load_error_invalid_json(saved):
    (saved / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelError, match=re.escape(f"{saved / CONFIG_FILE}: not valid JSON (")):
        NeuralMesh.load(saved)


def test_load_error_wrong_format(saved):
    _edit_config(saved, format="something_else")
    with pytest.raises(ModelError, match="not a neural-mesh config"):
        NeuralMesh.load(saved)


def test_load_error_wrong_format_version(saved):
    _edit_config(saved, format_version=99)
    with pytest.raises(ModelError, match=f"unsupported format_version 99 \\(this version reads {FORMAT_VERSION}\\)"):
        NeuralMesh.load(saved)


def test_load_error_bad_count_in_config(saved):
    _edit_config(saved, feature_dim="8")
    with pytest.raises(ModelError, match="feature_dim: expected a positive integer, got '8'"):
        NeuralMesh.load(saved)


def test_load_error_missing_weights(saved):
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError, match=re.escape(f"{saved / WEIGHTS_FILE}: missing (expected beside {CONFIG_FILE})")):
        NeuralMesh.load(saved)


def test_load_error_checksum_mismatch(saved, tmp_path):
    _model(generator=torch.Generator().manual_seed(9)).save(tmp_path / "other")
    (saved / WEIGHTS_FILE).write_bytes((tmp_path / "other" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ModelError, match="checksum does not match neural_mesh.json"):
        NeuralMesh.load(saved)


def test_load_error_corrupt_weights(saved):
    (saved / WEIGHTS_FILE).write_bytes(b"\x00garbage" * 10)
    _edit_config(saved, weights_sha256=None)
    with pytest.raises(ModelError, match=re.escape(f"{saved / WEIGHTS_FILE}: cannot read safetensors (")):
        NeuralMesh.load(saved)


def test_load_error_missing_tensor(saved):
    tensors = load_file(str(saved / WEIGHTS_FILE))
    del tensors["clutter"]
    _rewrite_weights(saved, tensors)
    with pytest.raises(ModelError, match="missing tensor 'clutter'"):
        NeuralMesh.load(saved)


def test_load_error_shape_mismatch(saved):
    tensors = load_file(str(saved / WEIGHTS_FILE))
    tensors["features"] = tensors["features"][:, :4].contiguous()
    _rewrite_weights(saved, tensors)
    with pytest.raises(ModelError, match=r"features: shape \(\d+, 4\) does not match neural_mesh.json \(expected \(\d+, 8\)\)"):
        NeuralMesh.load(saved)


def test_load_error_dtype(saved):
    tensors = load_file(str(saved / WEIGHTS_FILE))
    tensors["faces"] = tensors["faces"].int()
    _rewrite_weights(saved, tensors)
    with pytest.raises(ModelError, match="faces: unexpected dtype torch.int32"):
        NeuralMesh.load(saved)


def test_load_error_nan_values(saved):
    tensors = load_file(str(saved / WEIGHTS_FILE))
    tensors["features"][0, 0] = float("nan")
    _rewrite_weights(saved, tensors)
    with pytest.raises(ModelError, match=re.escape(f"{saved / WEIGHTS_FILE}: features: expected finite values")):
        NeuralMesh.load(saved)


def test_load_error_messages_are_one_line(saved):
    (saved / CONFIG_FILE).write_text("{\n  broken\n")
    with pytest.raises(ModelError) as info:
        NeuralMesh.load(saved)
    assert "\n" not in str(info.value)


def test_atomic_directory_replaces_whole_or_by_file_and_leaves_nothing_on_error(tmp_path):
    from neural_mesh.neural_mesh import atomic_directory

    target = tmp_path / "d"
    with atomic_directory(target) as work:
        (work / "a").write_text("1")
        (work / "b").write_text("1")
    with atomic_directory(target, replace_files=["a"]) as work:
        (work / "a").write_text("2")
    assert (target / "a").read_text() == "2" and (target / "b").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as work:
            (work / "a").write_text("3")
            raise RuntimeError("interrupted")
    assert (target / "a").read_text() == "2"
    with atomic_directory(target) as work:
        (work / "c").write_text("4")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary left behind
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        with atomic_directory(tmp_path / "f"):
            pass


def test_from_mesh_with_a_given_surface_equals_building_it():
    from render import remesh_surface
    from datasets.shapes import load_shape
    from pathlib import Path

    mesh = load_shape(Path(__file__).resolve().parents[2] / "demos" / "data" / "chair.obj").mesh
    a = NeuralMesh.from_mesh(mesh, num_verts=120, kind="remesh", feature_dim=8, clutter_size=4,
                             generator=torch.Generator().manual_seed(3))
    b = NeuralMesh.from_mesh(mesh, num_verts=120, kind="remesh", feature_dim=8, clutter_size=4,
                             generator=torch.Generator().manual_seed(3), surface=remesh_surface(mesh, num_verts=120))
    for name in ("verts", "faces", "features", "clutter"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    with pytest.raises(ValueError, match="surface"):
        NeuralMesh.from_mesh(mesh, surface=Mesh(mesh.verts, torch.zeros(0, 3, dtype=torch.int64)))
