"""NeMo's contrastive training of the backbone and the neural-mesh vertex features.

Frames, pixel centres and layouts follow ``docs/conventions.md``. The backbone's feature
cell ``(i, j)`` is centred at input pixel ``(u, v) = (8 j + 3.5, 8 i + 3.5)``
(:mod:`neural_mesh.backbones`).

**What is learned** (NeMo, METHODS.md): a backbone whose unit features at the projection
of every (visible) mesh vertex are close to that vertex's entry of a *vertex bank*
``(V, C)`` and far from the entries of the other vertices and from a *clutter bank*
``(M, C)`` of background features. The banks are not trained by gradient: they are
buffers updated after each step, and become the :class:`~neural_mesh.NeuralMesh`'s
``features`` and ``clutter``.

**Per step**, for a batch of images with known pose:

1. ``feature_map = backbone(images)``, ``(B, C, ceil(H / 8), ceil(W / 8))``.
2. :func:`sample_vertex_features`: the feature of every vertex at the cell its projection
   ``vertex_uv`` falls in, ``cell = floor((u - 3.5) / 8 + 0.5)`` (likewise rows; this is
   ``round`` of the feature coordinate ``(u - 3.5) / 8``, i.e. the cell whose 8x8 pixel
   window holds pixel ``round(u)``); NeMo samples at whole cells too. ``mode="bilinear"``
   instead interpolates the map at ``((u - 3.5) / 8, (v - 3.5) / 8)`` (border-clamped) and
   renormalises. Only *visible* vertices (``vertex_visible``: not self-occluded, inside
   the image; and not under an occluder, where a sample has an ``occluder_mask``) enter
   the loss.
3. :func:`sample_background_features`: ``num_background`` (NeMo: 5) features per image at
   random cells whose whole 8x8 window lies outside the object ``mask`` (cells whose
   centre pixel is outside it when no window is fully outside; none when the object
   fills the image).
4. :func:`nemo_contrastive_loss`: for each visible vertex ``k`` of image ``b`` with feature
   ``f``, the logits are ``<f, bank_j> / T`` for every vertex ``j`` and
   ``<f, clutter_m> / T + log(clutter_weight)`` for every clutter entry ``m``; vertices
   other than ``k`` within the *neighbour radius* of ``k`` are removed from the softmax
   (logit ``-inf``: too close to be told apart, NeMo's ``mask_remove_near``); the loss is
   the cross-entropy with target ``k``, averaged over all visible vertices of the batch.
   Adding ``log(clutter_weight)`` multiplies each clutter entry's term in the softmax
   denominator by ``clutter_weight`` (NeMo: 0.005, so a bank of 2,048 clutter features
   weighs like about 10 vertices). The neighbour radius is 2D by default:
   ``neighbor_radius * max(H, W)`` pixels between the projections in this image (NeMo:
   48 px on images of about 640 px, so 0.075), or with ``neighbor_radius_3d`` a 3D
   distance of ``neighbor_radius_3d * size`` between the vertices (``size`` = the longest
   side of the mesh's bounding box; NeMo: 0.1). Plus ``regularizer_weight`` (NeMo: 0.1)
   times the mean similarity of the batch's background features to all vertex-bank
   entries (NeMo's ``noise_sim`` term): it pushes background features away from the
   object's. The banks enter as constants: gradients reach only the image features.
5. Adam step on the backbone (NeMo: lr 1e-4, weight decay 1e-4).
6. Bank updates with the step's (detached) features: :func:`update_vertex_bank`,
   ``bank_k <- normalize(momentum * bank_k + (1 - momentum) * mean_k)`` with ``mean_k``
   the mean feature of vertex ``k`` over the images of the batch where it is visible
   (vertices seen in no image keep their entry; NeMo's code divides the sum by the batch
   size instead, which slows the update of rarely seen vertices); :func:`push_clutter`
   writes the background features into the clutter bank as a FIFO ring buffer.

**Data**: any ``torch.utils.data.Dataset`` yielding schema samples (:mod:`datasets.schema`)
with ``image``, ``K``, ``R``, ``t``, ``category`` and, when known, ``mask``,
``vertex_uv``, ``vertex_visible``. Samples pick their neural mesh by ``category``. When
``vertex_uv`` is absent it is computed by :func:`project_vertices` (projection with
``K, R, t`` and visibility against the neural mesh's own z-buffer at full resolution, the
rule of :func:`datasets.synthetic.vertex_visibility`); without ``mask`` the background is
sampled outside the neural mesh's silhouette. All images of a batch must have one size
(real-format loaders need a fixed-size crop first). :func:`synthetic_data` describes the
built-in synthetic data: one mesh (its neural mesh is the same
:func:`render.cuboid_surface` the dataset projects; :func:`build_data` checks that vertex
for vertex) or procedural categories (one cuboid per category around the vertices of all
its shapes, NeMo's prototype cuboid, projected by :func:`project_vertices`).

**Order and resumption**: the global batch of step ``s`` holds the dataset positions
``s * B .. s * B + B - 1``, mapped to dataset indices by :func:`batch_indices` (a
permutation per epoch from ``(seed, epoch)``, or the identity); background cells are drawn
from a generator seeded by ``(seed, position)``. Together with the checkpoint (weights,
Adam state, banks, FIFO pointers, step, RNG state) this makes a resumed run continue
exactly as an uninterrupted one (bit for bit on the same device, thread count and torch
version; tested).

**Distributed** (``torchrun``): call :func:`init_distributed` first (gloo on CPU, nccl on
CUDA). Rank ``r`` of ``w`` takes the contiguous shard ``r * B / w .. (r + 1) * B / w - 1``
of every global batch (``B`` must be divisible by ``w``); the backbone is wrapped in
``DistributedDataParallel`` (gradients averaged); bank updates use the per-vertex feature
sums and counts all-reduced over ranks and the background features all-gathered in rank
order, so every rank's banks stay identical (and equal to a single process's up to float
summation order); BatchNorm running statistics are averaged over ranks after every step
(batch statistics are per rank, as in plain DDP); only rank 0 writes checkpoints.

**Run directory** (``out_dir``)::

    run.json                       the TrainConfig (compared on resume)
    latest.json                    {"step": s, "checkpoint": "checkpoints/step_00000100"}
    checkpoints/step_00000100/
        trainer.json               format, step, config, mesh names, FIFO pointers,
                                   Adam hyper-parameters, SHA-256 of every file
        backbone.safetensors       the backbone's state dict (BatchNorm buffers included)
        optimizer.safetensors      Adam's per-parameter state
        rng.safetensors            torch RNG state(s)
        meshes/<name>/             NeuralMesh.save: verts, faces, features (= vertex bank),
                                   clutter (= clutter bank)

A checkpoint is assembled in a temporary directory and renamed into place, then
``latest.json`` is replaced atomically; the last ``keep_checkpoints`` are kept (the
generic half, shared with the regression baseline, is :mod:`neural_mesh.checkpoints`).
Nothing is unpickled. :func:`load_checkpoint` reads a run directory or a checkpoint
directory back (backbone + neural meshes: what pose fitting needs).

Example (tiny; a real run is ``demos/train_nemo.py``)::

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> feats = torch.nn.functional.normalize(torch.randn(1, 4, 8, generator=g), dim=-1)
    >>> visible = torch.tensor([[True, True, False, True]])
    >>> out = nemo_contrastive_loss(feats, visible, feats[0], feats[0, :2])
    >>> out.num_vertices, bool(out.loss > 0)
    (3, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from render import Mesh, rasterize
from render.checks import check_int_fields, check_number_fields, check_shape

from .backbones import PRESETS, BackboneConfig, FeatureBackbone
from .neural_mesh import MESH_KINDS, ModelError, NeuralMesh, file_sha256
from .checkpoints import (
    LATEST_FILE,
    OPTIMIZER_FILE,
    TRAINER_FILE,
    CheckpointError,
    optimizer_state,
    optimizer_tensors,
    read_checkpoint,
    read_json,
    read_tensors,
    write_checkpoint,
    write_json_atomic,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "LR_SCHEDULES",
    "learning_rate",
    "Checkpoint",
    "ContrastiveLoss",
    "CheckpointError",
    "vertex_cells",
    "sample_vertex_features",
    "background_cells",
    "sample_background_features",
    "neighbor_exclusion_2d",
    "neighbor_exclusion_3d",
    "nemo_contrastive_loss",
    "vertex_feature_sums",
    "update_vertex_bank",
    "push_clutter",
    "project_vertices",
    "batch_indices",
    "synthetic_data",
    "build_data",
    "init_distributed",
    "train",
    "default_workers",
    "training_threads",
    "flush_denormals",
    "save_checkpoint",
    "load_checkpoint",
    "load_run_config",
]

_STRIDE = 8
CHECKPOINT_FORMAT = "nemo_training_checkpoint"
CHECKPOINT_VERSION = 1
RUN_FILE = "run.json"
BACKBONE_FILE = "backbone.safetensors"
RNG_FILE = "rng.safetensors"
MESHES_DIR = "meshes"


# ======================================================================================
# Feature sampling
# ======================================================================================


def vertex_cells(
    vertex_uv: torch.Tensor, feature_size: Sequence[int], stride: int = _STRIDE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature cells ``(i, j)`` holding full-image points: ``j = floor((u - c) / s + 0.5)``,
    ``i = floor((v - c) / s + 0.5)`` with ``c = (s - 1) / 2`` (3.5 at stride 8), clamped
    to the map.

    Args:
        vertex_uv: ``(..., 2)`` pixel coordinates ``(u, v)``.
        feature_size: ``(h, w)`` of the feature map.
        stride: the map's stride.

    Returns:
        ``i, j`` int64 tensors of shape ``(...)``.

    >>> i, j = vertex_cells(torch.tensor([[3.5, 3.5], [7.4, 7.6], [100.0, -5.0]]), (4, 4))
    >>> i.tolist(), j.tolist()
    ([0, 1, 0], [0, 0, 3])
    """
    h, w = (int(x) for x in feature_size)
    c = (stride - 1) / 2.0
    j = torch.floor((vertex_uv[..., 0] - c) / stride + 0.5).clamp(0, w - 1).long()
    i = torch.floor((vertex_uv[..., 1] - c) / stride + 0.5).clamp(0, h - 1).long()
    return i, j


def sample_vertex_features(
    feature_map: torch.Tensor,
    vertex_uv: torch.Tensor,
    visible: torch.Tensor,
    stride: int = _STRIDE,
    mode: str = "nearest",
) -> torch.Tensor:
    """Image features at the projected vertices (module docstring, step 2).

    Args:
        feature_map: ``(B, C, h, w)`` unit features; cell ``(i, j)`` centred at pixel
            ``(s j + (s - 1) / 2, s i + (s - 1) / 2)``.
        vertex_uv: ``(B, V, 2)`` full-image pixel coordinates.
        visible: ``(B, V)`` bool; rows of invisible vertices are returned as zeros.
        stride: ``s``.
        mode: ``"nearest"`` (the cell holding the point, NeMo) or ``"bilinear"``
            (interpolated at the point, border-clamped, renormalised).

    Returns:
        ``(B, V, C)``, differentiable w.r.t. ``feature_map``.
    """
    dims = check_shape("feature_map", feature_map, ["B", "C", "h", "w"])
    b, c, h, w = dims["B"], dims["C"], dims["h"], dims["w"]
    v = check_shape("vertex_uv", vertex_uv, [b, "V", 2])["V"]
    check_shape("visible", visible, [b, v])
    if mode == "nearest":
        i, j = vertex_cells(vertex_uv, (h, w), stride)
        flat = (i * w + j).to(feature_map.device)  # (B, V)
        feats = feature_map.flatten(2).gather(2, flat[:, None, :].expand(b, c, v))
        feats = feats.transpose(1, 2)
    elif mode == "bilinear":
        off = (stride - 1) / 2.0
        uf = (vertex_uv[..., 0] - off) / stride
        vf = (vertex_uv[..., 1] - off) / stride
        gx = 2.0 * uf / max(w - 1, 1) - 1.0 if w > 1 else torch.zeros_like(uf)
        gy = 2.0 * vf / max(h - 1, 1) - 1.0 if h > 1 else torch.zeros_like(vf)
        grid = torch.stack([gx, gy], dim=-1)[:, :, None, :].to(feature_map)
        feats = F.grid_sample(
            feature_map, grid, mode="bilinear", padding_mode="border", align_corners=True
        )[..., 0].transpose(1, 2)
        feats = F.normalize(feats, dim=-1, eps=1e-12)
    else:
        raise ValueError(f"mode: expected 'nearest' or 'bilinear', got {mode!r}")
    return feats * visible.to(feats.device, feats.dtype)[..., None]


def background_cells(
    mask: torch.Tensor,
    feature_size: Sequence[int],
    n: int,
    generator: torch.Generator | None = None,
    stride: int = _STRIDE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random background cells of one image (module docstring, step 3).

    Candidates are the cells whose whole ``stride x stride`` window (clipped to the image)
    holds no ``mask`` pixel; if there are none, the cells whose centre pixel is outside
    the mask. ``n`` cells are drawn without replacement when there are enough candidates,
    with replacement otherwise.

    Args:
        mask: ``(H, W)`` bool, True on the object.
        feature_size: ``(h, w)`` of the feature map (``ceil(H / s), ceil(W / s)``).
        n: number of cells.
        generator: a CPU ``torch.Generator`` (None: the global RNG).
        stride: ``s``.

    Returns:
        ``idx (n,)`` int64 flat cell indices ``i * w + j`` and ``valid (n,)`` bool
        (all False when no cell is background), on the CPU.

    >>> m = torch.zeros(16, 16, dtype=torch.bool); m[:, :8] = True
    >>> idx, valid = background_cells(m, (2, 2), 3, torch.Generator().manual_seed(0))
    >>> set(idx.tolist()) <= {1, 3}, bool(valid.all())
    (True, True)
    """
    check_shape("mask", mask, ["H", "W"])
    h, w = (int(x) for x in feature_size)
    if n < 0:
        raise ValueError(f"n: expected >= 0, got {n}")
    m = mask.detach().to("cpu", torch.float32)
    H, W = m.shape
    padded = F.pad(m, (0, max(0, w * stride - W), 0, max(0, h * stride - H)))
    padded = padded[: h * stride, : w * stride]
    touched = F.max_pool2d(padded[None, None], stride)[0, 0] > 0  # (h, w)
    candidates = (~touched).flatten().nonzero()[:, 0]
    if candidates.numel() == 0:
        c = (stride - 1) / 2.0
        rows = (torch.arange(h) * stride + c).round().long().clamp(0, H - 1)
        cols = (torch.arange(w) * stride + c).round().long().clamp(0, W - 1)
        centre = m[rows][:, cols] > 0
        candidates = (~centre).flatten().nonzero()[:, 0]
    if candidates.numel() == 0 or n == 0:
        return torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.bool)
    if candidates.numel() >= n:
        pick = torch.randperm(candidates.numel(), generator=generator)[:n]
    else:
        pick = torch.randint(candidates.numel(), (n,), generator=generator)
    return candidates[pick], torch.ones(n, dtype=torch.bool)


def sample_background_features(
    feature_map: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    generator: torch.Generator | None = None,
    stride: int = _STRIDE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` background features per image (:func:`background_cells`, one generator for
    the batch, images in order).

    Args:
        feature_map: ``(B, C, h, w)``.
        mask: ``(B, H, W)`` bool object masks at full resolution.
        n: features per image (NeMo: 5).
        generator: CPU generator.
        stride: the map's stride.

    Returns:
        ``feats (B, n, C)`` (differentiable; zero where invalid) and ``valid (B, n)``.
    """
    dims = check_shape("feature_map", feature_map, ["B", "C", "h", "w"])
    check_shape("mask", mask, [dims["B"], "H", "W"])
    cells = [background_cells(m, (dims["h"], dims["w"]), n, generator, stride) for m in mask]
    idx = torch.stack([c[0] for c in cells]) if cells else torch.zeros(0, n, dtype=torch.int64)
    valid = torch.stack([c[1] for c in cells]) if cells else torch.zeros(0, n, dtype=torch.bool)
    return _gather_cells(feature_map, idx, valid), valid.to(feature_map.device)


def _gather_cells(feature_map: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    b, c = feature_map.shape[:2]
    n = idx.shape[1]
    idx = idx.to(feature_map.device)
    feats = feature_map.flatten(2).gather(2, idx[:, None, :].expand(b, c, n)).transpose(1, 2)
    return feats * valid.to(feats.device, feats.dtype)[..., None]


# ======================================================================================
# Loss
# ======================================================================================


def neighbor_exclusion_2d(vertex_uv: torch.Tensor, radius: float) -> torch.Tensor:
    """``(B, V, V)`` bool: True where vertices ``j != k`` project within ``radius`` pixels.

    >>> uv = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [30.0, 0.0]]])
    >>> neighbor_exclusion_2d(uv, 5.0)[0].int().tolist()
    [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    """
    check_shape("vertex_uv", vertex_uv, ["B", "V", 2])
    d = torch.cdist(vertex_uv.float(), vertex_uv.float())
    eye = torch.eye(vertex_uv.shape[1], dtype=torch.bool, device=vertex_uv.device)
    return (d <= radius) & ~eye


def neighbor_exclusion_3d(verts: torch.Tensor, radius: float) -> torch.Tensor:
    """``(V, V)`` bool: True where vertices ``j != k`` lie within ``radius`` (object units)."""
    check_shape("verts", verts, ["V", 3])
    d = torch.cdist(verts.float(), verts.float())
    eye = torch.eye(verts.shape[0], dtype=torch.bool, device=verts.device)
    return (d <= radius) & ~eye


@dataclass(frozen=True)
class ContrastiveLoss:
    """Output of :func:`nemo_contrastive_loss`.

    Attributes:
        loss: scalar, ``contrastive + regularizer_weight * regularizer`` (the one to
            backpropagate).
        contrastive: scalar, mean cross-entropy over the visible vertices (0 if none).
        regularizer: scalar, mean similarity of the valid background features to every
            vertex-bank entry (0 if none), unweighted.
        num_vertices: number of visible vertex rows averaged in ``contrastive``.
        num_background: number of valid background features in ``regularizer``.
    """

    loss: torch.Tensor
    contrastive: torch.Tensor
    regularizer: torch.Tensor
    num_vertices: int
    num_background: int


def nemo_contrastive_loss(
    vertex_feats: torch.Tensor,
    visible: torch.Tensor,
    vertex_bank: torch.Tensor,
    clutter_bank: torch.Tensor,
    *,
    background_feats: torch.Tensor | None = None,
    background_valid: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    temperature: float = 0.07,
    clutter_weight: float = 0.005,
    regularizer_weight: float = 0.1,
) -> ContrastiveLoss:
    """NeMo's vertex contrastive loss (module docstring, step 4).

    Args:
        vertex_feats: ``(B, V, C)`` image features at the vertices
            (:func:`sample_vertex_features`).
        visible: ``(B, V)`` bool; only visible vertices are rows of the loss.
        vertex_bank: ``(V, C)`` unit vertex features (a constant: detached here).
        clutter_bank: ``(M, C)`` unit clutter features (a constant), ``M >= 0``.
        background_feats: ``(B, N, C)`` background features of the batch (for the
            regularizer), or None.
        background_valid: ``(B, N)`` bool, which of them count (default all).
        exclude: ``(B, V, V)`` or ``(V, V)`` bool, True where vertex ``j`` is not a
            negative for vertex ``k`` (:func:`neighbor_exclusion_2d` / ``_3d``); the
            diagonal is ignored (the target is never excluded). None: no exclusion.
        temperature: ``T`` (NeMo: 0.07).
        clutter_weight: each clutter logit gets ``+ log(clutter_weight)`` (NeMo: 0.005;
            0 leaves clutter out of the softmax).
        regularizer_weight: weight of the background-to-vertex similarity (NeMo: 0.1).

    Returns:
        A :class:`ContrastiveLoss`; gradients flow to ``vertex_feats`` and
        ``background_feats`` only.
    """
    dims = check_shape("vertex_feats", vertex_feats, ["B", "V", "C"])
    b, v, c = dims["B"], dims["V"], dims["C"]
    check_shape("visible", visible, [b, v])
    check_shape("vertex_bank", vertex_bank, [v, c])
    check_shape("clutter_bank", clutter_bank, ["M", c])
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    if not clutter_weight >= 0:
        raise ValueError(f"clutter_weight: expected >= 0, got {clutter_weight}")
    bank = vertex_bank.detach().to(vertex_feats)
    clutter = clutter_bank.detach().to(vertex_feats)
    zero = vertex_feats.sum() * 0.0  # keeps the graph connected when nothing counts

    bi, ki = visible.to(vertex_feats.device).nonzero(as_tuple=True)
    n_rows = int(bi.numel())
    if n_rows:
        rows = vertex_feats[bi, ki]  # (N, C)
        logits = rows @ bank.T / temperature  # (N, V)
        if exclude is not None:
            if exclude.dim() == 2:
                check_shape("exclude", exclude, [v, v])
                ex = exclude.to(rows.device)[ki]
            else:
                check_shape("exclude", exclude, [b, v, v])
                ex = exclude.to(rows.device)[bi, ki]
            ex = ex & (torch.arange(v, device=rows.device)[None, :] != ki[:, None])
            logits = logits.masked_fill(ex, float("-inf"))
        if clutter.shape[0] and clutter_weight > 0:
            clutter_logits = rows @ clutter.T / temperature + math.log(clutter_weight)
            logits = torch.cat([logits, clutter_logits], dim=1)
        contrastive = F.cross_entropy(logits, ki)
    else:
        contrastive = zero

    n_bg = 0
    regularizer = zero
    if background_feats is not None:
        check_shape("background_feats", background_feats, [b, "N", c])
        bg = background_feats
        if background_valid is not None:
            check_shape("background_valid", background_valid, [b, bg.shape[1]])
            bg = bg[background_valid.to(bg.device)]
        else:
            bg = bg.reshape(-1, c)
        n_bg = int(bg.shape[0])
        if n_bg:
            regularizer = (bg @ bank.T).mean() + 0.0 * zero
    loss = contrastive + regularizer_weight * regularizer
    return ContrastiveLoss(loss, contrastive, regularizer, n_rows, n_bg)


# ======================================================================================
# Banks
# ======================================================================================


def vertex_feature_sums(
    vertex_feats: torch.Tensor, visible: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-vertex sums of the visible features and visibility counts (detached).

    Args:
        vertex_feats: ``(B, V, C)``; visible: ``(B, V)`` bool.

    Returns:
        ``sums (V, C)`` and ``counts (V,)`` (same dtype as the features), ready to be
        all-reduced across ranks before :func:`update_vertex_bank`.
    """
    dims = check_shape("vertex_feats", vertex_feats, ["B", "V", "C"])
    check_shape("visible", visible, [dims["B"], dims["V"]])
    vis = visible.to(vertex_feats.device, vertex_feats.dtype)
    feats = vertex_feats.detach()
    return (feats * vis[..., None]).sum(0), vis.sum(0)


def update_vertex_bank(
    bank: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, momentum: float = 0.9
) -> torch.Tensor:
    """Momentum update of the vertex bank from the batch means (module docstring, step 6).

    ``bank_k <- normalize(momentum * bank_k + (1 - momentum) * sums_k / counts_k)`` where
    ``counts_k > 0``; other entries are returned unchanged.

    Args:
        bank: ``(V, C)`` unit vectors.
        sums, counts: from :func:`vertex_feature_sums` (summed over ranks under DDP).
        momentum: in [0, 1) (NeMo: 0.9; its later code 0.96).

    Returns:
        The new ``(V, C)`` bank (a new tensor).

    >>> bank = torch.eye(2)
    >>> update_vertex_bank(bank, torch.tensor([[0.0, 2.0], [0.0, 0.0]]), torch.tensor([2.0, 0.0]), 0.5).tolist()
    [[0.7071067690849304, 0.7071067690849304], [0.0, 1.0]]
    """
    v, c = check_shape("bank", bank, ["V", "C"]).values()
    check_shape("sums", sums, [v, c])
    check_shape("counts", counts, [v])
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
    seen = counts > 0
    mean = sums.to(bank) / counts.to(bank).clamp_min(1.0)[:, None]
    mixed = F.normalize(momentum * bank + (1.0 - momentum) * mean, dim=1, eps=1e-12)
    return torch.where(seen[:, None].to(bank.device), mixed, bank)


def push_clutter(
    bank: torch.Tensor, pointer: int, feats: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Write features into the clutter bank, a FIFO ring buffer (oldest entries replaced).

    Args:
        bank: ``(M, C)``.
        pointer: the slot the next feature goes to, ``0 <= pointer < M``.
        feats: ``(N, C)`` new features (normalised here; when ``N > M`` only the last
            ``M`` are kept).

    Returns:
        The new bank (a new tensor) and the new pointer ``(pointer + N) % M``.

    >>> bank, p = push_clutter(torch.zeros(3, 2), 2, torch.tensor([[1.0, 0], [0, 1]]))
    >>> bank.tolist(), p
    ([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]], 1)
    """
    m, c = check_shape("bank", bank, ["M", "C"]).values()
    check_shape("feats", feats, ["N", c])
    if m == 0:
        return bank, 0
    if not 0 <= pointer < m:
        raise ValueError(f"pointer: expected 0 <= pointer < {m}, got {pointer}")
    n = feats.shape[0]
    if n == 0:
        return bank, pointer
    feats = F.normalize(feats.detach().to(bank), dim=1, eps=1e-12)
    keep = min(n, m)
    slots = (pointer + (n - keep) + torch.arange(keep)) % m
    out = bank.clone()
    out[slots.to(bank.device)] = feats[n - keep :]
    return out, int((pointer + n) % m)


# ======================================================================================
# Vertex projections
# ======================================================================================


def project_vertices(
    verts: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    image_size: Sequence[int],
    tolerance: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project a neural mesh's vertices into an image and test their visibility.

    The vertices go to the camera (``X_cam = R X + t``), the surface is rasterized at full
    resolution, and visibility follows :func:`datasets.synthetic.vertex_visibility` (the
    rule the synthetic data uses for ``vertex_visible``: inside the image, in front of the
    camera, and not behind the surface's own z-buffer by more than ``tolerance`` plus the
    local depth step).

    Args:
        verts: ``(V, 3)`` object frame; faces: ``(F, 3)`` int64.
        K: ``(3, 3)``; R: ``(3, 3)``; t: ``(3,)``.
        image_size: ``(H, W)``.
        tolerance: depth slack in object units.

    Returns:
        ``vertex_uv (V, 2)`` float32 pixels, ``vertex_visible (V,)`` bool and the mesh's
        ``silhouette (H, W)`` bool.
    """
    from datasets.synthetic import vertex_visibility

    check_shape("verts", verts, ["V", 3])
    check_shape("K", K, [3, 3])
    check_shape("R", R, [3, 3])
    check_shape("t", t, [3])
    verts = verts.to(torch.float32)
    R, t, K = R.to(verts), t.to(verts), K.to(verts)
    verts_cam = verts @ R.T + t
    zbuf = rasterize(verts_cam[None], faces, K, tuple(image_size)).zbuf[0, ..., 0]
    uv, visible = vertex_visibility(verts_cam, zbuf, K, tolerance)
    return uv.to(torch.float32), visible, zbuf >= 0


# ======================================================================================
# Config
# ======================================================================================


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (saved as ``run.json``; a resumed run must match).

    Attributes:
        backbone: the :class:`BackboneConfig` (default the ``"small"`` preset).
        data: JSON description of the data, e.g. from :func:`synthetic_data` (used by
            :func:`build_data` when :func:`train` gets no dataset; compared on resume).
        steps: total optimizer steps of the run.
        batch_size: global batch size (all ranks together).
        lr: Adam learning rate. Default 1e-3, for short CPU runs: on the bundled chair
            (``small`` backbone, 128 px, batch 8) it reached in about 70 steps the loss
            NeMo's 1e-4 (:meth:`paper`) reached in 300. Use 1e-4 for long runs.
        lr_schedule: ``"constant"`` (NeMo) or ``"cosine"``: the rate at step ``s`` (0-based)
            is ``lr * (f + (1 - f) * (1 + cos(pi * s / steps)) / 2)`` with ``f = 0.02``
            (:func:`learning_rate`), a function of the step alone, so resumed runs follow
            it exactly (changing ``steps`` on resume stretches what is left of it).
        weight_decay: Adam weight decay (NeMo: 1e-4).
        seed: seeds the backbone, the initial banks, the data order and the background
            cells.
        num_verts: vertex target of each neural mesh (NeMo: about 1,000).
        mesh_kind: ``"cuboid"`` (NeMo's cuboid around the object; the only choice for
            procedural categories) or ``"remesh"`` (vertices on the surface of the one
            training mesh, :func:`render.remesh_surface`: every vertex is on the object, so
            features are not learned for empty space inside the cuboid and the rendered
            silhouette is the object's own).
        clutter_size: entries of each clutter bank (NeMo: 5 x 512 = 2,560).
        num_background: background features per image (NeMo: 5).
        momentum: vertex-bank momentum (NeMo: 0.9).
        temperature: softmax temperature ``T`` (NeMo: 0.07).
        clutter_weight: factor of each clutter term in the softmax (NeMo: 0.005).
        regularizer_weight: weight of the background-to-vertex similarity (NeMo: 0.1).
        neighbor_radius: 2D exclusion radius as a fraction of ``max(H, W)`` (NeMo: 48 px
            at about 640 px: 0.075).
        neighbor_radius_3d: if set, exclude by 3D distance instead: this fraction of the
            longest side of the mesh's bounding box (NeMo: 0.1).
        sampling: ``"nearest"`` or ``"bilinear"`` (:func:`sample_vertex_features`).
        occluder_clutter: also draw background cells from occluders drawn over the object
            (samples with an ``occluder_mask``): a cell counts as background when its
            window holds no *visible* object pixel, so occluders in front of the object
            enter the clutter bank and the regularizer, as the fitting's loss reads them
            (an occluded pixel is clutter). Default off: only cells outside the amodal
            ``mask`` (NeMo). No measurable effect so far: two builds of the bundled chair
            (``BuildConfig(steps=2000, occlusion=(0.0, 0.5))`` with and without the flag,
            ``benchmarks/bench_pose.py --model DIR --no-regression``) gave L0 72.5% for
            both, L2 32.5% with it and 40.0% without (within build noise), and the same
            margins at the true pose to 0.01 at every level.
        checkpoint_every: write a checkpoint every this many steps (and at the end).
        keep_checkpoints: how many checkpoints to keep.
    """

    backbone: BackboneConfig = PRESETS["small"]
    data: dict = field(default_factory=dict)
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 1e-4
    seed: int = 0
    num_verts: int = 1000
    mesh_kind: str = "cuboid"
    clutter_size: int = 2048
    num_background: int = 5
    momentum: float = 0.9
    temperature: float = 0.07
    clutter_weight: float = 0.005
    regularizer_weight: float = 0.1
    neighbor_radius: float = 0.075
    neighbor_radius_3d: float | None = None
    sampling: str = "nearest"
    occluder_clutter: bool = False
    checkpoint_every: int = 100
    keep_checkpoints: int = 2

    #: Fields that may change when a run is resumed.
    RESUMABLE_CHANGES = ("steps", "checkpoint_every", "keep_checkpoints")

    def __post_init__(self) -> None:
        if isinstance(self.backbone, Mapping):
            object.__setattr__(self, "backbone", BackboneConfig.from_dict(self.backbone))
        if not isinstance(self.backbone, BackboneConfig):
            raise TypeError(
                f"TrainConfig.backbone: expected a BackboneConfig, got {type(self.backbone).__name__}"
            )
        if not isinstance(self.data, Mapping):
            raise TypeError(f"TrainConfig.data: expected a dict, got {type(self.data).__name__}")
        try:
            data = json.loads(json.dumps(dict(self.data)))
        except (TypeError, ValueError) as error:
            raise ValueError(f"TrainConfig.data: expected JSON values ({error})") from None
        object.__setattr__(self, "data", data)
        check_int_fields("TrainConfig", self, (
            ("steps", 0), ("batch_size", 1), ("num_verts", 8), ("clutter_size", 1),
            ("num_background", 0), ("checkpoint_every", 1), ("keep_checkpoints", 1),
        ))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f"TrainConfig.seed: expected an int, got {self.seed!r}")
        check_number_fields("TrainConfig", self, {
            "lr": (lambda x: x > 0, "> 0"),
            "weight_decay": (lambda x: x >= 0, ">= 0"),
            "momentum": (lambda x: 0 <= x < 1, "in [0, 1)"),
            "temperature": (lambda x: x > 0, "> 0"),
            "clutter_weight": (lambda x: x >= 0, ">= 0"),
            "regularizer_weight": (lambda x: x >= 0, ">= 0"),
            "neighbor_radius": (lambda x: x >= 0, ">= 0"),
        })
        r3 = self.neighbor_radius_3d
        if r3 is not None:
            if isinstance(r3, bool) or not isinstance(r3, (int, float)) or not (math.isfinite(r3) and r3 >= 0):
                raise ValueError(f"TrainConfig.neighbor_radius_3d: expected None or a number >= 0, got {r3!r}")
            object.__setattr__(self, "neighbor_radius_3d", float(r3))
        if self.mesh_kind not in MESH_KINDS:
            raise ValueError(f"TrainConfig.mesh_kind: expected one of {list(MESH_KINDS)}, got {self.mesh_kind!r}")
        if self.mesh_kind == "remesh" and self.data.get("kind") == "synthetic" and not self.data.get("mesh"):
            raise ValueError("TrainConfig.mesh_kind: 'remesh' needs one training mesh (procedural categories use cuboids)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig.lr_schedule: expected one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.sampling not in ("nearest", "bilinear"):
            raise ValueError(f"TrainConfig.sampling: expected 'nearest' or 'bilinear', got {self.sampling!r}")
        if not isinstance(self.occluder_clutter, bool):
            raise ValueError(f"TrainConfig.occluder_clutter: expected True or False, got {self.occluder_clutter!r}")

    @classmethod
    def paper(cls, data: Mapping[str, Any] | None = None) -> TrainConfig:
        """NeMo's published settings: ResNet-50, lr 1e-4, 2,560 clutter entries, T 0.07,
        momentum 0.9, 5 background features, 48 px / 640 px exclusion. (NeMo's batch of 108
        on 8 GPUs and its 800 epochs are left to the caller: ``batch_size``, ``steps``.)"""
        return cls(backbone=PRESETS["resnet50"], data=dict(data or {}), lr=1e-4, clutter_size=2560)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; :meth:`from_dict` inverts it."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["backbone"] = self.backbone.to_dict()
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown fields {unknown}")
        return cls(**dict(data))

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the fields (other than :attr:`RESUMABLE_CHANGES`) that differ."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in self.RESUMABLE_CHANGES and a[k] != b[k]]


# ======================================================================================
# Data
# ======================================================================================

_SYNTHETIC_LENGTH = 10**9


#: learning-rate schedules of :attr:`TrainConfig.lr_schedule`
LR_SCHEDULES = ("constant", "cosine")
#: final fraction of the peak rate of the ``"cosine"`` schedule
COSINE_FLOOR = 0.02


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a run of ``config``.

    >>> cfg = TrainConfig(steps=100, lr=1e-3, lr_schedule="cosine")
    >>> [round(learning_rate(cfg, s) * 1e3, 4) for s in (0, 50, 100)]
    [1.0, 0.51, 0.02]
    >>> learning_rate(TrainConfig(lr=1e-3), 70)
    0.001
    """
    if config.lr_schedule == "constant" or config.steps <= 0:
        return config.lr
    progress = min(max(step / config.steps, 0.0), 1.0)
    return config.lr * (COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def synthetic_data(
    image_size: Sequence[int] = (128, 128),
    *,
    mesh: str | os.PathLike | None = None,
    categories: Sequence[str] | None = None,
    seed: int = 0,
    shapes_per_category: int = 8,
    scene: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Describe synthetic training data (:class:`datasets.SyntheticDataset`) for
    :attr:`TrainConfig.data`: one mesh file or procedural categories (exactly one of them).

    The description holds the ``SyntheticConfig`` (as a dict), the data seed and, for a
    mesh, its absolute path and SHA-256. One neural mesh per category: a mesh file's
    category is its file stem (characters other than letters, digits, ``-`` and ``_``
    become ``_``). ``scene`` overrides other ``SyntheticConfig`` fields (viewpoint and
    distance ranges, centre jitter, ...).

    Raises:
        ValueError: neither or both of ``mesh`` / ``categories``, unknown categories, a
            missing mesh file, bad sizes.
    """
    from datasets.synthetic import SyntheticConfig

    if (mesh is None) == (categories is None):
        raise ValueError("synthetic data: expected exactly one of a mesh or categories")
    scene = dict(scene or {})
    reserved = sorted(set(scene) & {"image_size", "categories", "mesh_paths", "shapes_per_category"})
    if reserved:
        raise ValueError(f"synthetic data: scene may not set {reserved} (use the arguments)")
    if mesh is not None:
        path = Path(mesh).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{mesh}: mesh file not found")
        name = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem) or "object"
        cfg = SyntheticConfig(
            image_size=tuple(image_size), categories=(), mesh_paths=(f"{name}={path}",),
            vertex_projections=True, **scene,
        )
        extra = {"mesh": str(path), "mesh_sha256": file_sha256(path), "names": [name]}
    else:
        if isinstance(categories, str):
            categories = (categories,)
        cats = tuple(dict.fromkeys(categories))
        if not cats:
            raise ValueError("synthetic data: expected at least one category")
        cfg = SyntheticConfig(
            image_size=tuple(image_size), categories=cats, shapes_per_category=shapes_per_category, **scene,
        )
        extra = {"mesh": None, "names": list(cats)}
    return {"kind": "synthetic", "seed": int(seed), "length": _SYNTHETIC_LENGTH,
            "shuffle": False, "config": cfg.to_dict(), **extra}


def build_data(config: TrainConfig) -> tuple[torch.utils.data.Dataset, dict[str, NeuralMesh]]:
    """The dataset and fresh neural meshes of ``config.data`` (kind ``"synthetic"``).

    One mesh: the neural mesh is ``NeuralMesh.from_mesh`` of the dataset's own
    (normalised) shape on the very surface the dataset projects
    (``SyntheticDataset.neural_mesh``), so ``vertex_uv`` from the samples indexes the same
    vertices. Categories: a cuboid per category around all vertices of its
    ``shapes_per_category`` shapes; the samples carry no ``vertex_uv`` and the training
    loop projects the category cuboid. Features and clutter are random unit vectors from
    ``seed``.

    Raises:
        ValueError: an unknown data kind, a changed mesh file.
        render.MeshError: an unreadable or degenerate mesh (naming the file).
    """
    from datasets.shapes import load_shape
    from datasets.synthetic import SyntheticConfig, SyntheticDataset

    data = config.data
    if data.get("kind") != "synthetic":
        raise ValueError(
            f"TrainConfig.data: expected kind 'synthetic' to build the data, got {data.get('kind')!r} "
            "(pass dataset= and meshes= to train() for other data)"
        )
    syn = SyntheticConfig.from_dict(data["config"])
    syn = dataclasses.replace(syn, neural_mesh_verts=config.num_verts, neural_mesh_kind=config.mesh_kind)
    dataset = SyntheticDataset(syn, seed=int(data["seed"]), length=int(data["length"]))
    gen = torch.Generator().manual_seed(_derived_seed(config.seed, "banks"))
    meshes: dict[str, NeuralMesh] = {}
    if data.get("mesh"):
        path = Path(data["mesh"])
        if not path.is_file():
            raise ValueError(f"{path}: mesh file not found")
        if data.get("mesh_sha256") and file_sha256(path) != data["mesh_sha256"]:
            raise ValueError(f"{path}: the mesh file changed since the run started")
        name = data["names"][0]
        shape = load_shape(path, category=name)
        # the surface whose vertex projections the samples carry (built once, cached)
        surface = dataset.neural_mesh(("file", name, str(path)))
        nmesh = NeuralMesh.from_mesh(
            shape.mesh, num_verts=config.num_verts, kind=config.mesh_kind,
            feature_dim=config.backbone.feature_dim, clutter_size=config.clutter_size, generator=gen,
            surface=surface,
        )
        meshes[name] = dataclasses.replace(nmesh, meta={**nmesh.meta, "category": name})
    else:
        for category in data["names"]:
            verts = torch.cat([
                dataset.shape(("shape", category, s)).mesh.verts.to(torch.float32)
                for s in range(syn.shapes_per_category)
            ])
            proto = Mesh(verts, torch.zeros(0, 3, dtype=torch.int64), name=f"{category} prototype")
            nmesh = NeuralMesh.from_mesh(
                proto, num_verts=config.num_verts, kind="cuboid",
                feature_dim=config.backbone.feature_dim, clutter_size=config.clutter_size, generator=gen,
            )
            meshes[category] = dataclasses.replace(nmesh, meta={**nmesh.meta, "category": category})
    return dataset, meshes


def batch_indices(
    step: int, batch_size: int, length: int, seed: int, shuffle: bool = True
) -> list[int]:
    """Dataset indices of the global batch of ``step``: positions
    ``step * batch_size + (0 .. batch_size - 1)``, position ``p`` mapped to
    ``perm_e[p % length]`` with ``e = p // length`` and ``perm_e`` a permutation drawn
    from ``(seed, e)`` (identity without ``shuffle``).

    >>> batch_indices(2, 3, 100, seed=0, shuffle=False)
    [6, 7, 8]
    >>> sorted(batch_indices(0, 5, 5, seed=0)) == list(range(5))
    True
    """
    if length < 1:
        raise ValueError(f"length: expected a non-empty dataset, got {length}")
    out = []
    for p in range(step * batch_size, (step + 1) * batch_size):
        e, r = divmod(p, length)
        out.append(int(_permutation(seed, e, length)[r]) if shuffle else r)
    return out


_PERM_CACHE: dict[tuple[int, int, int], torch.Tensor] = {}


def _permutation(seed: int, epoch: int, length: int) -> torch.Tensor:
    key = (seed, epoch, length)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 4:
            _PERM_CACHE.clear()
        g = torch.Generator().manual_seed(_derived_seed(seed, f"epoch:{epoch}"))
        _PERM_CACHE[key] = torch.randperm(length, generator=g)
    return _PERM_CACHE[key]


def _derived_seed(seed: int, *keys: Any) -> int:
    text = ":".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class _Geometry:
    """What the collate function needs of a neural mesh (CPU tensors)."""

    verts: torch.Tensor
    faces: torch.Tensor


class _Positions(torch.utils.data.Dataset):
    """Wraps a dataset: item ``(position, index)`` -> ``(position, sample)``."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, dict[str, Any]]:
        position, index = item
        return position, self.dataset[index]


class _StepSampler(torch.utils.data.Sampler):
    """Yields, for steps ``start .. stop - 1``, this rank's ``(position, index)`` shard."""

    def __init__(self, start: int, stop: int, batch_size: int, length: int, seed: int,
                 shuffle: bool, rank: int, world: int):
        self.start, self.stop = start, stop
        self.batch_size, self.length, self.seed, self.shuffle = batch_size, length, seed, shuffle
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        local = self.batch_size // self.world
        for step in range(self.start, self.stop):
            indices = batch_indices(step, self.batch_size, self.length, self.seed, self.shuffle)
            lo = self.rank * local
            yield [(step * self.batch_size + lo + i, indices[lo + i]) for i in range(local)]


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C (sent to the whole process group) to the training
    process and its ``should_stop``: a worker would otherwise run the handler it inherited
    by forking, or die of ``KeyboardInterrupt`` and fail a trainer waiting for its data."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Collate:
    """Stack a shard into tensors; fill in vertex projections, masks and background cells."""

    def __init__(self, names: list[str], geometry: list[_Geometry], num_background: int,
                 seed: int, stride: int = _STRIDE, occluder_clutter: bool = False):
        self.occluder_clutter = occluder_clutter
        self.names = names
        self.lookup = {n: i for i, n in enumerate(names)}
        self.geometry = geometry
        self.num_background = num_background
        self.seed = seed
        self.stride = stride

    def __call__(self, items: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        sizes = {tuple(s["image"].shape) for _, s in items}
        if len(sizes) != 1:
            raise ValueError(f"batch: expected images of one size, got {sorted(sizes)} "
                             "(crop or resize real images to a fixed size first)")
        _, H, W = sizes.pop()
        h, w = -(-H // self.stride), -(-W // self.stride)
        mesh_idx, uvs, vis, bg_idx, bg_valid = [], [], [], [], []
        for position, s in items:
            category = s.get("category")
            if category not in self.lookup:
                raise ValueError(f"sample at position {position}: category {category!r} has no "
                                 f"neural mesh (have {self.names})")
            g = self.lookup[category]
            geo = self.geometry[g]
            silhouette = None
            if "vertex_uv" in s and "vertex_visible" in s:
                uv, visible = s["vertex_uv"], s["vertex_visible"]
                if uv.shape[0] != geo.verts.shape[0]:
                    raise ValueError(
                        f"sample at position {position}: vertex_uv has {uv.shape[0]} vertices, "
                        f"the neural mesh {category!r} {geo.verts.shape[0]}")
            else:
                missing = [k for k in ("K", "R", "t") if k not in s]
                if missing:
                    raise ValueError(f"sample at position {position}: no pose to project the "
                                     f"neural mesh (missing {missing})")
                uv, visible, silhouette = project_vertices(
                    geo.verts, geo.faces, s["K"], s["R"], s["t"], (H, W))
            mask = s.get("mask")
            if mask is None:
                if silhouette is None:
                    silhouette = project_vertices(
                        geo.verts, geo.faces, s["K"], s["R"], s["t"], (H, W))[2]
                mask = silhouette
            occluded = s.get("occluder_mask")
            if occluded is not None and bool(occluded.any()):
                # a vertex behind an occluder is not seen: not a row of the loss
                col = uv[:, 0].round().long().clamp(0, occluded.shape[1] - 1)
                row = uv[:, 1].round().long().clamp(0, occluded.shape[0] - 1)
                visible = visible & ~occluded[row, col].to(torch.bool)
                if self.occluder_clutter:
                    mask = mask & ~occluded.to(torch.bool)  # occluders in front are clutter
            gen = torch.Generator().manual_seed(_derived_seed(self.seed, "background", position))
            idx, valid = background_cells(mask, (h, w), self.num_background, gen, self.stride)
            mesh_idx.append(g)
            uvs.append(uv.to(torch.float32))
            vis.append(visible.to(torch.bool))
            bg_idx.append(idx)
            bg_valid.append(valid)
        return {
            "positions": torch.tensor([p for p, _ in items], dtype=torch.int64),
            "images": torch.stack([s["image"].to(torch.float32) for _, s in items]),
            "mesh": torch.tensor(mesh_idx, dtype=torch.int64),
            "vertex_uv": uvs,
            "vertex_visible": vis,
            "background_idx": torch.stack(bg_idx),
            "background_valid": torch.stack(bg_valid),
        }


# ======================================================================================
# Distributed helpers
# ======================================================================================


def init_distributed(device: str | torch.device = "cpu") -> tuple[int, int, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1`` in the
    environment): backend gloo for CPU, nccl for CUDA (each rank on ``cuda:LOCAL_RANK``).

    Returns:
        ``(rank, world_size, device)``; ``(0, 1, device)`` in a single process.
    """
    import torch.distributed as dist

    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: CUDA requested but not available")
        if world > 1 or device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ======================================================================================
# Checkpoints
# ======================================================================================


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back by :func:`load_checkpoint`.

    Attributes:
        path: the checkpoint directory.
        step: optimizer steps done.
        config: the run's :class:`TrainConfig`.
        backbone: the :class:`FeatureBackbone` with its trained weights (eval mode).
        meshes: ``{name: NeuralMesh}`` with the trained vertex and clutter banks.
        clutter_pointers: ``{name: int}`` FIFO positions.
        optimizer_state: Adam's ``state_dict`` (tensors on the CPU).
        rng_state: ``{"torch_cpu": uint8 tensor, ["torch_cuda": ...]}``.
    """

    path: Path
    step: int
    config: TrainConfig
    backbone: FeatureBackbone
    meshes: dict[str, NeuralMesh]
    clutter_pointers: dict[str, int]
    optimizer_state: dict[str, Any]
    rng_state: dict[str, torch.Tensor]


def save_checkpoint(
    out_dir: str | os.PathLike,
    step: int,
    config: TrainConfig,
    backbone: FeatureBackbone,
    optimizer: torch.optim.Optimizer,
    meshes: Mapping[str, NeuralMesh],
    clutter_pointers: Mapping[str, int],
) -> Path:
    """Write ``out_dir/checkpoints/step_<step>`` atomically and point ``latest.json`` at it
    (module docstring); older checkpoints beyond ``config.keep_checkpoints`` are removed.

    Returns:
        The checkpoint directory.
    """
    from safetensors.torch import save_file

    opt_tensors, param_groups = optimizer_tensors(optimizer.state_dict())

    def write(work: Path) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in backbone.state_dict().items()}
        save_file(state, str(work / BACKBONE_FILE))
        save_file(opt_tensors, str(work / OPTIMIZER_FILE))
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["torch_cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(work / RNG_FILE))
        for mesh_name, nmesh in meshes.items():
            meta = {**nmesh.meta, "trained_steps": int(step)}
            dataclasses.replace(nmesh, meta=meta).save(work / MESHES_DIR / mesh_name)

    trainer = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "meshes": list(meshes),
        "clutter_pointers": {k: int(v) for k, v in clutter_pointers.items()},
        "optimizer": {"type": type(optimizer).__name__, "param_groups": param_groups},
    }
    return write_checkpoint(out_dir, step, config.keep_checkpoints, write, trainer)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint: ``path`` is a run directory (its ``latest.json`` is followed) or
    a ``checkpoints/step_*`` directory. Nothing is unpickled; every file's SHA-256 is
    checked against ``trainer.json``.

    Raises:
        CheckpointError: missing or corrupt files, another format, tensors that do not fit
            the recorded config (one line naming the file).
    """
    ckpt, info = read_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
    trainer_path = ckpt / TRAINER_FILE
    try:
        config = TrainConfig.from_dict(info["config"])
        step = int(info["step"])
        names = [str(n) for n in info["meshes"]]
        pointers = {str(k): int(v) for k, v in info["clutter_pointers"].items()}
        param_groups = info["optimizer"]["param_groups"]
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{trainer_path}: malformed ({error})") from None

    backbone = FeatureBackbone(config.backbone, seed=0)  # seeded: leaves the global RNG alone
    try:
        backbone.load_state_dict(read_tensors(ckpt / BACKBONE_FILE), strict=True)
    except RuntimeError as error:
        text = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{ckpt / BACKBONE_FILE}: does not fit the backbone config ({text})") from None
    backbone = backbone.to(device).eval()
    meshes = {}
    for name in names:
        try:
            meshes[name] = NeuralMesh.load(ckpt / MESHES_DIR / name, device=device)
        except ModelError as error:
            raise CheckpointError(str(error)) from None
        if meshes[name].feature_dim != config.backbone.feature_dim:
            raise CheckpointError(f"{ckpt / MESHES_DIR / name}: feature_dim {meshes[name].feature_dim} "
                                  f"does not match the backbone's {config.backbone.feature_dim}")
    opt_state = optimizer_state(ckpt / OPTIMIZER_FILE, param_groups)
    rng = read_tensors(ckpt / RNG_FILE)
    return Checkpoint(ckpt, step, config, backbone, meshes, pointers, opt_state, rng)


# ======================================================================================
# Training loop
# ======================================================================================


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        step: steps done in total (the checkpoint's step).
        backbone: the trained backbone (train mode, on the training device).
        meshes: ``{name: NeuralMesh}`` (CPU) with the trained vertex and clutter banks.
        checkpoint: the last checkpoint written (None if no step was taken and none
            existed).
        losses: per step of this call, the total loss averaged over ranks (rows-weighted).
        contrastive: per step, the contrastive part.
        seconds_per_step: wall time per step of this call (data loading included).
        stopped: True when ``should_stop`` ended the run early.
    """

    step: int
    backbone: FeatureBackbone
    meshes: dict[str, NeuralMesh]
    checkpoint: Path | None
    losses: list[float]
    contrastive: list[float]
    seconds_per_step: float
    stopped: bool = False


def load_run_config(out_dir: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` a run in ``out_dir`` was started with (its ``run.json``).

    Raises:
        CheckpointError: no run there, or an unreadable / malformed ``run.json``.
    """
    run = Path(out_dir) / RUN_FILE
    if not run.is_file():
        raise CheckpointError(f"{run}: missing: no training run in {out_dir}")
    saved = read_json(run, "the run's config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{run}: expected a JSON object")
    try:
        return TrainConfig.from_dict(saved)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{run}: malformed config ({error})") from None


def _check_run_dir(out_dir: Path, config: TrainConfig, resume: bool) -> None:
    run = out_dir / RUN_FILE
    if not resume:
        if run.exists():
            raise CheckpointError(f"{out_dir}: already holds a training run ({RUN_FILE}); "
                                  "resume it or choose another output directory")
        return
    if not run.is_file():
        raise CheckpointError(f"{run}: missing: nothing to resume in {out_dir}")
    old = load_run_config(out_dir)
    diff = config.differences(old)
    if diff:
        a, b = old.to_dict(), config.to_dict()
        details = [d for k in diff for d in _diff_paths(a[k], b[k], k)]
        raise CheckpointError(f"{run}: the run was started with a different config "
                              f"({'; '.join(details[:4])}{'; ...' if len(details) > 4 else ''})")


def _diff_paths(a: Any, b: Any, path: str) -> list[str]:
    """``"path: old -> new"`` for every leaf where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _diff_paths(a.get(k), b.get(k), f"{path}.{k}")
        return out
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def default_workers(device: str | torch.device = "cpu") -> int:
    """How many data-loading processes :func:`neural_mesh.build.build_model` and
    ``demos/train_nemo.py`` use by default: on a CPU, one (it renders the next batches
    while the training process, one thread fewer, runs the backbone: rendering and the
    backbone take comparable time per step, so the step costs about the larger of the
    two instead of their sum), none on a single core; on a GPU, the CPU cores but one
    (up to 8): rendering is the bottleneck there. Under ``torchrun`` (``WORLD_SIZE`` > 1)
    the ranks share the cores: none."""
    cores = os.cpu_count() or 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 0
    if torch.device(device).type == "cpu":
        return 1 if cores >= 2 else 0
    return max(0, min(8, cores - 1))


@contextlib.contextmanager
def training_threads(workers: int, device: str | torch.device = "cpu"):
    """While ``workers`` data-loading processes render on the CPU (one thread each),
    let the training process use the remaining threads (at least one); restored on exit.
    Nothing changes on a GPU or without workers."""
    before = torch.get_num_threads()
    if workers > 0 and torch.device(device).type == "cpu":
        torch.set_num_threads(max(1, before - workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _flushing_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero (torch has no getter)."""
    return float(torch.tensor([1e-40], dtype=torch.float32) * 1.0) == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Flush denormal floats (below about 1e-38) to zero on the CPU while training;
    the previous mode is restored on exit.

    As training goes on, some gradients become denormal and the CPU's slow path for
    them made the late steps of a long build much slower than the early ones (the
    README's 12,000-step build, by its progress bar: 0.6 s per step or more around step
    6,000 without flushing, 0.36-0.39 s after resuming with it). The mode is per thread:
    threads the process starts later (torch's intra-op pool) take it from their creator,
    so command-line tools set it before any work (``torch.set_flush_denormal(True)``)."""
    before = _flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    dataset: torch.utils.data.Dataset | None = None,
    meshes: Mapping[str, NeuralMesh] | None = None,
    backbone: FeatureBackbone | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    workers: int = 0,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a backbone and neural meshes with NeMo's contrastive loss (module docstring).

    Args:
        config: the :class:`TrainConfig`.
        out_dir: the run directory (created; checkpoints and ``run.json`` go there).
        dataset: schema samples (default: :func:`build_data` of ``config.data``).
        meshes: ``{category: NeuralMesh}`` initial models (required with ``dataset``;
            default: :func:`build_data`'s fresh ones). Ignored when resuming from a checkpoint.
        backbone: initial backbone weights (default: freshly initialised from
            ``config.seed``); its config must be ``config.backbone``. With ``meshes`` from
            the same model (e.g. a :class:`~neural_mesh.model.PoseModel`'s ``backbone`` and
            ``nmesh``) this fine-tunes it, with a fresh optimizer and ``config``'s learning
            rate schedule, on other data (harder occluders, another domain). Ignored when
            resuming from a checkpoint.
        device: ``"cpu"``, ``"cuda"``; under DDP the device from :func:`init_distributed`.
        resume: continue the run in ``out_dir`` from its latest checkpoint (its
            ``run.json`` must match ``config`` up to ``TrainConfig.RESUMABLE_CHANGES``);
            with no checkpoint yet it starts from step 0.
        workers: DataLoader worker processes that render and collate the next batches
            while this process trains (0: load in this process; :func:`default_workers`
            is what the build uses). On a CPU this process then trains with ``workers``
            threads fewer (:func:`training_threads`), so losses match a ``workers=0``
            run up to float summation order, not bit for bit.
        progress: show a tqdm bar (rank 0).
        should_stop: polled after every step; when it returns True (on any rank) a
            checkpoint is written and training returns.

    Returns:
        A :class:`TrainResult` (identical on every rank).

    Raises:
        CheckpointError: ``out_dir`` already holds a run (without ``resume``), nothing to
            resume, a mismatched config, a corrupt checkpoint.
        ValueError: bad data (samples without pose, images of different sizes, ...), a
            ``backbone`` whose config is not ``config.backbone``.
    """
    import torch.distributed as dist

    rank, world = _dist()
    device = torch.device(device)
    out_dir = Path(out_dir)
    if config.batch_size % world:
        raise ValueError(f"TrainConfig.batch_size: expected a multiple of the world size {world}, "
                         f"got {config.batch_size}")
    if backbone is not None:
        if not isinstance(backbone, FeatureBackbone):
            raise TypeError(f"backbone: expected a FeatureBackbone, got {type(backbone).__name__}")
        if backbone.config != config.backbone:
            raise ValueError(f"backbone: its config {backbone.config.to_dict()} differs from "
                             f"TrainConfig.backbone {config.backbone.to_dict()}")
    init_backbone = backbone
    if dataset is None:
        dataset, built = build_data(config)
        meshes = built if meshes is None else meshes
    _check_run_dir(out_dir, config, resume)
    start = 0
    ckpt: Checkpoint | None = None
    if resume and (out_dir / LATEST_FILE).is_file():
        ckpt = load_checkpoint(out_dir, device="cpu")
        if ckpt.config.differences(config):
            raise CheckpointError(f"{ckpt.path}: checkpoint config differs from the run's "
                                  f"({', '.join(ckpt.config.differences(config))})")
        start = ckpt.step
        meshes = ckpt.meshes
    if not meshes:
        raise ValueError("meshes: expected at least one neural mesh")
    meshes = {n: m.to("cpu") for n, m in meshes.items()}
    names = list(meshes)
    for name, nmesh in meshes.items():
        if nmesh.feature_dim != config.backbone.feature_dim:
            raise ValueError(f"meshes[{name!r}]: feature_dim {nmesh.feature_dim} differs from the "
                             f"backbone's {config.backbone.feature_dim}")
    if world > 1:
        dist.barrier()  # every rank has checked out_dir before rank 0 writes to it
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not (out_dir / RUN_FILE).exists():
            write_json_atomic(out_dir / RUN_FILE, config.to_dict())

    backbone = FeatureBackbone(config.backbone, seed=_derived_seed(config.seed, "backbone") % (2**62))
    if init_backbone is not None and ckpt is None:
        backbone.load_state_dict(init_backbone.state_dict())
    if ckpt is not None:
        backbone.load_state_dict(ckpt.backbone.state_dict())
        torch.set_rng_state(ckpt.rng_state["torch_cpu"])
        if device.type == "cuda" and "torch_cuda" in ckpt.rng_state:
            torch.cuda.set_rng_state(ckpt.rng_state["torch_cuda"], device)
    backbone = backbone.to(device).train()
    optimizer = torch.optim.Adam(backbone.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.optimizer_state)
    model: torch.nn.Module = backbone
    if world > 1:
        # no buffer broadcast before each forward: BatchNorm statistics are averaged over
        # ranks after every step instead (the parameter was renamed in torch 2.13)
        import inspect

        ddp = torch.nn.parallel.DistributedDataParallel
        no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                   else "broadcast_buffers")
        model = ddp(backbone, device_ids=[device.index] if device.type == "cuda" else None,
                    **{no_sync: False})

    vbanks = [meshes[n].features.detach().to(device, torch.float32).clone() for n in names]
    cbanks = [meshes[n].clutter.detach().to(device, torch.float32).clone() for n in names]
    pointers = [int(ckpt.clutter_pointers.get(n, 0)) if ckpt else 0 for n in names]
    excl3d: list[torch.Tensor | None] = []
    for n in names:
        if config.neighbor_radius_3d is None:
            excl3d.append(None)
        else:
            verts = meshes[n].verts.to(device, torch.float32)
            size = float((verts.max(0).values - verts.min(0).values).max())
            excl3d.append(neighbor_exclusion_3d(verts, config.neighbor_radius_3d * size))

    data = config.data
    length = int(data.get("length", len(dataset)))
    shuffle = bool(data.get("shuffle", True))
    sampler = _StepSampler(start, config.steps, config.batch_size, length, config.seed, shuffle, rank, world)
    collate = _Collate(names, [_Geometry(meshes[n].verts.cpu(), meshes[n].faces.cpu()) for n in names],
                       config.num_background, config.seed, backbone.stride, config.occluder_clutter)
    loader = torch.utils.data.DataLoader(
        _Positions(dataset), batch_sampler=sampler, collate_fn=collate, num_workers=workers,
        worker_init_fn=_ignore_sigint if workers else None,
        generator=torch.Generator().manual_seed(_derived_seed(config.seed, "loader")))

    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start, unit="step", desc="nemo train", dynamic_ncols=True)
    losses: list[float] = []
    contrastive_hist: list[float] = []
    last_ckpt = ckpt.path if ckpt is not None else None
    step = start
    stopped = False
    t0 = time.perf_counter()
    with training_threads(workers, device), flush_denormals():
        try:
            for batch in loader:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step)
                stats = _train_step(
                    model, backbone, optimizer, batch, config, names, vbanks, cbanks, pointers,
                    excl3d, device, world)
                step += 1
                stop = bool(should_stop()) if should_stop is not None else False
                if world > 1:
                    flag = torch.tensor([float(stop)], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    stop = bool(flag.item() > 0)
                losses.append(stats[0])
                contrastive_hist.append(stats[1])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats[0]:.3f}")
                if step % config.checkpoint_every == 0 or step == config.steps or stop:
                    current = {n: dataclasses.replace(meshes[n], features=vbanks[i].cpu(), clutter=cbanks[i].cpu(),
                                                      meta=dict(meshes[n].meta))
                               for i, n in enumerate(names)}
                    if rank == 0:
                        last_ckpt = save_checkpoint(out_dir, step, config, backbone, optimizer, current,
                                                    dict(zip(names, pointers)))
                    else:
                        last_ckpt = out_dir / "checkpoints" / f"step_{step:08d}"
                if stop:
                    stopped = True
                    break
        finally:
            if bar is not None:
                bar.close()
    elapsed = time.perf_counter() - t0
    if world > 1:
        dist.barrier()  # rank 0's last checkpoint is on disk when any rank returns
    n_steps = step - start
    final = {n: dataclasses.replace(meshes[n], features=vbanks[i].detach().to(meshes[n].device, copy=True),
                                    clutter=cbanks[i].detach().to(meshes[n].device, copy=True),
                                    meta=dict(meshes[n].meta))
             for i, n in enumerate(names)}
    return TrainResult(step, backbone, final, last_ckpt, losses, contrastive_hist,
                       elapsed / n_steps if n_steps else 0.0, stopped)


def _train_step(
    model: torch.nn.Module,
    backbone: FeatureBackbone,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    config: TrainConfig,
    names: list[str],
    vbanks: list[torch.Tensor],
    cbanks: list[torch.Tensor],
    pointers: list[int],
    excl3d: list[torch.Tensor | None],
    device: torch.device,
    world: int,
) -> tuple[float, float]:
    """One optimizer step and bank update; returns (loss, contrastive) averaged over ranks."""
    import torch.distributed as dist

    images = batch["images"].to(device, non_blocking=True)
    H, W = images.shape[-2:]
    fmap = model(images)
    mesh_of = batch["mesh"]
    bg_idx, bg_valid = batch["background_idx"], batch["background_valid"]
    bg_feats = _gather_cells(fmap, bg_idx, bg_valid)
    bg_valid_d = bg_valid.to(device)
    radius = config.neighbor_radius * max(H, W)

    zero = fmap.sum() * 0.0
    ce_sum, rows, reg_sum, n_bg = zero, 0, zero, 0
    sums: list[tuple[torch.Tensor, torch.Tensor]] = []
    for g in range(len(names)):
        sel = (mesh_of == g).nonzero()[:, 0]
        v, c = vbanks[g].shape
        if sel.numel() == 0:
            sums.append((torch.zeros(v, c, device=device), torch.zeros(v, device=device)))
            continue
        uv = torch.stack([batch["vertex_uv"][i] for i in sel.tolist()]).to(device)
        vis = torch.stack([batch["vertex_visible"][i] for i in sel.tolist()]).to(device)
        sel_d = sel.to(device)
        feats = sample_vertex_features(fmap[sel_d], uv, vis, backbone.stride, config.sampling)
        exclude = excl3d[g] if excl3d[g] is not None else neighbor_exclusion_2d(uv, radius)
        out = nemo_contrastive_loss(
            feats, vis, vbanks[g], cbanks[g], background_feats=bg_feats[sel_d],
            background_valid=bg_valid_d[sel_d], exclude=exclude, temperature=config.temperature,
            clutter_weight=config.clutter_weight, regularizer_weight=config.regularizer_weight)
        ce_sum = ce_sum + out.contrastive * out.num_vertices
        rows += out.num_vertices
        reg_sum = reg_sum + out.regularizer * out.num_background
        n_bg += out.num_background
        sums.append(vertex_feature_sums(feats, vis))
    contrastive = ce_sum / max(rows, 1)
    regularizer = reg_sum / max(n_bg, 1)
    loss = contrastive + config.regularizer_weight * regularizer + zero
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

    # ---- bank updates (identical on every rank) ----------------------------------------
    stats = torch.tensor([float(ce_sum.detach()), float(rows), float(reg_sum.detach()), float(n_bg)],
                         dtype=torch.float64, device=device)
    bg_all, valid_all, mesh_all = bg_feats.detach(), bg_valid_d, mesh_of.to(device)
    if world > 1:
        for s, cnt in sums:
            dist.all_reduce(s)
            dist.all_reduce(cnt)
        dist.all_reduce(stats)
        bg_all = _all_gather_cat(bg_all)
        valid_all = _all_gather_cat(valid_all.to(torch.uint8)).bool()
        mesh_all = _all_gather_cat(mesh_all)
        with torch.no_grad():
            for buf in backbone.buffers():
                if buf.is_floating_point():
                    dist.all_reduce(buf)
                    buf.div_(world)
    with torch.no_grad():
        for g in range(len(names)):
            s, cnt = sums[g]
            vbanks[g] = update_vertex_bank(vbanks[g], s, cnt, config.momentum)
            sel = (mesh_all == g)
            new = bg_all[sel][valid_all[sel]]
            cbanks[g], pointers[g] = push_clutter(cbanks[g], pointers[g], new)
    ce, n, reg, nb = stats.tolist()
    mean_ce = ce / max(n, 1.0)
    return mean_ce + config.regularizer_weight * (reg / max(nb, 1.0)), mean_ce


def _all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
