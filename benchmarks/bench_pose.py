"""Pose accuracy under occlusion: NeMo render-and-compare vs a regression baseline.

Both methods are trained on the **same data** (the synthetic renders of one mesh that
:func:`neural_mesh.build.build_model` uses, in the same order) with the **same backbone**
preset and the same number of steps:

(i)  render-and-compare: the :class:`~neural_mesh.model.PoseModel` of
     :func:`~neural_mesh.build.build_model` (NeMo's contrastive features + fitting), the
     whole image given without a box (the object is located from the features);
(ii) regression: :class:`~neural_mesh.regression.PoseRegressor` (PoseContrast-style angle
     bins + in-bin offsets on the backbone's pooled features), given a crop around the
     object's true box at its training scale (PoseContrast's setting; render-and-compare
     gets no box, unless ``--box``: then both get the true box, the papers' protocol).

Test sets are held out: the same engine with its default scenes (whatever the build's
scene settings) and another seed (other viewpoints, colours, lights and procedural
backgrounds) at occlusion levels L0 (none), L1 (20-40 % of the
object hidden), L2 (40-60 %), L3 (60-80 %); with ``--renderer raycast`` they are drawn by
:mod:`datasets.raycast` instead, a renderer the models never saw (ray casting, its own
materials and lighting, floors with cast shadows, 3D occluders), and ``--raycast-off``
switches some of its effects off (:data:`datasets.raycast.EFFECTS`; the same scenes
otherwise), to find which of them a model trained on the engine's renders pays for.
``--test-seed S`` draws another test set of the same kind: choose settings on one, report
on others (``benchmarks/pool_pose.py`` pools the ``--json`` results of several seeds).
``--zoom-out F`` frames the same scenes F times wider (the object a smaller part of a
larger photo, anywhere in its middle half), as users' photos often are: without ``--box``
the fit must find the object first.
The table gives Acc@pi/6, Acc@pi/18 and the median rotation error per level and method,
and seconds per image: render-and-compare fits the images of a level in batches of
``--batch`` (the "batched" time) and a few images one at a time (the "single" time, the
default interactive case). The last three
columns say where the errors come from, the features or the search. "margin at truth" is the model's
evidence for the *true* pose: the mean margin of the rendered object's pixels over the
clutter model and the share of them the object explains better
(:func:`neural_mesh.fitting.object_margins`); it tracks training quality with less noise
than accuracy on a few dozen images. "from truth" is the median error of the refinement
started at the true pose (``PoseModel.fit(init=...)`` with ``FitConfig(top_k=0)``): how far
the loss's own minimum lies from the truth. "search misses" splits the fit's failures
(error >= 30 deg): "2 of 5" means that for 2 of them the pose refined from the truth is
right (within 30 deg) and scores higher than the fitted one refined again on the same
crop (the search missed the better basin); for the other 3 the loss itself prefers a
wrong pose, and only better features can help. ``--crop-shifts 0 2 4 8`` adds a table of
the margin at truth on crops around the true box moved by that many input pixels: how
much the features depend on where the crop puts the object.

    .venv/bin/python benchmarks/bench_pose.py [--mesh demos/data/chair.obj] [--steps 2000] [--occlusion 0 0.5]
        [--center-jitter 0.04] [--center-on object|box] [--backbone small] [--image-size 128] [--output-stride 8]
        [--mesh-kind remesh|cuboid] [--num-verts 400] [--train NAME=VALUE ...] [--seed 0]
        [--finetune-steps N --finetune-occlusion LOW HIGH [--finetune-lr LR] [--finetune-center-jitter J]
        [--finetune-lighting full] [--finetune-room-probability P]] [--lighting full] [--room-probability P]
        [--n 40] [--levels 0 1 2 3] [--batch 8] [--model DIR] [--cache DIR] [--loss nemo]
        [--polish 1] [--fit NAME=VALUE ...] [--box [--box-shift PX]] [--renderer raycast [--raycast-off EFFECT ...]]
        [--crop-shifts PX ...] [--test-seed S] [--zoom-out F] [--preset accurate|wide]
        [--device cuda] [--json FILE]

Models are built (or loaded) through the cache of :mod:`neural_mesh.build` (the regressor
beside it), so a second run only evaluates. Both resume: an interrupted build or baseline
goes on from its last checkpoint when the same command is run again. ``--device cuda``
trains, fits and times on a GPU (a model built on one device loads on any other); test
images are always rendered on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from datasets.raycast import EFFECTS as RAYCAST_EFFECTS
from datasets.synthetic import LIGHTINGS, ZOOM_OUT_MAX_JITTER
from neural_mesh.build import (BUILD_PRESETS, SCENE_FIELDS, TRAIN_FIELDS, BuildConfig, build_model, cache_key,
                               default_cache_dir)
from neural_mesh.backbones import OUTPUT_STRIDES, PRESETS, feature_intrinsics
from neural_mesh.fitting import LOSSES, FitConfig, object_margins
from neural_mesh.metrics import rotation_error
from neural_mesh.model import PoseModel, box_fraction_of, box_fractions
from neural_mesh.neural_mesh import MESH_KINDS, ModelError
from render.allocator import tune_cpu_allocator
from render.cli import assignments

REPO = Path(__file__).resolve().parents[1]
#: seed of the held-out test renders (training uses BuildConfig.seed, 0 by default)
TEST_SEED = 90_210


#: test-image renderers: the training engine's, or the independent ray caster
RENDERERS = ("engine", "raycast")


def test_set(mesh: Path, build: BuildConfig, level: int, n: int, renderer: str = "engine",
             raycast_off: Sequence[str] = (), seed: int = TEST_SEED, zoom_out: float = 1.0):
    """``n`` held-out samples of ``mesh`` at occlusion ``level``, drawn by the synthetic
    engine (``"engine"``) or by :mod:`datasets.raycast` (``"raycast"``: another renderer
    with its own shading, 3D scenes and 3D occluders; ``raycast_off`` switches some of its
    effects off, :data:`datasets.raycast.EFFECTS`, the scenes otherwise the same).
    Another ``seed`` draws another test set (a validation set to choose settings on,
    or fresh images to confirm a choice made on the default one). ``zoom_out`` > 1 frames
    the photos wider, as a user's photo may be: the camera that many times farther away,
    the image that many times larger (the object keeps its pixels and becomes a smaller
    part of the photo) and the object's centre that many times farther from the image
    centre, up to :data:`datasets.synthetic.ZOOM_OUT_MAX_JITTER`; the same viewpoints otherwise."""
    size = int(round(build.image_size * zoom_out))
    if renderer == "raycast":
        from datasets.raycast import CENTER_JITTER, raycast_samples

        return raycast_samples(mesh, n, level, size, seed=seed, off=raycast_off, distance_scale=zoom_out,
                               center_jitter=min(ZOOM_OUT_MAX_JITTER, CENTER_JITTER * zoom_out))
    from datasets.synthetic import SyntheticConfig, SyntheticDataset
    from neural_mesh.training import synthetic_data

    # the engine's default scenes at the build's image size, whatever the build's scene
    # settings: every build is tested on the same images
    syn = SyntheticConfig.from_dict(synthetic_data((size, size), mesh=mesh)["config"])
    syn = dataclasses.replace(syn, occlusion=level, vertex_projections=False)
    if zoom_out != 1:
        near, far = syn.distance_range
        syn = dataclasses.replace(syn, distance_range=(near * zoom_out, far * zoom_out),
                                  center_jitter=min(ZOOM_OUT_MAX_JITTER, syn.center_jitter * zoom_out))
    ds = SyntheticDataset(syn, seed=seed + 1000 * level, length=n)
    return [ds[i] for i in range(n)]


def summary(err_deg: torch.Tensor) -> dict:
    """The accuracies and median of the errors, and the errors themselves (per test image,
    in order: two runs on the same test set compare image by image)."""
    return {
        "acc_pi6": float((err_deg < 30).double().mean()),
        "acc_pi18": float((err_deg < 10).double().mean()),
        "median_deg": float(err_deg.median()) if err_deg.numel() % 2 else float(err_deg.double().quantile(0.5)),
        "errors_deg": [round(float(e), 3) for e in err_deg],
    }


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work is done (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def moved_boxes(samples, shift: float) -> list[list[float]]:
    """Each sample's true box with its centre moved ``shift`` photo pixels, sample ``i``
    in the direction ``i`` times the golden angle (spread evenly, no randomness): a
    detector's box that is off by that much."""
    golden = math.pi * (3 - math.sqrt(5))
    out = []
    for i, s in enumerate(samples):
        x0, y0, x1, y1 = (float(v) for v in s["bbox"])
        dx, dy = shift * math.cos(i * golden), shift * math.sin(i * golden)
        out.append([x0 + dx, y0 + dy, x1 + dx, y1 + dy])
    return out


def eval_nemo(model: PoseModel, samples, batch: int, singles: int,
              config: FitConfig = FitConfig(), boxes: list | None = None) -> tuple[dict, torch.Tensor, list]:
    """Fit every sample (batched, then a few singly for the time), given ``boxes`` (one
    ``(x0, y0, x1, y1)`` per sample) or none; returns the summary, the errors in degrees
    and the fitted ``(R, t)`` per sample (CPU). The summary also lists each fit's score
    (``scores``) and how much of the photo its object spans (``photo_fractions``,
    :meth:`PoseModel.photo_fraction`; ``true_photo_fractions`` of the true boxes,
    :func:`~neural_mesh.model.box_fractions`), to see what tells right fits from wrong
    ones, and how many of the wrong (30 deg or more) and right fits were flagged (:attr:`PoseResult.doubtful`): ``doubtful`` ``{"wrong": [flagged,
    of], "right": [flagged, of]}``."""
    poses, scores, fractions, doubtful, t_batched = [], [], [], [], 0.0
    device = model.device
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        t0 = _clock(device)
        res = model.fit([s["image"] for s in chunk], [s["K"] for s in chunk], config=config,
                        bbox=boxes[i:i + batch] if boxes is not None else None)
        t_batched += _clock(device) - t0
        poses += [(r.R.cpu(), r.t.cpu()) for r in res]
        scores += [float(r.score) for r in res]  # unrounded: the flags are these <= 0
        doubtful += [r.doubtful for r in res]
        fractions += [round(model.photo_fraction(r.R, r.t, s["K"].to(r.R), s["image"].shape[-2:]), 4)
                      for r, s in zip(res, chunk)]
    t_single = 0.0
    for i, s in enumerate(samples[:singles]):
        t0 = _clock(device)
        model.fit([s["image"]], [s["K"]], config=config, bbox=[boxes[i]] if boxes is not None else None)
        t_single += _clock(device) - t0
    R = torch.stack([R for R, _ in poses]).double()
    R_gt = torch.stack([s["R"] for s in samples]).double()
    err = rotation_error(R, R_gt) * 180 / math.pi
    out = summary(err)
    out["s_per_image_batched"] = t_batched / len(samples)
    out["s_per_image_single"] = t_single / max(singles, 1)
    truth = [round(f, 4) for f in box_fractions(samples)]
    flagged, wrong = torch.tensor(doubtful, dtype=torch.bool), err >= 30
    out.update(scores=scores, photo_fractions=fractions, true_photo_fractions=truth,
               doubtful={"wrong": [int((flagged & wrong).sum()), int(wrong.sum())],
                         "right": [int((flagged & ~wrong).sum()), int((~wrong).sum())]})
    return out, err, poses


def true_pose_margins(model: PoseModel, samples, batch: int,
                      boxes: list | None = None) -> dict[str, float]:
    """The features' evidence for the *true* pose (:func:`neural_mesh.fitting.object_margins`,
    images prepared as :meth:`PoseModel.fit` prepares them without a box, or around
    ``boxes``, one ``(x0, y0, x1, y1)`` per sample): the mean margin over the object's
    pixels and the fraction of them the object explains better than clutter, averaged over
    the images. A training-quality number independent of the search."""
    means, positives = [], []
    device = model.device
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        chunk_boxes = boxes[i:i + batch] if boxes is not None else [None] * len(chunk)
        prepared = [model.prepare(s["image"].to(device), s["K"].to(device), box) for s, box in zip(chunk, chunk_boxes)]
        feats = model.feature_map(torch.stack([crop for crop, _, _ in prepared]))
        K_feat = feature_intrinsics(torch.stack([k for _, k, _ in prepared]).to(feats.dtype), model.backbone.stride)
        R = torch.stack([s["R"] for s in chunk]).to(device, feats.dtype)
        t = torch.stack([s["t"] for s in chunk]).to(device, feats.dtype)
        mean, positive = object_margins(feats, model.nmesh, R, t, K_feat)
        means.append(mean.cpu())
        positives.append(positive.cpu())
    mean, positive = torch.cat(means), torch.cat(positives)
    seen = ~mean.isnan()
    return {"mean": float(mean[seen].mean()) if seen.any() else float("nan"),
            "positive": float(positive[seen].mean()) if seen.any() else float("nan")}


def shifted_box(model: PoseModel, box, shift: float) -> list[float]:
    """``box (x0, y0, x1, y1)`` moved right so that the crop :meth:`PoseModel.prepare`
    makes around it moves by ``shift`` of the model's input pixels (the object appears
    ``shift`` pixels left of where the box puts it)."""
    return model.moved_box(box, shift, 0.0)


def crop_shift_margins(model: PoseModel, samples, batch: int, shifts) -> dict[str, dict[str, float]]:
    """:func:`true_pose_margins` on crops around each sample's true box, shifted by each of
    ``shifts`` input pixels: how much the features' evidence for the true pose depends on
    where the crop puts the object (convolutional features that were equivariant to
    translation would give the same numbers at every shift)."""
    return {f"{shift:g}": true_pose_margins(model, samples, batch,
                                            [shifted_box(model, s["bbox"].tolist(), shift) for s in samples])
            for shift in shifts}


def truth_started(model: PoseModel, samples, batch: int,
                  config: FitConfig = FitConfig()) -> tuple[dict[str, float], torch.Tensor, list]:
    """The fitting refined from the *true* pose only (no grid search; the photo cropped
    around the true pose's box): the ``summary`` of its rotation errors (where the loss's
    own minimum near the truth lies), the errors in degrees and the ``PoseResult``s."""
    config = dataclasses.replace(config, top_k=0)
    results = []
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        init = (torch.stack([s["R"] for s in chunk]), torch.stack([s["t"] for s in chunk]))
        results += model.fit([s["image"] for s in chunk], [s["K"] for s in chunk], config=config, init=init)
    R_gt = torch.stack([s["R"] for s in samples]).double()
    err = rotation_error(torch.stack([r.R.cpu() for r in results]).double(), R_gt) * 180 / math.pi
    return summary(err), err, results


def search_misses(model: PoseModel, samples, fitted: list, started: list, err: torch.Tensor,
                  started_err: torch.Tensor, config: FitConfig = FitConfig()) -> tuple[int, int]:
    """Of the fit's failures (``err >= 30`` deg), how many are the search's fault.

    ``fitted``: the fit's ``(R, t)`` per sample; ``started``, ``started_err``:
    :func:`truth_started`'s results and errors. Each failed pose is refined again on the
    truth-started run's feature map (the photo cropped around the true pose, as
    :meth:`PoseModel.crop_box` places it), so
    that both are local minima of one loss; a *miss* is a failure whose truth-started pose
    is right (within 30 deg) and scores higher there: the search did not reach the better
    basin. For the other failures the loss itself prefers a wrong pose.
    Returns ``(failures, misses)``."""
    bad = (err >= 30).nonzero().flatten().tolist()
    if not bad:
        return 0, 0
    device = model.device
    boxes = [model.crop_box(samples[i]["R"].to(device), samples[i]["t"].to(device), samples[i]["K"].to(device))
             for i in bad]
    init = (torch.stack([fitted[i][0] for i in bad]), torch.stack([fitted[i][1] for i in bad]))
    again = model.fit([samples[i]["image"] for i in bad], [samples[i]["K"] for i in bad], bbox=boxes, init=init,
                      config=dataclasses.replace(config, top_k=0))
    return len(bad), sum(int(started[i].score > r.score and started_err[i] < 30) for i, r in zip(bad, again))


def eval_regression(regressor, samples, batch: int, model: PoseModel) -> tuple[dict, torch.Tensor]:
    """The regressor on crops around the true box at its training scale (the box fraction
    of the build's renders, ``model.box_fraction``): a help render-and-compare does not get."""
    Rs, elapsed = [], 0.0
    device = next(regressor.parameters()).device
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            images = torch.stack([model.prepare(s["image"].to(model.device), s["K"].to(model.device),
                                                s["bbox"].tolist())[0] for s in samples[i:i + batch]])
            t0 = _clock(device)
            R, _ = regressor.predict(images.to(device))
            elapsed += _clock(device) - t0
            Rs.append(R.cpu())
    R = torch.cat(Rs).double()
    R_gt = torch.stack([s["R"] for s in samples]).double()
    err = rotation_error(R, R_gt) * 180 / math.pi
    out = summary(err)
    out["s_per_image_batched"] = elapsed / len(samples)
    out["s_per_image_single"] = float("nan")
    return out, err


def get_regressor(mesh: Path, build: BuildConfig, cache: Path, progress: bool, device: str | torch.device = "cpu"):
    """The regression baseline trained on the build's data, backbone and steps (cached),
    on ``device``. A build with a fine-tuning stage gets one too: the first stage's
    baseline (cached as its own) trained on for ``finetune_steps`` on the stage's renders
    with a fresh Adam at ``finetune_lr``. ``build.train`` (NeMo's loss settings) does not
    change the baseline, so builds that differ only there share one."""
    from neural_mesh.regression import RegressionConfig, load_regressor, train_regressor
    from neural_mesh.training import default_workers

    directory = cache / "regressors" / cache_key(mesh, dataclasses.replace(build, train={}))
    if (directory / "regressor.json").is_file():
        return load_regressor(directory, device=device)
    init = None
    if build.finetune_steps:
        init = get_regressor(mesh, build.first_stage(), cache, progress, device)
    config = RegressionConfig(backbone=PRESETS[build.backbone], batch_size=build.batch_size,
                              steps=build.finetune_steps or build.steps,
                              lr=build.finetune_lr if build.finetune_steps else build.lr, seed=build.seed)
    data = build.train_config(mesh).data  # the fine-tuning stage's renders when it has one
    # checkpoints beside the cache entry while it trains: an interrupted baseline resumes
    run_dir = cache / "regressor_runs" / directory.name
    result = train_regressor(config, directory, data=data, progress=progress, device=device,
                             workers=default_workers(device), run_dir=run_dir, resume=True, init=init)
    shutil.rmtree(run_dir, ignore_errors=True)
    return result.model.eval()


def fit_settings(items: list[str], **base) -> FitConfig:
    """A :class:`FitConfig` from ``base`` and ``NAME=VALUE`` strings
    (:func:`render.cli.assignments`).

    Raises:
        ValueError: a malformed item, an unknown name or a value the config refuses.
    """
    names = {f.name for f in dataclasses.fields(FitConfig)}
    changes = dict(base)
    for name, value in assignments(items).items():
        if name not in names:
            raise ValueError(f"{name!r} is not a FitConfig setting (one of {', '.join(sorted(names))})")
        changes[name] = value
    try:
        return FitConfig(**changes)
    except (TypeError, ValueError) as error:
        raise ValueError(str(error)) from None


def fit_changes(config: FitConfig) -> dict:
    """The settings of ``config`` that differ from :class:`FitConfig`'s defaults."""
    default = FitConfig()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(FitConfig)
            if getattr(config, f.name) != getattr(default, f.name)}


def model_build(model: PoseModel, fallback: BuildConfig) -> tuple[BuildConfig, int | str]:
    """The :class:`BuildConfig` a model was built with and its training steps (from its
    ``meta``); ``fallback`` and the recorded steps (or ``"?"``) for a model trained
    otherwise (``demos/train_nemo.py``)."""
    recorded = model.meta.get("build_config")
    if isinstance(recorded, dict):
        try:
            build = BuildConfig(**recorded)
            return build, build.steps
        except (TypeError, ValueError):
            pass
    return fallback, model.meta.get("train_steps", "?")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mesh", default=str(REPO / "demos" / "data" / "chair.obj"))
    p.add_argument("--preset", choices=list(BUILD_PRESETS), default="default",
                   help="a named build (neural_mesh.build.BUILD_PRESETS) whose settings the other build flags "
                        "change: 'accurate' is --steps 24000 --occlusion 0.2 0.7 --finetune-steps 4000 "
                        "--finetune-occlusion 0 0.5 --finetune-lr 3e-5 --finetune-room-probability 0.5; "
                        "'wide' is --steps 4000 --scene zoom_out_probability=0.3 "
                        "--scene background_scale_range=[0.03,1.2] (further --scene settings add to these)")
    p.add_argument("--steps", type=int, default=BuildConfig.steps, help="training steps of both methods")
    p.add_argument("--occlusion", type=float, nargs=2, metavar=("LOW", "HIGH"), default=BuildConfig.occlusion,
                   help="hidden fraction of the object under occluders in the training renders "
                        "(BuildConfig.occlusion; default none)")
    p.add_argument("--center-jitter", type=float, default=BuildConfig.center_jitter, metavar="J",
                   help="spread of the object's image position in the training renders, as a fraction of the "
                        "image size (BuildConfig.center_jitter)")
    p.add_argument("--center-on", choices=("object", "box"), default=BuildConfig.center_on,
                   help="what the training renders centre (up to the jitter): the object's centre, or its 2D "
                        "box's centre, as a crop around a given box (--box) does (BuildConfig.center_on)")
    p.add_argument("--finetune-steps", type=int, default=0, metavar="N",
                   help="then fine-tune the model (and the baseline) for N steps (BuildConfig.finetune_steps)")
    p.add_argument("--finetune-occlusion", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   default=BuildConfig.finetune_occlusion,
                   help="hidden fraction of the object in the fine-tuning renders (BuildConfig.finetune_occlusion)")
    p.add_argument("--finetune-lr", type=float, default=BuildConfig.finetune_lr,
                   help="peak learning rate of the fine-tuning stage (BuildConfig.finetune_lr)")
    p.add_argument("--finetune-center-jitter", type=float, metavar="J",
                   help="spread of the object's image position in the fine-tuning renders, as a fraction of the "
                        "image size (BuildConfig.finetune_center_jitter; default: the first stage's, "
                        f"{BuildConfig.center_jitter:g})")
    p.add_argument("--lighting", choices=LIGHTINGS, default=BuildConfig.lighting,
                   help="how the training renders are lit: Lambert only, or also highlights, self- and floor "
                        "shadows and a light-term gamma (BuildConfig.lighting)")
    p.add_argument("--backbone", choices=sorted(PRESETS), default=BuildConfig.backbone,
                   help="backbone of both methods (BuildConfig.backbone)")
    p.add_argument("--image-size", type=int, default=BuildConfig.image_size, metavar="S",
                   help="side of the square training renders and model input, in pixels "
                        "(BuildConfig.image_size)")
    p.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES, default=BuildConfig.output_stride,
                   help="input pixels per feature-map cell (BuildConfig.output_stride)")
    p.add_argument("--mesh-kind", choices=MESH_KINDS, default=BuildConfig.mesh_kind,
                   help="the neural mesh: a remesh of the surface, or NeMo's cuboid around it "
                        "(BuildConfig.mesh_kind)")
    p.add_argument("--num-verts", type=int, default=BuildConfig.num_verts, metavar="V",
                   help="vertex target of the neural mesh (BuildConfig.num_verts)")
    p.add_argument("--room-probability", type=float, default=BuildConfig.room_probability, metavar="P",
                   help="chance of a 3D floor and wall around the object in a training render "
                        "(BuildConfig.room_probability)")
    p.add_argument("--finetune-room-probability", type=float, metavar="P",
                   help="room_probability of the fine-tuning renders (BuildConfig.finetune_room_probability; "
                        "default: the first stage's)")
    p.add_argument("--finetune-lighting", choices=LIGHTINGS,
                   help="lighting of the fine-tuning renders (BuildConfig.finetune_lighting; default: the "
                        "first stage's)")
    p.add_argument("--train", action="append", default=[], metavar="NAME=VALUE",
                   help="another training setting of the build (BuildConfig.train: a TrainConfig setting of "
                        f"{', '.join(TRAIN_FIELDS)}), e.g. --train neighbor_radius=0.075 --train sampling=nearest: "
                        "NeMo's loss instead of the build's defaults (neural_mesh.build.TRAIN_DEFAULTS)")
    p.add_argument("--scene", action="append", default=[], metavar="NAME=VALUE",
                   help="another setting of the build's training renders (BuildConfig.scene: a SyntheticConfig "
                        f"setting of {', '.join(SCENE_FIELDS)}), e.g. --scene zoom_out_probability=0.3 --scene "
                        "background_scale_range=[0.03,1.2]")
    p.add_argument("--seed", type=int, default=BuildConfig.seed, metavar="S",
                   help="seed of the build's weights, banks and training renders (BuildConfig.seed): another "
                        "seed trains another model of the same settings, to see how much builds differ")
    p.add_argument("--n", type=int, default=40, help="test images per level")
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--singles", type=int, default=4, help="images fitted one at a time for the single-image time")
    p.add_argument("--model", help="a PoseModel directory instead of building one")
    p.add_argument("--no-regression", action="store_true")
    p.add_argument("--cache", help="cache root (default $MESHPOSE_CACHE or ~/.cache/meshpose)")
    p.add_argument("--loss", choices=LOSSES, default=FitConfig.loss,
                   help="render-and-compare loss (FitConfig.loss; 'nemo' is NeMo's)")
    p.add_argument("--polish", type=int, default=FitConfig.polish,
                   help="Adam restarts at each image's best pose (FitConfig.polish)")
    p.add_argument("--fit", action="append", default=[], metavar="NAME=VALUE",
                   help="any other FitConfig setting, e.g. --fit top_k=6 --fit num_azimuths=24 (VALUE as JSON: "
                        "numbers, true/false, null, [lists]; else a string)")
    p.add_argument("--box", action="store_true",
                   help="give render-and-compare the true box too, as the baseline always gets it (the "
                        "NeMo and PoseContrast papers' protocol: crops around the annotated box)")
    p.add_argument("--box-shift", type=float, default=0.0, metavar="PX",
                   help="with --box: move each true box's centre by PX photo pixels (a direction per image), "
                        "to see how precisely a detector must place the box")
    p.add_argument("--crop-shifts", type=float, nargs="+", metavar="PX",
                   help="also measure the evidence for the true pose (margin at truth) on crops around the "
                        "true box shifted by these many input pixels, e.g. 0 2 4 8 (a second table)")
    p.add_argument("--renderer", choices=RENDERERS, default="engine",
                   help="who draws the test images: the training engine, or datasets.raycast "
                        "(an independent ray caster with its own shading, floors, shadows, 3D occluders)")
    p.add_argument("--raycast-off", nargs="+", default=[], choices=RAYCAST_EFFECTS, metavar="EFFECT",
                   help="with --renderer raycast: switch these effects of its scenes off, the scenes otherwise the "
                        f"same, to see which of them costs accuracy ({', '.join(RAYCAST_EFFECTS)})")
    p.add_argument("--zoom-out", type=float, default=1.0, metavar="F",
                   help="test photos framed F times wider (F >= 1): the camera F times farther away and the image "
                        "F times larger, the object's centre up to a quarter of the image from its middle; the "
                        "object becomes a smaller part of the photo, as in a user's photo, and the fit without "
                        "--box must find it")
    p.add_argument("--test-seed", type=int, default=TEST_SEED, metavar="S",
                   help=f"seed of the test images (default {TEST_SEED}): another seed draws another test set, "
                        "to choose settings on images the final numbers are not measured on, or to confirm a "
                        "choice on fresh images")
    p.add_argument("--device", default="cpu", help="where to train, fit and time: cpu (default), cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results here (with the per-image errors and every fitting "
                                  "setting, 'fit_config', not only those changed by --fit)")
    preset, _ = p.parse_known_args(argv)  # the preset's settings become the build flags' defaults
    # (its train and scene settings: BuildConfig.preset adds --train and --scene to them)
    p.set_defaults(**{k: v for k, v in BUILD_PRESETS[preset.preset].items() if k not in ("train", "scene")})
    args = p.parse_args(argv)

    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        p.error(f"--device: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: this torch build sees no CUDA device")
    if args.raycast_off and args.renderer != "raycast":
        p.error("--raycast-off: switches off effects of the ray caster's scenes, so it needs --renderer raycast")
    if not (math.isfinite(args.zoom_out) and 1 <= args.zoom_out <= 8):
        p.error(f"--zoom-out: expected a factor in [1, 8], got {args.zoom_out:g}")
    if args.box_shift and not args.box:
        p.error("--box-shift: moves the true box, so it needs --box")
    if not (math.isfinite(args.box_shift) and args.box_shift >= 0):
        p.error(f"--box-shift: expected a distance >= 0 in pixels, got {args.box_shift:g}")
    try:
        fit_config = fit_settings(args.fit, loss=args.loss, polish=args.polish)
    except ValueError as error:
        p.error(f"--fit: {error}")
    try:
        train = assignments(args.train)
    except ValueError as error:
        p.error(f"--train: {error}")
    try:
        scene = assignments(args.scene)
    except ValueError as error:
        p.error(f"--scene: {error}")
    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    mesh = Path(args.mesh).resolve()
    try:
        build = BuildConfig.preset(
            args.preset, steps=args.steps, occlusion=tuple(args.occlusion), center_jitter=args.center_jitter,
            center_on=args.center_on, finetune_steps=args.finetune_steps,
            finetune_occlusion=tuple(args.finetune_occlusion), finetune_lr=args.finetune_lr,
            finetune_center_jitter=args.finetune_center_jitter, lighting=args.lighting,
            finetune_lighting=args.finetune_lighting, room_probability=args.room_probability,
            finetune_room_probability=args.finetune_room_probability, backbone=args.backbone,
            image_size=args.image_size, output_stride=args.output_stride, mesh_kind=args.mesh_kind,
            num_verts=args.num_verts, train=train, scene=scene, seed=args.seed)
    except ValueError as error:
        p.error(str(error))
    cache = Path(args.cache) if args.cache else default_cache_dir()
    steps = args.steps
    if args.model:
        try:
            model = PoseModel.load(args.model, device=device)
        except ModelError as error:
            p.error(str(error))
        # describe (and train the baseline like) the model's own build, when it has one
        build, steps = model_build(model, build)
    else:
        model = build_model(mesh, build, cache_dir=cache, device=device)
    regressor = None if args.no_regression else get_regressor(mesh, build, cache, progress=True, device=device)

    rows, results = [], {"mesh": mesh.name, "steps": steps, "occlusion": list(build.occlusion),
                         "center_jitter": build.center_jitter, "center_on": build.center_on,
                         "finetune_steps": build.finetune_steps, "finetune_occlusion": list(build.finetune_occlusion),
                         "finetune_lr": build.finetune_lr,
                         "finetune_center_jitter": build.finetune_center_jitter,
                         "lighting": build.lighting, "finetune_lighting": build.finetune_lighting,
                         "room_probability": build.room_probability,
                         "finetune_room_probability": build.finetune_room_probability,
                         "backbone": build.backbone, "image_size": build.image_size,
                         "output_stride": build.output_stride, "mesh_kind": build.mesh_kind,
                         "num_verts": build.num_verts, "train": build.train, "scene": build.scene, "seed": build.seed,
                         "n": args.n,
                         "loss": args.loss, "polish": args.polish, "fit": fit_changes(fit_config),
                         "fit_config": dataclasses.asdict(fit_config),
                         "box": args.box, "box_shift": args.box_shift, "renderer": args.renderer,
                         "raycast_off": args.raycast_off, "zoom_out": args.zoom_out, "test_seed": args.test_seed,
                         "device": str(device),
                         "levels": {}}
    for level in args.levels:
        samples = test_set(mesh, build, level, args.n, args.renderer, args.raycast_off, seed=args.test_seed,
                           zoom_out=args.zoom_out)
        occ = sum(float(s.get("occlusion", 0.0)) for s in samples) / len(samples)
        boxes = moved_boxes(samples, args.box_shift) if args.box else None
        nemo, err, fitted = eval_nemo(model, samples, args.batch, args.singles, fit_config, boxes)
        nemo["true_pose_margin"] = true_pose_margins(model, samples, args.batch)
        if args.crop_shifts:
            nemo["crop_shift_margins"] = crop_shift_margins(model, samples, args.batch, args.crop_shifts)
        nemo["truth_started"], started_err, started = truth_started(model, samples, args.batch, fit_config)
        failures, misses = search_misses(model, samples, fitted, started, err, started_err, fit_config)
        nemo["truth_started"].update(failures=failures, search_misses=misses)
        res = {"occlusion": occ, "object_fraction": box_fraction_of(samples), "render_and_compare": nemo}
        if regressor is not None:
            res["regression"] = eval_regression(regressor, samples, args.batch, model)[0]
        results["levels"][f"L{level}"] = res
        for method in ("render_and_compare", "regression"):
            if method in res:
                m = res[method]
                single = m["s_per_image_single"]
                single = "-" if math.isnan(single) else f"{single:.3f}"
                margin = m.get("true_pose_margin")
                margin = f"{margin['mean']:+.3f} ({margin['positive']:.0%})" if margin else "-"
                ts = m.get("truth_started")
                start = f"{ts['median_deg']:.1f}" if ts else "-"
                missed = f"{ts['search_misses']} of {ts['failures']}" if ts else "-"
                rows.append(f"| L{level} ({occ:3.0%} hidden) | {method:18s} | {m['acc_pi6']:8.1%} | {m['acc_pi18']:9.1%} | "
                            f"{m['median_deg']:6.1f} | {m['s_per_image_batched']:11.3f} | {single:>7s} | "
                            f"{margin:>15s} | {start:>10s} | {missed:>13s} |")
        print(rows[-1], file=sys.stderr, flush=True)

    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    drawn = "renders" if args.renderer == "engine" else "ray-cast images (another renderer)"
    if args.raycast_off:
        drawn = f"ray-cast images (another renderer; {', '.join(args.raycast_off)} off)"
    if args.zoom_out != 1:
        drawn += f" framed {args.zoom_out:g}x wider"
    low, high = build.occlusion
    occluders = f" with {low:.0%}-{high:.0%} occluded training renders" if high > 0 else ""
    if build.center_jitter != BuildConfig.center_jitter:
        occluders += f"{',' if occluders else ''} centre jitter {build.center_jitter:g}"
    if build.center_on != "object":
        occluders += f"{',' if occluders else ''} renders centred on the 2D box"
    if build.lighting != "lambert":
        occluders += f"{',' if occluders else ''} {build.lighting} lighting"
    if build.room_probability:
        occluders += f"{',' if occluders else ''} rooms in {build.room_probability:.0%}"
    if build.scene:
        occluders += f"{',' if occluders else ''} scene {json.dumps(build.scene, separators=(',', ':'))}"
    if build.finetune_steps:
        low, high = build.finetune_occlusion
        occluders += f", then {build.finetune_steps} fine-tuning steps on {low:.0%}-{high:.0%} occluded renders"
        if build.finetune_center_jitter is not None:
            occluders += f" with centre jitter {build.finetune_center_jitter:g}"
        if build.finetune_lighting is not None:
            occluders += f" and {build.finetune_lighting} lighting"
        if build.finetune_room_probability is not None:
            occluders += f" and rooms in {build.finetune_room_probability:.0%}"
    changed = ", ".join(f"{k}={v}" for k, v in fit_changes(fit_config).items() if k not in ("loss", "polish"))
    print(f"\nPose accuracy on held-out {drawn} of {mesh.name} ({args.n} images per level, "
          f"{steps} training steps{occluders}, {args.loss} loss{', ' + changed if changed else ''}, {where}"
          f"{'; render-and-compare given the true box' if args.box else ''}"
          f"{f' moved by {args.box_shift:g} px' if args.box_shift else ''})\n")
    print("| level            | method             | Acc@pi/6 | Acc@pi/18 | MedErr | s/img batch | s/img 1 "
          "| margin at truth | from truth | search misses |")
    print("|------------------|--------------------|---------:|----------:|-------:|------------:|--------:"
          "|----------------:|-----------:|--------------:|")
    for row in rows:
        print(row)
    shares = ", ".join(f"{level} {res['object_fraction']:.2f}" for level, res in results["levels"].items())
    print(f"\nThe object's box spans a median share of the test images' longer side of {shares} (in the "
          f"model's training renders: {model.box_fraction:.2f}, PoseModel.box_fraction)")
    flags = "; ".join(f"{level} {d['wrong'][0]} of {d['wrong'][1]} wrong, {d['right'][0]} of {d['right'][1]} right"
                      for level, d in ((level, res["render_and_compare"]["doubtful"])
                                       for level, res in results["levels"].items()))
    print(f"\nFits flagged as doubtful (score <= 0, PoseResult.doubtful; wrong: 30 deg or more): {flags}")
    if args.crop_shifts:
        print(f"\nMargin at truth (share explained) on crops around the true box, moved by this many of the "
              f"model's {model.image_size[0]}-pixel input pixels (stride {model.backbone.stride}); "
              f"'uncropped': the whole image, as the fit first sees it\n")
        heads = ["uncropped"] + [f"{shift:g} px" for shift in args.crop_shifts]
        print("| level |" + "|".join(f" {h:>15s} " for h in heads) + "|")
        print("|-------|" + "|".join("-" * 16 + ":" for _ in heads) + "|")
        for level, res in results["levels"].items():
            m = res["render_and_compare"]
            cells = [m["true_pose_margin"]] + [m["crop_shift_margins"][f"{shift:g}"] for shift in args.crop_shifts]
            print(f"| {level:5s} |" + "|".join(" {:>15s} ".format(f"{c['mean']:+.3f} ({c['positive']:.0%})") for c in cells) + "|")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run(argv=None) -> int:
    """:func:`main`, with Ctrl-C answered by one line instead of a traceback."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("\nbench_pose: interrupted; the same command goes on from the last checkpoint "
              "of whatever was training", file=sys.stderr)
        return 130


if __name__ == "__main__":
    torch.set_flush_denormal(True)  # before torch starts its threads (neural_mesh.training.flush_denormals)
    sys.exit(run())
