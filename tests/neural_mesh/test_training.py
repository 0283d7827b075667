"""NeMo contrastive training: loss, feature sampling, banks, the loop, resumption, DDP, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from neural_mesh.backbones import BackboneConfig, feature_intrinsics
from neural_mesh.neural_mesh import NeuralMesh
from neural_mesh.training import (
    _Collate,
    _Geometry,
    CheckpointError,
    TrainConfig,
    learning_rate,
    background_cells,
    batch_indices,
    default_workers,
    flush_denormals,
    build_data,
    load_checkpoint,
    load_run_config,
    neighbor_exclusion_2d,
    neighbor_exclusion_3d,
    nemo_contrastive_loss,
    project_vertices,
    push_clutter,
    sample_background_features,
    sample_vertex_features,
    synthetic_data,
    train,
    training_threads,
    update_vertex_bank,
    vertex_cells,
    vertex_feature_sums,
)
from render import intrinsics, project_points
from tests.helpers import assert_close, load_script

ROOT = Path(__file__).resolve().parents[2]
CHAIR = ROOT / "demos" / "data" / "chair.obj"
SCRIPT = ROOT / "demos" / "train_nemo.py"


@pytest.fixture(autouse=True)
def one_thread():
    """Single-threaded torch: faster on small shared CPUs and bit-for-bit repeatable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(
        backbone=BackboneConfig(width=8, feature_dim=16),
        data=synthetic_data((32, 32), mesh=CHAIR),
        steps=4,
        batch_size=2,
        num_verts=100,
        clutter_size=32,
        checkpoint_every=2,
    )
    return dataclasses.replace(base, **changes)


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ----------------------------------------------------------------------------- sampling


def test_vertex_cells_agree_with_backbone_geometry():
    # The cell of a point is round() of its feature coordinate (feature_intrinsics).
    K = intrinsics(50.0, 50.0, 40.3, 27.9)
    pts = torch.randn(1, 200, 3, generator=torch.Generator().manual_seed(1)) + torch.tensor([0, 0, 4.0])
    uv, _ = project_points(pts, K)
    uvf, _ = project_points(pts, feature_intrinsics(K))
    i, j = vertex_cells(uv[0], (1000, 1000))
    assert torch.equal(j, torch.floor(uvf[0, :, 0] + 0.5).long().clamp(0, 999))
    assert torch.equal(i, torch.floor(uvf[0, :, 1] + 0.5).long().clamp(0, 999))
    # cell (i, j) holds pixels 8i..8i+7 / 8j..8j+7
    px = torch.arange(64.0)
    i, j = vertex_cells(torch.stack([px, px], -1), (8, 8))
    assert torch.equal(j, (px // 8).long()) and torch.equal(i, (px // 8).long())


def test_sample_vertex_features_nearest_and_bilinear():
    fmap = F.normalize(torch.randn(2, 6, 3, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    # cell centres (8j + 3.5, 8i + 3.5): both modes give the cell's feature
    uv = torch.tensor([[[3.5, 3.5], [27.5, 19.5], [11.5, 3.5]]] * 2)
    vis = torch.tensor([[True, True, False], [True, True, True]])
    near = sample_vertex_features(fmap, uv, vis)
    bil = sample_vertex_features(fmap, uv, vis, mode="bilinear")
    assert_close(near[0, 0], fmap[0, :, 0, 0])
    assert_close(near[1, 1], fmap[1, :, 2, 3])
    assert_close(near[1, 2], fmap[1, :, 0, 1])
    assert torch.equal(near[0, 2], torch.zeros(6))  # invisible rows are zero
    assert_close(bil, near, atol=1e-6, rtol=0)
    # a point 3 px right of a centre still belongs to that cell
    assert_close(sample_vertex_features(fmap, uv + 3.0, vis)[1, 0], fmap[1, :, 0, 0])
    with pytest.raises(ValueError, match="mode"):
        sample_vertex_features(fmap, uv, vis, mode="cubic")
    with pytest.raises(ValueError, match="vertex_uv"):
        sample_vertex_features(fmap, uv[:1], vis)


def test_background_cells_lie_outside_the_mask():
    mask = torch.zeros(40, 48, dtype=torch.bool)
    mask[5:30, 10:33] = True
    g = torch.Generator().manual_seed(0)
    idx, valid = background_cells(mask, (5, 6), 5, g)
    assert valid.all() and len(set(idx.tolist())) == 5  # enough cells: no repeats
    for k in idx.tolist():
        i, j = divmod(k, 6)
        assert not mask[8 * i : 8 * i + 8, 8 * j : 8 * j + 8].any()
    again = background_cells(mask, (5, 6), 5, torch.Generator().manual_seed(0))[0]
    assert torch.equal(idx, again)
    full = torch.ones(40, 48, dtype=torch.bool)
    idx, valid = background_cells(full, (5, 6), 3, g)
    assert not valid.any() and idx.shape == (3,)
    feats, valid = sample_background_features(torch.randn(2, 4, 5, 6), torch.stack([mask, full]), 3, g)
    assert feats.shape == (2, 3, 4) and valid[0].all() and not valid[1].any()
    assert torch.equal(feats[1], torch.zeros(3, 4))


# --------------------------------------------------------------------------------- loss


def reference_loss(feats, visible, bank, clutter, exclude, T, w):
    """Row by row: -log softmax of the target among kept vertices and weighted clutter."""
    total, rows = 0.0, 0
    for b in range(feats.shape[0]):
        for k in range(feats.shape[1]):
            if not visible[b, k]:
                continue
            terms = []
            for j in range(bank.shape[0]):
                if j == k or not exclude[b, k, j]:
                    terms.append(math.exp(float(feats[b, k] @ bank[j]) / T))
            for m in range(clutter.shape[0]):
                terms.append(w * math.exp(float(feats[b, k] @ clutter[m]) / T))
            total += -math.log(math.exp(float(feats[b, k] @ bank[k]) / T) / sum(terms))
            rows += 1
    return total / rows


def test_loss_matches_reference_definition():
    feats, bank, clutter = unit(2, 5, 8, seed=0).double(), unit(5, 8, seed=1).double(), unit(7, 8, seed=2).double()
    visible = torch.tensor([[True, False, True, True, True], [False, True, True, False, True]])
    uv = torch.rand(2, 5, 2, generator=torch.Generator().manual_seed(3)) * 20
    exclude = neighbor_exclusion_2d(uv, 8.0)
    assert exclude.any() and not exclude.all()
    out = nemo_contrastive_loss(feats, visible, bank, clutter, exclude=exclude, temperature=0.07,
                                clutter_weight=0.005, regularizer_weight=0.0)
    expected = reference_loss(feats, visible, bank, clutter, exclude, 0.07, 0.005)
    assert out.num_vertices == 7
    assert abs(float(out.contrastive) - expected) < 1e-9
    assert abs(float(out.loss) - expected) < 1e-9


def test_loss_is_minimal_when_features_equal_their_bank_entries():
    bank = torch.eye(6, 16)  # orthonormal entries
    clutter = unit(10, 16, seed=5)
    visible = torch.ones(1, 6, dtype=torch.bool)
    best = nemo_contrastive_loss(bank[None], visible, bank, clutter).contrastive
    for seed in range(5):
        other = F.normalize(bank + 0.3 * torch.randn(6, 16, generator=torch.Generator().manual_seed(seed)), dim=-1)
        assert nemo_contrastive_loss(other[None], visible, bank, clutter).contrastive > best
    shuffled = bank[torch.tensor([1, 2, 3, 4, 5, 0])]
    assert nemo_contrastive_loss(shuffled[None], visible, bank, clutter).contrastive > best + 10


def test_neighbours_are_not_negatives():
    # vertex 1 has the same bank entry as vertex 0: as a negative it costs log 2.
    bank = torch.eye(4, 8)
    bank[1] = bank[0]
    feats = bank[None].clone()
    visible = torch.tensor([[True, False, False, False]])
    plain = nemo_contrastive_loss(feats, visible, bank, bank[:0]).contrastive
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    exclude[0, 1] = exclude[1, 0] = True
    masked = nemo_contrastive_loss(feats, visible, bank, bank[:0], exclude=exclude).contrastive
    without = nemo_contrastive_loss(feats[:, [0, 2, 3]], visible[:, [0, 2, 3]], bank[[0, 2, 3]], bank[:0]).contrastive
    assert abs(float(plain - masked) - math.log(2)) < 1e-4
    assert_close(masked, without)
    # the target itself is never excluded, even if the mask says so
    with_self = exclude | torch.eye(4, dtype=torch.bool)
    assert_close(nemo_contrastive_loss(feats, visible, bank, bank[:0], exclude=with_self).contrastive, masked)
    pairs = [[False, True, False], [True, False, False], [False, False, False]]
    uv = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [30.0, 0.0]]])
    assert neighbor_exclusion_2d(uv, 5.0)[0].tolist() == pairs
    verts = torch.tensor([[0.0, 0, 0], [0.05, 0, 0], [1, 0, 0]])
    assert neighbor_exclusion_3d(verts, 0.1).tolist() == pairs


def test_clutter_weight_is_a_log_offset():
    feats, bank, clutter = unit(1, 3, 8, seed=0), unit(3, 8, seed=1), unit(4, 8, seed=2)
    visible = torch.ones(1, 3, dtype=torch.bool)
    a = nemo_contrastive_loss(feats, visible, bank, clutter, clutter_weight=0.005).contrastive
    # weight 0.005 on 4 entries == weight 1 on the same entries shifted by log(0.005) * T
    rows = feats[0] @ torch.cat([bank, clutter]).T / 0.07
    rows[:, 3:] += math.log(0.005)
    assert_close(a, F.cross_entropy(rows, torch.arange(3)))
    none = nemo_contrastive_loss(feats, visible, bank, clutter, clutter_weight=0.0).contrastive
    assert_close(none, F.cross_entropy(feats[0] @ bank.T / 0.07, torch.arange(3)))


def test_gradients_reach_only_image_features():
    feats = unit(2, 5, 8, seed=0).requires_grad_()
    bg = unit(2, 3, 8, seed=1).requires_grad_()
    bank = unit(5, 8, seed=2).requires_grad_()
    clutter = unit(6, 8, seed=3).requires_grad_()
    visible = torch.ones(2, 5, dtype=torch.bool)
    out = nemo_contrastive_loss(feats, visible, bank, clutter, background_feats=bg, regularizer_weight=0.1)
    out.loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert bg.grad is not None and bg.grad.abs().sum() > 0  # the regularizer pushes clutter away
    assert bank.grad is None and clutter.grad is None
    assert_close(out.regularizer, (bg.reshape(-1, 8) @ bank.T).mean())
    assert_close(out.loss, out.contrastive + 0.1 * out.regularizer)
    # nothing visible: zero loss that still backpropagates (DDP needs every parameter)
    empty = nemo_contrastive_loss(feats, torch.zeros(2, 5, dtype=torch.bool), bank, clutter)
    assert float(empty.loss.detach()) == 0.0 and empty.num_vertices == 0 and empty.loss.requires_grad


def test_vertex_bank_momentum_update():
    bank = unit(4, 8, seed=0)
    feats = unit(3, 4, 8, seed=1)
    visible = torch.tensor([[True, True, False, False], [True, False, False, False], [False, True, False, False]])
    sums, counts = vertex_feature_sums(feats, visible)
    assert counts.tolist() == [2.0, 2.0, 0.0, 0.0]
    new = update_vertex_bank(bank, sums, counts, momentum=0.9)
    expected0 = F.normalize(0.9 * bank[0] + 0.1 * (feats[0, 0] + feats[1, 0]) / 2, dim=0)
    assert_close(new[0], expected0)
    assert torch.equal(new[2:], bank[2:])  # unseen vertices keep their entry
    assert_close(new.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="momentum"):
        update_vertex_bank(bank, sums, counts, momentum=1.0)


def test_clutter_bank_is_a_fifo():
    bank = torch.zeros(4, 2)
    feats = F.normalize(torch.arange(1.0, 13.0).reshape(6, 2), dim=1)
    bank, p = push_clutter(bank, 0, feats[:3])
    assert p == 3
    assert_close(bank[:3], feats[:3]) and assert_close(bank[3], torch.zeros(2))
    bank, p = push_clutter(bank, p, feats[3:5])  # wraps around: slot 3 then slot 0
    assert p == 1
    assert_close(bank[3], feats[3])
    assert_close(bank[0], feats[4])
    big, p = push_clutter(torch.zeros(4, 2), 1, feats)  # more than fit: the last 4 survive
    assert p == 3
    assert_close(big[[3, 0, 1, 2]], feats[2:])
    with pytest.raises(ValueError, match="pointer"):
        push_clutter(bank, 4, feats)


# ------------------------------------------------------------------------- projections


def test_neural_mesh_is_the_surface_the_dataset_projects():
    config = tiny_config()
    dataset, meshes = build_data(config)
    (name, nmesh), = meshes.items()
    assert name == "chair" and nmesh.num_verts == dataset[0]["vertex_uv"].shape[0]
    for index in range(3):
        sample = dataset[index]
        uv, visible, silhouette = project_vertices(
            nmesh.verts, nmesh.faces, sample["K"], sample["R"], sample["t"], sample["image"].shape[1:])
        assert torch.equal(uv, sample["vertex_uv"])
        assert torch.equal(visible, sample["vertex_visible"])
        assert silhouette.shape == sample["mask"].shape and silhouette[sample["mask"]].float().mean() > 0.95


def test_batch_order_depends_only_on_seed_and_step():
    a = [batch_indices(s, 4, 10, seed=3) for s in range(5)]
    assert a == [batch_indices(s, 4, 10, seed=3) for s in range(5)]
    flat = [i for batch in a for i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # a new permutation each epoch
    assert batch_indices(1, 4, 10, seed=3, shuffle=False) == [4, 5, 6, 7]


def test_config_checks():
    with pytest.raises(ValueError, match="TrainConfig.batch_size"):
        tiny_config(batch_size=0)
    with pytest.raises(ValueError, match="TrainConfig.momentum"):
        tiny_config(momentum=1.5)
    with pytest.raises(ValueError, match="TrainConfig.sampling"):
        tiny_config(sampling="cubic")
    with pytest.raises(ValueError, match="TrainConfig.lr"):
        tiny_config(lr=float("nan"))
    with pytest.raises(ValueError, match="mesh file not found"):
        synthetic_data((32, 32), mesh=ROOT / "nope.obj")
    with pytest.raises(ValueError, match="exactly one"):
        synthetic_data((32, 32))
    config = tiny_config()
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.differences(dataclasses.replace(config, steps=99)) == []
    assert config.differences(dataclasses.replace(config, lr=0.5)) == ["lr"]
    assert TrainConfig.paper().backbone.arch == "resnet50" and TrainConfig.paper().lr == 1e-4


# ------------------------------------------------------------------------ training loop


def state_of(path):
    ckpt = load_checkpoint(path)
    state = {f"backbone.{k}": v for k, v in ckpt.backbone.state_dict().items()}
    for name, nmesh in ckpt.meshes.items():
        state[f"{name}.features"] = nmesh.features
        state[f"{name}.clutter"] = nmesh.clutter
    for idx, entry in ckpt.optimizer_state["state"].items():
        for key, value in entry.items():
            state[f"opt.{idx}.{key}"] = value
    return ckpt, state


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"differ: {bad[:5]}"


def test_resume_continues_exactly(tmp_path):
    config = tiny_config(steps=6, checkpoint_every=3)
    straight = train(config, tmp_path / "a", progress=False)
    assert straight.step == 6 and all(math.isfinite(x) for x in straight.losses)

    first = train(dataclasses.replace(config, steps=3), tmp_path / "b", progress=False)
    assert first.step == 3
    second = train(config, tmp_path / "b", resume=True, progress=False)
    assert second.step == 6 and len(second.losses) == 3
    assert second.losses == straight.losses[3:]
    ckpt_a, a = state_of(tmp_path / "a")
    ckpt_b, b = state_of(tmp_path / "b")
    assert_same_state(a, b)
    assert ckpt_a.clutter_pointers == ckpt_b.clutter_pointers
    assert ckpt_a.step == ckpt_b.step == 6
    assert ckpt_b.meshes["chair"].meta["trained_steps"] == 6
    # keep_checkpoints = 2: steps 3 and 6 remain
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]


def test_worker_processes_give_the_same_run(tmp_path):
    # samples and background cells depend on the position alone, so a run whose batches
    # are rendered by another process is the same run (this process keeps its one thread:
    # training_threads never goes below one)
    config = tiny_config(steps=3, checkpoint_every=3)
    here = train(config, tmp_path / "a", progress=False)
    there = train(config, tmp_path / "b", progress=False, workers=1)
    assert torch.get_num_threads() == 1
    assert there.losses == here.losses
    assert_same_state(state_of(tmp_path / "a")[1], state_of(tmp_path / "b")[1])


def test_training_threads_leave_cores_to_workers_and_restore():
    torch.set_num_threads(3)
    with training_threads(2, "cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    with training_threads(1, "cpu"):
        assert torch.get_num_threads() == 2
    with training_threads(0, "cpu"):
        assert torch.get_num_threads() == 3
    with pytest.raises(RuntimeError, match="boom"), training_threads(5, "cpu"):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 3


def test_flush_denormals_flushes_inside_and_restores():
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    tiny = torch.tensor([1e-40])  # a float32 denormal
    assert float(tiny * 1.0) != 0.0  # the default: kept
    with flush_denormals():
        assert float(tiny * 1.0) == 0.0
        with flush_denormals():
            pass
        assert float(tiny * 1.0) == 0.0  # the inner exit restores the outer state
    assert float(tiny * 1.0) != 0.0
    with pytest.raises(RuntimeError, match="boom"), flush_denormals():
        raise RuntimeError("boom")
    assert float(tiny * 1.0) != 0.0


def test_default_workers_policy(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_workers("cpu") == 1
    assert default_workers("cuda") == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert default_workers("cpu") == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert default_workers("cpu") == 1 and default_workers("cuda") == 8
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert default_workers("cpu") == 0 and default_workers("cuda") == 0


def test_run_directory_errors(tmp_path):
    config = tiny_config(steps=1)
    train(config, tmp_path / "run", progress=False)
    assert load_run_config(tmp_path / "run") == config
    with pytest.raises(CheckpointError, match="already holds a training run"):
        train(config, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="different config.*lr"):
        train(dataclasses.replace(config, lr=0.5), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(config, tmp_path / "none", resume=True, progress=False)
    weights = tmp_path / "run" / "checkpoints" / "step_00000001" / "backbone.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(CheckpointError, match="backbone.safetensors: checksum"):
        load_checkpoint(tmp_path / "run")
    with pytest.raises(CheckpointError, match="no such run"):
        load_checkpoint(tmp_path / "missing")


def test_should_stop_writes_a_checkpoint(tmp_path):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) >= 2

    result = train(tiny_config(steps=10, checkpoint_every=100), tmp_path / "r", progress=False, should_stop=stop)
    assert result.stopped and result.step == 2
    assert load_checkpoint(tmp_path / "r").step == 2


def test_cosine_schedule_is_applied_and_resumes_exactly(tmp_path):
    config = tiny_config(steps=6, checkpoint_every=100, lr_schedule="cosine")
    rates = [learning_rate(config, s) for s in range(7)]
    assert rates[0] == config.lr and rates == sorted(rates, reverse=True)
    assert rates[6] == pytest.approx(0.02 * config.lr)
    straight = train(config, tmp_path / "a", progress=False)
    # the optimizer ran its last step (index 5) at the schedule's rate
    assert load_checkpoint(tmp_path / "a").optimizer_state["param_groups"][0]["lr"] == pytest.approx(rates[5])
    calls = []
    stopped = train(config, tmp_path / "b", progress=False, should_stop=lambda: calls.append(1) or len(calls) >= 2)
    assert stopped.step == 2
    rest = train(config, tmp_path / "b", resume=True, progress=False)
    assert rest.losses == straight.losses[2:]
    assert_same_state(state_of(tmp_path / "a")[1], state_of(tmp_path / "b")[1])
    with pytest.raises(ValueError, match="TrainConfig.lr_schedule"):
        tiny_config(lr_schedule="step")


def test_vertices_under_occluders_are_not_rows_of_the_loss():
    data = synthetic_data((32, 32), mesh=CHAIR, scene={"occlusion": 2})
    dataset, meshes = build_data(tiny_config(data=data))
    sample = dataset[0]
    assert sample["occluder_mask"].any()
    collate = _Collate(["chair"], [_Geometry(meshes["chair"].verts, meshes["chair"].faces)], 5, 0)
    batch = collate([(0, sample)])
    uv = sample["vertex_uv"].round().long()
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < 32) & (uv[:, 1] >= 0) & (uv[:, 1] < 32)
    under = torch.zeros_like(sample["vertex_visible"])
    under[inside] = sample["occluder_mask"][uv[inside, 1], uv[inside, 0]]
    assert (sample["vertex_visible"] & under).any()  # the test means something
    assert torch.equal(batch["vertex_visible"][0], sample["vertex_visible"] & ~under)


def test_occluder_clutter_draws_background_cells_from_occluders_over_the_object():
    """Hand-made sample: the object fills the left 3 x 4 cells of a 4 x 4 map (amodal mask),
    an occluder covers its first two cell columns; one free cell column on the right."""
    dataset, meshes = build_data(tiny_config(data=synthetic_data((32, 32), mesh=CHAIR)))
    sample = dict(dataset[0])
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:, :24] = True
    occluder = torch.zeros(32, 32, dtype=torch.bool)
    occluder[:, :16] = True
    sample["mask"], sample["occluder_mask"] = mask, occluder
    geometry = [_Geometry(meshes["chair"].verts, meshes["chair"].faces)]
    columns = {}
    for flag in (False, True):
        batch = _Collate(["chair"], geometry, 40, 0, occluder_clutter=flag)([(0, sample)])
        assert bool(batch["background_valid"].all())
        columns[flag] = set((batch["background_idx"][0] % 4).tolist())
    assert columns[False] == {3}  # NeMo: outside the amodal silhouette only
    assert columns[True] == {0, 1, 3}  # and the occluder in front of the object, not the visible part
    with pytest.raises(ValueError, match="occluder_clutter"):
        tiny_config(occluder_clutter="yes")


def test_synthetic_data_scene_overrides():
    data = synthetic_data((32, 32), mesh=CHAIR, scene={"distance_range": (3.0, 4.0), "center_jitter": 0.0})
    assert data["config"]["distance_range"] == [3.0, 4.0] and data["config"]["center_jitter"] == 0.0
    with pytest.raises(ValueError, match="image_size"):
        synthetic_data((32, 32), mesh=CHAIR, scene={"image_size": (64, 64)})


def test_categories_use_projected_category_cuboids(tmp_path):
    data = synthetic_data((32, 32), categories=("car", "mug"), shapes_per_category=2)
    config = tiny_config(data=data, steps=2, batch_size=4)
    dataset, meshes = build_data(config)
    assert list(meshes) == ["car", "mug"] and "vertex_uv" not in dataset[0]
    result = train(config, tmp_path / "cats", progress=False)
    assert result.step == 2 and all(math.isfinite(x) for x in result.losses)
    ckpt = load_checkpoint(tmp_path / "cats")
    assert set(ckpt.meshes) == {"car", "mug"}
    assert isinstance(ckpt.meshes["car"], NeuralMesh) and ckpt.meshes["car"].feature_dim == 16


def test_training_options_3d_exclusion_and_bilinear(tmp_path):
    config = tiny_config(steps=1, neighbor_radius_3d=0.1, sampling="bilinear")
    result = train(config, tmp_path / "r", progress=False)
    assert result.step == 1 and math.isfinite(result.losses[0])
    assert load_run_config(tmp_path / "r").neighbor_radius_3d == 0.1


def test_stride4_backbone_samples_its_own_grid(tmp_path, monkeypatch):
    import neural_mesh.training as training_mod

    seen = []
    original = training_mod.sample_vertex_features

    def spy(fmap, uv, vis, stride, sampling):
        seen.append((tuple(fmap.shape[-2:]), stride))
        return original(fmap, uv, vis, stride, sampling)

    monkeypatch.setattr(training_mod, "sample_vertex_features", spy)
    config = tiny_config(steps=1, backbone=BackboneConfig(width=8, feature_dim=16, output_stride=4))
    result = train(config, tmp_path / "r", progress=False)
    assert result.step == 1 and math.isfinite(result.losses[0])
    assert seen == [((8, 8), 4)]  # 32-pixel renders: an 8 x 8 map sampled at stride 4
    assert load_checkpoint(tmp_path / "r").backbone.stride == 4


def test_training_lowers_the_loss(tmp_path):
    # a handful of steps on a tiny model: the loss falls from its random start
    result = train(tiny_config(steps=12, batch_size=4, lr=3e-3, checkpoint_every=100), tmp_path / "r", progress=False)
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < first


# ------------------------------------------------------------------------------ DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, dump: str, config: dict) -> None:
    """One rank: train, then dump the weights and banks this rank ended with."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from neural_mesh.training import init_distributed

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    r, w, _ = init_distributed("cpu")
    assert (r, w) == (rank, world) and dist.get_backend() == "gloo"
    try:
        result = train(TrainConfig.from_dict(config), out, progress=False)
        state = {f"backbone.{k}": v.detach().contiguous() for k, v in result.backbone.state_dict().items()}
        for name, nmesh in result.meshes.items():
            state[f"{name}.features"] = nmesh.features.contiguous()
            state[f"{name}.clutter"] = nmesh.clutter.contiguous()
        save_file(state, os.path.join(dump, f"rank{rank}.safetensors"))
        with open(os.path.join(dump, f"rank{rank}.json"), "w") as fh:
            json.dump({"losses": result.losses, "step": result.step}, fh)
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    config = tiny_config(steps=3, batch_size=4, checkpoint_every=100)
    dump = tmp_path / "dump"
    dump.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "run"), str(dump), config.to_dict()),
             nprocs=2, join=True)
    r0, r1 = load_file(str(dump / "rank0.safetensors")), load_file(str(dump / "rank1.safetensors"))
    assert_same_state(r0, r1)
    info0 = json.loads((dump / "rank0.json").read_text())
    info1 = json.loads((dump / "rank1.json").read_text())
    assert info0 == info1 and info0["step"] == 3
    assert all(math.isfinite(x) for x in info0["losses"])
    # rank 0's checkpoint holds the weights and banks the ranks ended with
    _, saved = state_of(tmp_path / "run")
    for key, value in r0.items():
        assert torch.equal(saved[key], value), key
    # the banks moved: they are not the initial random ones any more
    _, init = build_data(config)
    assert not torch.equal(r0["chair.features"], init["chair"].features)


# ------------------------------------------------------------------------------ CLI


def run_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def cli():
    """The demo's ``main`` imported in-process (fast error-path tests)."""
    return load_script("demos/train_nemo.py").main


def test_cli_smoke_two_steps(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--mesh", str(CHAIR), "--out", str(out), "--image-size", "32", "--batch-size", "2",
                   "--num-verts", "100", "--steps", "2", "--threads", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert f"model: {out / 'checkpoints' / 'step_00000002'}" in proc.stdout
    ckpt = load_checkpoint(out)
    assert ckpt.step == 2 and list(ckpt.meshes) == ["chair"]


def test_cli_ctrl_c_with_a_render_worker_stops_at_a_checkpoint(tmp_path):
    # Ctrl-C in a terminal signals the whole process group, the rendering worker too: the
    # worker must leave it to the trainer, which finishes its step and checkpoints
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--mesh", str(CHAIR), "--out", str(out), "--image-size", "32",
         "--batch-size", "2", "--num-verts", "100", "--steps", "100000", "--checkpoint-every", "1",
         "--threads", "1", "--workers", "1", "--no-progress"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "latest.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr
    # said once: by the trainer (a forked worker would inherit the CLI's handler and say it too)
    assert stderr.count("stopping after this step") == 1 and "stopped at step" in stdout
    ckpt = load_checkpoint(out)
    assert 1 <= ckpt.step < 100000
    assert f"model: {out / 'checkpoints' / f'step_{ckpt.step:08d}'}" in stdout


def test_cli_resumes_and_rejects_a_mismatch(tmp_path, cli, capsys):
    out = tmp_path / "run"
    assert cli(["--mesh", str(CHAIR), "--out", str(out), "--image-size", "32", "--batch-size", "2",
                "--num-verts", "100", "--steps", "1", "--threads", "1", "--no-progress"]) == 0
    # resume with only --out and a larger --steps: the other options come from run.json
    assert cli(["--resume", "--out", str(out), "--steps", "2", "--no-progress"]) == 0
    assert load_checkpoint(out).step == 2
    assert "model: " in capsys.readouterr().out
    # a different batch size or image size: one-line error naming the field, exit 2
    for flag, value, field in (("--batch-size", "4", "batch_size"), ("--image-size", "48", "image_size")):
        assert cli(["--resume", "--out", str(out), flag, value, "--steps", "3", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert field in err and len(err.strip().splitlines()) == 1
    assert load_checkpoint(out).step == 2
    # a fresh run into a used directory is refused too
    assert cli(["--mesh", str(CHAIR), "--out", str(out), "--steps", "1", "--no-progress"]) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_cli_rejects_bad_input(tmp_path, cli, capsys):
    def check(args, *words):
        code = cli(args)
        err = capsys.readouterr().err
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        for word in words:
            assert word in err, err
        assert not (tmp_path / "o").exists()

    check(["--mesh", str(tmp_path / "nope.obj"), "--out", str(tmp_path / "o")], "nope.obj")
    bad = tmp_path / "bad.obj"
    bad.write_bytes(b"\x00\x01garbage\xff" * 10)
    check(["--mesh", str(bad), "--out", str(tmp_path / "o"), "--image-size", "32", "--steps", "1"], "bad.obj")
    check(["--mesh", str(CHAIR), "--out", str(tmp_path / "o"), "--steps", "-3"], "--steps")
    check(["--mesh", str(CHAIR), "--out", str(tmp_path / "o"), "--lr", "abc"], "--lr")
    check(["--mesh", str(CHAIR), "--out", str(tmp_path / "o"), "--image-size", "4"], "--image-size")
    check(["--categories", "dragon", "--out", str(tmp_path / "o")], "dragon")
    check(["--out", str(tmp_path / "o")], "--mesh")
    check(["--resume", "--out", str(tmp_path / "o")], "run.json")
    check(["--mesh", str(CHAIR), "--categories", "car", "--out", str(tmp_path / "o")], "--categories")


def test_fine_tuning_starts_from_the_given_backbone_and_meshes(tmp_path):
    base = train(tiny_config(steps=2), tmp_path / "base", progress=False)
    # a learning rate of ~0 keeps the start: the run must begin at the given weights
    config = tiny_config(steps=1, lr=1e-12, data=synthetic_data((32, 32), mesh=CHAIR, scene={"occlusion": (0.2, 0.7)}))
    tuned = train(config, tmp_path / "tuned", backbone=base.backbone, meshes=base.meshes, progress=False)
    fresh = train(config, tmp_path / "fresh", meshes=base.meshes, progress=False)
    start = base.backbone.state_dict()
    weights = [k for k, v in start.items() if v.is_floating_point() and "running" not in k]
    assert all(torch.allclose(tuned.backbone.state_dict()[k], start[k], atol=1e-6) for k in weights)
    assert not all(torch.allclose(fresh.backbone.state_dict()[k], start[k], atol=1e-6) for k in weights)
    # the vertex bank went on from the base model's (momentum update of its entries)
    cos = (tuned.meshes["chair"].features * base.meshes["chair"].features).sum(-1)
    assert float(cos.mean()) > 0.5
    # resuming follows the checkpoint, not the initial weights
    resumed = train(dataclasses.replace(config, steps=2), tmp_path / "fresh", backbone=base.backbone,
                    meshes=base.meshes, resume=True, progress=False)
    assert resumed.step == 2
    assert not all(torch.allclose(resumed.backbone.state_dict()[k], start[k], atol=1e-6) for k in weights)


def test_fine_tuning_rejects_another_backbone_config(tmp_path):
    other = train(tiny_config(steps=1, backbone=BackboneConfig(width=8, feature_dim=8)), tmp_path / "a",
                  progress=False)
    with pytest.raises(ValueError, match="backbone: its config"):
        train(tiny_config(), tmp_path / "b", backbone=other.backbone, progress=False)
    with pytest.raises(TypeError, match="FeatureBackbone"):
        train(tiny_config(), tmp_path / "c", backbone=object(), progress=False)
    assert not (tmp_path / "b").exists()
