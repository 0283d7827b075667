"""PoseModel: crops and their intrinsics, frames, save/load, fitting photos; build_model's cache."""

from __future__ import annotations

import json
from dataclasses import replace
import math
from pathlib import Path

import pytest
import torch

from datasets.shapes import load_shape
from neural_mesh import build as build_mod
from neural_mesh.backbones import BackboneConfig, FeatureBackbone
from neural_mesh.build import BuildConfig, build_model, cache_key, model_cache_path
from neural_mesh.fitting import FitConfig
from neural_mesh.model import PoseModel, box_fraction_of, box_fractions, crop_image, crop_intrinsics
from neural_mesh.neural_mesh import ModelError, NeuralMesh
from render import angles_to_pose, center_and_scale, intrinsics, load_mesh, project_points

CHAIR = Path(__file__).resolve().parents[2] / "demos" / "data" / "chair.obj"


@pytest.fixture(scope="module")
def tiny_model() -> PoseModel:
    torch.manual_seed(0)
    backbone = FeatureBackbone(BackboneConfig(arch="resnet18", width=8, feature_dim=16), seed=0)
    shape = load_shape(CHAIR)
    nmesh = NeuralMesh.from_mesh(shape.mesh, num_verts=60, feature_dim=16, clutter_size=8,
                                 generator=torch.Generator().manual_seed(0))
    _, c, s = center_and_scale(load_mesh(CHAIR), center="bbox", scale="radius")
    return PoseModel(backbone, nmesh, (64, 64), 0.6, c, s, meta={"mesh_file": "chair.obj"})


def test_crop_image_samples_where_crop_intrinsics_says():
    H, W = 50, 70
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    image = torch.stack([u / 100, v / 100, torch.zeros_like(u)])
    x0, y0, scale = 10.0, 5.0, 1.25
    crop = crop_image(image, x0, y0, scale, 20)
    # pixel (u', v') of the crop holds the original at (x0 + s u', y0 + s v') (a linear ramp)
    uu = torch.arange(20, dtype=torch.float64)
    torch.testing.assert_close(crop[0, 3], (x0 + scale * uu) / 100)
    torch.testing.assert_close(crop[1, :, 7], (y0 + scale * uu) / 100)
    # and a 3D point projects to the corresponding crop pixel with the crop's K
    K = intrinsics(80.0, 80.0, 33.0, 24.0).double()
    Kc = crop_intrinsics(K, x0, y0, scale)
    X = torch.tensor([[[0.1, -0.2, 2.0]]], dtype=torch.float64)
    uv = project_points(X, K)[0][0, 0]
    uvc = project_points(X, Kc)[0][0, 0]
    torch.testing.assert_close(uvc, (uv - torch.tensor([x0, y0], dtype=torch.float64)) / scale)


def test_crop_outside_the_photo_is_grey_and_shrinking_is_antialiased():
    image = torch.zeros(3, 40, 40, dtype=torch.float64)
    image[:, ::2] = 1.0  # one-pixel stripes: aliasing would show as 0 / 1 values
    crop = crop_image(image, -100.0, -100.0, 1.0, 8)
    assert torch.allclose(crop, torch.full_like(crop, 0.5))
    small = crop_image(image, 0.5, 0.5, 4.0, 10)
    assert (small[:, 1:-1, 1:-1] - 0.5).abs().max() < 0.13


def test_prepare_puts_the_box_at_the_training_scale(tiny_model):
    image = torch.rand(3, 120, 200)
    K = intrinsics(150.0, 150.0, 99.5, 59.5)
    box = (40.0, 30.0, 100.0, 90.0)  # 60 px
    crop, Kc, (x0, y0, scale) = tiny_model.prepare(image, K, box)
    assert crop.shape == (3, 64, 64)
    # the box's side becomes box_fraction of the crop, centred
    assert math.isclose(60.0 / scale, 0.6 * 64, rel_tol=1e-6)
    cx = (70.0 - x0) / scale
    assert math.isclose(cx, 31.5, abs_tol=1e-6)
    torch.testing.assert_close(Kc, crop_intrinsics(K, x0, y0, scale))
    with pytest.raises(ValueError, match="bbox"):
        tiny_model.prepare(image, K, (10.0, 10.0, 5.0, 20.0))
    with pytest.raises(ValueError, match="image"):
        tiny_model.prepare(torch.rand(4, 10, 10), K)


def test_file_frame_pose_gives_the_same_projection(tiny_model):
    R, t = angles_to_pose(torch.tensor(0.7), torch.tensor(0.3), torch.tensor(-0.1), torch.tensor(4.0))
    R, t = R.double(), (t + torch.tensor([0.2, -0.1, 0.0])).double()
    K = intrinsics(100.0, 100.0, 50.0, 40.0).double()
    file_verts = load_mesh(CHAIR).verts.double()
    model_verts = tiny_model.mesh_scale * (file_verts - tiny_model.mesh_center)
    Rf, tf = tiny_model.to_file_frame(R, t)
    a = project_points(model_verts[None], K, R, t)[0]
    b = project_points(file_verts[None], K, Rf, tf)[0]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(Rf, R)


def test_crop_box_centres_the_object_centre_as_the_training_renders_do(tiny_model):
    # the renders put the object's centre (the model frame's origin) at the principal
    # point; the 2D box of a chair seen from above-left is centred elsewhere
    K = intrinsics(150.0, 150.0, 63.5, 60.0)
    R, t = angles_to_pose(torch.tensor(0.9), torch.tensor(0.6), torch.tensor(0.2), torch.tensor(3.5))
    box = tiny_model.projected_box(R, t, K)
    crop = tiny_model.crop_box(R, t, K)
    assert (crop[0] + crop[2]) / 2 == pytest.approx(63.5, abs=1e-3)
    assert (crop[1] + crop[3]) / 2 == pytest.approx(60.0, abs=1e-3)
    assert crop[2] - crop[0] == pytest.approx(box[2] - box[0], rel=1e-5)
    assert crop[3] - crop[1] == pytest.approx(box[3] - box[1], rel=1e-5)
    centre_gap = math.hypot((box[0] + box[2]) / 2 - 63.5, (box[1] + box[3]) / 2 - 60.0)
    assert centre_gap > 0.5  # a different crop than the box's own centre
    # anywhere in the photo: the centre follows the origin's projection
    t2 = t + torch.tensor([0.4, -0.2, 0.0])
    uv = project_points(torch.zeros(1, 1, 3), K, R, t2)[0][0, 0]
    c2 = tiny_model.crop_box(R, t2, K)
    assert (c2[0] + c2[2]) / 2 == pytest.approx(float(uv[0]), abs=1e-3)
    assert (c2[1] + c2[3]) / 2 == pytest.approx(float(uv[1]), abs=1e-3)


def test_save_load_round_trip_and_errors(tiny_model, tmp_path):
    d = tmp_path / "m"
    tiny_model.save(d)
    tiny_model.save(d)  # replacing an existing model works
    loaded = PoseModel.load(d)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded.feature_map(x), tiny_model.feature_map(x))
    assert loaded.box_fraction == tiny_model.box_fraction and loaded.meta == tiny_model.meta
    torch.testing.assert_close(loaded.mesh_center, tiny_model.mesh_center)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ModelError, match="no such model directory"):
        PoseModel.load(tmp_path / "missing")
    with pytest.raises(ModelError, match="model.json: missing"):
        PoseModel.load(tmp_path)
    (d / "backbone.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="backbone.safetensors: checksum"):
        PoseModel.load(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="model.json: cannot read JSON"):
        PoseModel.load(d)
    (d / "model.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ModelError, match="not a pose model"):
        PoseModel.load(d)


def test_center_on_is_saved_and_sets_the_crop(tiny_model, tmp_path):
    on_box = replace(tiny_model, center_on="box")
    on_box.save(tmp_path / "b")
    assert PoseModel.load(tmp_path / "b").center_on == "box"
    # a model.json from before the field: the object's centre, as those builds rendered
    info = json.loads((tmp_path / "b" / "model.json").read_text())
    del info["center_on"]
    (tmp_path / "b" / "model.json").write_text(json.dumps(info))
    assert PoseModel.load(tmp_path / "b").center_on == "object"
    info["center_on"] = "middle"
    (tmp_path / "b" / "model.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="center_on"):
        PoseModel.load(tmp_path / "b")
    K = intrinsics(150.0, 150.0, 63.5, 60.0)
    R, t = angles_to_pose(torch.tensor(0.9), torch.tensor(0.6), torch.tensor(0.2), torch.tensor(3.5))
    assert on_box.crop_box(R, t, K) == on_box.projected_box(R, t, K)
    assert tiny_model.crop_box(R, t, K) != tiny_model.projected_box(R, t, K)


def test_fit_returns_poses_in_photo_pixels(tiny_model):
    torch.manual_seed(1)
    images = [torch.rand(3, 48, 80), torch.rand(3, 64, 64)]
    Ks = [intrinsics(90.0, 90.0, 39.5, 23.5), intrinsics(70.0, 70.0, 31.5, 31.5)]
    quick = FitConfig(num_azimuths=4, num_elevations=2, num_thetas=1, top_k=1, steps=10, placement_search=2)
    res = tiny_model.fit(images, Ks, bbox=[(20.0, 10.0, 50.0, 40.0), None], config=quick)
    assert len(res) == 2
    for r, K in zip(res, Ks):
        assert torch.allclose(r.R @ r.R.T, torch.eye(3, dtype=r.R.dtype), atol=1e-5)
        assert abs(float(torch.linalg.det(r.R)) - 1) < 1e-5
        # (u0, v0) is where the model origin projects in the photo
        uv = project_points(torch.zeros(1, 1, 3, dtype=r.t.dtype), K.to(r.t.dtype), r.R, r.t)[0][0, 0]
        assert abs(float(uv[0]) - r.u0) < 1e-3 and abs(float(uv[1]) - r.v0) < 1e-3
        assert r.seconds > 0
    with pytest.raises(ValueError, match="K: expected 2"):
        tiny_model.fit(images, Ks[:1], config=quick)


def test_small_in_photo_compares_the_objects_share_of_the_photo_with_the_training_framing(tiny_model):
    from neural_mesh.fitting import PoseResult
    from neural_mesh.model import SMALL_IN_PHOTO, SMALL_IN_PHOTO_WIDE

    K = intrinsics(150.0, 150.0, 99.5, 79.5)
    R, t = angles_to_pose(torch.tensor(0.9), torch.tensor(0.3), torch.tensor(0.0), torch.tensor(4.0))
    x0, y0, x1, y1 = tiny_model.projected_box(R, t, K)
    assert tiny_model.photo_fraction(R, t, K, (160, 200)) == pytest.approx(max(x1 - x0, y1 - y0) / 200)
    near = tiny_model.photo_fraction(R, t, K, (160, 200))
    # twice as far: half the share of the photo
    assert tiny_model.photo_fraction(R, 2 * t, K, (160, 200)) == pytest.approx(near / 2, rel=0.05)

    def result(distance: float) -> PoseResult:
        return PoseResult(R=R, t=t * distance / 4.0, azimuth=0.9, elevation=0.3, theta=0.0, distance=distance,
                          u0=99.5, v0=79.5, score=0.5, loss_curve=[], seconds=0.0)

    threshold = SMALL_IN_PHOTO * tiny_model.box_fraction
    # the distance at which the object spans exactly the threshold, then a little nearer / farther
    edge = 4.0 * near / threshold
    assert not tiny_model.small_in_photo(result(0.95 * edge), (160, 200), K)
    assert tiny_model.small_in_photo(result(1.05 * edge), (160, 200), K)
    # a model whose renders included wider framings finds smaller objects: a lower threshold
    assert not tiny_model.trained_wide and tiny_model.small_share == pytest.approx(threshold)
    wide = replace(tiny_model, meta={"build_config": BuildConfig.preset("wide").to_dict()})
    assert wide.trained_wide and wide.small_share == pytest.approx(SMALL_IN_PHOTO_WIDE * wide.box_fraction)
    assert SMALL_IN_PHOTO_WIDE < SMALL_IN_PHOTO
    assert not wide.small_in_photo(result(1.05 * edge), (160, 200), K)
    assert wide.small_in_photo(result(1.05 * edge * SMALL_IN_PHOTO / SMALL_IN_PHOTO_WIDE), (160, 200), K)


def test_recrop_keeps_the_second_fit_when_it_scores_higher(tiny_model, monkeypatch):
    # stub passes: the first scores 0.5 everywhere, the second per image; the object sits
    # at the training scale and centre, so only the scores decide
    from neural_mesh.fitting import PoseResult

    ONCE = FitConfig(crop_ensemble=0)  # no averaging pass: the recrop logic alone

    K = intrinsics(60.0, 60.0, 31.5, 31.5)
    R, t = angles_to_pose(torch.tensor(0.3), torch.tensor(0.2), torch.tensor(0.0), torch.tensor(5.0))
    box = tiny_model.projected_box(R, t, K)
    t = t * max(box[2] - box[0], box[3] - box[1]) / (tiny_model.box_fraction * 64)  # box_fraction of the photo
    box = tiny_model.projected_box(R, t, K)
    calls = []

    def fake(self, images, Ks, boxes, config, init=None):
        calls.append((boxes, init))
        scores = [0.5] * len(images) if init is None else [0.7, 0.3][: len(images)]
        return [PoseResult(R=R, t=t, azimuth=0.0, elevation=0.0, theta=0.0, distance=float(t[2]), u0=31.5,
                           v0=31.5, score=sc, loss_curve=[], seconds=0.0) for sc in scores]

    monkeypatch.setattr(PoseModel, "_fit_once", fake)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    assert not tiny_model._needs_recrop(fake(tiny_model, images[:1], [K], [None], None)[0], images[0], K)
    calls.clear()
    res = tiny_model.fit(images, [K, K], config=ONCE)
    assert [r.score for r in res] == [0.7, 0.5]  # the second fit where it scored higher
    assert len(calls) == 2 and calls[1][1] is not None  # one second pass, started at the first poses
    assert calls[1][0] == [tiny_model.crop_box(R, t, K)] * 2  # around the first fit
    calls.clear()
    res = tiny_model.fit(images, [K, K], recrop=False, config=ONCE)
    assert [r.score for r in res] == [0.5, 0.5] and len(calls) == 1
    # a given box: no second pass for that photo
    calls.clear()
    res = tiny_model.fit(images, [K, K], bbox=[box, None], config=ONCE)
    assert [r.score for r in res] == [0.5, 0.7] and len(calls[1][0]) == 1
    # a first fit far from the training scale (object 3x smaller): the second fit is
    # kept even where it scores lower (the scores of the two crops are not comparable)
    far = dict(t=t * 3)
    monkeypatch.setattr(PoseModel, "_fit_once", lambda self, im, Ks, bx, cfg, init=None: [
        replace(r, **(far if init is None else {})) for r in fake(self, im, Ks, bx, cfg, init)])
    res = tiny_model.fit(images, [K, K], config=ONCE)
    assert [r.score for r in res] == [0.7, 0.3]


def test_crop_ensemble_refines_on_shifted_crops_and_averages(tiny_model, monkeypatch):
    from neural_mesh.fitting import PoseResult
    from render import rotation_z

    K = intrinsics(60.0, 60.0, 31.5, 31.5)
    R, t = angles_to_pose(torch.tensor(0.3), torch.tensor(0.2), torch.tensor(0.0), torch.tensor(5.0))
    calls = []
    # the members turn the pose about the camera axis by +-0.1 rad and move it by +-0.2
    turn = rotation_z(torch.tensor([0.1, -0.1, 0.1, -0.1]))
    move = torch.tensor([[0.2, 0.0, 0.0], [-0.2, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, -0.2, 0.0]])

    def fake(self, images, Ks, boxes, config, init=None):
        calls.append((boxes, init, config))
        if init is None:
            return [PoseResult(R=R, t=t, azimuth=0.0, elevation=0.0, theta=0.0, distance=float(t[2]), u0=31.5,
                               v0=31.5, score=0.1, loss_curve=[1.0, 0.9], seconds=0.0) for _ in images]
        return [PoseResult(R=turn[j % 4] @ R, t=t + move[j % 4], azimuth=0.0, elevation=0.0, theta=0.0,
                           distance=1.0, u0=0.0, v0=0.0, score=0.2 * (j % 4 + 1), loss_curve=[], seconds=0.0)
                for j in range(len(images))]

    monkeypatch.setattr(PoseModel, "_fit_once", fake)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 80)]
    box = [20.0, 10.0, 40.0, 50.0]
    config = FitConfig(crop_ensemble=4, crop_shift=3.0)
    res = tiny_model.fit(images, [K, K], bbox=[box, None], config=config, recrop=False)
    assert len(calls) == 2
    boxes, init, member_config = calls[1]
    assert member_config.top_k == 0 and len(boxes) == 8
    torch.testing.assert_close(init[0], R.expand(8, 3, 3))  # refined from the fit itself
    # the given box, and the crop around the fitted pose, moved along the diagonals by
    # 3 input pixels: 3 * (the crop's side / the input side) photo pixels
    for base, moved in ((box, boxes[:4]), (tiny_model.crop_box(R, t, K), boxes[4:])):
        step = 3.0 * max(base[2] - base[0], base[3] - base[1]) / tiny_model.box_fraction / 64
        d = step / math.sqrt(2)
        for (dx, dy), b in zip([(d, d), (-d, d), (-d, -d), (d, -d)], moved):
            assert b == pytest.approx([base[0] + dx, base[1] + dy, base[2] + dx, base[3] + dy])
    for r in res:
        torch.testing.assert_close(r.R, R, atol=1e-6, rtol=0)  # the turns cancel
        torch.testing.assert_close(r.t, t, atol=1e-6, rtol=0)
        assert r.score == pytest.approx(0.5) and r.loss_curve == [1.0, 0.9]
        uv = project_points(torch.zeros(1, 1, 3), K, r.R, r.t)[0][0, 0]
        assert (r.u0, r.v0) == pytest.approx((float(uv[0]), float(uv[1])), abs=1e-4)
        assert r.distance == pytest.approx(float(t[2]))
    calls.clear()
    tiny_model.fit(images, [K, K], bbox=[box, None], config=replace(config, crop_ensemble=0), recrop=False)
    assert len(calls) == 1


def test_crop_ensemble_on_a_real_fit_returns_a_valid_pose(tiny_model):
    torch.manual_seed(3)
    K = intrinsics(70.0, 70.0, 31.5, 31.5)
    quick = FitConfig(num_azimuths=4, num_elevations=1, num_thetas=1, top_k=1, steps=4, placement_search=0)
    plain = tiny_model.fit([torch.rand(3, 64, 64)], [K], config=quick, recrop=False)[0]
    torch.manual_seed(3)
    both = tiny_model.fit([torch.rand(3, 64, 64)], [K], config=replace(quick, crop_ensemble=3), recrop=False)[0]
    torch.testing.assert_close(both.R @ both.R.T, torch.eye(3), atol=1e-5, rtol=0)
    assert not torch.equal(both.R, plain.R) and math.isfinite(both.score)


def test_fit_from_init_poses_crops_around_them_and_returns_them_unrefined(tiny_model, monkeypatch):
    # top_k=0 and no steps: the result is the start itself, through the crop and back
    torch.manual_seed(2)
    images = [torch.rand(3, 60, 90), torch.rand(3, 64, 64)]
    Ks = [intrinsics(120.0, 120.0, 44.5, 29.5), intrinsics(70.0, 70.0, 31.5, 31.5)]
    R, t = angles_to_pose(torch.tensor([0.4, -2.0]), torch.tensor([0.2, 0.5]), torch.tensor([0.1, 0.0]),
                          torch.tensor([9.0, 4.0]))
    t = t + torch.tensor([[0.8, -0.3, 0.0], [0.0, 0.0, 0.0]])  # off-centre in the first photo
    seen = []
    fit_once = PoseModel._fit_once
    monkeypatch.setattr(PoseModel, "_fit_once", lambda self, *a, **k: seen.append(a[2]) or fit_once(self, *a, **k))
    monkeypatch.setattr(PoseModel, "_needs_recrop", lambda *a: pytest.fail("recrop pass after an init fit"))
    res = tiny_model.fit(images, Ks, init=(R, t), config=FitConfig(top_k=0, steps=0))
    assert seen == [[tiny_model.crop_box(R[i], t[i], Ks[i]) for i in range(2)]]  # one pass, init's boxes
    for i, r in enumerate(res):
        torch.testing.assert_close(r.R.float(), R[i], atol=1e-4, rtol=0)
        torch.testing.assert_close(r.t.float(), t[i], atol=1e-3, rtol=0)
    # refinement moves it (random features: anywhere), and the grid joins in with top_k > 0
    moved = tiny_model.fit(images[:1], Ks[:1], init=(R[:1], t[:1]), config=FitConfig(top_k=0, steps=5))[0]
    assert moved.score >= res[0].score
    with pytest.raises(ValueError, match="top_k == 0 refines only the init poses"):
        tiny_model.fit(images, Ks, config=FitConfig(top_k=0))
    with pytest.raises(ValueError, match=r"init: expected R \(2, 3, 3\)"):
        tiny_model.fit(images, Ks, init=(R[:1], t[:1]))
    with pytest.raises(ValueError, match="in front of the camera"):
        tiny_model.fit(images, Ks, init=(R, -t))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_cuda_takes_cpu_photos_and_matches_the_cpu_fit(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m")
    gpu = PoseModel.load(tmp_path / "m", device="cuda")
    assert gpu.device.type == "cuda" and tiny_model.device.type == "cpu"
    torch.manual_seed(2)
    image, K = torch.rand(3, 64, 64), intrinsics(80.0, 80.0, 31.5, 31.5)
    quick = FitConfig(num_azimuths=4, num_elevations=2, num_thetas=1, top_k=1, steps=10, placement_search=2)
    on_cpu = tiny_model.fit([image], [K], config=quick)[0]
    on_gpu = gpu.fit([image], [K], config=quick)[0]  # CPU inputs are moved to the model's device
    assert on_gpu.R.device.type == "cuda"
    assert abs(on_gpu.score - on_cpu.score) < 1e-3


# ------------------------------------------------------------------------ build_model

TINY = BuildConfig(steps=2, image_size=32, batch_size=2, num_verts=60)


def test_build_model_caches_by_content_and_config(tmp_path, monkeypatch):
    mesh = tmp_path / "chair.obj"
    mesh.write_bytes(CHAIR.read_bytes())
    model = build_model(mesh, TINY, cache_dir=tmp_path / "cache", progress=False)
    target = model_cache_path(mesh, TINY, tmp_path / "cache")
    assert (target / "model.json").is_file()
    assert not (tmp_path / "cache" / "runs" / target.name).exists()  # the run is cleaned up
    assert model.image_size == (32, 32) and 0.2 < model.box_fraction < 1.2
    assert model.meta["mesh_file"] == "chair.obj"
    # second call: loaded, not trained (train() would raise)
    monkeypatch.setattr(build_mod, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again")))
    again = build_model(mesh, TINY, cache_dir=tmp_path / "cache", progress=False)
    torch.testing.assert_close(again.nmesh.features, model.nmesh.features)
    # the key follows content and config, not the path
    moved = tmp_path / "renamed.obj"
    moved.write_bytes(mesh.read_bytes())
    assert cache_key(moved, TINY) == cache_key(mesh, TINY)
    assert cache_key(mesh, BuildConfig(steps=3, image_size=32, batch_size=2, num_verts=60)) != cache_key(mesh, TINY)
    mesh.write_text(mesh.read_text() + "\n# edited\n")
    assert cache_key(mesh, TINY) != cache_key(moved, TINY)
    # a release whose builds make other models of the same settings gets new keys
    before = cache_key(mesh, TINY)
    monkeypatch.setattr(build_mod, "BUILD_RECIPE", build_mod.BUILD_RECIPE + 1)
    assert cache_key(mesh, TINY) != before


def test_zoomed_out_training_renders_keep_the_crop_scale_of_the_others(tmp_path):
    import dataclasses

    plain = build_model(CHAIR, TINY, cache_dir=tmp_path, progress=False)
    zoomed = build_model(CHAIR, dataclasses.replace(TINY, scene={"zoom_out_probability": 0.9}), cache_dir=tmp_path,
                         progress=False)
    # the same scenes but for the zoom: the crop scale is that of the unzoomed renders
    assert zoomed.box_fraction == plain.box_fraction
    assert zoomed.meta["build_config"]["scene"] == {"zoom_out_probability": 0.9}


def test_build_config_validation_and_bad_mesh(tmp_path):
    with pytest.raises(ValueError, match="BuildConfig.steps"):
        BuildConfig(steps=0)
    with pytest.raises(ValueError, match="BuildConfig.backbone"):
        BuildConfig(backbone="nope")
    with pytest.raises(ValueError, match="BuildConfig.mesh_kind"):
        BuildConfig(mesh_kind="sphere")
    with pytest.raises(ValueError, match="BuildConfig.lr_schedule"):
        BuildConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="BuildConfig.distance_range"):
        BuildConfig(distance_range=(0.5, 3.0))
    with pytest.raises(ValueError, match="BuildConfig.center_jitter"):
        BuildConfig(center_jitter=0.9)
    with pytest.raises(ValueError, match=r"BuildConfig.output_stride: expected one of \[8, 4\], got 2"):
        BuildConfig(output_stride=2)
    assert BuildConfig(output_stride=4).train_config(CHAIR).backbone.output_stride == 4
    scene = BuildConfig(distance_range=[3, 4], center_jitter=0.0).train_config(CHAIR).data["config"]
    assert scene["distance_range"] == [3.0, 4.0] and scene["center_jitter"] == 0.0
    assert scene["center_on"] == "object"
    with pytest.raises(ValueError, match="BuildConfig.center_on"):
        BuildConfig(center_on="middle")
    # "box" reaches the renders and the cache key; the default leaves existing keys alone
    assert BuildConfig(center_on="box").train_config(CHAIR).data["config"]["center_on"] == "box"
    assert "center_on" not in BuildConfig().to_dict() and BuildConfig(center_on="box").to_dict()["center_on"] == "box"
    assert cache_key(CHAIR, BuildConfig(center_on="box")) != cache_key(CHAIR, BuildConfig())
    bad = tmp_path / "bad.obj"
    bad.write_text("this is not a mesh\n")
    from render import MeshError

    with pytest.raises(MeshError, match="bad.obj"):
        build_model(bad, TINY, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "models").exists()


def test_build_config_train_settings_reach_both_stages_and_the_key():
    default = BuildConfig().train_config(CHAIR)
    assert (default.neighbor_radius, default.sampling, default.temperature) == (0.04, "bilinear", 0.07)
    config = BuildConfig(train={"neighbor_radius": 0.1, "temperature": 0.1}, finetune_steps=3)
    for stage in (config, config.first_stage()):
        train = stage.train_config(CHAIR)
        # the given settings win; the build's other defaults stay
        assert (train.neighbor_radius, train.temperature, train.sampling) == (0.1, 0.1, "bilinear")
    assert config.to_dict()["train"] == {"neighbor_radius": 0.1, "temperature": 0.1}
    assert "train" not in BuildConfig().to_dict()  # the keys of builds without it stay
    assert cache_key(CHAIR, BuildConfig(train={"temperature": 0.1})) != cache_key(CHAIR, BuildConfig())
    # what a model's meta records comes back as the same config
    assert BuildConfig(**json.loads(json.dumps(config.to_dict()))) == config
    assert len({config, BuildConfig(**config.to_dict()), BuildConfig()}) == 2  # usable as keys
    with pytest.raises(ValueError, match="'steps' is not a setting it can change"):
        BuildConfig(train={"steps": 5})  # BuildConfig's own field
    with pytest.raises(ValueError, match="TrainConfig.temperature"):
        BuildConfig(train={"temperature": 0})
    with pytest.raises(ValueError, match="BuildConfig.train: expected a dict"):
        BuildConfig(train=[("temperature", 0.1)])


def test_build_presets_set_their_fields_and_take_changes():
    from neural_mesh.build import BUILD_PRESETS

    assert BuildConfig.preset("default") == BuildConfig()
    accurate = BuildConfig.preset("accurate")
    assert (accurate.steps, accurate.occlusion, accurate.finetune_steps, accurate.finetune_occlusion,
            accurate.finetune_lr, accurate.finetune_room_probability) == (24000, (0.2, 0.7), 4000, (0.0, 0.5),
                                                                           3e-5, 0.5)
    assert accurate.first_stage() == BuildConfig(steps=24000, occlusion=(0.2, 0.7))
    assert cache_key(CHAIR, accurate) != cache_key(CHAIR, BuildConfig())
    changed = BuildConfig.preset("accurate", seed=1, steps=100)
    assert (changed.seed, changed.steps, changed.finetune_steps) == (1, 100, 4000)
    for name, fields in BUILD_PRESETS.items():  # every preset is a valid config of BuildConfig's fields
        assert BuildConfig.preset(name).to_dict() == {**BuildConfig().to_dict(), **BuildConfig(**fields).to_dict()}
    wide = BuildConfig.preset("wide")
    assert wide.steps == 4000 and wide.scene["zoom_out_probability"] > 0 and not wide.finetune_steps
    # scene (and train) changes add to the preset's settings, or replace those of the same name
    more = BuildConfig.preset("wide", scene={"zoom_out_probability": 0.2, "max_occluders": 2})
    assert more.scene == {**wide.scene, "zoom_out_probability": 0.2, "max_occluders": 2}
    assert BuildConfig.preset("accurate", scene={"max_occluders": 2}).scene == {"max_occluders": 2}
    with pytest.raises(ValueError, match="BuildConfig.scene: expected a dict"):
        BuildConfig.preset("wide", scene=[("max_occluders", 2)])
    with pytest.raises(ValueError, match="BuildConfig.preset: expected one of"):
        BuildConfig.preset("fast")
    with pytest.raises(ValueError, match="BuildConfig.steps"):
        BuildConfig.preset("accurate", steps=0)


def test_build_config_scene_settings_reach_both_stages_renders_and_the_key():
    config = BuildConfig(scene={"zoom_out_probability": 0.3, "background_scale_range": (0.03, 1.2)}, finetune_steps=3,
                         finetune_room_probability=0.5)
    for stage in (config, config.first_stage()):
        data = stage.train_config(CHAIR).data["config"]
        assert data["zoom_out_probability"] == 0.3 and data["background_scale_range"] == [0.03, 1.2]
        assert data["distance_range"] == [3.4, 5.0]  # the build's own scene settings stay
    assert config.to_dict()["scene"] == {"zoom_out_probability": 0.3, "background_scale_range": [0.03, 1.2]}
    assert "scene" not in BuildConfig().to_dict()
    assert cache_key(CHAIR, BuildConfig(scene={"zoom_out_probability": 0.3})) != cache_key(CHAIR, BuildConfig())
    assert BuildConfig(**json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="'distance_range' is not a setting it can change"):
        BuildConfig(scene={"distance_range": (2, 3)})  # BuildConfig's own field
    with pytest.raises(ValueError, match="BuildConfig.scene: SyntheticConfig.zoom_out_range"):
        BuildConfig(scene={"zoom_out_range": (0.5, 2)})
    with pytest.raises(ValueError, match="BuildConfig.scene: expected a dict"):
        BuildConfig(scene=[("photometric", False)])


def test_every_scene_setting_is_a_synthetic_config_field_the_build_does_not_set():
    import dataclasses

    from datasets.synthetic import SyntheticConfig
    from neural_mesh.build import SCENE_FIELDS

    names = {f.name for f in dataclasses.fields(SyntheticConfig)}
    assert set(SCENE_FIELDS) <= names
    assert not set(SCENE_FIELDS) & {"image_size", "mesh_paths", "categories", "distance_range", "center_jitter",
                                    "center_on", "lighting", "room_probability", "occlusion", "vertex_projections"}


def test_every_train_setting_is_set_by_the_build_or_open_to_its_train_field():
    """A new TrainConfig field must be either a BuildConfig field's or one of TRAIN_FIELDS."""
    import dataclasses

    from neural_mesh.build import TRAIN_FIELDS
    from neural_mesh.training import TrainConfig

    owned = {"backbone", "data", "steps", "batch_size", "lr", "lr_schedule", "seed", "num_verts", "mesh_kind",
             "checkpoint_every", "keep_checkpoints"}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert owned | set(TRAIN_FIELDS) == names and not owned & set(TRAIN_FIELDS)


def test_build_with_a_finetuning_stage(tmp_path):
    mesh = tmp_path / "chair.obj"
    mesh.write_bytes(CHAIR.read_bytes())
    tuned_config = replace(TINY, finetune_steps=2, finetune_occlusion=(0.2, 0.7))
    # builds without the stage keep their cache keys (the stage's fields are left out)
    assert "finetune_steps" not in TINY.to_dict() and tuned_config.to_dict()["finetune_steps"] == 2
    assert tuned_config.first_stage() == TINY
    assert cache_key(mesh, tuned_config) != cache_key(mesh, TINY)
    stage = tuned_config.train_config(mesh)
    assert stage.steps == 2 and stage.lr == tuned_config.finetune_lr
    assert stage.data["config"]["occlusion"] == [0.2, 0.7] and stage.data["seed"] == TINY.seed + 1
    tuned = build_model(mesh, tuned_config, cache_dir=tmp_path / "cache", progress=False)
    # the first stage became a cached model of its own; the fine-tuned one started from it
    base = PoseModel.load(model_cache_path(mesh, TINY, tmp_path / "cache"))
    assert (model_cache_path(mesh, tuned_config, tmp_path / "cache") / "model.json").is_file()
    assert tuned.meta["train_steps"] == 4 and tuned.meta["build_config"]["finetune_steps"] == 2
    assert tuned.box_fraction == base.box_fraction
    cos = (tuned.nmesh.features * base.nmesh.features).sum(-1)
    assert float(cos.mean()) > 0.5 and not torch.equal(tuned.nmesh.features, base.nmesh.features)
    with pytest.raises(ValueError, match="BuildConfig.finetune_steps"):
        BuildConfig(finetune_steps=-1)
    with pytest.raises(ValueError, match="BuildConfig.finetune_occlusion"):
        BuildConfig(finetune_occlusion=(0.7, 0.2))
    with pytest.raises(ValueError, match="BuildConfig.finetune_lr"):
        BuildConfig(finetune_lr=0)


def test_finetune_center_jitter_reaches_only_the_finetuning_renders(tmp_path):
    mesh = tmp_path / "chair.obj"
    mesh.write_bytes(CHAIR.read_bytes())
    tuned = replace(TINY, finetune_steps=2, finetune_occlusion=(0.2, 0.7))
    wide = replace(tuned, finetune_center_jitter=0.12)
    # unset, it leaves the key of existing fine-tuned builds as it was
    assert "finetune_center_jitter" not in tuned.to_dict() and wide.to_dict()["finetune_center_jitter"] == 0.12
    assert cache_key(mesh, wide) != cache_key(mesh, tuned)
    assert wide.first_stage() == TINY
    assert tuned.train_config(mesh).data["config"]["center_jitter"] == TINY.center_jitter
    assert wide.train_config(mesh).data["config"]["center_jitter"] == 0.12
    assert wide.first_stage().train_config(mesh).data["config"]["center_jitter"] == TINY.center_jitter
    # without a fine-tuning stage it changes nothing, the key included
    assert replace(TINY, finetune_center_jitter=0.3).to_dict() == TINY.to_dict()
    for bad in (-0.1, 0.6, "0.1", True):
        with pytest.raises(ValueError, match="BuildConfig.finetune_center_jitter"):
            BuildConfig(finetune_center_jitter=bad)


def test_lighting_reaches_the_stages_it_names_and_leaves_old_keys_alone(tmp_path):
    mesh = tmp_path / "chair.obj"
    mesh.write_bytes(CHAIR.read_bytes())
    tuned = replace(TINY, finetune_steps=2, finetune_occlusion=(0.2, 0.7))
    # the default lighting keeps the keys of existing builds (fine-tuned or not)
    assert "lighting" not in TINY.to_dict() and "finetune_lighting" not in tuned.to_dict()
    assert TINY.train_config(mesh).data["config"]["lighting"] == "lambert"
    full = replace(TINY, lighting="full")
    assert full.to_dict()["lighting"] == "full" and cache_key(mesh, full) != cache_key(mesh, TINY)
    assert full.train_config(mesh).data["config"]["lighting"] == "full"
    # a fine-tuning stage inherits the first stage's lighting unless it names its own
    assert replace(full, finetune_steps=2).train_config(mesh).data["config"]["lighting"] == "full"
    late = replace(tuned, finetune_lighting="full")
    assert late.to_dict()["finetune_lighting"] == "full" and cache_key(mesh, late) != cache_key(mesh, tuned)
    assert late.train_config(mesh).data["config"]["lighting"] == "full"
    assert late.first_stage() == TINY and late.first_stage().train_config(mesh).data["config"]["lighting"] == "lambert"
    assert replace(TINY, finetune_lighting="full").to_dict() == TINY.to_dict()  # no stage, no change
    for name in ("lighting", "finetune_lighting"):
        with pytest.raises(ValueError, match=f"BuildConfig.{name}"):
            BuildConfig(**{name: "phong"})


def test_rooms_reach_the_stages_they_name_and_leave_old_keys_alone(tmp_path):
    mesh = tmp_path / "chair.obj"
    mesh.write_bytes(CHAIR.read_bytes())
    tuned = replace(TINY, finetune_steps=2, finetune_occlusion=(0.2, 0.7))
    assert "room_probability" not in TINY.to_dict() and "finetune_room_probability" not in tuned.to_dict()
    assert TINY.train_config(mesh).data["config"]["room_probability"] == 0.0
    rooms = replace(TINY, room_probability=0.5)
    assert rooms.to_dict()["room_probability"] == 0.5 and cache_key(mesh, rooms) != cache_key(mesh, TINY)
    assert rooms.train_config(mesh).data["config"]["room_probability"] == 0.5
    assert replace(rooms, finetune_steps=2).train_config(mesh).data["config"]["room_probability"] == 0.5
    late = replace(tuned, finetune_room_probability=0.3)
    assert late.to_dict()["finetune_room_probability"] == 0.3 and cache_key(mesh, late) != cache_key(mesh, tuned)
    assert late.train_config(mesh).data["config"]["room_probability"] == 0.3
    assert late.first_stage() == TINY and late.first_stage().train_config(mesh).data["config"]["room_probability"] == 0
    assert replace(TINY, finetune_room_probability=0.3).to_dict() == TINY.to_dict()  # no stage, no change
    for name in ("room_probability", "finetune_room_probability"):
        for bad in (-0.1, 1.5, "0.5", True):
            with pytest.raises(ValueError, match=f"BuildConfig.{name}"):
                BuildConfig(**{name: bad})


def test_a_box_centred_build_makes_a_box_centred_model(tmp_path):
    model = build_model(CHAIR, replace(TINY, center_on="box"), cache_dir=tmp_path / "cache", progress=False)
    assert model.center_on == "box" and model.meta["build_config"]["center_on"] == "box"
    assert PoseModel.load(model_cache_path(CHAIR, replace(TINY, center_on="box"), tmp_path / "cache")).center_on == "box"


def test_box_fractions_per_sample_and_their_median():
    # the box's longer side (inclusive pixels) over the image's longer side; samples
    # without a box are skipped, and none at all is an error
    image = torch.zeros(3, 100, 200)
    samples = [{"image": image, "bbox": torch.tensor([10.0, 10.0, 49.0, 29.0])},  # 40 x 20
               {"image": image},
               {"image": image, "bbox": torch.tensor([0.0, 0.0, 19.0, 99.0])},  # 20 x 100
               {"image": image, "bbox": torch.tensor([0.0, 0.0, 159.0, 9.0])}]  # 160 x 10
    assert box_fractions(samples) == pytest.approx([0.2, 0.5, 0.8])
    assert box_fraction_of(samples) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no sample has a bbox"):
        box_fraction_of([{"image": image}])
