"""Shared building blocks of the real-dataset loaders (PASCAL3D+, ObjectNet3D, Pix3D).

* :class:`DatasetError` -- every problem with a file of a dataset (missing, unreadable,
  malformed) is reported as ``"<file>: <problem>"``, one line.
* :class:`ItemIndex` -- builds a loader's item list and implements ``skip_invalid``: an
  invalid item either raises its :class:`DatasetError` at once, or is skipped, counted and
  reported by **one** ``UserWarning`` when the index is complete
  (``"skipped 3 of 120 items; first: <file>: <problem>"``). Nothing is dropped silently.
* Image reading (:func:`read_image`, :func:`read_mask`, :func:`check_image`), list files
  (:func:`read_list`), MATLAB structs (:func:`load_mat_struct` and the ``mat_*`` field
  readers, for files read with ``scipy.io.loadmat(squeeze_me=True,
  struct_as_record=False)``), and CAD models converted to our object frame
  (:func:`load_cad`, :data:`Z_UP_TO_Y_UP`).

Frames and units follow ``docs/conventions.md``; the object frame is +y up.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from render.mesh import Mesh, MeshError, load_mesh

__all__ = [
    "DatasetError",
    "ItemIndex",
    "Z_UP_TO_Y_UP",
    "read_image",
    "read_mask",
    "check_image",
    "read_list",
    "load_mat_struct",
    "mat_field",
    "mat_list",
    "mat_number",
    "mat_string",
    "mat_vector",
    "mat_is_empty",
    "load_cad",
    "nearest_rotation",
]

#: Rotation taking z-up CAD coordinates (PASCAL3D+, ObjectNet3D) to our +y-up object
#: frame: ``(x, y, z)_ours = (x_p, z_p, -y_p)``. PASCAL3D+ puts the camera of azimuth 0 on
#: the CAD model's -y axis (its front); this rotation puts it on our +z axis, where our
#: azimuth 0 is (see :func:`datasets.pascal3d.pascal_to_pose`). A proper rotation
#: (det +1), so face winding is kept.
Z_UP_TO_Y_UP = torch.tensor(
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64
)


class DatasetError(ValueError):
    """A missing, unreadable or malformed dataset file; the message is ``"<file>: <problem>"``.

    Attributes:
        path: the file (or ``"file entry"``) at fault, as a string.
        problem: what is wrong with it.

    >>> str(DatasetError("Images/car_imagenet/n1.JPEG", "no such file"))
    'Images/car_imagenet/n1.JPEG: no such file'
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # keep the two-argument constructor picklable (DataLoader workers)
        return (type(self), (self.path, self.problem))


class ItemIndex:
    """Collects a dataset's items while implementing ``skip_invalid``.

    Call :meth:`add` for every valid item and :meth:`invalid` for every invalid one (an
    item whose annotation cannot even be parsed counts as one item); :meth:`finish`
    returns the items. With ``skip_invalid=False`` :meth:`invalid` raises the error at
    once; with ``True`` it records it, and :meth:`finish` issues one ``UserWarning``
    ``"<name>: skipped N of M items; first: <file>: <problem>"`` (``M`` counts valid and
    invalid items). The skipped errors stay available as ``skipped``.

    >>> index = ItemIndex("demo", skip_invalid=True)
    >>> index.add("a"); index.invalid(DatasetError("b.mat", "cannot read MAT file"))
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     items = index.finish()
    >>> items, str(caught[0].message)
    (['a'], 'demo: skipped 1 of 2 items; first: b.mat: cannot read MAT file')
    """

    def __init__(self, name: str, skip_invalid: bool) -> None:
        self.name = name
        self.skip_invalid = bool(skip_invalid)
        self.items: list[Any] = []
        self.skipped: list[DatasetError] = []

    def add(self, item: Any) -> None:
        """Record one valid item."""
        self.items.append(item)

    def invalid(self, error: DatasetError) -> None:
        """Raise ``error``, or (``skip_invalid``) record it as one skipped item."""
        if not self.skip_invalid:
            raise error
        self.skipped.append(error)

    def finish(self) -> list[Any]:
        """Return the valid items, warning once about skipped ones."""
        if self.skipped:
            total = len(self.items) + len(self.skipped)
            warnings.warn(
                f"{self.name}: skipped {len(self.skipped)} of {total} items; "
                f"first: {self.skipped[0]}",
                UserWarning,
                stacklevel=3,
            )
        return self.items


# ------------------------------------------------------------------------------ images


def _check_file(path: Path, what: str = "file") -> None:
    if not path.exists():
        raise DatasetError(path, f"no such {what}")
    if not path.is_file():
        raise DatasetError(path, f"not a regular file (expected a {what})")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no details"
    return f"{type(error).__name__}: {text[:200]}"


def check_image(path: str | Path) -> tuple[int, int]:
    """Check that ``path`` exists and has a readable image header; return its ``(H, W)``.

    Cheap (the pixel data is not decoded), for index builds. A file whose header is fine
    but whose data is truncated is only caught by :func:`read_image`.

    Raises:
        DatasetError: missing file, not an image / unreadable header.
    """
    path = Path(path)
    _check_file(path, "image file")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as error:  # PIL raises several types on corrupt input
        raise DatasetError(path, f"cannot read image ({_one_line(error)})") from error
    return height, width


def _decode(path: Path) -> Image.Image:
    _check_file(path, "image file")
    try:
        image = Image.open(path)
        image.load()
    except Exception as error:
        raise DatasetError(path, f"cannot read image ({_one_line(error)})") from error
    return image


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image file as ``(3, H, W)`` float32 RGB in [0, 1].

    Grey, palette, CMYK and 16-bit images are converted to RGB; an alpha channel is
    dropped. Pixels are taken as stored: EXIF orientation tags are ignored, as the
    annotation tools of the supported datasets (MATLAB ``imread``) ignore them.

    Raises:
        DatasetError: missing file; unreadable, corrupt or truncated image.
    """
    path = Path(path)
    image = _decode(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = np.repeat((array / scale)[..., None], 3, axis=2)
    else:
        array = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DatasetError(path, f"cannot read image (unexpected pixel array shape {array.shape})")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))


def read_mask(path: str | Path, threshold: float = 0.5) -> torch.Tensor:
    """Read a mask image as ``(H, W)`` bool: pixels brighter than ``threshold`` (in [0, 1]).

    Colour masks use their brightest channel; an alpha channel is ignored.

    Raises:
        DatasetError: missing file; unreadable image.
    """
    rgb = read_image(path)
    return rgb.amax(dim=0) > threshold


# ------------------------------------------------------------------------------ lists


def read_list(path: str | Path) -> list[str]:
    """Non-empty lines of a text list file, stripped.

    Raises:
        DatasetError: missing or undecodable file.
    """
    path = Path(path)
    _check_file(path, "list file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(path, f"cannot read list file ({_one_line(error)})") from error
    return [line.strip() for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------------ MATLAB structs


def load_mat_struct(path: str | Path, key: str = "record") -> Any:
    """Load variable ``key`` (a MATLAB struct) from a ``.mat`` file.

    Read with ``scipy.io.loadmat(squeeze_me=True, struct_as_record=False)``: structs are
    ``mat_struct`` objects with attribute access, a 1x1 struct array is a single struct,
    longer struct arrays are object ndarrays, an empty matrix ``[]`` is an empty ndarray.

    Raises:
        DatasetError: missing file, unreadable / corrupt file, no struct ``key``.
    """
    import scipy.io

    path = Path(path)
    _check_file(path, "annotation file")
    try:
        contents = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as error:  # scipy raises ValueError, TypeError, OSError, ...
        raise DatasetError(path, f"cannot read MAT file ({_one_line(error)})") from error
    if key not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise DatasetError(path, f"no variable {key!r} (found {found or 'none'})")
    value = contents[key]
    if not hasattr(value, "_fieldnames"):
        raise DatasetError(path, f"{key}: expected a struct, got {type(value).__name__}")
    return value


def mat_is_empty(value: Any) -> bool:
    """Whether a loaded MATLAB value is empty (``[]``, ``''`` or a 0-size array)."""
    if value is None:
        return True
    if isinstance(value, np.ndarray):
        return value.size == 0
    if isinstance(value, str):
        return value == ""
    return False


def mat_field(struct: Any, name: str, where: str, path: str | Path, default: Any = ...) -> Any:
    """Field ``name`` of a loaded struct; ``default`` (if given) when the field is absent.

    Raises:
        DatasetError: ``"<path>: <where>: no field 'name'"`` when absent and no default.
    """
    fields = getattr(struct, "_fieldnames", None)
    if fields is None:
        raise DatasetError(path, f"{where}: expected a struct, got {type(struct).__name__}")
    if name not in fields:
        if default is ...:
            raise DatasetError(path, f"{where}: no field {name!r}")
        return default
    return getattr(struct, name)


def mat_list(value: Any) -> list[Any]:
    """A loaded struct array (or single struct, or ``[]``) as a list of structs."""
    if mat_is_empty(value):
        return []
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    return [value]


def mat_number(value: Any, where: str, path: str | Path, allow_empty: bool = False) -> float | None:
    """A loaded scalar as a finite float (``None`` for an empty value if ``allow_empty``).

    Raises:
        DatasetError: not a single finite number (or empty when not allowed).
    """
    if mat_is_empty(value):
        if allow_empty:
            return None
        raise DatasetError(path, f"{where}: expected a number, got an empty value")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(path, f"{where}: expected a number, got {type(value).__name__}") from None
    if array.size != 1:
        raise DatasetError(path, f"{where}: expected a number, got {array.size} values")
    number = float(array.reshape(()))
    if not math.isfinite(number):
        raise DatasetError(path, f"{where}: expected a finite number, got {number}")
    return number


def mat_vector(value: Any, size: int, where: str, path: str | Path) -> np.ndarray:
    """A loaded numeric vector of exactly ``size`` finite entries, as float64.

    Raises:
        DatasetError: wrong size, non-numeric or non-finite entries.
    """
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DatasetError(path, f"{where}: expected {size} numbers, got {type(value).__name__}") from None
    if array.size != size:
        raise DatasetError(path, f"{where}: expected {size} numbers, got {array.size}")
    if not np.isfinite(array).all():
        raise DatasetError(path, f"{where}: expected finite numbers, got {array.tolist()}")
    return array


def mat_string(value: Any, where: str, path: str | Path) -> str:
    """A loaded MATLAB char array as ``str``.

    Raises:
        DatasetError: not a string.
    """
    if isinstance(value, np.ndarray) and value.dtype.kind == "U" and value.size == 1:
        value = str(value.reshape(()))
    if not isinstance(value, str):
        raise DatasetError(path, f"{where}: expected a string, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------- CAD / poses


def load_cad(path: str | Path, rotation: torch.Tensor | None = None) -> Mesh:
    """Load a CAD model with :func:`render.load_mesh` and rotate it into our object frame.

    Args:
        path: mesh file (OFF, OBJ, ...).
        rotation: ``(3, 3)`` proper rotation applied to every vertex
            (``verts_ours = verts_file @ rotation^T``), e.g. :data:`Z_UP_TO_Y_UP`; ``None``
            keeps the file's coordinates.

    Returns:
        The :class:`render.Mesh` (float32 vertices, same faces, ``name`` the path).

    Raises:
        DatasetError: missing, unreadable, empty or degenerate mesh (the message of
            :class:`render.MeshError`, re-raised as ``"<file>: <problem>"``).
    """
    path = Path(path)
    try:
        mesh = load_mesh(path)
    except MeshError as error:
        message, prefix = str(error), f"{path}: "
        raise DatasetError(path, message[len(prefix):] if message.startswith(prefix) else message) from error
    if rotation is not None:
        verts = (mesh.verts.double() @ rotation.to(torch.float64).T).to(mesh.verts.dtype)
        mesh = dataclasses.replace(mesh, verts=verts)
    return mesh


def nearest_rotation(matrix: np.ndarray, where: str, path: str | Path, tol: float = 1e-3) -> np.ndarray:
    """The rotation nearest to ``matrix`` (SVD projection), which must already be close.

    Annotation files store rotations with a few decimals; this removes the rounding so that
    the result passes strict orthonormality checks.

    Raises:
        DatasetError: ``max |M M^T - I| > tol`` or ``det(M) <= 0`` (not a rotation).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    error = float(np.abs(matrix @ matrix.T - np.eye(3)).max())
    if error > tol or np.linalg.det(matrix) <= 0:
        raise DatasetError(
            path,
            f"{where}: expected a rotation matrix (orthonormal, det +1), got "
            f"max |R R^T - I| = {error:.3g}, det = {np.linalg.det(matrix):.3g}",
        )
    u, _, vt = np.linalg.svd(matrix)
    return u @ vt

