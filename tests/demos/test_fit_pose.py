"""demos/fit_pose.py: the JSON contract, the outputs, the file-frame conversion, the model
cache, one-line errors for bad input, and the bundled example (demos/make_example.py).

The CLI runs in-process (``main(argv)``) with a tiny untrained pose model, so the poses are
meaningless but every path through the program is exercised quickly; ``--fit-steps 0``
keeps the fits short.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from datasets.shapes import load_shape
from neural_mesh.backbones import BackboneConfig, FeatureBackbone
from neural_mesh.build import BUILD_PRESETS, BuildConfig
from neural_mesh.fitting import FitConfig, PoseResult
from neural_mesh.model import PoseModel
from neural_mesh.neural_mesh import NeuralMesh, file_sha256
from render import (
    Mesh,
    angles_to_pose,
    center_and_scale,
    load_mesh,
    project_points,
    rasterize,
    save_mesh,
)
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
CHAIR = ROOT / "demos" / "data" / "chair.obj"
EXAMPLE_JSON = ROOT / "demos" / "data" / "chair_example.json"
EXAMPLE_PNG = ROOT / "demos" / "data" / "chair_example.png"
RECORD_KEYS = ["image", "R", "t", "azimuth_deg", "elevation_deg", "theta_deg", "distance", "score", "seconds"]
FAST = ["--fit-steps", "0"]


def _import(name: str):
    return load_script(f"demos/{name}.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these small workloads gain nothing from more, and lose much on a
    busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fp():
    """demos/fit_pose.py imported in-process."""
    return _import("fit_pose")


@pytest.fixture(scope="module")
def make_example():
    return _import("make_example")


def _tiny_model(mesh_path: Path, out: Path) -> Path:
    """An untrained PoseModel of ``mesh_path`` (16-d features, 100 vertices, 64 x 64)."""
    backbone = FeatureBackbone(BackboneConfig(arch="resnet18", width=8, feature_dim=16), seed=0)
    shape = load_shape(mesh_path)
    nmesh = NeuralMesh.from_mesh(shape.mesh, num_verts=100, feature_dim=16, clutter_size=8,
                                 generator=torch.Generator().manual_seed(0))
    _, c, s = center_and_scale(load_mesh(mesh_path), center="bbox", scale="radius")
    meta = {"mesh_file": mesh_path.name, "mesh_sha256": file_sha256(mesh_path)}
    PoseModel(backbone, nmesh, (64, 64), 0.6, c, s, meta).save(out)
    return out


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Path:
    """The chair moved and scaled (bounding-box centre far from the origin, radius not 1),
    so that the file frame and the model frame differ."""
    mesh = load_mesh(CHAIR)
    path = tmp_path_factory.mktemp("mesh") / "big_chair.obj"
    offset = torch.tensor([0.7, -1.2, 3.0], dtype=mesh.verts.dtype)
    save_mesh(Mesh(mesh.verts * 2.5 + offset, mesh.faces, name="big_chair"), path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shifted) -> Path:
    return _tiny_model(shifted, tmp_path_factory.mktemp("models") / "big_chair")


@pytest.fixture(scope="module")
def chair_model_dir(tmp_path_factory) -> Path:
    return _tiny_model(CHAIR, tmp_path_factory.mktemp("models") / "chair")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """The example photo as an RGBA PNG and as a smaller 16-bit grey PNG, both named
    ``photo.png`` (in two folders)."""
    root = tmp_path_factory.mktemp("photos")
    rgb = iio.imread(EXAMPLE_PNG)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 200, np.uint8)], axis=2)[20:220, 30:300]
    grey16 = rgb[::2, ::2].mean(axis=2).round().astype(np.uint16) * 257
    paths = [root / "a" / "photo.png", root / "b" / "photo.png"]
    for path, array in zip(paths, (rgba, grey16)):
        path.parent.mkdir()
        iio.imwrite(path, array)
    assert iio.imread(paths[0]).shape[2] == 4 and iio.imread(paths[1]).dtype == np.uint16
    return paths


def run(cli, capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def check_rotation(R) -> None:
    R = torch.tensor(R, dtype=torch.float64)
    assert R.shape == (3, 3)
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    assert abs(float(torch.linalg.det(R)) - 1) < 1e-5


# ---------------------------------------------------------------------------- contract


def test_help_documents_camera_guess_and_outputs(fp, capsys):
    code, out, _ = run(fp, capsys, "-h")
    assert code == 0
    text = " ".join(out.split())
    for needle in ("--mesh", "--model", "--focal F", "--K FX FY CX CY", "--bbox X0 Y0 X1 Y1", "--out", "--json",
                   "1.2 x the longer image side", "principal point at the image centre", "--build-steps",
                   "--build-size", "--cache", "MESHPOSE_CACHE", "\"distance\" is |t|", "bundled example"):
        assert needle in text, needle


def test_json_lines_and_out_files(fp, capsys, photos, shifted, model_dir, tmp_path):
    out_dir = tmp_path / "out"
    # one box for all images (inside each of them); a box also skips the second, re-cropped fit
    code, out, err = run(fp, capsys, *photos, "--mesh", shifted, "--model", model_dir, "--focal", "400",
                         "--bbox", "20", "10", "110", "100", "--json", "--out", out_dir, *FAST)
    assert code == 0, err
    assert "was built for" not in err  # the model was built for this mesh
    lines = out.splitlines()
    assert len(lines) == len(photos)  # nothing else on stdout
    records = [json.loads(line) for line in lines]
    for record, path in zip(records, photos):
        assert list(record) == RECORD_KEYS
        assert record["image"] == str(path)
        check_rotation(record["R"])
        t = torch.tensor(record["t"], dtype=torch.float64)
        assert t.shape == (3,) and bool(torch.isfinite(t).all())
        assert record["distance"] == pytest.approx(float(t.norm()), rel=1e-9)
        for key in ("azimuth_deg", "elevation_deg", "theta_deg", "score", "seconds"):
            assert isinstance(record[key], float) and math.isfinite(record[key])
        assert -180.0 <= record["azimuth_deg"] <= 180.0 and -90.0 <= record["elevation_deg"] <= 90.0
    # --out: a pose JSON (the same object) and an overlay of the photo's size per image;
    # the two photo.png get distinct stems; no temporary file is left (grey, RGBA and
    # 16-bit photos are read as RGB)
    stems = ["photo", "photo_1"]
    expected = {f"{s}_{kind}" for s in stems for kind in ("pose.json", "overlay.png")} | {"fit_pose_state.json"}
    assert {p.name for p in out_dir.iterdir()} == expected
    for stem, record, path in zip(stems, records, photos):
        assert json.loads((out_dir / f"{stem}_pose.json").read_text()) == record
        overlay = iio.imread(out_dir / f"{stem}_overlay.png")
        photo = iio.imread(path)
        assert overlay.shape == photo.shape[:2] + (3,) and overlay.dtype == np.uint8
        rgb = photo[..., :3] if photo.ndim == 3 else np.repeat((photo / 257).round()[..., None], 3, axis=2)
        assert (overlay == rgb).all(axis=2).mean() > 0.5  # the photo, as RGB, outside the mesh


def test_fit_upsample_and_crops_reach_the_fit(fp, capsys, photos, shifted, model_dir, monkeypatch):
    seen = []
    fit = PoseModel.fit
    monkeypatch.setattr(PoseModel, "fit", lambda self, *a, config=FitConfig(), **k: seen.append(config) or fit(
        self, *a, config=config, **k))
    code, out, err = run(fp, capsys, photos[0], "--mesh", shifted, "--model", model_dir, "--json",
                         "--fit-upsample", "2", "--fit-crops", "3", *FAST)
    assert code == 0, err
    assert len(out.splitlines()) == 1
    assert seen and all(c.upsample == 2 and c.steps == 0 and c.crop_ensemble == 3 for c in seen)


def test_an_object_small_in_the_photo_without_bbox_is_a_warning(fp, capsys, photos, shifted, model_dir, monkeypatch):
    # small_in_photo's own logic is tested with the model; here: who is warned, and where
    asked = []
    monkeypatch.setattr(PoseModel, "small_in_photo", lambda self, result, size, K: asked.append(tuple(size)) or True)
    monkeypatch.setattr(PoseResult, "doubtful", False)  # the tiny model's fits score under 0: its own test
    code, out, err = run(fp, capsys, photos[0], "--mesh", shifted, "--model", model_dir, "--json", *FAST)
    assert code == 0, err
    assert len(out.splitlines()) == 1 and json.loads(out)  # stdout stays one JSON line
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and str(photos[0]) in warning[0] and "--bbox" in warning[0]
    assert "--build-preset wide" in warning[0]  # the model was not built for wide framings
    assert len(asked) == 1
    monkeypatch.setattr(PoseModel, "trained_wide", True)
    code, out, err = run(fp, capsys, photos[0], "--mesh", shifted, "--model", model_dir, "--json", *FAST)
    warning = [line for line in err.splitlines() if "warning" in line]
    assert code == 0 and len(warning) == 1 and "--build-preset" not in warning[0]
    asked.clear()
    code, out, err = run(fp, capsys, photos[0], "--mesh", shifted, "--model", model_dir, "--bbox", "10", "10", "60",
                         "60", *FAST)
    assert code == 0 and "warning" not in err and not asked  # a given box: no question


def test_a_fit_no_better_than_clutter_is_a_warning_with_or_without_bbox(fp, capsys, photos, shifted, model_dir,
                                                                        monkeypatch):
    # PoseResult.doubtful's own rule is tested with the fitting; here: who is warned, and how
    monkeypatch.setattr(PoseModel, "small_in_photo", lambda self, result, size, K: False)
    for doubtful in (True, False):
        monkeypatch.setattr(PoseResult, "doubtful", doubtful)
        for box in ([], ["--bbox", "10", "10", "60", "60"]):
            code, out, err = run(fp, capsys, *photos, "--mesh", shifted, "--model", model_dir, "--json", *box,
                                 *FAST)
            assert code == 0, err
            assert len(out.splitlines()) == len(photos)  # stdout stays JSON lines
            warning = [line for line in err.splitlines() if "warning" in line]
            if not doubtful:
                assert not warning
                continue
            assert len(warning) == len(photos)
            assert all(str(p) in w and "probably wrong" in w for p, w in zip(photos, warning))
            scores = [json.loads(line)["score"] for line in out.splitlines()]
            assert all(f"scores {s:.2g}" in w for s, w in zip(scores, warning))
            assert all(("check --bbox" in w) == bool(box) for w in warning)


def test_many_images_are_fitted_in_batches_with_progress_and_streamed(fp, capsys, shifted, model_dir, tmp_path,
                                                                      monkeypatch):
    # 10 small photos: two batches (8 + 2), a progress bar, every record out; the poses do
    # not depend on the batching
    folder = tmp_path / "many"
    folder.mkdir()
    rgb = iio.imread(EXAMPLE_PNG)[::4, ::4]
    paths = []
    for i in range(10):
        paths.append(folder / f"p{i}.png")
        iio.imwrite(paths[-1], np.roll(rgb, 3 * i, axis=1))
    sizes = []
    fit = PoseModel.fit
    monkeypatch.setattr(PoseModel, "fit", lambda self, images, *a, **k: sizes.append(len(images)) or fit(
        self, images, *a, **k))
    out = tmp_path / "out"
    code, stdout, err = run(fp, capsys, *paths, "--mesh", shifted, "--model", model_dir, "--json", "--out", out, *FAST)
    assert code == 0, err
    assert sizes == [8, 2]
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [rec["image"] for rec in lines] == [str(p) for p in paths]
    assert "10/10" in err  # the progress bar (stderr only)
    assert len(list(out.glob("*_pose.json"))) == 10 and len(list(out.glob("*_overlay.png"))) == 10
    sizes.clear()
    code, one_out, _ = run(fp, capsys, paths[9], "--mesh", shifted, "--model", model_dir, "--json", *FAST)
    assert json.loads(one_out)["R"] == lines[9]["R"] and sizes == [1]

    # Ctrl-C during the second batch: the first batch's lines and files are kept, exit 130
    def interrupted(self, images, *a, **k):
        if sizes:
            raise KeyboardInterrupt
        sizes.append(len(images))
        return fit(self, images, *a, **k)

    sizes.clear()
    monkeypatch.setattr(PoseModel, "fit", interrupted)
    out2 = tmp_path / "out2"
    code, stdout, err = run(fp, capsys, *paths, "--mesh", shifted, "--model", model_dir, "--json", "--out", out2, *FAST)
    assert code == 130 and "interrupted after 8 of 10 images" in err
    assert len(stdout.splitlines()) == 8 and len(list(out2.glob("*_pose.json"))) == 8

    # --resume goes on: only the last 2 are fitted; the 8 done are printed first, as written
    monkeypatch.setattr(PoseModel, "fit", lambda self, images, *a, **k: sizes.append(len(images)) or fit(
        self, images, *a, **k))
    sizes.clear()
    first = [json.loads(line) for line in stdout.splitlines()]
    args = [*paths, "--mesh", shifted, "--model", model_dir, "--json", "--out", out2, "--resume"]
    code, stdout, err = run(fp, capsys, *args, *FAST)
    assert code == 0 and sizes == [2] and "resumed 8 of 10 images" in err
    again = [json.loads(line) for line in stdout.splitlines()]
    assert again[:8] == first and [r["image"] for r in again[8:]] == [str(p) for p in paths[8:]]
    assert again[8]["R"] == lines[8]["R"]  # same pose as the uninterrupted run
    # what made an output is checked: another image content or other fit settings are refitted
    iio.imwrite(paths[0], rgb[:, ::-1])
    sizes.clear()
    code, _, err = run(fp, capsys, *args, *FAST)
    assert code == 0 and sizes == [1] and "resumed 9 of 10 images" in err
    sizes.clear()
    code, _, err = run(fp, capsys, *args, "--fit-steps", "1")
    assert code == 0 and sizes == [8, 2] and "resumed 0 of 10 images" in err
    code, stdout, err = run(fp, capsys, *paths[:1], "--mesh", shifted, "--model", model_dir, "--resume", *FAST)
    assert code == 2 and stdout == "" and err.strip() == "fit_pose: error: --resume: only with --out DIR (it skips what an earlier run wrote there)"


def test_file_frame_record_matches_the_model_frame_fit(fp, model_dir, shifted):
    """The JSON's (R, t) in file coordinates project the model frame's origin (the mesh's
    bounding-box centre in the file) to the fit's (u0, v0), and every file vertex to where
    the model-frame pose projects the normalised vertex."""
    model = PoseModel.load(model_dir)
    image = torch.from_numpy(iio.imread(EXAMPLE_PNG)).permute(2, 0, 1).float() / 255
    K = fp.camera_matrix((240, 320), focal=400.0).float()
    result = model.fit([image], [K], config=FitConfig(steps=0, placement_search=0), recrop=False)[0]
    record = fp.pose_record(model, result, "x.png")
    R, t = torch.tensor(record["R"], dtype=torch.float64), torch.tensor(record["t"], dtype=torch.float64)
    center = model.mesh_center[None, None]
    uv, _ = project_points(center, K.double(), R, t)
    torch.testing.assert_close(uv[0, 0], torch.tensor([result.u0, result.v0], dtype=torch.float64), atol=1e-3, rtol=0)
    file_mesh = load_mesh(shifted)
    assert float(model.mesh_center.norm()) > 1 and abs(model.mesh_scale - 1) > 0.3  # the frames do differ
    uv_file, z_file = project_points(file_mesh.verts[None].double(), K.double(), R, t)
    normalised = (file_mesh.verts.double() - model.mesh_center) * model.mesh_scale
    uv_model, z_model = project_points(normalised[None], K.double(), result.R.double(), result.t.double())
    torch.testing.assert_close(z_file * model.mesh_scale, z_model, atol=1e-4, rtol=1e-5)
    front = z_model[0] > 0.05
    torch.testing.assert_close(uv_file[0, front], uv_model[0, front], atol=1e-2, rtol=1e-5)
    assert record["distance"] == pytest.approx(float(t.norm()))
    assert record["azimuth_deg"] == pytest.approx(math.degrees(result.azimuth))


def test_output_stems_are_unique(fp):
    paths = [Path("a/x.png"), Path("b/x.jpg"), Path("x_1.png"), Path("c/x.png"), Path("y.png")]
    assert fp.output_stems(paths) == ["x", "x_1", "x_1_1", "x_2", "y"]


def test_model_built_for_another_mesh_is_a_warning(fp, model_dir, shifted):
    messages = []
    args = fp.parser().parse_args(["photo.png", "--mesh", str(CHAIR), "--model", str(model_dir)])
    assert isinstance(fp.get_model(args, CHAIR, messages.append), PoseModel)
    assert len(messages) == 1 and messages[0].startswith("fit_pose: warning:") and str(model_dir) in messages[0]
    messages.clear()
    fp.get_model(args, shifted, messages.append)
    assert messages == []


def test_build_options_reach_the_build_config(fp, capsys, monkeypatch, tmp_path):
    seen = []

    def fake_build(mesh, config, cache_dir=None, progress=True):
        seen.append(config)
        raise SystemExit(0)  # stop before training

    monkeypatch.setattr(fp, "build_model", fake_build)
    with pytest.raises(SystemExit):
        fp.main([str(EXAMPLE_PNG), "--mesh", str(CHAIR), "--cache", str(tmp_path), "--build-steps", "12000",
                 "--build-occlusion", "0", "0.5", "--build-size", "96", "--build-lighting", "full",
                 "--build-room-probability", "0.25"])
    assert seen[0].steps == 12000 and seen[0].occlusion == (0.0, 0.5) and seen[0].image_size == 96
    assert seen[0].finetune_steps == 0 and seen[0].lighting == "full" and seen[0].room_probability == 0.25
    assert "12000 training steps on 96 x 96 renders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fp.main([str(EXAMPLE_PNG), "--mesh", str(CHAIR), "--cache", str(tmp_path), "--build-steps", "24000",
                 "--build-finetune-steps", "4000", "--build-finetune-occlusion", "0.2", "0.7",
                 "--build-finetune-lr", "3e-5", "--build-finetune-center-jitter", "0.12",
                 "--build-finetune-lighting", "full", "--build-finetune-room-probability", "0.5"])
    tuned = seen[1]
    assert (tuned.steps, tuned.finetune_steps, tuned.finetune_occlusion, tuned.finetune_lr,
            tuned.finetune_center_jitter) == (24000, 4000, (0.2, 0.7), 3e-5, 0.12)
    assert tuned.lighting == "lambert" and tuned.finetune_lighting == "full"
    assert tuned.room_probability == 0.0 and tuned.finetune_room_probability == 0.5
    assert "24000 + 4000 fine-tuning training steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fp.main([str(EXAMPLE_PNG), "--mesh", str(CHAIR), "--cache", str(tmp_path),
                 "--build-train", "neighbor_radius=0.04", "--build-train", "occluder_clutter=true"])
    assert seen[2].train == {"neighbor_radius": 0.04, "occluder_clutter": True}
    with pytest.raises(SystemExit):
        fp.main([str(EXAMPLE_PNG), "--mesh", str(CHAIR), "--cache", str(tmp_path),
                 "--build-scene", "zoom_out_probability=0.25"])
    assert seen[-1].scene == {"zoom_out_probability": 0.25}
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a preset, its fine-tuning flags changed without --build-finetune-steps
        fp.main([str(EXAMPLE_PNG), "--mesh", str(CHAIR), "--cache", str(tmp_path), "--build-preset", "accurate",
                 "--build-finetune-occlusion", "0.1", "0.6"])
    assert seen[-1] == BuildConfig.preset("accurate", finetune_occlusion=(0.1, 0.6))
    assert "24000 + 4000 fine-tuning training steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --build-scene adds to the preset's scene
        fp.main([str(EXAMPLE_PNG), "--mesh", str(CHAIR), "--cache", str(tmp_path), "--build-preset", "wide",
                 "--build-scene", "max_occluders=2"])
    assert seen[-1] == BuildConfig.preset("wide", scene={"max_occluders": 2})
    assert "about 15 minutes" in capsys.readouterr().err
    assert set(fp.BUILD_TIMES) == set(BUILD_PRESETS)  # every preset's build message names its time
    capsys.readouterr()
    for item in ("temperature=0", "lr=1", "temperature"):
        code = fp.main([str(EXAMPLE_PNG), "--mesh", str(CHAIR), "--cache", str(tmp_path), "--build-train", item])
        assert code == 2 and capsys.readouterr().err.startswith("fit_pose: error: --build-train: ")
    for item in ("zoom_out_probability=2", "distance_range=[2, 3]", "photometric"):
        code = fp.main([str(EXAMPLE_PNG), "--mesh", str(CHAIR), "--cache", str(tmp_path), "--build-scene", item])
        assert code == 2 and capsys.readouterr().err.startswith("fit_pose: error: --build-scene: ")


@pytest.mark.slow
def test_build_caches_the_model_and_reuses_it(fp, capsys, monkeypatch, tmp_path):
    """Without --model the model is built into --cache (or $MESHPOSE_CACHE) once."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MESHPOSE_CACHE", str(tmp_path / "elsewhere"))
    build = ["--mesh", CHAIR, "--build-steps", "2", "--build-size", "32", *FAST]
    code, out, err = run(fp, capsys, EXAMPLE_PNG, *build, "--cache", cache)
    assert code == 0, err
    entries = list((cache / "models").iterdir())
    assert len(entries) == 1 and (entries[0] / "model.json").is_file()
    assert "building a pose model" in err and str(entries[0]) in err
    assert not (tmp_path / "elsewhere").exists()  # --cache wins over $MESHPOSE_CACHE
    # human-readable output: one line per image
    assert len(out.splitlines()) == 1 and out.startswith(f"{EXAMPLE_PNG}: azimuth ")
    # the second run (cache from $MESHPOSE_CACHE) loads the model instead of training
    monkeypatch.setenv("MESHPOSE_CACHE", str(cache))
    code, out2, err2 = run(fp, capsys, EXAMPLE_PNG, *build)
    assert code == 0, err2
    assert "building" not in err2 and "nemo train" not in err2
    assert f"using the cached pose model {entries[0]}" in err2
    assert out2.rsplit("(", 1)[0] == out.rsplit("(", 1)[0]  # the same model: the same pose


# ---------------------------------------------------------------------------- bad input


BAD_CASES = (
    "missing image", "corrupt image", "second image corrupt", "missing mesh", "corrupt mesh", "zero focal",
    "nan focal", "K count", "K negative", "K inf", "K text", "focal and K", "bbox order", "bbox nan",
    "bbox outside", "missing model", "corrupt model json", "corrupt model weights", "out is a file",
    "image without mesh", "mesh without image", "build option with model", "preset with model", "unknown preset", "tiny build size", "build occlusion order",
    "build occlusion with model", "finetune with model", "finetune occlusion without steps",
    "finetune occlusion order", "finetune jitter without steps", "finetune lighting without steps",
    "finetune rooms without steps", "room probability range",
    "finetune jitter range", "fit upsample not a divisor of the stride", "fit upsample zero", "example with K",
    "unknown option",
)


def _bad_inputs(tmp: Path, model_dir: Path, shifted: Path) -> dict[str, tuple[list, str]]:
    """case -> (arguments, text the error line must contain)."""
    bad_png = tmp / "bad.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n garbage" * 4)
    bad_obj = tmp / "bad.obj"
    bad_obj.write_bytes(b"\x00\x01garbage\xff" * 10)
    not_model = tmp / "not_a_model"
    not_model.mkdir()
    (not_model / "model.json").write_text("{ nope")
    broken = tmp / "broken_model"
    shutil.copytree(model_dir, broken)
    weights = broken / "backbone.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    a_file = tmp / "a_file"
    a_file.write_text("x")
    img, mesh, model = str(EXAMPLE_PNG), ["--mesh", str(shifted)], ["--model", str(model_dir)]
    return {
        "missing image": ([str(tmp / "nope.png"), *mesh, *model], "nope.png"),
        "corrupt image": ([str(bad_png), *mesh, *model], "bad.png"),
        "second image corrupt": ([img, str(bad_png), *mesh, *model], "bad.png"),
        "missing mesh": ([img, "--mesh", str(tmp / "nope.obj"), *model], "nope.obj"),
        "corrupt mesh": ([img, "--mesh", str(bad_obj), *model], "bad.obj"),
        "zero focal": ([img, *mesh, *model, "--focal", "0"], "--focal"),
        "nan focal": ([img, *mesh, *model, "--focal", "nan"], "--focal"),
        "K count": ([img, *mesh, *model, "--K", "500", "500", "160"], "--K"),
        "K negative": ([img, *mesh, *model, "--K", "-5", "500", "160", "120"], "--K"),
        "K inf": ([img, *mesh, *model, "--K", "500", "500", "inf", "120"], "--K"),
        "K text": ([img, *mesh, *model, "--K", "500", "500", "x", "120"], "--K"),
        "focal and K": ([img, *mesh, *model, "--focal", "500", "--K", "500", "500", "160", "120"], "--K"),
        "bbox order": ([img, *mesh, *model, "--bbox", "100", "10", "50", "200"], "--bbox"),
        "bbox nan": ([img, *mesh, *model, "--bbox", "10", "10", "nan", "200"], "--bbox"),
        "bbox outside": ([img, *mesh, *model, "--bbox", "400", "10", "500", "200"], "--bbox"),
        "missing model": ([img, *mesh, "--model", str(tmp / "no_model")], "no_model"),
        "corrupt model json": ([img, *mesh, "--model", str(not_model)], "model.json"),
        "corrupt model weights": ([img, *mesh, "--model", str(broken)], "backbone.safetensors"),
        "out is a file": ([img, *mesh, *model, "--out", str(a_file)], "a_file"),
        "image without mesh": ([img, *model], "--mesh"),
        "mesh without image": ([*mesh, *model], "IMAGE"),
        "build option with model": ([img, *mesh, *model, "--build-steps", "3"], "--build-steps"),
        "preset with model": ([img, *mesh, *model, "--build-preset", "accurate"], "--build-preset"),
        "unknown preset": ([img, *mesh, "--build-preset", "fast"], "--build-preset"),
        "tiny build size": ([img, *mesh, "--build-size", "8"], "--build-size"),
        "build occlusion order": ([img, *mesh, "--build-occlusion", "0.6", "0.2"], "--build-occlusion"),
        "build occlusion with model": ([img, *mesh, *model, "--build-occlusion", "0", "0.5"], "--build-occlusion"),
        "finetune with model": ([img, *mesh, *model, "--build-finetune-steps", "5"], "--build-finetune-steps"),
        "finetune occlusion without steps": ([img, *mesh, "--build-finetune-occlusion", "0.2", "0.7"],
                                             "--build-finetune-occlusion"),
        "finetune occlusion order": ([img, *mesh, "--build-finetune-steps", "5", "--build-finetune-occlusion",
                                      "0.7", "0.2"], "--build-finetune-occlusion"),
        "finetune jitter without steps": ([img, *mesh, "--build-finetune-center-jitter", "0.1"],
                                          "--build-finetune-center-jitter"),
        "finetune lighting without steps": ([img, *mesh, "--build-finetune-lighting", "full"],
                                            "--build-finetune-lighting"),
        "finetune rooms without steps": ([img, *mesh, "--build-finetune-room-probability", "0.5"],
                                         "--build-finetune-room-probability"),
        "room probability range": ([img, *mesh, "--build-room-probability", "2"], "--build-room-probability"),
        "finetune jitter range": ([img, *mesh, "--build-finetune-steps", "5", "--build-finetune-center-jitter",
                                   "0.9"], "--build-finetune-center-jitter"),
        "fit upsample not a divisor of the stride": ([img, *mesh, *model, "--fit-upsample", "3"], "--fit-upsample"),
        "fit upsample zero": ([img, *mesh, *model, "--fit-upsample", "0"], "--fit-upsample"),
        "example with K": (["--K", "500", "500", "160", "120"], "--K"),
        "unknown option": ([img, *mesh, "--frobnicate"], "--frobnicate"),
    }


def test_script_runs_from_any_directory(tmp_path):
    """As a script (not imported), from another working directory: a one-line error."""
    proc = subprocess.run([sys.executable, str(ROOT / "demos" / "fit_pose.py"), "nope.png", "--mesh", str(CHAIR),
                           "--out", "out"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "fit_pose: error: nope.png: no such image file"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_a_one_line_error_and_writes_nothing(fp, capsys, model_dir, shifted, tmp_path, case):
    cases = _bad_inputs(tmp_path, model_dir, shifted)
    assert set(cases) == set(BAD_CASES)
    args, needle = cases[case]
    out_dir = tmp_path / "out"
    if "--out" not in args:
        args = [*args, "--out", str(out_dir)]
    code, out, err = run(fp, capsys, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fit_pose: error:") and needle in lines[0], lines[0]
    assert not out_dir.exists()
    if case == "out is a file":
        assert (tmp_path / "a_file").read_text() == "x"


# ---------------------------------------------------------------------------- bundled example


def test_bundled_example_matches_its_pose(fp, make_example):
    """The example's K, R, t (file frame) put the chair file exactly on the photo's chair."""
    example = fp.load_example()
    assert example.image == EXAMPLE_PNG and example.mesh == CHAIR
    data = json.loads(EXAMPLE_JSON.read_text())
    assert set(data) == {"image", "mesh", "K", "R", "t", "azimuth_deg", "elevation_deg", "theta_deg", "bbox", "made_by"}
    photo = iio.imread(EXAMPLE_PNG)
    H, W = photo.shape[:2]
    assert (H, W) == (240, 320) and photo.shape[2] == 3  # not square, not a training size
    K, R, t = example.K, example.R, example.t
    check_rotation(R.tolist())
    mesh = load_mesh(CHAIR)
    uv, z = project_points(mesh.verts[None].double(), K, R, t)
    assert bool((z > 0).all())
    assert bool(((uv[0, :, 0] > -0.5) & (uv[0, :, 0] < W - 0.5) & (uv[0, :, 1] > -0.5) & (uv[0, :, 1] < H - 0.5)).all())
    mask = rasterize((mesh.verts.double() @ R.T + t)[None], mesh.faces, K, (H, W)).mask[0]
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    box = [float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])]
    assert np.abs(np.subtract(box, data["bbox"])).max() <= 2
    # the angles describe R (docs/conventions.md)
    R_angles, _ = angles_to_pose(*(math.radians(data[f"{k}_deg"]) for k in ("azimuth", "elevation", "theta")), 5.0)
    torch.testing.assert_close(R_angles.double(), R, atol=1e-5, rtol=0)
    # the silhouette is the renderer's own mask of the photo (re-rendered, model frame)
    sample, record = make_example.render_example()
    iou = float((sample["mask"] & mask).sum()) / float((sample["mask"] | mask).sum())
    assert iou > 0.99
    assert record["made_by"] == data["made_by"]
    regenerated = make_example.to_uint8(sample["image"]).astype(np.int32)
    assert np.abs(regenerated - photo.astype(np.int32)).mean() < 1.0


def test_make_example_is_reproducible(make_example, tmp_path):
    assert make_example.main(["--out", str(tmp_path)]) == 0
    new = json.loads((tmp_path / "chair_example.json").read_text())
    old = json.loads(EXAMPLE_JSON.read_text())
    assert new["image"] == old["image"] and new["bbox"] == old["bbox"] and new["made_by"] == old["made_by"]
    for key in ("K", "R", "t"):
        np.testing.assert_allclose(new[key], old[key], atol=1e-4)
    assert (tmp_path / new["mesh"]).resolve() == CHAIR.resolve()  # relative to the JSON
    a = iio.imread(tmp_path / "chair_example.png").astype(np.int32)
    assert np.abs(a - iio.imread(EXAMPLE_PNG).astype(np.int32)).mean() < 1.0


def test_example_mode_fits_the_bundled_photo(fp, capsys, chair_model_dir, tmp_path):
    """No IMAGE and no --mesh: the bundled example (here with a given --model, so that
    nothing is built), outputs and the comparison with the true pose."""
    code, out, err = run(fp, capsys, "--model", chair_model_dir, "--out", tmp_path / "ex", *FAST)
    assert code == 0, err
    lines = out.splitlines()
    assert "chair_example.png: azimuth" in lines[0]
    assert lines[1].startswith("ground truth: azimuth -47.5 deg")
    assert lines[2].startswith("rotation error ") and "translation error" in lines[2]
    assert {p.name for p in (tmp_path / "ex").iterdir()} == {"chair_example_pose.json", "chair_example_overlay.png",
                                                            "fit_pose_state.json"}
    assert iio.imread(tmp_path / "ex" / "chair_example_overlay.png").shape == (240, 320, 3)
    assert fp.EXAMPLE_OUT == ROOT / "outputs" / "fit_pose"  # the default --out of the example
