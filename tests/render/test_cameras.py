"""Tests for render/cameras.py: conventions, round trips, gradients, conversions, errors."""

from __future__ import annotations

import math

import pytest
import torch

from render.cameras import (
    DEFAULT_FOCAL_FACTOR,
    angles_to_pose,
    camera_center,
    default_intrinsics,
    geodesic_distance,
    intrinsics,
    intrinsics_from_fov,
    intrinsics_from_opengl_projection,
    look_at,
    mean_rotation,
    opencv_to_opengl,
    opencv_to_pytorch3d,
    opencv_to_pytorch3d_view,
    opengl_projection,
    opengl_to_opencv,
    pose_to_angles,
    project_points,
    pytorch3d_to_opencv,
    pytorch3d_to_opencv_view,
    rotation_z,
)
from tests.helpers import assert_close


def _tol(dtype):
    return 1e-10 if dtype == torch.float64 else 1e-4


def _angle_diff(a, b):
    """Smallest signed difference of two angles, in [-pi, pi]."""
    return torch.atan2(torch.sin(a - b), torch.cos(a - b))


def _random_angles(n, dtype, device, max_elev=1.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    e = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * max_elev
    th = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    d = 1.0 + 9.0 * torch.rand(n, generator=g, dtype=torch.float64)
    return [x.to(device=device, dtype=dtype) for x in (a, e, th, d)]


def _random_rotations(n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 3, 3, generator=g, dtype=torch.float64)
    Q, Rr = torch.linalg.qr(q)
    Q = Q * torch.sign(torch.diagonal(Rr, dim1=-2, dim2=-1))[:, None, :]
    Q = torch.where(torch.linalg.det(Q)[:, None, None] < 0, -Q, Q)
    return Q.to(dtype)


# ----------------------------------------------------------------------------- conventions


def test_known_pose_projects_to_expected_pixels(device, dtype):
    # a = e = theta = 0, d = 5: camera on object +z at (0, 0, 5) looking at the origin.
    # Camera axes (rows of R): x = (1, 0, 0), y = (0, -1, 0), z = (0, 0, -1), so object +x is
    # image right (u grows), object +y is image up (v shrinks); both points sit at depth 5.
    R, t = angles_to_pose(torch.tensor(0.0, dtype=dtype, device=device), 0.0, 0.0, 5.0)
    assert R.device.type == device.type and R.dtype == dtype
    assert_close(camera_center(R, t), [0.0, 0.0, 5.0])
    K = intrinsics(100.0, 100.0, 32.0, 32.0).to(device=device, dtype=dtype)
    pts = torch.tensor(
        [[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]], dtype=dtype, device=device
    )
    uv, z = project_points(pts, K, R, t)
    assert_close(uv, [[[32.0, 32.0], [32.0, 12.0], [52.0, 32.0]]])
    assert_close(z, [[5.0, 5.0, 5.0]])
    assert uv[0, 1, 1] < 32.0  # up projects above the centre
    assert uv[0, 2, 0] > 32.0  # +x projects to the right


def test_azimuth_90_puts_camera_on_plus_x(dtype):
    R, t = angles_to_pose(torch.tensor(math.pi / 2, dtype=dtype), 0.0, 0.0, 5.0)
    assert_close(camera_center(R, t), [5.0, 0.0, 0.0], atol=1e-5, rtol=0)
    K = intrinsics(100.0, 100.0, 32.0, 32.0).to(dtype)
    uv, _ = project_points(torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]], dtype=dtype), K, R, t)
    assert_close(uv, [[[12.0, 32.0], [32.0, 12.0]]], atol=1e-4, rtol=0)  # +z left, +y up


def test_positive_elevation_puts_camera_above(dtype):
    e = 0.5
    R, t = angles_to_pose(torch.tensor(0.3, dtype=dtype), e, 0.0, 4.0)
    C = camera_center(R, t)
    expected = [4 * math.cos(e) * math.sin(0.3), 4 * math.sin(e), 4 * math.cos(e) * math.cos(0.3)]
    assert_close(C, expected, atol=1e-5, rtol=0)
    # The object's up axis still projects upwards (vertical image line through the centre).
    K = intrinsics(100.0, 100.0, 32.0, 32.0).to(dtype)
    uv, _ = project_points(torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]], dtype=dtype), K, R, t)
    assert_close(uv[0, 1, 0], 32.0, atol=1e-4, rtol=0)
    assert uv[0, 1, 1] < uv[0, 0, 1]


def test_pose_is_rotation_and_t_is_minus_R_c(device, dtype):
    a, e, th, d = _random_angles(64, dtype, device, max_elev=math.pi / 2)
    e[:4] = torch.tensor([math.pi / 2, -math.pi / 2, 0.0, 1e-7], dtype=dtype)
    center = torch.tensor([0.1, -0.2, 0.3], dtype=dtype, device=device)
    R, t = angles_to_pose(a, e, th, d, center)
    eye = torch.eye(3, dtype=dtype, device=device).expand(64, 3, 3)
    tol = _tol(dtype) * 10
    assert_close(R @ R.transpose(-1, -2), eye, atol=tol, rtol=0)
    assert_close(torch.linalg.det(R), torch.ones(64), atol=tol, rtol=0)
    n = torch.stack([torch.cos(e) * torch.sin(a), torch.sin(e), torch.cos(e) * torch.cos(a)], -1)
    C = center + d[:, None] * n
    assert_close(camera_center(R, t), C, atol=tol * 10, rtol=0)
    assert_close(t, -(R @ C[..., None])[..., 0], atol=tol * 10, rtol=0)
    assert_close(R[:, 2], -n, atol=tol, rtol=0)  # looks at the centre


def test_scalar_and_batch_broadcasting():
    R, t = angles_to_pose(0.0, 0.0, 0.0, 5.0)
    assert R.shape == (3, 3) and t.shape == (3,) and R.dtype == torch.get_default_dtype()
    R, t = angles_to_pose(torch.zeros(4, 1), torch.zeros(5), 0.0, 5.0, torch.zeros(3))
    assert R.shape == (4, 5, 3, 3) and t.shape == (4, 5, 3)
    a, e, th, d = pose_to_angles(R, t)
    assert a.shape == e.shape == th.shape == d.shape == (4, 5)
    R, t = angles_to_pose(0.0, 0.0, 0.0, 5.0, torch.zeros(2, 3))
    assert R.shape == (2, 3, 3) and t.shape == (2, 3)


def test_theta_rotates_image_clockwise(dtype):
    # Positive theta maps camera +x towards +y: content right of the principal point moves
    # down (+v), i.e. clockwise as displayed; the pixel offset rotates by exactly theta.
    K = intrinsics(100.0, 100.0, 32.0, 32.0).to(dtype)
    pts = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]], dtype=dtype)
    uv0, _ = project_points(pts, K, *angles_to_pose(torch.tensor(0.4, dtype=dtype), 0.3, 0.0, 5.0))
    for th in (0.3, -1.0, 2.5):
        uv, _ = project_points(
            pts, K, *angles_to_pose(torch.tensor(0.4, dtype=dtype), 0.3, th, 5.0)
        )
        off0 = uv0 - torch.tensor([32.0, 32.0], dtype=dtype)
        c, s = math.cos(th), math.sin(th)
        rot = torch.tensor([[c, -s], [s, c]], dtype=dtype)
        assert_close(uv - 32.0, off0 @ rot.T, atol=1e-4, rtol=0)
    uv, _ = project_points(pts, K, *angles_to_pose(torch.tensor(0.0, dtype=dtype), 0.0, 0.1, 5.0))
    assert uv[0, 0, 0] > 32.0 and uv[0, 0, 1] > 32.0  # +x: right, and moved down


def test_rotation_z_matches_theta_composition(dtype):
    a, e, th, d = _random_angles(8, dtype, "cpu")
    R, _ = angles_to_pose(a, e, th, d)
    R0, _ = angles_to_pose(a, e, torch.zeros_like(th), d)
    assert_close(R, rotation_z(th) @ R0, atol=_tol(dtype), rtol=0)


def test_pole_limit_is_continuous_and_look_at_agrees(dtype):
    a, e, th, d = _random_angles(16, dtype, "cpu")
    center = torch.tensor([0.5, 0.2, -0.1], dtype=dtype)
    R, t = angles_to_pose(a, e, torch.zeros_like(th), d, center)
    n = torch.stack([torch.cos(e) * torch.sin(a), torch.sin(e), torch.cos(e) * torch.cos(a)], -1)
    R2, t2 = look_at(center + d[:, None] * n, center)
    assert_close(R2, R, atol=_tol(dtype) * 10, rtol=0)
    assert_close(t2, t, atol=_tol(dtype) * 100, rtol=0)
    # Approaching the pole the pose converges to the analytic limit.
    a0 = torch.tensor(0.7, dtype=torch.float64)
    Rp, _ = angles_to_pose(a0, math.pi / 2, 0.0, 3.0)
    Rn, _ = angles_to_pose(a0, math.pi / 2 - 1e-7, 0.0, 3.0)
    assert_close(Rp, Rn, atol=1e-6, rtol=0)
    # At the pole: looking straight down, image right = (cos a, 0, -sin a).
    assert_close(Rp[2], [0.0, -1.0, 0.0], atol=1e-12, rtol=0)
    expected = torch.tensor([math.cos(0.7), 0.0, -math.sin(0.7)], dtype=torch.float64)
    assert_close(Rp[0], expected, atol=1e-12, rtol=0)


def test_look_at_general_up():
    eye = torch.tensor([[1.0, 2.0, 3.0], [0.0, -4.0, 1.0]], dtype=torch.float64)
    R, t = look_at(eye, torch.zeros(3, dtype=torch.float64), up=(0.0, 0.0, 1.0))
    assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand(2, 3, 3))
    assert_close(camera_center(R, t), eye)
    # up = +z projects upwards: the camera y axis (image down) has a negative z component.
    assert (R[:, 1, 2] < 0).all()


# ----------------------------------------------------------------------------- round trips


def test_angles_round_trip(device, dtype):
    a, e, th, d = _random_angles(200, dtype, device)
    a[0], th[1] = math.pi, math.pi
    a2, e2, th2, d2 = pose_to_angles(*angles_to_pose(a, e, th, d))
    tol = 1e-9 if dtype == torch.float64 else 2e-3
    assert_close(_angle_diff(a2, a), torch.zeros_like(a), atol=tol, rtol=0)
    assert_close(e2, e, atol=tol, rtol=0)
    assert_close(_angle_diff(th2, th), torch.zeros_like(th), atol=tol, rtol=0)
    assert_close(d2, d, atol=tol, rtol=0)
    for x in (a2, th2):
        assert bool(((x > -math.pi) & (x <= math.pi)).all())
    assert bool(((e2 >= -math.pi / 2) & (e2 <= math.pi / 2)).all())


def test_round_trip_with_center(dtype):
    a, e, th, d = _random_angles(32, dtype, "cpu")
    center = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    R, t = angles_to_pose(a, e, th, d, center)
    out = pose_to_angles(R, t, center)
    R2, t2 = angles_to_pose(*out, center)
    assert_close(R2, R, atol=_tol(dtype) * 10, rtol=0)
    assert_close(t2, t, atol=_tol(dtype) * 100, rtol=0)
    assert_close(out[3], d, atol=_tol(dtype) * 100, rtol=0)


def test_wrapping_at_pi():
    a0 = torch.tensor(-math.pi, dtype=torch.float64)
    a, _, th, _ = pose_to_angles(*angles_to_pose(a0, 0.2, -math.pi, 2.0))
    assert a.item() == pytest.approx(math.pi) and th.item() == pytest.approx(math.pi)


@pytest.mark.parametrize("offset", [0.0, 1e-12, 1e-9, 1e-6, 1e-3])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_round_trip_near_poles(dtype, offset, sign):
    a = torch.tensor([0.0, 0.4, -2.0, math.pi, 3.0], dtype=dtype)
    th = torch.tensor([0.0, -0.3, 1.0, 0.5, math.pi], dtype=dtype)
    e = torch.full_like(a, sign * (math.pi / 2 - offset))
    R, t = angles_to_pose(a, e, th, 2.5)
    out = pose_to_angles(R, t)
    assert all(bool(torch.isfinite(v).all()) for v in out)
    R2, t2 = angles_to_pose(*out)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert_close(R2, R, atol=tol, rtol=0)
    assert_close(t2, t, atol=tol, rtol=0)
    assert_close(geodesic_distance(R, R2), torch.zeros(5), atol=tol * 10, rtol=0)


def test_exact_pole_returns_theta_zero():
    # At e = +pi/2 only a + theta is defined; e = -pi/2: only a - theta. theta = 0 is returned.
    for sign, combo in ((1.0, lambda a, th: a + th), (-1.0, lambda a, th: a - th)):
        a, th = torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
        a2, e2, th2, _ = pose_to_angles(*angles_to_pose(a, sign * math.pi / 2, th, 2.0))
        assert th2.item() == pytest.approx(0.0, abs=1e-12)
        assert e2.item() == pytest.approx(sign * math.pi / 2, abs=1e-12)
        assert a2.item() == pytest.approx(float(combo(a, th)), abs=1e-12)


def test_pose_to_angles_of_off_axis_pose_keeps_rotation():
    R, t = angles_to_pose(torch.tensor(0.3, dtype=torch.float64), 0.2, 0.1, 4.0)
    t_off = t + torch.tensor([0.5, -0.2, 0.0], dtype=torch.float64)
    a, e, th, d = pose_to_angles(R, t_off)
    R2, t2 = angles_to_pose(a, e, th, d)
    assert_close(R2, R)
    assert_close(d, torch.linalg.vector_norm(t_off))
    assert_close(t2, [0.0, 0.0, d.item()])


# ----------------------------------------------------------------------------- gradients


def test_angles_to_pose_gradcheck():
    inputs = [
        torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.0, 0.0, 0.0, 5.0)
    ]
    assert torch.autograd.gradcheck(lambda *x: angles_to_pose(*x), inputs)
    inputs = [
        torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for v in (2.0, math.pi / 2, -1.0, 3.0)
    ]
    assert torch.autograd.gradcheck(lambda *x: angles_to_pose(*x), inputs)
    center = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: angles_to_pose(0.3, 0.2, 0.1, 2.0, c), [center])


def test_gradients_finite_at_zero_angles(device, dtype):
    x = torch.tensor([0.0, 0.0, 0.0, 5.0], dtype=dtype, device=device, requires_grad=True)
    R, t = angles_to_pose(x[0], x[1], x[2], x[3])
    (R.sum() + t.sum() + (R * torch.randn(3, 3, dtype=dtype, device=device)).sum()).backward()
    assert bool(torch.isfinite(x.grad).all())
    x.grad = None
    out = pose_to_angles(*angles_to_pose(x[0], x[1], x[2], x[3]))
    sum(out).backward()
    assert bool(torch.isfinite(x.grad).all())
    # The round trip is the identity, so its Jacobian is too.
    assert_close(x.grad, torch.ones(4), atol=1e-3, rtol=0)


def test_pose_to_angles_gradients_finite_at_poles():
    x = torch.tensor([0.4, math.pi / 2, 0.3, 2.0], dtype=torch.float64, requires_grad=True)
    out = pose_to_angles(*angles_to_pose(x[0], x[1], x[2], x[3]))
    sum(out).backward()
    assert bool(torch.isfinite(x.grad).all())


def test_pose_to_angles_gradcheck():
    a, e, th, d = _random_angles(3, torch.float64, "cpu")
    inputs = [torch.stack([a, e, th, d], -1).requires_grad_(True)]
    assert torch.autograd.gradcheck(
        lambda x: pose_to_angles(*angles_to_pose(*x.unbind(-1))), inputs
    )


# ----------------------------------------------------------------------------- geodesic


def test_geodesic_distance_known_angles(dtype):
    axis = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    axis = axis / axis.norm()
    Kx = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    R1 = _random_rotations(1, torch.float64)[0]
    for angle in (0.0, 1e-4, 0.5, 2.0, math.pi - 1e-3, math.pi):
        Ra = torch.linalg.matrix_exp(angle * Kx)
        d = geodesic_distance(R1.to(dtype), (R1 @ Ra).to(dtype))
        assert d.item() == pytest.approx(angle, abs=1e-9 if dtype == torch.float64 else 1e-3)


def test_geodesic_distance_matches_kornia_axis_angle():
    from kornia.geometry.conversions import axis_angle_to_rotation_matrix

    g = torch.Generator().manual_seed(12)
    axis = torch.nn.functional.normalize(
        torch.randn(50, 3, generator=g, dtype=torch.float64), dim=-1
    )
    angle = torch.rand(50, generator=g, dtype=torch.float64) * math.pi
    R1 = _random_rotations(50, torch.float64, 13)
    R2 = R1 @ axis_angle_to_rotation_matrix(axis * angle[:, None])
    assert_close(geodesic_distance(R1, R2), angle)


def test_geodesic_distance_symmetric_batched_and_matches_arccos():
    A, B = _random_rotations(10, torch.float64, 1), _random_rotations(10, torch.float64, 2)
    d = geodesic_distance(A, B)
    assert d.shape == (10,)
    assert_close(d, geodesic_distance(B, A))
    tr = torch.diagonal(A.transpose(-1, -2) @ B, dim1=-2, dim2=-1).sum(-1)
    assert_close(d, torch.arccos(((tr - 1) / 2).clamp(-1, 1)))
    assert geodesic_distance(A[:, None], B[None]).shape == (10, 10)


def test_mean_rotation_is_scipys_chordal_mean_batched():
    from kornia.geometry.conversions import axis_angle_to_rotation_matrix
    from scipy.spatial.transform import Rotation

    centre = _random_rotations(3, torch.float64, 4)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3, 6, 3, generator=g, dtype=torch.float64) * torch.tensor([0.05, 0.4, 1.0])[:, None, None]
    R = centre[:, None] @ axis_angle_to_rotation_matrix(w.reshape(-1, 3)).reshape(3, 6, 3, 3)
    M = mean_rotation(R)
    assert M.shape == (3, 3, 3)
    for i in range(3):
        expected = torch.from_numpy(Rotation.from_matrix(R[i].numpy()).mean().as_matrix())
        assert float(geodesic_distance(M[i], expected)) < 1e-9
    assert_close(M @ M.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    assert_close(torch.det(M), torch.ones(3, dtype=torch.float64))
    # a set symmetric about a rotation averages to it; one rotation is its own mean
    a = torch.tensor([0.2, -0.2], dtype=torch.float64)
    assert_close(mean_rotation(centre[0] @ rotation_z(a)), centre[0])
    assert_close(mean_rotation(centre[:1]), centre[0])
    with pytest.raises(ValueError, match="N >= 1"):
        mean_rotation(torch.zeros(0, 3, 3))


def test_geodesic_gradient_finite_at_identity(device, dtype):
    R = torch.eye(3, dtype=dtype, device=device).requires_grad_(True)
    geodesic_distance(R, torch.eye(3, dtype=dtype, device=device)).backward()
    assert bool(torch.isfinite(R.grad).all())
    th = torch.tensor(0.0, dtype=dtype, device=device, requires_grad=True)
    geodesic_distance(rotation_z(th), torch.eye(3, dtype=dtype, device=device)).backward()
    assert bool(torch.isfinite(th.grad).all())
    th = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: geodesic_distance(rotation_z(x), torch.eye(3, dtype=torch.float64)), [th]
    )


# ---------------------------------------------------------------------- intrinsics, projection


def test_intrinsics_constructors():
    K = intrinsics(torch.tensor([100.0, 200.0]), 150.0, 10.0, 20.0, skew=0.5)
    assert K.shape == (2, 3, 3)
    assert_close(K[1], [[200.0, 0.5, 10.0], [0.0, 150.0, 20.0], [0.0, 0.0, 1.0]])
    K = intrinsics_from_fov(math.pi / 2, (48, 64))
    assert_close(K, [[32.0, 0.0, 31.5], [0.0, 32.0, 23.5], [0.0, 0.0, 1.0]])
    K = default_intrinsics((100, 60), dtype=torch.float64)
    f = DEFAULT_FOCAL_FACTOR * 100
    assert K.dtype == torch.float64
    assert_close(K, [[f, 0.0, 29.5], [0.0, f, 49.5], [0.0, 0.0, 1.0]])
    assert_close(
        default_intrinsics((10, 10), focal=7.0), [[7.0, 0, 4.5], [0, 7.0, 4.5], [0, 0, 1.0]]
    )


def test_fov_spans_the_full_width():
    # A ray at half the horizontal field of view lands on the image's left/right edge.
    fov, (h, w) = 1.1, (30, 80)
    K = intrinsics_from_fov(torch.tensor(fov, dtype=torch.float64), (h, w))
    x = math.tan(fov / 2)
    uv, _ = project_points(torch.tensor([[[x, 0.0, 1.0], [-x, 0.0, 1.0]]], dtype=torch.float64), K)
    assert_close(uv[0, :, 0], [w - 0.5, -0.5])


def test_project_points_batched_with_skew(device, dtype):
    g = torch.Generator().manual_seed(3)
    pts = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    K = torch.stack(
        [intrinsics(100.0, 90.0, 30.0, 20.0, skew=2.0), intrinsics(50.0, 60.0, 10.0, 5.0)]
    ).double()
    R = _random_rotations(2, torch.float64, 4)
    t = torch.tensor([[0.0, 0.0, 6.0], [0.1, 0.2, 7.0]], dtype=torch.float64)
    X = pts @ R.transpose(-1, -2) + t[:, None]
    u = (
        K[:, None, 0, 0] * X[..., 0] / X[..., 2]
        + K[:, None, 0, 1] * X[..., 1] / X[..., 2]
        + K[:, None, 0, 2]
    )
    v = K[:, None, 1, 1] * X[..., 1] / X[..., 2] + K[:, None, 1, 2]
    mv = {"device": device, "dtype": dtype}
    uv, z = project_points(pts.to(**mv), K.to(**mv), R.to(**mv), t.to(**mv))
    assert uv.shape == (2, 5, 2) and z.shape == (2, 5) and uv.device.type == device.type
    assert_close(uv, torch.stack([u, v], -1), atol=1e-3, rtol=1e-5)
    assert_close(z, X[..., 2], atol=1e-5, rtol=1e-5)
    # Unbatched K / R / t broadcast over B; no R, t means camera-frame input.
    uv1, _ = project_points(pts.to(**mv), K[0].to(**mv), R[0].to(**mv), t[0].to(**mv))
    uv2, _ = project_points((pts @ R[0].T + t[0]).to(**mv), K[0].to(**mv))
    assert_close(uv1, uv2, atol=1e-3, rtol=1e-5)


# ----------------------------------------------------------------------------- PyTorch3D


def _p3d_screen(R_p3d, T_p3d, f, p, X_world, image_size, c0):
    """PyTorch3D's documented pipeline: X_view = X_world @ R + T; ndc = f * (X, Y) / Z + p;
    NDC (+X left, +Y up, scale s = min(H, W) / 2) to screen: u = c0x - s x, v = c0y - s y."""
    h, w = image_size
    s = min(h, w) / 2.0
    Xv = X_world @ R_p3d + T_p3d
    ndc = f * Xv[..., :2] / Xv[..., 2:] + p
    return torch.stack([c0[0] - s * ndc[..., 0], c0[1] - s * ndc[..., 1]], -1), Xv


@pytest.mark.parametrize("image_size", [(48, 64), (64, 40)])
def test_pytorch3d_projection_matches_opencv(image_size):
    h, w = image_size
    R, t = angles_to_pose(
        torch.tensor([0.3, -2.0], dtype=torch.float64), 0.4, torch.tensor([0.2, -0.5]).double(), 4.0
    )
    K = torch.stack(
        [intrinsics(70.0, 80.0, 20.0, 30.0), intrinsics(40.0, 40.0, 25.0, 18.0)]
    ).double()
    X = torch.randn(1, 7, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.5
    uv, z = project_points(X.expand(2, 7, 3), K, R, t)
    for match, c0 in ((False, (w / 2, h / 2)), (True, ((w - 1) / 2, (h - 1) / 2))):
        R3, T3, f, p = opencv_to_pytorch3d(R, t, K, image_size, match_rasterizer=match)
        uv3, Xv = _p3d_screen(R3, T3[:, None], f[:, None], p[:, None], X, image_size, c0)
        assert_close(uv3, uv)
        assert_close(Xv[..., 2], z)
    # The same camera in PyTorch3D's rasterizer: column j samples NDC x = ((W-1)/2 - j) / s.
    # Without match_rasterizer, our pixel u lands at rasterizer column u - 0.5.
    s = min(h, w) / 2.0
    _, _, f, p = opencv_to_pytorch3d(R, t, K, image_size)
    Xv = opencv_to_pytorch3d_view(X @ R.transpose(-1, -2) + t[:, None])
    ndc_x = f[:, None, 0] * Xv[..., 0] / Xv[..., 2] + p[:, None, 0]
    assert_close((w - 1) / 2 - s * ndc_x, uv[..., 0] - 0.5)


def test_pytorch3d_round_trip(dtype):
    R = _random_rotations(4, dtype, 7)
    t = torch.randn(4, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64).to(dtype)
    K = intrinsics(torch.tensor([50.0, 60.0, 70.0, 80.0], dtype=dtype), 55.0, 30.0, 12.0)
    for match in (False, True):
        out = opencv_to_pytorch3d(R, t, K, (40, 70), match_rasterizer=match)
        assert [o.shape for o in out] == [(4, 3, 3), (4, 3), (4, 2), (4, 2)]
        R2, t2, K2 = pytorch3d_to_opencv(*out, (40, 70), match_rasterizer=match)
        assert_close(R2, R)
        assert_close(t2, t)
        assert_close(K2, K)
    # R_p3d is still a rotation: R^T F has det(F) = +1.
    assert_close(torch.linalg.det(out[0]), torch.ones(4), atol=1e-4, rtol=0)


def test_view_points_helpers():
    X = torch.tensor([[1.0, -2.0, 3.0]])
    assert_close(opencv_to_pytorch3d_view(X), [[-1.0, 2.0, 3.0]])
    assert_close(pytorch3d_to_opencv_view(opencv_to_pytorch3d_view(X)), X)
    R = _random_rotations(1, torch.float64, 9)[0]
    t = torch.tensor([0.1, 0.2, 3.0], dtype=torch.float64)
    R3, T3, _, _ = opencv_to_pytorch3d(R, t, intrinsics(1.0, 1.0, 0.0, 0.0).double(), (8, 8))
    P = torch.randn(5, 3, dtype=torch.float64)
    assert_close(P @ R3 + T3, opencv_to_pytorch3d_view(P @ R.T + t))


# ----------------------------------------------------------------------------- OpenGL


def test_opengl_pose_round_trip():
    R = _random_rotations(3, torch.float64, 10)
    t = torch.randn(3, 3, dtype=torch.float64)
    R_gl, t_gl = opencv_to_opengl(R, t)
    X = torch.randn(3, 4, 3, dtype=torch.float64)
    X_cam = X @ R.transpose(-1, -2) + t[:, None]
    X_eye = X @ R_gl.transpose(-1, -2) + t_gl[:, None]
    assert_close(X_eye, X_cam * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    R2, t2 = opengl_to_opencv(R_gl, t_gl)
    assert_close(R2, R)
    assert_close(t2, t)


@pytest.mark.parametrize("image_size", [(48, 64), (50, 30)])
def test_opengl_projection_matches_K(dtype, image_size):
    h, w = image_size
    near, far = 0.5, 20.0
    K = torch.stack(
        [
            intrinsics(70.0, 80.0, 20.0, 30.0, skew=3.0),
            intrinsics(40.0, 45.0, (w - 1) / 2, (h - 1) / 2),
        ]
    ).to(dtype)
    X_cam = torch.rand(
        2, 6, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64
    ).to(dtype)
    X_cam = X_cam * torch.tensor([2.0, 2.0, 10.0], dtype=dtype) + torch.tensor(
        [-1.0, -1.0, 1.0], dtype=dtype
    )
    X_cam[:, 0] = torch.tensor([0.0, 0.0, near], dtype=dtype)
    X_cam[:, 1] = torch.tensor([0.1, 0.2, far], dtype=dtype)
    uv, _ = project_points(X_cam, K)
    P = opengl_projection(K, image_size, near, far)
    X_eye = X_cam * torch.tensor([1.0, -1.0, -1.0], dtype=dtype)
    clip = torch.cat([X_eye, torch.ones_like(X_eye[..., :1])], -1) @ P.transpose(-1, -2)
    ndc = clip[..., :3] / clip[..., 3:]
    x_w = (ndc[..., 0] + 1) * w / 2  # glViewport(0, 0, W, H), origin bottom-left
    y_w = (ndc[..., 1] + 1) * h / 2
    tol = {"atol": 1e-3, "rtol": 1e-4} if dtype == torch.float32 else {}
    assert_close(torch.stack([x_w - 0.5, h - 0.5 - y_w], -1), uv, **tol)
    assert_close(ndc[:, 0, 2], [-1.0, -1.0], **tol)
    assert_close(ndc[:, 1, 2], [1.0, 1.0], **tol)
    assert_close(intrinsics_from_opengl_projection(P, image_size), K, **tol)


def test_opengl_symmetric_frustum_matches_fov():
    fov = 0.9
    P = opengl_projection(
        intrinsics_from_fov(torch.tensor(fov, dtype=torch.float64), (32, 32)), (32, 32), 1.0, 2.0
    )
    assert P[0, 0].item() == pytest.approx(1 / math.tan(fov / 2))
    assert P[0, 2].item() == pytest.approx(0.0) and P[1, 2].item() == pytest.approx(0.0)


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise():
    eye3 = torch.eye(3)
    K = intrinsics(10.0, 10.0, 5.0, 5.0)
    with pytest.raises(ValueError, match="distance: expected positive"):
        angles_to_pose(0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="distance: expected positive"):
        angles_to_pose(0.0, 0.0, 0.0, torch.tensor([1.0, -2.0]))
    with pytest.raises(ValueError, match="azimuth: expected finite"):
        angles_to_pose(float("nan"), 0.0, 0.0, 1.0)
    with pytest.raises(TypeError, match="elevation: expected dtype float32 or float64"):
        angles_to_pose(0.0, torch.tensor(1), 0.0, 1.0)
    with pytest.raises(TypeError, match="theta: expected a float or a torch.Tensor"):
        angles_to_pose(0.0, 0.0, "0", 1.0)
    with pytest.raises(ValueError, match="expected broadcastable shapes"):
        angles_to_pose(torch.zeros(2), torch.zeros(3), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"center: expected shape \(\.\.\., 3\)"):
        angles_to_pose(0.0, 0.0, 0.0, 1.0, torch.zeros(2))
    with pytest.raises(ValueError, match="expected broadcastable batch shapes"):
        angles_to_pose(torch.zeros(2), 0.0, 0.0, 1.0, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"R: expected shape \(\.\.\., 3, 3\), got \(3,\)"):
        pose_to_angles(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="R: expected rotation matrices"):
        pose_to_angles(2 * eye3, torch.ones(3))
    with pytest.raises(ValueError, match="det \\+1"):
        pose_to_angles(-eye3, torch.ones(3))
    with pytest.raises(ValueError, match="distance 0"):
        pose_to_angles(eye3, torch.zeros(3))
    with pytest.raises(ValueError, match="expected eye != target"):
        look_at(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="not parallel to the viewing direction"):
        look_at(torch.tensor([0.0, 5.0, 0.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="not parallel to the viewing direction"):
        look_at(torch.tensor([0.0, 0.0, 5.0]), torch.zeros(3), up=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"points: expected shape \(B, N, 3\)"):
        project_points(torch.zeros(4, 3), K)
    with pytest.raises(
        ValueError, match=r"K: expected shape \(3, 3\) or \(2, 3, 3\), got \(3, 3, 3\)"
    ):
        project_points(torch.zeros(2, 4, 3), torch.stack([K, K, K]))
    with pytest.raises(ValueError, match="K: expected positive focal lengths"):
        project_points(
            torch.zeros(1, 4, 3),
            intrinsics(10.0, 10.0, 5.0, 5.0) * torch.tensor([[0.0], [1.0], [1.0]]),
        )
    with pytest.raises(ValueError, match=r"K: expected last row \(0, 0, 1\)"):
        project_points(torch.zeros(1, 4, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="upper triangular"):
        project_points(
            torch.zeros(1, 4, 3), K + torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 0, 0]])
        )
    with pytest.raises(ValueError, match=r"R: expected shape \(3, 3\) or \(1, 3, 3\)"):
        project_points(torch.zeros(1, 4, 3), K, torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"t: expected shape \(3,\) or \(1, 3\)"):
        project_points(torch.zeros(1, 4, 3), K, None, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="fx, fy: expected positive focal lengths"):
        intrinsics(0.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"fov: expected radians in \(0, pi\)"):
        intrinsics_from_fov(4.0, (10, 10))
    with pytest.raises(ValueError, match="image_size: expected positive"):
        intrinsics_from_fov(1.0, (0, 10))
    with pytest.raises(ValueError, match="focal: expected a positive focal length"):
        default_intrinsics((10, 10), focal=0.0)
    with pytest.raises(ValueError, match="image_size: expected \\(H, W\\)"):
        default_intrinsics((10,))
    with pytest.raises(ValueError, match="zero skew"):
        opencv_to_pytorch3d(eye3, torch.zeros(3), intrinsics(1.0, 1.0, 0.0, 0.0, skew=0.3), (4, 4))
    with pytest.raises(ValueError, match="focal_length: expected positive"):
        pytorch3d_to_opencv(eye3, torch.zeros(3), torch.tensor([0.0, 1.0]), torch.zeros(2), (4, 4))
    with pytest.raises(ValueError, match=r"focal_length: expected shape \(\.\.\., 2\)"):
        pytorch3d_to_opencv(eye3, torch.zeros(3), torch.tensor([1.0]), torch.zeros(2), (4, 4))
    with pytest.raises(ValueError, match="expected 0 < near < far"):
        opengl_projection(K, (10, 10), 2.0, 1.0)
    with pytest.raises(ValueError, match="expected 0 < near < far"):
        opengl_projection(K, (10, 10), 0.0, 1.0)
    with pytest.raises(ValueError, match="P: expected an OpenGL perspective projection"):
        intrinsics_from_opengl_projection(torch.eye(4), (10, 10))
    P = opengl_projection(K, (10, 10), 1.0, 2.0)
    P[0, 0] = 0.0
    with pytest.raises(ValueError, match="P: expected positive"):
        intrinsics_from_opengl_projection(P, (10, 10))
    with pytest.raises(ValueError, match=r"R1: expected shape \(\.\.\., 3, 3\)"):
        geodesic_distance(torch.zeros(2, 3), eye3)
    with pytest.raises(TypeError, match="R: expected a torch.Tensor"):
        camera_center([[1.0]], torch.zeros(3))
    with pytest.raises(ValueError, match=r"R_gl: expected shape"):
        opengl_to_opencv(torch.zeros(4, 4), torch.zeros(3))
