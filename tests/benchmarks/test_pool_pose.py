"""benchmarks/pool_pose.py: pooling bench_pose.py results of one build over test seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers import load_script


def load_pool():
    return load_script("benchmarks/pool_pose.py")


def run_json(path: Path, seed: int | None, levels: dict[str, list[float]], **settings) -> Path:
    """A bench_pose.py --json result with these per-image errors per level."""
    run = {"mesh": "chair.obj", "steps": 100, "occlusion": [0.0, 0.5], "renderer": "engine", "fit": {},
           "n": len(next(iter(levels.values()))), "device": "cpu", "levels": {}}
    if seed is not None:
        run["test_seed"] = seed
    run.update(settings)
    for level, errors in levels.items():
        run["levels"][level] = {"occlusion": 0.0, "render_and_compare": {"errors_deg": errors, "acc_pi6": -1.0}}
    path.write_text(json.dumps(run))
    return path


def test_pools_every_image_of_every_seed(tmp_path, capsys):
    pool = load_pool()
    a = run_json(tmp_path / "a.json", 1, {"L0": [1.0, 2.0, 40.0], "L2": [5.0, 50.0, 60.0]})
    b = run_json(tmp_path / "b.json", 2, {"L0": [3.0, 12.0, 4.0]})
    c = run_json(tmp_path / "c.json", 2, {"L2": [20.0, 8.0, 90.0]})  # same seed, another level: fine
    out = tmp_path / "pooled.json"
    assert pool.main([str(a), str(b), str(c), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| L0    | render_and_compare |      6 | 1 2" in table
    pooled = json.loads(out.read_text())
    assert pooled["test_seeds"] == [1, 2] and pooled["steps"] == 100 and "n" not in pooled
    l0 = pooled["levels"]["L0"]["render_and_compare"]
    # errors 1 2 3 4 12 40: five under 30 deg, four under 10, median (3 + 4) / 2
    assert l0["images"] == 6 and l0["acc_pi6"] == pytest.approx(5 / 6) and l0["acc_pi18"] == pytest.approx(4 / 6)
    assert l0["median_deg"] == pytest.approx(3.5)
    assert l0["acc_pi6_se"] == pytest.approx(math.sqrt(5 / 6 * 1 / 6 / 6))
    l2 = pooled["levels"]["L2"]["render_and_compare"]
    assert l2["images"] == 6 and l2["test_seeds"] == [1, 2] and l2["acc_pi6"] == pytest.approx(3 / 6)


def test_pools_the_regression_baseline_beside(tmp_path):
    pool = load_pool()
    a = run_json(tmp_path / "a.json", 1, {"L3": [10.0, 50.0]})
    b = run_json(tmp_path / "b.json", 2, {"L3": [20.0, 5.0]})
    runs = {str(path): pool.read_run(path) for path in (a, b)}
    runs[str(a)]["levels"]["L3"]["regression"] = {"errors_deg": [100.0, 2.0]}  # b has no baseline
    pooled = pool.pool(runs)["levels"]["L3"]
    assert pooled["render_and_compare"]["images"] == 4 and pooled["render_and_compare"]["acc_pi6"] == 0.75
    assert pooled["regression"]["images"] == 2 and pooled["regression"]["test_seeds"] == [1]
    assert pooled["regression"]["acc_pi6"] == 0.5 and "regression" in pool.table({"levels": {"L3": pooled}})


def test_a_run_without_a_seed_used_the_default(tmp_path):
    pool = load_pool()
    old = run_json(tmp_path / "old.json", None, {"L0": [1.0]})
    new = run_json(tmp_path / "new.json", pool.TEST_SEED, {"L0": [2.0]})
    with pytest.raises(pool.PoolError, match="count twice"):
        pool.pool({"old": pool.read_run(old), "new": pool.read_run(new)})


def test_a_run_without_backbone_size_or_stride_used_the_defaults(tmp_path):
    pool = load_pool()
    old = run_json(tmp_path / "old.json", 1, {"L0": [1.0]})
    same = run_json(tmp_path / "same.json", 2, {"L0": [2.0]}, backbone="small", image_size=128, output_stride=8,
                    mesh_kind="remesh", num_verts=400, zoom_out=1.0)
    assert pool.pool({"old": pool.read_run(old), "same": pool.read_run(same)})["levels"]["L0"]["render_and_compare"][
        "images"] == 2
    finer = run_json(tmp_path / "finer.json", 3, {"L0": [2.0]}, output_stride=4)
    with pytest.raises(pool.PoolError, match="differ in 'output_stride'"):
        pool.pool({"old": pool.read_run(old), "finer": pool.read_run(finer)})


@pytest.mark.parametrize("change, message", [
    ({"finetune_steps": 4000}, "differ in 'finetune_steps'"),
    ({"renderer": "raycast"}, "differ in 'renderer'"),
    ({"image_size": 192}, "differ in 'image_size'"),
    ({"mesh_kind": "cuboid"}, "differ in 'mesh_kind'"),
    ({"num_verts": 1000}, "differ in 'num_verts'"),
    ({"zoom_out": 2.0}, "differ in 'zoom_out'"),
    ({"fit": {"upsample": 1}}, "differ in 'fit'"),
    ({"fit_config": {"crop_ensemble": 0}}, "differ in 'fit_config'"),
    ({"test_seed": 1}, "L0 on test seed 1: its images would count twice"),
])
def test_refuses_runs_that_cannot_be_pooled(tmp_path, capsys, change, message):
    pool = load_pool()
    a = run_json(tmp_path / "a.json", 1, {"L0": [1.0]})
    b = run_json(tmp_path / "b.json", 2, {"L0": [2.0]}, **change)
    assert pool.main([str(a), str(b), "--json", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(a) in err and str(b) in err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it"),
    ("{not json", "not a JSON file"),
    ('{"steps": 3}', "no 'levels'"),
    ('{"levels": {"L0": {"render_and_compare": {"acc_pi6": 0.5}}}}', "no per-image errors"),
])
def test_bad_files_name_the_file(tmp_path, capsys, content, message):
    pool = load_pool()
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    assert pool.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pool_pose: {path}: ") and message in err
