"""Parity of the optional PyTorch3D backend (skipped where pytorch3d is not importable)."""

from __future__ import annotations

import pytest
import torch
import trimesh

from render import rasterize
from render.pytorch3d_backend import available, rasterize_pytorch3d
from tests.helpers import assert_close


def test_missing_pytorch3d_raises_clear_error():
    if available():
        pytest.skip("pytorch3d is installed")
    with pytest.raises(ImportError, match="needs the pytorch3d package"):
        rasterize_pytorch3d(torch.zeros(1, 3, 3), torch.tensor([[0, 1, 2]]), torch.eye(3), (4, 4))


@pytest.mark.skipif(not available(), reason="pytorch3d is not installed")
@pytest.mark.parametrize("k", [1, 2])
def test_matches_our_rasterizer(k):
    mesh = trimesh.creation.icosphere(subdivisions=2)
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)[None] + torch.tensor([0.2, -0.1, 3.0])
    faces = torch.tensor(mesh.faces, dtype=torch.int64)
    K = torch.tensor([[40.0, 0.0, 20.0], [0.0, 42.0, 14.0], [0.0, 0.0, 1.0]])
    ours = rasterize(verts, faces, K, (30, 40), faces_per_pixel=k)
    theirs = rasterize_pytorch3d(verts, faces, K, (30, 40), faces_per_pixel=k)
    same = ours.pix_to_face == theirs.pix_to_face
    assert same.float().mean() > 0.99  # pixels on shared edges may pick either face
    assert_close(ours.zbuf[same], theirs.zbuf[same], atol=1e-4, rtol=1e-4)
    assert_close(ours.bary[same], theirs.bary[same], atol=1e-4, rtol=1e-4)
