"""Train a NeMo backbone and neural mesh(es) on synthetic renders.

Usage::

    python demos/train_nemo.py --mesh demos/data/chair.obj --out runs/chair
        [--steps 2000] [--batch-size 8] [--image-size 128] [--backbone small]
        [--lr 1e-3] [--num-verts 1000] [--seed 0] [--checkpoint-every 100]
        [--workers N] [--threads T] [--paper] [--device cpu|cuda] [--no-progress]
    python demos/train_nemo.py --categories car chair --out runs/cats ...
    python demos/train_nemo.py --resume --out runs/chair [--steps 4000]
    torchrun --nproc_per_node 2 demos/train_nemo.py --mesh m.obj --out runs/m ...

``--mesh`` trains one neural mesh (a cuboid around the mesh) on renders of that mesh;
``--categories`` one cuboid per procedural category (:mod:`datasets.shapes`). The run
directory gets ``run.json`` and checkpoints (``neural_mesh.training``, "Run directory");
``neural_mesh.training.load_checkpoint(DIR)`` reads the trained backbone and meshes back.
``--resume`` continues the run in ``--out`` exactly where its last checkpoint left it;
options not given are taken from its ``run.json``, options given must match it (only
``--steps`` and ``--checkpoint-every`` may change). ``--paper`` starts from NeMo's
published settings (ResNet-50, lr 1e-4, ...) instead of the CPU defaults. Ctrl-C once
finishes the current step, writes a checkpoint and exits (resume later); twice aborts.
Under ``torchrun`` every process takes its share of each batch (gloo on CPU, nccl on
CUDA); only rank 0 writes and prints (errors included).

Bad input (a missing or unreadable mesh, bad numbers, unknown categories, ``--resume``
with a mismatched config or a corrupt checkpoint) gives a one-line error and exit code 2,
before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Sequence

import torch
import torch.distributed

from neural_mesh.backbones import PRESETS
from neural_mesh.training import (
    TrainConfig,
    default_workers,
    init_distributed,
    load_run_config,
    synthetic_data,
    train,
)
from render.allocator import tune_cpu_allocator
from render.cli import Parser, positive_float, positive_int

PROG = "train_nemo"


def _image_size(text: str) -> int:
    value = positive_int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"expected a side of at least 16 pixels, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Train NeMo's backbone and neural mesh(es) on synthetic renders.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--mesh", help="mesh file (OBJ, PLY, OFF, STL, GLB), +y up, front +z")
    src.add_argument("--categories", nargs="+", metavar="NAME", help="procedural shape categories")
    p.add_argument("--out", required=True, help="run directory (checkpoints, run.json)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--steps", type=positive_int, help="total optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=positive_int, help="global batch size (default 8)")
    p.add_argument("--image-size", type=_image_size, help="square image side in pixels (default 128)")
    p.add_argument("--backbone", choices=sorted(PRESETS), help="backbone preset (default small)")
    p.add_argument("--lr", type=positive_float, help="Adam learning rate (default 1e-3; --paper 1e-4)")
    p.add_argument("--num-verts", type=positive_int, help="neural-mesh vertex target (default 1000)")
    p.add_argument("--seed", type=int, help="seed of weights, banks, data and sampling (default 0)")
    p.add_argument("--checkpoint-every", type=positive_int, help="steps between checkpoints (default 100)")
    p.add_argument("--paper", action="store_true", help="start from NeMo's published settings")
    p.add_argument("--workers", type=int, help="data-loading processes (default: one on a CPU with 2+ cores, "
                   "the cores but one on a GPU; 0 under torchrun)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The run's config from the arguments (and, with ``--resume``, the saved ``run.json``)."""
    if args.resume:
        base = load_run_config(args.out)
        syn = base.data.get("config", {})
        size = syn.get("image_size", [128, 128])[0]
        if args.image_size is not None:
            size = args.image_size
        seed = base.data.get("seed", base.seed)
        if args.mesh is not None or args.categories is not None or args.image_size is not None or args.seed is not None:
            data = _data(args, size, args.seed if args.seed is not None else seed, base)
        else:
            data = base.data
    else:
        if args.mesh is None and args.categories is None:
            raise ValueError("expected --mesh or --categories (or --resume)")
        data = _data(args, args.image_size or 128, args.seed or 0, None)
        base = TrainConfig.paper(data) if args.paper else TrainConfig(data=data)
    changes = {"data": data}
    for arg, name in (("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"),
                      ("num_verts", "num_verts"), ("seed", "seed"), ("checkpoint_every", "checkpoint_every")):
        value = getattr(args, arg)
        if value is not None:
            changes[name] = value
    if args.backbone is not None:
        changes["backbone"] = PRESETS[args.backbone]
    return dataclasses.replace(base, **changes)


def _data(args: argparse.Namespace, size: int, seed: int, base: TrainConfig | None) -> dict:
    mesh, categories = args.mesh, args.categories
    if mesh is None and categories is None and base is not None:
        mesh = base.data.get("mesh")
        categories = None if mesh else base.data.get("names")
    return synthetic_data((size, size), mesh=mesh, categories=categories, seed=seed)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.workers is not None and args.workers < 0:
        print(f"{PROG}: error: --workers: expected >= 0, got {args.workers}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    rank = 0
    try:
        rank, world, device = init_distributed(args.device)
        config = build_config(args)
    except ValueError as e:  # MeshError and CheckpointError are ValueErrors
        if rank == 0:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2

    interrupted = {"count": 0}

    def on_sigint(signum, frame):
        interrupted["count"] += 1
        if interrupted["count"] > 1:
            raise KeyboardInterrupt
        if rank == 0:
            print(f"\n{PROG}: stopping after this step (Ctrl-C again to abort)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        workers = default_workers(device) if args.workers is None else args.workers
        result = train(config, args.out, device=device, resume=args.resume, workers=workers,
                       progress=not args.no_progress, should_stop=lambda: interrupted["count"] > 0)
    except ValueError as e:
        if rank == 0:  # every rank meets the same error; one line is enough
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: aborted; resume from the last checkpoint with --resume --out {args.out}",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
        if world > 1:
            torch.distributed.destroy_process_group()
    if rank == 0:
        loss = f", loss {result.losses[-1]:.4f}" if result.losses else ""
        state = "stopped at" if result.stopped else "trained to"
        where = result.checkpoint if result.checkpoint is not None else args.out
        print(f"{PROG}: {state} step {result.step}{loss}, {result.seconds_per_step:.2f} s/step "
              f"on {world} process(es)")
        print(f"model: {where}")
    return 0


if __name__ == "__main__":
    tune_cpu_allocator()
    torch.set_flush_denormal(True)  # before torch starts its threads (neural_mesh.training.flush_denormals)
    sys.exit(main())
