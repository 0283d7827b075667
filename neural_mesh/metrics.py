"""Pose-estimation metrics: rotation error, Acc@pi/6, Acc@pi/18, median error, tables.

The rotation error is the geodesic angle ``arccos((trace(R1^T R2) - 1) / 2)``
(``render.geodesic_distance``, ``docs/conventions.md``). ``pose_metrics`` reports, per
category and pooled over all samples:

* ``acc_pi6``: fraction of samples with error ``< pi / 6`` (30 degrees), in [0, 1];
* ``acc_pi18``: fraction with error ``< pi / 18`` (10 degrees);
* ``median_deg``: median error in degrees (the mean of the two middle values for an even
  count, as ``numpy.median``);
* ``mean_deg``: mean error in degrees;
* ``n``: number of samples;

and ``mean_over_categories``: each metric averaged over categories with equal weight (what
most papers' "mean" column reports), plus ``n_categories``.

Example::

    >>> import math, torch
    >>> from render import rotation_z
    >>> R_gt = torch.eye(3).expand(4, 3, 3)
    >>> R_pred = rotation_z(torch.tensor([5.0, 15.0, 45.0, 90.0]) * math.pi / 180)
    >>> m = pose_metrics(R_pred, R_gt, ["car", "car", "chair", "chair"])
    >>> m["pooled"]["acc_pi6"], m["pooled"]["acc_pi18"], round(m["pooled"]["median_deg"], 3)
    (0.5, 0.25, 30.0)
    >>> m["per_category"]["car"]["acc_pi6"], round(m["mean_over_categories"]["median_deg"], 3)
    (1.0, 38.75)
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from render import geodesic_distance
from render.checks import check_floating, check_shape

__all__ = ["METRIC_NAMES", "rotation_error", "pose_metrics", "format_metrics_table"]

#: The metrics of ``pose_metrics``, in table order (plus ``n``).
METRIC_NAMES = ("acc_pi6", "acc_pi18", "median_deg", "mean_deg")

_ALL = "all"


def rotation_error(R_pred: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    """Geodesic rotation error in radians, in ``[0, pi]``.

    Args:
        R_pred, R_gt: ``(..., 3, 3)`` rotation matrices, broadcast together.

    Returns:
        ``(...)`` angles of ``R_pred^T R_gt``; symmetric in its arguments.

    >>> from render import rotation_z
    >>> round(float(rotation_error(rotation_z(0.3), torch.eye(3))), 6)
    0.3
    """
    for name, R in (("R_pred", R_pred), ("R_gt", R_gt)):
        if not isinstance(R, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(R).__name__}")
        if R.dim() < 2 or tuple(R.shape[-2:]) != (3, 3):
            raise ValueError(f"{name}: expected shape (..., 3, 3), got {tuple(R.shape)}")
    return geodesic_distance(R_pred, R_gt)


def _summary(err_rad: torch.Tensor) -> dict[str, float | int]:
    """Metrics of a non-empty 1-D tensor of errors (radians, float64)."""
    deg = torch.rad2deg(err_rad)
    s = torch.sort(deg).values
    n = s.numel()
    median = 0.5 * (s[(n - 1) // 2] + s[n // 2])
    return {
        "acc_pi6": float((err_rad < math.pi / 6).double().mean()),
        "acc_pi18": float((err_rad < math.pi / 18).double().mean()),
        "median_deg": float(median),
        "mean_deg": float(deg.mean()),
        "n": int(n),
    }


def pose_metrics(
    R_pred: torch.Tensor,
    R_gt: torch.Tensor,
    categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Rotation accuracy per category, pooled, and averaged over categories.

    Args:
        R_pred: ``(N, 3, 3)`` predicted rotations (``R_cam_obj``), ``N >= 1``.
        R_gt: ``(N, 3, 3)`` ground-truth rotations.
        categories: ``N`` category names, or ``None``: then all samples form one category
            named ``"all"``.

    Returns:
        ``{"pooled": {...}, "per_category": {name: {...}}, "mean_over_categories": {...}}``
        where each ``{...}`` holds ``acc_pi6``, ``acc_pi18`` (fractions in [0, 1]),
        ``median_deg``, ``mean_deg`` (floats) and ``n`` (int);
        ``mean_over_categories`` holds the unweighted mean of each metric over the
        categories and ``n_categories``. Categories appear sorted by name. Errors are
        computed in float64.

    Raises:
        ValueError: empty input, shapes other than ``(N, 3, 3)``, ``N`` that differ, or
            ``len(categories) != N``.
        TypeError: non-float rotations or non-string categories.
    """
    n = check_shape("R_pred", R_pred, ["N", 3, 3])["N"]
    check_shape("R_gt", R_gt, [n, 3, 3])
    check_floating("R_pred", R_pred)
    check_floating("R_gt", R_gt)
    if n == 0:
        raise ValueError("R_pred: expected at least one rotation, got N = 0")
    if categories is None:
        categories = [_ALL] * n
    elif isinstance(categories, str):
        raise TypeError("categories: expected a sequence of str, got a single str")
    categories = list(categories)
    if len(categories) != n:
        raise ValueError(
            f"categories: expected {n} names (one per rotation), got {len(categories)}"
        )
    for c in categories:
        if not isinstance(c, str):
            raise TypeError(f"categories: expected str entries, got {type(c).__name__} {c!r}")

    err = rotation_error(R_pred.double(), R_gt.to(R_pred.device).double()).cpu()
    per_category = {}
    for name in sorted(set(categories)):
        idx = torch.tensor([i for i, c in enumerate(categories) if c == name])
        per_category[name] = _summary(err[idx])
    mean_over = {
        key: sum(m[key] for m in per_category.values()) / len(per_category) for key in METRIC_NAMES
    }
    mean_over["n_categories"] = len(per_category)
    return {
        "pooled": _summary(err),
        "per_category": per_category,
        "mean_over_categories": mean_over,
    }


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of ``pose_metrics``' result (accuracies in percent).

    One row per category, then ``mean (categories)`` (its ``n`` counts categories) and
    ``pooled``.

    >>> import torch
    >>> print(format_metrics_table(pose_metrics(torch.eye(3)[None], torch.eye(3)[None], ["car"])))
    category              n  Acc@pi/6  Acc@pi/18  Median(deg)  Mean(deg)
    car                   1     100.0      100.0         0.00       0.00
    mean (categories)     1     100.0      100.0         0.00       0.00
    pooled                1     100.0      100.0         0.00       0.00
    """
    for key in ("pooled", "per_category", "mean_over_categories"):
        if key not in metrics:
            raise ValueError(f"metrics: expected the output of pose_metrics, missing key {key!r}")
    rows = [(name, m) for name, m in metrics["per_category"].items()]
    mean = dict(metrics["mean_over_categories"])
    mean["n"] = mean.get("n_categories", len(rows))
    rows += [("mean (categories)", mean), ("pooled", metrics["pooled"])]
    width = max(17, *(len(name) for name, _ in rows))
    header = f"{'category':<{width}} {'n':>5}  Acc@pi/6  Acc@pi/18  Median(deg)  Mean(deg)"
    lines = [header]
    for name, m in rows:
        lines.append(
            f"{name:<{width}} {m['n']:>5}  {100 * m['acc_pi6']:>8.1f}  {100 * m['acc_pi18']:>9.1f}"
            f"  {m['median_deg']:>11.2f}  {m['mean_deg']:>9.2f}"
        )
    return "\n".join(lines)
