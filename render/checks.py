"""Central input checks for public entry points.

Every message says what was expected and what was received, e.g.
``verts: expected shape (B, V, 3), got (10, 3)``. Functions raise ``ValueError``
(bad shapes, values) or ``TypeError`` (bad dtypes) so that command-line programs
can turn them into one-line errors.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["check_shape", "check_floating", "check_finite", "check_image_size"]


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
