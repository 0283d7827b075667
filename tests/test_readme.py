"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(monkeypatch, tmp_path):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README should show a Python example"
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MESHPOSE_CACHE", str(tmp_path / "cache"))  # the pose example builds a toy model
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
    frags, depth = namespace["frags"], namespace["depth"]
    assert frags.pix_to_face.shape == (1, 240, 320, 1)
    assert bool(frags.mask.any())
    assert depth.shape == (1, 240, 320, 1)
    R, t = namespace["R"], namespace["t"]
    assert R.shape == (3, 3) and t.shape == (3,)
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=R.dtype), atol=1e-4)
    assert (tmp_path / "cache" / "models").is_dir()
