"""Fit the 3D pose of a known object in photos, given only its mesh file.

Usage::

    python demos/fit_pose.py IMAGE [IMAGE ...] --mesh MESH [--model DIR]
        [--focal F | --K FX FY CX CY] [--bbox X0 Y0 X1 Y1] [--out DIR] [--json]
    python demos/fit_pose.py            # the bundled example (see below)

For each photo it finds the rotation ``R`` and translation ``t`` with
``X_cam = R @ X_file + t``, where ``X_file`` are the coordinates of the mesh file (+y up)
and ``X_cam`` the OpenCV camera frame (x right, y down, z forward); see
``docs/conventions.md``.

**The model.** With ``--model DIR`` a pose model saved by
:meth:`neural_mesh.model.PoseModel.save` is used (a warning is printed when it was built
for another mesh file). Without it, one is built from the mesh
(:func:`neural_mesh.build.build_model`: NeMo trained on synthetic renders of the mesh;
about 7 minutes on 2 CPU cores with the defaults, progress on stderr) and cached in
``--cache DIR`` (default ``$MESHPOSE_CACHE`` or ``~/.cache/meshpose``), keyed by the
mesh file's content and the build settings, so later runs start at once.
``--build-steps``, ``--build-size`` and ``--build-occlusion`` change the build settings
(fewer steps or smaller renders: faster to build, worse poses), and
``--build-finetune-steps``, ``--build-finetune-occlusion``, ``--build-finetune-lr`` and
``--build-finetune-center-jitter`` add a fine-tuning stage; ``--build-train NAME=VALUE``
sets another training setting, e.g. the contrastive loss's ``neighbor_radius``, and
``--build-scene NAME=VALUE`` another setting of the training renders
(:class:`neural_mesh.build.BuildConfig`). ``--build-preset accurate`` starts from the
build that meets the synthetic accuracy targets for the bundled chair under occlusion too, on
our renders and another renderer's (:data:`neural_mesh.build.BUILD_PRESETS`: occluders
hiding 20-70% of the object in 24,000 steps of training renders, then 4,000 fine-tuning
steps on up to half of it with a 3D floor and wall behind half of the renders; 1.5 to 3
hours on 2 CPU cores, once); ``--build-preset wide`` the build that finds objects spanning
only a third of the photo without a box (some of its renders framed wider; about 15
minutes); the other ``--build-*`` flags change either. See the README's status section for
their accuracy, and for other meshes.

**The camera.** ``--K FX FY CX CY`` gives the intrinsics in pixels (OpenCV convention,
pixel centres at integer coordinates); ``--focal F`` sets ``fx = fy = F`` with the
principal point at the image centre. Without either, the focal length is **guessed** as
1.2 x the longer image side (about 45 degrees of field of view) with the principal point at
the image centre (:func:`render.default_intrinsics`); a wrong focal length mostly changes
the fitted distance. The same intrinsics and the same ``--bbox`` (the object's box in
pixels, ``x0 y0 x1 y1``) apply to every IMAGE, so give ``--bbox`` with one image (or with
photos that share a framing). Give it when the object spans less than about half of the
photo: without a box the fit must find the object itself, which fails more often the
smaller the object is (:attr:`neural_mesh.PoseModel.small_share`), unless the model was
built with ``--build-preset wide``; a warning on stderr names the images whose fitted
object looks that small. Another names the fits whose score is 0 or less (with or without
a box): the object drawn at the fitted pose explains the photo no better than the
background does. Such fits are mostly wrong (part of the background taken for a larger
object, say), though heavily occluded objects can score that low when fitted right
(:attr:`neural_mesh.fitting.PoseResult.doubtful`). Images are fitted in batches of
``FIT_BATCH`` (8), with a progress bar on stderr when there is more than one batch; each
batch's lines and files are out before the next batch starts, so an interrupted run
(Ctrl-C, exit code 130) keeps what it finished, and with ``--out DIR --resume`` a rerun
goes on from there (below).
Batching does not change the poses (each image is fitted on its own).

**Output.** One line per image on stdout; with ``--json`` exactly one JSON object per image
per line and nothing else on stdout (messages and progress go to stderr)::

    {"image": "photo.jpg", "R": [[...], [...], [...]], "t": [x, y, z],
     "azimuth_deg": a, "elevation_deg": e, "theta_deg": th, "distance": d,
     "score": s, "seconds": sec}

``R, t`` are in the mesh file's coordinates and units; ``distance`` is ``|t|``, the distance
from the camera centre to the mesh file's origin (file units). The angles are the viewpoint
of ``docs/conventions.md`` about the centre of the mesh's bounding box, in degrees;
``score`` is 1 - the fitting loss (:func:`neural_mesh.fitting.nemo_loss`): the evidence
for the object beyond clutter, averaged over the feature map; higher is better, 0 or less
means nothing better than clutter, and it is comparable only between fits by one model;
``seconds`` is the fitting time per image. With ``--out DIR``, every image also gets
``DIR/<stem>_pose.json`` (the same object) and ``DIR/<stem>_overlay.png``: the mesh
rendered at the fitted pose with the photo's intrinsics, blended over the photo, with its
silhouette outlined (images sharing a stem get ``<stem>_1``, ``<stem>_2``, ...). Files
are written atomically, batch by batch, and ``DIR/fit_pose_state.json`` records for each
stem a key of what made it (the image file's content, the model, ``K``, the box and the
fit settings). ``--resume`` skips the images whose key and files are already in ``DIR``
(an interrupted run goes on where it stopped); their records are printed first, read
from their JSON files.

**The bundled example.** Without IMAGE and ``--mesh``, the program fits
``demos/data/chair_example.png`` (a synthetic photo made by ``demos/make_example.py``) with
the camera of ``demos/data/chair_example.json`` and the mesh ``demos/data/chair.obj``,
writes ``outputs/fit_pose/`` in the repository (or ``--out``), and prints the fitted
pose, the true pose and the rotation and translation errors. The first run builds the
chair's model (about 7 minutes), later runs reuse it.

**Errors.** Bad input (a missing or unreadable image or mesh, bad intrinsics or box, a
missing or corrupt model directory, conflicting options) gives a one-line error
``fit_pose: error: ...`` naming the file or option, exit code 2, and writes nothing:
everything is read and checked before fitting. Grey, RGBA and 16-bit images are
converted to RGB; pixels are used as stored (an EXIF orientation tag is ignored, so
``K`` and ``--bbox`` refer to the stored pixel grid, as does the overlay).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import torch
from tqdm import tqdm

from datasets.realdata import read_image
from datasets.synthetic import LIGHTINGS
from neural_mesh.build import (BUILD_PRESETS, BUILD_TIMES, BuildConfig, build_model, default_cache_dir,
                               model_cache_path)
from neural_mesh.fitting import FitConfig, PoseResult
from neural_mesh.metrics import rotation_error
from neural_mesh.model import PoseModel
from neural_mesh.neural_mesh import file_sha256
from neural_mesh.overlay import overlay
from render import Mesh, default_intrinsics, intrinsics, load_mesh
from render.allocator import tune_cpu_allocator
from render.cli import Parser, assignments, non_negative_int, positive_float, positive_int

PROG = "fit_pose"
REPO = Path(__file__).resolve().parent.parent
EXAMPLE_JSON = REPO / "demos" / "data" / "chair_example.json"
EXAMPLE_OUT = REPO / "outputs" / "fit_pose"


class InputError(ValueError):
    """Bad command-line input; the message names the file or option and the problem."""


def _build_size(text: str) -> int:
    value = positive_int(text)
    if value < 32:
        raise argparse.ArgumentTypeError(f"expected a side of at least 32 pixels, got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    first = __doc__.split("\n\n")[0]
    p = Parser(
        prog=PROG,
        usage="python demos/fit_pose.py IMAGE [IMAGE ...] --mesh MESH [--model DIR] [--focal F | --K FX FY CX CY] "
              "[--bbox X0 Y0 X1 Y1] [--out DIR] [--json]\n       python demos/fit_pose.py            (the bundled example)",
        description=first,
        epilog=(
            "Without --focal or --K the focal length is guessed: 1.2 x the longer image side, "
            "principal point at the image centre (render.default_intrinsics). K, --bbox apply to "
            "every IMAGE. R, t in the output map the mesh file's coordinates to the camera "
            "(X_cam = R X_file + t, OpenCV axes); \"distance\" is |t|, camera to the mesh file's "
            "origin in file units; angles in degrees (docs/conventions.md). Without IMAGE and "
            "--mesh: fit the bundled example (demos/data/chair_example.*) and compare with its "
            "true pose. Full description: the docstring of demos/fit_pose.py."
        ),
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="photo(s) of the object (PNG, JPEG, ...)")
    p.add_argument("--mesh", type=Path, help="the object's mesh file (OBJ, PLY, OFF, STL, GLB), +y up")
    p.add_argument("--model", type=Path, metavar="DIR",
                   help="a saved pose model (default: build one from --mesh, cached)")
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--focal", type=positive_float, metavar="F", help="focal length in pixels (fx = fy = F, "
                     "principal point at the image centre)")
    cam.add_argument("--K", type=_number, nargs=4, metavar=("FX", "FY", "CX", "CY"),
                     help="intrinsics in pixels (OpenCV; pixel centres at integers)")
    p.add_argument("--bbox", type=_number, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                   help="the object's box in pixels (applies to every IMAGE); give it when the object spans "
                        "less than about half of the photo")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write <stem>_pose.json and <stem>_overlay.png per image here")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout, nothing else")
    adv = p.add_argument_group("advanced")
    adv.add_argument("--cache", type=Path, metavar="DIR",
                     help="model cache root (default $MESHPOSE_CACHE or ~/.cache/meshpose)")
    adv.add_argument("--build-preset", choices=list(BUILD_PRESETS),
                     help="a named build (neural_mesh.build.BUILD_PRESETS) the other --build-* flags change: "
                          "'default' (about 7 minutes on 2 CPU cores), 'accurate' (the build that meets the "
                          "accuracy targets under occlusion too; 1.5 to 3 hours once) or 'wide' (finds objects "
                          "spanning a third of the photo without --bbox; about 15 minutes)")
    adv.add_argument("--build-steps", type=positive_int, metavar="N",
                     help=f"training steps when building a model (default {BuildConfig.steps})")
    adv.add_argument("--build-size", type=_build_size, metavar="S",
                     help=f"side of the training renders when building a model (default {BuildConfig.image_size})")
    adv.add_argument("--build-occlusion", type=_number, nargs=2, metavar=("LOW", "HIGH"),
                     help="hidden fraction of the object under occluders in the training renders when building "
                          "a model (default 0 0: none; the README's status section names the most accurate "
                          "build measured)")
    adv.add_argument("--build-lighting", choices=LIGHTINGS,
                     help="how the training renders are lit when building a model: Lambert shading only "
                          "(default), or also highlights, self- and floor shadows and a gamma on the light term "
                          "(nearer to photos; slower renders)")
    adv.add_argument("--build-room-probability", type=_number, metavar="P",
                     help="chance of a 3D floor and wall around the object in a training render when building a "
                          "model (default 0: procedural backgrounds only)")
    adv.add_argument("--build-finetune-steps", type=non_negative_int, metavar="N",
                     help="then fine-tune the built model for N more steps on renders with "
                          "--build-finetune-occlusion (default 0: no such stage)")
    adv.add_argument("--build-finetune-occlusion", type=_number, nargs=2, metavar=("LOW", "HIGH"),
                     help="hidden fraction of the object in the fine-tuning renders "
                          f"(default {' '.join(f'{x:g}' for x in BuildConfig.finetune_occlusion)})")
    adv.add_argument("--build-finetune-lr", type=positive_float, metavar="LR",
                     help=f"peak learning rate of the fine-tuning stage (default {BuildConfig.finetune_lr:g})")
    adv.add_argument("--build-finetune-center-jitter", type=_number, metavar="J",
                     help="spread of the object's image position in the fine-tuning renders, as a fraction of "
                          f"the image size (default: the first stage's, {BuildConfig.center_jitter:g})")
    adv.add_argument("--build-finetune-lighting", choices=LIGHTINGS,
                     help="lighting of the fine-tuning renders (default: the first stage's)")
    adv.add_argument("--build-finetune-room-probability", type=_number, metavar="P",
                     help="chance of a 3D floor and wall in a fine-tuning render (default: the first stage's)")
    adv.add_argument("--build-train", action="append", metavar="NAME=VALUE",
                     help="another training setting when building a model (BuildConfig.train), e.g. "
                          "--build-train temperature=0.1")
    adv.add_argument("--build-scene", action="append", metavar="NAME=VALUE",
                     help="another setting of the training renders when building a model (BuildConfig.scene), "
                          "e.g. --build-scene zoom_out_probability=0.3")
    adv.add_argument("--fit-steps", type=non_negative_int, metavar="N",
                     help=f"refinement steps after the grid search (default {FitConfig.steps}; 0: fastest, coarsest)")
    adv.add_argument("--fit-upsample", type=positive_int, metavar="N",
                     help="fit on the model's feature map upsampled N times, a divisor of its stride (finer "
                          f"alignment, slower fits; default {FitConfig.upsample}; FitConfig.upsample)")
    adv.add_argument("--fit-crops", type=non_negative_int, metavar="N",
                     help="refine each fit again on N crops shifted by FitConfig.crop_shift input pixels and "
                          f"average them (steadier poses, slower fits; default {FitConfig.crop_ensemble}, "
                          "0: off; FitConfig.crop_ensemble)")
    adv.add_argument("--resume", action="store_true",
                     help="with --out: skip images already fitted into --out by a run with the same image, "
                          "model, camera, box and fit settings (an interrupted run goes on)")
    return p


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Example:
    """The bundled example: photo, mesh, intrinsics and true file-frame pose."""

    image: Path
    mesh: Path
    K: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    angles_deg: tuple[float, float, float]


def load_example(path: Path = EXAMPLE_JSON) -> Example:
    """Read the example's JSON (``demos/make_example.py``); paths inside are relative to it.

    Raises:
        InputError: missing or malformed JSON (naming it).
    """
    try:
        data = json.loads(path.read_text())
        image, mesh = path.parent / data["image"], path.parent / data["mesh"]
        K, R, t = (torch.tensor(data[k], dtype=torch.float64) for k in ("K", "R", "t"))
        angles = tuple(float(data[f"{k}_deg"]) for k in ("azimuth", "elevation", "theta"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (run demos/make_example.py)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: malformed example ({' '.join(str(error).split())[:120]})") from None
    if K.shape != (3, 3) or R.shape != (3, 3) or t.shape != (3,):
        raise InputError(f"{path}: malformed example (K, R must be 3x3 and t of length 3)")
    return Example(image=image, mesh=mesh, K=K, R=R, t=t, angles_deg=angles)


@dataclass(frozen=True)
class Job:
    """Everything checked and loaded before fitting."""

    paths: list[Path]
    images: list[torch.Tensor]
    Ks: list[torch.Tensor]
    bbox: list[float] | None
    mesh_path: Path
    mesh: Mesh
    out: Path | None
    example: Example | None


def _check_out(out: Path) -> None:
    """``out`` must be a directory or creatable as one (nothing is created here)."""
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--out {out}: exists and is not a directory")
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(f"--out {out}: directory not writable")
        return
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: cannot create it ({parent} is not a writable directory)")


def camera_matrix(image_size: tuple[int, int], focal: float | None = None,
                  K: Sequence[float] | None = None) -> torch.Tensor:
    """``(3, 3)`` float64 intrinsics of an image: ``--K FX FY CX CY``, else ``--focal F``
    with the principal point at the centre, else :func:`render.default_intrinsics`'s guess."""
    if K is not None:
        fx, fy, cx, cy = (float(v) for v in K)
        return intrinsics(fx, fy, cx, cy).to(torch.float64)
    return default_intrinsics(image_size, focal, dtype=torch.float64)


def gather(args: argparse.Namespace) -> Job:
    """Check the arguments and read every input (images, mesh, example); no model yet.

    Raises:
        InputError, render.MeshError, datasets.DatasetError: one line naming the problem.
    """
    example = None
    if not args.images and args.mesh is None:
        for name, value in (("--focal", args.focal), ("--K", args.K), ("--bbox", args.bbox)):
            if value is not None:
                raise InputError(f"{name}: only with IMAGE and --mesh (the bundled example has its own camera)")
        example = load_example()
        paths, mesh_path = [example.image], example.mesh
        out = args.out if args.out is not None else EXAMPLE_OUT
    else:
        if args.mesh is None:
            raise InputError("--mesh: required with IMAGE (the object's mesh file)")
        if not args.images:
            raise InputError("expected at least one IMAGE to fit")
        paths, mesh_path, out = [Path(p) for p in args.images], args.mesh, args.out
    if args.model is not None:
        for name in ("cache", "build_preset", *BUILD_FLAGS):
            if getattr(args, name) is not None:
                raise InputError(f"--{name.replace('_', '-')}: only without --model (it sets how a model is built)")
    finetune = args.build_finetune_steps
    if finetune is None:
        finetune = BUILD_PRESETS[args.build_preset or "default"].get("finetune_steps", 0)
    if not finetune:
        for flag in ("build_finetune_occlusion", "build_finetune_lr", "build_finetune_center_jitter",
                     "build_finetune_lighting", "build_finetune_room_probability"):
            if getattr(args, flag) is not None:
                raise InputError(f"--{flag.replace('_', '-')}: only with --build-finetune-steps N (N > 0)")
    if args.K is not None:
        fx, fy, cx, cy = args.K
        if not all(math.isfinite(v) for v in args.K) or not (fx > 0 and fy > 0):
            raise InputError(f"--K: expected positive FX FY and finite CX CY (pixels), got {args.K}")
    bbox = None
    if args.bbox is not None:
        x0, y0, x1, y1 = args.bbox
        if not all(math.isfinite(v) for v in args.bbox) or not (x1 > x0 and y1 > y0):
            raise InputError(f"--bbox: expected finite X0 < X1 and Y0 < Y1 (pixels), got {args.bbox}")
        bbox = [float(v) for v in args.bbox]
    if args.resume and out is None:
        raise InputError("--resume: only with --out DIR (it skips what an earlier run wrote there)")
    if out is not None:
        _check_out(out)
    mesh = load_mesh(mesh_path)  # MeshError names the file
    images, Ks = [], []
    for path in paths:
        image = read_image(path)  # DatasetError names the file
        H, W = image.shape[-2:]
        if bbox is not None and (bbox[2] < -0.5 or bbox[0] > W - 0.5 or bbox[3] < -0.5 or bbox[1] > H - 0.5):
            raise InputError(f"--bbox {bbox}: lies outside {path} ({W} x {H} pixels)")
        images.append(image)
        Ks.append(example.K if example is not None else camera_matrix((H, W), args.focal, args.K))
    return Job(paths, images, Ks, bbox, mesh_path, mesh, out, example)


#: The build flags (argparse names) and the BuildConfig fields they set.
BUILD_FLAGS = {
    "build_steps": "steps",
    "build_size": "image_size",
    "build_occlusion": "occlusion",
    "build_finetune_steps": "finetune_steps",
    "build_finetune_occlusion": "finetune_occlusion",
    "build_finetune_lr": "finetune_lr",
    "build_finetune_center_jitter": "finetune_center_jitter",
    "build_lighting": "lighting",
    "build_finetune_lighting": "finetune_lighting",
    "build_room_probability": "room_probability",
    "build_finetune_room_probability": "finetune_room_probability",
    "build_train": "train",
    "build_scene": "scene",
}


def get_model(args: argparse.Namespace, mesh_path: Path, log) -> PoseModel:
    """Load ``--model`` (warning if it was built for another mesh) or build/load the cached one.

    Raises:
        neural_mesh.neural_mesh.ModelError, render.MeshError, ValueError: one line.
    """
    if args.model is not None:
        model = PoseModel.load(args.model)
        built_for = model.meta.get("mesh_sha256")
        if built_for and built_for != file_sha256(mesh_path):
            name = model.meta.get("mesh_file", "another mesh")
            log(f"{PROG}: warning: {args.model} was built for {name} (sha256 {str(built_for)[:12]}...), "
                f"not for the content of {mesh_path}; poses may be wrong")
        return model
    changes = {field: getattr(args, flag) for flag, field in BUILD_FLAGS.items() if getattr(args, flag) is not None}
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
    try:
        for name in ("train", "scene"):
            if name in changes:
                try:
                    changes[name] = assignments(changes[name])
                except ValueError as error:
                    raise ValueError(f"BuildConfig.{name}: {error}") from None
        config = BuildConfig.preset(args.build_preset or "default", **changes)
    except ValueError as error:
        # "BuildConfig.<field>: ..." -> the flag that set it
        field = str(error).split(":", 1)[0].removeprefix("BuildConfig.")
        flag = next((f for f, name in BUILD_FLAGS.items() if name == field), "build_occlusion")
        raise InputError(f"--{flag.replace('_', '-')}: {error}") from None
    cache = args.cache if args.cache is not None else default_cache_dir()
    target = model_cache_path(mesh_path, config, cache)
    if (target / "model.json").is_file():
        log(f"{PROG}: using the cached pose model {target}")
    else:
        tune = f" + {config.finetune_steps} fine-tuning" if config.finetune_steps else ""
        took = BUILD_TIMES[args.build_preset or "default"]
        log(f"{PROG}: building a pose model for {mesh_path} ({config.steps}{tune} training steps on "
            f"{config.image_size} x {config.image_size} renders; {took} on 2 CPU cores for the "
            f"{args.build_preset or 'default'} preset's settings, once); it will be cached in {target}")
    return build_model(mesh_path, config, cache_dir=cache, progress=True)


# ---------------------------------------------------------------------------- outputs


def fit_warnings(model: PoseModel, result: PoseResult, size: Sequence[int], K: torch.Tensor, boxed: bool) -> list[str]:
    """What a user should know about one fit (stderr): the object found too small in the
    photo for a fit without a box (:meth:`PoseModel.small_in_photo`), and a fit that
    explains the photo no better than clutter (:attr:`PoseResult.doubtful`)."""
    warnings = []
    if not boxed and model.small_in_photo(result, size, K):
        frac = model.photo_fraction(result.R, result.t, K, size)
        wider = "" if model.trained_wide else " (or build with --build-preset wide)"
        warnings.append(f"the fitted object spans only {frac:.0%} of the photo; without --bbox, fits of objects "
                        f"under about {model.small_share:.0%} of it are often wrong: give --bbox X0 Y0 X1 Y1 "
                        f"around it{wider}")
    if result.doubtful:
        what = "check --bbox and --mesh" if boxed else "give --bbox X0 Y0 X1 Y1 around the object"
        warnings.append(f"the fit scores {result.score:.2g}: the fitted object explains the photo no better than "
                        f"the background does, so the pose is probably wrong, or the object mostly hidden ({what})")
    return warnings


def pose_record(model: PoseModel, result: PoseResult, image: str) -> dict[str, Any]:
    """The JSON record of one fitted image (the contract of the module docstring):
    the pose in the mesh file's frame (:meth:`PoseModel.to_file_frame`), angles in degrees,
    ``distance = |t_file|``."""
    R, t = model.to_file_frame(result.R.double(), result.t.double())
    return {
        "image": image,
        "R": [[float(v) for v in row] for row in R],
        "t": [float(v) for v in t],
        "azimuth_deg": math.degrees(result.azimuth),
        "elevation_deg": math.degrees(result.elevation),
        "theta_deg": math.degrees(result.theta),
        "distance": float(t.norm()),
        "score": float(result.score),
        "seconds": float(result.seconds),
    }


def describe(record: dict[str, Any]) -> str:
    """One human-readable line of a record."""
    return (f"{record['image']}: azimuth {record['azimuth_deg']:.1f} deg, elevation {record['elevation_deg']:.1f} deg, "
            f"theta {record['theta_deg']:.1f} deg, distance {record['distance']:.4g}, score {record['score']:.4f} "
            f"({record['seconds']:.1f} s)")


def output_stems(paths: Sequence[Path]) -> list[str]:
    """File stems for the outputs, unique: a repeated stem gets ``_1``, ``_2``, ...

    >>> output_stems([Path("a/x.png"), Path("b/x.jpg"), Path("x_1.png"), Path("y.png")])
    ['x', 'x_1', 'x_1_1', 'y']
    """
    used: set[str] = set()
    stems = []
    for path in paths:
        stem = candidate = path.stem or "image"
        k = 1
        while candidate in used:
            candidate = f"{stem}_{k}"
            k += 1
        used.add(candidate)
        stems.append(candidate)
    return stems


def write_outputs(out: Path, files: dict[str, bytes]) -> list[Path]:
    """Write ``{name: bytes}`` into ``out``: every file to a temporary name first, then all
    renamed into place (no half-written file under its final name)."""
    out.mkdir(parents=True, exist_ok=True)
    temps: list[tuple[str, Path]] = []
    try:
        for name, data in files.items():
            tmp = out / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            temps.append((name, tmp))
            with open(tmp, "xb") as fh:  # permissions from the umask, as for any new file
                fh.write(data)
        for name, tmp in temps:
            os.replace(tmp, out / name)
    finally:
        for _, tmp in temps:
            if tmp.exists():
                tmp.unlink()
    return [out / name for name in files]


STATE_FILE = "fit_pose_state.json"
STATE_FORMAT = "meshpose_fit_pose_state"


def model_identity(model: PoseModel) -> str:
    """sha256 of everything that decides a model's fits: weights, neural mesh, crop scale."""
    h = hashlib.sha256()
    tensors = dict(sorted(model.backbone.state_dict().items()))
    tensors.update(verts=model.nmesh.verts, faces=model.nmesh.faces, features=model.nmesh.features,
                   clutter=model.nmesh.clutter, mesh_center=model.mesh_center)
    for name, tensor in tensors.items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    h.update(json.dumps([list(model.image_size), model.box_fraction, model.mesh_scale]).encode())
    return h.hexdigest()


def fit_key(image_sha: str, model_id: str, K: torch.Tensor, bbox, config: FitConfig) -> str:
    """What made an image's outputs (the resume key of ``fit_pose_state.json``)."""
    what = {"image": image_sha, "model": model_id, "K": K.tolist(), "bbox": bbox, "fit": dataclasses.asdict(config)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def read_state(out: Path) -> dict[str, str]:
    """``{stem: key}`` from ``out/fit_pose_state.json``; empty when missing or unreadable."""
    try:
        state = json.loads((out / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or not isinstance(state.get("keys"), dict):
        return {}
    return {str(k): str(v) for k, v in state["keys"].items()}


def resumed_record(out: Path, stem: str) -> dict[str, Any] | None:
    """The record in ``out/<stem>_pose.json`` when it and the overlay are there, else None."""
    if not (out / f"{stem}_overlay.png").is_file():
        return None
    try:
        record = json.loads((out / f"{stem}_pose.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _label(path: Path) -> str:
    """``path`` as given, or relative to the working directory for the bundled example."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------- main

#: images fitted together (one PoseModel.fit call); the results do not depend on it
FIT_BATCH = 8


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    try:
        args = p.parse_intermixed_args(argv)
    except SystemExit as e:
        return int(e.code or 0)

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        job = gather(args)
        model = get_model(args, job.mesh_path, log)
    except ValueError as e:  # InputError, MeshError, DatasetError, ModelError
        log(f"{PROG}: error: {' '.join(str(e).split())}")
        return 2
    except KeyboardInterrupt:
        log(f"{PROG}: interrupted (a model build resumes from its last checkpoint next time)")
        return 130

    changes = {name: value for name, value in (("steps", args.fit_steps), ("upsample", args.fit_upsample),
                                               ("crop_ensemble", args.fit_crops)) if value is not None}
    config = FitConfig(**changes)
    if model.backbone.stride % config.upsample:
        log(f"{PROG}: error: --fit-upsample: expected a divisor of the model's feature stride "
            f"{model.backbone.stride}, got {config.upsample}")
        return 2
    n = len(job.images)
    labels = [_label(path) if job.example is not None else str(path) for path in job.paths]
    stems = output_stems(job.paths)
    say = log if args.json else print
    records: dict[int, dict[str, Any]] = {}
    written = 0
    keys, state = [], {}
    if job.out is not None:
        model_id = model_identity(model)
        keys = [fit_key(file_sha256(path), model_id, K, job.bbox, config) for path, K in zip(job.paths, job.Ks)]
        state = read_state(job.out)
    if args.resume:
        for i in range(n):
            record = resumed_record(job.out, stems[i]) if state.get(stems[i]) == keys[i] else None
            if record is not None:
                records[i] = record
                print(json.dumps(record) if args.json else describe(record), flush=True)
        log(f"{PROG}: resumed {len(records)} of {n} images from {job.out}/")
    todo = [i for i in range(n) if i not in records]
    bar = tqdm(total=len(todo), unit="image", desc=PROG, file=sys.stderr, dynamic_ncols=True,
               disable=len(todo) <= FIT_BATCH)
    try:
        for start in range(0, len(todo), FIT_BATCH):
            batch = todo[start:start + FIT_BATCH]
            results = model.fit([job.images[i] for i in batch], [job.Ks[i] for i in batch], config=config,
                                bbox=[job.bbox] * len(batch) if job.bbox is not None else None)
            done = [pose_record(model, r, labels[i]) for r, i in zip(results, batch)]
            for r, i in zip(results, batch):
                for warning in fit_warnings(model, r, job.images[i].shape[-2:], job.Ks[i], job.bbox is not None):
                    tqdm.write(f"{PROG}: warning: {labels[i]}: {warning}", file=sys.stderr)
            for record in done:
                tqdm.write(json.dumps(record) if args.json else describe(record), file=sys.stdout)
            sys.stdout.flush()
            records.update(zip(batch, done))
            if job.out is not None:
                files = output_files(job, batch, stems, done)
                outputs = len(files)
                state.update((stems[i], keys[i]) for i in batch)
                files[STATE_FILE] = (json.dumps({"format": STATE_FORMAT, "keys": state}, indent=1) + "\n").encode()
                try:
                    write_outputs(job.out, files)  # the state file last: it names only files in place
                    written += outputs
                except OSError as e:
                    bar.close()
                    log(f"{PROG}: error: {job.out}: cannot write ({' '.join(str(e).split())})")
                    return 2
            bar.update(len(batch))
    except KeyboardInterrupt:
        bar.close()
        log(f"{PROG}: interrupted after {len(records)} of {n} images"
            + (" (--resume goes on from there)" if job.out is not None else ""))
        return 130
    bar.close()

    if job.example is not None:
        R_gt, t_gt = job.example.R, job.example.t
        R_fit, t_fit = torch.tensor(records[0]["R"], dtype=torch.float64), torch.tensor(records[0]["t"], dtype=torch.float64)
        rot = math.degrees(float(rotation_error(R_fit, R_gt)))
        trans = float((t_fit - t_gt).norm())
        az, el, th = job.example.angles_deg
        say(f"ground truth: azimuth {az:.1f} deg, elevation {el:.1f} deg, theta {th:.1f} deg, "
            f"distance {float(t_gt.norm()):.4g}")
        say(f"rotation error {rot:.1f} deg, translation error {trans:.3g} "
            f"({100 * trans / float(t_gt.norm()):.1f} % of the distance)")
    if job.out is not None:
        say(f"wrote {written} files to {job.out}/")
    return 0


def output_files(job, batch: Sequence[int], stems: Sequence[str], records: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    """``{name: bytes}`` of the images ``batch``: the JSON record and the overlay PNG each."""
    files: dict[str, bytes] = {}
    for i, record in zip(batch, records):
        R = torch.tensor(record["R"], dtype=torch.float64)
        t = torch.tensor(record["t"], dtype=torch.float64)
        picture = overlay(job.images[i], job.mesh, R, t, job.Ks[i])
        files[f"{stems[i]}_pose.json"] = (json.dumps(record, indent=2) + "\n").encode()
        files[f"{stems[i]}_overlay.png"] = iio.imwrite("<bytes>", picture, extension=".png")
    return files


if __name__ == "__main__":
    tune_cpu_allocator()
    torch.set_flush_denormal(True)  # before torch starts its threads (neural_mesh.training.flush_denormals)
    sys.exit(main())
