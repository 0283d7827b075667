"""The neural mesh model of NeMo: a coarse surface with a unit feature vector per vertex and
a bank of clutter (background) features.

Frames and layouts follow ``docs/conventions.md``: ``verts (V, 3)`` in the **object frame**
(+y up), ``faces (F, 3)`` int64 counter-clockwise seen from outside, features ``(V, C)``
and clutter ``(M, C)`` unit vectors (L2 norm 1 along ``C``).

A :class:`NeuralMesh` is data only (a frozen dataclass): building one from a mesh, saving
and loading are here; rendering and pose fitting are functions in
:mod:`neural_mesh.fitting`; training the features is elsewhere.

On disk a neural mesh is a directory with two files::

    weights.safetensors   verts (V, 3) float32, faces (F, 3) int64,
                          features (V, C) float32, clutter (M, C) float32
    neural_mesh.json      {"format": "neural_mesh", "format_version": 1, "num_verts": V,
                           "num_faces": F, "feature_dim": C, "clutter_size": M,
                           "weights_sha256": "...", "meta": {...}}

Both are written to temporary names and renamed into place, so an interrupted save never
leaves a half-written file; the JSON records the weights' SHA-256 so that a weights file
from another save is detected on load. Nothing is unpickled. Every problem found by
:meth:`NeuralMesh.load` raises :class:`ModelError` with a one-line message naming the file
and the problem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from render import Mesh, cuboid_surface, is_closed_outward, remesh_surface
from render.checks import check_shape

__all__ = [
    "NeuralMesh",
    "ModelError",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "DEFAULT_FEATURE_DIM",
    "DEFAULT_CLUTTER_SIZE",
    "MESH_KINDS",
    "mesh_hash",
    "atomic_directory",
    "file_sha256",
]

#: Version of the on-disk format written by :meth:`NeuralMesh.save`.
FORMAT_VERSION = 1
#: File names inside a neural-mesh directory.
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "neural_mesh.json"
#: NeMo's feature dimension (the backbone's 128-d projection).
DEFAULT_FEATURE_DIM = 128
#: Default clutter-bank size. NeMo keeps a FIFO bank of a few thousand background
#: features during training; inference uses only their (normalised) mean.
DEFAULT_CLUTTER_SIZE = 2048

_TENSORS = ("verts", "faces", "features", "clutter")
#: The kinds of neural-mesh surface (:meth:`NeuralMesh.from_mesh`).
MESH_KINDS = ("cuboid", "remesh")


class ModelError(ValueError):
    """A neural-mesh directory that cannot be loaded; the message names the file and why."""


def mesh_hash(verts: torch.Tensor, faces: torch.Tensor) -> str:
    """SHA-256 (hex) of a mesh's float32 vertices and int64 faces (CPU, C order).

    Identifies the source mesh a neural mesh was built from (stored in ``meta``).

    >>> len(mesh_hash(torch.zeros(3, 3), torch.tensor([[0, 1, 2]])))
    64
    """
    h = hashlib.sha256()
    h.update(verts.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(faces.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def _unit_rows(n: int, c: int, generator: torch.Generator | None) -> torch.Tensor:
    x = torch.randn(n, c, generator=generator, dtype=torch.float32)
    return torch.nn.functional.normalize(x, dim=1)


@dataclass(frozen=True, eq=False)
class NeuralMesh:
    """A mesh with a unit feature per vertex and a clutter-feature bank (NeMo).

    Attributes:
        verts: ``(V, 3)`` float vertex positions in the object frame (+y up).
        faces: ``(F, 3)`` int64 vertex indices, counter-clockwise seen from outside.
        features: ``(V, C)`` float unit vectors, one per vertex.
        clutter: ``(M, C)`` float unit vectors, background features (``M >= 1``).
        meta: JSON-serialisable provenance: ``kind`` ("cuboid" or "remesh"), ``source``
            (the mesh's name), ``source_hash`` (:func:`mesh_hash` of the source mesh), and
            anything a trainer adds.

    The constructor checks shapes, dtypes, devices and finiteness (not unit norm: use
    :meth:`normalized` after updating features). Instances are immutable; use
    ``dataclasses.replace`` to swap features. Equality is identity.

    >>> import torch
    >>> from render import Mesh
    >>> box = Mesh(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), torch.zeros(0, 3, dtype=torch.int64))
    >>> nm = NeuralMesh.from_mesh(box, num_verts=200, feature_dim=16, clutter_size=8,
    ...                           generator=torch.Generator().manual_seed(0))
    >>> nm.features.shape[1], nm.clutter.shape, nm.meta["kind"]
    (16, torch.Size([8, 16]), 'cuboid')
    """

    verts: torch.Tensor
    faces: torch.Tensor
    features: torch.Tensor
    clutter: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = check_shape("verts", self.verts, ["V", 3])["V"]
        check_shape("faces", self.faces, ["F", 3])
        c = check_shape("features", self.features, [v, "C"])["C"]
        check_shape("clutter", self.clutter, ["M", c])
        for name in ("verts", "features", "clutter"):
            x = getattr(self, name)
            if x.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name}: expected finite values, got NaN/inf entries")
        if self.faces.dtype != torch.int64:
            raise TypeError(f"faces: expected dtype torch.int64, got {self.faces.dtype}")
        if v == 0 or self.faces.shape[0] == 0 or c == 0 or self.clutter.shape[0] == 0:
            raise ValueError(
                f"expected V, F, C, M >= 1, got V={v}, F={self.faces.shape[0]}, C={c}, "
                f"M={self.clutter.shape[0]}"
            )
        low, high = int(self.faces.min()), int(self.faces.max())
        if low < 0 or high >= v:
            raise ValueError(f"faces: expected indices in [0, {v - 1}], got {low}..{high}")
        for name in ("faces", "features", "clutter"):
            if getattr(self, name).device != self.verts.device:
                raise ValueError(
                    f"{name}: expected device {self.verts.device} (that of verts), "
                    f"got {getattr(self, name).device}"
                )

    # ------------------------------------------------------------------ properties

    @property
    def num_verts(self) -> int:
        """``V``."""
        return self.verts.shape[0]

    @property
    def num_faces(self) -> int:
        """``F``."""
        return self.faces.shape[0]

    @property
    def feature_dim(self) -> int:
        """``C``."""
        return self.features.shape[1]

    @property
    def device(self) -> torch.device:
        return self.verts.device

    @functools.cached_property
    def closed_outward(self) -> bool:
        """Whether the surface is closed with every face wound outward
        (:func:`render.is_closed_outward`), so back-face culling changes nothing but
        speed. Computed once per instance (instances are immutable)."""
        return is_closed_outward(self.verts, self.faces)

    @property
    def radius(self) -> float:
        """Largest distance of a vertex from the object-frame origin (object units)."""
        return float(self.verts.detach().norm(dim=1).max())

    # ---------------------------------------------------------------- constructors

    @classmethod
    def from_mesh(
        cls,
        mesh: Mesh,
        *,
        num_verts: int = 1000,
        kind: str = "cuboid",
        feature_dim: int = DEFAULT_FEATURE_DIM,
        clutter_size: int = DEFAULT_CLUTTER_SIZE,
        generator: torch.Generator | None = None,
        coverage: float = 0.99,
        padding: float = 0.0,
        surface: Mesh | None = None,
    ) -> NeuralMesh:
        """Build a neural mesh around ``mesh`` with random unit features.

        Args:
            mesh: the object (or category prototype), object frame.
            num_verts: target vertex count of the neural surface (NeMo: about 1,000).
            kind: ``"cuboid"``: NeMo's gridded cuboid covering ``coverage`` of the vertices
                per axis (:func:`render.cuboid_surface`; only ``mesh.verts`` are used, so a
                mesh without faces works); ``"remesh"``: a near-uniform remesh of the
                surface itself (:func:`render.remesh_surface`).
            feature_dim: ``C``.
            clutter_size: ``M``, entries of the clutter bank.
            generator: draws the features and clutter (``randn``, then L2-normalised),
                both on the CPU, in that order.
            coverage, padding: passed to :func:`render.cuboid_surface` (``kind="cuboid"``).
            surface: the surface ``kind`` builds from ``mesh``, if already at hand (e.g.
                :meth:`datasets.SyntheticDataset.neural_mesh`, whose vertex projections
                the samples carry): used as is instead of building it again.

        Returns:
            A float32 neural mesh on ``mesh``'s device.
        """
        if kind not in MESH_KINDS:
            raise ValueError(f"kind: expected one of {', '.join(MESH_KINDS)}, got {kind!r}")
        if feature_dim < 1 or clutter_size < 1:
            raise ValueError(
                f"feature_dim, clutter_size: expected >= 1, got {feature_dim}, {clutter_size}"
            )
        if surface is not None:
            if not isinstance(surface, Mesh) or surface.faces.shape[0] == 0:
                raise ValueError("surface: expected a Mesh with faces")
        elif kind == "cuboid":
            surface = cuboid_surface(mesh, num_verts=num_verts, coverage=coverage, padding=padding)
        else:
            surface = remesh_surface(mesh, num_verts=num_verts)
        features = _unit_rows(surface.num_verts, feature_dim, generator)
        clutter = _unit_rows(clutter_size, feature_dim, generator)
        device = mesh.verts.device
        meta = {
            "kind": kind,
            "source": mesh.name,
            "source_hash": mesh_hash(mesh.verts, mesh.faces),
            "num_verts_target": int(num_verts),
        }
        return cls(
            verts=surface.verts.to(device, torch.float32),
            faces=surface.faces.to(device),
            features=features.to(device),
            clutter=clutter.to(device),
            meta=meta,
        )

    # ---------------------------------------------------------------------- helpers

    def to(self, device: torch.device | str) -> NeuralMesh:
        """A copy with every tensor on ``device``."""
        return dataclasses.replace(
            self,
            verts=self.verts.to(device),
            faces=self.faces.to(device),
            features=self.features.to(device),
            clutter=self.clutter.to(device),
            meta=dict(self.meta),
        )

    def normalized(self) -> NeuralMesh:
        """A copy with features and clutter L2-normalised along ``C``."""
        return dataclasses.replace(
            self,
            features=torch.nn.functional.normalize(self.features, dim=1),
            clutter=torch.nn.functional.normalize(self.clutter, dim=1),
            meta=dict(self.meta),
        )

    # ------------------------------------------------------------------------- I/O

    def save(self, directory: str | Path) -> None:
        """Write ``weights.safetensors`` and ``neural_mesh.json`` into ``directory``.

        A new directory is assembled under a temporary name next to it and renamed into
        place; into an existing directory each file is written to a temporary name and
        renamed (weights first). Tensors are stored float32 (int64 faces) from the CPU.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        tensors = {
            "verts": self.verts.detach().to("cpu", torch.float32).contiguous(),
            "faces": self.faces.detach().to("cpu", torch.int64).contiguous(),
            "features": self.features.detach().to("cpu", torch.float32).contiguous(),
            "clutter": self.clutter.detach().to("cpu", torch.float32).contiguous(),
        }
        try:
            meta_json = json.loads(json.dumps(self.meta))
        except (TypeError, ValueError) as error:
            raise ValueError(f"meta: expected JSON-serialisable values ({error})") from None
        config = {
            "format": "neural_mesh",
            "format_version": FORMAT_VERSION,
            "num_verts": self.num_verts,
            "num_faces": self.num_faces,
            "feature_dim": self.feature_dim,
            "clutter_size": int(self.clutter.shape[0]),
            "weights_sha256": None,
            "meta": meta_json,
        }
        with atomic_directory(directory, replace_files=(WEIGHTS_FILE, CONFIG_FILE)) as work:
            save_file(tensors, str(work / WEIGHTS_FILE))
            config["weights_sha256"] = file_sha256(work / WEIGHTS_FILE)
            (work / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> NeuralMesh:
        """Load a neural mesh written by :meth:`save` (no pickles).

        Raises:
            ModelError: missing directory or file, unreadable or invalid JSON, another
                format or version, weights that fail their checksum or cannot be read,
                missing tensors, shapes or dtypes that disagree with the JSON, NaN values.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelError(f"{directory}: no such neural-mesh directory")
        config_path = directory / CONFIG_FILE
        weights_path = directory / WEIGHTS_FILE
        config = _read_config(config_path)
        if not weights_path.is_file():
            raise ModelError(f"{weights_path}: missing (expected beside {CONFIG_FILE})")
        expected_sha = config["weights_sha256"]
        if expected_sha is not None and file_sha256(weights_path) != expected_sha:
            raise ModelError(
                f"{weights_path}: checksum does not match {CONFIG_FILE} (files from different saves?)"
            )
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(weights_path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            text = " ".join(str(error).split())[:200]
            raise ModelError(f"{weights_path}: cannot read safetensors ({text})") from None
        v, f, c, m = (config[k] for k in ("num_verts", "num_faces", "feature_dim", "clutter_size"))
        expected = {
            "verts": ((v, 3), (torch.float32, torch.float64)),
            "faces": ((f, 3), (torch.int64,)),
            "features": ((v, c), (torch.float32, torch.float64)),
            "clutter": ((m, c), (torch.float32, torch.float64)),
        }
        for name, (shape, dtypes) in expected.items():
            if name not in tensors:
                raise ModelError(f"{weights_path}: missing tensor {name!r}")
            x = tensors[name]
            if tuple(x.shape) != shape:
                raise ModelError(
                    f"{weights_path}: {name}: shape {tuple(x.shape)} does not match "
                    f"{CONFIG_FILE} (expected {shape})"
                )
            if x.dtype not in dtypes:
                raise ModelError(f"{weights_path}: {name}: unexpected dtype {x.dtype}")
        try:
            model = cls(
                verts=tensors["verts"],
                faces=tensors["faces"],
                features=tensors["features"],
                clutter=tensors["clutter"],
                meta=config["meta"],
            )
        except (TypeError, ValueError) as error:
            raise ModelError(f"{weights_path}: {error}") from None
        return model.to(device)


@contextlib.contextmanager
def atomic_directory(directory: str | Path, replace_files: Sequence[str] | None = None) -> Iterator[Path]:
    """Write a directory atomically: yields a new temporary directory beside ``directory``
    to fill; when the block ends without an error it is moved into place (on an error it
    is deleted and ``directory`` is left as it was).

    A ``directory`` that does not exist yet is created by one rename. An existing one is
    replaced whole (``replace_files=None``: swapped out, then deleted) or file by file
    (the names in ``replace_files``, renamed over the old ones in that order; other files
    stay).

    >>> import tempfile; tmp = tempfile.TemporaryDirectory(); root = Path(tmp.name)
    >>> with atomic_directory(root / "d") as work:
    ...     _ = (work / "a.txt").write_text("1")
    >>> sorted(p.name for p in root.iterdir()), (root / "d" / "a.txt").read_text()
    (['d'], '1')
    >>> tmp.cleanup()
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a directory")
    work = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield work
        if not directory.exists():
            os.rename(work, directory)
        elif replace_files is not None:
            for name in replace_files:
                os.replace(work / name, directory / name)
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / "x")
            os.rename(work, directory)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MB blocks); checksums in saved models."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_config(path: Path) -> dict[str, Any]:
    """Read and check ``neural_mesh.json``; raise :class:`ModelError` naming ``path``."""
    if not path.is_file():
        raise ModelError(f"{path}: missing (not a neural-mesh directory?)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        text = " ".join(str(error).split())[:200]
        raise ModelError(f"{path}: not valid JSON ({text})") from None
    if not isinstance(config, dict) or config.get("format") != "neural_mesh":
        raise ModelError(f"{path}: not a neural-mesh config (expected \"format\": \"neural_mesh\")")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{path}: unsupported format_version {version!r} (this version reads {FORMAT_VERSION})"
        )
    for key in ("num_verts", "num_faces", "feature_dim", "clutter_size"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelError(f"{path}: {key}: expected a positive integer, got {value!r}")
    sha = config.get("weights_sha256")
    if sha is not None and not isinstance(sha, str):
        raise ModelError(f"{path}: weights_sha256: expected a string, got {sha!r}")
    config["weights_sha256"] = sha
    meta = config.get("meta", {})
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: meta: expected an object, got {type(meta).__name__}")
    config["meta"] = meta
    return config
