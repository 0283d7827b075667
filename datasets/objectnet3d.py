"""ObjectNet3D (Xiang et al. 2016): one sample per pose-annotated object, 100 categories.

On-disk layout (``root`` is the ``ObjectNet3D`` folder)::

    root/
      Images/<id>.JPEG                 images (ids like n02690373_16)
      Annotations/<id>.mat             struct 'record', same format as PASCAL3D+
      Image_sets/{train,val,trainval,test}.txt   ids, one a line
      CAD/off/<class>/<NN>.off         CAD models, z-up (cad_index 1 -> 01.off)

``record.objects(i)`` has ``class``, ``bbox = [x1 y1 x2 y2]`` (1-based), ``viewpoint``
(``azimuth, elevation, theta`` in degrees, ``distance``, ``focal``, ``viewport``,
``px, py``), ``cad_index`` (1-based), ``truncated``, ``occluded``, ``difficult``. The
viewpoint follows the PASCAL3D+ convention (ObjectNet3D's toolbox ships the same
``project_3d.m``), so conversions, item rules and boxes are exactly those of
:mod:`datasets.pascal3d` (:func:`datasets.pascal3d.pascal_to_pose`, CAD rotated by
``Z_UP_TO_Y_UP``, boxes 0-based). Objects without a viewpoint (``[]`` or
``distance = 0``) are counted in ``num_unannotated``, not items.

Category groups (``categories=``): ``None`` for every class found in the split, a list of
class names, ``'novel'`` for :data:`NOVEL_CATEGORIES` (the 20 classes held out in
category-level generalisation studies, e.g. StarMap, PoseFromShape) or ``'base'`` for every
class found in the split except those.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from render import Mesh

from .pascal3d import PascalObject, parse_pascal_record, pascal_sample, resolve_image
from .realdata import (
    Z_UP_TO_Y_UP,
    DatasetError,
    ItemIndex,
    check_image,
    load_cad,
    load_mat_struct,
    read_image,
    read_list,
)

__all__ = ["NOVEL_CATEGORIES", "ObjectNet3D"]

#: The 20 ObjectNet3D categories held out as "novel" (the other 80 are "base").
NOVEL_CATEGORIES = (
    "bed", "bookshelf", "calculator", "cellphone", "computer", "door", "filing_cabinet",
    "guitar", "iron", "knife", "microwave", "pen", "pot", "rifle", "shoe", "slipper",
    "stove", "toilet", "tub", "wheelchair",
)

_SPLITS = ("train", "val", "trainval", "test")


class ObjectNet3D(Dataset):
    """ObjectNet3D: one sample per pose-annotated object (layout: module docstring).

    Args:
        root: the ObjectNet3D folder.
        split: ``'train'``, ``'val'``, ``'trainval'`` or ``'test'``
            (``Image_sets/<split>.txt``).
        categories: ``None`` (all classes found), ``'novel'``, ``'base'``, or an iterable
            of class names.
        skip_invalid: skip (count, warn once) instead of raising on an invalid item
            (missing / unreadable annotation, image or CAD file, malformed object
            annotation; a problem with a whole file counts as one item). Pixel decoding and CAD parsing happen in ``__getitem__`` /
            :meth:`mesh`, which raise :class:`DatasetError`.

    Attributes:
        categories: sorted list of the classes indexed (for ``None`` / ``'base'``: those
            found among the items; otherwise those requested).
        num_unannotated: objects of these classes without a viewpoint (not items).
        skipped: the :class:`DatasetError` of every skipped item.

    Raises:
        ValueError: unknown split or category group.
        DatasetError: missing split list; any invalid item unless ``skip_invalid``.

    Samples (``datasets.check_sample``): ``image, K, R, t, azimuth, elevation, theta,
    distance, category, mesh_id ("<class>/<NN>"), bbox``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        categories: str | Iterable[str] | None = None,
        *,
        skip_invalid: bool = False,
    ) -> None:
        self.root = Path(root)
        if split not in _SPLITS:
            raise ValueError(f"split: expected one of {_SPLITS}, got {split!r}")
        self.split = split
        if categories is None:
            wanted, requested = (lambda c: True), None
        elif categories == "novel":
            wanted, requested = (lambda c: c in NOVEL_CATEGORIES), sorted(NOVEL_CATEGORIES)
        elif categories == "base":
            wanted, requested = (lambda c: c not in NOVEL_CATEGORIES), None
        elif isinstance(categories, str):
            raise ValueError(
                f"categories: expected None, 'novel', 'base' or a list of class names, got {categories!r}"
            )
        else:
            names = sorted(set(categories))
            wanted, requested = (lambda c: c in names), names
        self.num_unannotated = 0
        self._meshes: dict[str, Mesh] = {}
        index = ItemIndex(f"ObjectNet3D({self.root}, {split!r})", skip_invalid)
        checked_cads: dict[Path, bool] = {}
        for image_id in read_list(self.root / "Image_sets" / f"{split}.txt"):
            ann = self.root / "Annotations" / f"{image_id}.mat"
            try:
                record = load_mat_struct(ann)
                objects, errors, unannotated = parse_pascal_record(ann, record, wanted, self._cad_path)
                self.num_unannotated += unannotated
                for error in errors:
                    index.invalid(error)
                if not objects:
                    continue
                image = resolve_image(self.root / "Images", image_id, record, ann)
                check_image(image)
            except DatasetError as error:
                index.invalid(error)
                continue
            for obj in objects:
                cad = Path(obj.cad_path)
                if cad not in checked_cads:
                    checked_cads[cad] = cad.is_file()
                if not checked_cads[cad]:
                    index.invalid(DatasetError(cad, "no such CAD file"))
                    continue
                index.add(dataclasses.replace(obj, image=str(image)))
        self._items: list[PascalObject] = index.finish()
        self.skipped = index.skipped
        self.categories = requested if requested is not None else sorted({o.category for o in self._items})

    def _cad_path(self, category: str, cad_index: int) -> Path:
        return self.root / "CAD" / "off" / category / f"{cad_index:02d}.off"

    def __len__(self) -> int:
        return len(self._items)

    def annotation(self, index: int) -> PascalObject:
        """The parsed annotation (files, flags, raw viewpoint) behind sample ``index``."""
        return self._items[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``; raises :class:`DatasetError` on an unreadable image."""
        obj = self._items[index]
        image: torch.Tensor = read_image(obj.image)
        return pascal_sample(obj, image)

    def mesh(self, mesh_id: str) -> Mesh:
        """CAD model ``"<class>/<NN>"`` (``root/CAD/off/<class>/<NN>.off``) in our +y-up frame.

        Raises:
            ValueError: malformed ``mesh_id``.
            DatasetError: missing or unreadable CAD file.
        """
        if mesh_id not in self._meshes:
            parts = mesh_id.split("/")
            if len(parts) != 2 or not parts[0] or not parts[1].isdigit():
                raise ValueError(f"mesh_id: expected '<class>/<NN>' (e.g. 'bed/01'), got {mesh_id!r}")
            self._meshes[mesh_id] = load_cad(self._cad_path(parts[0], int(parts[1])), Z_UP_TO_Y_UP)
        return self._meshes[mesh_id]
