"""Regenerate the bundled pose-fitting example: a synthetic photo of the bundled chair with
its exact camera and pose.

Usage::

    python demos/make_example.py [--seed 73] [--out demos/data]

Renders ``demos/data/chair.obj`` with the synthetic engine (:mod:`datasets.synthetic`:
random colours, light, procedural background, photometric jitter; no occluders) at
320 x 240 pixels (not square, and not the size pose models are trained at), and writes

* ``chair_example.png``: the photo;
* ``chair_example.json``: ``{"image": "chair_example.png", "mesh": "chair.obj",
  "K": 3x3, "R": 3x3, "t": [3], "azimuth_deg", "elevation_deg", "theta_deg",
  "bbox": [x0, y0, x1, y1], "made_by": "..."}``, file names relative to the JSON.

``K`` is in pixels (OpenCV convention, ``docs/conventions.md``); ``R, t`` are in the mesh
**file's** coordinates: ``X_cam = R @ X_file + t`` (the renderer works in the normalised
model frame ``X_model = s (X_file - c)``, :func:`render.center_and_scale`; its pose
``(R, t_model)`` is ``(R, t_model / s - R c)`` in the file's frame). ``bbox`` holds the
first and last columns and rows of the object's mask, inclusive pixel indices. The angles
follow ``docs/conventions.md`` (about the mesh's bounding-box centre). The output depends
only on the seed; ``demos/fit_pose.py`` with no arguments fits this example. Files are
written atomically.
"""

from __future__ import annotations

import json
import math
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch

from datasets.synthetic import SyntheticConfig, SyntheticDataset
from render import MeshError, center_and_scale, load_mesh
from render.cli import Parser

PROG = "make_example"
DATA = Path(__file__).resolve().parent / "data"
MESH = DATA / "chair.obj"
#: the seed of the bundled example (a three-quarter view from above, chair fully in view)
SEED = 73
#: (H, W) of the example photo
IMAGE_SIZE = (240, 320)
IMAGE_NAME = "chair_example.png"
JSON_NAME = "chair_example.json"


def example_config(mesh_path: str | os.PathLike = MESH) -> SyntheticConfig:
    """The synthetic-engine settings of the example (only the chair, no occluders)."""
    return SyntheticConfig(image_size=IMAGE_SIZE, categories=(), mesh_paths=(f"chair={mesh_path}",), occlusion=0)


def render_example(mesh_path: str | os.PathLike = MESH, seed: int = SEED) -> tuple[dict[str, Any], dict[str, Any]]:
    """Render the example.

    Returns:
        ``(sample, record)``: the dataset sample (:mod:`datasets.schema`, model frame) and
        the JSON record of the module docstring (without ``image``/``mesh`` names).
    """
    mesh_path = Path(mesh_path)
    sample = SyntheticDataset(example_config(mesh_path), seed=seed, length=1)[0]
    _, c, s = center_and_scale(load_mesh(mesh_path), center="bbox", scale="radius")
    R = sample["R"].double()
    t_file = sample["t"].double() / s - R @ c.double()
    record = {
        "K": sample["K"].double().tolist(),
        "R": R.tolist(),
        "t": t_file.tolist(),
        "azimuth_deg": math.degrees(sample["azimuth"]),
        "elevation_deg": math.degrees(sample["elevation"]),
        "theta_deg": math.degrees(sample["theta"]),
        "bbox": [float(v) for v in sample["bbox"]],
        "made_by": f"python demos/make_example.py (seed {seed})",
    }
    return sample, record


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_example(out: Path, mesh_path: Path = MESH, seed: int = SEED) -> list[Path]:
    """Render the example and write the PNG and JSON into ``out``; return their paths."""
    sample, record = render_example(mesh_path, seed)
    out.mkdir(parents=True, exist_ok=True)
    mesh_ref = os.path.relpath(mesh_path.resolve(), out.resolve())
    record = {"image": IMAGE_NAME, "mesh": Path(mesh_ref).as_posix(), **record}
    png = iio.imwrite("<bytes>", to_uint8(sample["image"]), extension=".png")
    _write_atomic(out / IMAGE_NAME, png)
    _write_atomic(out / JSON_NAME, (json.dumps(record, indent=2) + "\n").encode())
    return [out / IMAGE_NAME, out / JSON_NAME]


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog=PROG, description="Regenerate the bundled pose-fitting example (chair photo + exact pose).")
    p.add_argument("--seed", type=int, default=SEED, help=f"dataset seed (default {SEED}, the bundled example)")
    p.add_argument("--out", type=Path, default=DATA, help="output folder (default: demos/data)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.out.exists() and not args.out.is_dir():
        print(f"{PROG}: error: {args.out}: not a directory", file=sys.stderr)
        return 2
    try:
        written = write_example(args.out, MESH, args.seed)
    except (MeshError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
