"""Throughput of the synthetic data engine (datasets.synthetic): samples per second.

For each image size (128x128, 256x256) and occlusion setting (none; level 2, 40-60 %
hidden, 1-3 occluders), the default ``SyntheticConfig`` (all categories, 8 shapes each,
procedural backgrounds, photometric jitter, no extras) is timed

* in one process with one torch thread, and
* through a ``torch.utils.data.DataLoader`` with ``--workers`` worker processes (one torch
  thread each, as the DataLoader sets) collating batches of ``--batch`` samples, the way
  training reads it.

Every process first builds its shape pool and occluder sprites
(``SyntheticDataset.preload(sprites=True)``: the steady state of a long run) and renders a few
samples; then distinct, unseen indices are timed (caches of occluder sprites cannot help).

    .venv/bin/python benchmarks/bench_data.py [--n 200] [--workers 2] [--sizes 128 256] [--lighting full] [--room-probability P]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import torch

from datasets.synthetic import LIGHTINGS, SyntheticConfig, SyntheticDataset
from render.allocator import tune_cpu_allocator


class _Window(torch.utils.data.Sampler):
    """Yields ``range(start, start + n)``; change ``start`` between epochs."""

    def __init__(self, n: int):
        self.start, self.n = 0, n

    def __iter__(self):
        return iter(range(self.start, self.start + self.n))

    def __len__(self):
        return self.n


def _init_worker(_):
    info = torch.utils.data.get_worker_info()
    info.dataset.preload(sprites=True)


def rate_single(config: SyntheticConfig, n: int, warm: int) -> float:
    ds = SyntheticDataset(config, seed=0, length=10**9)
    ds.preload(sprites=True)
    for i in range(warm):
        ds[i]
    t0 = time.perf_counter()
    for i in range(warm, warm + n):
        ds[i]
    return n / (time.perf_counter() - t0)


def rate_loader(config: SyntheticConfig, n: int, warm: int, workers: int, batch: int) -> float:
    ds = SyntheticDataset(config, seed=0, length=10**9)
    sampler = _Window(warm)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, sampler=sampler, num_workers=workers, persistent_workers=True,
        worker_init_fn=_init_worker, prefetch_factor=2,
    )
    for _ in loader:  # workers start, preload and warm up
        pass
    sampler.start, sampler.n = warm, n
    t0 = time.perf_counter()
    for _ in loader:
        pass
    rate = n / (time.perf_counter() - t0)
    del loader
    return rate


def _spin(_=None) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(3_000_000):
        x += i
    return time.perf_counter() - t0


def available_cores(workers: int) -> float:
    """How many cores a busy loop gets now: ``workers`` loops in parallel vs one alone
    (on a shared VM other tenants may hold some)."""
    one = _spin()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_spin, range(workers))  # start-up
        t0 = time.perf_counter()
        pool.map(_spin, range(workers))
        many = time.perf_counter() - t0
    return workers * one / many


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="timed samples per case")
    p.add_argument("--warm", type=int, default=32, help="untimed samples first")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--batch", type=int, default=16, help="DataLoader batch size")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--lighting", choices=LIGHTINGS, default=SyntheticConfig.lighting,
                   help="SyntheticConfig.lighting of the renders ('full': highlights, shadows, gamma)")
    p.add_argument("--room-probability", type=float, default=SyntheticConfig.room_probability, metavar="P",
                   help="SyntheticConfig.room_probability of the renders (a 3D floor and wall)")
    args = p.parse_args()
    try:
        SyntheticConfig(room_probability=args.room_probability)
    except ValueError as error:
        p.error(str(error))
    tune_cpu_allocator()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, of which a busy-loop check gets "
          f"{available_cores(args.workers):.1f} now; {args.lighting} lighting; rooms in {args.room_probability:.0%}; samples/s (higher is better)")
    print(f"| image | occluders | 1 process, 1 thread | DataLoader, {args.workers} workers, batch {args.batch} |")
    print("| --- | --- | --- | --- |")
    for size in args.sizes:
        for occlusion, label in ((0, "none"), (2, "level 2 (40-60 %)")):
            config = SyntheticConfig(image_size=(size, size), occlusion=occlusion, lighting=args.lighting,
                                     room_probability=args.room_probability)
            single = rate_single(config, args.n, args.warm)
            multi = rate_loader(config, args.n, args.warm, args.workers, args.batch)
            print(f"| {size}x{size} | {label} | {single:.1f} | {multi:.1f} |", flush=True)


if __name__ == "__main__":
    main()
