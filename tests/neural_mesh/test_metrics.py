"""Tests for neural_mesh/metrics.py: known errors, per-category split, symmetry, errors."""

from __future__ import annotations

import math

import pytest
import torch

from neural_mesh.metrics import METRIC_NAMES, format_metrics_table, pose_metrics, rotation_error
from render import angles_to_pose, rotation_z
from tests.helpers import assert_close


def _random_rotations(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen, dtype=torch.float64))
    return q * torch.det(q)[:, None, None]  # det +1


def _about_axis(axis: torch.Tensor, deg: torch.Tensor) -> torch.Tensor:
    """Rotations by ``deg`` (N,) degrees about the unit ``axis`` (3,), Rodrigues."""
    a = torch.deg2rad(deg.double())[:, None, None]
    k = axis.double() / axis.double().norm()
    Kx = torch.tensor(
        [[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64
    )
    return torch.eye(3, dtype=torch.float64) + torch.sin(a) * Kx + (1 - torch.cos(a)) * (Kx @ Kx)


def test_rotation_error_known_angles_any_axis():
    R_gt = _random_rotations(4, 0)
    deg = torch.tensor([5.0, 15.0, 45.0, 179.0])
    R_pred = R_gt @ _about_axis(torch.tensor([1.0, -2.0, 0.5]), deg)
    assert_close(torch.rad2deg(rotation_error(R_pred, R_gt)), deg.double(), atol=1e-9, rtol=0)
    assert_close(rotation_error(R_gt, R_pred), rotation_error(R_pred, R_gt))  # symmetry
    assert rotation_error(torch.eye(3), torch.eye(3)).shape == ()
    assert rotation_error(R_pred[:, None], R_gt[None]).shape == (4, 4)  # broadcast


def test_pose_metrics_known_errors():
    deg = torch.tensor([5.0, 15.0, 45.0])
    R_gt = _random_rotations(3, 1)
    R_pred = R_gt @ _about_axis(torch.tensor([0.0, 1.0, 0.0]), deg)
    m = pose_metrics(R_pred, R_gt)
    pooled = m["pooled"]
    assert pooled["n"] == 3
    assert pooled["acc_pi6"] == pytest.approx(2 / 3)
    assert pooled["acc_pi18"] == pytest.approx(1 / 3)
    assert pooled["median_deg"] == pytest.approx(15.0, abs=1e-9)
    assert pooled["mean_deg"] == pytest.approx(65 / 3, abs=1e-9)
    assert list(m["per_category"]) == ["all"]
    assert m["per_category"]["all"] == pooled
    assert m["mean_over_categories"]["n_categories"] == 1
    for key in METRIC_NAMES:
        assert m["mean_over_categories"][key] == pytest.approx(pooled[key])


def test_thresholds_are_strict_and_even_median_averages():
    # just below / above the thresholds; 30 and 10 degrees themselves do not count
    deg = torch.tensor([9.999, 10.001, 29.999, 30.001], dtype=torch.float64)
    R = _about_axis(torch.tensor([0.0, 0.0, 1.0]), deg)
    m = pose_metrics(R, torch.eye(3, dtype=torch.float64).expand(4, 3, 3))["pooled"]
    assert m["acc_pi18"] == 0.25 and m["acc_pi6"] == 0.75
    assert m["median_deg"] == pytest.approx((10.001 + 29.999) / 2, abs=1e-9)


def test_per_category_split_and_mean_over_categories():
    deg = torch.tensor([5.0, 15.0, 45.0, 2.0, 100.0, 20.0])
    cats = ["car", "car", "car", "chair", "chair", "boat"]
    R_gt = _random_rotations(6, 2)
    R_pred = R_gt @ _about_axis(torch.tensor([1.0, 1.0, 1.0]), deg)
    m = pose_metrics(R_pred.float(), R_gt.float(), cats)
    assert list(m["per_category"]) == ["boat", "car", "chair"]
    car, chair, boat = (m["per_category"][c] for c in ("car", "chair", "boat"))
    assert (car["n"], chair["n"], boat["n"]) == (3, 2, 1)
    assert car["acc_pi6"] == pytest.approx(2 / 3) and car["acc_pi18"] == pytest.approx(1 / 3)
    assert car["median_deg"] == pytest.approx(15.0, abs=1e-3)
    assert chair["acc_pi6"] == 0.5 and chair["acc_pi18"] == 0.5
    assert chair["median_deg"] == pytest.approx(51.0, abs=1e-3)
    assert boat["acc_pi6"] == 1.0 and boat["acc_pi18"] == 0.0
    mean = m["mean_over_categories"]
    assert mean["n_categories"] == 3
    assert mean["acc_pi6"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert mean["median_deg"] == pytest.approx((15.0 + 51.0 + 20.0) / 3, abs=1e-3)
    pooled = m["pooled"]
    assert pooled["n"] == 6 and pooled["acc_pi6"] == pytest.approx(4 / 6)
    assert pooled["median_deg"] == pytest.approx(17.5, abs=1e-3)
    assert pooled["mean_deg"] == pytest.approx(float(deg.mean()), abs=1e-3)


def test_symmetric_in_prediction_and_ground_truth():
    A = _random_rotations(7, 3)
    deg = torch.tensor([3.0, 12.0, 25.0, 35.0, 8.0, 90.0, 170.0], dtype=torch.float64)
    B = A @ _about_axis(torch.tensor([0.3, -1.0, 2.0]), deg)
    cats = list("aabbbcc")
    mab, mba = pose_metrics(A, B, cats), pose_metrics(B, A, cats)
    assert mab["pooled"]["acc_pi6"] == pytest.approx(4 / 7)
    pairs = [(mab["pooled"], mba["pooled"])]
    pairs += [(mab["mean_over_categories"], mba["mean_over_categories"])]
    pairs += [(mab["per_category"][c], mba["per_category"][c]) for c in "abc"]
    for ab, ba in pairs:
        for key in METRIC_NAMES:
            assert ab[key] == pytest.approx(ba[key], abs=1e-9)


def test_pose_convention_rotations():
    # azimuth differences between poses are rotation errors of the same size
    R1, _ = angles_to_pose(0.3, 0.2, 0.0, 5.0)
    R2, _ = angles_to_pose(0.3, 0.2, math.radians(20.0), 5.0)
    assert math.degrees(float(rotation_error(R1, R2))) == pytest.approx(20.0, abs=1e-4)
    m = pose_metrics(R1[None], R2[None], ["x"])
    assert m["pooled"]["acc_pi6"] == 1.0 and m["pooled"]["acc_pi18"] == 0.0


def test_errors():
    R = _random_rotations(3, 5)
    with pytest.raises(ValueError, match="at least one rotation, got N = 0"):
        pose_metrics(torch.zeros(0, 3, 3), torch.zeros(0, 3, 3))
    with pytest.raises(ValueError, match=r"R_gt: expected shape \(3, 3, 3\), got \(2, 3, 3\)"):
        pose_metrics(R, R[:2])
    with pytest.raises(ValueError, match=r"R_pred: expected shape \(N, 3, 3\), got \(3, 3\)"):
        pose_metrics(R[0], R[0])
    with pytest.raises(ValueError, match="categories: expected 3 names .*got 2"):
        pose_metrics(R, R, ["a", "b"])
    with pytest.raises(TypeError, match="expected str entries, got int"):
        pose_metrics(R, R, ["a", "b", 3])
    with pytest.raises(TypeError, match="single str"):
        pose_metrics(R, R, "abc")
    with pytest.raises(TypeError, match="float32 or float64"):
        pose_metrics(R.long(), R)
    with pytest.raises(ValueError, match=r"R_pred: expected shape \(\.\.\., 3, 3\), got \(3, 4\)"):
        rotation_error(torch.zeros(3, 4), torch.eye(3))
    with pytest.raises(ValueError, match=r"R_gt: expected shape \(\.\.\., 3, 3\), got \(3,\)"):
        rotation_error(torch.eye(3), torch.zeros(3))
    with pytest.raises(ValueError, match="missing key 'pooled'"):
        format_metrics_table({})


def test_format_metrics_table():
    deg = torch.tensor([5.0, 15.0, 45.0, 2.0])
    R = rotation_z(torch.deg2rad(deg))
    cats = ["a_long_category_name", "car", "car", "car"]
    text = format_metrics_table(pose_metrics(R, torch.eye(3).expand(4, 3, 3), cats))
    lines = text.splitlines()
    assert len(lines) == 5 and lines[0].startswith("category")
    assert lines[1].startswith("a_long_category_name ")
    # car: 15, 45, 2 degrees; a_long_category_name: 5 degrees
    assert lines[2].split() == ["car", "3", "66.7", "33.3", "15.00", "20.67"]
    assert lines[3].split() == ["mean", "(categories)", "2", "83.3", "66.7", "10.00", "12.83"]
    assert lines[4].split() == ["pooled", "4", "75.0", "50.0", "10.00", "16.75"]
    assert lines[-2].startswith("mean (categories)")
    assert len({len(line) for line in lines}) == 1  # aligned columns
