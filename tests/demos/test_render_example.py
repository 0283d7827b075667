"""The render demo (what `make demo` runs) writes its images and rejects bad input cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "demos" / "render_example.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT)


def test_writes_rgb_depth_feature_images(tmp_path):
    out = tmp_path / "demo"
    proc = run("--out", str(out), "--size", "64", "--views", "2")
    assert proc.returncode == 0, proc.stderr
    for i in range(2):
        for kind in ("rgb", "depth", "features"):
            img = iio.imread(out / f"view_{i}_{kind}.png")
            assert img.shape == (64, 64, 3)
    rgb = iio.imread(out / "view_0_rgb.png").astype(np.int32)
    # the chair covers part of the image: some pixels differ from the white background
    assert (rgb.sum(-1) < 3 * 250).mean() > 0.05
    assert iio.imread(out / "summary.png").shape == (3 * 64, 2 * 64, 3)


def test_missing_mesh_is_a_one_line_error(tmp_path):
    proc = run("--mesh", str(tmp_path / "nope.obj"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "nope.obj" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_corrupt_mesh_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.obj"
    bad.write_bytes(b"\x00\x01garbage\xff" * 10)
    proc = run("--mesh", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "bad.obj" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_size_is_rejected(tmp_path):
    proc = run("--size", "0", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--size" in proc.stderr
