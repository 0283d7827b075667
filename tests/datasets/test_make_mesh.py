"""``python -m datasets.make_mesh``: a procedural shape written to a mesh file."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datasets.make_mesh import main
from datasets.shapes import make_shape
from render import center_and_scale, load_mesh

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_writes_the_shape_in_its_frame_with_its_colours(tmp_path, suffix):
    out = tmp_path / f"bus{suffix}"
    assert main(["bus", "--seed", "2", "--out", str(out)]) == 0
    shape = make_shape("bus", 2)
    mesh = load_mesh(out)
    # the file holds the canonical-frame shape (unit bounding sphere, box-centred)...
    assert mesh.verts.norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-5)
    _, c, s = center_and_scale(mesh)
    assert c.abs().max().item() < 1e-5 and s == pytest.approx(1.0, abs=1e-5)
    # ...as the same surface (loading welds duplicate vertices, so compare the vertex sets)
    assert mesh.num_faces == shape.mesh.num_faces
    unique = torch.unique(shape.mesh.verts.round(decimals=4), dim=0)
    assert torch.equal(torch.unique(mesh.verts.round(decimals=4), dim=0), unique)
    assert mesh.vertex_colors is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_another_seed_is_another_shape_and_folders_are_made(tmp_path):
    assert main(["car", "--out", str(tmp_path / "a.obj")]) == 0
    assert main(["car", "--seed", "1", "--out", str(tmp_path / "new" / "b.obj")]) == 0
    assert (tmp_path / "a.obj").read_bytes() != (tmp_path / "new" / "b.obj").read_bytes()


@pytest.mark.parametrize("args, words", [
    (["cat", "--out", "{tmp}/x.obj"], "invalid choice: 'cat'"),
    (["car", "--seed", "-1", "--out", "{tmp}/x.obj"], "expected an integer >= 0"),
    (["car", "--out", "{tmp}/x.xyz"], "unsupported mesh format"),
    (["car", "--out", "{tmp}"], "unsupported mesh format '(no extension)'"),
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, args, words):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    run = subprocess.run([sys.executable, "-m", "datasets.make_mesh", *argv], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("python -m datasets.make_mesh")
    assert list(tmp_path.iterdir()) == []
