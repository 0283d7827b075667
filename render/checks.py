"""Central input checks for public entry points.

Every message says what was expected and what was received, e.g.
``verts: expected shape (B, V, 3), got (10, 3)``. Functions raise ``ValueError``
(bad shapes, values) or ``TypeError`` (bad dtypes) so that command-line programs
can turn them into one-line errors.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

__all__ = [
    "check_shape", "check_floating", "check_finite", "check_image_size", "check_mesh", "check_intrinsics",
    "check_int_fields", "check_number_fields",
]


def check_shape(name: str, x: torch.Tensor, dims: Sequence[str | int]) -> dict[str, int]:
    """Check that ``x`` has one size per entry of ``dims``.

    ``dims`` holds ints (sizes that must match) or names (any size, but the same name
    must have the same size everywhere in ``dims``). Returns the sizes bound to names.

    >>> check_shape("K", torch.eye(3), [3, 3])
    {}
    >>> check_shape("verts", torch.zeros(2, 5, 3), ["B", "V", 3])
    {'B': 2, 'V': 5}
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    expected = "(" + ", ".join(str(d) for d in dims) + ")"
    if x.dim() != len(dims):
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(x.shape)}")
    bound: dict[str, int] = {}
    for d, s in zip(dims, x.shape):
        if isinstance(d, int):
            if s != d:
                raise ValueError(f"{name}: expected shape {expected}, got {tuple(x.shape)}")
        else:
            if d in bound and bound[d] != s:
                raise ValueError(f"{name}: expected shape {expected}, got {tuple(x.shape)}")
            bound[d] = s
    return bound


def check_floating(name: str, x: torch.Tensor) -> None:
    """Raise ``TypeError`` unless ``x`` is float32 or float64."""
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name}: expected dtype float32 or float64, got {x.dtype}")


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entries")


def check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """Return ``(H, W)`` as ints after checking both are positive."""
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size: expected (H, W), got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size: expected positive (H, W), got {(h, w)}")
    return h, w


def check_mesh(name: str, verts: torch.Tensor, faces: torch.Tensor) -> int:
    """Check batched ``verts (B, V, 3)`` (float, finite) and ``faces (F, 3)`` int64.

    ``faces`` must be non-empty, on ``verts``' device, with indices in ``[0, V)``.
    Returns ``B``.
    """
    check_floating(name, verts)
    b = check_shape(name, verts, ["B", "V", 3])["B"]
    check_finite(name, verts)
    if not isinstance(faces, torch.Tensor):
        raise TypeError(f"faces: expected a torch.Tensor, got {type(faces).__name__}")
    if faces.dtype != torch.int64:
        raise TypeError(f"faces: expected dtype torch.int64, got {faces.dtype}")
    check_shape("faces", faces, ["F", 3])
    if faces.shape[0] == 0:
        raise ValueError("faces: expected at least one face, got an empty mesh (F = 0)")
    if faces.device != verts.device:
        raise ValueError(f"faces: expected device {verts.device}, got {faces.device}")
    if int(faces.min()) < 0 or int(faces.max()) >= verts.shape[1]:
        raise ValueError(
            f"faces: indices must lie in [0, {verts.shape[1] - 1}], "
            f"got range [{int(faces.min())}, {int(faces.max())}]"
        )
    return b


def check_intrinsics(K: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Check ``K (3, 3)`` or ``(batch, 3, 3)`` pinhole intrinsics; return ``(batch, 3, 3)``.

    ``K`` must be ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` with ``fx, fy > 0``; it is
    moved to the device and dtype of ``like``.
    """
    if not isinstance(K, torch.Tensor):
        raise TypeError(f"K: expected a torch.Tensor, got {type(K).__name__}")
    if K.dim() == 2:
        check_shape("K", K, [3, 3])
        K = K.expand(batch, 3, 3)
    else:
        check_shape("K", K, [batch, 3, 3])
    check_finite("K", K)
    K = K.to(device=like.device, dtype=like.dtype)
    last = torch.tensor([0.0, 0.0, 1.0], dtype=K.dtype, device=K.device)
    if not torch.equal(K[:, 2], last.expand(batch, 3)) or bool((K[:, 1, 0] != 0).any()):
        raise ValueError("K: expected upper-triangular intrinsics [[fx, s, cx], [0, fy, cy], [0, 0, 1]]")
    if bool((K[:, 0, 0] <= 0).any()) or bool((K[:, 1, 1] <= 0).any()):
        raise ValueError("K: expected positive focal lengths fx, fy")
    return K


def check_int_fields(owner: str, config: Any, lows: Iterable[tuple[str, int]]) -> None:
    """Check each field ``name`` of a config object is an int (not a bool) ``>= low``.

    ``owner`` names the config in the message, e.g.
    ``TrainConfig.steps: expected an int >= 0, got -1``.
    """
    for name, low in lows:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{owner}.{name}: expected an int >= {low}, got {value!r}")


def check_number_fields(owner: str, config: Any, rules: Mapping[str, tuple[Callable[[float], bool], str]]) -> None:
    """Check each field ``name`` of a frozen dataclass is a finite number (not a bool)
    with ``ok(value)``, given as ``rules[name] = (ok, words)`` with ``words`` saying what
    ``ok`` wants (``"> 0"``); store it back as a float."""
    for name, (ok, words) in rules.items():
        value = getattr(config, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and ok(value)):
            raise ValueError(f"{owner}.{name}: expected a number {words}, got {value!r}")
        object.__setattr__(config, name, float(value))
