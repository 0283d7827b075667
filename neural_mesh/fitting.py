"""NeMo render-and-compare pose fitting: render a neural mesh's features at a pose, score
them against an image's feature map with NeMo's clutter-aware loss, find the pose by a grid
search followed by Adam.

Conventions (camera, pixels, angles) are those of ``docs/conventions.md``. Feature maps
are ``(B, C, h, w)`` unit vectors along ``C`` with stride ``s`` (8 for NeMo's backbone):
feature cell ``(i, j)`` has its centre at input pixel ``(u, v) = (s j + (s - 1) / 2,
s i + (s - 1) / 2)``, so full-image intrinsics ``K`` become feature-map intrinsics
``K_feat = [[1/s, 0, -(s-1)/(2s)], [0, 1/s, -(s-1)/(2s)], [0, 0, 1]] @ K``.
:func:`fit_pose` first upsamples the map bilinearly (:attr:`FitConfig.upsample`, x2 by
default; :func:`upsample_features` keeps this convention at stride ``s / 2``), so the
mesh is rendered and compared on a grid twice as fine as the backbone's cells.

**Rendering** (:func:`render_features`): the vertex features are rasterized at feature-map
resolution (one face per pixel, no blur) and interpolated with perspective-correct
barycentrics, then **renormalised to unit length** on object pixels (NeMo's public code
leaves interpolated features unnormalised; renormalising makes the object score a cosine
similarity, as for the image features, and does not change which pose scores best on
features that vary smoothly). Background renders 0.

**Loss** (:func:`nemo_loss`). Per pixel ``p`` of the map: the object score ``o_p =
<rendered_p, image_p>`` where the object is rendered, and a clutter score ``c_p``: the
best match over the clutter bank, ``max_m <image_p, clutter_m>`` (default,
``FitConfig.clutter_score="max"``), or ``<image_p, m>`` with ``m`` the bank's normalised
mean (NeMo's inference code, ``"mean"``). Random backgrounds are too varied for one
mean vector: with the mean, background cells often look more like some vertex than
like "clutter", so rendering the object too large (over background) pays, and fitted
distances came out about 1.5x too short on our renders.

NeMo's loss (``FitConfig.loss="nemo"``, METHODS.md, NeMo's ``loss_fun``) is ``1 -
(mean_p max(o_p, c_p) - mean_p c_p)`` (``o_p = 0`` off the object), i.e. ``1 - mean_p
relu(o_p - c_p)`` up to background terms: an object pixel helps when the rendered feature
explains it better than clutter does, and one that clutter explains better (an
occluder) costs nothing, which is NeMo's robustness to occlusion. It also means that
drawing the object over background never costs anything, so nothing stops the object
from growing, and with a max clutter score (which is close to ``o_p`` on object pixels
too) the loss is nearly flat: on held-out renders of a CPU-trained chair model the object
explained under 1% of the map beyond clutter, and fitted poses were often better by the
loss than the true one.

The default loss (``"mixture"``) keeps NeMo's reading of a masked pixel as the object's
or an occluder's, with probabilities: with ``q = FitConfig.occlusion_prior`` and ``T =
FitConfig.temperature``, ``loss = 1 - (1 / hw) sum_{p in mask} T log((1 - q)
exp((o_p - c_p) / T) + q)``. A pixel the object explains gains about ``o_p - c_p`` (less
``T log(1 / (1 - q))``); one it does not costs at most ``T log(1 / q)``: a bounded price,
so an occluded part is tolerated but a silhouette over background is not free. On the
40 held-out L0 renders of ``benchmarks/bench_pose.py`` (default chair build), Acc@pi/6
is 37.5% with NeMo's loss and 72.5% with the mixture (median error 43.6 -> 10.0 deg;
``--loss nemo`` vs the default).

**Pose parameters** (:class:`PoseParams`): azimuth, elevation, theta (radians), distance,
and the image position ``(u0, v0)`` (full-image pixels) of the object-frame origin.
``R = angles_to_pose(azimuth, elevation, theta)`` as if the object were centred, and
``t = distance * K^-1 (u0, v0, 1)``, so ``t_z = distance`` and the origin projects to
``(u0, v0)``. This is NeMo's simplification: the angles describe the object's rotation in
the camera frame; for an off-centre object the camera does not look at it, so the angles
differ from the viewpoint of the ray to the object by the angle between that ray and the
optical axis (a few degrees). ``(R, t)`` is an exact 6-DoF pose either way, and rotation
errors compare ``R``.

**Fitting** (:func:`fit_pose`):

1. Locate: the object's centre and size in the image, from ``bbox`` when given; otherwise
   (``FitConfig.locate``) from the feature map: the cells whose margin ``max_v <cell,
   vertex feature v> - c_p`` is positive and above Otsu's threshold form a blob (centroid
   and area). This is a heuristic for maps without a box; if no cell qualifies, the
   principal point and a size of half the shorter image side are assumed.
2. Grid search (:class:`InitGrid`): ``12 x 4 x 3`` poses (NeMo: azimuths over 360 deg,
   elevations -30..60 deg, in-plane -30..30 deg) are rasterized once per model in a
   canonical frame, so one grid serves every image size and ``K`` (cached per model by
   :func:`init_grid_for`). For each image every template is placed by a weak-perspective
   warp: scaled so that its silhouette matches the box (area, or bbox size) and moved so
   that its centroid (bbox centre) lies on the box's; the image is sampled bilinearly at
   the template's pixels and the NeMo loss is evaluated, without gradients. The
   placement of the ``placement_search`` best templates is then refined by a small local
   search (shifts and scales), and the ``top_k`` best start the refinement. This warp is
   where the "as if centred" approximation enters; the refinement renders exactly.
3. Refinement: Adam (NeMo: lr 0.05, betas (0.4, 0.6), lr x0.2 every 100 of 300 steps) on
   ``(azimuth, elevation, theta, log distance, u0, v0)``, with per-group learning rates;
   all images x candidates are rendered in one rasterize call per step. A candidate's
   learning rate also drops early on a plateau (``patience`` steps without improving by
   ``tol``), and it stops after its last rate, so easy candidates stop early and stopped
   candidates are no longer rendered. The best candidate per image (the lowest loss seen
   along its path) is returned. The per-step loss uses a fast path equal to
   ``nemo_loss(image, *render_features(...))``: the similarity of every image cell to
   every vertex feature, and the vertex features' Gram matrix per face, are computed once,
   so a step costs one rasterization and a few gathers whatever ``C``.
4. Polish (``FitConfig.polish``, off by default): Adam restarts with fresh learning rates
   at each image's best pose, kept only where it lowers the loss (the plateau-driven
   decay can stop short of the minimum). On the 40 held-out L0 renders of
   ``benchmarks/bench_pose.py`` (``--polish 1`` vs ``--polish 0``) one restart took a
   stride-4 chair model's median rotation error from 11.8 to 9.0 deg, and the default
   stride-8 build's from 10.0 to 10.4 (Acc@pi/6 72.5% to 75%), for ~1.5x the time of a
   single-image fit.

An optional ``init`` pose per image (a previous video frame, a first fit at another crop)
is refined beside the grid's ``top_k`` starts; with ``top_k=0`` it is the only start and
the grid is skipped (tracking from a previous frame, or refining a known pose to see
where the features' own minimum lies).

Candidates never interact, so a batch gives the same results as its images one by one.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from render import angles_to_pose, interpolate, pose_to_angles, rasterize
from render.checks import (
    check_finite,
    check_floating,
    check_image_size,
    check_intrinsics,
    check_shape,
)

from .backbones import feature_intrinsics
from .neural_mesh import NeuralMesh

__all__ = [
    "render_features",
    "mean_clutter_feature",
    "nemo_loss",
    "object_margins",
    "upsample_features",
    "LOSSES",
    "PoseParams",
    "pose_from_params",
    "params_from_pose",
    "FitConfig",
    "PoseResult",
    "DOUBTFUL_SCORE",
    "pose_results",
    "InitGrid",
    "init_grid_for",
    "fit_pose",
]


# ----------------------------------------------------------------------------- helpers


def _ray(K: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``K^-1 (u, v, 1)`` for ``K (3, 3)`` or ``(N, 3, 3)`` and ``u, v (N,)`` -> ``(N, 3)``."""
    fx, s, cx = K[..., 0, 0], K[..., 0, 1], K[..., 0, 2]
    fy, cy = K[..., 1, 1], K[..., 1, 2]
    y = (v - cy) / fy
    x = (u - cx - s * y) / fx
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def _culls(nmesh: NeuralMesh, cull_backfaces: bool) -> bool:
    """Whether to skip back faces: asked for, and safe because the surface is closed and
    wound outward (:attr:`NeuralMesh.closed_outward`), so culling changes nothing a z-buffer
    shows. Other surfaces (open, or wound either way, as many CAD models are, and most
    remeshes of thin parts) are drawn two-sided: culling would cut holes in them."""
    return bool(cull_backfaces) and nmesh.closed_outward


def mean_clutter_feature(clutter: torch.Tensor) -> torch.Tensor:
    """NeMo's clutter model at inference: the L2-normalised mean of the bank.

    Args:
        clutter: ``(M, C)`` clutter features.

    Returns:
        ``(C,)`` unit vector.

    >>> mean_clutter_feature(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist()
    [0.7071067690849304, 0.7071067690849304]
    """
    check_shape("clutter", clutter, ["M", "C"])
    return F.normalize(clutter.mean(0), dim=0)


# ---------------------------------------------------------------------------- rendering


def render_features(
    nmesh: NeuralMesh,
    R: torch.Tensor,
    t: torch.Tensor,
    K_feat: torch.Tensor,
    size: Sequence[int],
    cull_backfaces: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render the neural mesh's vertex features at poses ``(R, t)``.

    Args:
        nmesh: the model (its tensors are used on ``R``'s device).
        R: ``(B, 3, 3)`` object-to-camera rotations; t: ``(B, 3)`` (``X_cam = R X + t``).
        K_feat: ``(3, 3)`` or ``(B, 3, 3)`` intrinsics **of the feature map** (pixels of
            the map; see the module docstring for the stride mapping).
        size: ``(h, w)`` of the feature map.
        cull_backfaces: skip faces turned away from the camera where that changes
            nothing but speed: when the surface is closed and wound outward
            (:func:`render.is_closed_outward`); other surfaces are drawn two-sided.

    Returns:
        ``feat (B, C, h, w)``: interpolated vertex features renormalised to unit length on
        the object, 0 on background; ``mask (B, h, w)`` bool, True on the object.
        Differentiable w.r.t. ``R``, ``t`` (through the barycentrics) and the features.
    """
    b = check_shape("R", R, ["B", 3, 3])["B"]
    check_shape("t", t, [b, 3])
    check_intrinsics(K_feat, b, R)
    h, w = check_image_size(size)
    verts = nmesh.verts.to(R.device, R.dtype)
    faces = nmesh.faces.to(R.device)
    feats = nmesh.features.to(R.device, R.dtype)
    verts_cam = verts @ R.transpose(1, 2) + t[:, None, :]
    frags = rasterize(verts_cam, faces, K_feat.to(R.dtype), (h, w), cull_backfaces=_culls(nmesh, cull_backfaces))
    out = interpolate(frags, faces, feats[None])  # (B, h, w, C), 0 on background
    mask = frags.mask
    norm = out.norm(dim=-1, keepdim=True)
    out = torch.where(mask[..., None], out / norm.clamp_min(1e-12), out)
    return out.permute(0, 3, 1, 2), mask


def nemo_loss(
    image_feat: torch.Tensor,
    rendered: torch.Tensor,
    mask: torch.Tensor | None,
    clutter_feat: torch.Tensor,
    *,
    kind: str = "nemo",
    temperature: float = 0.15,
    occlusion_prior: float = 0.9
) -> torch.Tensor:
    """The render-and-compare loss per image (see the module docstring).

    ``kind="nemo"`` (NeMo's): ``loss = 1 - (mean_p max(o_p, c_p) - mean_p c_p)`` over all
    ``h * w`` pixels, with ``o_p = <rendered_p, image_p>`` on ``mask`` (0 elsewhere) and
    ``c_p = <image_p, clutter_feat>``. Lower is better; ``1 - loss`` is the fraction of
    the map's similarity explained by the object beyond the clutter model.

    ``kind="mixture"`` (the fitting default, :attr:`FitConfig.loss`): ``loss = 1 - (1 /
    hw) sum_{p in mask} T log((1 - q) exp((o_p - c_p) / T) + q)`` with ``T =
    temperature`` and ``q = occlusion_prior``: a masked pixel is the object's with
    probability ``1 - q`` and clutter (an occluder) with probability ``q``, so a pixel the
    object explains gains about ``o_p - c_p`` and one it does not costs at most
    ``T log(1 / q)``.

    Args:
        image_feat: ``(B, C, h, w)`` image features (unit vectors).
        rendered: ``(B, C, h, w)`` rendered features (:func:`render_features`).
        mask: ``(B, h, w)`` bool object mask, or None to use ``rendered`` as is (it is 0
            on background).
        clutter_feat: ``(C,)`` clutter feature (:func:`mean_clutter_feature`), or an
            ``(M, C)`` bank, whose best match per pixel is the clutter score.

    Returns:
        ``(B,)`` losses, differentiable w.r.t. ``rendered`` and ``image_feat``.
    """
    dims = check_shape("image_feat", image_feat, ["B", "C", "h", "w"])
    check_shape("rendered", rendered, [dims["B"], dims["C"], dims["h"], dims["w"]])
    if clutter_feat.dim() == 2:
        check_shape("clutter_feat", clutter_feat, ["M", dims["C"]])
    else:
        check_shape("clutter_feat", clutter_feat, [dims["C"]])
    _check_loss(kind, temperature, occlusion_prior)
    obj = (rendered * image_feat).sum(1)
    if mask is not None:
        check_shape("mask", mask, [dims["B"], dims["h"], dims["w"]])
        obj = torch.where(mask, obj, torch.zeros_like(obj))
    else:
        mask = rendered.abs().sum(1) > 0
    clu = _clutter_scores(image_feat, clutter_feat)
    if kind == "nemo":
        return 1.0 - (torch.maximum(obj, clu).mean(dim=(1, 2)) - clu.mean(dim=(1, 2)))
    gain = _mixture_gain(obj - clu, temperature, occlusion_prior)
    return 1.0 - torch.where(mask, gain, torch.zeros_like(gain)).mean(dim=(1, 2))


def _clutter_scores(image_feat: torch.Tensor, clutter_feat: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)`` clutter score per pixel: the best match over an ``(M, C)`` bank, or
    the similarity to one ``(C,)`` feature."""
    if clutter_feat.dim() == 2:
        return torch.einsum("bchw,mc->bhwm", image_feat, clutter_feat.to(image_feat.dtype)).amax(-1)
    return torch.einsum("bchw,c->bhw", image_feat, clutter_feat.to(image_feat.dtype))


def upsample_features(feature_map: torch.Tensor, factor: int) -> torch.Tensor:
    """A stride-``s`` feature map as a stride-``s / factor`` one: bilinear, renormalised.

    Cell ``k`` of a stride-``s`` map is centred at pixel ``s k + (s - 1) / 2`` (the
    library's convention, :mod:`neural_mesh.backbones`). Bilinear interpolation with
    ``align_corners=False`` puts output cell ``m`` at input position ``(m + 0.5) / factor
    - 0.5``, i.e. at pixel ``s' m + (s' - 1) / 2`` with ``s' = s / factor``: the same
    convention at the finer stride, so :func:`fit_pose` takes the result with ``stride=s'``.
    Border cells are clamped. Rows are L2-normalised again (interpolated unit vectors are
    shorter than 1).

    Args:
        feature_map: ``(B, C, h, w)`` unit features.
        factor: integer upsampling factor (``1`` returns the map unchanged).

    Returns:
        ``(B, C, factor h, factor w)`` unit features.

    >>> fm = torch.nn.functional.normalize(torch.randn(1, 4, 3, 5), dim=1)
    >>> tuple(upsample_features(fm, 2).shape)
    (1, 4, 6, 10)
    """
    check_shape("feature_map", feature_map, ["B", "C", "h", "w"])
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor: expected an integer >= 1, got {factor!r}")
    if factor == 1:
        return feature_map
    up = F.interpolate(feature_map, scale_factor=factor, mode="bilinear", align_corners=False)
    return F.normalize(up, dim=1)


@torch.no_grad()
def object_margins(
    feature_map: torch.Tensor,
    nmesh: NeuralMesh,
    R: torch.Tensor,
    t: torch.Tensor,
    K_feat: torch.Tensor,
    clutter_score: str = "max",
    cull_backfaces: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How well the features explain the object beyond clutter at a known pose.

    Over the pixels where the object renders at ``(R, t)``, the margin ``o_p - c_p`` of
    the loss (module docstring): the rendered feature's similarity to the image feature
    minus the clutter score. A diagnostic of a trained model on images with ground truth:
    the fitting's evidence for the true pose. On the 40 held-out unoccluded renders of
    the bundled chair (``benchmarks/bench_pose.py --model DIR --no-regression``, L0), the
    1,000-step build (the former default) has a mean of -0.025 (47% of the object's
    pixels explained better by the object than by clutter) and a 12,000-step build with
    occluders +0.039 (65%). Occluded pixels count against it, so it falls with the
    occlusion level.

    Args:
        feature_map: ``(B, C, h, w)`` image features (unit vectors).
        nmesh: the model; R: ``(B, 3, 3)``; t: ``(B, 3)``; K_feat: ``(3, 3)`` or
            ``(B, 3, 3)`` feature-map intrinsics (:func:`render_features`).
        clutter_score: ``"max"`` or ``"mean"``, as :attr:`FitConfig.clutter_score`.
        cull_backfaces: as :func:`render_features`.

    Returns:
        ``(mean (B,), positive (B,))``: the mean margin over the object's pixels and the
        fraction of them with a positive margin (NaN where the object covers no pixel).
    """
    check_shape("feature_map", feature_map, ["B", "C", "h", "w"])
    _check_clutter_score(clutter_score)
    rendered, mask = render_features(nmesh, R.to(feature_map), t.to(feature_map), K_feat.to(feature_map),
                                     feature_map.shape[-2:], cull_backfaces=cull_backfaces)
    clutter = nmesh.clutter.to(feature_map)
    margin = (rendered * feature_map).sum(1) - _clutter_scores(
        feature_map, clutter if clutter_score == "max" else mean_clutter_feature(clutter))
    count = mask.sum(dim=(1, 2)).to(feature_map.dtype)
    mean = torch.where(mask, margin, torch.zeros_like(margin)).sum(dim=(1, 2)) / count
    positive = (mask & (margin > 0)).sum(dim=(1, 2)).to(feature_map.dtype) / count
    return mean, positive


LOSSES = ("mixture", "nemo")


def _check_clutter_score(clutter_score: str) -> None:
    if clutter_score not in ("max", "mean"):
        raise ValueError(f"clutter_score: expected 'max' or 'mean', got {clutter_score!r}")


def _check_loss(kind: str, temperature: float, occlusion_prior: float) -> None:
    if kind not in LOSSES:
        raise ValueError(f"loss: expected one of {list(LOSSES)}, got {kind!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    if not (isinstance(occlusion_prior, (int, float)) and 0.0 < occlusion_prior < 1.0):
        raise ValueError(f"occlusion_prior: expected a number in (0, 1), got {occlusion_prior!r}")


def _mixture_gain(margin: torch.Tensor, temperature: float, occlusion_prior: float) -> torch.Tensor:
    """``T log((1 - q) exp(margin / T) + q)``, computed stably."""
    q = float(occlusion_prior)
    return temperature * torch.logaddexp(margin / temperature + math.log1p(-q), torch.full_like(margin, math.log(q)))


# ---------------------------------------------------------------------- pose parameters


@dataclass(frozen=True)
class PoseParams:
    """NeMo's pose parameters, each a ``(N,)`` tensor (see the module docstring).

    Attributes:
        azimuth, elevation, theta: radians (``docs/conventions.md``).
        distance: depth ``t_z`` of the object-frame origin (object units, > 0).
        u0, v0: full-image pixel where the origin projects.
    """

    azimuth: torch.Tensor
    elevation: torch.Tensor
    theta: torch.Tensor
    distance: torch.Tensor
    u0: torch.Tensor
    v0: torch.Tensor


def pose_from_params(params: PoseParams, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, t)`` of :class:`PoseParams`: ``R`` from the angles, ``t = d K^-1 (u0, v0, 1)``.

    Args:
        params: ``(N,)`` tensors.
        K: ``(3, 3)`` or ``(N, 3, 3)`` full-image intrinsics.

    Returns:
        ``R (N, 3, 3)``, ``t (N, 3)``; differentiable.

    >>> K = torch.tensor([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]])
    >>> p = PoseParams(*(torch.tensor([v]) for v in (0.0, 0.0, 0.0, 5.0, 70.0, 40.0)))
    >>> R, t = pose_from_params(p, K)
    >>> t.tolist()
    [[1.0, 0.0, 5.0]]
    """
    a, e, th = params.azimuth, params.elevation, params.theta
    d, u0, v0 = params.distance, params.u0, params.v0
    n = check_shape("azimuth", a, ["N"])["N"]
    for name, x in (("elevation", e), ("theta", th), ("distance", d), ("u0", u0), ("v0", v0)):
        check_shape(name, x, [n])
    check_intrinsics(K, n, d)
    if bool((d <= 0).any()):
        raise ValueError(f"distance: expected positive values, got min {float(d.min()):.4g}")
    R, _ = angles_to_pose(a, e, th, torch.ones_like(d))
    t = d[:, None] * _ray(K.to(d.dtype), u0, v0)
    return R, t


def params_from_pose(R: torch.Tensor, t: torch.Tensor, K: torch.Tensor) -> PoseParams:
    """Inverse of :func:`pose_from_params`.

    Args:
        R: ``(N, 3, 3)`` rotations; t: ``(N, 3)`` with ``t_z > 0``.
        K: ``(3, 3)`` or ``(N, 3, 3)`` full-image intrinsics.

    Returns:
        :class:`PoseParams` with azimuth and theta in ``(-pi, pi]``.
    """
    n = check_shape("R", R, ["N", 3, 3])["N"]
    check_shape("t", t, [n, 3])
    check_intrinsics(K, n, t)
    if bool((t[:, 2] <= 0).any()):
        raise ValueError("t: expected the object in front of the camera (t_z > 0)")
    unit_z = torch.zeros_like(t)
    unit_z[:, 2] = 1.0
    a, e, th, _ = pose_to_angles(R, unit_z)
    d = t[:, 2]
    Kb = K.to(t.dtype).expand(n, 3, 3)
    uv = (Kb @ (t / d[:, None])[..., None])[..., 0]
    return PoseParams(a, e, th, d, uv[:, 0], uv[:, 1])


# ------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_pose`. Defaults are for CPU speed; :meth:`paper` is NeMo's.

    Attributes:
        num_azimuths: grid azimuths, evenly over 360 deg starting at 0.
        elevation_range_deg, num_elevations: grid elevations, evenly over the range.
        theta_range_deg, num_thetas: grid in-plane rotations, evenly over the range.
        grid_resolution: side (cells) of the canonical frame the grid is rendered in.
        placement_search: how many of the best grid poses get a local search of their
            placement (centre shifts of about 12% of the object's size, sizes x1.15^{-1,0,1},
            two rounds, the second at half the step); 0 disables it.
        top_k: grid poses refined per image (NeMo: 1); 0 skips the grid search and
            refines only the ``init`` poses given to :func:`fit_pose` (which are then
            required).
        steps: maximum Adam steps (NeMo: 300).
        lr: Adam learning rate of the angles (radians).
        lr_log_distance: learning rate of ``log(distance)``.
        lr_center: learning rate of ``(u0, v0)`` in feature cells.
        betas: Adam's betas (NeMo: (0.4, 0.6)).
        lr_decay, lr_decay_every, lr_phases: a candidate's learning rates are multiplied
            by ``lr_decay`` after ``lr_decay_every`` steps at one rate, or earlier on a
            plateau (below); it stops after ``lr_phases`` rates (NeMo: x0.2 every 100
            steps, 3 rates).
        tol, patience: a plateau is ``patience`` steps without the candidate's best loss
            dropping by more than ``tol`` (``patience >= lr_decay_every`` disables this).
        polish: after the refinement, restart Adam (fresh rates and moments) this many
            times at each image's best pose, keeping a restart only if it lowers the
            loss (module docstring; NeMo: 0).
        cull_backfaces: skip back faces when rendering, where the neural mesh is closed
            and wound outward (:func:`render.is_closed_outward`: there it only saves
            time); other surfaces are always drawn two-sided.
        locate: without a bbox, locate the object from the feature map (else: principal
            point and half the shorter image side).
        distance: fixed initial distance for every grid pose (NeMo), or None to match
            each template's size to the located box.
        clutter_score: ``"max"`` (best match over the clutter bank) or ``"mean"`` (NeMo:
            the normalised mean of the bank); see the module docstring.
        loss: ``"mixture"`` (default) or ``"nemo"`` (:func:`nemo_loss`).
        temperature, occlusion_prior: ``T`` and ``q`` of the ``"mixture"`` loss.
        upsample: fit on the feature map upsampled this many times
            (:func:`upsample_features`; it must divide :func:`fit_pose`'s ``stride``), so
            the mesh is rendered and compared on a finer grid than the backbone's cells.
            Grid search, placement and ``lr_center`` then work in the finer cells. 2 took
            the bundled chair's median L0 error from 4.5 to 3.8 deg for about 1.5 times
            the batched fitting time (``docs/pose_results.md``, "Fitting on an upsampled
            feature map") and 4 did no better, so 2 is the default; 1 fits the map as it
            is (NeMo). The
            interpolation assumes features that vary smoothly between cells, as a
            backbone's do; on maps with hard one-cell edges (features rendered at the map's
            resolution, as in the tests) it blurs them and can bias the fit: use 1 there.
        crop_ensemble, crop_shift: used by :meth:`neural_mesh.model.PoseModel.fit` only
            (it crops photos; :func:`fit_pose` on a given feature map ignores them). After
            the fit, the pose is refined again from itself on ``crop_ensemble`` crops
            whose centres are moved by ``crop_shift`` input pixels in evenly spaced
            directions (the first at 45 deg: 4 gives the four diagonals), and the mean of
            those refinements is returned (:func:`render.mean_rotation`, mean ``t``). A
            backbone's features change with where the crop puts the object, so the
            refinements' small errors are partly independent and their mean lies nearer
            the truth (``docs/pose_results.md``, "Averaging over shifted crops": the
            heavy rooms build's median L0 error on the ray caster's images from 5.3 to
            4.9 deg, for about 1.3 times the batched fitting time). The default shift, 4,
            is half a cell of the stride-8 backbones. 0 (or ``steps=0``) returns the fit
            as it is.
    """

    num_azimuths: int = 12
    elevation_range_deg: tuple[float, float] = (-30.0, 60.0)
    num_elevations: int = 4
    theta_range_deg: tuple[float, float] = (-30.0, 30.0)
    num_thetas: int = 3
    grid_resolution: int = 32
    placement_search: int = 16
    top_k: int = 3
    steps: int = 120
    lr: float = 0.05
    lr_log_distance: float = 0.05
    lr_center: float = 0.5
    betas: tuple[float, float] = (0.4, 0.6)
    lr_decay: float = 0.2
    lr_decay_every: int = 40
    lr_phases: int = 3
    tol: float = 1e-4
    patience: int = 15
    polish: int = 0
    cull_backfaces: bool = True
    locate: bool = True
    distance: float | None = None
    clutter_score: str = "max"
    loss: str = "mixture"
    temperature: float = 0.15
    occlusion_prior: float = 0.9
    upsample: int = 2
    crop_ensemble: int = 4
    crop_shift: float = 4.0

    def __post_init__(self) -> None:
        for name in (
            "num_azimuths", "num_elevations", "num_thetas", "lr_decay_every", "lr_phases", "patience", "upsample"
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("top_k", "steps", "placement_search", "polish", "crop_ensemble"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.crop_shift) and self.crop_shift >= 0):
            raise ValueError(f"crop_shift: expected a distance >= 0 in input pixels, got {self.crop_shift}")
        if self.grid_resolution < 8:
            raise ValueError(f"grid_resolution: expected >= 8, got {self.grid_resolution}")
        _check_clutter_score(self.clutter_score)
        if self.distance is not None and not self.distance > 0:
            raise ValueError(f"distance: expected > 0 or None, got {self.distance}")
        _check_loss(self.loss, self.temperature, self.occlusion_prior)

    @property
    def loss_options(self) -> dict:
        """The keyword arguments of :func:`nemo_loss` for this config's loss."""
        return {"kind": self.loss, "temperature": self.temperature, "occlusion_prior": self.occlusion_prior}

    @classmethod
    def paper(cls) -> FitConfig:
        """NeMo's published inference settings: 144 grid poses, the best one refined for
        300 steps with lr x0.2 every 100, no early stopping.

        What still differs from NeMo's code: the parameters (angles, log distance and
        image centre here; the camera position and theta there), renormalised rendered
        features, and the placement of the grid templates (NeMo's crops are centred at a
        fixed distance; set ``distance`` and ``locate=False`` for that)."""
        return cls(top_k=1, steps=300, lr_decay_every=100, lr_phases=3, patience=300, tol=0.0, polish=0,
                   clutter_score="mean", loss="nemo", upsample=1, crop_ensemble=0)

    @property
    def num_grid_poses(self) -> int:
        return self.num_azimuths * self.num_elevations * self.num_thetas


@dataclass(frozen=True)
class PoseResult:
    """The fitted pose of one image.

    Attributes:
        R: ``(3, 3)``, t: ``(3,)``: object-to-camera pose (``pose_from_params`` of the
            fields below with the full-image ``K``).
        azimuth, elevation, theta: radians; distance: ``t_z``; u0, v0: full-image pixel
            of the object-frame origin.
        score: ``1 - loss`` at the returned pose (higher is better): the evidence for
            the object beyond the clutter model, averaged over the map (0 or less:
            nothing better than clutter; comparable between fits by one model and
            :attr:`FitConfig.upsample`, on whose map it is computed).
        loss_curve: the returned candidate's loss at every refinement step (the first
            entry is the loss at its grid pose), followed by those of each polish restart
            (``FitConfig.polish``).
        seconds: wall time of the :func:`fit_pose` call divided by the number of images.
    """

    R: torch.Tensor
    t: torch.Tensor
    azimuth: float
    elevation: float
    theta: float
    distance: float
    u0: float
    v0: float
    score: float
    loss_curve: list[float]
    seconds: float

    @property
    def doubtful(self) -> bool:
        """Whether the fitted object explains the photo no better than the clutter model
        (``score <= DOUBTFUL_SCORE``): such fits are mostly wrong (:data:`DOUBTFUL_SCORE`)."""
        return self.score <= DOUBTFUL_SCORE


#: :attr:`PoseResult.doubtful`: the score at or under which a fit is flagged. A score of 0
#: or less means the object rendered at the fitted pose explains the feature map no better
#: than clutter does, whatever the object's size. On unoccluded held-out renders and
#: ray-cast images, 88% of such fits were wrong; under occlusion right fits score that low
#: more often, hidden parts explaining nothing (``benchmarks/bench_pose.py`` counts both;
#: docs/pose_results.md, "Flagging fits that explain nothing").
DOUBTFUL_SCORE = 0.0


# ---------------------------------------------------------------------------- init grid


@dataclass(frozen=True, eq=False)
class InitGrid:
    """Pre-rendered grid poses in a canonical frame, reusable for any image size and ``K``.

    Each template is the model rasterized at one grid pose with the origin on the optical
    axis at ``distance`` (4 x the model's radius), in a square frame of
    ``FitConfig.grid_resolution`` cells whose focal ``focal`` (pixels) makes the model's
    bounding sphere span 90% of the frame. Only object pixels are kept: their normalised camera coordinates
    ``(x/z, y/z)`` and, instead of the rendered feature itself, the face's vertex ids,
    the barycentrics and the inverse norm of the interpolated feature, so that its
    similarity to an image cell is ``inv_norm * sum_k bary_k <vertex feature v_k, cell>``
    (:func:`render_features`' renormalised feature, read from the per-image similarity
    table). Images place a template by scaling its coordinates by ``distance / d`` and
    moving them to the object's centre (weak perspective).

    Attributes:
        azimuth, elevation, theta: ``(P,)`` grid angles (radians).
        distance: render distance (object units); focal: canonical focal (pixels).
        points: ``(P, n, 2)`` normalised coordinates of template pixels (0 for padding).
        vert_ids: ``(P, n, 3)`` int64 vertex ids of the face seen at each pixel.
        bary: ``(P, n, 3)`` barycentrics (0 for padding).
        inv_norm: ``(P, n)`` ``1 / |interpolated feature|`` (0 for padding).
        valid: ``(P, n)`` bool.
        area: ``(P,)`` silhouette area, normalised units (pixels / focal^2).
        centroid: ``(P, 2)`` silhouette centroid, normalised.
        box: ``(P, 4)`` silhouette bounding box ``(x0, y0, x1, y1)`` (pixel edges), normalised.
    """

    azimuth: torch.Tensor
    elevation: torch.Tensor
    theta: torch.Tensor
    distance: float
    focal: float
    points: torch.Tensor
    vert_ids: torch.Tensor
    bary: torch.Tensor
    inv_norm: torch.Tensor
    valid: torch.Tensor
    area: torch.Tensor
    centroid: torch.Tensor
    box: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> InitGrid:
        """A copy on ``device`` with floating tensors in ``dtype`` (``self`` if unchanged)."""
        if self.points.device == torch.device(device) and self.points.dtype == dtype:
            return self
        changes = {
            name: getattr(self, name).to(device, dtype)
            for name in ("azimuth", "elevation", "theta", "points", "bary", "inv_norm", "area", "centroid", "box")
        }
        changes.update(vert_ids=self.vert_ids.to(device), valid=self.valid.to(device))
        return replace(self, **changes)

    @classmethod
    def build(cls, nmesh: NeuralMesh, config: FitConfig = FitConfig()) -> InitGrid:
        """Rasterize the grid of ``config`` for ``nmesh`` (no gradients)."""
        deg = math.pi / 180.0
        az = torch.arange(config.num_azimuths, dtype=torch.float64) * (2 * math.pi / config.num_azimuths)
        el = torch.linspace(*config.elevation_range_deg, config.num_elevations, dtype=torch.float64) * deg
        th = torch.linspace(*config.theta_range_deg, config.num_thetas, dtype=torch.float64) * deg
        A, E, T = torch.meshgrid(az, el, th, indexing="ij")
        dtype, device = nmesh.verts.dtype, nmesh.device
        A, E, T = (x.reshape(-1).to(device, dtype) for x in (A, E, T))
        res = int(config.grid_resolution)
        rho = max(nmesh.radius, 1e-6)
        dist = 4.0 * rho
        # the bounding sphere's silhouette (half-angle asin(rho / d)) spans 90% of the frame
        focal = 0.45 * res / math.tan(math.asin(rho / dist))
        pp = (res - 1) / 2.0
        K = torch.tensor([[focal, 0, pp], [0, focal, pp], [0, 0, 1]], dtype=dtype, device=device)
        R, t = angles_to_pose(A, E, T, torch.full_like(A, dist))
        with torch.no_grad():
            verts_cam = nmesh.verts @ R.transpose(1, 2) + t[:, None, :]
            frags = rasterize(verts_cam, nmesh.faces, K, (res, res), cull_backfaces=_culls(nmesh, config.cull_backfaces))
        p2f = frags.pix_to_face.reshape(A.numel(), res * res)
        masks = p2f >= 0
        counts = masks.sum(1)
        n = max(int(counts.max()), 1)
        # object pixels first, in raster order
        order = torch.sort((~masks).to(torch.int8), dim=1, stable=True).indices[:, :n]
        valid = torch.gather(masks, 1, order)
        face = torch.gather(p2f, 1, order).clamp_min(0)
        bary = torch.gather(frags.bary.reshape(A.numel(), res * res, 3), 1, order[..., None].expand(-1, -1, 3))
        bary = torch.where(valid[..., None], bary, torch.zeros_like(bary))
        vert_ids = nmesh.faces[face]  # (P, n, 3)
        feats = nmesh.features
        fv = feats[vert_ids]  # (P, n, 3, C)
        interp = (bary[..., None] * fv).sum(2)
        norm = interp.norm(dim=-1)
        inv_norm = torch.where(valid, 1.0 / norm.clamp_min(1e-12), torch.zeros_like(norm))
        rows = torch.div(order, res, rounding_mode="floor").to(dtype)
        cols = (order % res).to(dtype)
        points = torch.stack([(cols - pp) / focal, (rows - pp) / focal], dim=-1) * valid[..., None]
        cnt = counts.clamp_min(1).to(dtype)
        centroid = points.sum(1) / cnt[:, None]
        big = torch.tensor(float("inf"), dtype=dtype, device=device)
        half = 0.5 / focal
        lo = torch.where(valid[..., None], points, big).amin(1) - half
        hi = torch.where(valid[..., None], points, -big).amax(1) + half
        empty = counts == 0
        box = torch.where(empty[:, None], torch.zeros(4, dtype=dtype, device=device), torch.cat([lo, hi], 1))
        return cls(
            azimuth=A,
            elevation=E,
            theta=T,
            distance=dist,
            focal=focal,
            points=points,
            vert_ids=vert_ids,
            bary=bary,
            inv_norm=inv_norm,
            valid=valid,
            area=counts.to(dtype) / focal**2,
            centroid=centroid,
            box=box,
        )


_GRID_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GRID_FIELDS = (
    "num_azimuths",
    "elevation_range_deg",
    "num_elevations",
    "theta_range_deg",
    "num_thetas",
    "grid_resolution",
    "cull_backfaces",
)


def init_grid_for(nmesh: NeuralMesh, config: FitConfig = FitConfig()) -> InitGrid:
    """:meth:`InitGrid.build`, memoised per model object and grid settings.

    The cache holds the model weakly: it is dropped with the model. A model's features
    are immutable (frozen dataclass), so a cached grid never goes stale; a model with new
    features is a new object.
    """
    key = tuple(getattr(config, f) for f in _GRID_FIELDS)
    per_model = _GRID_CACHE.setdefault(nmesh, {})
    grid = per_model.get(key)
    if grid is None:
        grid = per_model[key] = InitGrid.build(nmesh, config)
    return grid


# ------------------------------------------------------------------------------ fitting


@dataclass(frozen=True)
class _Tables:
    """Per-image quantities that do not depend on the pose."""

    sim: torch.Tensor  # (B, h*w, V) <image cell, vertex feature>
    clutter: torch.Tensor  # (B, h*w) clutter score c
    base: torch.Tensor  # (B,) sum_p relu(-c_p) ("nemo"), 0 ("mixture")
    gram: torch.Tensor  # (F, 3, 3) <vertex feature i, vertex feature j> per face
    h: int
    w: int
    config: FitConfig  # the loss to compute

    def gain(self, obj: torch.Tensor, clu: torch.Tensor) -> torch.Tensor:
        """What an object pixel adds to ``hw (1 - loss)``, beyond ``base``."""
        if self.config.loss == "nemo":
            return torch.relu(obj - clu) - torch.relu(-clu)
        return _mixture_gain(obj - clu, self.config.temperature, self.config.occlusion_prior)


def _tables(feature_map: torch.Tensor, nmesh: NeuralMesh, config: FitConfig) -> _Tables:
    b, c, h, w = feature_map.shape
    img = feature_map.permute(0, 2, 3, 1).reshape(b, h * w, c)
    feats = nmesh.features.to(img)
    sim = img @ feats.T
    if config.clutter_score == "max":
        clu = (img @ nmesh.clutter.to(img).T).amax(-1)
    else:
        clu = img @ mean_clutter_feature(nmesh.clutter.to(img))
    base = torch.relu(-clu).sum(1) if config.loss == "nemo" else torch.zeros_like(clu[:, 0])
    fv = feats[nmesh.faces]  # (F, 3, C)
    gram = fv @ fv.transpose(1, 2)
    return _Tables(sim=sim, clutter=clu, base=base, gram=gram, h=h, w=w, config=config)


def _poses(x: torch.Tensor, K_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Internal parameters ``(N, 6) = (a, e, theta, log d, u_f, v_f)`` -> ``(R, t)``."""
    d = torch.exp(x[:, 3])
    R, _ = angles_to_pose(x[:, 0], x[:, 1], x[:, 2], torch.ones_like(d))
    t = d[:, None] * _ray(K_feat, x[:, 4], x[:, 5])
    return R, t


def _candidate_losses(
    x: torch.Tensor,
    image_of: torch.Tensor,
    K_feat: torch.Tensor,
    nmesh: NeuralMesh,
    tables: _Tables,
    cull_backfaces: bool,
) -> torch.Tensor:
    """NeMo loss of each candidate pose ``x (N, 6)`` against image ``image_of (N,)``.

    Equal to ``nemo_loss(image, *render_features(...))`` (tested), computed from the
    precomputed similarity tables: on a pixel covered by face ``f`` with barycentrics
    ``b``, ``o = sum_k b_k sim[v_k] / sqrt(b^T gram[f] b)``.
    """
    h, w = tables.h, tables.w
    hw = h * w
    n = x.shape[0]
    R, t = _poses(x, K_feat)
    verts_cam = nmesh.verts @ R.transpose(1, 2) + t[:, None, :]
    frags = rasterize(verts_cam, nmesh.faces, K_feat, (h, w), cull_backfaces=cull_backfaces)
    p2f = frags.pix_to_face.reshape(-1)
    idx = (p2f >= 0).nonzero().squeeze(1)
    face = p2f.index_select(0, idx)
    bary = frags.bary.reshape(-1, 3).index_select(0, idx)
    cand = torch.div(idx, hw, rounding_mode="floor")
    cell = image_of.index_select(0, cand) * hw + (idx - cand * hw)
    vids = nmesh.faces.index_select(0, face)
    num_v = tables.sim.shape[-1]
    s = tables.sim.reshape(-1).index_select(0, (cell[:, None] * num_v + vids).reshape(-1)).view(-1, 3)
    num = (bary * s).sum(1)
    g = tables.gram.index_select(0, face)
    den2 = (bary[:, :, None] * g * bary[:, None, :]).sum((1, 2))
    obj = num * torch.rsqrt(den2.clamp_min(1e-12))
    clu = tables.clutter.reshape(-1).index_select(0, cell)
    gain = tables.gain(obj, clu)
    total = x.new_zeros(n * hw).index_copy(0, idx, gain).view(n, hw).sum(1)
    return 1.0 - (tables.base.index_select(0, image_of) + total) / hw


def _otsu_threshold(values: torch.Tensor) -> torch.Tensor:
    """Otsu's threshold of each row of ``values (B, n)``: the split of the sorted values
    maximising the between-class variance. Returns ``(B,)``."""
    vals = torch.sort(values, dim=1).values
    n = vals.shape[1]
    if n < 2:
        return vals[:, 0] - 1.0
    csum = torch.cumsum(vals, dim=1)
    total = csum[:, -1:]
    k = torch.arange(1, n, dtype=vals.dtype, device=vals.device)  # size of the low class
    mean_lo = csum[:, :-1] / k
    mean_hi = (total - csum[:, :-1]) / (n - k)
    between = k * (n - k) * (mean_hi - mean_lo) ** 2
    split = between.argmax(1)
    return (vals.gather(1, split[:, None]) + vals.gather(1, split[:, None] + 1))[:, 0] / 2


def _locate(tables: _Tables, K_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blob of object-like cells per image: the margin of the best-matching vertex feature
    over the clutter score, thresholded by Otsu's method (and > 0).

    Returns ``centre (B, 2)`` (normalised camera coordinates), ``area (B,)`` (normalised)
    and ``found (B,)`` bool.
    """
    b = tables.sim.shape[0]
    h, w = tables.h, tables.w
    margin = tables.sim.amax(-1) - tables.clutter  # (B, hw)
    fg = (margin > _otsu_threshold(margin)[:, None]) & (margin > 0)
    cnt = fg.sum(1)
    dtype = tables.sim.dtype
    rows = torch.arange(h, dtype=dtype, device=fg.device).repeat_interleave(w)
    cols = torch.arange(w, dtype=dtype, device=fg.device).repeat(h)
    fgf = fg.to(dtype)
    denom = cnt.clamp_min(1).to(dtype)
    u = (fgf * cols).sum(1) / denom
    v = (fgf * rows).sum(1) / denom
    Kb = K_feat.expand(b, 3, 3)
    centre = _ray(Kb, u, v)[:, :2]
    area = cnt.to(dtype) / (Kb[:, 0, 0] * Kb[:, 1, 1])
    return centre, area, cnt > 0


def _template_losses(
    grid: InitGrid,
    q: torch.Tensor,
    origin: torch.Tensor,
    scale: torch.Tensor,
    tables: _Tables,
    i: int,
    K_feat: torch.Tensor,
) -> torch.Tensor:
    """NeMo loss of grid templates ``q (Q,)`` placed in image ``i``.

    Template ``q`` is put at distance ``scale * grid.distance`` with the object origin at
    normalised image position ``origin (Q, 2)`` (weak perspective); the image is sampled
    bilinearly at the template's pixels (zero outside the map, like
    ``grid_sample(..., align_corners=True)``), and each template pixel stands for
    ``fx fy / (focal scale)^2`` image cells. ``K_feat (3, 3)`` is image ``i``'s.
    """
    h, w = tables.h, tables.w
    num_v = tables.sim.shape[-1]
    sim = tables.sim[i].reshape(-1)
    clutter = tables.clutter[i]
    xy = origin[:, None, :] + grid.points.index_select(0, q) / scale[:, None, None]  # (Q, n, 2)
    uf = K_feat[0, 0] * xy[..., 0] + K_feat[0, 1] * xy[..., 1] + K_feat[0, 2]
    vf = K_feat[1, 1] * xy[..., 1] + K_feat[1, 2]
    x0, y0 = uf.floor(), vf.floor()
    ax, ay = uf - x0, vf - y0
    vids = grid.vert_ids.index_select(0, q)  # (Q, n, 3)
    inv = grid.inv_norm.index_select(0, q)
    weights = grid.bary.index_select(0, q) * inv[..., None]
    obj = torch.zeros_like(uf)
    clu = torch.zeros_like(uf)
    for dx, dy, wgt in ((0, 0, (1 - ax) * (1 - ay)), (1, 0, ax * (1 - ay)), (0, 1, (1 - ax) * ay), (1, 1, ax * ay)):
        cx, cy = x0 + dx, y0 + dy
        inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
        cell = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long()
        wgt = wgt * inside
        s3 = sim.take(cell[..., None] * num_v + vids)  # (Q, n, 3)
        obj = obj + wgt * (s3 * weights).sum(-1)
        clu = clu + wgt * clutter.take(cell)
    gain = tables.gain(obj, clu) * (inv > 0)  # 0 on padding
    cells_per_pixel = (K_feat[0, 0] * K_feat[1, 1]) / (grid.focal**2 * scale**2)
    return 1.0 - (tables.base[i] + cells_per_pixel * gain.sum(1)) / (h * w)


def _search_placement(
    grid: InitGrid,
    top: torch.Tensor,
    origin: torch.Tensor,
    scale: torch.Tensor,
    loss: torch.Tensor,
    tables: _Tables,
    i: int,
    K_feat: torch.Tensor,
    vary_scale: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local search of the placement of templates ``top (m,)``: two rounds of 3 x 3
    shifts (about 12% of the object's size, then half that) x 3 sizes (x1.15^{-1,0,1},
    when ``vary_scale``), keeping the best. Returns the new ``origin, scale, loss``."""
    m = top.numel()
    fx, fy = K_feat[0, 0], K_feat[1, 1]
    dtype, device = origin.dtype, origin.device
    cells = torch.sqrt(grid.area.index_select(0, top) * fx * fy) / scale  # object size in cells
    step = (0.12 * cells).clamp_min(0.75)
    offs = torch.tensor([-1.0, 0.0, 1.0], dtype=dtype, device=device)
    factors = torch.tensor([1 / 1.15, 1.0, 1.15] if vary_scale else [1.0], dtype=dtype, device=device)
    dx, dy, fs = (g.reshape(-1) for g in torch.meshgrid(offs, offs, factors, indexing="ij"))
    nv = dx.numel()
    rows = torch.arange(m, device=device)
    for _ in range(2):
        # (m, nv, 2) shifted origins; skew is ignored for the shift
        c_org = origin[:, None, :] + torch.stack([dx[None] * step[:, None] / fx, dy[None] * step[:, None] / fy], -1)
        c_scl = scale[:, None] * fs[None]
        c_loss = _template_losses(
            grid, top.repeat_interleave(nv), c_org.reshape(-1, 2), c_scl.reshape(-1), tables, i, K_feat
        ).view(m, nv)
        j = torch.sort(c_loss, dim=1, stable=True).indices[:, 0]
        better = c_loss[rows, j] < loss
        origin = torch.where(better[:, None], c_org[rows, j], origin)
        scale = torch.where(better, c_scl[rows, j], scale)
        loss = torch.minimum(c_loss[rows, j], loss)
        step = step / 2
    return origin, scale, loss


def _grid_starts(
    grid: InitGrid,
    tables: _Tables,
    K_feat: torch.Tensor,
    boxes: list[torch.Tensor | None],
    config: FitConfig,
    fallback_side: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every grid pose for every image; return the ``top_k`` starts.

    ``grid`` on the tables' device and dtype; ``K_feat (3, 3)`` or ``(B, 3, 3)``;
    ``boxes`` in feature pixels; ``fallback_side`` (feature cells) is the assumed object
    size when there is no box and the object is not located.

    Returns ``x (B, k, 6)`` internal parameters and ``loss (B, k)`` grid losses.
    """
    b = tables.sim.shape[0]
    dtype, device = tables.sim.dtype, tables.sim.device
    num_poses = grid.azimuth.numel()
    Kb = K_feat.expand(b, 3, 3)
    if config.locate:
        centre, area, found = _locate(tables, K_feat)
    every = torch.arange(num_poses, device=device)
    k = min(config.top_k, num_poses)
    starts, losses = [], []
    for i in range(b):
        box = boxes[i]
        if box is not None:
            # box in feature pixels -> normalised; each template's box matched to it
            lo = _ray(Kb[i], box[0:1], box[1:2])[0, :2]
            hi = _ray(Kb[i], box[2:3], box[3:4])[0, :2]
            obs_c = (lo + hi) / 2
            obs_wh = (hi - lo).clamp_min(1e-9)
            t_wh = (grid.box[:, 2:] - grid.box[:, :2]).clamp_min(1e-9)
            scale = torch.sqrt((t_wh[:, 0] * t_wh[:, 1]) / (obs_wh[0] * obs_wh[1]))  # d / d_grid
            t_c = (grid.box[:, :2] + grid.box[:, 2:]) / 2
        else:
            if config.locate and bool(found[i]):
                obs_c, obs_a = centre[i], area[i]
            else:
                obs_c = torch.zeros(2, dtype=dtype, device=device)
                obs_a = fallback_side**2 / (Kb[i, 0, 0] * Kb[i, 1, 1])
            scale = torch.sqrt(grid.area / obs_a.clamp_min(1e-12))
            t_c = grid.centroid
        if config.distance is not None:
            scale = torch.full_like(scale, config.distance / grid.distance)
        scale = scale.clamp_min(1e-6)
        origin = obs_c - t_c / scale[:, None]  # (P, 2) normalised image position of the origin
        loss = _template_losses(grid, every, origin, scale, tables, i, Kb[i])
        m = min(num_poses, config.placement_search)
        if m > 0:
            top = torch.sort(loss, stable=True).indices[:m]
            new = _search_placement(
                grid, top, origin[top], scale[top], loss[top], tables, i, Kb[i], config.distance is None
            )
            origin, scale, loss = origin.clone(), scale.clone(), loss.clone()
            origin[top], scale[top], loss[top] = new
        order = torch.sort(loss, stable=True).indices[:k]
        u0 = Kb[i, 0, 0] * origin[:, 0] + Kb[i, 0, 1] * origin[:, 1] + Kb[i, 0, 2]
        v0 = Kb[i, 1, 1] * origin[:, 1] + Kb[i, 1, 2]
        angles = [grid.azimuth, grid.elevation, grid.theta]
        x = torch.stack([*angles, torch.log(grid.distance * scale), u0, v0], dim=1)
        starts.append(x[order])
        losses.append(loss[order])
    return torch.stack(starts), torch.stack(losses)


def _refine(
    x0: torch.Tensor,
    image_of: torch.Tensor,
    K_feat_c: torch.Tensor,
    nmesh: NeuralMesh,
    tables: _Tables,
    config: FitConfig,
) -> tuple[torch.Tensor, torch.Tensor, list[list[float]]]:
    """Adam on all candidates together; return best ``x``, best loss and loss curves.

    Adam is written out (the same update as ``torch.optim.Adam``) so that candidates can
    stop independently: a stopped candidate is no longer rendered.
    """
    n = x0.shape[0]
    dtype = x0.dtype
    x = x0.clone()
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    b1, b2 = config.betas
    base_lr = torch.tensor(
        [config.lr] * 3 + [config.lr_log_distance] + [config.lr_center] * 2, dtype=dtype, device=x.device
    )
    best_x = x.clone()
    best = torch.full((n,), float("inf"), dtype=dtype, device=x.device)
    since = torch.zeros(n, dtype=torch.long, device=x.device)  # steps since last improvement
    phase = torch.zeros(n, dtype=torch.long, device=x.device)  # lr decays so far
    in_phase = torch.zeros(n, dtype=torch.long, device=x.device)  # Adam steps in this phase
    curves: list[list[float]] = [[] for _ in range(n)]
    active = torch.arange(n, device=x.device)
    shared_K = K_feat_c.dim() == 2
    cull = _culls(nmesh, config.cull_backfaces)
    for step in range(config.steps + 1):
        last = step == config.steps
        xa = x.index_select(0, active).requires_grad_(not last)
        Ka = K_feat_c if shared_K else K_feat_c.index_select(0, active)
        with torch.set_grad_enabled(not last):
            loss = _candidate_losses(xa, image_of.index_select(0, active), Ka, nmesh, tables, cull)
        ld = loss.detach()
        for j, c in enumerate(active.tolist()):
            curves[c].append(float(ld[j]))
        prev = best.index_select(0, active)
        improved = ld < prev - config.tol
        better = ld < prev
        best[active] = torch.where(better, ld, prev)
        best_x[active] = torch.where(better[:, None], xa.detach(), best_x.index_select(0, active))
        sa = torch.where(improved, torch.zeros_like(ld, dtype=torch.long), since.index_select(0, active) + 1)
        # next lr phase on a plateau or after lr_decay_every steps; stop after the last one
        pa, ia = phase.index_select(0, active), in_phase.index_select(0, active)
        advance = (sa >= config.patience) | (ia >= config.lr_decay_every)
        pa = pa + advance.long()
        ia = torch.where(advance, torch.zeros_like(ia), ia)
        sa = torch.where(advance, torch.zeros_like(sa), sa)
        since[active], phase[active], in_phase[active] = sa, pa, ia
        if last:
            break
        (grad,) = torch.autograd.grad(loss.sum(), xa)
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        xa = xa.detach()
        keep = pa < config.lr_phases
        if not bool(keep.all()):
            active, xa, grad, pa = active[keep], xa[keep], grad[keep], pa[keep]
            if active.numel() == 0:
                break
        t = step + 1
        ma = m.index_select(0, active) * b1 + (1 - b1) * grad
        va = v.index_select(0, active) * b2 + (1 - b2) * grad * grad
        m[active], v[active] = ma, va
        lr = base_lr[None, :] * (config.lr_decay ** pa.to(dtype))[:, None]
        upd = lr * (ma / (1 - b1**t)) / ((va / (1 - b2**t)).sqrt() + 1e-8)
        x[active] = xa - upd
        in_phase[active] = in_phase.index_select(0, active) + 1
    return best_x, best, curves


def _boxes(bbox, b: int, stride: int, dtype, device) -> list[torch.Tensor | None]:
    """Normalise the ``bbox`` argument to a list of ``(4,)`` feature-pixel boxes or None."""
    if bbox is None:
        return [None] * b
    if isinstance(bbox, torch.Tensor):
        boxes = [bbox] if bbox.dim() == 1 else list(bbox.unbind(0))
    elif len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox):
        boxes = [bbox]
    else:
        boxes = list(bbox)
    if len(boxes) != b:
        raise ValueError(f"bbox: expected {b} boxes (one per image), got {len(boxes)}")
    off = (stride - 1) / 2.0
    out = []
    for i, box in enumerate(boxes):
        if box is None:
            out.append(None)
            continue
        box = torch.as_tensor(box, dtype=dtype, device=device).reshape(-1)
        if box.numel() != 4 or not bool(torch.isfinite(box).all()):
            raise ValueError(f"bbox[{i}]: expected 4 finite numbers (x0, y0, x1, y1), got {box.tolist()}")
        if not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"bbox[{i}]: expected x1 > x0 and y1 > y0, got {box.tolist()}")
        # the box's edges, full-image pixels -> feature-map pixels (same affine map)
        out.append((box - off) / stride)
    return out


def check_init_poses(init, b: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``init = (R (b, 3, 3), t (b, 3))`` as tensors (on ``device`` / ``dtype`` when given),
    checked: a pair, those shapes, finite, the object in front of the camera (``t_z > 0``).
    One line naming the problem otherwise (``ValueError``)."""
    if not (isinstance(init, (tuple, list)) and len(init) == 2):
        raise ValueError("init: expected a pair (R (B, 3, 3), t (B, 3))")
    R, t = (torch.as_tensor(x).to(device=device, dtype=dtype) for x in init)
    if R.shape != (b, 3, 3) or t.shape != (b, 3):
        raise ValueError(f"init: expected R ({b}, 3, 3) and t ({b}, 3), got init R {tuple(R.shape)} "
                         f"and init t {tuple(t.shape)}")
    if not (bool(torch.isfinite(R).all()) and bool(torch.isfinite(t).all()) and bool((t[:, 2] > 0).all())):
        raise ValueError("init: expected finite poses with the object in front of the camera (t_z > 0)")
    return R, t


def _init_starts(init, K_feat: torch.Tensor, b: int) -> torch.Tensor:
    """``(B, 6)`` internal parameters of ``init = (R, t)``: with the feature map's
    intrinsics, :func:`params_from_pose` gives ``(u0, v0)`` in feature cells directly."""
    R, t = check_init_poses(init, b, K_feat.device, K_feat.dtype)
    p = params_from_pose(R, t, K_feat)
    return torch.stack([p.azimuth, p.elevation, p.theta, torch.log(p.distance), p.u0, p.v0], dim=1)


def fit_pose(
    feature_map: torch.Tensor,
    nmesh: NeuralMesh,
    K: torch.Tensor,
    *,
    image_size: Sequence[int],
    stride: int = 8,
    bbox=None,
    config: FitConfig = FitConfig(),
    init_grid: InitGrid | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[PoseResult]:
    """Estimate the object's pose in each feature map by NeMo's render-and-compare.

    Args:
        feature_map: ``(B, C, h, w)`` or ``(C, h, w)`` unit image features of stride
            ``stride`` (cell ``(i, j)`` centred at pixel ``(stride j + (stride-1)/2, ...)``).
        nmesh: the model; ``C`` must match.
        K: ``(3, 3)`` or ``(B, 3, 3)`` **full-image** intrinsics.
        image_size: ``(H, W)`` of the image the features come from.
        stride: feature stride in pixels.
        bbox: optional object box ``(x0, y0, x1, y1)`` in full-image pixels (box edges):
            a ``(4,)`` / ``(B, 4)`` tensor, a 4-sequence (``B = 1``) or a list of ``B``
            boxes or None. It sets the initial centre and per-template distance.
        config: :class:`FitConfig`.
        init_grid: a prebuilt :class:`InitGrid` (default: :func:`init_grid_for`, cached
            per model).
        init: optional poses ``(R (B, 3, 3), t (B, 3))`` (for ``K``, ``t_z > 0``), one
            more start per image beside the grid's ``top_k`` (e.g. a previous frame's
            pose, or a first fit at another crop); the best candidate still wins. With
            ``config.top_k == 0`` they are the only starts (no grid search).

    Returns:
        One :class:`PoseResult` per image. Deterministic for given inputs; fitting a
        batch gives the same results as fitting its images one by one (candidates are
        independent).
    """
    start_time = time.perf_counter()
    if not isinstance(feature_map, torch.Tensor):
        raise TypeError(f"feature_map: expected a torch.Tensor, got {type(feature_map).__name__}")
    if feature_map.dim() == 3:
        feature_map = feature_map[None]
    dims = check_shape("feature_map", feature_map, ["B", "C", "h", "w"])
    check_floating("feature_map", feature_map)
    check_finite("feature_map", feature_map)
    b, c = dims["B"], dims["C"]
    if c != nmesh.feature_dim:
        raise ValueError(f"feature_map: expected {nmesh.feature_dim} channels (the model's), got {c}")
    H, W = check_image_size(image_size)
    if int(stride) < 1:
        raise ValueError(f"stride: expected >= 1, got {stride}")
    if int(stride) % int(config.upsample):
        raise ValueError(f"config.upsample: expected a divisor of the feature stride {int(stride)}, "
                         f"got {config.upsample} (upsample=1 fits the map as it is)")
    check_intrinsics(K, b, feature_map)
    dtype, device = feature_map.dtype, feature_map.device
    if config.top_k == 0 and init is None:
        raise ValueError("config.top_k == 0 refines only the init poses: pass init=(R, t)")
    if config.top_k > 0:  # built (and cached) for the caller's model object
        grid = init_grid if init_grid is not None else init_grid_for(nmesh, config)
    if nmesh.device != device or nmesh.verts.dtype != dtype or nmesh.features.dtype != dtype:
        nmesh = NeuralMesh(
            verts=nmesh.verts.to(device, dtype),
            faces=nmesh.faces.to(device),
            features=nmesh.features.to(device, dtype),
            clutter=nmesh.clutter.to(device, dtype),
            meta=nmesh.meta,
        )
    if config.upsample > 1:
        feature_map = upsample_features(feature_map, int(config.upsample))
        stride = int(stride) // int(config.upsample)
    K = K.to(device, dtype)
    K_feat = feature_intrinsics(K, int(stride))
    boxes = _boxes(bbox, b, int(stride), dtype, device)

    with torch.no_grad():
        tables = _tables(feature_map, nmesh, config)
        if config.top_k > 0:
            fallback_side = min(H, W) / 2.0 / int(stride)  # half the shorter image side, in cells
            x0, _ = _grid_starts(grid.to(device, dtype), tables, K_feat, boxes, config, fallback_side)
        else:
            x0 = feature_map.new_zeros(b, 0, 6)
    if init is not None:
        x0 = torch.cat([x0, _init_starts(init, K_feat, b)[:, None]], dim=1)
    k = x0.shape[1]
    x0 = x0.reshape(b * k, 6)
    image_of = torch.arange(b, device=device).repeat_interleave(k)
    K_feat_c = K_feat if K_feat.dim() == 2 else K_feat.index_select(0, image_of)
    best_x, best_loss, curves = _refine(x0, image_of, K_feat_c, nmesh, tables, config)

    best_x = best_x.view(b, k, 6)
    best_loss = best_loss.view(b, k)
    pick = torch.sort(best_loss, dim=1, stable=True).indices[:, 0]
    xs = best_x[torch.arange(b, device=device), pick]
    losses = best_loss[torch.arange(b, device=device), pick]
    curves = [curves[i * k + int(pick[i])] for i in range(b)]
    for _ in range(config.polish if config.steps > 0 else 0):
        # restart Adam (fresh learning rates and moments) at each image's best pose
        px, pl, pc = _refine(xs, torch.arange(b, device=device), K_feat, nmesh, tables, config)
        better = pl < losses
        xs = torch.where(better[:, None], px, xs)
        losses = torch.where(better, pl, losses)
        curves = [c + extra for c, extra in zip(curves, pc)]
    # internal (u_f, v_f) -> full-image pixels: u = stride * u_f + (stride - 1) / 2
    off = (int(stride) - 1) / 2.0
    params = PoseParams(
        azimuth=xs[:, 0],
        elevation=xs[:, 1],
        theta=xs[:, 2],
        distance=torch.exp(xs[:, 3]),
        u0=xs[:, 4] * stride + off,
        v0=xs[:, 5] * stride + off,
    )
    R, t = pose_from_params(params, K)
    seconds = (time.perf_counter() - start_time) / b
    return pose_results(R, t, K, (1.0 - losses).tolist(), curves, seconds)


def pose_results(R: torch.Tensor, t: torch.Tensor, K: torch.Tensor, scores: Sequence[float],
                 loss_curves: Sequence[list[float]], seconds: float = 0.0) -> list[PoseResult]:
    """One :class:`PoseResult` per pose ``(R (N, 3, 3), t (N, 3))`` seen through ``K``
    (``(3, 3)`` or ``(N, 3, 3)``): the angles in their canonical ranges (the same ``R``),
    ``distance = t_z``, ``(u0, v0)`` the projection of the object's origin, and the given
    ``scores``, ``loss_curves`` and ``seconds``."""
    params = params_from_pose(R, t, K)
    az, el, th, _ = pose_to_angles(R, t / t.norm(dim=1, keepdim=True))
    return [
        PoseResult(
            R=R[i].detach(),
            t=t[i].detach(),
            azimuth=float(az[i]),
            elevation=float(el[i]),
            theta=float(th[i]),
            distance=float(params.distance[i]),
            u0=float(params.u0[i]),
            v0=float(params.v0[i]),
            score=float(scores[i]),
            loss_curve=list(loss_curves[i]),
            seconds=seconds,
        )
        for i in range(R.shape[0])
    ]
