"""Pix3D (Sun et al. 2018): images of IKEA furniture aligned with their 3D models.

On-disk layout (``root`` is the ``pix3d`` folder)::

    root/
      pix3d.json                     list of annotation entries (one per image)
      img/<category>/<name>.{jpg,png}
      mask/<category>/<name>.png     object mask (grey, 0 / 255)
      model/<category>/<model>/model.obj

Entry fields used: ``img``, ``mask``, ``model`` (paths relative to ``root``), ``category``,
``img_size = [W, H]``, ``bbox = [x0, y0, x1, y1]`` (pixels, 0-based, origin at the top-left
pixel; taken as they are), ``rot_mat`` (3x3), ``trans_mat`` (3), ``focal_length`` (mm),
``truncated``, ``occluded``, ``slightly_occluded`` (kept in :meth:`Pix3D.annotation`),
``cam_position`` / ``inplane_rotation`` (Pix3D's evaluation viewpoint, kept raw).

Conventions of the original, from its README and rendering script ``demo.py`` (Blender):

* Models: ``+x`` leftward, ``+y`` upward, ``+z`` inward "in canonical view", so +y is up
  as in our frame, and the canonical view looks at the model from its -z side.
* The object is placed with ``matrix_world = T(trans_mat) R(rot_mat)`` applied to the raw
  OBJ coordinates (the script overwrites the importer's axis conversion), and the camera
  sits at the origin with Euler rotation ``(0, pi, 0)``: it looks along world +z with
  image right = world -x and image up = world +y. Hence the OpenCV camera frame is
  ``X_cv = F (rot_mat @ X + trans_mat)`` with ``F = diag(-1, -1, 1)``.
* Intrinsics: Blender focal length ``focal_length`` mm with a 32 mm sensor and
  ``sensor_fit = 'HORIZONTAL'`` (the sensor spans the image **width**, whatever the aspect
  ratio), no shift: ``f_px = focal_length * W / 32``, principal point at the image centre
  ``((W - 1) / 2, (H - 1) / 2)`` in our pixel-centre convention.

Our object frame is the model rotated by 180 degrees about +y (:data:`PIX3D_TO_OURS`,
``(x, y, z) -> (-x, y, -z)``), so Pix3D's canonical view becomes our
``azimuth = elevation = theta = 0`` view (camera on our +z, object +x to the right, +y
up); :meth:`Pix3D.mesh` returns models in that frame. Then (:func:`pix3d_to_pose`)::

    R = F @ rot_mat @ PIX3D_TO_OURS,   t = F @ trans_mat,
    K = [[f_px, 0, (W - 1) / 2], [0, f_px, (H - 1) / 2], [0, 0, 1]].

The sample's angles are ``render.pose_to_angles(R, t)``: read from ``R`` alone, with the
distance from the camera to the model origin (Pix3D's camera need not look at the model
origin, so ``angles_to_pose`` of them reproduces ``R`` but not ``t``).

The masks were rendered from the aligned model (README, "Notice"), so they are the model's
silhouette clipped to the image and cover parts hidden by occluders (the schema's meaning
of ``mask``); they are read as pixels brighter than half. Pix3D defines no splits; pass
another list in the same format (e.g. a split file) as ``annotation_file``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from render import Mesh, intrinsics, pose_to_angles

from .realdata import (
    DatasetError,
    ItemIndex,
    check_image,
    load_cad,
    nearest_rotation,
    read_image,
    read_mask,
)

__all__ = ["PIX3D_TO_OURS", "Pix3DEntry", "Pix3D", "pix3d_to_pose"]

#: Rotation from Pix3D model coordinates to our object frame: 180 degrees about +y,
#: ``(x, y, z) -> (-x, y, -z)`` (Pix3D's canonical view becomes our azimuth 0).
PIX3D_TO_OURS = torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64))

# Blender camera with Euler (0, pi, 0) -> OpenCV camera axes.
_BLENDER_TO_OPENCV = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
_SENSOR_WIDTH_MM = 32.0


def pix3d_to_pose(
    rot_mat: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    trans_mat: Sequence[float] | np.ndarray | torch.Tensor,
    focal_length: float,
    image_size: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pix3D's ``rot_mat``, ``trans_mat``, ``focal_length`` (mm) to our ``(K, R, t)`` (float64).

    ``R = diag(-1, -1, 1) @ rot_mat @ PIX3D_TO_OURS``, ``t = diag(-1, -1, 1) @ trans_mat``,
    ``fx = fy = focal_length * W / 32``, ``(cx, cy) = ((W - 1) / 2, (H - 1) / 2)``; derived
    in the module docstring. ``R, t`` map our object frame (:meth:`Pix3D.mesh`) to the
    OpenCV camera.

    Args:
        rot_mat: ``(3, 3)`` rotation as in ``pix3d.json``.
        trans_mat: ``(3,)``.
        focal_length: millimetres, 32 mm sensor width.
        image_size: ``(H, W)`` (note: ``pix3d.json``'s ``img_size`` is ``[W, H]``).

    Returns:
        ``K (3, 3)``, ``R (3, 3)``, ``t (3,)``, float64.

    Raises:
        ValueError: wrong shapes, non-finite values, non-positive focal length or size.

    >>> K, R, t = pix3d_to_pose(np.eye(3), [0.0, 0.0, 2.0], 32.0, (40, 64))
    >>> K.tolist()
    [[64.0, 0.0, 31.5], [0.0, 64.0, 19.5], [0.0, 0.0, 1.0]]
    >>> (R + 0.0).tolist(), (t + 0.0).tolist()
    ([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]], [0.0, 0.0, 2.0])
    """
    R_p = torch.as_tensor(np.asarray(rot_mat, dtype=np.float64))
    t_p = torch.as_tensor(np.asarray(trans_mat, dtype=np.float64))
    if R_p.shape != (3, 3) or t_p.shape != (3,):
        raise ValueError(f"rot_mat, trans_mat: expected shapes (3, 3) and (3,), got "
                         f"{tuple(R_p.shape)} and {tuple(t_p.shape)}")
    if not (torch.isfinite(R_p).all() and torch.isfinite(t_p).all()):
        raise ValueError("rot_mat, trans_mat: expected finite values")
    focal_length = float(focal_length)
    if not math.isfinite(focal_length) or focal_length <= 0:
        raise ValueError(f"focal_length: expected a positive number of mm, got {focal_length}")
    h, w = (int(s) for s in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size: expected positive (H, W), got {tuple(image_size)}")
    f = focal_length * w / _SENSOR_WIDTH_MM
    K = intrinsics(torch.tensor(f, dtype=torch.float64), f, (w - 1) / 2.0, (h - 1) / 2.0)
    R = _BLENDER_TO_OPENCV @ R_p @ PIX3D_TO_OURS
    t = _BLENDER_TO_OPENCV @ t_p
    return K, R, t


@dataclass(frozen=True)
class Pix3DEntry:
    """One ``pix3d.json`` entry, checked (paths absolute, values as stored).

    ``rot_mat`` is the nearest exact rotation to the stored one (rounding removed).
    ``img_size`` is ``(W, H)`` as stored; ``mesh_id`` is the ``model`` path without its
    leading ``model/``.
    """

    position: int
    image: str
    mask: str
    model: str
    mesh_id: str
    category: str
    img_size: tuple[int, int]
    bbox: tuple[float, float, float, float]
    rot_mat: tuple[tuple[float, float, float], ...]
    trans_mat: tuple[float, float, float]
    focal_length: float
    truncated: bool
    occluded: bool
    slightly_occluded: bool
    cam_position: tuple[float, ...] | None
    inplane_rotation: float | None


def _numbers(value: Any, shape: tuple[int, ...], key: str, where: str, path: Path) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(path, f"{where}: {key}: expected numbers, got {value!r}"[:300]) from None
    if array.shape != shape:
        raise DatasetError(path, f"{where}: {key}: expected shape {shape}, got {array.shape}")
    if not np.isfinite(array).all():
        raise DatasetError(path, f"{where}: {key}: expected finite numbers, got {array.tolist()}")
    return array


def _flag(value: Any, key: str, where: str, path: Path) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise DatasetError(path, f"{where}: {key}: expected true or false, got {value!r}")


def _parse_entry(entry: Any, position: int, root: Path, json_path: Path) -> Pix3DEntry:
    where = f"entry {position}"
    if not isinstance(entry, dict):
        raise DatasetError(json_path, f"{where}: expected an object, got {type(entry).__name__}")
    if isinstance(entry.get("img"), str):
        where = f"entry {position} ({entry['img']})"
    for key in ("img", "mask", "model", "category", "img_size", "bbox", "rot_mat", "trans_mat",
                "focal_length"):
        if key not in entry:
            raise DatasetError(json_path, f"{where}: missing key {key!r}")
    for key in ("img", "mask", "model", "category"):
        if not isinstance(entry[key], str) or not entry[key]:
            raise DatasetError(json_path, f"{where}: {key}: expected a non-empty string, got {entry[key]!r}")
    size = _numbers(entry["img_size"], (2,), "img_size", where, json_path)
    if (size <= 0).any() or (size != np.round(size)).any():
        raise DatasetError(json_path, f"{where}: img_size: expected positive integers [W, H], got {size.tolist()}")
    focal = float(_numbers(entry["focal_length"], (), "focal_length", where, json_path))
    if focal <= 0:
        raise DatasetError(json_path, f"{where}: focal_length: expected a positive number, got {focal}")
    bbox = _numbers(entry["bbox"], (4,), "bbox", where, json_path)
    if bbox[2] < bbox[0] or bbox[3] < bbox[1]:
        raise DatasetError(json_path, f"{where}: bbox: expected x0 <= x1 and y0 <= y1, got {bbox.tolist()}")
    rot = nearest_rotation(_numbers(entry["rot_mat"], (3, 3), "rot_mat", where, json_path),
                           f"{where}: rot_mat", json_path)
    trans = _numbers(entry["trans_mat"], (3,), "trans_mat", where, json_path)
    cam = entry.get("cam_position")
    cam = None if cam is None else tuple(_numbers(cam, (3,), "cam_position", where, json_path).tolist())
    inplane = entry.get("inplane_rotation")
    inplane = None if inplane is None else float(_numbers(inplane, (), "inplane_rotation", where, json_path))
    model = entry["model"]
    mesh_id = model[len("model/"):] if model.startswith("model/") else model
    return Pix3DEntry(
        position=position,
        image=str(root / entry["img"]),
        mask=str(root / entry["mask"]),
        model=str(root / model),
        mesh_id=mesh_id,
        category=entry["category"],
        img_size=(int(size[0]), int(size[1])),
        bbox=tuple(float(v) for v in bbox),
        rot_mat=tuple(tuple(float(v) for v in row) for row in rot),
        trans_mat=tuple(float(v) for v in trans),
        focal_length=focal,
        truncated=_flag(entry.get("truncated", False), "truncated", where, json_path),
        occluded=_flag(entry.get("occluded", False), "occluded", where, json_path),
        slightly_occluded=_flag(entry.get("slightly_occluded", False), "slightly_occluded", where, json_path),
        cam_position=cam,
        inplane_rotation=inplane,
    )


class Pix3D(Dataset):
    """Pix3D: one sample per ``pix3d.json`` entry (layout and conventions: module docstring).

    Args:
        root: the Pix3D folder (paths in the JSON are relative to it).
        categories: iterable of category names (default: all).
        annotation_file: the entry list, relative to ``root`` (default ``pix3d.json``).
        skip_invalid: skip (count, warn once) instead of raising on an invalid entry
            (malformed fields, missing image / mask / model file, unreadable image header,
            image size differing from ``img_size``). Decoding pixels and models happens in
            ``__getitem__`` / :meth:`mesh`, which raise :class:`DatasetError`.

    Attributes:
        categories: sorted list of the categories indexed (requested, or found).
        skipped: the :class:`DatasetError` of every skipped entry.

    Raises:
        DatasetError: missing or unreadable annotation file, not a JSON list; any invalid
            entry unless ``skip_invalid``.

    Samples (``datasets.check_sample``): ``image, mask, K, R, t, azimuth, elevation,
    theta, distance, category, mesh_id, bbox``.
    """

    def __init__(
        self,
        root: str | Path,
        categories: Iterable[str] | None = None,
        *,
        annotation_file: str = "pix3d.json",
        skip_invalid: bool = False,
    ) -> None:
        self.root = Path(root)
        if isinstance(categories, str):
            categories = [categories]
        wanted = None if categories is None else sorted(set(categories))
        json_path = self.root / annotation_file
        if not json_path.is_file():
            raise DatasetError(json_path, "no such annotation file")
        try:
            entries = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            text = " ".join(str(error).split())[:200]
            raise DatasetError(json_path, f"cannot read JSON ({type(error).__name__}: {text})") from error
        if not isinstance(entries, list):
            raise DatasetError(json_path, f"expected a JSON list of entries, got {type(entries).__name__}")
        index = ItemIndex(f"Pix3D({json_path})", skip_invalid)
        for position, raw in enumerate(entries):
            if wanted is not None and isinstance(raw, dict) and raw.get("category") not in wanted:
                continue
            try:
                entry = _parse_entry(raw, position, self.root, json_path)
                h, w = check_image(entry.image)
                if (w, h) != entry.img_size:
                    raise DatasetError(entry.image, f"image is {w}x{h} (W x H) but img_size says "
                                                    f"{entry.img_size[0]}x{entry.img_size[1]}")
                for path, what in ((entry.mask, "mask file"), (entry.model, "model file")):
                    if not Path(path).is_file():
                        raise DatasetError(path, f"no such {what}")
            except DatasetError as error:
                index.invalid(error)
                continue
            index.add(entry)
        self._items: list[Pix3DEntry] = index.finish()
        self.skipped = index.skipped
        self.categories = wanted if wanted is not None else sorted({e.category for e in self._items})
        self._mesh_paths = {e.mesh_id: e.model for e in self._items}
        self._meshes: dict[str, Mesh] = {}

    def __len__(self) -> int:
        return len(self._items)

    def annotation(self, index: int) -> Pix3DEntry:
        """The checked ``pix3d.json`` entry behind sample ``index``."""
        return self._items[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index`` (see the class docstring).

        Raises:
            DatasetError: unreadable image or mask, or one whose size is not ``img_size``.
        """
        entry = self._items[index]
        image = read_image(entry.image)
        w, h = entry.img_size
        if tuple(image.shape[1:]) != (h, w):
            raise DatasetError(entry.image, f"image is {image.shape[2]}x{image.shape[1]} (W x H) "
                                            f"but img_size says {w}x{h}")
        mask = read_mask(entry.mask)
        if tuple(mask.shape) != (h, w):
            raise DatasetError(entry.mask, f"mask is {mask.shape[1]}x{mask.shape[0]} (W x H) "
                                           f"but the image is {w}x{h}")
        K, R, t = pix3d_to_pose(entry.rot_mat, entry.trans_mat, entry.focal_length, (h, w))
        azimuth, elevation, theta, distance = pose_to_angles(R, t)
        return {
            "image": image,
            "mask": mask,
            "K": K.float(),
            "R": R.float(),
            "t": t.float(),
            "azimuth": float(azimuth),
            "elevation": float(elevation),
            "theta": float(theta),
            "distance": float(distance),
            "category": entry.category,
            "mesh_id": entry.mesh_id,
            "bbox": torch.tensor(entry.bbox, dtype=torch.float32),
        }

    def mesh(self, mesh_id: str) -> Mesh:
        """Model ``mesh_id`` (``model`` path without ``model/``) in our frame (cached).

        Vertices are ``PIX3D_TO_OURS @ v`` of ``root/model/<mesh_id>``.

        Raises:
            DatasetError: missing or unreadable model file.
        """
        if mesh_id not in self._meshes:
            path = self._mesh_paths.get(mesh_id, str(self.root / "model" / mesh_id))
            self._meshes[mesh_id] = load_cad(path, PIX3D_TO_OURS)
        return self._meshes[mesh_id]
