"""A pose model from a mesh alone: train NeMo on synthetic renders of the mesh, cache the
result.

:func:`build_model` is what ``demos/fit_pose.py --mesh MESH`` does without ``--model``: it
renders the mesh with the synthetic engine (:mod:`datasets.synthetic`: random part
colours and textures, lights, backgrounds, photometric jitter), trains a backbone and the
mesh's neural mesh with NeMo's contrastive loss (:func:`neural_mesh.training.train`,
progress bar), and saves a :class:`~neural_mesh.model.PoseModel` in a cache directory keyed
by the mesh file's content and the :class:`BuildConfig`. The next call with the same mesh
bytes and config loads it (immediate); an interrupted build resumes from its last
checkpoint. The cache lives in ``$MESHPOSE_CACHE`` or ``~/.cache/meshpose``::

    CACHE/models/<key>/    the PoseModel (model.json, backbone.safetensors, neural_mesh/)
    CACHE/runs/<key>/      the training run while it is in progress (removed after)

``<key>`` is the first 20 hex digits of the SHA-256 of the mesh file's SHA-256, the
config's JSON, the model format version and the build recipe's (:data:`BUILD_RECIPE`),
so renaming or moving the mesh file keeps its model, and editing it (or the config, or
a release changing what a build makes of them) builds a new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from datasets.synthetic import LIGHTINGS
from render.checks import check_int_fields

from .backbones import OUTPUT_STRIDES, PRESETS
from .model import MODEL_VERSION, PoseModel, box_fraction_of
from .neural_mesh import MESH_KINDS, ModelError, file_sha256
from .training import LR_SCHEDULES, TrainConfig, default_workers, synthetic_data, train

__all__ = ["BUILD_PRESETS", "BUILD_TIMES", "SCENE_FIELDS", "BuildConfig", "build_model", "cache_key",
           "default_cache_dir", "model_cache_path"]

#: environment variable overriding the cache directory
CACHE_ENV = "MESHPOSE_CACHE"

#: version of what a build makes of a mesh and a config, in the cache key: raised when the
#: same settings make a different model (2: the neural mesh's remesh keeps thin parts, and
#: :data:`TRAIN_DEFAULTS`)
BUILD_RECIPE = 2

#: the :class:`TrainConfig` settings :attr:`BuildConfig.train` may change (the others are
#: BuildConfig's own fields, or follow from them)
TRAIN_FIELDS = ("weight_decay", "clutter_size", "num_background", "momentum", "temperature", "clutter_weight",
                "regularizer_weight", "neighbor_radius", "neighbor_radius_3d", "sampling", "occluder_clutter")

#: the :class:`datasets.synthetic.SyntheticConfig` settings :attr:`BuildConfig.scene` may
#: change (the others are BuildConfig's own fields, or fixed by the build)
SCENE_FIELDS = ("zoom_out_probability", "zoom_out_range", "background_scale_range", "focal_range",
                "elevation_range", "mesh_color_probability", "photometric", "occluder_shape_probability",
                "max_occluders")

#: where a build's training departs from TrainConfig's (NeMo's) defaults; ``BuildConfig.train``
#: overrides these too. Vertices count as neighbours (not negatives) only within 0.04 of the
#: image side (5 px at 128 px, under one feature cell, instead of 0.075), and features are
#: sampled bilinearly at their projections, not at the nearest cell: on the default
#: 2,000-step builds, Acc@pi/18 at L0 rose from 63% to 81% (bundled chair), 59% to 78%
#: (procedural chair) and 18% to 31% (car) on 120 held-out renders each
#: (docs/pose_results.md, "Thin parts lost by the remesh, and a finer contrastive loss").
TRAIN_DEFAULTS = {"neighbor_radius": 0.04, "sampling": "bilinear"}

#: Named builds (:meth:`BuildConfig.preset`; ``fit_pose.py --build-preset``,
#: ``bench_pose.py --preset``): the :class:`BuildConfig` fields each sets.
#:
#: - ``"default"``: :class:`BuildConfig`'s defaults (about 7 minutes on 2 CPU cores);
#:   meets the unoccluded targets, not the occluded ones.
#: - ``"accurate"``: 24,000 steps on renders with 20-70% of the object under occluders,
#:   then 4,000 fine-tuning steps (peak lr 3e-5) on 0-50% occluders with a 3D floor and
#:   wall behind half the renders. 1.5 to 3 hours on 2 CPU cores, once. Meets every
#:   synthetic target on our renders and another renderer's: on 240 fresh images per
#:   level, 100.0% / 2.2 deg and 82.5% (ours), and on 480, 95.4% / 3.1 deg and 74.0%
#:   (ray-cast), Acc@pi/6 / median at L0 and Acc@pi/6 at L2 (``docs/pose_results.md``,
#:   "The accurate build under recipe 2").
#: - ``"wide"``: for photos not cropped to the object, where it may span only a third of
#:   the photo: 4,000 steps, 30% of the renders framed 1.5-3 times wider and procedural
#:   backgrounds up to 1.2 of the image side (:attr:`BuildConfig.scene`). About 15 minutes
#:   on 2 CPU cores. On 80 renders of the bundled chair, Acc@pi/6 / median without a box:
#:   95.0% / 4.7 deg at the usual framing, 87.5% / 4.4 deg framed twice as wide (the
#:   default build: 92.5% / 3.8 deg and 26.2%), 63.7% on the ray caster's at twice
#:   (``docs/pose_results.md``, "Training renders framed wider: the wide preset").
BUILD_PRESETS = {
    "default": {},
    "accurate": {"steps": 24000, "occlusion": (0.2, 0.7), "finetune_steps": 4000,
                 "finetune_occlusion": (0.0, 0.5), "finetune_lr": 3e-5, "finetune_room_probability": 0.5},
    "wide": {"steps": 4000, "scene": {"zoom_out_probability": 0.3, "background_scale_range": (0.03, 1.2)}},
}

#: how long each of :data:`BUILD_PRESETS` takes to build on 2 CPU cores (the build messages say it)
BUILD_TIMES = {"default": "about 7 minutes", "accurate": "1.5 to 3 hours", "wide": "about 15 minutes"}


@dataclass(frozen=True)
class BuildConfig:
    """Settings of :func:`build_model` (all enter the cache key).

    The defaults train the ``small`` backbone for 2,000 steps of 8 renders at 128 x 128
    pixels: about 7 minutes on 2 idle CPU cores (one of them rendering; 6 min 37 s for
    the first ``make demo``, VMs have differed by up to 2x). On 120 held-out renders of the
    bundled chair (``benchmarks/bench_pose.py --no-regression --levels 0 2 --n 120
    --test-seed 3``) they give 94.2% Acc@pi/6 and a 4.6 deg median error unoccluded, 38.3%
    at L2 (build recipe 2, :data:`BUILD_RECIPE`). The measurements below were of recipe 1
    (``docs/pose_results.md``). Twice the
    former 1,000 steps took L0 Acc@pi/6 from 82.5% to 94.2% for the bundled chair and from
    40.8% to 70.0% for a procedural car, on 120 held-out renders each (test seed 3;
    ``docs/pose_results.md``, "More steps, not more vertices or colours"); L2 moved
    within its noise (35.0% to 25.8%, 24.2% to 26.7%). The other defaults were chosen
    on 24 held-out renders per level of the bundled chair (``benchmarks/bench_pose.py``'s
    test sets, default fitting): objects drawn larger than the engine's default (distances 3.4-5 instead of
    4-6: about 12 instead of 10 feature cells across), then 400 instead of NeMo's 1,000
    vertices (about two per feature cell instead of five), took L0 from 71% Acc@pi/6 and
    14 deg median error to 71% and 10 deg, and L2 from 12% to 25% to 33%. Raising the
    contrastive loss's clutter weight (0.005 -> 0.05, 20 background cells per image) did
    worse (L2 12%). A stride-4 backbone (``output_stride=4``, twice the feature resolution,
    similar build time) was no better on unoccluded images and worse on occluded ones
    (``benchmarks/bench_pose.py --model DIR --no-regression`` on the two builds, 40
    images per level: L0 Acc@pi/6 72.5% for both, median 11.8 vs 10.0 deg, 9.0 vs 10.4 with
    ``--polish 1``; L2 Acc@pi/6 20% vs 32.5%), and fitting took ~1.3x longer, so the
    default stays NeMo's 8.

    Attributes:
        steps: training steps.
        image_size: side of the square training renders (pixels).
        batch_size: renders per step.
        backbone: backbone preset (:data:`neural_mesh.backbones.PRESETS`).
        output_stride: the backbone's feature stride (8: NeMo's, default; 4: twice the
            resolution, :attr:`neural_mesh.backbones.BackboneConfig.output_stride`).
        num_verts: vertex target of the neural mesh (NeMo: about 1,000; its objects
            span many more feature cells than our 128-pixel renders).
        mesh_kind: ``"remesh"`` (vertices on the mesh's own surface; default: the mesh is
            known exactly) or ``"cuboid"`` (NeMo's cuboid around it).
        lr: Adam learning rate (the peak of ``lr_schedule``).
        lr_schedule: :attr:`neural_mesh.training.TrainConfig.lr_schedule` (``"cosine"``:
            the rate decays to 2% of ``lr`` over the run).
        distance_range: camera distances of the training renders, in radii of the mesh's
            bounding sphere (:class:`datasets.synthetic.SyntheticConfig`); nearer cameras
            draw the object larger, over more feature cells.
        center_jitter: where the object centre projects: the image centre plus up to this
            fraction of the image size.
        center_on: what the renders put at that (jittered) centre: ``"object"`` (the
            object's centre; default) or ``"box"`` (its 2D box's centre, as a crop around
            a given box does: :attr:`datasets.synthetic.SyntheticConfig.center_on`). The
            model's crops follow the same rule (:meth:`PoseModel.crop_box`). Measured no
            better than ``"object"`` even with given boxes (docs/pose_results.md).
        occlusion: ``(low, high)`` hidden fraction of the object under random occluders
            in the training renders (``(0, 0)``: none); vertices under an occluder are
            left out of the loss, so features learn to ignore what covers the object.
        lighting: how the training renders are lit
            (:attr:`datasets.synthetic.SyntheticConfig.lighting`): ``"lambert"``
            (default) or ``"full"`` (also highlights, self-shadows, floor shadows and a
            gamma on the light term; about half the engine's samples per second,
            ``benchmarks/bench_data.py --lighting full``). Measured no better on another
            renderer's images (docs/pose_results.md).
        room_probability: chance of a 3D floor and wall around the object in a training
            render (:attr:`datasets.synthetic.SyntheticConfig.room_probability`).
        seed: seed of the weights, the banks and the renders.
        finetune_steps: after the build above (cached as a model of its own), go on
            training its backbone and neural mesh for this many steps on new renders (0:
            no such stage) with ``finetune_occlusion`` and a fresh Adam at
            ``finetune_lr`` (cosine decay, like ``lr_schedule``); e.g. harder occluders
            than the first stage saw.
        finetune_occlusion: ``(low, high)`` hidden fraction of the fine-tuning renders.
        finetune_lr: peak learning rate of the fine-tuning stage.
        finetune_center_jitter: ``center_jitter`` of the fine-tuning renders (``None``:
            the first stage's); a wider spread teaches features that hold wherever the
            object lands in the crop.
        finetune_lighting: ``lighting`` of the fine-tuning renders (``None``: the first
            stage's).
        finetune_room_probability: ``room_probability`` of the fine-tuning renders
            (``None``: the first stage's).
        train: other :class:`~neural_mesh.training.TrainConfig` settings of both stages,
            by name (those of :data:`TRAIN_FIELDS`: the contrastive loss's temperature,
            exclusion radius, clutter weight, feature sampling...), e.g.
            ``{"temperature": 0.1}``; empty (default): :data:`TRAIN_DEFAULTS`, and
            TrainConfig's own for the others.
        scene: other :class:`~datasets.synthetic.SyntheticConfig` settings of both
            stages' renders, by name (those of :data:`SCENE_FIELDS`), e.g.
            ``{"zoom_out_probability": 0.3}`` (some renders framed wider) or
            ``{"background_scale_range": [0.03, 1.2]}`` (coarser backgrounds too); empty
            (default): the engine's.

    The fine-tuning fields enter :meth:`to_dict` (and the cache key) only when
    ``finetune_steps > 0``, ``finetune_center_jitter``, ``finetune_lighting`` and
    ``finetune_room_probability`` only when they are set, ``center_on`` only when it
    is ``"box"``, ``lighting`` only when it is ``"full"``, ``room_probability`` only
    when it is not 0 and ``train`` and ``scene`` only when they are not empty, so the keys
    of builds without them do not change.
    """

    steps: int = 2000
    image_size: int = 128
    batch_size: int = 8
    backbone: str = "small"
    output_stride: int = 8
    num_verts: int = 400
    mesh_kind: str = "remesh"
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    distance_range: tuple[float, float] = (3.4, 5.0)
    center_jitter: float = 0.04
    center_on: str = "object"
    occlusion: tuple[float, float] = (0.0, 0.0)
    lighting: str = "lambert"
    room_probability: float = 0.0
    seed: int = 0
    finetune_steps: int = 0
    finetune_occlusion: tuple[float, float] = (0.0, 0.0)
    finetune_lr: float = 1e-4
    finetune_center_jitter: float | None = None
    finetune_lighting: str | None = None
    finetune_room_probability: float | None = None
    train: dict = field(default_factory=dict)
    scene: dict = field(default_factory=dict)

    #: the fields of the fine-tuning stage (not part of the first stage's build)
    FINETUNE_FIELDS = ("finetune_steps", "finetune_occlusion", "finetune_lr", "finetune_center_jitter",
                       "finetune_lighting", "finetune_room_probability")

    def __post_init__(self) -> None:
        check_int_fields("BuildConfig", self, (
            ("steps", 1), ("image_size", 32), ("batch_size", 2), ("num_verts", 8), ("finetune_steps", 0),
        ))
        if self.backbone not in PRESETS:
            raise ValueError(f"BuildConfig.backbone: expected one of {sorted(PRESETS)}, got {self.backbone!r}")
        if self.output_stride not in OUTPUT_STRIDES or isinstance(self.output_stride, bool):
            raise ValueError(f"BuildConfig.output_stride: expected one of {list(OUTPUT_STRIDES)}, "
                             f"got {self.output_stride!r}")
        if self.mesh_kind not in MESH_KINDS:
            raise ValueError(f"BuildConfig.mesh_kind: expected one of {list(MESH_KINDS)}, got {self.mesh_kind!r}")
        for name in ("lr", "finetune_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"BuildConfig.{name}: expected a number > 0, got {value!r}")
        if self.center_on not in ("object", "box"):
            raise ValueError(f"BuildConfig.center_on: expected 'object' or 'box', got {self.center_on!r}")
        for name in ("lighting", "finetune_lighting"):
            value = getattr(self, name)
            if not (value in LIGHTINGS or (value is None and name == "finetune_lighting")):
                raise ValueError(f"BuildConfig.{name}: expected one of {list(LIGHTINGS)}, got {value!r}")
        self._up_to("room_probability", 1.0, "a probability in [0, 1]")
        self._up_to("finetune_room_probability", 1.0, "a probability in [0, 1]", optional=True)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"BuildConfig.lr_schedule: expected one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        self._pair("distance_range", lambda a, b: 1.0 < a <= b, "(near, far) with 1 < near <= far")
        self._pair("occlusion", lambda a, b: 0.0 <= a <= b <= 1.0, "(low, high) with 0 <= low <= high <= 1")
        self._pair("finetune_occlusion", lambda a, b: 0.0 <= a <= b <= 1.0, "(low, high) with 0 <= low <= high <= 1")
        self._up_to("center_jitter", 0.5, "a number in [0, 0.5]")
        self._up_to("finetune_center_jitter", 0.5, "a number in [0, 0.5]", optional=True)
        self._check_train()
        self._check_scene()

    def _check_train(self) -> None:
        """Check ``train`` names settings of :data:`TRAIN_FIELDS` with values TrainConfig
        accepts."""
        self._check_settings("train", TRAIN_FIELDS, "TrainConfig", TrainConfig)

    def _check_scene(self) -> None:
        """Check ``scene`` names settings of :data:`SCENE_FIELDS` with values
        SyntheticConfig accepts."""
        from datasets.synthetic import SyntheticConfig

        self._check_settings("scene", SCENE_FIELDS, "SyntheticConfig",
                             lambda **settings: SyntheticConfig(mesh_paths=("mesh.obj",), **settings))

    def _check_settings(self, name: str, fields: tuple[str, ...], owner: str, make) -> None:
        """Check field ``name`` is a dict of the settings ``fields`` of config class
        ``owner`` that ``make(**settings)`` accepts; store a JSON-clean copy (lists as
        lists, as they come back from JSON)."""
        settings = getattr(self, name)
        if not isinstance(settings, dict):
            raise ValueError(f"BuildConfig.{name}: expected a dict of {owner} settings, got {settings!r}")
        unknown = sorted(set(settings) - set(fields))
        if unknown:
            raise ValueError(f"BuildConfig.{name}: {', '.join(map(repr, unknown))} is not a setting it can change "
                             f"(one of {', '.join(fields)})")
        try:
            make(**settings)
        except (TypeError, ValueError) as error:
            raise ValueError(f"BuildConfig.{name}: {error}") from None
        object.__setattr__(self, name, json.loads(json.dumps(settings)))

    def _up_to(self, name: str, high: float, words: str, optional: bool = False) -> None:
        """Check field ``name`` is a number in ``[0, high]`` (or None when ``optional``)."""
        value = getattr(self, name)
        if value is None and optional:
            return
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= high):
            raise ValueError(f"BuildConfig.{name}: expected {words}, got {value!r}")

    def _pair(self, name: str, ok, words: str) -> None:
        """Check field ``name`` is two numbers with ``ok(a, b)``; store it as a float tuple."""
        value = getattr(self, name)
        numbers = (isinstance(value, (tuple, list)) and len(value) == 2
                   and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value))
        if not (numbers and ok(*value)):
            raise ValueError(f"BuildConfig.{name}: expected {words}, got {value!r}")
        object.__setattr__(self, name, (float(value[0]), float(value[1])))

    @classmethod
    def preset(cls, name: str, **changes) -> BuildConfig:
        """The named build of :data:`BUILD_PRESETS` with ``changes`` on top, e.g.
        ``BuildConfig.preset("accurate", seed=1)``. Changes of ``train`` and ``scene`` add
        to (or replace) the preset's settings of the same names, not all of them.

        Raises:
            ValueError: an unknown name, or changes BuildConfig rejects.
        """
        if name not in BUILD_PRESETS:
            raise ValueError(f"BuildConfig.preset: expected one of {list(BUILD_PRESETS)}, got {name!r}")
        fields = {**BUILD_PRESETS[name], **changes}
        for group in ("train", "scene"):
            if group in BUILD_PRESETS[name] and isinstance(changes.get(group), dict):
                fields[group] = {**BUILD_PRESETS[name][group], **changes[group]}
        return cls(**fields)

    def __hash__(self) -> int:  # ``train`` is a dict; a config stays usable as a key
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if not self.finetune_steps:
            for name in self.FINETUNE_FIELDS:
                del data[name]
        else:
            for name in ("finetune_center_jitter", "finetune_lighting", "finetune_room_probability"):
                if data[name] is None:
                    del data[name]
        if self.center_on == "object":
            del data["center_on"]
        if self.lighting == "lambert":
            del data["lighting"]
        if self.room_probability == 0:
            del data["room_probability"]
        for name in ("train", "scene"):
            if not data[name]:
                del data[name]
        return data

    def first_stage(self) -> BuildConfig:
        """This config without its fine-tuning stage (the model it fine-tunes)."""
        return dataclasses.replace(self, **{f.name: f.default for f in dataclasses.fields(self)
                                            if f.name in self.FINETUNE_FIELDS})

    def train_config(self, mesh_path: str | os.PathLike) -> TrainConfig:
        """The :class:`TrainConfig` of the build (synthetic renders of ``mesh_path``):
        of its fine-tuning stage when ``finetune_steps > 0`` (new renders: data seed
        ``seed + 1``), else of the first stage."""
        size = (self.image_size, self.image_size)
        tune = self.finetune_steps > 0
        steps = self.finetune_steps if tune else self.steps
        jitter = self.center_jitter
        if tune and self.finetune_center_jitter is not None:
            jitter = self.finetune_center_jitter
        lighting = self.finetune_lighting if tune and self.finetune_lighting is not None else self.lighting
        room = self.room_probability
        if tune and self.finetune_room_probability is not None:
            room = self.finetune_room_probability
        return TrainConfig(
            backbone=dataclasses.replace(PRESETS[self.backbone], output_stride=self.output_stride),
            data=synthetic_data(size, mesh=mesh_path, seed=self.seed + 1 if tune else self.seed,
                                scene={"distance_range": self.distance_range,
                                       "center_jitter": jitter,
                                       "center_on": self.center_on,
                                       "lighting": lighting,
                                       "room_probability": float(room),
                                       "occlusion": self.finetune_occlusion if tune else self.occlusion,
                                       **self.scene}),
            steps=steps,
            batch_size=self.batch_size,
            lr=float(self.finetune_lr if tune else self.lr),
            lr_schedule=self.lr_schedule,
            seed=self.seed,
            num_verts=self.num_verts,
            mesh_kind=self.mesh_kind,
            checkpoint_every=max(1, min(100, steps)),
            keep_checkpoints=1,
            **{**TRAIN_DEFAULTS, **self.train},
        )


def default_cache_dir() -> Path:
    """``$MESHPOSE_CACHE`` if set, else ``~/.cache/meshpose``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "meshpose"


def cache_key(mesh_path: str | os.PathLike, config: BuildConfig = BuildConfig()) -> str:
    """The cache key of a mesh file's content and a config (module docstring)."""
    h = hashlib.sha256()
    h.update(file_sha256(mesh_path).encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(f"pose-model-v{MODEL_VERSION}".encode())
    h.update(f"build-recipe-{BUILD_RECIPE}".encode())
    return h.hexdigest()[:20]


def model_cache_path(mesh_path: str | os.PathLike, config: BuildConfig = BuildConfig(),
                     cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`build_model` keeps the model of ``mesh_path`` and ``config``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "models" / cache_key(mesh_path, config)


def build_model(
    mesh_path: str | os.PathLike,
    config: BuildConfig = BuildConfig(),
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    workers: int | None = None,
) -> PoseModel:
    """The :class:`PoseModel` of a mesh file: from the cache, or trained and cached.

    Args:
        mesh_path: a mesh file (OBJ, PLY, OFF, STL, GLB), +y up, front +z.
        config: :class:`BuildConfig`.
        cache_dir: cache root (default :func:`default_cache_dir`).
        progress: show the training progress bar (stderr).
        device: where to train.
        workers: processes rendering the next batches while the backbone trains
            (default :func:`neural_mesh.training.default_workers`: one on a CPU with two
            or more cores). The model is the same up to float summation order.

    Raises:
        render.MeshError: a missing, unreadable or degenerate mesh file (naming it).
        ModelError: a cache entry that cannot be read is rebuilt, not raised; this is
            raised only if the freshly built model cannot be saved.
    """
    from datasets.synthetic import SyntheticConfig, SyntheticDataset
    from render import center_and_scale, load_mesh

    mesh_path = Path(mesh_path)
    raw = load_mesh(mesh_path)  # raises MeshError naming the file
    target = model_cache_path(mesh_path, config, cache_dir)
    if (target / "model.json").is_file():
        try:
            return PoseModel.load(target, device=device)
        except ModelError:
            shutil.rmtree(target, ignore_errors=True)  # a corrupt entry: build it again
    # the normalisation the renders use (datasets.shapes.shape_from_mesh)
    _, center, scale = center_and_scale(raw, center="bbox", scale="radius")

    run_dir = target.parent.parent / "runs" / target.name
    train_config = config.train_config(mesh_path)
    resume = (run_dir / "run.json").is_file()
    workers = default_workers(device) if workers is None else int(workers)
    base = None
    start = {}
    if config.finetune_steps:
        # the first stage is a model of its own (cached, or built now), then fine-tuned
        base = build_model(mesh_path, config.first_stage(), cache_dir=cache_dir, progress=progress,
                           device=device, workers=workers)
        start = {"backbone": base.backbone, "meshes": {train_config.data["names"][0]: base.nmesh}}
    result = train(train_config, run_dir, device=device, resume=resume, progress=progress, workers=workers,
                   **start)
    name = next(iter(result.meshes))
    nmesh = result.meshes[name]

    if base is not None:
        box_fraction = base.box_fraction  # the scenes (sizes, distances) did not change
    else:
        # the object's typical box in the training renders sets the crop scale of photos;
        # zoomed-out renders (scene zoom_out_probability) teach finding small objects, and
        # fits crop the object to the size of the others (docs/pose_results.md, "Photos
        # framed wider than the training renders")
        syn = SyntheticConfig.from_dict(train_config.data["config"])
        syn = dataclasses.replace(syn, vertex_projections=False, zoom_out_probability=0.0)
        probe = SyntheticDataset(syn, seed=config.seed + 1, length=48)
        box_fraction = box_fraction_of([probe[i] for i in range(len(probe))])

    model = PoseModel(
        backbone=result.backbone.to(device).eval(),
        nmesh=nmesh.to(device),
        image_size=(config.image_size, config.image_size),
        box_fraction=box_fraction,
        mesh_center=center.detach().to("cpu", torch.float64),
        mesh_scale=float(scale),
        center_on=config.center_on,
        meta={
            "mesh_file": mesh_path.name,
            "mesh_sha256": file_sha256(mesh_path),
            "build_config": config.to_dict(),
            "train_steps": int(result.step) + (int(base.meta.get("train_steps", 0)) if base is not None else 0),
        },
    )
    model.save(target)
    shutil.rmtree(run_dir, ignore_errors=True)
    return model
