"""Tests for neural_mesh/backbones.py: shapes, unit norm, geometry, init, loading, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neural_mesh.backbones import (
    ARCHS,
    PRESETS,
    BackboneConfig,
    FeatureBackbone,
    build_backbone,
    feature_intrinsics,
    feature_size,
)
from render import intrinsics, project_points
from tests.helpers import assert_close

TINY = dict(width=8, feature_dim=16)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions are fastest on one thread; two threads on two shared, busy cores
    can be 100x slower (threads spin-wait for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_output_shape_and_unit_norm_all_archs(arch):
    net = FeatureBackbone(BackboneConfig(arch=arch, **TINY), seed=0).eval()
    with torch.no_grad():
        feats = net(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
        pooled = net.forward_pooled(torch.rand(2, 3, 32, 32))
    assert feats.shape == (2, 16, 4, 4)
    assert_close(feats.norm(dim=1), torch.ones(2, 4, 4), atol=1e-5, rtol=0)
    assert pooled.shape == (2, net.pooled_dim)
    assert net.pooled_dim == net.config.layer_channels[3]
    assert net.stride == 8 and net.feature_dim == 16


@pytest.mark.parametrize("size", [(36, 52), (1, 1), (9, 17), (64, 8)])
def test_odd_sizes_give_ceil(size):
    net = FeatureBackbone(BackboneConfig(**TINY), seed=0).eval()
    with torch.no_grad():
        feats = net(torch.rand(1, 3, *size))
        c2, c3, c4 = net.forward_trunk(torch.rand(1, 3, *size))
    h, w = size
    assert feats.shape[-2:] == feature_size(size) == (math.ceil(h / 8), math.ceil(w / 8))
    assert c2.shape[-2:] == (math.ceil(h / 8), math.ceil(w / 8))
    assert c3.shape[-2:] == (math.ceil(h / 16), math.ceil(w / 16))
    assert c4.shape[-2:] == (math.ceil(h / 32), math.ceil(w / 32))


def test_float64_forward():
    net = FeatureBackbone(BackboneConfig(**TINY), seed=0).double().eval()
    feats = net(torch.rand(1, 3, 16, 24, dtype=torch.float64))
    assert feats.dtype == torch.float64 and feats.shape == (1, 16, 2, 3)


def test_gradient_flows_to_all_parameters_and_input():
    cfg = BackboneConfig(zero_init_residual=False, **TINY)
    net = FeatureBackbone(cfg, seed=0).train()
    images = torch.rand(2, 3, 32, 40, requires_grad=True)
    feats = net(images)
    (feats * torch.randn_like(feats)).sum().backward()
    assert images.grad is not None and bool(images.grad.abs().sum() > 0)
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert bool(p.grad.abs().sum() > 0), name


def test_channels_last_layout_gives_the_default_layouts_features():
    net = FeatureBackbone(BackboneConfig(**TINY), seed=0).eval()
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 40, 56)
    feats = net(images)
    assert feats.is_contiguous()
    # its weights loaded into a copy whose weights are in the default layout (as a
    # checkpoint saved from another layout would be): the same features
    plain = FeatureBackbone(BackboneConfig(**TINY), seed=1).eval()
    plain.to(memory_format=torch.contiguous_format)
    plain.load_state_dict(net.state_dict())
    assert plain.conv1.weight.is_contiguous()
    assert_close(plain(images), feats, atol=1e-5, rtol=0)


def test_forward_pooled_gradient():
    net = FeatureBackbone(BackboneConfig(**TINY), seed=0).train()
    out = net.forward_pooled(torch.rand(2, 3, 32, 32))
    out.sum().backward()
    assert net.conv1.weight.grad is not None
    assert net.head.proj.weight.grad is None  # the head is not used


def test_determinism_with_seed_and_global_rng_untouched():
    cfg = BackboneConfig(**TINY)
    state = torch.random.get_rng_state()
    a = FeatureBackbone(cfg, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = FeatureBackbone(cfg, seed=3)
    c = FeatureBackbone(cfg, seed=4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    x = torch.rand(1, 3, 24, 24)
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_init_kaiming_bn_and_zero_init_residual():
    net = FeatureBackbone(BackboneConfig(arch="resnet50", width=8), seed=0)
    assert torch.all(net.layer1[0].bn3.weight == 0) and torch.all(net.layer4[2].bn3.weight == 0)
    assert torch.all(net.layer1[0].bn1.weight == 1) and torch.all(net.bn1.bias == 0)
    assert torch.all(net.layer1[0].downsample[1].weight == 1)
    # kaiming normal, fan_out: std = sqrt(2 / (out * k * k))
    w = FeatureBackbone(BackboneConfig(width=64), seed=0).layer3[1].conv1.weight
    assert abs(float(w.detach().std()) - math.sqrt(2 / (256 * 9))) < 0.05 * math.sqrt(2 / (256 * 9))
    plain = FeatureBackbone(BackboneConfig(zero_init_residual=False, **TINY), seed=0)
    assert torch.all(plain.layer2[1].bn2.weight == 1)


def test_parameter_counts_match_torchvision_trunks():
    # torchvision: resnet18 11,689,512 and resnet50 25,557,032 parameters, of which
    # the classifier fc holds 512*1000+1000 and 2048*1000+1000.
    r18 = build_backbone("resnet18")
    r50 = build_backbone("resnet50")
    trunk18 = sum(_count(m) for m in r18.trunk_modules().values())
    trunk50 = sum(_count(m) for m in r50.trunk_modules().values())
    assert trunk18 == 11_689_512 - 513_000 == 11_176_512
    assert trunk50 == 25_557_032 - 2_049_000 == 23_508_032
    # state-dict keys: torchvision's minus fc.weight / fc.bias
    assert sum(len(m.state_dict()) for m in r18.trunk_modules().values()) == 122 - 2
    assert sum(len(m.state_dict()) for m in r50.trunk_modules().values()) == 320 - 2
    keys = set(r50.state_dict())
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer2.0.conv2.weight",
        "layer4.2.bn3.num_batches_tracked",
        "head.fuse16.0.weight",
        "head.fuse8.4.running_mean",
        "head.proj.bias",
    ]:
        assert key in keys, key
    assert r50.layer2[0].conv2.stride == (2, 2)  # v1.5: stride on the 3x3
    assert "layer1.0.downsample.0.weight" not in set(r18.state_dict())


def test_presets():
    assert PRESETS["small"] == BackboneConfig(arch="resnet18", width=32, feature_dim=128)
    assert PRESETS["resnet50"].arch == "resnet50" and PRESETS["resnet50"].width == 64
    net = build_backbone("small", seed=0)
    assert net.config is PRESETS["small"]
    assert build_backbone(BackboneConfig(**TINY)).config.width == 8


def test_config_round_trip_dict():
    cfg = BackboneConfig(arch="resnet34", width=16, feature_dim=32)
    assert BackboneConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown \\['depth'\\]"):
        BackboneConfig.from_dict({"depth": 3})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(arch="resnet101"), "arch: expected one of .*got 'resnet101'"),
        (dict(width=0), "width: expected a positive int, got 0"),
        (dict(width=1), "width: expected at least 2"),
        (dict(width=8.0), "width: expected a positive int, got 8.0"),
        (dict(feature_dim=-1), "feature_dim: expected a positive int, got -1"),
        (dict(in_channels=True), "in_channels: expected a positive int, got True"),
        (dict(zero_init_residual=1), "zero_init_residual: expected a bool"),
        (dict(output_stride=16), r"output_stride: expected one of \(8, 4\), got 16"),
    ],
)
def test_bad_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BackboneConfig(**kwargs)


def test_bad_preset_and_inputs():
    with pytest.raises(ValueError, match="expected one of .*got 'tiny'"):
        build_backbone("tiny")
    with pytest.raises(ValueError, match="expected a preset name or a BackboneConfig"):
        build_backbone(3)
    net = FeatureBackbone(BackboneConfig(**TINY), seed=0)
    with pytest.raises(ValueError, match=r"images: expected shape \(B, 3, H, W\), got \(3, 8, 8\)"):
        net(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"expected shape \(B, 3, H, W\), got \(1, 4, 8, 8\)"):
        net(torch.rand(1, 4, 8, 8))
    with pytest.raises(TypeError, match="float32 or float64, got torch.uint8"):
        net(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_other_in_channels():
    net = FeatureBackbone(BackboneConfig(in_channels=1, **TINY), seed=0).eval()
    assert net(torch.rand(1, 1, 16, 16)).shape == (1, 16, 2, 2)


def test_load_trunk_state_dict_by_torchvision_names():
    cfg = BackboneConfig(**TINY)
    src, dst = FeatureBackbone(cfg, seed=0), FeatureBackbone(cfg, seed=1)
    head_before = {k: v.clone() for k, v in dst.head.state_dict().items()}
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 64), torch.zeros(1000)  # ignored
    dst.load_trunk_state_dict(sd)
    for k, v in src.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(dst.state_dict()[k], v), k
    for k, v in dst.head.state_dict().items():
        assert torch.equal(v, head_before[k]), k
    missing = {k: v for k, v in sd.items() if k != "layer3.1.conv2.weight"}
    with pytest.raises(ValueError, match=r"missing keys \['layer3.1.conv2.weight'\]"):
        dst.load_trunk_state_dict(missing)
    bad = dict(sd, **{"conv1.weight": torch.zeros(8, 3, 3, 3)})
    msg = r"conv1.weight: expected shape \(8, 3, 7, 7\), got \(8, 3, 3, 3\)"
    with pytest.raises(ValueError, match=msg):
        dst.load_trunk_state_dict(bad)


# ---- geometry ---------------------------------------------------------------------------


def _sampling_network(arch: str, output_stride: int = 8) -> FeatureBackbone:
    """Every conv a centre tap averaging its input channels; BN the identity; no biases.

    The network then only samples, max-pools and interpolates the input, so its response to
    a blob symmetric about a point is symmetric about the cell whose centre is that point.
    """
    config = BackboneConfig(arch=arch, width=4, feature_dim=4, output_stride=output_stride)
    net = FeatureBackbone(config, seed=0).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                kh, kw = m.kernel_size
                m.weight[:, :, kh // 2, kw // 2] = 1.0 / m.in_channels
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # weight 1, bias 0, running mean 0, var 1
    return net


def _blob_image(net: FeatureBackbone, size: int, u0: float, v0: float) -> torch.Tensor:
    """An image whose normalised value is a Gaussian blob at (u0, v0), 0 (mean colour) elsewhere."""
    coords = torch.arange(size, dtype=torch.float64)
    blob = torch.exp(-((coords[None, :] - u0) ** 2 + (coords[:, None] - v0) ** 2) / (2 * 4.0**2))
    return net.mean.double() + net.std.double() * blob[None, None]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_cell_centres_at_8j_plus_3p5(arch):
    # 104 = 8 * 13: strides 8/16/32 have 13, 7, 4 cells, so the decoder only interpolates
    # (no border clamping). Cell 4 is centred at pixel 35.5, as are layer3's cell 2 and
    # layer4's cell 1, so the pipeline is symmetric about a blob placed there; the image
    # centre (51.5) is elsewhere, so a misplaced upsampling would show.
    net = _sampling_network(arch).double().requires_grad_(False)
    out = net.head(*net.forward_trunk(_blob_image(net, 104, 35.5, 35.5)))[0, 0]
    assert out.shape == (13, 13)
    assert divmod(int(out.argmax()), 13) == (4, 4)
    window = out[1:8, 1:8]  # centred on cell (4, 4)
    tol = 1e-10 * float(out.max())
    assert_close(window, window.flip(0).flip(1), atol=tol, rtol=0)  # point symmetry
    assert_close(window, window.T, atol=tol, rtol=0)
    assert float(out[4, 3]) > 1e-3 * float(out[4, 4])
    # negative control: half a pixel off, the response is no longer symmetric
    shifted = net.head(*net.forward_trunk(_blob_image(net, 104, 36.0, 35.5)))[0, 0]
    assert float((shifted[4, 5] - shifted[4, 3]).abs()) > 1e-5 * float(shifted[4, 4])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_stride4_cell_centres_at_4j_plus_1p5(arch):
    # forward() shifts the image 2 pixels right/down, so a 102-pixel image becomes the
    # 104-pixel one above, and pixel 33.5 becomes 35.5: a cell centre at every stride (4, 8,
    # 16, 32). Stride-4 cell 8 is centred there: 4 * 8 + 1.5 = 33.5.
    net = _sampling_network(arch, output_stride=4).double().requires_grad_(False)
    assert net.stride == 4
    image = _blob_image(net, 102, 33.5, 33.5)
    out = net._dense(image)[0, 0]
    assert out.shape == (26, 26) == feature_size((102, 102), 4)
    assert divmod(int(out.argmax()), 26) == (8, 8)
    window = out[2:15, 2:15]  # centred on cell (8, 8)
    tol = 1e-10 * float(out.max())
    assert_close(window, window.flip(0).flip(1), atol=tol, rtol=0)
    assert_close(window, window.T, atol=tol, rtol=0)
    assert float(out[8, 7]) > 1e-3 * float(out[8, 8])
    # negative control: a blob at 4 * 8 + 3.5 (the unshifted network's centre) is not symmetric
    shifted = net._dense(_blob_image(net, 102, 35.5, 33.5))[0, 0]
    assert float((shifted[8, 9] - shifted[8, 7]).abs()) > 1e-5 * float(shifted[8, 8])


@pytest.mark.parametrize("size", [(36, 52), (1, 1), (9, 17)])
def test_stride4_shapes_unit_norm_and_gradients(size):
    net = FeatureBackbone(BackboneConfig(**TINY, output_stride=4), seed=0)
    assert net.config.decoder_channels == (16, 8, 8) and net.stride == 4
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(2), requires_grad=True)
    feats = net(image)
    assert feats.shape == (2, 16, *feature_size(size, 4))
    assert_close(feats.norm(dim=1), torch.ones_like(feats[:, 0]), atol=1e-5, rtol=0)
    feats.sum().backward()
    assert net.head.fuse4[0].weight.grad.abs().sum() > 0 and image.grad.abs().sum() > 0


def test_feature_intrinsics_maps_points_into_their_cells():
    gen = torch.Generator().manual_seed(0)
    H, W = 96, 128
    K = intrinsics(110.0, 95.0, 61.3, 47.9, skew=0.7)
    pts = torch.rand(1, 500, 3, generator=gen) * torch.tensor([2.0, 1.6, 1.0])
    pts = pts - torch.tensor([1.0, 0.8, -2.0])  # x, y in [-1, 1] x [-0.8, 0.8], z in [2, 3]
    uv, _ = project_points(pts, K)
    uv_f, _ = project_points(pts, feature_intrinsics(K))
    u, v = uv[0].unbind(-1)
    inside = (u > -0.5) & (u < W - 0.5) & (v > -0.5) & (v < H - 0.5)
    assert int(inside.sum()) > 100
    pixel = uv[0, inside].round().long()  # (u, v) of the pixel holding each point
    cell = uv_f[0, inside].round().long()  # (j, i) of the feature cell
    assert torch.equal(cell, torch.div(pixel, 8, rounding_mode="floor"))
    assert_close(uv_f, (uv - 3.5) / 8, atol=1e-5, rtol=1e-5)


def test_feature_intrinsics_batch_stride_and_errors():
    K = torch.stack([intrinsics(100.0, 100.0, 31.5, 31.5)] * 2).double()
    Kf = feature_intrinsics(K, stride=4)
    assert Kf.shape == (2, 3, 3) and Kf.dtype == torch.float64
    assert_close(Kf[0], [[25.0, 0.0, 7.5], [0.0, 25.0, 7.5], [0.0, 0.0, 1.0]])
    assert_close(feature_intrinsics(K[0], stride=1), K[0])
    with pytest.raises(ValueError, match=r"K: expected shape \(..., 3, 3\), got \(3, 4\)"):
        feature_intrinsics(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="stride: expected a positive int, got 0"):
        feature_intrinsics(K, stride=0)
    with pytest.raises(ValueError, match="image_size"):
        feature_size((0, 8))
