"""A ready-to-use pose model: a trained backbone + the neural mesh of one object, the frame
of the object's mesh file, and the image preprocessing both were trained with.

:class:`PoseModel` is what ``demos/fit_pose.py`` loads (``--model DIR``) or builds from a
mesh (:mod:`neural_mesh.build`). It turns photos of any size into the backbone's input
(:meth:`PoseModel.prepare`), runs :func:`neural_mesh.fitting.fit_pose` and reports poses
in the **mesh file's own coordinates** (:meth:`PoseModel.to_file_frame`).

**Frames.** The neural mesh lives in the *model frame*: the mesh file's vertices centred
and scaled, ``X_model = s (X_file - c)`` (:func:`render.center_and_scale`, bounding-box
centre, bounding-sphere radius 1). A pose ``(R, t)`` of the model frame gives the same
image as the file-frame pose ``(R, t / s - R c)`` of the real-size mesh (perspective
projection does not see a common scale of the scene), so ``X_cam = R X_file + t_file``
in the file's units, with the same ``R``.

**Preprocessing** (:meth:`PoseModel.prepare`): the backbone was trained on square images of
``image_size`` pixels in which the object's box spans about ``box_fraction`` of the side.
A photo is cropped to a square around the object (around ``bbox`` when given, else the
whole image, padded with grey) and resized so that the object's box spans about
``box_fraction`` of it; the intrinsics follow the crop exactly (``K_crop = A K`` with ``A``
the pixel map of the crop, pixel centres at integers), so poses fitted in the crop are
poses of the original camera. Without a box, :meth:`PoseModel.fit` fits the whole
image first, then (``recrop=True``) crops around the fitted object, so that it appears at
the training scale and with its centre (not its 2D box's centre) where the training
renders put it (:meth:`PoseModel.crop_box`), and fits again (the grid's starts plus the first pose), keeping the
second fit when it scores higher, or always when the first found the object much smaller,
larger or further off-centre than in training. On the 40 held-out unoccluded renders of
``benchmarks/bench_pose.py`` (``--steps 12000 --occlusion 0 0.5``), this second look took a
12,000-step occluder build from 87.5% within 30 deg (median 7.5 deg; the second fit then
ran only for far-off objects) to 100% (4.8 deg), and the default build from 72.5% (12.8
deg) to 85% (11.0 deg); occluded levels moved within noise (L2: 52.5% -> 55%, 25% -> 30%).
It costs about twice the time of one fit. Centring that crop on the fitted object's
centre rather than on its 2D box (the two are a median 3.5 input pixels apart on those
renders, up to 9) took a 3,000-step heavy-occluder build (``benchmarks/bench_pose.py --steps 3000
--occlusion 0.2 0.7 --no-regression --levels 0 2 --n 120``) from 36.7% to 40.8% at L2,
with L0 unchanged within one image (74.2% -> 73.3%); in a scratch trial, crops centred on
the true pose's centre also beat crops around the true box at both levels.

**Photos framed wider than the training renders.** The second look needs a first fit
that found the object. When the object spans much less of the photo than of the training
renders, the whole-photo first fit sees it over too few feature cells, and the fit is
often wrong; given a box around it, the same model fits it as well as in training framing
(:data:`SMALL_IN_PHOTO`). Neither the feature margins nor the fit's score picked the right
crop among a pyramid of candidate crops in scratch trials: the clutter model, trained on
one framing, does not tell enlarged background from the object. So give a box
(``fit_pose.py --bbox``) when the object is small in the photo, or build the model with
some training renders framed wider (the ``"wide"`` build preset, which finds objects at
half the training framing); :meth:`PoseModel.small_in_photo` flags such fits.

Last (:attr:`FitConfig.crop_ensemble`, 4 by default), the pose is refined again from itself
on four crops moved diagonally by half a feature cell (:attr:`FitConfig.crop_shift`, 4
input pixels) and the four refinements are averaged (:func:`render.mean_rotation`, mean
``t``). The backbone's features depend on where in its cells the object falls, so these
refinements err partly independently and their mean is steadier: on 240 fresh images per
level (``docs/pose_results.md``, "Averaging over shifted crops") it took the heavy rooms
build's median L0 error on the ray caster's images from 5.3 to 4.9 deg and on ours from
4.4 to 3.8 deg, for about 1.3 times the batched fitting time (1.5 times a single photo's).

On disk (:meth:`PoseModel.save` / :meth:`PoseModel.load`)::

    DIR/model.json            {"format": "meshpose_pose_model", "format_version": 1,
                               "backbone": {...}, "image_size": [H, W],
                               "box_fraction": f, "mesh_center": [cx, cy, cz],
                               "mesh_scale": s, "center_on": "object" | "box",
                               "backbone_sha256": "...", "meta": {...}}
                              (a model.json without "center_on" means "object")
    DIR/backbone.safetensors  the backbone's state dict
    DIR/neural_mesh/          the NeuralMesh (``NeuralMesh.save``)

written to a temporary directory and renamed into place. Every problem found on load
raises :class:`~neural_mesh.neural_mesh.ModelError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from render import mean_rotation, project_points
from render.checks import check_finite, check_floating, check_shape

from .backbones import BackboneConfig, FeatureBackbone
from .fitting import FitConfig, PoseResult, check_init_poses, fit_pose, pose_results
from .neural_mesh import ModelError, NeuralMesh, atomic_directory, file_sha256

__all__ = ["PoseModel", "MODEL_FILE", "BACKBONE_FILE", "MESH_DIR", "crop_intrinsics", "crop_image", "box_fractions",
           "box_fraction_of"]

#: :meth:`PoseModel.small_in_photo`: below this share of the training framing, fits without
#: a box are unreliable. On 80 renders of the bundled chair framed wider than the test set's
#: usual framing (``benchmarks/bench_pose.py --zoom-out F``, default build), Acc@pi/6 without
#: a box fell from 92.5% (F 1) to 61% (F 1.5) and 26% (F 2), and was 96% at F 2 given
#: the true box (docs/pose_results.md, "Photos framed wider than the training renders").
SMALL_IN_PHOTO = 0.55

#: :data:`SMALL_IN_PHOTO` of models whose training renders included wider framings
#: (``BuildConfig.scene["zoom_out_probability"] > 0``, e.g. the ``"wide"`` build preset).
#: Its ``"wide"`` build of the bundled chair found the object without a box in 87.5% of
#: 80 renders framed twice as wide (0.4 of the training framing) and 66.2% at three times
#: (0.27), within 30 deg (docs/pose_results.md, "Training renders framed wider: the wide preset").
SMALL_IN_PHOTO_WIDE = 0.3

MODEL_FORMAT = "meshpose_pose_model"
MODEL_VERSION = 1
MODEL_FILE = "model.json"
BACKBONE_FILE = "backbone.safetensors"
MESH_DIR = "neural_mesh"
#: grey used where a crop reaches outside the photo
PAD_VALUE = 0.5


def crop_intrinsics(K: torch.Tensor, x0: float, y0: float, scale: float) -> torch.Tensor:
    """Intrinsics of a crop whose pixel ``(u', v')`` is the original pixel
    ``(x0 + scale u', y0 + scale v')`` (pixel centres at integers): ``K' = A K`` with
    ``A = [[1/s, 0, -x0/s], [0, 1/s, -y0/s], [0, 0, 1]]``.

    >>> K = torch.tensor([[100., 0, 50], [0, 100, 40], [0, 0, 1]])
    >>> crop_intrinsics(K, 10.0, 0.0, 2.0).tolist()
    [[50.0, 0.0, 20.0], [0.0, 50.0, 20.0], [0.0, 0.0, 1.0]]
    """
    A = torch.tensor([[1 / scale, 0, -x0 / scale], [0, 1 / scale, -y0 / scale], [0, 0, 1]],
                     dtype=K.dtype, device=K.device)
    return A @ K


def crop_image(image: torch.Tensor, x0: float, y0: float, scale: float, size: int) -> torch.Tensor:
    """Resample a ``size x size`` crop of ``image (3, H, W)``: output pixel ``(u', v')``
    samples the original at ``(x0 + scale u', y0 + scale v')`` (bilinear; an area average
    first when shrinking by more than 1.5x); outside the photo is grey (0.5)."""
    c, H, W = image.shape
    img = image[None]
    factor = int(math.floor(scale / 1.5)) if scale > 1.5 else 1
    if factor > 1:
        # shrink by an integer factor with area averaging (anti-aliasing), then resample
        img = F.avg_pool2d(img, factor, stride=factor, ceil_mode=True, count_include_pad=False)
        x0, y0, scale = (x0 - (factor - 1) / 2) / factor, (y0 - (factor - 1) / 2) / factor, scale / factor
        H, W = img.shape[-2:]
    u = x0 + scale * torch.arange(size, dtype=img.dtype, device=img.device)
    v = y0 + scale * torch.arange(size, dtype=img.dtype, device=img.device)
    gx = (2 * u + 1) / W - 1  # align_corners=False: pixel centre j at (2j + 1) / W - 1
    gy = (2 * v + 1) / H - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    out = F.grid_sample(img - PAD_VALUE, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out + PAD_VALUE)[0]


@dataclass(frozen=True, eq=False)
class PoseModel:
    """A backbone and the neural mesh of one object, ready to fit poses in photos.

    Attributes:
        backbone: the trained :class:`FeatureBackbone` (kept in eval mode).
        nmesh: the trained :class:`NeuralMesh`, model frame.
        image_size: ``(H, W)`` of the training images (square).
        box_fraction: median longer side of the object's box over the image side in
            training; :meth:`prepare` scales photos to match.
        mesh_center, mesh_scale: ``X_model = mesh_scale * (X_file - mesh_center)``.
        center_on: what the training renders put at the image centre: ``"object"`` (the
            object's centre) or ``"box"`` (its 2D box's centre); :meth:`crop_box` crops
            the same way (``BuildConfig.center_on``).
        meta: JSON information (mesh file name and SHA-256, training config, ...).
    """

    backbone: FeatureBackbone
    nmesh: NeuralMesh
    image_size: tuple[int, int]
    box_fraction: float
    mesh_center: torch.Tensor
    mesh_scale: float
    meta: dict = field(default_factory=dict)
    center_on: str = "object"

    def __post_init__(self) -> None:
        if self.nmesh.feature_dim != self.backbone.feature_dim:
            raise ValueError(f"nmesh: feature_dim {self.nmesh.feature_dim} differs from the backbone's "
                             f"{self.backbone.feature_dim}")
        if not (0 < self.box_fraction <= 2):
            raise ValueError(f"box_fraction: expected in (0, 2], got {self.box_fraction}")
        if self.center_on not in ("object", "box"):
            raise ValueError(f"center_on: expected 'object' or 'box', got {self.center_on!r}")
        if not (self.mesh_scale > 0 and math.isfinite(self.mesh_scale)):
            raise ValueError(f"mesh_scale: expected > 0, got {self.mesh_scale}")
        object.__setattr__(self, "image_size", tuple(int(x) for x in self.image_size))
        object.__setattr__(self, "mesh_center", torch.as_tensor(self.mesh_center, dtype=torch.float64).reshape(3))
        self.backbone.eval()

    @property
    def device(self) -> torch.device:
        """Where the backbone's weights are (:meth:`fit` moves photos and ``K`` there)."""
        return next(self.backbone.parameters()).device

    # ------------------------------------------------------------------- frames

    def to_file_frame(self, R: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-frame pose -> mesh-file pose: ``(R, t / s - R c)`` (module docstring)."""
        c = self.mesh_center.to(R.dtype).to(R.device)
        return R, t / self.mesh_scale - R @ c

    # --------------------------------------------------------------- preprocessing

    def prepare(
        self, image: torch.Tensor, K: torch.Tensor, bbox: Sequence[float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float, float]]:
        """Crop and resize one photo for the backbone (module docstring).

        Args:
            image: ``(3, H, W)`` float RGB in [0, 1].
            K: ``(3, 3)`` intrinsics of ``image`` (pixels).
            bbox: ``(x0, y0, x1, y1)`` object box (pixels), or None for the whole image.

        Returns:
            ``(crop (3, S, S), K_crop (3, 3), (x0, y0, scale))`` with ``S`` the model's
            image side and the crop's pixel map as in :func:`crop_intrinsics`.
        """
        check_shape("image", image, [3, "H", "W"])
        check_floating("image", image)
        check_finite("image", image)
        H, W = image.shape[-2:]
        S = self.image_size[0]
        if bbox is None:
            side = float(max(H, W))
            cx, cy = (W - 1) / 2.0, (H - 1) / 2.0
        else:
            bx0, by0, bx1, by1 = (float(x) for x in bbox)
            if not (bx1 > bx0 and by1 > by0) or not all(map(math.isfinite, (bx0, by0, bx1, by1))):
                raise ValueError(f"bbox: expected x0 < x1 and y0 < y1, got {list(bbox)}")
            side = max(bx1 - bx0, by1 - by0) / self.box_fraction
            cx, cy = (bx0 + bx1) / 2.0, (by0 + by1) / 2.0
        scale = side / S
        x0 = cx - scale * (S - 1) / 2.0
        y0 = cy - scale * (S - 1) / 2.0
        crop = crop_image(image, x0, y0, scale, S)
        return crop, crop_intrinsics(K.to(image.dtype), x0, y0, scale), (x0, y0, scale)

    # ---------------------------------------------------------------------- fitting

    @torch.no_grad()
    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(B, C, h, w)`` of prepared images ``(B, 3, S, S)``."""
        return self.backbone(images)

    def fit(
        self,
        images: Sequence[torch.Tensor],
        K: Sequence[torch.Tensor] | torch.Tensor,
        *,
        bbox: Sequence[Sequence[float] | None] | None = None,
        config: FitConfig = FitConfig(),
        recrop: bool = True,
        init: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> list[PoseResult]:
        """Fit the object's pose in each photo (one batch for all of them).

        Args:
            images: photos ``(3, H_i, W_i)`` in [0, 1] (sizes may differ), or a
                ``(B, 3, H, W)`` tensor, on any device (they are moved to the model's).
            K: per photo ``(3, 3)`` intrinsics (a list or a ``(B, 3, 3)`` tensor; one
                ``(3, 3)`` is shared).
            bbox: per photo a box ``(x0, y0, x1, y1)`` or None (a list of them), or None.
            config: :class:`FitConfig`; its ``crop_ensemble`` and ``crop_shift`` set the
                last pass, refinements on shifted crops averaged (module docstring;
                ``crop_ensemble=0`` skips it, e.g. for faster tracking).
            recrop: without a box, crop around the first fit and fit again (the grid's
                starts plus the first fit's pose); the second fit is kept when it scores
                higher, or when the first found the object covering much less (or more)
                of the image than in training or far from its centre (module docstring).
                About twice the time of one fit.
            init: optional poses ``(R (B, 3, 3), t (B, 3))`` in the model frame for each
                photo's own ``K`` (as returned; e.g. the previous video frame's): a photo
                without a box is cropped around the pose's projection, and the pose is
                refined beside the grid's starts (``config.top_k=0``: the only start, no
                grid search; faster, for tracking). No recrop pass follows.

        Returns:
            One :class:`PoseResult` per photo in the **model frame**, with ``R, t`` valid
            for the photo's own ``K`` (use :meth:`to_file_frame` for the mesh file's frame);
            ``u0, v0`` are photo pixels; ``seconds`` covers the whole call per photo.
        """
        start = time.perf_counter()
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = list(images)
        images = [image.to(self.device) if isinstance(image, torch.Tensor) else image for image in images]
        b = len(images)
        if b == 0:
            return []
        if isinstance(K, torch.Tensor) and K.dim() == 2:
            Ks = [K] * b
        else:
            Ks = list(K)
        Ks = [k.to(self.device) if isinstance(k, torch.Tensor) else k for k in Ks]
        if len(Ks) != b:
            raise ValueError(f"K: expected {b} intrinsics (one per image), got {len(Ks)}")
        boxes = list(bbox) if bbox is not None else [None] * b
        if len(boxes) != b:
            raise ValueError(f"bbox: expected {b} boxes or None (one per image), got {len(boxes)}")
        given = boxes
        if init is not None:
            R0, t0 = check_init_poses(init, b, self.device)
            boxes = [box if box is not None else self.crop_box(R0[i], t0[i], Ks[i]) for i, box in enumerate(boxes)]
            results = self._fit_once(images, Ks, boxes, config, init=(R0, t0))
            recrop = False
        else:
            results = self._fit_once(images, Ks, boxes, config)
        if recrop:
            again = [i for i in range(b) if boxes[i] is None]
            if again:
                new_boxes = [self.crop_box(results[i].R, results[i].t, Ks[i]) for i in again]
                first = (torch.stack([results[i].R for i in again]), torch.stack([results[i].t for i in again]))
                redo = self._fit_once([images[i] for i in again], [Ks[i] for i in again], new_boxes, config,
                                      init=first)
                for i, r in zip(again, redo):
                    if r.score > results[i].score or self._needs_recrop(results[i], images[i], Ks[i]):
                        results[i] = r
        if config.crop_ensemble and config.steps:
            results = self._crop_ensemble(images, Ks, given, results, config)
        seconds = (time.perf_counter() - start) / b
        return [replace(r, seconds=seconds) for r in results]

    def _crop_ensemble(self, images, Ks, boxes, results: list[PoseResult], config: FitConfig) -> list[PoseResult]:
        """Each result refined again from itself on ``config.crop_ensemble`` crops shifted
        by ``config.crop_shift`` input pixels around the photo's box (or, without one,
        around :meth:`crop_box` of the result), averaged (:attr:`FitConfig.crop_ensemble`).
        The score is the members' mean; the loss curve stays the fit's."""
        n = int(config.crop_ensemble)
        directions = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + 2 * math.pi * j / n for j in range(n))]
        shifted = []
        for result, K, box in zip(results, Ks, boxes):
            box = box if box is not None else self.crop_box(result.R, result.t, K)
            shifted += [self.moved_box(box, config.crop_shift * cx, config.crop_shift * cy) for cx, cy in directions]
        which = [i for i in range(len(results)) for _ in range(n)]
        init = (torch.stack([results[i].R for i in which]), torch.stack([results[i].t for i in which]))
        members = self._fit_once([images[i] for i in which], [Ks[i] for i in which], shifted,
                                 replace(config, top_k=0), init=init)
        R = mean_rotation(torch.stack([m.R for m in members]).view(len(results), n, 3, 3))
        t = torch.stack([m.t for m in members]).view(len(results), n, 3).mean(dim=1)
        scores = torch.tensor([m.score for m in members]).view(len(results), n).mean(dim=1).tolist()
        K = torch.stack([k.to(R.dtype) for k in Ks])
        return pose_results(R, t, K, scores, [r.loss_curve for r in results])

    def _fit_once(self, images, Ks, boxes, config: FitConfig, init=None) -> list[PoseResult]:
        crops, kcs, maps = [], [], []
        for image, K, box in zip(images, Ks, boxes):
            crop, kc, m = self.prepare(image, K, box)
            crops.append(crop)
            kcs.append(kc)
            maps.append(m)
        batch = torch.stack(crops)
        feats = self.feature_map(batch)
        K_crop = torch.stack(kcs).to(feats.dtype)
        out = fit_pose(feats, self.nmesh, K_crop, image_size=self.image_size,
                       stride=self.backbone.stride, config=config, init=init)
        results = []
        for r, (x0, y0, scale) in zip(out, maps):
            results.append(replace(r, u0=x0 + scale * r.u0, v0=y0 + scale * r.v0))
        return results

    def projected_box(self, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor) -> list[float]:
        """Box ``(x0, y0, x1, y1)`` of the neural mesh's projected vertices (pixels)."""
        verts = self.nmesh.verts.to(R.dtype)
        uv = project_points(verts[None], K.to(R.dtype), R, t)[0][0]
        lo, hi = uv.min(0).values, uv.max(0).values
        return [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]

    def crop_box(self, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor) -> list[float]:
        """The box to crop around (:meth:`prepare`) to see the object at pose ``(R, t)`` as
        the training renders showed it: the size of :meth:`projected_box`, centred where the
        object's centre (the model frame's origin) projects, which is where the renders put
        the image centre (up to the build's ``center_jitter``). The 2D box's own centre can
        be several pixels away from it (module docstring). For a model whose renders
        centred the 2D box (``center_on="box"``), :meth:`projected_box` itself."""
        x0, y0, x1, y1 = self.projected_box(R, t, K)
        if self.center_on == "box":
            return [x0, y0, x1, y1]
        o = project_points(torch.zeros(1, 1, 3, dtype=R.dtype, device=R.device), K.to(R.dtype)[None],
                           R[None], t[None])[0][0, 0]
        hw, hh = (x1 - x0) / 2.0, (y1 - y0) / 2.0
        u, v = float(o[0]), float(o[1])
        return [u - hw, v - hh, u + hw, v + hh]

    def moved_box(self, box: Sequence[float], dx: float, dy: float) -> list[float]:
        """``box (x0, y0, x1, y1)`` moved so that the crop :meth:`prepare` makes around it
        moves by ``(dx, dy)`` of the model's input pixels."""
        x0, y0, x1, y1 = (float(v) for v in box)
        scale = max(x1 - x0, y1 - y0) / self.box_fraction / self.image_size[0]  # photo pixels per input pixel
        return [x0 + dx * scale, y0 + dy * scale, x1 + dx * scale, y1 + dy * scale]

    def photo_fraction(self, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor, size: Sequence[int]) -> float:
        """How much of a photo of ``size (H, W)`` the object spans at pose ``(R, t)``: the
        longer side of :meth:`projected_box` over the photo's longer side (the training
        renders' median is :attr:`box_fraction`)."""
        x0, y0, x1, y1 = self.projected_box(R, t, K)
        return max(x1 - x0, y1 - y0) / max(int(size[0]), int(size[1]))

    @property
    def trained_wide(self) -> bool:
        """Whether the build's training renders included wider framings (its
        ``scene["zoom_out_probability"] > 0``, e.g. the ``"wide"`` build preset)."""
        scene = self.meta.get("build_config", {}).get("scene", {})
        return float(scene.get("zoom_out_probability", 0.0)) > 0.0

    @property
    def small_share(self) -> float:
        """The object's share of a photo (:meth:`photo_fraction`) under which fits without
        a box are often wrong: :data:`SMALL_IN_PHOTO` (or :data:`SMALL_IN_PHOTO_WIDE` for
        a model :attr:`trained_wide`) of the training framing, :attr:`box_fraction`."""
        return (SMALL_IN_PHOTO_WIDE if self.trained_wide else SMALL_IN_PHOTO) * self.box_fraction

    def small_in_photo(self, result: PoseResult, size: Sequence[int], K: torch.Tensor) -> bool:
        """Whether a fit found the object spanning less of the photo than :attr:`small_share`:
        without a box such fits are often wrong (module docstring), so give one."""
        return self.photo_fraction(result.R, result.t, K, size) < self.small_share

    def _needs_recrop(self, result: PoseResult, image: torch.Tensor, K: torch.Tensor) -> bool:
        H, W = image.shape[-2:]
        x0, y0, x1, y1 = self.projected_box(result.R, result.t, K)
        side = max(H, W)
        frac = max(x1 - x0, y1 - y0) / side
        off = max(abs((x0 + x1) / 2 - (W - 1) / 2), abs((y0 + y1) / 2 - (H - 1) / 2)) / side
        return frac < 0.6 * self.box_fraction or frac > 1.5 * self.box_fraction or off > 0.15

    # ------------------------------------------------------------------------- I/O

    def save(self, directory: str | os.PathLike) -> None:
        """Write the model directory (module docstring), atomically: a temporary
        directory beside it is renamed into place (an existing directory is replaced)."""
        from safetensors.torch import save_file

        with atomic_directory(directory) as work:
            state = {k: v.detach().to("cpu").contiguous() for k, v in self.backbone.state_dict().items()}
            save_file(state, str(work / BACKBONE_FILE))
            self.nmesh.save(work / MESH_DIR)
            info = {
                "format": MODEL_FORMAT,
                "format_version": MODEL_VERSION,
                "backbone": self.backbone.config.to_dict(),
                "image_size": list(self.image_size),
                "box_fraction": float(self.box_fraction),
                "mesh_center": [float(x) for x in self.mesh_center],
                "mesh_scale": float(self.mesh_scale),
                "center_on": self.center_on,
                "backbone_sha256": file_sha256(work / BACKBONE_FILE),
                "meta": json.loads(json.dumps(self.meta)),
            }
            (work / MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike, device: torch.device | str = "cpu") -> PoseModel:
        """Read a model directory written by :meth:`save`.

        Raises:
            ModelError: not a directory, missing / corrupt / mismatched files (one line
                naming the file).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise ModelError(f"{directory}: no such model directory")
        info_path = directory / MODEL_FILE
        if not info_path.is_file():
            raise ModelError(f"{info_path}: missing: {directory} is not a pose model directory")
        try:
            info = json.loads(info_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ModelError(f"{info_path}: cannot read JSON ({' '.join(str(error).split())[:120]})") from None
        if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
            raise ModelError(f"{info_path}: not a pose model (format {MODEL_FORMAT!r} expected)")
        if info.get("format_version") != MODEL_VERSION:
            raise ModelError(f"{info_path}: unsupported format_version {info.get('format_version')!r}")
        weights = directory / BACKBONE_FILE
        if not weights.is_file():
            raise ModelError(f"{weights}: missing (expected beside {MODEL_FILE})")
        if file_sha256(weights) != info.get("backbone_sha256"):
            raise ModelError(f"{weights}: checksum does not match {MODEL_FILE} (corrupt or from another save)")
        try:
            config = BackboneConfig.from_dict(info["backbone"])
            image_size = tuple(int(x) for x in info["image_size"])
            box_fraction = float(info["box_fraction"])
            center = torch.tensor([float(x) for x in info["mesh_center"]], dtype=torch.float64)
            scale = float(info["mesh_scale"])
            center_on = str(info.get("center_on", "object"))  # absent in models saved before it
            meta = dict(info.get("meta", {}))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"{info_path}: malformed ({error})") from None
        try:
            state = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise ModelError(f"{weights}: cannot read safetensors ({' '.join(str(error).split())[:160]})") from None
        backbone = FeatureBackbone(config, seed=0)
        try:
            backbone.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ModelError(f"{weights}: does not fit the backbone config ({' '.join(str(error).split())[:160]})") from None
        nmesh = NeuralMesh.load(directory / MESH_DIR)
        try:
            model = cls(backbone.to(device), nmesh.to(device), image_size, box_fraction, center, scale, meta,
                        center_on)
        except ValueError as error:
            raise ModelError(f"{info_path}: {error}") from None
        return model


def box_fractions(samples: Sequence[dict[str, Any]]) -> list[float]:
    """For each of ``samples`` (schema dicts with ``image``) that has a ``bbox``, the box's
    longer side over the image's longer side (boxes in inclusive pixels)."""
    fracs = []
    for s in samples:
        if "bbox" not in s:
            continue
        x0, y0, x1, y1 = (float(v) for v in s["bbox"])
        H, W = s["image"].shape[-2:]
        fracs.append(max(x1 - x0 + 1, y1 - y0 + 1) / max(H, W))
    return fracs


def box_fraction_of(samples: Sequence[dict[str, Any]]) -> float:
    """Median of :func:`box_fractions` (used to set :attr:`PoseModel.box_fraction`)."""
    fracs = box_fractions(samples)
    if not fracs:
        raise ValueError("samples: no sample has a bbox")
    return float(torch.tensor(fracs).median())

