"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README should show a Python example"
    monkeypatch.chdir(ROOT)
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
    frags, depth = namespace["frags"], namespace["depth"]
    assert frags.pix_to_face.shape == (1, 240, 320, 1)
    assert bool(frags.mask.any())
    assert depth.shape == (1, 240, 320, 1)
