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
    spaces = []
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        spaces.append(namespace)

    def space_with(name: str) -> dict:
        found = [ns for ns in spaces if name in ns]
        assert found, f"no README example defines {name!r}"
        return found[-1]

    render_ex = space_with("frags")
    frags, depth = render_ex["frags"], render_ex["depth"]
    assert frags.pix_to_face.shape == (1, 240, 320, 1)
    assert bool(frags.mask.any())
    assert depth.shape == (1, 240, 320, 1)
    pose_ex = space_with("results")
    R, t = pose_ex["R"], pose_ex["t"]
    assert R.shape == (3, 3) and t.shape == (3,)
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=R.dtype), atol=1e-4)
    assert (tmp_path / "cache" / "models").is_dir()
    samples = space_with("samples")["samples"]
    assert len(samples) == 2 and samples[0]["image"].shape == (3, 64, 64)
    assert all(0.2 <= s["occlusion"] <= 0.45 for s in samples)
