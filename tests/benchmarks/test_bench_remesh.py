"""Tests for benchmarks/bench_remesh.py: its table tells a remesh that lost a part."""

from __future__ import annotations

import pytest

from tests.helpers import load_script
from tests.render.test_mesh import _stool


def load_bench():
    return load_script("benchmarks/bench_remesh.py")


def _row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_bench_remesh_shows_the_legs_position_alone_loses(tmp_path, capsys):
    bench = load_bench()
    stool = tmp_path / "stool.obj"
    _stool().export(stool)
    gaps = {}
    for weight in ("0", "0.5"):
        assert bench.main(["--mesh", str(stool), "--num-verts", "200", "--normal-weight", weight]) == 0
        row = _row(capsys.readouterr().out, "stool.obj")
        assert row[1] == "yes"  # the input is closed and outward
        gaps[weight] = float(row[5])
    assert gaps["0"] > 3 and gaps["0.5"] < 1  # in vertex spacings: the legs vanish, then stay


def test_bench_remesh_rejects_bad_settings_and_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        load_bench().main(["--normal-weight", "-1"])
    assert stop.value.code == 2 and "--normal-weight" in capsys.readouterr().err
    bad = tmp_path / "bad.obj"
    bad.write_text("not a mesh\n")
    with pytest.raises(SystemExit) as stop:
        load_bench().main(["--mesh", str(bad)])
    assert stop.value.code == 2 and "bad.obj" in capsys.readouterr().err
