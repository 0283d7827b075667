"""Writers of small fixture files in the real on-disk formats of PASCAL3D+,
Occluded-PASCAL3D+, ObjectNet3D and Pix3D, and small dataset trees built from them.

MATLAB files are written with ``scipy.io.savemat`` from numpy structured arrays, so that
``scipy.io.loadmat(..., squeeze_me=True, struct_as_record=False)`` reads them as it reads
the real files: ``record`` a 1x1 struct, ``record.objects`` a 1xN struct array,
``viewpoint`` a 1x1 struct or ``[]`` (a 0x0 double), empty fine angles ``[]``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import scipy.io

EMPTY = np.zeros((0, 0))


# ------------------------------------------------------------------------ MATLAB structs


def _mat_value(value: Any) -> Any:
    if isinstance(value, dict):
        return mat_struct_array([value])
    if value is None:
        return EMPTY
    return value


def mat_struct_array(dicts: list[dict[str, Any]]) -> np.ndarray:
    """A ``(1, N)`` MATLAB struct array (fields: the union of the dicts' keys, in order)."""
    keys: list[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    array = np.empty((1, len(dicts)), dtype=[(k, object) for k in keys])
    for i, d in enumerate(dicts):
        for k in keys:
            array[0, i][k] = _mat_value(d.get(k))
    return array


def viewpoint(
    azimuth: float | None,
    elevation: float | None,
    theta: float | None,
    distance: float,
    *,
    focal: float = 1.0,
    viewport: float = 3000.0,
    px: float = 16.0,
    py: float = 12.0,
    azimuth_coarse: float | None = None,
    elevation_coarse: float | None = None,
) -> dict[str, Any]:
    """A PASCAL3D+ ``viewpoint`` struct (degrees); ``None`` fine angles are written ``[]``."""
    return {
        "azimuth_coarse": azimuth if azimuth_coarse is None else azimuth_coarse,
        "elevation_coarse": elevation if elevation_coarse is None else elevation_coarse,
        "azimuth": azimuth,
        "elevation": elevation,
        "distance": float(distance),
        "focal": float(focal),
        "px": float(px),
        "py": float(py),
        "theta": theta,
        "error": 0.0,
        "interval_azimuth": 0.0,
        "interval_elevation": 0.0,
        "num_anchor": 0.0,
        "viewport": float(viewport),
    }


def pascal_object(
    cls: str,
    bbox: tuple[float, float, float, float] = (3.0, 4.0, 20.0, 18.0),
    vp: dict[str, Any] | None = None,
    cad_index: int | None = 1,
    *,
    truncated: int = 0,
    occluded: int = 0,
    difficult: int = 0,
) -> dict[str, Any]:
    """One ``record.objects(i)`` struct; ``vp=None`` writes ``viewpoint = []``."""
    return {
        "class": cls,
        "view": "Frontal",
        "truncated": float(truncated),
        "occluded": float(occluded),
        "difficult": float(difficult),
        "bbox": np.array([bbox], dtype=np.float64),
        "viewpoint": vp,
        "cad_index": None if cad_index is None else float(cad_index),
    }


def write_record(path: Path, filename: str, objects: list[dict[str, Any]],
                 image_size: tuple[int, int] = (24, 32), database: str = "ImageNet") -> None:
    """Write ``record`` (fields as in PASCAL3D+ / ObjectNet3D) to ``path``."""
    h, w = image_size
    record = {
        "filename": filename,
        "folder": "",
        "source": {"database": database},
        "imgsize": np.array([[w, h, 3]], dtype=np.float64),
        "database": database,
        "objects": mat_struct_array(objects),
        "segmented": 0.0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"record": record})


# --------------------------------------------------------------------- images and meshes


def write_image(path: Path, image_size: tuple[int, int] = (24, 32), seed: int = 0) -> np.ndarray:
    """Write a smooth random RGB image (JPEG or PNG by extension); return its uint8 pixels."""
    h, w = image_size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, size=3)
    image = np.stack([base[c] + 30 * np.sin(xx / (3 + c) + yy / 5) for c in range(3)], axis=-1)
    image = np.clip(image, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)
    return image


def box_mesh(lo: tuple[float, float, float], hi: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """An axis-aligned box from ``lo`` to ``hi``: 8 vertices, 12 faces CCW seen from outside."""
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    verts = np.array(
        [[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0],
         [x0, y0, z1], [x1, y0, z1], [x1, y1, z1], [x0, y1, z1]], dtype=np.float64
    )
    faces = np.array(
        [[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
         [2, 3, 7], [2, 7, 6], [1, 2, 6], [1, 6, 5], [0, 4, 7], [0, 7, 3]], dtype=np.int64
    )
    return verts, faces


def write_off(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    """Write an OFF file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["OFF", f"{len(verts)} {len(faces)} 0"]
    lines += [" ".join(f"{v:.9g}" for v in vert) for vert in verts]
    lines += ["3 " + " ".join(str(i) for i in face) for face in faces]
    path.write_text("\n".join(lines) + "\n")


def write_obj(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    """Write a Wavefront OBJ file (no materials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in verts]
    lines += ["f " + " ".join(str(i + 1) for i in face) for face in faces]
    path.write_text("\n".join(lines) + "\n")


#: The 12 PASCAL3D+ categories (written out here so fixtures do not depend on the loader).
PASCAL3D_NAMES = (
    "aeroplane", "bicycle", "boat", "bottle", "bus", "car",
    "chair", "diningtable", "motorbike", "sofa", "train", "tvmonitor",
)

#: The z-up CAD box of the PASCAL3D+ / ObjectNet3D fixtures: wider along x, standing on z=0.
CAD_LO, CAD_HI = (-1.0, -0.5, 0.0), (1.0, 0.5, 0.8)


# --------------------------------------------------------------------------- PASCAL3D+


def project_3d_matlab(x3d: np.ndarray, azimuth, elevation, theta, distance, focal, viewport, px, py):
    """PASCAL3D+ ``project_3d.m``, transcribed line by line (MATLAB 1-based pixel
    coordinates); the reference the loader's conversion is tested against."""
    a = azimuth * math.pi / 180
    e = elevation * math.pi / 180
    d = distance
    f = focal
    theta = theta * math.pi / 180
    principal = np.array([px, py])
    C = np.zeros((3, 1))
    C[0] = d * math.cos(e) * math.sin(a)
    C[1] = -d * math.cos(e) * math.cos(a)
    C[2] = d * math.sin(e)
    a = -a
    e = -(math.pi / 2 - e)
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    R = Rx @ Rz
    M = viewport
    P = np.array([[M * f, 0, 0], [0, M * f, 0], [0, 0, -1]]) @ np.hstack([R, -R @ C])
    x = P @ np.vstack([x3d.T, np.ones((1, x3d.shape[0]))])
    x[0, :] = x[0, :] / x[2, :]
    x[1, :] = x[1, :] / x[2, :]
    x = x[0:2, :]
    R2d = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    x = (R2d @ x).T
    x[:, 1] = -1 * x[:, 1]
    return x + principal




def make_pascal3d(root: Path, image_size: tuple[int, int] = (24, 32)) -> dict[str, Any]:
    """A tiny PASCAL3D+ release 1.1 tree; returns what was written.

    ImageNet ``train``: aeroplane ``n01`` (an aeroplane and a person), ``n02`` (two
    aeroplanes, one without viewpoint); car ``n03`` (coarse azimuth/elevation only, no
    theta). ImageNet ``val``: aeroplane ``n04``. PASCAL VOC: aeroplane ``2008_000001``
    (train) and ``2008_000002`` (val); ``2008_000003`` is listed but not annotated.
    CAD: aeroplane 01, 02 and car 01 (the box ``CAD_LO .. CAD_HI``).
    """
    verts, faces = box_mesh(CAD_LO, CAD_HI)
    for cat, n in (("aeroplane", 2), ("car", 1)):
        for i in range(1, n + 1):
            write_off(root / "CAD" / cat / f"{i:02d}.off", verts, faces)
    vps = {
        "n01": viewpoint(30.0, 15.0, 5.0, 6.0, px=15.0, py=11.0),
        "n02": viewpoint(-120.0, 40.0, -10.0, 4.5, px=17.5, py=13.0, viewport=2000.0),
        "n03": viewpoint(None, None, None, 8.0, azimuth_coarse=90.0, elevation_coarse=10.0),
        "n04": viewpoint(200.0, -5.0, 2.0, 5.0),
        "2008_000001": viewpoint(10.0, 5.0, 0.0, 7.0),
        "2008_000002": viewpoint(45.0, 20.0, 1.0, 9.0),
    }
    records = {
        ("aeroplane", "imagenet", "n01"): [
            pascal_object("aeroplane", (2, 3, 30, 20), vps["n01"], 2, occluded=1),
            pascal_object("person", (1, 1, 5, 5), None, None),
        ],
        ("aeroplane", "imagenet", "n02"): [
            pascal_object("aeroplane", (1, 1, 10, 10), vps["n02"], 1, truncated=1),
            pascal_object("aeroplane", (5, 5, 9, 9), viewpoint(0.0, 0.0, 0.0, 0.0), 1),
        ],
        ("car", "imagenet", "n03"): [pascal_object("car", (4, 4, 28, 22), vps["n03"], 1)],
        ("aeroplane", "imagenet", "n04"): [pascal_object("aeroplane", (6, 5, 25, 19), vps["n04"], 1)],
        ("aeroplane", "pascal", "2008_000001"): [
            pascal_object("aeroplane", (2, 2, 12, 12), vps["2008_000001"], 1, difficult=1)
        ],
        ("aeroplane", "pascal", "2008_000002"): [
            pascal_object("aeroplane", (3, 3, 13, 13), vps["2008_000002"], 2)
        ],
    }
    for seed, ((cat, db, name), objects) in enumerate(records.items()):
        ext = ".JPEG" if db == "imagenet" else ".jpg"
        write_record(root / "Annotations" / f"{cat}_{db}" / f"{name}.mat", name + ext, objects,
                     image_size, "ImageNet" if db == "imagenet" else "PASCAL VOC")
        write_image(root / "Images" / f"{cat}_{db}" / f"{name}{ext}", image_size, seed)
    sets = root / "Image_sets"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "aeroplane_imagenet_train.txt").write_text("n01\nn02\n")
    (sets / "aeroplane_imagenet_val.txt").write_text("n04\n")
    (sets / "car_imagenet_train.txt").write_text("n03\n")
    voc = root / "PASCAL" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    voc.mkdir(parents=True, exist_ok=True)
    (voc / "aeroplane_train.txt").write_text("2008_000001  1\n2008_000003 -1\n")
    (voc / "aeroplane_val.txt").write_text("2008_000002  1\n")
    for cat in PASCAL3D_NAMES:  # the other categories: empty splits
        for split in ("train", "val"):
            if not (sets / f"{cat}_imagenet_{split}.txt").exists():
                (sets / f"{cat}_imagenet_{split}.txt").write_text("")
            if not (voc / f"{cat}_{split}.txt").exists():
                (voc / f"{cat}_{split}.txt").write_text("2008_000001 -1\n")
        (root / "Annotations" / f"{cat}_pascal").mkdir(parents=True, exist_ok=True)
    return {"viewpoints": vps, "records": records, "image_size": image_size}


def make_occluded(root: Path, level: int = 1, image_size: tuple[int, int] = (24, 32)) -> dict[str, Any]:
    """Occluded-PASCAL3D+ files for the aeroplane ``val`` image ``n04`` at ``level``.

    ``mask`` is a uint8 0/255 array (as read from the JPEG object masks, with a little
    JPEG noise below the threshold), ``occluder_mask`` a bool array covering a quarter of
    the object. Returns the masks and the expected occluded fraction.
    """
    h, w = image_size
    folder = f"aeroplaneFGL{level}_BGL{level}"
    occ = root / "OccludedPASCAL3D"
    image = write_image(occ / "images" / folder / "n04.JPEG", image_size, seed=99)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[4:20, 5:25] = 255
    mask[0, 0] = 7  # compression noise, below the threshold
    occluder = np.zeros((h, w), dtype=bool)
    occluder[4:12, 5:15] = True
    occluder[0:3, 28:32] = True  # background occluder
    (occ / "annotations" / folder).mkdir(parents=True, exist_ok=True)
    np.savez(
        occ / "annotations" / folder / "n04.npz",
        source=str(root / "Images" / "aeroplane_imagenet" / "n04.JPEG"),
        mask=mask,
        box=np.array([4, 20, 5, 25, h, w]),
        occluder_mask=occluder,
        occluder_box=np.array([[4, 12, 5, 15, h, w]]),
        category="aeroplane",
        occluder_level=str(level),
    )
    (occ / "lists").mkdir(parents=True, exist_ok=True)
    (occ / "lists" / f"{folder}.txt").write_text("n04.JPEG\n")
    return {"image": image, "mask": mask > 10, "occluder": occluder,
            "occlusion": (8 * 10) / (16 * 20)}


# -------------------------------------------------------------------------- ObjectNet3D


def make_objectnet3d(root: Path, image_size: tuple[int, int] = (24, 32)) -> dict[str, Any]:
    """A tiny ObjectNet3D tree: ids ``n001`` (bed + aeroplane), ``n002`` (toaster, and a
    bed without viewpoint) in ``train``, ``n003`` (iron) in ``val``, ``n004`` (guitar) in
    ``test``. CAD ``CAD/off/<class>/01.off`` for every class used."""
    verts, faces = box_mesh(CAD_LO, CAD_HI)
    for cls in ("bed", "aeroplane", "toaster", "iron", "guitar"):
        write_off(root / "CAD" / "off" / cls / "01.off", verts, faces)
    vps = {
        "bed": viewpoint(60.0, 25.0, -3.0, 3.0, viewport=2000.0),
        "aeroplane": viewpoint(-30.0, 10.0, 4.0, 5.0, viewport=2000.0),
        "toaster": viewpoint(170.0, 35.0, 0.0, 2.5, viewport=2000.0),
        "iron": viewpoint(0.0, 0.0, 0.0, 4.0, viewport=2000.0),
        "guitar": viewpoint(90.0, 5.0, 12.0, 6.0, viewport=2000.0),
    }
    records = {
        "n001": [pascal_object("bed", (2, 2, 20, 15), vps["bed"]),
                 pascal_object("aeroplane", (5, 6, 30, 22), vps["aeroplane"])],
        "n002": [pascal_object("toaster", (3, 3, 9, 9), vps["toaster"]),
                 pascal_object("bed", (1, 1, 4, 4), None)],
        "n003": [pascal_object("iron", (4, 4, 12, 12), vps["iron"])],
        "n004": [pascal_object("guitar", (2, 5, 14, 20), vps["guitar"])],
    }
    for seed, (image_id, objects) in enumerate(records.items()):
        write_record(root / "Annotations" / f"{image_id}.mat", f"{image_id}.JPEG", objects, image_size)
        write_image(root / "Images" / f"{image_id}.JPEG", image_size, seed)
    sets = root / "Image_sets"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("n001\nn002\n")
    (sets / "val.txt").write_text("n003\n")
    (sets / "trainval.txt").write_text("n001\nn002\nn003\n")
    (sets / "test.txt").write_text("n004\n")
    return {"viewpoints": vps, "records": records}


# -------------------------------------------------------------------------------- Pix3D


def blender_project(verts: np.ndarray, rot_mat: np.ndarray, trans_mat: np.ndarray,
                    focal_mm: float, image_size: tuple[int, int]) -> np.ndarray:
    """Pixels (our centre-at-integer convention) where Pix3D's Blender scene shows ``verts``.

    Written from ``demo.py`` independently of the loader: the object's world matrix is
    ``T(trans_mat) R(rot_mat)``; the camera sits at the origin with Euler rotation
    ``(0, pi, 0)`` (Blender cameras look down their local -Z with +Y up), lens
    ``focal_mm`` on a 32 mm sensor fitted horizontally, so ``f_px = focal_mm / 32 * W``;
    Blender pixel coordinates have their origin at the top-left image corner, hence the
    0.5 shift to pixel centres.
    """
    h, w = image_size
    world = verts @ np.asarray(rot_mat).T + np.asarray(trans_mat)
    cam_to_world = np.array(  # Euler XYZ (0, pi, 0) = rotation by pi about +Y
        [[math.cos(math.pi), 0.0, math.sin(math.pi)], [0.0, 1.0, 0.0],
         [-math.sin(math.pi), 0.0, math.cos(math.pi)]]
    )
    local = world @ cam_to_world  # world -> camera-local coordinates (R^T applied)
    depth = -local[:, 2]
    f_px = focal_mm / 32.0 * w
    x_edge = w / 2.0 + f_px * local[:, 0] / depth
    y_edge = h / 2.0 - f_px * local[:, 1] / depth
    return np.stack([x_edge - 0.5, y_edge - 0.5], axis=1)


def rotation_about(axis: str, angle: float) -> np.ndarray:
    """A 3x3 rotation by ``angle`` radians about ``'x'``, ``'y'`` or ``'z'``."""
    c, s = math.cos(angle), math.sin(angle)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis].astype(np.float64)


def make_pix3d(root: Path) -> dict[str, Any]:
    """A tiny Pix3D tree: two chairs (one PNG, one JPEG image) and a table.

    Models are y-up boxes in Pix3D's frame; each image's mask is the silhouette's
    bounding rectangle (only its size and threshold matter to the loader).
    """
    entries = []
    specs = [
        ("chair", "0001.png", "IKEA_A", (30, 40), rotation_about("y", 0.4) @ rotation_about("x", 0.2),
         [0.05, -0.02, 3.0], 35.0, False),
        ("chair", "0002.jpg", "IKEA_B", (36, 28), rotation_about("y", -2.5), [0.0, 0.1, 4.0], 50.0, True),
        ("table", "0001.jpg", "IKEA_C", (20, 20), np.eye(3), [0.0, 0.0, 2.5], 32.0, False),
    ]
    verts, faces = box_mesh((-0.4, 0.0, -0.3), (0.4, 0.9, 0.3))
    for seed, (cat, img_name, model_name, (h, w), rot, trans, focal, occluded) in enumerate(specs):
        img = f"img/{cat}/{img_name}"
        mask_rel = f"mask/{cat}/{Path(img_name).stem}.png"
        model = f"model/{cat}/{model_name}/model.obj"
        write_image(root / img, (h, w), seed)
        uv = blender_project(verts, rot, np.array(trans), focal, (h, w))
        mask = np.zeros((h, w), dtype=np.uint8)
        x0, y0 = np.clip(np.floor(uv.min(0)).astype(int), 0, [w - 1, h - 1])
        x1, y1 = np.clip(np.ceil(uv.max(0)).astype(int), 0, [w - 1, h - 1])
        mask[y0:y1 + 1, x0:x1 + 1] = 255
        (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(root / mask_rel, mask)
        if not (root / model).exists():
            write_obj(root / model, verts, faces)
        entries.append({
            "img": img, "category": cat, "img_size": [w, h], "2d_keypoints": [], "mask": mask_rel,
            "img_source": "ikea", "model": model, "model_raw": model, "model_source": "ikea",
            "3d_keypoints": f"model/{cat}/{model_name}/3d_keypoints.txt",
            "voxel": f"model/{cat}/{model_name}/voxel.mat",
            "rot_mat": np.round(rot, 6).tolist(), "trans_mat": list(trans),
            "focal_length": focal, "cam_position": [0.1, 0.5, -3.0], "inplane_rotation": 0.01,
            "truncated": False, "occluded": occluded, "slightly_occluded": False,
            "bbox": [int(x0), int(y0), int(x1), int(y1)],
        })
    (root / "pix3d.json").write_text(json.dumps(entries))
    return {"entries": entries, "verts": verts, "faces": faces}
