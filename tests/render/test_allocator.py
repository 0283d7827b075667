"""The opt-in allocator tuning applies on glibc and leaves results unchanged."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt only")
def test_tuning_applies_and_rendering_still_works():
    code = (
        "import torch\n"
        "from render import rasterize\n"
        "from render.allocator import tune_cpu_allocator\n"
        "ok = tune_cpu_allocator()\n"
        "v = torch.tensor([[[-1.0, -1.0, 5.0], [1.0, -1.0, 5.0], [0.0, 1.0, 5.0]]])\n"
        "K = torch.tensor([[10.0, 0.0, 4.0], [0.0, 10.0, 4.0], [0.0, 0.0, 1.0]])\n"
        "f = rasterize(v, torch.tensor([[0, 1, 2]]), K, (9, 9))\n"
        "print(ok, int(f.mask.sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ok, covered = out.stdout.split()
    assert ok == "True"
    assert int(covered) > 10
