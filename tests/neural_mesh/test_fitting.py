"""Tests for neural_mesh/fitting.py: feature rendering, the NeMo loss, pose parameters and
render-and-compare fitting on synthetic feature maps (no CNN).

The synthetic maps are the model's own features rendered at a known pose over a
background of clutter-like features (unit vectors near the clutter bank's mean), plus
noise and, optionally, a block of the object overwritten with clutter (occlusion).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import trimesh

from neural_mesh.fitting import (
    FitConfig,
    InitGrid,
    PoseParams,
    PoseResult,
    fit_pose,
    init_grid_for,
    mean_clutter_feature,
    nemo_loss,
    object_margins,
    params_from_pose,
    pose_from_params,
    render_features,
    upsample_features,
)
from neural_mesh.neural_mesh import NeuralMesh
from render import (
    Mesh,
    angles_to_pose,
    default_intrinsics,
    geodesic_distance,
    interpolate_reference,
    project_points,
    rasterize_reference,
)
from tests.helpers import assert_close

IMAGE_SIZE = (128, 160)  # (H, W) -> 16 x 20 feature cells at stride 8
STRIDE = 8
K = default_intrinsics(IMAGE_SIZE)  # f = 192 px
MAP_SIZE = (16, 20)
C = 16
# NeMo's 144-pose grid; fewer candidates and steps than the default, enough for these
# maps, fitted at their own resolution (upsampling has its own tests)
CONFIG = FitConfig(top_k=2, steps=80, lr_decay_every=30, upsample=1)

# (azimuth, elevation, theta) in degrees, distance, (u0, v0) in pixels
POSES = [
    (40.0, 17.0, 6.0, 5.0, 79.5, 63.5),
    (143.0, 6.0, -11.0, 5.0, 60.0, 50.0),  # off-centre
    (-70.0, 34.0, 17.0, 6.0, 100.0, 70.0),  # off-centre, further away
]


def _box() -> Mesh:
    box = trimesh.creation.box(extents=(2.0, 1.2, 1.6))
    return Mesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces), name="box")


def _chair() -> Mesh:
    parts = [
        trimesh.creation.box(extents=(1.0, 0.15, 1.0), transform=trimesh.transformations.translation_matrix((0, 0, 0))),
        trimesh.creation.box(extents=(1.0, 1.0, 0.15), transform=trimesh.transformations.translation_matrix((0, 0.55, -0.45))),
    ]
    for x in (-0.4, 0.4):
        for z in (-0.4, 0.4):
            parts.append(trimesh.creation.box(extents=(0.12, 0.9, 0.12),
                                              transform=trimesh.transformations.translation_matrix((x, -0.5, z))))
    chair = trimesh.util.concatenate(parts)
    return Mesh(torch.tensor(chair.vertices, dtype=torch.float32), torch.tensor(chair.faces), name="chair")


def _with_clutter(nm: NeuralMesh, seed: int = 3) -> tuple[NeuralMesh, torch.Tensor]:
    """Replace the clutter bank by features concentrated around a random direction."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.nn.functional.normalize(torch.randn(nm.feature_dim, generator=g), dim=0)
    clutter = torch.nn.functional.normalize(mu + 0.3 * torch.randn(64, nm.feature_dim, generator=g), dim=1)
    return dataclasses.replace(nm, clutter=clutter), mu


@pytest.fixture(scope="module")
def model() -> tuple[NeuralMesh, torch.Tensor]:
    nm = NeuralMesh.from_mesh(_box(), num_verts=300, feature_dim=C, clutter_size=8,
                              generator=torch.Generator().manual_seed(0))
    return _with_clutter(nm)


def _params(pose) -> PoseParams:
    a, e, th, d, u, v = pose
    return PoseParams(*(torch.tensor([float(x)]) for x in (math.radians(a), math.radians(e), math.radians(th), d, u, v)))


def _feature_K(K: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    s, off = float(stride), (stride - 1) / 2.0
    return torch.tensor([[1 / s, 0, -off / s], [0, 1 / s, -off / s], [0, 0, 1.0]]) @ K


def synthetic_map(nm, mu, pose, *, seed=0, noise=0.1, occlusion=0.0, stride=STRIDE):
    """``(C, h, w)`` feature map of the model at ``pose`` over clutter; returns (map, R, mask)."""
    g = torch.Generator().manual_seed(seed)
    R, t = pose_from_params(_params(pose), K)
    size = tuple(-(-n // stride) for n in IMAGE_SIZE)
    feat, mask = render_features(nm, R, t, _feature_K(K, stride), size)
    bg = torch.nn.functional.normalize(mu[:, None, None] + 0.3 * torch.randn(C, *size, generator=g), dim=0)
    out = torch.where(mask[0], feat[0], bg)
    if occlusion > 0:
        # overwrite the leftmost `occlusion` fraction of the object's cells with clutter
        ii, jj = mask[0].nonzero(as_tuple=True)
        order = torch.argsort(jj * 1000 + ii)[: round(occlusion * ii.numel())]
        occ = torch.zeros_like(mask[0])
        occ[ii[order], jj[order]] = True
        out = torch.where(occ, bg, out)
    out = torch.nn.functional.normalize(out + noise * torch.randn(out.shape, generator=g), dim=0)
    return out, R[0], mask[0]


def _deg(R1, R2) -> float:
    return math.degrees(float(geodesic_distance(R1, R2)))


# ------------------------------------------------------------------------------ rendering


def test_render_features_unit_on_object_zero_on_background(model):
    nm, _ = model
    R, t = pose_from_params(_params(POSES[0]), K)
    feat, mask = render_features(nm, R, t, _feature_K(K), MAP_SIZE)
    assert feat.shape == (1, C, *MAP_SIZE) and mask.shape == (1, *MAP_SIZE)
    assert 40 < int(mask.sum()) < 200
    assert_close(feat.norm(dim=1)[mask], torch.ones(int(mask.sum())))
    assert float(feat.abs().sum(1)[~mask].max()) == 0.0


def test_render_features_matches_the_reference_rasterizer(model):
    nm, _ = model
    R, t = pose_from_params(_params(POSES[1]), K)
    feat, mask = render_features(nm, R, t, _feature_K(K), MAP_SIZE, cull_backfaces=False)
    frags = rasterize_reference((nm.verts @ R[0].T + t[0])[None], nm.faces, _feature_K(K), MAP_SIZE)
    ref = interpolate_reference(frags, nm.faces, nm.features[None])
    ref = torch.nn.functional.normalize(ref, dim=-1).permute(0, 3, 1, 2)
    assert torch.equal(mask, frags.mask)
    assert_close(feat, ref, atol=1e-5, rtol=0)


def _rewound(nm: NeuralMesh) -> NeuralMesh:
    """The model with every other face wound inward, as in many CAD models."""
    faces = nm.faces.clone()
    faces[::2] = faces[::2].flip(1)
    return dataclasses.replace(nm, faces=faces)


def test_render_features_draws_a_wrongly_wound_surface_two_sided(model):
    # back-face culling (the default) would cut the inward faces out of the picture; it is
    # only used on closed, outward surfaces, where it changes nothing
    nm, _ = model
    R, t = pose_from_params(_params(POSES[0]), K)
    feat, mask = render_features(nm, R, t, _feature_K(K), MAP_SIZE)
    feat_two_sided, mask_two_sided = render_features(nm, R, t, _feature_K(K), MAP_SIZE, cull_backfaces=False)
    rewound_feat, rewound_mask = render_features(_rewound(nm), R, t, _feature_K(K), MAP_SIZE)
    assert torch.equal(mask, mask_two_sided) and torch.equal(mask, rewound_mask)
    assert_close(rewound_feat, feat, atol=1e-5, rtol=0)
    assert_close(feat_two_sided, feat, atol=1e-5, rtol=0)


def test_a_neural_meshs_closedness_is_checked_once(model, monkeypatch):
    import neural_mesh.neural_mesh as nm_module

    nm = dataclasses.replace(model[0])  # a fresh instance: nothing cached yet
    calls = []
    real = nm_module.is_closed_outward
    monkeypatch.setattr(nm_module, "is_closed_outward", lambda v, f: calls.append(1) or real(v, f))
    R, t = pose_from_params(_params(POSES[0]), K)
    for _ in range(3):
        render_features(nm, R, t, _feature_K(K), MAP_SIZE)
    assert len(calls) == 1 and nm.closed_outward
    assert not _rewound(nm).closed_outward and len(calls) == 2  # another surface: checked anew


def test_fit_does_not_depend_on_the_faces_winding(model):
    nm, mu = model
    fmap, R_true, _ = synthetic_map(nm, mu, POSES[0], seed=5)
    config = dataclasses.replace(CONFIG, top_k=1)
    kw = dict(image_size=IMAGE_SIZE, stride=STRIDE, config=config)
    (fit,) = fit_pose(fmap, nm, K, **kw)
    (rewound,) = fit_pose(fmap, _rewound(nm), K, **kw)
    assert _deg(fit.R, R_true) < 5.0
    assert _deg(rewound.R, fit.R) < 0.5 and rewound.score == pytest.approx(fit.score, abs=1e-4)


def test_feature_cell_centres_follow_the_stride_convention(model):
    # the object origin placed at pixel (8 j + 3.5, 8 i + 3.5) projects to cell (i, j)
    Kf = _feature_K(K)
    uv, _ = project_points(torch.tensor([[[0.0, 0.0, 5.0]]]), Kf)
    assert_close(uv[0, 0], torch.tensor([(K[0, 2] - 3.5) / 8, (K[1, 2] - 3.5) / 8]))
    p = _params((0, 0, 0, 5.0, 8 * 6 + 3.5, 8 * 9 + 3.5))
    R, t = pose_from_params(p, K)
    uv, _ = project_points(torch.zeros(1, 1, 3), Kf, R, t)
    assert_close(uv[0, 0], torch.tensor([6.0, 9.0]))


# ----------------------------------------------------------------------------------- loss


def test_nemo_loss_matches_its_formula():
    g = torch.Generator().manual_seed(1)
    image = torch.nn.functional.normalize(torch.randn(2, 4, 3, 5, generator=g), dim=1)
    rendered = torch.nn.functional.normalize(torch.randn(2, 4, 3, 5, generator=g), dim=1)
    mask = torch.rand(2, 3, 5, generator=g) > 0.5
    rendered = rendered * mask[:, None]
    clutter = torch.nn.functional.normalize(torch.randn(4, generator=g), dim=0)
    loss = nemo_loss(image, rendered, mask, clutter)
    for b in range(2):
        total_max, total_clu = 0.0, 0.0
        for i in range(3):
            for j in range(5):
                c = float(image[b, :, i, j] @ clutter)
                o = float(image[b, :, i, j] @ rendered[b, :, i, j]) if mask[b, i, j] else 0.0
                total_max += max(o, c)
                total_clu += c
        assert math.isclose(float(loss[b]), 1 - (total_max - total_clu) / 15, rel_tol=1e-5)
    assert_close(nemo_loss(image, rendered, None, clutter), loss)  # rendered is 0 off the mask


def test_mean_clutter_feature_is_the_normalised_mean():
    bank = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert_close(mean_clutter_feature(bank), torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))


def test_loss_is_lowest_at_the_true_pose(model):
    nm, mu = model
    pose = POSES[1]
    fmap, _, _ = synthetic_map(nm, mu, pose)
    clutter = mean_clutter_feature(nm.clutter)

    def loss_at(p):
        R, t = pose_from_params(_params(p), K)
        feat, mask = render_features(nm, R, t, _feature_K(K), MAP_SIZE)
        return float(nemo_loss(fmap[None], feat, mask, clutter)[0])

    truth = loss_at(pose)
    a, e, th, d, u, v = pose
    for other in [(a + 10, e, th, d, u, v), (a, e - 10, th, d, u, v), (a, e, th + 10, d, u, v),
                  (a, e, th, d * 1.15, u, v), (a, e, th, d, u + 8, v), (a, e, th, d, u, v - 8)]:
        assert loss_at(other) > truth + 0.005, other


def test_loss_gradients_wrt_pose_parameters_are_finite_and_nonzero(model):
    nm, mu = model
    fmap, _, _ = synthetic_map(nm, mu, POSES[0])
    a, e, th, d, u, v = POSES[0]
    leaves = [torch.tensor([x], dtype=torch.float64, requires_grad=True)
              for x in (math.radians(a + 4), math.radians(e - 3), math.radians(th + 3), d * 1.05, u + 3, v - 2)]
    R, t = pose_from_params(PoseParams(*leaves), K.double())
    feat, mask = render_features(nm, R, t, _feature_K(K).double(), MAP_SIZE)
    loss = nemo_loss(fmap[None].double(), feat, mask, mean_clutter_feature(nm.clutter).double())
    loss.sum().backward()
    for name, leaf in zip(("azimuth", "elevation", "theta", "distance", "u0", "v0"), leaves):
        assert torch.isfinite(leaf.grad).all() and float(leaf.grad.abs()) > 0, name


# -------------------------------------------------------------------------- pose parameters


def test_pose_params_round_trip_and_projection():
    p = PoseParams(*(torch.tensor(v) for v in ([0.3, -2.0], [0.2, -0.4], [0.1, 0.5], [4.0, 7.0],
                                                [40.0, 120.0], [30.0, 100.0])))
    R, t = pose_from_params(p, K)
    assert_close(t[:, 2], p.distance)
    R_ref, _ = angles_to_pose(p.azimuth, p.elevation, p.theta, p.distance)
    assert_close(R, R_ref)
    uv, _ = project_points(torch.zeros(2, 1, 3), K, R, t)
    assert_close(uv[:, 0], torch.stack([p.u0, p.v0], 1), atol=1e-4, rtol=0)
    back = params_from_pose(R, t, K)
    for name in ("azimuth", "elevation", "theta", "distance", "u0", "v0"):
        assert_close(getattr(back, name), getattr(p, name), atol=1e-4, rtol=0, msg=name)


def test_params_from_pose_rejects_objects_behind_the_camera():
    R, t = angles_to_pose(0.0, 0.0, 0.0, 5.0)
    with pytest.raises(ValueError, match=r"t: expected the object in front of the camera \(t_z > 0\)"):
        params_from_pose(R[None], -t[None], K)


# ------------------------------------------------------------------------------- fitting


@pytest.fixture(scope="module")
def clean_fit(model):
    nm, mu = model
    maps = [synthetic_map(nm, mu, p, seed=i) for i, p in enumerate(POSES)]
    batch = torch.stack([m for m, _, _ in maps])
    return maps, fit_pose(batch, nm, K, image_size=IMAGE_SIZE, config=CONFIG)


def test_fit_recovers_the_pose_on_clean_maps(clean_fit):
    maps, results = clean_fit
    for (fmap, R, _), res, pose in zip(maps, results, POSES):
        assert _deg(res.R, R) < 5.0, (pose, _deg(res.R, R))


def test_fit_recovers_off_centre_objects(clean_fit):
    _, results = clean_fit
    for res, pose in zip(results, POSES):
        # within one feature cell
        assert math.hypot(res.u0 - pose[4], res.v0 - pose[5]) < STRIDE, (pose, res.u0, res.v0)
        assert abs(res.distance - pose[3]) < 0.1 * pose[3]


def test_a_fit_is_doubtful_where_the_map_shows_no_object(model, clean_fit):
    # the clean fits explain their maps beyond clutter; on a map of clutter alone (the
    # object's cells all overwritten) the best pose explains nothing: score <= 0, flagged
    _, results = clean_fit
    assert all(r.score > 0 and not r.doubtful for r in results), [r.score for r in results]
    nm, mu = model
    fmap, _, _ = synthetic_map(nm, mu, POSES[0], seed=7, occlusion=1.0)
    (empty,) = fit_pose(fmap[None], nm, K, image_size=IMAGE_SIZE, config=CONFIG)
    assert empty.score <= 0 and empty.doubtful


def test_fit_at_stride_4(model):
    # the same pose on a stride-4 map (32 x 40 cells): recovered, and placed within 2 pixels
    nm, mu = model
    pose = POSES[1]
    fmap, R, _ = synthetic_map(nm, mu, pose, seed=5, stride=4)
    assert fmap.shape[-2:] == (32, 40)
    (res,) = fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, stride=4, config=CONFIG)
    assert _deg(res.R, R) < 3.0
    assert math.hypot(res.u0 - pose[4], res.v0 - pose[5]) < 2.0, (res.u0, res.v0)
    assert abs(res.distance - pose[3]) < 0.05 * pose[3]


def _position_map(stride: int, size: tuple[int, int], rate: float = 0.02) -> torch.Tensor:
    """``(1, 4, h, w)`` unit features encoding each cell centre's pixel position (x, y)
    as two angles, ``rate`` radians per pixel."""
    ii, jj = torch.meshgrid(torch.arange(size[0], dtype=torch.float64),
                            torch.arange(size[1], dtype=torch.float64), indexing="ij")
    x, y = (stride * jj + (stride - 1) / 2) * rate, (stride * ii + (stride - 1) / 2) * rate
    return (torch.stack([x.cos(), x.sin(), y.cos(), y.sin()]) / math.sqrt(2))[None]


def test_upsample_features_keeps_the_cell_centre_convention():
    # stride-8 cells centred at 8 k + 3.5 -> stride-4 cells centred at 4 m + 1.5 (and
    # stride 2 at 2 m + 0.5): decode each upsampled cell's position from its features
    rate = 0.02
    fm = _position_map(8, (6, 7), rate)
    for factor in (2, 4):
        up = upsample_features(fm, factor)
        assert up.shape == (1, 4, 6 * factor, 7 * factor)
        assert_close(up.norm(dim=1), torch.ones(1, 6 * factor, 7 * factor), atol=1e-12, rtol=0)
        s = 8 // factor
        want = _position_map(s, (6 * factor, 7 * factor), rate)
        # interior cells (borders are clamped): positions to a hundredth of a pixel
        inner = slice(factor, -factor)
        x = torch.atan2(up[0, 1], up[0, 0])[inner, inner] / rate
        y = torch.atan2(up[0, 3], up[0, 2])[inner, inner] / rate
        assert_close(x, torch.atan2(want[0, 1], want[0, 0])[inner, inner] / rate, atol=0.01, rtol=0)
        assert_close(y, torch.atan2(want[0, 3], want[0, 2])[inner, inner] / rate, atol=0.01, rtol=0)
    assert upsample_features(fm, 1) is fm
    with pytest.raises(ValueError, match="factor: expected an integer >= 1, got 0"):
        upsample_features(fm, 0)


def test_fit_on_an_upsampled_map(model):
    # a stride-8 map fitted on its x2 upsampling (stride 4): the pose is recovered and
    # placed within half a stride-8 cell, in full-image pixels as without upsampling
    nm, mu = model
    pose = POSES[1]
    fmap, R, _ = synthetic_map(nm, mu, pose, seed=5)
    (res,) = fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, stride=STRIDE,
                      config=dataclasses.replace(CONFIG, upsample=2))
    assert _deg(res.R, R) < 4.0, _deg(res.R, R)
    assert math.hypot(res.u0 - pose[4], res.v0 - pose[5]) < STRIDE / 2, (res.u0, res.v0)
    assert abs(res.distance - pose[3]) < 0.05 * pose[3]
    # the score is the loss on the map the fit saw: the upsampled one, at stride 4
    feat, mask = render_features(nm, res.R[None], res.t[None], _feature_K(K, 4), (32, 40))
    loss = nemo_loss(upsample_features(fmap[None], 2), feat, mask, nm.clutter, **CONFIG.loss_options)
    assert math.isclose(res.score, 1 - float(loss[0]), abs_tol=1e-5)
    with pytest.raises(ValueError, match="config.upsample: expected a divisor of the feature stride 8, got 3"):
        fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, stride=STRIDE, config=dataclasses.replace(CONFIG, upsample=3))


def test_pose_result_fields_are_consistent(clean_fit):
    _, results = clean_fit
    for res in results:
        assert isinstance(res, PoseResult)
        R, _ = angles_to_pose(res.azimuth, res.elevation, res.theta, res.distance)
        assert_close(res.R, R.float(), atol=1e-5, rtol=0)
        p = PoseParams(*(torch.tensor([v]) for v in (res.azimuth, res.elevation, res.theta, res.distance, res.u0, res.v0)))
        R2, t2 = pose_from_params(p, K)
        assert_close(res.R, R2[0], atol=1e-5, rtol=0)
        assert_close(res.t, t2[0], atol=1e-4, rtol=0)
        assert math.isclose(res.score, 1 - min(res.loss_curve), rel_tol=1e-6)
        assert res.loss_curve[-1] <= res.loss_curve[0] + 1e-6 or min(res.loss_curve) < res.loss_curve[0]
        assert 1 <= len(res.loss_curve) <= (CONFIG.polish + 1) * (CONFIG.steps + 1) and res.seconds > 0
        assert -math.pi < res.azimuth <= math.pi and -math.pi < res.theta <= math.pi


def test_fit_score_is_the_loss_of_the_returned_pose(model, clean_fit):
    nm, _ = model
    maps, results = clean_fit
    fmap = maps[0][0]
    res = results[0]
    feat, mask = render_features(nm, res.R[None], res.t[None], _feature_K(K), MAP_SIZE)
    # default clutter score: max over the bank; default loss: the mixture
    loss = nemo_loss(fmap[None], feat, mask, nm.clutter, **CONFIG.loss_options)
    assert math.isclose(res.score, 1 - float(loss[0]), abs_tol=1e-5)


def test_fit_with_nemos_loss_scores_with_nemos_loss(model):
    nm, mu = model
    fmap, R_true, _ = synthetic_map(nm, mu, POSES[0], seed=5)
    config = dataclasses.replace(CONFIG, loss="nemo", top_k=1, steps=20)
    res = fit_pose(fmap[None], nm, K, image_size=IMAGE_SIZE, config=config)[0]
    feat, mask = render_features(nm, res.R[None], res.t[None], _feature_K(K), MAP_SIZE)
    loss = nemo_loss(fmap[None], feat, mask, nm.clutter, kind="nemo")
    assert math.isclose(res.score, 1 - float(loss[0]), abs_tol=1e-5)


def test_mixture_loss_matches_its_formula_and_bounds_the_cost_of_a_pixel():
    g = torch.Generator().manual_seed(2)
    image = torch.nn.functional.normalize(torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64), dim=1)
    rendered = torch.nn.functional.normalize(torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64), dim=1)
    mask = torch.rand(2, 3, 5, generator=g) > 0.4
    clutter = torch.nn.functional.normalize(torch.randn(4, generator=g, dtype=torch.float64), dim=0)
    T, q = 0.1, 0.3
    loss = nemo_loss(image, rendered, mask, clutter, kind="mixture", temperature=T, occlusion_prior=q)
    for b in range(2):
        total = 0.0
        for i in range(3):
            for j in range(5):
                if mask[b, i, j]:
                    m = float(image[b, :, i, j] @ rendered[b, :, i, j] - image[b, :, i, j] @ clutter)
                    total += T * math.log((1 - q) * math.exp(m / T) + q)
        assert math.isclose(float(loss[b]), 1 - total / 15, rel_tol=1e-9)
    # a pixel the object does not explain costs at most T log(1 / q); one it explains gains ~ the margin
    far = nemo_loss(image[:1, :, :1, :1], -image[:1, :, :1, :1], None, image[0, :, 0, 0],
                    kind="mixture", temperature=T, occlusion_prior=q)
    assert 0 < float(far[0]) - 1 <= T * math.log(1 / q) + 1e-9
    with pytest.raises(ValueError, match="loss"):
        nemo_loss(image, rendered, mask, clutter, kind="robust")
    with pytest.raises(ValueError, match="occlusion_prior"):
        FitConfig(occlusion_prior=1.0)
    with pytest.raises(ValueError, match="temperature"):
        FitConfig(temperature=0.0)


def test_object_margins_at_the_true_pose_and_a_wrong_one(model):
    nm, mu = model
    fmap, R, mask = synthetic_map(nm, mu, POSES[0], noise=0.05)
    _, t = pose_from_params(_params(POSES[0]), K)
    Kf = _feature_K(K)
    mean, positive = object_margins(fmap[None], nm, R[None], t, Kf)
    # by hand: rendered feature . image feature - best clutter match, over the object
    rendered, m = render_features(nm, R[None], t, Kf, MAP_SIZE)
    margin = (rendered[0] * fmap).sum(0) - torch.einsum("chw,mc->mhw", fmap, nm.clutter).amax(0)
    assert_close(mean, margin[m[0]].mean()[None])
    assert_close(positive, (margin[m[0]] > 0).double().mean()[None].float())
    assert float(positive) > 0.9  # the map is the model's own features: the object explains it
    # 90 degrees off, the same place: far less evidence
    wrong = (POSES[0][0] + 90.0, *POSES[0][1:])
    R_wrong, t_wrong = pose_from_params(_params(wrong), K)
    mean_wrong, _ = object_margins(fmap[None], nm, R_wrong, t_wrong, Kf)
    assert float(mean_wrong) < float(mean) - 0.1
    # NeMo's mean clutter feature instead of the bank's best match
    mean_nemo, _ = object_margins(fmap[None], nm, R[None], t, Kf, clutter_score="mean")
    clu = torch.einsum("chw,c->hw", fmap, mean_clutter_feature(nm.clutter))
    assert_close(mean_nemo, ((rendered[0] * fmap).sum(0) - clu)[m[0]].mean()[None])
    # an object outside the map has no pixels: NaN, not a number that looks like evidence
    far = t.clone()
    far[:, 0] += 100.0
    mean_off, positive_off = object_margins(fmap[None], nm, R[None], far, Kf)
    assert bool(mean_off.isnan().all()) and bool(positive_off.isnan().all())
    with pytest.raises(ValueError, match="clutter_score"):
        object_margins(fmap[None], nm, R[None], t, Kf, clutter_score="median")


def test_nemo_loss_with_a_bank_takes_the_best_clutter_match():
    torch.manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(2, 5, 4, 6, dtype=torch.float64), dim=1)
    rendered = torch.nn.functional.normalize(torch.randn(2, 5, 4, 6, dtype=torch.float64), dim=1)
    mask = torch.rand(2, 4, 6) > 0.5
    bank = torch.nn.functional.normalize(torch.randn(7, 5, dtype=torch.float64), dim=1)
    clu = torch.einsum("bchw,mc->bmhw", img, bank).amax(1)
    obj = torch.where(mask, (img * rendered).sum(1), torch.zeros_like(clu))
    expected = 1 - (torch.maximum(obj, clu).mean((1, 2)) - clu.mean((1, 2)))
    assert_close(nemo_loss(img, rendered, mask, bank), expected)
    with pytest.raises(ValueError, match="clutter_feat"):
        nemo_loss(img, rendered, mask, bank[:, :3])
    with pytest.raises(ValueError, match="clutter_score"):
        FitConfig(clutter_score="median")


@pytest.fixture(scope="module")
def single_fits(model, clean_fit):
    nm, _ = model
    maps, _ = clean_fit
    return [fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, config=CONFIG)[0] for fmap, _, _ in maps]


def test_batched_fitting_equals_fitting_one_by_one(clean_fit, single_fits):
    _, results = clean_fit
    for single, batched in zip(single_fits, results):
        assert_close(single.R, batched.R, atol=1e-5, rtol=0)
        assert math.isclose(single.u0, batched.u0, abs_tol=1e-3)
        assert math.isclose(single.score, batched.score, abs_tol=1e-6)
        assert len(single.loss_curve) == len(batched.loss_curve)


def test_fit_is_deterministic(model, clean_fit, single_fits):
    nm, _ = model
    maps, _ = clean_fit
    again = fit_pose(maps[1][0], nm, K, image_size=IMAGE_SIZE, config=CONFIG)[0]
    assert torch.equal(again.R, single_fits[1].R) and again.loss_curve == single_fits[1].loss_curve


def test_grid_search_accepts_per_image_K_float64_and_no_locating(model, clean_fit):
    nm, _ = model
    maps, _ = clean_fit
    batch = torch.stack([m for m, _, _ in maps])
    init = dataclasses.replace(CONFIG, steps=0)  # the grid search and one evaluation only
    shared = fit_pose(batch, nm, K, image_size=IMAGE_SIZE, config=init)
    per_image = fit_pose(batch, nm, K.expand(3, 3, 3), image_size=IMAGE_SIZE, config=init)
    double = fit_pose(batch.double(), nm, K.double(), image_size=IMAGE_SIZE, config=init)
    for a, b, c in zip(shared, per_image, double):
        assert_close(a.R, b.R, atol=1e-6, rtol=0)
        assert_close(a.R, c.R.float(), atol=1e-4, rtol=0)
        assert len(a.loss_curve) == 1
    # without locating, the search starts at the principal point; still a valid pose
    centred = fit_pose(batch[0], nm, K, image_size=IMAGE_SIZE, config=dataclasses.replace(init, locate=False))[0]
    assert math.isfinite(centred.score) and centred.distance > 0


def test_fit_is_robust_to_30_percent_occlusion(model):
    nm, mu = model
    maps = [synthetic_map(nm, mu, p, seed=10 + i, occlusion=0.3) for i, p in enumerate(POSES[:2])]
    results = fit_pose(torch.stack([m for m, _, _ in maps]), nm, K, image_size=IMAGE_SIZE, config=CONFIG)
    for (fmap, R, _), res, pose in zip(maps, results, POSES):
        assert _deg(res.R, R) < 15.0, (pose, _deg(res.R, R))


def test_fit_with_a_bbox_prior(model):
    nm, mu = model
    pose = POSES[2]
    fmap, R, _ = synthetic_map(nm, mu, pose, seed=20)
    # the object's projected bounding box, in pixels
    Rt, t = pose_from_params(_params(pose), K)
    uv, _ = project_points(nm.verts[None], K, Rt, t)
    box = torch.cat([uv[0].amin(0), uv[0].amax(0)])
    config = dataclasses.replace(CONFIG, locate=False)
    res = fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, bbox=box, config=config)[0]
    assert _deg(res.R, R) < 5.0
    assert math.hypot(res.u0 - pose[4], res.v0 - pose[5]) < STRIDE
    # a list with one box per image is accepted too (compared on the grid search alone)
    init = dataclasses.replace(config, steps=0)
    res1 = fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, bbox=box, config=init)[0]
    res2 = fit_pose(fmap[None], nm, K, image_size=IMAGE_SIZE, bbox=[box.tolist()], config=init)[0]
    assert_close(res2.R, res1.R, atol=1e-6, rtol=0)
    assert len(res1.loss_curve) == 1


def test_fit_with_a_remeshed_chair_model():
    nm = NeuralMesh.from_mesh(_chair(), num_verts=250, kind="remesh", feature_dim=C, clutter_size=8,
                              generator=torch.Generator().manual_seed(2))
    nm, mu = _with_clutter(nm)
    pose = (60.0, 20.0, 0.0, 4.0, 80.0, 66.0)
    fmap, R, _ = synthetic_map(nm, mu, pose, seed=3)
    # the default rate schedule: this small, thin object is still converging when the
    # test's faster CONFIG has decayed its rates (6.8 deg after its 80 steps). At the
    # map's own resolution: this map is point samples of a rendering with hard edges, which
    # upsampling blurs across the one-cell legs (5.9 deg with upsample=2, 0.4 without)
    res = fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, config=FitConfig(upsample=1))[0]
    assert _deg(res.R, R) < 5.0


def test_init_grid_is_cached_and_reusable(model, clean_fit):
    nm, _ = model
    maps, _ = clean_fit
    grid = init_grid_for(nm, CONFIG)
    assert init_grid_for(nm, CONFIG) is grid
    assert grid.azimuth.numel() == CONFIG.num_grid_poses == 144
    assert_close(torch.rad2deg(grid.elevation).unique(), torch.tensor([-30.0, 0.0, 30.0, 60.0]), atol=1e-4, rtol=0)
    init = dataclasses.replace(CONFIG, steps=0)
    cached = fit_pose(maps[0][0], nm, K, image_size=IMAGE_SIZE, config=init)[0]
    rebuilt = fit_pose(maps[0][0], nm, K, image_size=IMAGE_SIZE, config=init, init_grid=InitGrid.build(nm, CONFIG))[0]
    assert torch.equal(cached.R, rebuilt.R)


def test_paper_config_is_nemos():
    paper = FitConfig.paper()
    assert (paper.num_grid_poses, paper.top_k, paper.steps, paper.lr, paper.betas) == (144, 1, 300, 0.05, (0.4, 0.6))
    assert (paper.lr_decay, paper.lr_decay_every, paper.lr_phases) == (0.2, 100, 3)
    assert paper.patience >= paper.lr_decay_every  # no early stopping
    assert paper.polish == 0 and paper.upsample == 1  # NeMo fits at the feature resolution
    assert paper.crop_ensemble == 0  # and once


def test_fit_config_rejects_bad_values():
    with pytest.raises(ValueError, match="top_k: expected >= 0, got .*-1"):
        FitConfig(top_k=-1)
    with pytest.raises(ValueError, match="distance: expected > 0 or None"):
        FitConfig(distance=-1.0)
    with pytest.raises(ValueError, match="polish: expected >= 0, got .*-1"):
        FitConfig(polish=-1)
    with pytest.raises(ValueError, match="upsample: expected >= 1, got 0"):
        FitConfig(upsample=0)
    with pytest.raises(ValueError, match="crop_ensemble: expected >= 0, got .*-2"):
        FitConfig(crop_ensemble=-2)
    for shift in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="crop_shift: expected a distance >= 0"):
            FitConfig(crop_shift=shift)


def test_init_pose_is_a_start_beside_the_grid(model):
    # a one-pose grid far from the truth cannot find it; the true pose given as init can
    nm, mu = model
    pose = POSES[0]
    fmap, R, _ = synthetic_map(nm, mu, pose, seed=7)
    far = dataclasses.replace(CONFIG, num_azimuths=1, num_elevations=1, num_thetas=1, top_k=1,
                              elevation_range_deg=(-30.0, -30.0), theta_range_deg=(0.0, 0.0))
    alone = fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, config=far)[0]
    assert _deg(alone.R, R) > 20.0  # the test means something
    Rt, t = pose_from_params(_params((pose[0] + 8.0, pose[1] - 5.0, *pose[2:])), K)
    helped = fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, config=far, init=(Rt, t))[0]
    assert _deg(helped.R, R) < 3.0 and helped.score > alone.score
    with pytest.raises(ValueError, match="init R"):
        fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, init=(Rt[0], t))
    with pytest.raises(ValueError, match="init: expected a pair"):
        fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, init=Rt)
    with pytest.raises(ValueError, match="in front of the camera"):
        fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, init=(Rt, -t))


def test_top_k_0_refines_only_the_init_pose(model, monkeypatch):
    # no grid search at all: the grid is never built, the one start is the init pose
    import neural_mesh.fitting as fitting

    nm, mu = model
    pose = POSES[0]
    fmap, R, _ = synthetic_map(nm, mu, pose, seed=7)
    Rt, t = pose_from_params(_params((pose[0] + 8.0, pose[1] - 5.0, *pose[2:])), K)
    monkeypatch.setattr(fitting, "init_grid_for", lambda *a: pytest.fail("grid built with top_k=0"))
    only = dataclasses.replace(CONFIG, top_k=0)
    res = fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, config=only, init=(Rt, t))[0]
    assert _deg(Rt, R) > 7.0 and _deg(res.R, R) < 3.0  # refined from 8 deg off to the truth
    # a start far from the truth stays in its own basin: no grid to rescue it
    Rf, tf = pose_from_params(_params((pose[0] + 150.0, *pose[1:])), K)
    lost = fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, config=only, init=(Rf, tf))[0]
    assert _deg(lost.R, R) > 30.0 and lost.score < res.score
    with pytest.raises(ValueError, match="top_k == 0 refines only the init poses"):
        fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, config=only)


def test_polish_restarts_never_raise_the_loss(model):
    nm, mu = model
    fmap, R, _ = synthetic_map(nm, mu, POSES[1], seed=9, noise=0.3)
    short = dataclasses.replace(CONFIG, steps=20, lr_decay_every=5, patience=3)
    plain = fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, config=dataclasses.replace(short, polish=0))[0]
    polished = fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, config=dataclasses.replace(short, polish=2))[0]
    assert len(polished.loss_curve) > len(plain.loss_curve)  # the restarts ran
    assert polished.loss_curve[: len(plain.loss_curve)] == plain.loss_curve
    assert polished.score >= plain.score
    assert 1.0 - polished.score == pytest.approx(min(polished.loss_curve), abs=1e-6)


def test_fit_rejects_bad_inputs(model):
    nm, _ = model
    fmap = torch.nn.functional.normalize(torch.randn(C, *MAP_SIZE), dim=0)
    with pytest.raises(ValueError, match="feature_map: expected 16 channels \\(the model's\\), got 8"):
        fit_pose(fmap[:8], nm, K, image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="K: expected positive focal lengths"):
        fit_pose(fmap, nm, torch.diag(torch.tensor([0.0, 1.0, 1.0])), image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="bbox: expected 2 boxes \\(one per image\\), got 1"):
        fit_pose(torch.stack([fmap, fmap]), nm, K, image_size=IMAGE_SIZE, bbox=[(0, 0, 10, 10)])
    with pytest.raises(ValueError, match=r"bbox\[0\]: expected x1 > x0 and y1 > y0"):
        fit_pose(fmap, nm, K, image_size=IMAGE_SIZE, bbox=(10, 0, 5, 10))
    with pytest.raises(ValueError, match="feature_map: expected finite values"):
        fit_pose(torch.full_like(fmap, float("nan")), nm, K, image_size=IMAGE_SIZE)


def test_rendering_loss_and_params_reject_bad_shapes(model):
    nm, _ = model
    R, t = pose_from_params(_params(POSES[0]), K)
    with pytest.raises(ValueError, match=r"R: expected shape \(B, 3, 3\), got \(3, 3\)"):
        render_features(nm, R[0], t, _feature_K(K), MAP_SIZE)
    with pytest.raises(ValueError, match=r"K: expected shape \(1, 3, 3\), got \(2, 3, 3\)"):
        render_features(nm, R, t, _feature_K(K).expand(2, 3, 3), MAP_SIZE)
    image = torch.zeros(1, C, *MAP_SIZE)
    with pytest.raises(ValueError, match=r"rendered: expected shape \(1, 16, 16, 20\), got \(1, 8, 16, 20\)"):
        nemo_loss(image, image[:, :8], None, torch.zeros(C))
    p = PoseParams(*(torch.zeros(2) for _ in range(6)))
    with pytest.raises(ValueError, match=r"distance: expected shape \(1\), got \(2,\)"):
        pose_from_params(dataclasses.replace(_params(POSES[0]), distance=torch.ones(2)), K)
    with pytest.raises(ValueError, match="distance: expected positive values"):
        pose_from_params(p, K)
