"""A pose-regression baseline (PoseContrast-style): image -> backbone -> viewpoint angles.

The baseline NeMo's render-and-compare fitting is benchmarked against. Angles, frames and
units follow ``docs/conventions.md`` (azimuth, elevation, in-plane ``theta`` in radians).

**Method.** Following PoseFromShape (Xiao et al., BMVC 2019) and PoseContrast (Xiao et
al., 3DV 2021), each of the three angles is predicted by *classification into bins plus
an in-bin offset*: the circle is cut into ``num_bins`` bins (24 by default: 15 degrees,
PoseContrast's bin size) and the network outputs, per angle, ``num_bins`` logits and
``num_bins`` offsets. Bin ``k`` is centred at ``k * w`` (``w = 2 pi / num_bins``; bin 0
is centred at 0, so the front view ``a = e = theta = 0`` is a bin centre) and covers
``[(k - 1/2) w, (k + 1/2) w)`` modulo ``2 pi``; an offset is in units of the bin width,
in ``[-1/2, 1/2]`` (``0.5 * tanh`` of the raw output). The prediction is the argmax bin's
centre plus that bin's offset, wrapped to ``(-pi, pi]`` (:func:`angle_to_bins`,
:func:`bins_to_angle`). The loss (:func:`regression_loss`) is the cross-entropy over the
bins plus ``offset_weight`` times the smooth-L1 loss between the ground-truth bin's
predicted offset and the true offset, both averaged over the batch and the three angles.
Unlike PoseContrast, which bins elevation over 180 degrees and the in-plane angle after a
shift, all three angles here are binned over the full circle with one rule (bins the data
never uses cost nothing but a few logits). The rotation is ``R = angles_to_pose(a, e,
theta, 1)[0]``; nothing else (translation, distance) is predicted.

**Network** (:class:`PoseRegressor`): a :class:`~neural_mesh.backbones.FeatureBackbone`
(``forward_pooled``: the global-average-pooled layer4 features of the ResNet trunk), then
an MLP ``Linear(pooled_dim, hidden) - ReLU - Linear(hidden, hidden) - ReLU`` shared by the
angles and two linear layers giving the ``(B, 3, num_bins)`` logits and raw offsets.

**"Same training data and backbone" as NeMo** (:func:`neural_mesh.training.train`):

* the backbone is the same class with the same :class:`BackboneConfig`, and with the same
  seed it starts from the *same initial weights* as NeMo's trainer (``PoseRegressor(config,
  seed=s).backbone`` equals the backbone ``train`` builds for ``TrainConfig(seed=s)``);
  only its trunk is used (the U-Net head's weights are carried along untrained);
* the data: :func:`train_regressor` takes the same ``synthetic_data(...)`` description as
  ``TrainConfig.data`` and builds the same :class:`datasets.SyntheticDataset` from it
  (:func:`build_regression_data`; only the vertex projections, which the regressor does
  not use and which draw no random numbers, are switched off), so sample ``i`` is the same
  image and pose. Step ``s`` takes the dataset indices of the positions ``s * B .. s * B +
  B - 1`` exactly as NeMo's trainer does (:func:`neural_mesh.training.batch_indices`: the
  positions themselves, modulo the length, when ``data["shuffle"]`` is false, as
  ``synthetic_data`` sets it; the permutation of ``(seed, epoch)`` when it is true).
  With equal ``steps``, ``batch_size`` and ``seed`` both methods see the same images in
  the same order; no augmentation is applied.

**On disk** (:func:`save_regressor`, :func:`load_regressor`) a regressor is a directory::

    weights.safetensors   the state dict (backbone with its BatchNorm buffers, heads)
    regressor.json        {"format": "pose_regressor", "format_version": 1,
                           "config": RegressionConfig.to_dict(), "weights_sha256": "..."}

written to a temporary directory and renamed into place (or file by file with
``os.replace`` into an existing directory); nothing is unpickled on load.

Example (a tiny, quick run from the repository root; real runs use the ``small``
backbone, 128 px images and NeMo's ``steps`` / ``batch_size`` / ``seed``)::

    from neural_mesh.backbones import BackboneConfig
    from neural_mesh.regression import (
        RegressionConfig, build_regression_data, load_regressor, train_regressor)
    from neural_mesh.training import synthetic_data

    data = synthetic_data((64, 64), mesh="demos/data/chair.obj")
    config = RegressionConfig(backbone=BackboneConfig(width=8), steps=20, batch_size=4)
    result = train_regressor(config, "runs/regressor", data=data)
    model = load_regressor("runs/regressor")            # eval mode
    sample = build_regression_data(data)[10**6]         # an image not trained on
    R, angles = model.predict(sample["image"][None])    # (1, 3, 3), (1, 3) radians
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from render import angles_to_pose
from render.checks import check_finite, check_floating, check_int_fields, check_number_fields, check_shape

from .backbones import PRESETS, BackboneConfig, FeatureBackbone
from .neural_mesh import ModelError, atomic_directory, file_sha256
from .checkpoints import (
    LATEST_FILE,
    OPTIMIZER_FILE,
    TRAINER_FILE,
    CheckpointError,
    optimizer_state,
    optimizer_tensors,
    read_checkpoint,
    read_tensors,
    write_checkpoint,
)
from .training import batch_indices, flush_denormals, training_threads

__all__ = [
    "ANGLE_NAMES",
    "REGRESSOR_FORMAT",
    "REGRESSOR_FORMAT_VERSION",
    "REGRESSOR_CONFIG_FILE",
    "REGRESSOR_WEIGHTS_FILE",
    "RegressionConfig",
    "PoseRegressor",
    "RegressorResult",
    "RegressorCheckpoint",
    "REGRESSOR_CHECKPOINT_FORMAT",
    "angle_to_bins",
    "bins_to_angle",
    "regression_loss",
    "build_regression_data",
    "train_regressor",
    "save_regressor",
    "load_regressor",
    "load_regressor_checkpoint",
]

#: The angles in the order of the second dimension of every ``(B, 3, ...)`` output.
ANGLE_NAMES = ("azimuth", "elevation", "theta")
REGRESSOR_FORMAT = "pose_regressor"
REGRESSOR_FORMAT_VERSION = 1
REGRESSOR_CONFIG_FILE = "regressor.json"
REGRESSOR_WEIGHTS_FILE = "weights.safetensors"
REGRESSOR_CHECKPOINT_FORMAT = "pose_regressor_checkpoint"
_LOSSES_FILE = "losses.safetensors"

_TWO_PI = 2.0 * math.pi


# ======================================================================================
# Configuration
# ======================================================================================


@dataclass(frozen=True)
class RegressionConfig:
    """Settings of a :class:`PoseRegressor` and its training (stored in ``regressor.json``).

    Attributes:
        backbone: the :class:`BackboneConfig` (a dict is accepted); default the ``small``
            preset, as NeMo's :class:`~neural_mesh.training.TrainConfig`.
        num_bins: bins over the full circle for each angle (24: PoseContrast's 15 degrees).
        hidden: width of the MLP shared by the heads.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        batch_size: images per step.
        steps: optimizer steps.
        seed: seeds the weights (the backbone as NeMo's trainer with the same seed) and,
            for shuffled data, the order.
        offset_weight: weight of the smooth-L1 offset loss.
    """

    backbone: BackboneConfig = PRESETS["small"]
    num_bins: int = 24
    hidden: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 8
    steps: int = 600
    seed: int = 0
    offset_weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.backbone, Mapping):
            object.__setattr__(self, "backbone", BackboneConfig.from_dict(self.backbone))
        if not isinstance(self.backbone, BackboneConfig):
            raise ValueError(
                "RegressionConfig.backbone: expected a BackboneConfig or a dict, "
                f"got {type(self.backbone).__name__}"
            )
        check_int_fields("RegressionConfig", self,
                         (("num_bins", 2), ("hidden", 1), ("batch_size", 1), ("steps", 0), ("seed", 0)))
        check_number_fields("RegressionConfig", self, {
            "lr": (lambda x: x > 0, "> 0"),
            "weight_decay": (lambda x: x >= 0, ">= 0"),
            "offset_weight": (lambda x: x >= 0, ">= 0"),
        })

    @property
    def bin_width(self) -> float:
        """Width of a bin in radians, ``2 pi / num_bins``."""
        return _TWO_PI / self.num_bins

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; :meth:`from_dict` inverts it."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["backbone"] = self.backbone.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegressionConfig:
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"RegressionConfig: expected a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"RegressionConfig: expected keys from {sorted(names)}, got unknown {unknown}")
        return cls(**dict(data))


# ======================================================================================
# Angle bins
# ======================================================================================


def _check_num_bins(num_bins: int) -> int:
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins: expected a positive int, got {num_bins!r}")
    return num_bins


def angle_to_bins(angles: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles (radians, any value) -> ``(bin, offset)`` on a circle of ``num_bins`` bins.

    Bin ``k`` is centred at ``k * w`` (``w = 2 pi / num_bins``) and covers
    ``[(k - 1/2) w, (k + 1/2) w)`` modulo ``2 pi``; the offset is ``angle / w - k``
    (modulo ``num_bins``), in ``[-1/2, 1/2]``. Computed in float64.

    Args:
        angles: ``(...)`` float tensor, finite.
        num_bins: number of bins.

    Returns:
        ``bins (...)`` int64 in ``[0, num_bins)`` and ``offsets (...)`` in bin widths,
        dtype of ``angles``.
    """
    num_bins = _check_num_bins(num_bins)
    if not isinstance(angles, torch.Tensor):
        raise TypeError(f"angles: expected a torch.Tensor, got {type(angles).__name__}")
    check_floating("angles", angles)
    check_finite("angles", angles)
    u = torch.remainder(angles.to(torch.float64) * (num_bins / _TWO_PI) + 0.5, num_bins)
    bins = u.floor().clamp(0, num_bins - 1)  # u can round up to num_bins exactly
    offsets = u - bins - 0.5
    return bins.to(torch.int64), offsets.to(angles.dtype)


def bins_to_angle(bins: torch.Tensor, offsets: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Inverse of :func:`angle_to_bins`: ``(bin + offset) * w`` wrapped to ``(-pi, pi]``.

    Args:
        bins: ``(...)`` integer bin indices.
        offsets: ``(...)`` float offsets in bin widths (any value; usually in
            ``[-1/2, 1/2]``), broadcast with ``bins``.
        num_bins: number of bins.

    Returns:
        ``(...)`` angles in radians, dtype of ``offsets``.
    """
    num_bins = _check_num_bins(num_bins)
    for name, x in (("bins", bins), ("offsets", offsets)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if bins.is_floating_point() or bins.is_complex():
        raise TypeError(f"bins: expected an integer dtype, got {bins.dtype}")
    check_floating("offsets", offsets)
    a = torch.remainder((bins.to(torch.float64) + offsets.to(torch.float64)) * (_TWO_PI / num_bins), _TWO_PI)
    a = torch.where(a > math.pi, a - _TWO_PI, a).to(offsets.dtype)
    # rounding to float32 can take an angle just above -pi to -fl(pi) < -pi: wrap it too
    return torch.where(a <= -math.pi, a + _TWO_PI, a)


# ======================================================================================
# The model
# ======================================================================================


def _derived_seed(seed: int, *keys: Any) -> int:
    # The derivation of neural_mesh.training (tested: same initial backbone as NeMo's trainer).
    text = ":".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class PoseRegressor(nn.Module):
    """Backbone + bin-classification and in-bin offset heads (module docstring).

    Args:
        config: a :class:`RegressionConfig`.
        seed: seed of the weights (default ``config.seed``). The backbone gets the seed
            NeMo's trainer derives from its ``TrainConfig.seed``, so equal seeds give equal
            initial backbones; the heads get another seed derived from it. The global RNG
            is left alone.

    Attributes:
        config: the :class:`RegressionConfig`.
        backbone: the :class:`FeatureBackbone` (``config.backbone``).
        mlp: the shared MLP on the pooled features.
        cls: ``Linear(hidden, 3 * num_bins)``, the logits.
        reg: ``Linear(hidden, 3 * num_bins)``, the raw offsets.

    Use ``.eval()`` for inference (BatchNorm running statistics); training needs
    ``B * ceil(H / 32) * ceil(W / 32) > 1`` (``FeatureBackbone``).
    """

    def __init__(self, config: RegressionConfig | None = None, seed: int | None = None):
        super().__init__()
        if config is None:
            config = RegressionConfig()
        if not isinstance(config, RegressionConfig):
            raise TypeError(f"config: expected a RegressionConfig, got {type(config).__name__}")
        seed = config.seed if seed is None else seed
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed: expected an int or None, got {seed!r}")
        self.config = config
        self.backbone = FeatureBackbone(config.backbone, seed=_derived_seed(seed, "backbone") % (2**62))
        n, h = config.num_bins, config.hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derived_seed(seed, "regression heads") % (2**62))
            self.mlp = nn.Sequential(
                nn.Linear(self.backbone.pooled_dim, h), nn.ReLU(inplace=True),
                nn.Linear(h, h), nn.ReLU(inplace=True),
            )
            self.cls = nn.Linear(h, 3 * n)
            self.reg = nn.Linear(h, 3 * n)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-angle bin logits and offsets.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1] (normalised inside the backbone).

        Returns:
            ``{"logits": (B, 3, num_bins), "offsets": (B, 3, num_bins)}``, angles in the
            order azimuth, elevation, theta; offsets in bin widths in ``[-1/2, 1/2]``.
        """
        x = self.mlp(self.backbone.forward_pooled(images))
        shape = (x.shape[0], 3, self.config.num_bins)
        return {
            "logits": self.cls(x).view(shape),
            "offsets": 0.5 * torch.tanh(self.reg(x).view(shape)),
        }

    @torch.no_grad()
    def predict_angles(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3)`` azimuth, elevation, theta in ``(-pi, pi]``: the argmax bin's centre
        plus that bin's offset (no gradient; call ``.eval()`` first)."""
        out = self(images)
        bins = out["logits"].argmax(dim=-1)
        offsets = out["offsets"].gather(-1, bins[..., None])[..., 0]
        return bins_to_angle(bins, offsets, self.config.num_bins)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``R (B, 3, 3)`` (object-to-camera rotation, ``angles_to_pose(a, e, theta, 1)``)
        and the ``(B, 3)`` angles of :meth:`predict_angles`."""
        angles = self.predict_angles(images)
        R, _ = angles_to_pose(angles[:, 0], angles[:, 1], angles[:, 2], 1.0)
        return R, angles


# ======================================================================================
# Loss
# ======================================================================================


def regression_loss(
    out: Mapping[str, torch.Tensor], angles: torch.Tensor, config: RegressionConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy over the bins + ``offset_weight`` x smooth-L1 on the true bin's offset.

    Args:
        out: :meth:`PoseRegressor.forward` output, ``logits`` and ``offsets``
            ``(B, 3, num_bins)``.
        angles: ``(B, 3)`` ground-truth azimuth, elevation, theta (radians).
        config: gives ``num_bins`` and ``offset_weight``.

    Returns:
        ``(total, parts)``: the scalar loss and ``{"classification": float,
        "offset": float}`` (both averaged over the batch and the three angles).
    """
    logits, offsets = out["logits"], out["offsets"]
    dims = check_shape("logits", logits, ["B", 3, config.num_bins])
    check_shape("offsets", offsets, [dims["B"], 3, config.num_bins])
    check_shape("angles", angles, [dims["B"], 3])
    bins, target = angle_to_bins(angles.to(logits.device), config.num_bins)
    ce = F.cross_entropy(logits.reshape(-1, config.num_bins), bins.reshape(-1))
    picked = offsets.gather(-1, bins[..., None])[..., 0]
    offset = F.smooth_l1_loss(picked, target.to(picked.dtype))
    total = ce + config.offset_weight * offset
    return total, {"classification": float(ce.detach()), "offset": float(offset.detach())}


# ======================================================================================
# Data and training
# ======================================================================================


def build_regression_data(data: Mapping[str, Any]) -> torch.utils.data.Dataset:
    """The :class:`datasets.SyntheticDataset` of a ``synthetic_data(...)`` description,
    as :func:`neural_mesh.training.build_data` builds it (same config, seed and length,
    so the same image and pose at every index), without the vertex projections.

    Raises:
        ValueError: a description of another kind, a missing or changed mesh file.
    """
    from datasets.synthetic import SyntheticConfig, SyntheticDataset

    if not isinstance(data, Mapping) or data.get("kind") != "synthetic":
        kind = data.get("kind") if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"data: expected a synthetic_data(...) description (kind 'synthetic'), got {kind!r}")
    if data.get("mesh"):
        path = Path(data["mesh"])
        if not path.is_file():
            raise ValueError(f"{path}: mesh file not found")
        if data.get("mesh_sha256") and file_sha256(path) != data["mesh_sha256"]:
            raise ValueError(f"{path}: the mesh file changed since the data was described")
    config = SyntheticConfig.from_dict(data["config"])
    # Vertex projections are computed after every random draw of a sample: switching them
    # off changes no image or pose, only skips work the regressor does not need.
    config = dataclasses.replace(config, vertex_projections=False)
    return SyntheticDataset(config, seed=int(data["seed"]), length=int(data["length"]))


class _Batches(torch.utils.data.Dataset):
    """``dataset`` with each sample paired with its index (for error messages)."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, dict[str, Any]]:
        return i, self.dataset[i]


def _collate_items(items: list[tuple[int, dict[str, Any]]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, angles = [], []
    for i, sample in items:
        missing = [k for k in ("image", *ANGLE_NAMES) if k not in sample]
        if missing:
            raise ValueError(f"sample {i}: missing {missing} (the regressor needs the image and angles)")
        images.append(torch.as_tensor(sample["image"], dtype=torch.float32))
        angles.append(torch.stack([torch.as_tensor(sample[k], dtype=torch.float32).reshape(()) for k in ANGLE_NAMES]))
    sizes = sorted({tuple(x.shape) for x in images})
    if len(sizes) != 1:
        raise ValueError(f"batch: expected images of one size, got {sizes} "
                         "(crop or resize real images to a fixed size first)")
    return torch.stack(images), torch.stack(angles)


@dataclass(frozen=True, eq=False)
class RegressorResult:
    """What :func:`train_regressor` did.

    Attributes:
        model: the trained :class:`PoseRegressor` (train mode, on the training device).
        losses: the total loss of every step.
        seconds_per_step: wall time per step (data loading included).
    """

    model: PoseRegressor
    losses: list[float]
    seconds_per_step: float


def train_regressor(
    config: RegressionConfig,
    out_dir: str | os.PathLike,
    *,
    dataset: torch.utils.data.Dataset | None = None,
    data: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    workers: int = 0,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int = 500,
    init: PoseRegressor | None = None,
) -> RegressorResult:
    """Train a :class:`PoseRegressor` with Adam and :func:`regression_loss`; save it to
    ``out_dir`` (:func:`save_regressor`) at the end.

    Step ``s`` uses the dataset indices of positions ``s * B .. s * B + B - 1``
    (:func:`neural_mesh.training.batch_indices`: the positions modulo the length, or,
    when ``data["shuffle"]`` is true, NeMo's permutation from ``config.seed``), the order
    NeMo's trainer uses (module docstring).

    With ``run_dir`` a long run can span several processes: a checkpoint (weights, Adam's
    state, the losses so far; the layout of :mod:`neural_mesh.training`'s run directories,
    format ``"pose_regressor_checkpoint"``) is written there every ``checkpoint_every``
    steps and after the last, the last two kept; ``resume=True`` continues from the
    latest one if there is one (its config must equal ``config`` up to ``steps``), exactly
    as the uninterrupted run would have gone on (the data of a step depends on the step
    alone and nothing else draws random numbers).

    Args:
        config: the :class:`RegressionConfig`.
        out_dir: the model directory written at the end.
        dataset: a dataset of schema samples with ``image (3, H, W)``, ``azimuth``,
            ``elevation``, ``theta`` (exactly one of ``dataset`` and ``data``).
        data: a :func:`neural_mesh.training.synthetic_data` description
            (:func:`build_regression_data`).
        device: ``"cpu"``, ``"cuda"``, ...
        progress: show a tqdm bar.
        workers: DataLoader processes rendering the next batches while the model trains
            (0: in this process; on a CPU this process then trains with ``workers``
            threads fewer, :func:`neural_mesh.training.training_threads`).
        run_dir: where checkpoints go (None: none are written).
        resume: continue from ``run_dir``'s latest checkpoint, if any.
        checkpoint_every: steps between checkpoints.
        init: start from this regressor's weights instead of ``config.seed``'s (e.g. to
            fine-tune a trained one on other data with a fresh Adam at ``config.lr``);
            its ``backbone``, ``num_bins`` and ``hidden`` must equal ``config``'s. Ignored
            when resuming (the checkpoint holds the weights).

    Returns:
        A :class:`RegressorResult`; ``losses`` holds every step's loss, those of the steps
        run before a resume included.

    Raises:
        ValueError: neither or both of ``dataset`` / ``data``, an empty dataset, samples
            without image or angles, images of different sizes, a bad ``checkpoint_every``,
            an ``init`` of another architecture.
        CheckpointError: ``run_dir`` already holds a run and ``resume`` is false, its
            checkpoint is corrupt or was written with another config.
    """
    if (dataset is None) == (data is None):
        raise ValueError("train_regressor: expected exactly one of dataset= and data=")
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected an int >= 1, got {checkpoint_every!r}")
    if resume and run_dir is None:
        raise ValueError("resume: needs run_dir= (where the checkpoints are)")
    if init is not None:
        if not isinstance(init, PoseRegressor):
            raise TypeError(f"init: expected a PoseRegressor, got {type(init).__name__}")
        shape = ("backbone", "num_bins", "hidden")
        if any(getattr(init.config, k) != getattr(config, k) for k in shape):
            raise ValueError(f"init: its {', '.join(shape)} differ from the config's "
                             f"({[getattr(init.config, k) for k in shape]} vs {[getattr(config, k) for k in shape]})")
    run_dir = None if run_dir is None else Path(run_dir)
    ckpt = None
    if run_dir is not None and (run_dir / LATEST_FILE).is_file():
        if not resume:
            raise CheckpointError(f"{run_dir}: already holds a training run ({LATEST_FILE}); "
                                  "resume it or choose another run directory")
        ckpt = load_regressor_checkpoint(run_dir)
        if dataclasses.replace(ckpt.config, steps=config.steps) != config:
            a, b = ckpt.config.to_dict(), config.to_dict()
            diff = [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k != "steps" and a[k] != b[k]]
            raise CheckpointError(f"{ckpt.path}: the run was started with a different config "
                                  f"({'; '.join(diff[:4])})")
    shuffle = False
    if data is not None:
        dataset = build_regression_data(data)
        shuffle = bool(data.get("shuffle", False))
    length = len(dataset)
    if length < 1:
        raise ValueError("dataset: expected at least one sample, got an empty dataset")
    device = torch.device(device)
    model = PoseRegressor(config)
    losses: list[float] = []
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model.state_dict())
        losses, start = list(ckpt.losses), ckpt.step
    elif init is not None:
        model.load_state_dict(init.state_dict())
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.optimizer_state)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=min(start, config.steps), unit="step", desc="regression train",
                   dynamic_ncols=True)
    steps = [batch_indices(step, config.batch_size, length, config.seed, shuffle)
             for step in range(start, config.steps)]
    loader = torch.utils.data.DataLoader(_Batches(dataset), batch_sampler=steps, collate_fn=_collate_items,
                                         num_workers=workers)
    step = start
    t0 = time.perf_counter()
    with training_threads(workers, device), flush_denormals():
        try:
            for images, angles in loader:
                total, _ = regression_loss(model(images.to(device)), angles.to(device), config)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                losses.append(float(total.detach()))
                step += 1
                if run_dir is not None and (step % checkpoint_every == 0 or step == config.steps):
                    _save_regressor_checkpoint(run_dir, step, model, optimizer, losses)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
        finally:
            if bar is not None:
                bar.close()
    elapsed = time.perf_counter() - t0
    save_regressor(model, out_dir)
    run = step - start
    return RegressorResult(model, losses, elapsed / run if run else 0.0)


# ======================================================================================
# Checkpoints
# ======================================================================================


@dataclass(frozen=True, eq=False)
class RegressorCheckpoint:
    """A checkpoint of :func:`train_regressor` read back by :func:`load_regressor_checkpoint`.

    Attributes:
        path: the checkpoint directory.
        step: optimizer steps done.
        config: the run's :class:`RegressionConfig`.
        model: the :class:`PoseRegressor` with the step's weights (eval mode, CPU).
        optimizer_state: Adam's ``state_dict`` (tensors on the CPU).
        losses: the loss of every step so far.
    """

    path: Path
    step: int
    config: RegressionConfig
    model: PoseRegressor
    optimizer_state: dict[str, Any]
    losses: list[float]


def _cpu_state(model: PoseRegressor) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU copies (what safetensors writes)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _save_regressor_checkpoint(run_dir: Path, step: int, model: PoseRegressor,
                               optimizer: torch.optim.Optimizer, losses: list[float]) -> Path:
    from safetensors.torch import save_file

    opt_tensors, param_groups = optimizer_tensors(optimizer.state_dict())

    def write(work: Path) -> None:
        save_file(_cpu_state(model), str(work / REGRESSOR_WEIGHTS_FILE))
        save_file(opt_tensors, str(work / OPTIMIZER_FILE))
        save_file({"losses": torch.tensor(losses, dtype=torch.float64)}, str(work / _LOSSES_FILE))

    trainer = {
        "format": REGRESSOR_CHECKPOINT_FORMAT,
        "format_version": REGRESSOR_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "optimizer": {"type": type(optimizer).__name__, "param_groups": param_groups},
    }
    return write_checkpoint(run_dir, step, 2, write, trainer)


def load_regressor_checkpoint(path: str | os.PathLike) -> RegressorCheckpoint:
    """Read a :func:`train_regressor` checkpoint: ``path`` is its ``run_dir`` (the latest
    checkpoint) or a ``checkpoints/step_*`` directory; every file's SHA-256 is checked.

    Raises:
        CheckpointError: missing or corrupt files, another format, weights that do not fit
            the recorded config (one line naming the file).
    """
    ckpt, info = read_checkpoint(path, REGRESSOR_CHECKPOINT_FORMAT, REGRESSOR_FORMAT_VERSION)
    try:
        config = RegressionConfig.from_dict(info["config"])
        step = int(info["step"])
        param_groups = info["optimizer"]["param_groups"]
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{ckpt / TRAINER_FILE}: malformed ({error})") from None
    model = PoseRegressor(config)
    try:
        model.load_state_dict(read_tensors(ckpt / REGRESSOR_WEIGHTS_FILE), strict=True)
    except RuntimeError as error:
        text = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{ckpt / REGRESSOR_WEIGHTS_FILE}: does not fit the config ({text})") from None
    losses = read_tensors(ckpt / _LOSSES_FILE).get("losses")
    if losses is None or losses.shape != (step,):
        raise CheckpointError(f"{ckpt / _LOSSES_FILE}: expected the {step} losses of the steps done")
    return RegressorCheckpoint(ckpt, step, config, model.eval(), optimizer_state(ckpt / OPTIMIZER_FILE, param_groups),
                               losses.tolist())


# ======================================================================================
# Saving and loading
# ======================================================================================


def save_regressor(model: PoseRegressor, directory: str | os.PathLike) -> None:
    """Write ``weights.safetensors`` and ``regressor.json`` into ``directory``.

    A new directory is assembled under a temporary name beside it and renamed into place;
    into an existing directory each file is written to a temporary name and replaced
    (weights first). Tensors are saved from the CPU.
    """
    from safetensors.torch import save_file

    if not isinstance(model, PoseRegressor):
        raise TypeError(f"model: expected a PoseRegressor, got {type(model).__name__}")
    directory = Path(directory)
    tensors = _cpu_state(model)
    info = {
        "format": REGRESSOR_FORMAT,
        "format_version": REGRESSOR_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "weights_sha256": None,
    }
    with atomic_directory(directory, replace_files=(REGRESSOR_WEIGHTS_FILE, REGRESSOR_CONFIG_FILE)) as work:
        save_file(tensors, str(work / REGRESSOR_WEIGHTS_FILE))
        info["weights_sha256"] = file_sha256(work / REGRESSOR_WEIGHTS_FILE)
        (work / REGRESSOR_CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")


def load_regressor(directory: str | os.PathLike, device: str | torch.device = "cpu") -> PoseRegressor:
    """Load a :class:`PoseRegressor` written by :func:`save_regressor` (eval mode).

    Raises:
        ModelError: a missing directory or file, invalid JSON, another format or version,
            a bad config, weights that fail their checksum, cannot be read or do not fit
            the config (one line naming the file).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: no such regressor directory")
    config_path = directory / REGRESSOR_CONFIG_FILE
    weights_path = directory / REGRESSOR_WEIGHTS_FILE
    if not config_path.is_file():
        raise ModelError(f"{config_path}: missing (not a regressor directory?)")
    try:
        info = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        text = " ".join(str(error).split())[:200]
        raise ModelError(f"{config_path}: not valid JSON ({text})") from None
    if not isinstance(info, dict) or info.get("format") != REGRESSOR_FORMAT:
        raise ModelError(f"{config_path}: not a regressor config (expected \"format\": \"{REGRESSOR_FORMAT}\")")
    if info.get("format_version") != REGRESSOR_FORMAT_VERSION:
        raise ModelError(f"{config_path}: unsupported format_version {info.get('format_version')!r} "
                         f"(this version reads {REGRESSOR_FORMAT_VERSION})")
    try:
        config = RegressionConfig.from_dict(info.get("config"))
    except (TypeError, ValueError) as error:
        raise ModelError(f"{config_path}: config: {error}") from None
    if not weights_path.is_file():
        raise ModelError(f"{weights_path}: missing (expected beside {REGRESSOR_CONFIG_FILE})")
    sha = info.get("weights_sha256")
    if sha is not None and file_sha256(weights_path) != sha:
        raise ModelError(f"{weights_path}: checksum does not match {REGRESSOR_CONFIG_FILE} "
                         "(files from different saves?)")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        text = " ".join(str(error).split())[:200]
        raise ModelError(f"{weights_path}: cannot read safetensors ({text})") from None
    model = PoseRegressor(config)  # seeded: leaves the global RNG alone
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        text = " ".join(str(error).split())[:200]
        raise ModelError(f"{weights_path}: does not fit the config in {REGRESSOR_CONFIG_FILE} ({text})") from None
    return model.to(device).eval()
