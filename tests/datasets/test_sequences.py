"""Orbit sequences and frame-pair sampling."""

from __future__ import annotations

import math

import pytest
import torch

from datasets import check_sample
from datasets.sequences import FramePairs, OrbitConfig, OrbitSequences, orbit_poses
from render import angles_to_pose, geodesic_distance, project_points
from tests.helpers import assert_close

CONFIG = OrbitConfig(image_size=(32, 40), num_frames=12, categories=("chair", "car"), shapes_per_category=2)


@pytest.fixture(scope="module")
def seqs():
    return OrbitSequences(CONFIG, seed=3, length=3)


def test_sequence_is_deterministic_in_seed_and_index(seqs):
    a, b = seqs[1], OrbitSequences(CONFIG, seed=3, length=3)[1]
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["R"], b["R"])
    assert not torch.equal(seqs[0]["frames"], a["frames"])
    assert a["frames"].shape == (12, 3, 32, 40) and a["masks"].shape == (12, 32, 40)


def test_trajectory_is_smooth_and_labels_consistent(seqs):
    s = seqs[0]
    R, t = angles_to_pose(s["azimuth"], s["elevation"], s["theta"], s["distance"])
    assert_close(s["R"], R, atol=1e-5, rtol=0)
    assert_close(s["t"], t, atol=1e-5, rtol=0)
    step = geodesic_distance(s["R"][1:], s["R"][:-1])
    assert float(step.max()) < math.radians(40)  # 12 frames over at most 360 degrees, plus jitter
    far = geodesic_distance(s["R"][0], s["R"][-1])
    assert float(far) > float(step.median())


def test_mask_matches_projected_shape(seqs):
    from datasets.randomize import cached_shape

    params = seqs.params(2)
    s = seqs[2]
    verts = cached_shape(params.category, params.shape_seed).mesh.verts
    uv, _ = project_points(verts[None].expand(12, -1, -1), s["K"], s["R"], s["t"])
    for i in range(12):
        ys, xs = s["masks"][i].nonzero(as_tuple=True)
        assert ys.numel() > 20, "object should be visible in every frame"
        assert float(xs.min()) >= float(uv[i, :, 0].min()) - 0.5 and float(xs.max()) <= float(uv[i, :, 0].max()) + 0.5
        assert float(ys.min()) >= float(uv[i, :, 1].min()) - 0.5 and float(ys.max()) <= float(uv[i, :, 1].max()) + 0.5


def test_frame_is_a_schema_sample_equal_to_the_sequence_frame(seqs):
    f = seqs.frame(1, 5)
    check_sample(f)
    s = seqs[1]
    assert_close(f["image"], s["frames"][5], atol=1e-6, rtol=0)
    assert torch.equal(f["mask"], s["masks"][5])


@pytest.mark.parametrize("mode", ["nearby", "distant", "same"])
def test_pairs_follow_their_mode(seqs, mode):
    pairs = FramePairs(seqs, mode=mode, offset=2, seed=1, length=6)
    for k in range(3):
        a, b, meta = pairs[k]
        check_sample(a)
        check_sample(b)
        j1, j2 = meta["frames"]
        assert a["mesh_id"] == b["mesh_id"]
        if mode == "nearby":
            assert abs(j1 - j2) == 2
        if mode == "same":
            assert j1 == j2 and torch.equal(a["image"], b["image"])
    assert pairs.pair_indices(4) == FramePairs(seqs, mode=mode, offset=2, seed=1, length=6).pair_indices(4)


def test_orbit_poses_stay_in_range(seqs):
    poses = orbit_poses(seqs.params(0), 200)
    assert bool((poses["elevation"].abs() <= math.radians(80) + 1e-9).all())
    assert bool((poses["azimuth"] > -math.pi - 1e-9).all()) and bool((poses["azimuth"] <= math.pi + 1e-9).all())
    assert bool((poses["distance"] > 1.0).all())


def test_bad_arguments(seqs):
    with pytest.raises(ValueError, match="mode: expected one of"):
        FramePairs(seqs, mode="far")
    with pytest.raises(ValueError, match="offset: expected 1 <= offset < 12"):
        FramePairs(seqs, mode="nearby", offset=12)
    with pytest.raises(ValueError, match="num_frames: expected >= 2"):
        OrbitConfig(num_frames=1)
    with pytest.raises(ValueError, match="categories: unknown"):
        OrbitConfig(categories=("dragon",))
    with pytest.raises(IndexError, match="out of range"):
        seqs.frame(0, 12)
