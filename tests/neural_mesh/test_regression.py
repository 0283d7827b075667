"""The PoseContrast-style regression baseline: bins, model, loss, training order, I/O."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from datasets.synthetic import SyntheticConfig, SyntheticDataset
from neural_mesh.backbones import BackboneConfig
from neural_mesh.neural_mesh import ModelError
from neural_mesh.regression import (
    REGRESSOR_CONFIG_FILE,
    REGRESSOR_WEIGHTS_FILE,
    PoseRegressor,
    RegressionConfig,
    angle_to_bins,
    bins_to_angle,
    build_regression_data,
    load_regressor,
    load_regressor_checkpoint,
    regression_loss,
    save_regressor,
    train_regressor,
)
from neural_mesh.training import CheckpointError, TrainConfig, synthetic_data, train
from render import angles_to_pose
from tests.helpers import assert_close

ROOT = Path(__file__).resolve().parents[2]
CHAIR = ROOT / "demos" / "data" / "chair.obj"
TINY = BackboneConfig(arch="resnet18", width=8, feature_dim=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These networks are tiny: one thread is faster and does not fight other processes
    # for the cores (two threads were ~15x slower on a busy 2-core machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(**changes) -> RegressionConfig:
    base = dict(backbone=TINY, hidden=32, batch_size=4, steps=2)
    return RegressionConfig(**{**base, **changes})


def _wrapped_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = torch.remainder(a.double() - b.double() + math.pi, 2 * math.pi) - math.pi
    return d.abs()


class _Fixed(torch.utils.data.Dataset):
    """Fixed random images with assigned angles; records the indices read."""

    def __init__(self, n: int, size: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.angles = (torch.rand(n, 3, generator=g) * 2 - 1) * math.pi
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        self.read.append(i)
        a, e, th = self.angles[i]
        return {"image": self.images[i], "azimuth": float(a), "elevation": e, "theta": th,
                "category": "thing"}


# ----------------------------------------------------------------------------- config


def test_config_round_trip_and_dict_backbone():
    config = _config(num_bins=12, offset_weight=0.5)
    data = json.loads(json.dumps(config.to_dict()))
    assert RegressionConfig.from_dict(data) == config
    assert isinstance(RegressionConfig.from_dict(data).backbone, BackboneConfig)
    assert RegressionConfig().backbone.width == 32 and RegressionConfig().num_bins == 24
    assert config.bin_width == pytest.approx(math.pi / 6)


@pytest.mark.parametrize("changes, match", [
    ({"num_bins": 1}, r"num_bins: expected an int >= 2, got 1"),
    ({"hidden": 0}, r"hidden: expected an int >= 1"),
    ({"batch_size": 2.0}, r"batch_size: expected an int"),
    ({"steps": -1}, r"steps: expected an int >= 0"),
    ({"lr": 0.0}, r"lr: expected a number > 0"),
    ({"weight_decay": float("nan")}, r"weight_decay: expected a number >= 0"),
    ({"offset_weight": -1}, r"offset_weight: expected a number >= 0"),
    ({"seed": True}, r"seed: expected an int"),
    ({"backbone": "small"}, r"backbone: expected a BackboneConfig or a dict, got str"),
    ({"backbone": {"arch": "vgg"}}, r"BackboneConfig.arch"),
])
def test_config_rejects_bad_values(changes, match):
    with pytest.raises(ValueError, match=match):
        _config(**changes)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown \['bins'\]"):
        RegressionConfig.from_dict({"bins": 3})


# ----------------------------------------------------------------------------- bins


@pytest.mark.parametrize("num_bins", [24, 7])
def test_bins_round_trip(dtype, num_bins):
    w = 2 * math.pi / num_bins
    g = torch.Generator().manual_seed(num_bins)
    edges = torch.arange(-num_bins, num_bins + 1, dtype=torch.float64) * w + w / 2
    special = torch.tensor([-math.pi, math.pi, 0.0, -0.0, 1e-12, -1e-12, 3 * math.pi, -7.0],
                           dtype=torch.float64)
    angles = torch.cat([(torch.rand(1000, generator=g, dtype=torch.float64) * 2 - 1) * math.pi,
                        edges, edges.nextafter(torch.tensor(math.inf, dtype=torch.float64)),
                        edges.nextafter(torch.tensor(-math.inf, dtype=torch.float64)), special])
    angles = angles.to(dtype)
    bins, offsets = angle_to_bins(angles, num_bins)
    assert bins.dtype == torch.int64 and offsets.dtype == dtype
    assert bool((bins >= 0).all() and (bins < num_bins).all())
    assert bool((offsets >= -0.5).all() and (offsets <= 0.5).all())
    back = bins_to_angle(bins, offsets, num_bins)
    assert back.dtype == dtype
    assert float(_wrapped_diff(back, angles).max()) < 1e-6
    assert bool((back > -math.pi).all() and (back <= math.pi + 1e-6).all())  # (-pi, fl(pi)]
    # angles already in (-pi, pi] come back as themselves, not shifted by 2 pi
    inside = (angles > -math.pi + 1e-5) & (angles < math.pi - 1e-5)
    assert float((back[inside].double() - angles[inside].double()).abs().max()) < 1e-6


def test_bins_are_centred_on_multiples_of_the_width():
    w = 2 * math.pi / 24
    angles = torch.tensor([0.0, w, -w, w / 2, w / 2 - 1e-9, math.pi, -math.pi, 0.3 * w],
                          dtype=torch.float64)
    bins, offsets = angle_to_bins(angles, 24)
    assert bins.tolist() == [0, 1, 23, 1, 0, 12, 12, 0]
    assert_close(offsets, [0.0, 0.0, 0.0, -0.5, 0.5, 0.0, 0.0, 0.3], atol=1e-7, rtol=0)
    back = bins_to_angle(bins[5:7], offsets[5:7], 24)
    assert_close(back, torch.full((2,), math.pi, dtype=torch.float64), atol=1e-12, rtol=0)


def test_bins_reject_bad_input():
    with pytest.raises(ValueError, match="num_bins: expected a positive int, got 0"):
        angle_to_bins(torch.zeros(2), 0)
    with pytest.raises(TypeError, match="angles: expected dtype float32 or float64"):
        angle_to_bins(torch.zeros(2, dtype=torch.int64), 24)
    with pytest.raises(ValueError, match="angles: expected finite values"):
        angle_to_bins(torch.tensor([0.0, math.nan]), 24)
    with pytest.raises(TypeError, match="bins: expected an integer dtype"):
        bins_to_angle(torch.zeros(2), torch.zeros(2), 24)


# ----------------------------------------------------------------------------- model


def test_forward_and_predict_shapes_and_rotation():
    config = _config(num_bins=12)
    model = PoseRegressor(config).eval()
    images = torch.rand(3, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    out = model(images)
    assert set(out) == {"logits", "offsets"}
    assert out["logits"].shape == (3, 3, 12) and out["offsets"].shape == (3, 3, 12)
    assert out["logits"].dtype == torch.float32
    assert bool((out["offsets"].abs() <= 0.5).all())
    angles = model.predict_angles(images)
    assert angles.shape == (3, 3) and angles.dtype == torch.float32
    assert bool((angles > -math.pi).all() and (angles <= math.pi).all())
    R, angles2 = model.predict(images)
    assert R.shape == (3, 3, 3)
    assert torch.equal(angles, angles2)
    assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5, rtol=0)
    assert_close(torch.linalg.det(R), torch.ones(3), atol=1e-5, rtol=0)
    R_ref, _ = angles_to_pose(angles[:, 0], angles[:, 1], angles[:, 2], 1.0)
    assert_close(R, R_ref)
    # the argmax bin plus its offset
    bins = out["logits"].argmax(-1)
    expected = bins_to_angle(bins, out["offsets"].gather(-1, bins[..., None])[..., 0], 12)
    assert_close(angles, expected)


def test_seed_controls_weights_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = PoseRegressor(_config(seed=3)), PoseRegressor(_config(), seed=3)
    c = PoseRegressor(_config(seed=4))
    assert torch.equal(torch.get_rng_state(), state)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.cls.weight, c.cls.weight)
    assert not torch.equal(a.backbone.conv1.weight, c.backbone.conv1.weight)


def test_regression_loss_is_smallest_at_the_true_bins_and_offsets():
    config = _config(num_bins=8, offset_weight=2.0)
    angles = torch.tensor([[0.1, -2.0, 3.0], [1.5, 0.0, -0.7]])
    bins, offsets = angle_to_bins(angles, 8)

    def output(bins, offsets):
        logits = torch.full((2, 3, 8), -20.0)
        logits.scatter_(-1, bins[..., None], 20.0)
        offs = torch.zeros(2, 3, 8)
        offs.scatter_(-1, bins[..., None], offsets[..., None])
        return {"logits": logits, "offsets": offs}

    best, parts = regression_loss(output(bins, offsets), angles, config)
    assert float(best) < 1e-6 and parts["offset"] < 1e-12
    wrong_bin, _ = regression_loss(output((bins + 1) % 8, offsets), angles, config)
    wrong_offset, parts_w = regression_loss(output(bins, -offsets + 0.1), angles, config)
    assert float(wrong_bin) > 10 and parts_w["classification"] < 1e-6
    assert float(wrong_offset) == pytest.approx(2.0 * parts_w["offset"], rel=1e-5)
    assert float(wrong_offset) > float(best)
    with pytest.raises(ValueError, match=r"angles: expected shape \(2, 3\), got \(2,\)"):
        regression_loss(output(bins, offsets), angles[:, 0], config)


def test_training_overfits_a_fixed_batch(tmp_path):
    data = _Fixed(4, size=32, seed=5)
    config = _config(steps=60, lr=3e-3, batch_size=4, seed=1)
    result = train_regressor(config, tmp_path / "model", dataset=data, progress=False)
    assert len(result.losses) == 60 and result.seconds_per_step > 0
    first, last = result.losses[0], result.losses[-1]
    assert first > 2.5  # about log(24) at the start
    assert last < first / 20, (first, last)
    model = result.model.eval()
    pred = model.predict_angles(data.images)
    true_bins, _ = angle_to_bins(data.angles, config.num_bins)
    assert torch.equal(model(data.images)["logits"].argmax(-1), true_bins)
    assert float(_wrapped_diff(pred, data.angles).max()) < config.bin_width / 2
    loaded = load_regressor(tmp_path / "model")
    assert torch.equal(loaded.predict_angles(data.images), pred)


# ----------------------------------------------------------------------------- training


def test_training_order_and_progress_bar(tmp_path, capsys):
    data = _Fixed(5)
    config = _config(steps=3, batch_size=2)
    result = train_regressor(config, tmp_path / "m", dataset=data, progress=True)
    assert data.read == [0, 1, 2, 3, 4, 0]  # step s: indices s*B .. s*B+B-1 (mod len)
    assert len(result.losses) == 3
    assert "regression train" in capsys.readouterr().err
    assert (tmp_path / "m" / REGRESSOR_CONFIG_FILE).is_file()
    assert (tmp_path / "m" / REGRESSOR_WEIGHTS_FILE).is_file()


def test_worker_processes_give_the_same_training(tmp_path):
    data = synthetic_data((32, 32), mesh=CHAIR)
    config = _config(steps=3, batch_size=2)
    here = train_regressor(config, tmp_path / "a", data=data, progress=False)
    there = train_regressor(config, tmp_path / "b", data=data, progress=False, workers=1)
    assert there.losses == here.losses
    assert torch.get_num_threads() == 1
    for (name, a), (_, b) in zip(here.model.state_dict().items(), there.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_resumed_training_equals_the_uninterrupted_run(tmp_path):
    data = _Fixed(6, seed=2)
    whole = train_regressor(_config(steps=5, lr=3e-3), tmp_path / "whole", dataset=data, progress=False)
    # a run stopped after 3 steps (checkpoints at 2 and 3) and resumed to 5
    first = train_regressor(_config(steps=3, lr=3e-3), tmp_path / "m", dataset=data, progress=False,
                            run_dir=tmp_path / "run", checkpoint_every=2)
    assert first.losses == whole.losses[:3]
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step_00000002", "step_00000003"]
    ckpt = load_regressor_checkpoint(tmp_path / "run")
    assert ckpt.step == 3 and ckpt.losses == first.losses and ckpt.config == _config(steps=3, lr=3e-3)
    data.read.clear()
    second = train_regressor(_config(steps=5, lr=3e-3), tmp_path / "m", dataset=data, progress=False,
                             run_dir=tmp_path / "run", resume=True, checkpoint_every=2)
    assert data.read == [0, 1, 2, 3, 4, 5, 0, 1]  # steps 3 and 4 only (batch 4, 6 samples)
    assert second.losses == whole.losses
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert load_regressor_checkpoint(tmp_path / "run").step == 5
    # resuming a finished run takes no step and gives the same model
    again = train_regressor(_config(steps=5, lr=3e-3), tmp_path / "m2", dataset=data, progress=False,
                            run_dir=tmp_path / "run", resume=True)
    assert again.losses == whole.losses and again.seconds_per_step == 0.0
    assert torch.equal(again.model.cls.weight, whole.model.cls.weight)


def test_regressor_checkpoints_refuse_misuse(tmp_path):
    data = _Fixed(4)
    run = tmp_path / "run"
    train_regressor(_config(steps=2), tmp_path / "m", dataset=data, progress=False, run_dir=run,
                    checkpoint_every=1)
    with pytest.raises(CheckpointError, match="already holds a training run"):
        train_regressor(_config(steps=2), tmp_path / "m", dataset=data, progress=False, run_dir=run)
    with pytest.raises(CheckpointError, match=r"different config \(hidden: 32 -> 16\)"):
        train_regressor(_config(steps=4, hidden=16), tmp_path / "m", dataset=data, progress=False, run_dir=run,
                        resume=True)
    with pytest.raises(ValueError, match="resume: needs run_dir="):
        train_regressor(_config(), tmp_path / "m", dataset=data, progress=False, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every: expected an int >= 1"):
        train_regressor(_config(), tmp_path / "m", dataset=data, progress=False, run_dir=run, checkpoint_every=0)
    weights = run / "checkpoints" / "step_00000002" / REGRESSOR_WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-4] + b"oops")
    with pytest.raises(CheckpointError, match=f"{weights.name}: checksum does not match"):
        train_regressor(_config(steps=4), tmp_path / "m", dataset=data, progress=False, run_dir=run, resume=True)
    # a NeMo training run is not a regressor run
    nemo = TrainConfig(backbone=TINY, steps=1, batch_size=2, checkpoint_every=1,
                       data=synthetic_data((32, 32), mesh=CHAIR))
    train(nemo, tmp_path / "nemo", progress=False)
    with pytest.raises(CheckpointError, match="not a 'pose_regressor_checkpoint' checkpoint"):
        load_regressor_checkpoint(tmp_path / "nemo")
    with pytest.raises(CheckpointError, match="no such run or checkpoint directory"):
        load_regressor_checkpoint(tmp_path / "missing")


def test_init_starts_from_given_weights(tmp_path):
    data = _Fixed(4, seed=3)
    trained = train_regressor(_config(steps=3, lr=3e-3), tmp_path / "a", dataset=data, progress=False).model
    # no step: the result is the init's weights, not config.seed's
    start = train_regressor(_config(steps=0, seed=7), tmp_path / "b", dataset=data, progress=False, init=trained).model
    for (name, a), (_, b) in zip(trained.state_dict().items(), start.state_dict().items()):
        assert torch.equal(a, b), name
    # fine-tuning at another rate moves on from there
    tuned = train_regressor(_config(steps=2, lr=1e-4), tmp_path / "c", dataset=data, progress=False, init=trained)
    fresh = train_regressor(_config(steps=2, lr=1e-4), tmp_path / "d", dataset=data, progress=False)
    assert tuned.losses[0] < fresh.losses[0]
    assert not torch.equal(tuned.model.cls.weight, trained.cls.weight)
    with pytest.raises(ValueError, match="init: its backbone, num_bins, hidden differ"):
        train_regressor(_config(hidden=16), tmp_path / "e", dataset=data, progress=False, init=trained)
    with pytest.raises(TypeError, match="init: expected a PoseRegressor"):
        train_regressor(_config(), tmp_path / "e", dataset=data, progress=False, init=trained.state_dict())


def test_train_regressor_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="exactly one of dataset= and data="):
        train_regressor(_config(), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="exactly one of dataset= and data="):
        train_regressor(_config(), tmp_path / "a", dataset=_Fixed(2), data={"kind": "synthetic"},
                        progress=False)
    with pytest.raises(ValueError, match="expected a synthetic_data"):
        train_regressor(_config(), tmp_path / "a", data={"kind": "pascal3d"}, progress=False)

    class NoAngles(_Fixed):
        def __getitem__(self, i):
            sample = super().__getitem__(i)
            del sample["theta"]
            return sample

    with pytest.raises(ValueError, match=r"sample 0: missing \['theta'\]"):
        train_regressor(_config(), tmp_path / "a", dataset=NoAngles(2), progress=False)
    assert not (tmp_path / "a").exists()


def test_train_on_synthetic_description_writes_model(tmp_path):
    data = synthetic_data((48, 48), mesh=CHAIR)
    config = _config(steps=2, batch_size=2)
    result = train_regressor(config, tmp_path / "model", data=data, progress=False)
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
    loaded = load_regressor(tmp_path / "model")
    assert loaded.config == config
    images = build_regression_data(data)[0]["image"][None].expand(2, -1, -1, -1)
    assert torch.equal(loaded(images)["logits"], result.model.eval()(images)["logits"])


def test_same_data_and_initial_backbone_as_nemo_trainer(tmp_path):
    data = synthetic_data((32, 32), mesh=CHAIR)
    # the images NeMo's trainer reads (vertex projections on) are the regressor's
    nemo_ds = SyntheticDataset(SyntheticConfig.from_dict(data["config"]), seed=data["seed"],
                               length=data["length"])
    ours = build_regression_data(data)
    assert len(ours) == len(nemo_ds)
    for i in (0, 7):
        a, b = nemo_ds[i], ours[i]
        assert torch.equal(a["image"], b["image"])
        assert (a["azimuth"], a["elevation"], a["theta"]) == (b["azimuth"], b["elevation"], b["theta"])
    # seed s: the backbone NeMo's train() starts from
    nemo = train(TrainConfig(backbone=TINY, data=data, steps=0, seed=7, num_verts=8,
                             clutter_size=4), tmp_path / "nemo", progress=False)
    ours_bb = PoseRegressor(_config(seed=7)).backbone
    for key, value in nemo.backbone.state_dict().items():
        assert torch.equal(value, ours_bb.state_dict()[key]), key


# ----------------------------------------------------------------------------- I/O


def test_save_load_round_trip(tmp_path):
    model = PoseRegressor(_config(num_bins=10, seed=2))
    with torch.no_grad():  # make the BatchNorm buffers non-trivial
        model.train()(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    model.eval()
    save_regressor(model, tmp_path / "r")
    save_regressor(model, tmp_path / "r")  # into an existing directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temporary leftovers
    info = json.loads((tmp_path / "r" / REGRESSOR_CONFIG_FILE).read_text())
    assert info["format"] == "pose_regressor" and info["format_version"] == 1
    assert RegressionConfig.from_dict(info["config"]) == model.config
    loaded = load_regressor(tmp_path / "r")
    assert not loaded.training
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for key in ("logits", "offsets"):
        assert torch.equal(loaded(images)[key], model(images)[key])
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ModelError, match=r"nowhere: no such regressor directory"):
        load_regressor(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=rf"empty/{REGRESSOR_CONFIG_FILE}: missing"):
        load_regressor(tmp_path / "empty")

    save_regressor(PoseRegressor(_config()), tmp_path / "r")
    config_path = tmp_path / "r" / REGRESSOR_CONFIG_FILE
    weights_path = tmp_path / "r" / REGRESSOR_WEIGHTS_FILE
    good_json, good_weights = config_path.read_text(), weights_path.read_bytes()

    config_path.write_text(good_json[:40])
    with pytest.raises(ModelError, match=rf"{REGRESSOR_CONFIG_FILE}: not valid JSON"):
        load_regressor(tmp_path / "r")
    config_path.write_text(json.dumps({**json.loads(good_json), "format": "neural_mesh"}))
    with pytest.raises(ModelError, match=rf"{REGRESSOR_CONFIG_FILE}: not a regressor config"):
        load_regressor(tmp_path / "r")
    bad = json.loads(good_json)
    bad["config"]["num_bins"] = 0
    config_path.write_text(json.dumps(bad))
    with pytest.raises(ModelError, match=rf"{REGRESSOR_CONFIG_FILE}: config: .*num_bins"):
        load_regressor(tmp_path / "r")
    config_path.write_text(good_json)

    weights_path.write_bytes(good_weights[:100])
    with pytest.raises(ModelError, match=rf"{REGRESSOR_WEIGHTS_FILE}: checksum does not match"):
        load_regressor(tmp_path / "r")
    config_path.write_text(json.dumps({**json.loads(good_json), "weights_sha256": None}))
    with pytest.raises(ModelError, match=rf"{REGRESSOR_WEIGHTS_FILE}: cannot read safetensors"):
        load_regressor(tmp_path / "r")
    bad = json.loads(good_json)
    bad["weights_sha256"], bad["config"]["hidden"] = None, 16
    config_path.write_text(json.dumps(bad))
    weights_path.write_bytes(good_weights)
    with pytest.raises(ModelError, match=rf"{REGRESSOR_WEIGHTS_FILE}: does not fit the config"):
        load_regressor(tmp_path / "r")
    weights_path.unlink()
    with pytest.raises(ModelError, match=rf"{REGRESSOR_WEIGHTS_FILE}: missing"):
        load_regressor(tmp_path / "r")
