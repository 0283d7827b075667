"""Checkpoints that are written atomically, checksummed and read back without unpickling.

The generic half of the trainers' checkpoints (:func:`neural_mesh.training.save_checkpoint`
for the NeMo features, :func:`neural_mesh.regression.train_regressor` for the regression
baseline); each trainer decides which files a checkpoint holds. A run directory::

    latest.json                    {"step": s, "checkpoint": "checkpoints/step_00000100"}
    checkpoints/step_00000100/
        trainer.json               "format", "format_version", "step", the trainer's own
                                   entries and the SHA-256 of every file ("files")
        ...                        the trainer's files (safetensors, JSON)

:func:`write_checkpoint` assembles a checkpoint in a temporary directory, renames it into
place, then replaces ``latest.json`` atomically and removes all but the last ``keep``
checkpoints, so an interruption at any moment leaves the previous checkpoint usable.
:func:`read_checkpoint` follows ``latest.json`` (or takes a checkpoint directory), checks
the format and every file's checksum, and raises :class:`CheckpointError` with one line
naming the file and the problem. Optimizer state travels as safetensors
(:func:`optimizer_tensors` / :func:`optimizer_state`) plus JSON ``param_groups``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .neural_mesh import file_sha256

__all__ = [
    "LATEST_FILE",
    "TRAINER_FILE",
    "OPTIMIZER_FILE",
    "CheckpointError",
    "write_checkpoint",
    "read_checkpoint",
    "read_tensors",
    "optimizer_tensors",
    "optimizer_state",
    "read_json",
    "write_json_atomic",
]

LATEST_FILE = "latest.json"
TRAINER_FILE = "trainer.json"
OPTIMIZER_FILE = "optimizer.safetensors"


class CheckpointError(ValueError):
    """A run directory or checkpoint that cannot be used (missing or corrupt files, a
    config that does not match); the message names the file and the problem."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` through a temporary file and a rename,
    so a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """An optimizer ``state_dict`` as tensors named ``state.<param>.<key>`` (CPU; numbers
    become 0-d tensors) and its JSON-friendly ``param_groups``; :func:`optimizer_state`
    inverts it."""
    tensors = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"state.{idx}.{key}"] = value.detach().to("cpu").contiguous()
    return tensors, json.loads(json.dumps(state["param_groups"]))


def write_checkpoint(
    out_dir: str | os.PathLike,
    step: int,
    keep: int,
    write: Callable[[Path], None],
    trainer: Mapping[str, Any],
) -> Path:
    """Write ``out_dir/checkpoints/step_<step>`` atomically and point ``latest.json`` at
    it; older checkpoints beyond the last ``keep`` are removed (module docstring).

    ``write(work)`` writes the checkpoint's files into a temporary directory, then
    ``trainer.json`` is written there with ``trainer``'s entries (``"format"`` and
    ``"format_version"`` among them), ``"step"`` and the SHA-256 of every file
    (``"files"``), which :func:`read_checkpoint` checks.

    Returns:
        The checkpoint directory.
    """
    out_dir = Path(out_dir)
    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    work = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        write(work)
        files = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
        info = {**trainer, "step": int(step), "files": {f: file_sha256(work / f) for f in files}}
        (work / TRAINER_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
            os.rename(final, trash / name)
            os.rename(work, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(work, final)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    write_json_atomic(out_dir / LATEST_FILE, {"step": int(step), "checkpoint": f"checkpoints/{name}"})
    done = sorted(p for p in root.iterdir() if re.fullmatch(r"step_\d{8}", p.name))
    for old in done[: max(0, len(done) - keep)]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_json(path: Path, what: str) -> Any:
    """``path``'s JSON; :class:`CheckpointError` naming the file if it is missing (``what``
    says what it should have held) or not valid JSON."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        text = " ".join(str(error).split())[:160]
        raise CheckpointError(f"{path}: not valid JSON ({text})") from None


def _resolve_checkpoint(path: Path) -> Path:
    if (path / TRAINER_FILE).is_file():
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        info = read_json(latest, "pointer to the latest checkpoint")
        if not isinstance(info, dict) or not isinstance(info.get("checkpoint"), str):
            raise CheckpointError(f"{latest}: expected {{\"checkpoint\": \"checkpoints/step_...\"}}")
        target = path / info["checkpoint"]
        if not (target / TRAINER_FILE).is_file():
            raise CheckpointError(f"{latest}: points to {target}, which is not a checkpoint")
        return target
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint directory")
    raise CheckpointError(f"{path}: not a checkpoint (no {TRAINER_FILE} or {LATEST_FILE})")


def read_checkpoint(path: str | os.PathLike, fmt: str, version: int) -> tuple[Path, dict[str, Any]]:
    """Find a checkpoint written by :func:`write_checkpoint` and check it: ``path`` is a
    run directory (its ``latest.json`` is followed) or a ``checkpoints/step_*`` directory;
    ``trainer.json`` must have ``"format": fmt`` and ``"format_version": version``, and
    every file it lists must be there with its SHA-256.

    Returns:
        The checkpoint directory and its ``trainer.json``.

    Raises:
        CheckpointError: one line naming the file and the problem.
    """
    ckpt = _resolve_checkpoint(Path(path))
    trainer_path = ckpt / TRAINER_FILE
    info = read_json(trainer_path, "checkpoint metadata")
    if not isinstance(info, dict) or info.get("format") != fmt:
        raise CheckpointError(f"{trainer_path}: not a {fmt!r} checkpoint")
    if info.get("format_version") != version:
        raise CheckpointError(f"{trainer_path}: unsupported format_version {info.get('format_version')!r}")
    files = info.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{trainer_path}: malformed (no \"files\" table)")
    for rel, sha in files.items():
        p = ckpt / rel
        if not p.is_file():
            raise CheckpointError(f"{p}: missing (listed in {TRAINER_FILE})")
        if file_sha256(p) != sha:
            raise CheckpointError(f"{p}: checksum does not match {TRAINER_FILE} (corrupt or from another save)")
    return ckpt, info


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors on the CPU (:class:`CheckpointError` naming the file
    if it cannot be read)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        text = " ".join(str(error).split())[:160]
        raise CheckpointError(f"{path}: cannot read safetensors ({text})") from None


def optimizer_state(path: Path, param_groups: Any) -> dict[str, Any]:
    """An optimizer ``state_dict`` from the tensors of :func:`optimizer_tensors` saved to
    ``path`` (``state.<param>.<key>``) and the ``param_groups`` kept in ``trainer.json``."""
    state: dict[str, Any] = {"state": {}, "param_groups": param_groups}
    for key, value in read_tensors(path).items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise CheckpointError(f"{path}: unexpected tensor {key!r}")
        state["state"].setdefault(int(parts[1]), {})[parts[2]] = value
    return state
