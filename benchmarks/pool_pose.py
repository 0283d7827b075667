"""Pool ``bench_pose.py`` results of one build measured on several test sets.

At 120 images per level one standard error of Acc@pi/6 near 70% is about 4 points, as
much as most changes of a build move it: choosing builds on one test set is choosing on
its noise. ``bench_pose.py --test-seed S`` draws other test sets; this script pools the
per-image errors that each run's ``--json`` keeps (the same build, fit and renderer,
different seeds) and prints Acc@pi/6 with its standard error, Acc@pi/18 and the median
per level and method over all their images::

    .venv/bin/python benchmarks/bench_pose.py [build flags] --test-seed 1 --json s1.json
    .venv/bin/python benchmarks/bench_pose.py [build flags] --test-seed 2 --json s2.json
    .venv/bin/python benchmarks/pool_pose.py s1.json s2.json [--json pooled.json]

Runs may measure different levels (a level's pool is the runs that have it). Runs whose
build, fit or test images' renderer differ, or two with the same level on the same seed
(its images would count twice), are refused (exit 2), naming the files and the setting.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pose import TEST_SEED, summary  # noqa: E402
from neural_mesh.build import BuildConfig  # noqa: E402

#: run settings that may differ between the pooled runs: everything else must agree
PER_RUN = ("n", "test_seed", "device", "levels")
METHODS = ("render_and_compare", "regression")


class PoolError(ValueError):
    """Runs that cannot be pooled; the message names the file(s) and the problem."""


def read_run(path: Path) -> dict:
    """One ``bench_pose.py --json`` file (a run without ``test_seed``, ``zoom_out``, ``scene``,
    ``backbone``, ``image_size``, ``output_stride``, ``mesh_kind`` or ``num_verts`` used
    the default)."""
    try:
        run = json.loads(Path(path).read_text())
    except OSError as error:
        raise PoolError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PoolError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(run, dict) or not isinstance(run.get("levels"), dict):
        raise PoolError(f"{path}: not a bench_pose.py --json result (no 'levels')")
    for level, res in run["levels"].items():
        for method in METHODS:
            if method in res and not isinstance(res[method].get("errors_deg"), list):
                raise PoolError(f"{path}: {level} {method} keeps no per-image errors "
                                "('errors_deg'; written by an older bench_pose.py)")
    run.setdefault("test_seed", TEST_SEED)
    run.setdefault("zoom_out", 1.0)
    run.setdefault("scene", {})
    # recorded since these became flags
    for key in ("backbone", "image_size", "output_stride", "mesh_kind", "num_verts"):
        run.setdefault(key, getattr(BuildConfig, key))
    return run


def pool(runs: dict[str, dict]) -> dict:
    """Pool runs (``{name: run}``) of one build on different seeds: per level and method,
    the :func:`bench_pose.summary` of all their images' errors, with ``images``,
    ``test_seeds`` and ``acc_pi6_se`` (the binomial standard error of Acc@pi/6)."""
    if not runs:
        raise PoolError("no runs to pool")
    names = list(runs)
    first = runs[names[0]]
    seen: dict[tuple[int, str], str] = {}
    for name, run in runs.items():
        for key in sorted(set(first) | set(run)):
            if key not in PER_RUN and first.get(key) != run.get(key):
                raise PoolError(f"{names[0]} and {name} differ in {key!r} ({first.get(key)!r} vs "
                                f"{run.get(key)!r}): pool runs of one build, fit and renderer only")
        for level in run["levels"]:
            if (run["test_seed"], level) in seen:
                raise PoolError(f"{seen[run['test_seed'], level]} and {name} both have {level} on test seed "
                                f"{run['test_seed']}: its images would count twice")
            seen[run["test_seed"], level] = name
    pooled = {k: v for k, v in first.items() if k not in PER_RUN}
    pooled.update(runs=names, test_seeds=sorted({seed for seed, _ in seen}), levels={})
    levels = sorted({level for run in runs.values() for level in run["levels"]})
    for level in levels:
        out = {}
        for method in METHODS:
            have = [run for run in runs.values() if method in run["levels"].get(level, {})]
            if not have:
                continue
            errors = [e for run in have for e in run["levels"][level][method]["errors_deg"]]
            m = summary(torch.tensor(errors, dtype=torch.float64))
            p = m["acc_pi6"]
            m.update(images=len(errors), test_seeds=[run["test_seed"] for run in have],
                     acc_pi6_se=math.sqrt(p * (1 - p) / len(errors)))
            out[method] = m
        pooled["levels"][level] = out
    return pooled


def table(pooled: dict) -> str:
    """The pooled results as a markdown table."""
    lines = ["| level | method             | images | test seeds        | Acc@pi/6 | +- 1 SE | Acc@pi/18 | MedErr |",
             "|-------|--------------------|-------:|-------------------|---------:|--------:|----------:|-------:|"]
    for level, res in pooled["levels"].items():
        for method, m in res.items():
            seeds = " ".join(str(s) for s in m["test_seeds"])
            lines.append(f"| {level:5s} | {method:18s} | {m['images']:6d} | {seeds:17s} | {m['acc_pi6']:8.1%} | "
                         f"{m['acc_pi6_se']:7.1%} | {m['acc_pi18']:9.1%} | {m['median_deg']:6.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Pool bench_pose.py --json results of one build on several test "
                                            "seeds: accuracy with its standard error over all their images.")
    p.add_argument("runs", nargs="+", metavar="RESULT.json", help="bench_pose.py --json files")
    p.add_argument("--json", help="also write the pooled results here")
    args = p.parse_args(argv)
    try:
        pooled = pool({name: read_run(Path(name)) for name in args.runs})
    except PoolError as error:
        print(f"pool_pose: {error}", file=sys.stderr)
        return 2
    drawn = "renders" if pooled.get("renderer", "engine") == "engine" else "ray-cast images"
    print(f"Pooled over {len(pooled['runs'])} test sets of held-out {drawn} of {pooled.get('mesh', '?')} "
          f"({pooled.get('steps', '?')} training steps)\n")
    print(table(pooled))
    if args.json:
        Path(args.json).write_text(json.dumps(pooled, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
