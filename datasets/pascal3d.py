"""PASCAL3D+ (release 1.1) and Occluded-PASCAL3D+: one sample per pose-annotated object.

On-disk layout (``root`` is the ``PASCAL3D+_release1.1`` folder)::

    root/
      Images/<cat>_imagenet/<name>.JPEG          ImageNet images
      Images/<cat>_pascal/<name>.jpg             PASCAL VOC 2012 images
      Annotations/<cat>_{imagenet,pascal}/<name>.mat
      CAD/<cat>/01.off, 02.off, ...              CAD models, z-up (cad_index 1, 2, ...)
      Image_sets/<cat>_imagenet_train.txt        ImageNet split lists (one name a line)
      Image_sets/<cat>_imagenet_val.txt
      PASCAL/VOCdevkit/VOC2012/ImageSets/Main/<cat>_train.txt   VOC split lists
      PASCAL/VOCdevkit/VOC2012/ImageSets/Main/<cat>_val.txt     ("<name> <flag>" a line)

Each ``.mat`` holds a struct ``record`` (fields used: ``filename``, ``objects``);
``record.objects(i)`` has ``class``, ``bbox = [x1 y1 x2 y2]`` (MATLAB pixels, 1-based,
inclusive), ``viewpoint`` (a struct with ``azimuth, elevation, theta`` in degrees,
``distance`` in CAD units, ``focal``, ``viewport``, ``px, py``, and ``azimuth_coarse``,
``elevation_coarse``; ``[]`` for objects without a viewpoint), ``cad_index`` (1-based),
``truncated``, ``occluded``, ``difficult``.

Splits (``split`` in ``{'train', 'val'}``), per category and source:

* ``'imagenet'``: the names in ``Image_sets/<cat>_imagenet_<split>.txt``; every listed
  name must have its annotation and image (else it is an invalid item).
* ``'pascal'``: the annotation files in ``Annotations/<cat>_pascal/`` whose name appears
  (with any flag) in the VOC 2012 list ``PASCAL/VOCdevkit/VOC2012/ImageSets/Main/
  <cat>_<split>.txt``; VOC images PASCAL3D+ did not annotate are not items.

NeMo-style experiments and the Occluded-PASCAL3D+ benchmark use the ImageNet images only:
``sources=('imagenet',)``, training on ``'train'`` and testing on ``'val'``.

Items: every object of the category with a viewpoint whose ``distance > 0`` (PASCAL3D+
leaves ``viewpoint = []`` or ``distance = 0`` for objects it did not align; those are
counted in :attr:`Pascal3DPlus.num_unannotated`, not treated as errors). When the fine
``azimuth`` / ``elevation`` is empty the coarse one is used; an empty ``theta`` is 0.

Occluded-PASCAL3D+ (``occlusion_level`` in ``{1, 2, 3}``; Wang et al. 2020,
github.com/Angtian/OccludedPASCAL3D), built from the ImageNet ``val`` images (only images
with a single object), default location ``root/OccludedPASCAL3D``::

    OccludedPASCAL3D/
      images/<cat>FGL<l>_BGL<l>/<name>.JPEG      occluded images (same size as the originals)
      annotations/<cat>FGL<l>_BGL<l>/<name>.npz  'mask' (object), 'occluder_mask', 'box', ...
      lists/<cat>FGL<l>_BGL<l>.txt               "<name>.JPEG" a line

Level ``l`` uses the folders ``FGL<l>_BGL<l>`` (foreground occlusion 20-40 %, 40-60 %,
60-80 % of the object; the benchmark's L1-L3). Poses, boxes and CAD indices come from the
original PASCAL3D+ annotation of ``<name>``; the ``.npz`` gives ``mask`` (the whole object's
silhouette, an image read from a JPEG: values > 10 are object, or > 0.5 when its maximum is
at most 1, booleans as they are) and ``occluder_mask``; the sample's ``occlusion`` is
``|mask & occluder_mask| / |mask|``. The ``.npz`` ``box`` is not used: it is an integer
BboxTools copy of the annotation's box whose axis order depends on the generator script
(the ``.mat`` box is exact). ``.npz`` files are read with ``allow_pickle=False``.

Conversions (tested): :func:`pascal_to_pose` turns the PASCAL3D+ viewpoint into our ``K, R,
t`` (OpenCV camera, 0-based pixel centres), CAD models are rotated into our +y-up frame by
:data:`datasets.realdata.Z_UP_TO_Y_UP`, boxes become ``(x1 - 1, y1 - 1, x2 - 1, y2 - 1)``
(pixel centres of the first and last covered pixels), and the viewpoint angles of the
sample are ``render.pose_to_angles(R, t)`` = ``(azimuth, elevation, -theta, distance)`` of
the annotation in radians.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from render import Mesh, intrinsics, pose_to_angles, rotation_z

from .realdata import (
    Z_UP_TO_Y_UP,
    DatasetError,
    ItemIndex,
    check_image,
    load_cad,
    load_mat_struct,
    mat_field,
    mat_is_empty,
    mat_list,
    mat_number,
    mat_string,
    mat_vector,
    read_image,
    read_list,
)

__all__ = [
    "PASCAL3D_CATEGORIES",
    "PascalViewpoint",
    "PascalObject",
    "Pascal3DPlus",
    "pascal_to_pose",
    "parse_pascal_record",
    "pascal_sample",
    "resolve_image",
    "load_occluder_annotation",
]

#: The 12 PASCAL3D+ categories.
PASCAL3D_CATEGORIES = (
    "aeroplane", "bicycle", "boat", "bottle", "bus", "car",
    "chair", "diningtable", "motorbike", "sofa", "train", "tvmonitor",
)

_IMAGE_EXTENSIONS = (".JPEG", ".jpg", ".jpeg", ".JPG", ".png", ".PNG")


# --------------------------------------------------------------------------- conversion


def pascal_to_pose(
    azimuth: float,
    elevation: float,
    theta: float,
    distance: float,
    focal: float,
    viewport: float,
    px: float,
    py: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PASCAL3D+ / ObjectNet3D viewpoint to our ``(K, R, t)`` (float64).

    The arguments are the ``record.objects(i).viewpoint`` values as stored: **angles in
    degrees**, ``distance`` in CAD units, ``px, py`` in MATLAB (1-based) pixels.

    The toolbox (``project_3d.m``) projects a CAD point ``X`` (z-up CAD frame) with
    ``C = d (cos e sin a, -cos e cos a, sin e)``, ``R_p = Rx(-(pi/2 - e)) @ Rz(-a)``,
    ``x = diag(M f, M f, -1) @ R_p @ (X - C)`` (``M = viewport``), ``x = x[:2] / x[2]``,
    then rotates ``x`` by ``R2d(theta)``, negates its y and adds ``(px, py)``. The camera
    frame of ``R_p`` is OpenGL-like (x right, y up, z backward), and the in-plane step
    equals rotating our camera by ``Rz(-theta)``. Hence, exactly::

        R = rotation_z(-theta) @ diag(1, -1, -1) @ R_p @ Z_UP_TO_Y_UP^T
        t = -rotation_z(-theta) @ diag(1, -1, -1) @ R_p @ C = (0, 0, d)
        K = [[f M, 0, px - 1], [0, f M, py - 1], [0, 0, 1]]

    where ``Z_UP_TO_Y_UP`` maps CAD ``(x, y, z)`` to our ``(x, z, -y)`` (the CAD front,
    seen at azimuth 0 from -y, becomes our +z). Then ``render.project_points`` of the
    converted vertices lands exactly on the toolbox's pixels minus 1 (0-based pixel
    centres), and ``R, t = render.angles_to_pose(a, e, -theta, d)``: our azimuth and
    elevation equal PASCAL3D+'s and our in-plane angle is its negative.

    Returns:
        ``K (3, 3)``, ``R (3, 3)``, ``t (3,)``, float64.

    Raises:
        ValueError: non-finite input, ``distance``, ``focal`` or ``viewport`` not positive.

    >>> K, R, t = pascal_to_pose(0.0, 0.0, 0.0, 5.0, 1.0, 3000.0, 250.0, 180.0)
    >>> K.tolist()
    [[3000.0, 0.0, 249.0], [0.0, 3000.0, 179.0], [0.0, 0.0, 1.0]]
    >>> (R.round() + 0.0).tolist(), [round(v, 9) + 0.0 for v in t.tolist()]
    ([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]], [0.0, 0.0, 5.0])
    """
    values = dict(azimuth=azimuth, elevation=elevation, theta=theta, distance=distance,
                  focal=focal, viewport=viewport, px=px, py=py)
    for name, value in values.items():
        if not math.isfinite(float(value)):
            raise ValueError(f"{name}: expected a finite number, got {value}")
    for name in ("distance", "focal", "viewport"):
        if float(values[name]) <= 0:
            raise ValueError(f"{name}: expected a positive number, got {values[name]}")
    a = math.radians(float(azimuth))
    e = math.radians(float(elevation))
    th = math.radians(float(theta))
    d = float(distance)
    f64 = torch.float64
    C = torch.tensor(
        [d * math.cos(e) * math.sin(a), -d * math.cos(e) * math.cos(a), d * math.sin(e)], dtype=f64
    )
    a_, e_ = -a, -(math.pi / 2 - e)
    Rz = torch.tensor(
        [[math.cos(a_), -math.sin(a_), 0.0], [math.sin(a_), math.cos(a_), 0.0], [0.0, 0.0, 1.0]],
        dtype=f64,
    )
    Rx = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, math.cos(e_), -math.sin(e_)], [0.0, math.sin(e_), math.cos(e_)]],
        dtype=f64,
    )
    gl_to_cv = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=f64))
    R_cad = rotation_z(torch.tensor(-th, dtype=f64)) @ gl_to_cv @ Rx @ Rz  # CAD frame -> camera
    R = R_cad @ Z_UP_TO_Y_UP.T
    t = -(R_cad @ C)
    fm = float(focal) * float(viewport)
    K = intrinsics(torch.tensor(fm, dtype=f64), fm, float(px) - 1.0, float(py) - 1.0)
    return K, R, t


# ----------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class PascalViewpoint:
    """A PASCAL3D+ / ObjectNet3D viewpoint as stored (degrees, CAD units, 1-based pixels).

    ``coarse`` is true when ``azimuth`` / ``elevation`` came from ``azimuth_coarse`` /
    ``elevation_coarse`` because the fine value was empty.
    """

    azimuth: float
    elevation: float
    theta: float
    distance: float
    focal: float
    viewport: float
    px: float
    py: float
    coarse: bool = False


@dataclass(frozen=True)
class PascalObject:
    """One pose-annotated object of a PASCAL3D+ / ObjectNet3D annotation file.

    Attributes:
        annotation: path of the ``.mat`` file.
        image: path of the image the sample reads (for Occluded-PASCAL3D+, the occluded
            image).
        index: 0-based position in ``record.objects`` (MATLAB's ``objects(index + 1)``).
        category: ``record.objects(i).class``.
        cad_index: 1-based CAD model index.
        bbox: ``(x1, y1, x2, y2)`` as stored (1-based, inclusive MATLAB pixels).
        viewpoint: the :class:`PascalViewpoint`.
        truncated, occluded, difficult: the annotation's flags.
        mesh_id: ``"<category>/<NN>"`` (``NN = cad_index``, two digits).
        cad_path: path of the CAD file.
        occluder_annotation: Occluded-PASCAL3D+ ``.npz`` path, else ``None``.
    """

    annotation: str
    image: str
    index: int
    category: str
    cad_index: int
    bbox: tuple[float, float, float, float]
    viewpoint: PascalViewpoint
    truncated: bool
    occluded: bool
    difficult: bool
    mesh_id: str
    cad_path: str
    occluder_annotation: str | None = None


def _flag(obj: Any, name: str, where: str, path: Path) -> bool:
    value = mat_number(mat_field(obj, name, where, path, default=None), f"{where}.{name}", path,
                       allow_empty=True)
    return bool(value)


def _angle(vp: Any, name: str, where: str, path: Path) -> tuple[float, bool]:
    value = mat_number(mat_field(vp, name, where, path, default=None), f"{where}.{name}", path,
                       allow_empty=True)
    if value is not None:
        return value, False
    coarse = mat_field(vp, f"{name}_coarse", where, path, default=None)
    if mat_is_empty(coarse):
        raise DatasetError(path, f"{where}: empty {name} and no {name}_coarse")
    return mat_number(coarse, f"{where}.{name}_coarse", path), True


def _parse_object(
    obj: Any, i: int, path: Path, category: str, cad_path: Callable[[str, int], Path]
) -> PascalObject | None:
    """Parse ``objects(i+1)``; ``None`` when it has no usable viewpoint."""
    where = f"objects({i + 1})"
    vp = mat_field(obj, "viewpoint", where, path, default=None)
    if mat_is_empty(vp):
        return None
    vwhere = f"{where}.viewpoint"
    distance = mat_number(mat_field(vp, "distance", vwhere, path, default=None),
                          f"{vwhere}.distance", path, allow_empty=True)
    if distance is None or distance == 0:
        return None
    if distance < 0:
        raise DatasetError(path, f"{vwhere}.distance: expected a positive number, got {distance}")
    azimuth, coarse_a = _angle(vp, "azimuth", vwhere, path)
    elevation, coarse_e = _angle(vp, "elevation", vwhere, path)
    theta = mat_number(mat_field(vp, "theta", vwhere, path, default=None), f"{vwhere}.theta", path,
                       allow_empty=True)
    numbers = {}
    for name in ("focal", "viewport", "px", "py"):
        numbers[name] = mat_number(mat_field(vp, name, vwhere, path), f"{vwhere}.{name}", path)
    for name in ("focal", "viewport"):
        if numbers[name] <= 0:
            raise DatasetError(path, f"{vwhere}.{name}: expected a positive number, got {numbers[name]}")
    viewpoint = PascalViewpoint(
        azimuth=azimuth, elevation=elevation, theta=0.0 if theta is None else theta,
        distance=distance, coarse=coarse_a or coarse_e, **numbers,
    )
    bbox = mat_vector(mat_field(obj, "bbox", where, path), 4, f"{where}.bbox", path)
    if bbox[2] < bbox[0] or bbox[3] < bbox[1]:
        raise DatasetError(path, f"{where}.bbox: expected x1 <= x2 and y1 <= y2, got {bbox.tolist()}")
    cad = mat_number(mat_field(obj, "cad_index", where, path), f"{where}.cad_index", path)
    if cad < 1 or cad != int(cad):
        raise DatasetError(path, f"{where}.cad_index: expected a positive integer, got {cad}")
    cad = int(cad)
    return PascalObject(
        annotation=str(path),
        image="",
        index=i,
        category=category,
        cad_index=cad,
        bbox=tuple(float(v) for v in bbox),
        viewpoint=viewpoint,
        truncated=_flag(obj, "truncated", where, path),
        occluded=_flag(obj, "occluded", where, path),
        difficult=_flag(obj, "difficult", where, path),
        mesh_id=f"{category}/{cad:02d}",
        cad_path=str(cad_path(category, cad)),
    )


def parse_pascal_record(
    path: str | Path,
    record: Any,
    wanted: Callable[[str], bool],
    cad_path: Callable[[str, int], Path],
) -> tuple[list[PascalObject], list[DatasetError], int]:
    """Pose-annotated objects of a loaded ``record`` (PASCAL3D+ / ObjectNet3D format).

    Args:
        path: the ``.mat`` file (for messages and :attr:`PascalObject.annotation`).
        record: the struct from :func:`datasets.realdata.load_mat_struct`.
        wanted: which ``class`` values to keep.
        cad_path: ``(category, cad_index) -> CAD file``.

    Returns:
        ``(objects, errors, unannotated)``: the valid objects (``image`` still empty),
        one :class:`DatasetError` per wanted object with a malformed annotation, and the
        number of wanted objects without a viewpoint (``[]`` or ``distance = 0``).

    Raises:
        DatasetError: ``record`` has no ``objects`` field, or an object has no ``class``.
    """
    path = Path(path)
    objects: list[PascalObject] = []
    errors: list[DatasetError] = []
    unannotated = 0
    for i, obj in enumerate(mat_list(mat_field(record, "objects", "record", path))):
        where = f"objects({i + 1})"
        category = mat_string(mat_field(obj, "class", where, path), f"{where}.class", path)
        if not wanted(category):
            continue
        try:
            parsed = _parse_object(obj, i, path, category, cad_path)
        except DatasetError as error:
            errors.append(error)
            continue
        if parsed is None:
            unannotated += 1
        else:
            objects.append(parsed)
    return objects, errors, unannotated


def resolve_image(folder: Path, stem: str, record: Any, annotation: Path) -> Path:
    """The image of an annotation: ``folder/record.filename`` if present, else ``folder/stem.*``.

    Raises:
        DatasetError: no such image file (named ``folder/<filename or stem.JPEG>``).
    """
    filename = mat_field(record, "filename", "record", annotation, default=None)
    candidates = []
    if isinstance(filename, str) and filename:
        candidates.append(folder / Path(filename).name)
    candidates += [folder / f"{stem}{ext}" for ext in _IMAGE_EXTENSIONS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(candidates[0], "no such image file")


def pascal_sample(obj: PascalObject, image: torch.Tensor) -> dict[str, Any]:
    """The schema sample of one PASCAL3D+-format object (no ``mask`` / ``occlusion``).

    ``K, R, t`` from :func:`pascal_to_pose` (float32), angles from
    ``render.pose_to_angles`` (radians, Python floats), ``bbox`` 0-based.

    Args:
        obj: the object.
        image: ``(3, H, W)`` float32 image.
    """
    vp = obj.viewpoint
    K, R, t = pascal_to_pose(vp.azimuth, vp.elevation, vp.theta, vp.distance, vp.focal,
                             vp.viewport, vp.px, vp.py)
    azimuth, elevation, theta, distance = pose_to_angles(R, t)
    return {
        "image": image,
        "K": K.float(),
        "R": R.float(),
        "t": t.float(),
        "azimuth": float(azimuth),
        "elevation": float(elevation),
        "theta": float(theta),
        "distance": float(distance),
        "category": obj.category,
        "mesh_id": obj.mesh_id,
        "bbox": torch.tensor(obj.bbox, dtype=torch.float32) - 1.0,
    }


def _mask_from_array(array: np.ndarray, what: str, path: Path) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3:
        array = array.max(axis=2)
    if array.ndim != 2 or array.size == 0:
        raise DatasetError(path, f"{what}: expected an (H, W) mask, got shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind not in "uif":
        raise DatasetError(path, f"{what}: expected a numeric mask, got dtype {array.dtype}")
    threshold = 0.5 if float(array.max()) <= 1.0 else 10.0
    return array > threshold


def load_occluder_annotation(path: str | Path, image_size: tuple[int, int]) -> tuple[torch.Tensor, float]:
    """Object mask and occluded fraction from an Occluded-PASCAL3D+ ``.npz``.

    Args:
        path: the ``.npz`` (fields ``mask`` and ``occluder_mask`` used).
        image_size: ``(H, W)`` of the occluded image; both masks must have it.

    Returns:
        ``mask (H, W)`` bool (the whole object) and ``occlusion`` in [0, 1].

    Raises:
        DatasetError: missing / unreadable file, missing field, wrong mask shape, empty
            object mask.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "no such occluder annotation file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("mask", "occluder_mask") if k not in npz.files]
            if missing:
                raise DatasetError(path, f"no field {missing[0]!r} (found {sorted(npz.files)})")
            mask = _mask_from_array(npz["mask"], "mask", path)
            occluder = _mask_from_array(npz["occluder_mask"], "occluder_mask", path)
    except DatasetError:
        raise
    except Exception as error:  # zipfile / pickle / format errors
        text = " ".join(str(error).split())[:200]
        raise DatasetError(path, f"cannot read npz file ({type(error).__name__}: {text})") from error
    for what, m in (("mask", mask), ("occluder_mask", occluder)):
        if tuple(m.shape) != tuple(image_size):
            raise DatasetError(
                path, f"{what}: expected the image size {tuple(image_size)}, got {tuple(m.shape)}"
            )
    area = int(mask.sum())
    if area == 0:
        raise DatasetError(path, "mask: empty object mask")
    occlusion = float(np.logical_and(mask, occluder).sum()) / area
    return torch.from_numpy(np.ascontiguousarray(mask)), occlusion


# ---------------------------------------------------------------------------- dataset


class Pascal3DPlus(Dataset):
    """PASCAL3D+ release 1.1 (and Occluded-PASCAL3D+): one sample per annotated object.

    Layout, splits, item rules and conversions: see the module docstring.

    Args:
        root: the ``PASCAL3D+_release1.1`` folder.
        split: ``'train'`` or ``'val'`` (occluded levels: ``'val'`` only).
        categories: iterable of PASCAL3D+ categories (default all 12).
        occlusion_level: 0 (the original images) or 1, 2, 3 (Occluded-PASCAL3D+
            ``FGL<l>_BGL<l>``).
        sources: ``('imagenet', 'pascal')`` by default at level 0, ``('imagenet',)`` (the
            only one that exists) at levels 1-3.
        occluded_root: the Occluded-PASCAL3D+ folder (default ``root/OccludedPASCAL3D``).
        skip_invalid: skip (count, warn once) instead of raising on an invalid item: a
            missing or unreadable annotation, image, CAD model or occluder annotation, or a
            malformed object annotation; a problem with a whole file (annotation, image)
            counts as one item. The index build checks that files exist, parses
            every annotation and reads every image header; decoding the pixels, the
            ``.npz`` masks and the CAD files happens in ``__getitem__`` / :meth:`mesh`,
            which raise :class:`DatasetError` (skipping is impossible there).

    Attributes:
        categories: the categories indexed (list of str).
        num_unannotated: objects of these categories without a viewpoint (not items).
        skipped: the :class:`DatasetError` of every skipped item.

    Raises:
        ValueError: unknown split, category, source or occlusion level.
        DatasetError: a missing or unreadable split list; any invalid item unless
            ``skip_invalid``.

    Samples (``datasets.check_sample``): ``image, K, R, t, azimuth, elevation, theta,
    distance, category, mesh_id, bbox``, plus ``mask`` and ``occlusion`` at levels 1-3.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        categories: Iterable[str] | None = None,
        occlusion_level: int = 0,
        *,
        sources: Sequence[str] | None = None,
        occluded_root: str | Path | None = None,
        skip_invalid: bool = False,
    ) -> None:
        self.root = Path(root)
        if split not in ("train", "val"):
            raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
        if isinstance(categories, str):
            categories = [categories]
        cats = list(PASCAL3D_CATEGORIES if categories is None else categories)
        unknown = [c for c in cats if c not in PASCAL3D_CATEGORIES]
        if unknown:
            raise ValueError(f"categories: unknown PASCAL3D+ categories {unknown} "
                             f"(expected some of {list(PASCAL3D_CATEGORIES)})")
        if occlusion_level not in (0, 1, 2, 3):
            raise ValueError(f"occlusion_level: expected 0, 1, 2 or 3, got {occlusion_level!r}")
        if sources is None:
            sources = ("imagenet", "pascal") if occlusion_level == 0 else ("imagenet",)
        sources = tuple(sources)
        bad = [s for s in sources if s not in ("imagenet", "pascal")]
        if bad or not sources:
            raise ValueError(f"sources: expected some of ('imagenet', 'pascal'), got {sources}")
        if occlusion_level and (split != "val" or sources != ("imagenet",)):
            raise ValueError(
                "Occluded-PASCAL3D+ exists for split 'val' and sources ('imagenet',) only, "
                f"got split {split!r}, sources {sources}"
            )
        self.split = split
        self.categories = cats
        self.occlusion_level = occlusion_level
        self.sources = sources
        self.occluded_root = Path(occluded_root) if occluded_root is not None else self.root / "OccludedPASCAL3D"
        self.num_unannotated = 0
        self._meshes: dict[str, Mesh] = {}
        index = ItemIndex(f"Pascal3DPlus({self.root}, {split!r}, level {occlusion_level})", skip_invalid)
        self._checked_files: dict[Path, DatasetError | None] = {}
        for cat in cats:
            for source in sources:
                if occlusion_level:
                    self._index_occluded(index, cat)
                else:
                    self._index_source(index, cat, source)
        del self._checked_files
        self._items: list[PascalObject] = index.finish()
        self.skipped = index.skipped

    # -- index build

    def _cad_path(self, category: str, cad_index: int) -> Path:
        return self.root / "CAD" / category / f"{cad_index:02d}.off"

    def _check_once(self, path: Path, check: Callable[[Path], Any]) -> None:
        """Run ``check(path)`` once per file; re-raise its stored error on later calls."""
        if path not in self._checked_files:
            try:
                check(path)
                self._checked_files[path] = None
            except DatasetError as error:
                self._checked_files[path] = error
        error = self._checked_files[path]
        if error is not None:
            raise error

    @staticmethod
    def _check_cad(path: Path) -> None:
        if not path.is_file():
            raise DatasetError(path, "no such CAD file")

    def _split_names(self, cat: str, source: str) -> list[tuple[str, Path]]:
        """``(name, annotation path)`` of one category, source and split."""
        ann_dir = self.root / "Annotations" / f"{cat}_{source}"
        if source == "imagenet":
            names = read_list(self.root / "Image_sets" / f"{cat}_imagenet_{self.split}.txt")
            return [(name, ann_dir / f"{name}.mat") for name in names]
        voc = self.root / "PASCAL" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
        listed = {line.split()[0] for line in read_list(voc / f"{cat}_{self.split}.txt")}
        if not ann_dir.is_dir():
            raise DatasetError(ann_dir, "no such annotation folder")
        return [(p.stem, p) for p in sorted(ann_dir.glob("*.mat")) if p.stem in listed]

    def _objects(self, index: ItemIndex, ann: Path, cat: str, image_of: Callable[[Any], Path],
                 **extra: str) -> None:
        """Parse one annotation file and add its objects (or errors) to ``index``."""
        try:
            record = load_mat_struct(ann)
            objects, errors, unannotated = parse_pascal_record(
                ann, record, lambda c: c == cat, self._cad_path
            )
            self.num_unannotated += unannotated
            for error in errors:
                index.invalid(error)
            if not objects:
                return
            image = image_of(record)
            self._check_once(image, check_image)
        except DatasetError as error:
            index.invalid(error)
            return
        for obj in objects:
            try:
                self._check_once(Path(obj.cad_path), self._check_cad)
            except DatasetError as error:
                index.invalid(error)
                continue
            index.add(dataclasses.replace(obj, image=str(image), **extra))

    def _index_source(self, index: ItemIndex, cat: str, source: str) -> None:
        image_dir = self.root / "Images" / f"{cat}_{source}"
        for name, ann in self._split_names(cat, source):
            if not ann.is_file():
                index.invalid(DatasetError(ann, "no such annotation file"))
                continue
            self._objects(index, ann, cat,
                          lambda record, name=name, ann=ann: resolve_image(image_dir, name, record, ann))

    def _index_occluded(self, index: ItemIndex, cat: str) -> None:
        folder = f"{cat}FGL{self.occlusion_level}_BGL{self.occlusion_level}"
        occ = self.occluded_root
        for entry in read_list(occ / "lists" / f"{folder}.txt"):
            name = Path(entry).stem
            image = occ / "images" / folder / (entry if Path(entry).suffix else f"{entry}.JPEG")
            npz = occ / "annotations" / folder / f"{name}.npz"
            ann = self.root / "Annotations" / f"{cat}_imagenet" / f"{name}.mat"
            missing = [(p, what) for p, what in ((ann, "annotation file"),
                                                 (npz, "occluder annotation file")) if not p.is_file()]
            if missing:
                index.invalid(DatasetError(missing[0][0], f"no such {missing[0][1]}"))
                continue
            self._objects(index, ann, cat, lambda record, image=image: image,
                          occluder_annotation=str(npz))

    # -- access

    def __len__(self) -> int:
        return len(self._items)

    def annotation(self, index: int) -> PascalObject:
        """The parsed annotation (files, flags, raw viewpoint) behind sample ``index``."""
        return self._items[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index`` (see the class docstring).

        Raises:
            DatasetError: unreadable image or occluder annotation.
        """
        obj = self._items[index]
        image = read_image(obj.image)
        sample = pascal_sample(obj, image)
        if obj.occluder_annotation is not None:
            mask, occlusion = load_occluder_annotation(obj.occluder_annotation, tuple(image.shape[1:]))
            sample["mask"] = mask
            sample["occlusion"] = occlusion
        return sample

    def mesh(self, mesh_id: str) -> Mesh:
        """The CAD model ``mesh_id`` (``"<category>/<NN>"``) in our +y-up object frame.

        Vertices are ``Z_UP_TO_Y_UP @ v`` of ``root/CAD/<category>/<NN>.off`` (cached).

        Raises:
            ValueError: malformed ``mesh_id``.
            DatasetError: missing or unreadable CAD file.
        """
        if mesh_id not in self._meshes:
            parts = mesh_id.split("/")
            if len(parts) != 2 or parts[0] not in PASCAL3D_CATEGORIES or not parts[1].isdigit():
                raise ValueError(f"mesh_id: expected '<category>/<NN>' (e.g. 'car/01'), got {mesh_id!r}")
            self._meshes[mesh_id] = load_cad(self._cad_path(parts[0], int(parts[1])), Z_UP_TO_Y_UP)
        return self._meshes[mesh_id]
