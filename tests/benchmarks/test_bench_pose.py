"""benchmarks/bench_pose.py end to end on a tiny model: the table and the JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from neural_mesh.backbones import BackboneConfig, FeatureBackbone
from neural_mesh.model import PoseModel
from neural_mesh.neural_mesh import NeuralMesh
from render import center_and_scale, load_mesh
from datasets.shapes import load_shape
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
CHAIR = ROOT / "demos" / "data" / "chair.obj"


def load_bench():
    return load_script("benchmarks/bench_pose.py")


def save_tiny_model(directory: Path, num_verts: int, meta: dict | None = None) -> None:
    """An untrained PoseModel of the chair, small enough to fit in a blink."""
    backbone = FeatureBackbone(BackboneConfig(arch="resnet18", width=8, feature_dim=16), seed=0)
    nmesh = NeuralMesh.from_mesh(load_shape(CHAIR).mesh, num_verts=num_verts, feature_dim=16, clutter_size=8,
                                 generator=torch.Generator().manual_seed(0))
    _, c, s = center_and_scale(load_mesh(CHAIR), center="bbox", scale="radius")
    PoseModel(backbone, nmesh, (64, 64), 0.6, c, s, meta=meta or {}).save(directory)


def test_bench_pose_prints_a_table_and_writes_json(tmp_path, capsys):
    build = {"steps": 3000, "occlusion": [0.0, 0.5]}
    save_tiny_model(tmp_path / "model", num_verts=60, meta={"build_config": build, "train_steps": 3000})
    bench = load_bench()
    out = tmp_path / "r.json"
    args = ["--mesh", str(CHAIR), "--model", str(tmp_path / "model"), "--no-regression", "--n", "2",
            "--levels", "0", "2", "--singles", "1", "--threads", "1", "--loss", "nemo", "--json", str(out)]
    assert bench.main(args) == 0
    table = capsys.readouterr().out
    assert "| L0" in table and "| L2" in table and "render_and_compare" in table and "nemo loss" in table
    # the title and the JSON describe the model's own build, not the --steps default
    assert "3000 training steps with 0%-50% occluded training renders" in table
    result = json.loads(out.read_text())
    assert result["loss"] == "nemo" and set(result["levels"]) == {"L0", "L2"} and result["device"] == "cpu"
    assert result["steps"] == 3000 and result["occlusion"] == [0.0, 0.5]
    for level in result["levels"].values():
        m = level["render_and_compare"]
        assert 0.0 <= m["acc_pi6"] <= 1.0 and 0.0 <= m["median_deg"] <= 180.0
        # every image's error, so two runs on the same test set compare image by image
        errors = m["errors_deg"]
        assert len(errors) == 2 and all(0.0 <= e <= 180.0 for e in errors)
        assert m["acc_pi6"] == sum(e < 30 for e in errors) / 2 and m["median_deg"] == pytest.approx(
            sum(errors) / 2, abs=2e-3)
        assert m["s_per_image_batched"] > 0 and math.isfinite(m["s_per_image_single"])
        # the evidence for the true pose: a mean margin in [-2, 2] and a share of pixels
        assert -2.0 <= m["true_pose_margin"]["mean"] <= 2.0 and 0.0 <= m["true_pose_margin"]["positive"] <= 1.0
        # the refinement started at the truth: its errors summarised like the fit's
        assert 0.0 <= m["truth_started"]["median_deg"] <= 180.0 and 0.0 <= m["truth_started"]["acc_pi6"] <= 1.0
        assert 0 <= m["truth_started"]["search_misses"] <= m["truth_started"]["failures"] <= 2
        # what tells right fits from wrong ones: each fit's score and size in the photo, and
        # the doubtful flags (score <= 0) counted among the wrong and the right fits
        assert len(m["scores"]) == len(m["photo_fractions"]) == len(m["true_photo_fractions"]) == 2
        assert all(0.0 < f < 1.0 for f in m["true_photo_fractions"])
        assert all(f > 0.0 and math.isfinite(f) for f in m["photo_fractions"])
        wrong = sum(e >= 30 for e in errors)
        flagged = sum(s <= 0 for s in m["scores"])
        assert m["doubtful"]["wrong"][1] == wrong and m["doubtful"]["right"][1] == 2 - wrong
        assert m["doubtful"]["wrong"][0] + m["doubtful"]["right"][0] == flagged
    assert result["levels"]["L2"]["occlusion"] > 0.3  # level 2 hides 40-60% of the object
    assert "margin at truth" in table and "from truth" in table and "search misses" in table
    flags = [line for line in table.splitlines() if line.startswith("Fits flagged as doubtful (score <= 0")]
    assert len(flags) == 1 and "L0 " in flags[0] and "L2 " in flags[0]


def test_truth_started_fits_start_at_the_test_sets_true_pose(tmp_path):
    # no refinement steps: the truth-started "fit" returns the true pose itself, so the
    # test set's poses, the model frame and the crops agree
    from neural_mesh.build import BuildConfig
    from neural_mesh.fitting import FitConfig

    save_tiny_model(tmp_path / "model", num_verts=40)
    bench = load_bench()
    model = PoseModel.load(tmp_path / "model")
    samples = bench.test_set(CHAIR, BuildConfig(), 1, 3)
    still = bench.truth_started(model, samples, 2, FitConfig(steps=0))
    assert still[0]["median_deg"] < 0.01 and still[0]["acc_pi18"] == 1.0
    moved, err, started = bench.truth_started(model, samples, 2, FitConfig(steps=30))  # random features pull it away
    assert moved["median_deg"] > still[0]["median_deg"] and len(started) == 3
    assert torch.allclose(err, bench.rotation_error(
        torch.stack([r.R for r in started]).double(), torch.stack([s["R"] for s in samples]).double()) * 180 / math.pi)


def test_shifted_box_moves_the_crop_by_that_many_input_pixels(tmp_path):
    save_tiny_model(tmp_path / "model", num_verts=40)
    bench = load_bench()
    model = PoseModel.load(tmp_path / "model")
    image = torch.rand(3, 90, 120)
    K = torch.tensor([[100.0, 0, 60], [0, 100.0, 45], [0, 0, 1]])
    box = [30.0, 20.0, 70.0, 50.0]
    _, K0, (x0, y0, scale) = model.prepare(image, K, box)
    _, K1, (x1, y1, scale1) = model.prepare(image, K, bench.shifted_box(model, box, 4.0))
    # the crop moves right by 4 of its own pixels, so the object (the principal point too)
    # appears 4 pixels further left in it; nothing else changes
    assert scale1 == pytest.approx(scale) and y1 == pytest.approx(y0)
    assert x1 - x0 == pytest.approx(4.0 * scale)
    assert float(K0[0, 2] - K1[0, 2]) == pytest.approx(4.0, abs=1e-4)
    assert torch.allclose(K0[1:], K1[1:]) and torch.allclose(K0[0, :2], K1[0, :2])


def test_crop_shift_margins_are_the_true_pose_margins_of_the_shifted_crops(tmp_path):
    from neural_mesh.build import BuildConfig

    save_tiny_model(tmp_path / "model", num_verts=40)
    bench = load_bench()
    model = PoseModel.load(tmp_path / "model")
    samples = bench.test_set(CHAIR, BuildConfig(), 0, 3)
    out = bench.crop_shift_margins(model, samples, 2, [0.0, 8.0])
    assert set(out) == {"0", "8"}
    boxes = [s["bbox"].tolist() for s in samples]
    assert out["0"] == bench.true_pose_margins(model, samples, 2, boxes)
    moved = bench.true_pose_margins(model, samples, 2, [bench.shifted_box(model, b, 8.0) for b in boxes])
    assert out["8"] == moved and out["8"] != out["0"]  # another crop, other features


def test_bench_pose_crop_shifts_add_a_table_and_json(tmp_path, capsys):
    bench, out, args = _tiny_model_run(tmp_path, "--n", "2", "--singles", "1", "--crop-shifts", "0", "4")
    assert bench.main(args) == 0
    table = capsys.readouterr().out
    assert "on crops around the true box" in table and "uncropped" in table and "4 px" in table
    m = json.loads(out.read_text())["levels"]["L0"]["render_and_compare"]
    assert set(m["crop_shift_margins"]) == {"0", "4"}
    for cell in m["crop_shift_margins"].values():
        assert -2.0 <= cell["mean"] <= 2.0 and 0.0 <= cell["positive"] <= 1.0
    # without the option, neither the table nor the JSON entry
    bench, out, args = _tiny_model_run(tmp_path / "plain", "--n", "2", "--singles", "1")
    assert bench.main(args) == 0
    assert "uncropped" not in capsys.readouterr().out
    assert "crop_shift_margins" not in json.loads(out.read_text())["levels"]["L0"]["render_and_compare"]


def test_search_misses_blames_the_search_when_the_truth_scores_better(tmp_path, monkeypatch):
    from dataclasses import replace

    from neural_mesh.build import BuildConfig
    from neural_mesh.fitting import FitConfig

    save_tiny_model(tmp_path / "model", num_verts=40)
    bench = load_bench()
    model = PoseModel.load(tmp_path / "model")
    samples = bench.test_set(CHAIR, BuildConfig(), 0, 3)
    still = FitConfig(steps=0)  # no refinement: a pose's score is its own loss on the crop
    _, started_err, started = bench.truth_started(model, samples, 3, still)
    assert float(started_err.max()) < 0.01
    truth = [(r.R, r.t) for r in started]
    failed = torch.tensor([90.0, 90.0, 5.0])  # the third is no failure: not judged
    ok = torch.full((3,), 5.0)
    assert bench.search_misses(model, samples, truth, started, ok, started_err, still) == (0, 0)
    assert bench.search_misses(model, samples, truth, started, failed, started_err, still) == (2, 0)  # equal scores
    # a "fitted" pose scored higher than the truth is the loss's fault, lower the search's
    better = [replace(r, score=r.score + 1.0) for r in started]
    worse = [replace(r, score=r.score - 1.0) for r in started]
    assert bench.search_misses(model, samples, truth, worse, failed, started_err, still) == (2, 0)
    assert bench.search_misses(model, samples, truth, better, failed, started_err, still) == (2, 2)
    # ... unless the truth-started pose itself drifted off (>= 30 deg): then the loss is wrong there too
    drifted = torch.tensor([45.0, 5.0, 5.0])
    assert bench.search_misses(model, samples, truth, better, failed, drifted, still) == (2, 1)
    # the failed poses are refined again on the truth-started crop (the true pose's box)
    seen = []
    fit = PoseModel.fit
    monkeypatch.setattr(PoseModel, "fit", lambda self, *a, **k: seen.append(k) or fit(self, *a, **k))
    bench.search_misses(model, samples, truth, started, failed, started_err, still)
    assert seen[0]["bbox"] == [model.crop_box(samples[i]["R"], samples[i]["t"], samples[i]["K"]) for i in (0, 1)]
    assert seen[0]["config"].top_k == 0


def _tiny_model_run(tmp_path: Path, *options: str):
    """The bench module and the arguments of a run on a tiny saved model at L0 (one
    thread, no baseline, ``--json`` last): ``(bench, json_path, args)``."""
    save_tiny_model(tmp_path / "model", num_verts=40)
    out = tmp_path / "r.json"
    args = ["--mesh", str(CHAIR), "--model", str(tmp_path / "model"), "--no-regression", "--levels", "0",
            "--threads", "1", *options, "--json", str(out)]
    return load_bench(), out, args


def _record_fit_argument(monkeypatch, name: str) -> list:
    """Patch ``PoseModel.fit`` to record its keyword ``name`` on every call."""
    seen = []
    fit = PoseModel.fit
    monkeypatch.setattr(PoseModel, "fit", lambda self, *a, **k: seen.append(k.get(name)) or fit(self, *a, **k))
    return seen


def test_bench_pose_box_gives_render_and_compare_the_true_box(tmp_path, capsys, monkeypatch):
    bench, out, args = _tiny_model_run(tmp_path, "--n", "2", "--singles", "1", "--box")
    boxes = _record_fit_argument(monkeypatch, "bbox")
    assert bench.main(args) == 0
    assert "render-and-compare given the true box" in capsys.readouterr().out
    assert json.loads(out.read_text())["box"] is True
    samples = bench.test_set(CHAIR, bench.BuildConfig(), 0, 2)
    assert boxes[0] == [s["bbox"].tolist() for s in samples]  # the batched fit
    assert boxes[1] == [samples[0]["bbox"].tolist()]  # the single-image timing
    boxes.clear()
    assert bench.main(args[:-3] + ["--json", str(out)]) == 0
    assert boxes[0] is None and json.loads(out.read_text())["box"] is False


def test_moved_boxes_keep_the_size_and_move_the_centre_by_the_shift():
    bench = load_bench()
    samples = [{"bbox": torch.tensor([10.0, 20.0, 50.0, 40.0])} for _ in range(5)]
    moved = bench.moved_boxes(samples, 6.0)
    directions = set()
    for box in moved:
        assert box[2] - box[0] == pytest.approx(40.0) and box[3] - box[1] == pytest.approx(20.0)
        dx, dy = (box[0] + box[2]) / 2 - 30.0, (box[1] + box[3]) / 2 - 30.0
        assert math.hypot(dx, dy) == pytest.approx(6.0)
        directions.add((round(dx, 3), round(dy, 3)))
    assert len(directions) == 5  # each image its own direction
    assert bench.moved_boxes(samples, 0.0)[0] == [10.0, 20.0, 50.0, 40.0]


def test_bench_pose_box_shift_gives_the_moved_box(tmp_path, capsys, monkeypatch):
    bench, out, args = _tiny_model_run(tmp_path, "--n", "2", "--singles", "1", "--box", "--box-shift", "5")
    boxes = _record_fit_argument(monkeypatch, "bbox")
    assert bench.main(args) == 0
    assert "given the true box moved by 5 px" in capsys.readouterr().out
    assert json.loads(out.read_text())["box_shift"] == 5.0
    samples = bench.test_set(CHAIR, bench.BuildConfig(), 0, 2)
    assert boxes[0] == bench.moved_boxes(samples, 5.0) != [s["bbox"].tolist() for s in samples]


@pytest.mark.parametrize("extra, words", [(["--box-shift", "4"], "needs --box"),
                                          (["--box", "--box-shift", "-1"], "expected a distance >= 0"),
                                          (["--raycast-off", "shadows"], "needs --renderer raycast"),
                                          (["--renderer", "raycast", "--raycast-off", "fog"], "invalid choice: 'fog'"),
                                          (["--zoom-out", "0.5"], "--zoom-out: expected a factor in [1, 8]"),
                                          (["--zoom-out", "nan"], "--zoom-out: expected a factor in [1, 8]")])
def test_bench_pose_rejects_bad_test_image_options(capsys, extra, words):
    with pytest.raises(SystemExit) as exit_info:
        load_bench().main(["--no-regression", *extra])
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_bench_pose_fit_settings_reach_the_fit(tmp_path, capsys, monkeypatch):
    bench, out, args = _tiny_model_run(tmp_path, "--n", "1", "--singles", "0", "--polish", "1", "--fit", "top_k=2",
                                       "--fit", "elevation_range_deg=[-10, 40]", "--fit", "clutter_score=mean")
    configs = _record_fit_argument(monkeypatch, "config")
    assert bench.main(args) == 0
    config = configs[0]
    assert (config.top_k, config.elevation_range_deg, config.clutter_score, config.polish) == (2, (-10, 40), "mean", 1)
    result = json.loads(out.read_text())
    assert result["fit"] == {"elevation_range_deg": [-10, 40], "top_k": 2, "polish": 1, "clutter_score": "mean"}
    # and every setting, so that runs stay comparable when a default changes
    assert result["fit_config"] == json.loads(json.dumps(dataclasses.asdict(config)))
    assert "top_k=2" in capsys.readouterr().out


@pytest.mark.parametrize("item, words", [("top_k", "expected NAME=VALUE"), ("topk=3", "not a FitConfig setting"),
                                         ("top_k=-1", "top_k: expected >= 0")])
def test_bench_pose_rejects_bad_fit_settings(capsys, item, words):
    bench = load_bench()
    with pytest.raises(SystemExit) as stop:
        bench.main(["--fit", item, "--no-regression", "--n", "1"])
    assert stop.value.code == 2
    assert words in capsys.readouterr().err


def test_bench_pose_on_ray_cast_images(tmp_path, capsys, monkeypatch):
    save_tiny_model(tmp_path / "model", num_verts=40)
    bench = load_bench()
    seen = []
    real = bench.test_set
    monkeypatch.setattr(bench, "test_set", lambda *a, **k: seen.append((a, k)) or real(*a, **k))
    out = tmp_path / "r.json"
    args = ["--mesh", str(CHAIR), "--model", str(tmp_path / "model"), "--no-regression", "--n", "1",
            "--levels", "1", "--singles", "1", "--threads", "1", "--renderer", "raycast", "--raycast-off", "shadows",
            "noise", "--test-seed", "7", "--json", str(out)]
    assert bench.main(args) == 0
    table = capsys.readouterr().out
    assert "ray-cast images (another renderer; shadows, noise off)" in table
    assert "? training steps" in table  # a model with no recorded training
    assert seen and seen[0][0][-2:] == ("raycast", ["shadows", "noise"])
    assert seen[0][1] == {"seed": 7, "zoom_out": 1.0}
    result = json.loads(out.read_text())
    assert result["renderer"] == "raycast" and result["raycast_off"] == ["shadows", "noise"]
    assert result["test_seed"] == 7
    assert 0.2 <= result["levels"]["L1"]["occlusion"] <= 0.45


def test_bench_pose_zoom_out_frames_the_test_photos_wider(tmp_path, capsys):
    bench, out, args = _tiny_model_run(tmp_path, "--n", "1", "--singles", "0", "--zoom-out", "1.5")
    assert bench.main(args) == 0
    table = capsys.readouterr().out
    assert "renders framed 1.5x wider of chair.obj" in table
    result = json.loads(out.read_text())
    assert result["zoom_out"] == 1.5
    # the object's share of the photo, printed and kept: about 1 / 1.5 of a training-like framing's
    share = result["levels"]["L0"]["object_fraction"]
    assert 0.2 < share < 0.6 and f"L0 {share:.2f}" in table


@pytest.mark.parametrize("renderer", ["engine", "raycast"])
def test_another_test_seed_draws_another_test_set(renderer):
    bench = load_bench()
    first = bench.test_set(CHAIR, bench.BuildConfig(), 1, 2, renderer)
    again = bench.test_set(CHAIR, bench.BuildConfig(), 1, 2, renderer, seed=bench.TEST_SEED)
    other = bench.test_set(CHAIR, bench.BuildConfig(), 1, 2, renderer, seed=bench.TEST_SEED + 1)
    for a, b, c in zip(first, again, other):
        assert torch.equal(a["image"], b["image"])
        assert not torch.equal(a["image"], c["image"])


@pytest.mark.parametrize("renderer", ["engine", "raycast"])
def test_zoomed_out_test_photos_keep_the_viewpoints_and_the_objects_pixels(renderer):
    bench = load_bench()
    build = bench.BuildConfig(image_size=64)
    near = bench.test_set(CHAIR, build, 0, 2, renderer)
    wide = bench.test_set(CHAIR, build, 0, 2, renderer, zoom_out=2)
    for a, b in zip(near, wide):
        assert a["image"].shape[-2:] == (64, 64) and b["image"].shape[-2:] == (128, 128)
        assert float(a["azimuth"]) == float(b["azimuth"]) and float(a["elevation"]) == float(b["elevation"])
        assert float(b["distance"]) == pytest.approx(2 * float(a["distance"]))
        # the same focal length in image sides, twice the sides, twice the distance: the same pixels
        side = lambda s: max(float(s["bbox"][2] - s["bbox"][0]), float(s["bbox"][3] - s["bbox"][1]))
        assert side(b) == pytest.approx(side(a), abs=3)


def test_bench_pose_rejects_a_bad_occlusion_range(capsys):
    bench = load_bench()
    try:
        bench.main(["--occlusion", "0.6", "0.2", "--no-regression", "--n", "1"])
    except SystemExit as stop:
        assert stop.code == 2
    else:
        raise AssertionError("expected exit 2")
    assert "occlusion" in capsys.readouterr().err


def _record_builds(bench, monkeypatch) -> list:
    """The BuildConfigs bench.main asks for; each call stops it before training (exit 0)."""
    seen = []

    def fake_build(mesh, config, cache_dir=None, device="cpu"):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(bench, "build_model", fake_build)
    return seen


def test_bench_pose_passes_backbone_image_size_stride_and_mesh_to_the_build(tmp_path, capsys, monkeypatch):
    bench = load_bench()
    seen = _record_builds(bench, monkeypatch)
    with pytest.raises(SystemExit):
        bench.main(["--steps", "5", "--backbone", "resnet18", "--image-size", "96", "--output-stride", "4",
                    "--mesh-kind", "cuboid", "--num-verts", "700", "--no-regression", "--cache", str(tmp_path)])
    assert (seen[0].backbone, seen[0].image_size, seen[0].output_stride, seen[0].mesh_kind, seen[0].num_verts) == (
        "resnet18", 96, 4, "cuboid", 700)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--image-size", "16", "--no-regression", "--n", "1"])
    assert stop.value.code == 2 and "image_size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        bench.main(["--output-stride", "2", "--no-regression", "--n", "1"])
    assert stop.value.code == 2 and "--output-stride" in capsys.readouterr().err


def test_bench_pose_passes_the_room_probabilities_to_the_build(tmp_path, capsys, monkeypatch):
    bench = load_bench()
    seen = _record_builds(bench, monkeypatch)
    with pytest.raises(SystemExit):
        bench.main(["--steps", "5", "--room-probability", "0.2", "--finetune-steps", "3",
                    "--finetune-room-probability", "0.5", "--no-regression", "--cache", str(tmp_path)])
    assert (seen[0].room_probability, seen[0].finetune_room_probability) == (0.2, 0.5)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--room-probability", "1.5", "--no-regression", "--n", "1"])
    assert stop.value.code == 2 and "room_probability" in capsys.readouterr().err


def test_bench_pose_passes_scene_settings_to_the_build_and_the_baselines_key(tmp_path, capsys, monkeypatch):
    bench = load_bench()
    seen = _record_builds(bench, monkeypatch)
    with pytest.raises(SystemExit):
        bench.main(["--scene", "zoom_out_probability=0.3", "--scene", "background_scale_range=[0.03, 1.2]",
                    "--no-regression", "--cache", str(tmp_path)])
    assert seen[0].scene == {"zoom_out_probability": 0.3, "background_scale_range": [0.03, 1.2]}
    # the baseline trains on the same renders: another scene is another baseline (unlike --train)
    _, entry = _cached_regressors(bench, tmp_path, monkeypatch, bench.BuildConfig(), seen[0])
    assert bench.get_regressor(CHAIR, seen[0], tmp_path, progress=False) == entry
    _assert_bad_assignments(bench, capsys, "--scene", (("zoom_out_probability", "expected NAME=VALUE"),
                                                       ("distance_range=[2, 3]", "not a setting it can change")))


def test_bench_pose_preset_sets_the_build_and_its_flags_change_it(tmp_path, capsys, monkeypatch):
    bench = load_bench()
    seen = _record_builds(bench, monkeypatch)
    with pytest.raises(SystemExit):
        bench.main(["--preset", "accurate", "--no-regression", "--cache", str(tmp_path)])
    assert seen[0] == bench.BuildConfig.preset("accurate")
    with pytest.raises(SystemExit):
        bench.main(["--preset", "accurate", "--steps", "7", "--finetune-occlusion", "0.1", "0.6", "--no-regression",
                    "--cache", str(tmp_path)])
    assert seen[1] == bench.BuildConfig.preset("accurate", steps=7, finetune_occlusion=(0.1, 0.6))
    with pytest.raises(SystemExit):  # a preset's scene settings, with one more from --scene
        bench.main(["--preset", "wide", "--scene", "max_occluders=2", "--no-regression", "--cache", str(tmp_path)])
    assert seen[2] == bench.BuildConfig.preset("wide", scene={"max_occluders": 2})
    assert seen[2].steps == 4000 and seen[2].scene["zoom_out_probability"] > 0
    with pytest.raises(SystemExit) as stop:
        bench.main(["--preset", "fast", "--no-regression"])
    assert stop.value.code == 2 and "--preset" in capsys.readouterr().err


def test_bench_pose_passes_train_settings_to_the_build_but_not_to_the_baselines_key(tmp_path, capsys, monkeypatch):
    bench = load_bench()
    seen = _record_builds(bench, monkeypatch)
    with pytest.raises(SystemExit):
        bench.main(["--train", "neighbor_radius=0.04", "--train", "sampling=bilinear", "--no-regression",
                    "--cache", str(tmp_path)])
    assert seen[0].train == {"neighbor_radius": 0.04, "sampling": "bilinear"} and seen[0].seed == 0
    with pytest.raises(SystemExit):
        bench.main(["--seed", "1", "--no-regression", "--cache", str(tmp_path)])
    assert seen[1].seed == 1 and seen[1].train == {}
    # the baseline does not use NeMo's loss: builds differing only there share its cache entry
    (shared,) = _cached_regressors(bench, tmp_path, monkeypatch, bench.BuildConfig())
    assert bench.get_regressor(CHAIR, seen[0], tmp_path, progress=False) == shared
    _assert_bad_assignments(bench, capsys, "--train", (("neighbor_radius", "expected NAME=VALUE"),
                                                       ("steps=3", "not a setting it can change")))


def _cached_regressors(bench, cache: Path, monkeypatch, *builds) -> list[Path]:
    """Fake cached regression baselines of ``builds`` (their cache entries, returned), and
    ``load_regressor`` patched to return the entry it is asked to load."""
    import neural_mesh.regression as regression

    entries = []
    for build in builds:
        entry = cache / "regressors" / bench.cache_key(CHAIR, build)
        entry.mkdir(parents=True)
        (entry / "regressor.json").write_text("{}")
        entries.append(entry)
    monkeypatch.setattr(regression, "load_regressor", lambda directory, device="cpu": directory)
    return entries


def _assert_bad_assignments(bench, capsys, flag: str, cases) -> None:
    """Each ``(item, words)``: ``flag item`` is a usage error (exit 2) whose message has ``words``."""
    for item, words in cases:
        with pytest.raises(SystemExit) as stop:
            bench.main([flag, item, "--no-regression", "--n", "1"])
        assert stop.value.code == 2 and words in capsys.readouterr().err


def test_bench_pose_passes_the_centre_jitters_to_the_build(tmp_path, capsys, monkeypatch):
    bench = load_bench()
    seen = _record_builds(bench, monkeypatch)
    with pytest.raises(SystemExit):
        bench.main(["--steps", "5", "--finetune-steps", "3", "--finetune-center-jitter", "0.12", "--no-regression",
                    "--cache", str(tmp_path)])
    assert (seen[0].finetune_steps, seen[0].finetune_center_jitter) == (3, 0.12)
    assert seen[0].center_jitter == bench.BuildConfig.center_jitter
    with pytest.raises(SystemExit):
        bench.main(["--steps", "5", "--center-jitter", "0.15", "--no-regression", "--cache", str(tmp_path)])
    assert (seen[1].center_jitter, seen[1].finetune_center_jitter) == (0.15, None)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--center-jitter", "0.7", "--no-regression", "--n", "1"])
    assert stop.value.code == 2 and "center_jitter" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        bench.main(["--finetune-steps", "3", "--finetune-center-jitter", "0.9", "--no-regression", "--n", "1"])
    assert stop.value.code == 2 and "finetune_center_jitter" in capsys.readouterr().err


def test_bench_pose_rejects_a_bad_model_directory(tmp_path, capsys):
    bench = load_bench()
    try:
        bench.main(["--model", str(tmp_path / "nothing"), "--no-regression", "--n", "1"])
    except SystemExit as stop:
        assert stop.code == 2
    else:
        raise AssertionError("expected exit 2")
    assert "nothing" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    bench = load_bench()

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "main", interrupted)
    assert bench.run(["--no-regression"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("device", ["gpu0", "cuda"])
def test_bench_pose_rejects_a_device_it_cannot_use(tmp_path, capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    save_tiny_model(tmp_path / "model", num_verts=40)
    bench = load_bench()
    with pytest.raises(SystemExit) as stop:
        bench.main(["--model", str(tmp_path / "model"), "--no-regression", "--n", "1", "--device", device])
    assert stop.value.code == 2
    assert "--device" in capsys.readouterr().err


def test_the_regression_baseline_is_evaluated_in_eval_mode(tmp_path):
    """Freshly trained or loaded from the cache, the baseline predicts with BatchNorm's
    running statistics (train mode would normalise each test batch by itself)."""
    from neural_mesh.build import BuildConfig

    bench = load_bench()
    build = BuildConfig(steps=1, image_size=32, batch_size=2)
    fresh = bench.get_regressor(CHAIR, build, tmp_path, progress=False)
    assert (tmp_path / "regressors").is_dir() and not list((tmp_path / "regressor_runs").iterdir())
    cached = bench.get_regressor(CHAIR, build, tmp_path, progress=False)
    assert not fresh.training and not cached.training
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        one_by_one = torch.cat([fresh.predict(images[i:i + 1])[1] for i in range(3)])
        torch.testing.assert_close(fresh.predict(images)[1], one_by_one)


def test_a_fine_tuned_build_gets_a_fine_tuned_baseline(tmp_path):
    """With a fine-tuning stage, the baseline is the first stage's (cached as its own)
    trained on for the stage's steps on the stage's renders at its rate."""
    from neural_mesh.build import BuildConfig, cache_key
    from neural_mesh.regression import RegressionConfig, train_regressor
    from neural_mesh.training import default_workers

    bench = load_bench()
    build = BuildConfig(steps=1, image_size=32, batch_size=2, finetune_steps=2, finetune_occlusion=(0.2, 0.7),
                        finetune_lr=3e-4)
    tuned = bench.get_regressor(CHAIR, build, tmp_path, progress=False)
    first = bench.get_regressor(CHAIR, build.first_stage(), tmp_path, progress=False)  # from the cache
    assert sorted(p.name for p in (tmp_path / "regressors").iterdir()) == sorted(
        [cache_key(CHAIR, build), cache_key(CHAIR, build.first_stage())])
    config = RegressionConfig(backbone=tuned.config.backbone, batch_size=2, steps=2, lr=3e-4)
    expected = train_regressor(config, tmp_path / "by_hand", data=build.train_config(CHAIR).data,
                               progress=False, init=first, workers=default_workers("cpu")).model
    for (name, a), (_, b) in zip(expected.state_dict().items(), tuned.state_dict().items()):
        assert torch.equal(a, b), name  # the same thread count: bit for bit
    assert not torch.equal(tuned.cls.weight, first.cls.weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_pose_fits_on_cuda(tmp_path, capsys):
    save_tiny_model(tmp_path / "model", num_verts=40)
    bench = load_bench()
    out = tmp_path / "r.json"
    args = ["--mesh", str(CHAIR), "--model", str(tmp_path / "model"), "--no-regression", "--n", "2",
            "--levels", "0", "--singles", "1", "--device", "cuda", "--json", str(out)]
    assert bench.main(args) == 0
    assert "cuda" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["device"].startswith("cuda") and 0.0 <= result["levels"]["L0"]["render_and_compare"]["acc_pi6"] <= 1.0
