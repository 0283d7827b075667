"""Write a procedural shape of the synthetic engine (:func:`datasets.shapes.make_shape`)
to a mesh file, e.g. to try pose fitting on a category other than the bundled chair.

Usage::

    python -m datasets.make_mesh CATEGORY [--seed S] --out FILE

The format follows ``FILE``'s extension (anything :func:`render.save_mesh` writes; vertex
colours are kept where the format has them); missing folders are created. The mesh is in
the shapes' canonical frame (+y up, front towards +z, unit bounding sphere;
:mod:`datasets.shapes`). The file is written atomically; bad arguments or an unwritable
path give a one-line error and exit code 2.

>>> import tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> main(["car", "--seed", "0", "--out", f"{tmp.name}/car.obj"])
0
>>> from render import load_mesh
>>> load_mesh(f"{tmp.name}/car.obj").num_faces == make_shape("car", 0).mesh.num_faces
True
>>> tmp.cleanup()
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from render import MeshError, save_mesh
from render.mesh import MESH_FORMATS
from render.cli import Parser, non_negative_int

from .shapes import CATEGORIES, make_shape

PROG = "python -m datasets.make_mesh"


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog=PROG, description="Write a procedural shape of the synthetic engine to a mesh file "
                                      "(+y up, front towards +z, unit bounding sphere).")
    p.add_argument("category", choices=CATEGORIES, help="shape category")
    p.add_argument("--seed", type=non_negative_int, default=0, help="which shape of the category (default 0)")
    p.add_argument("--out", required=True, help="mesh file to write (.obj, .ply, .stl, .off, .glb, .gltf)")
    args = p.parse_args(argv)
    out = Path(args.out)
    shape = make_shape(args.category, args.seed)
    tmp = out.parent / f".tmp-{uuid.uuid4().hex[:8]}-{out.name}"  # same suffix: save_mesh checks it
    try:
        if out.suffix.lower() in MESH_FORMATS:
            out.parent.mkdir(parents=True, exist_ok=True)
        save_mesh(shape.mesh, tmp)
        os.replace(tmp, out)
    except (MeshError, OSError) as error:
        print(f"{PROG}: error: {str(error).replace(str(tmp), str(out))}", file=sys.stderr)
        return 2
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {shape.mesh_id} ({shape.mesh.num_verts} vertices, {shape.mesh.num_faces} faces) to {out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
