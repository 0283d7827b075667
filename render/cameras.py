"""Cameras and pose conventions: viewpoint angles <-> (R, t), projection, intrinsics,
rotation error, and conversions to the PyTorch3D and OpenGL camera conventions.

Conventions are those of DESIGN.md ("Conventions"):

* Camera frame: OpenCV axes, x right, y down, z forward. A point in the object frame maps
  to the camera frame by ``X_cam = R @ X_obj + t``; the rows of ``R`` are the camera's
  x, y and z axes written in object coordinates, and the camera centre is ``-R^T t``.
* Intrinsics ``K`` (3x3, pixels): ``u = fx * x/z + skew * y/z + cx``,
  ``v = fy * y/z + cy``. Pixel (row i, column j) has its centre at ``(u, v) = (j, i)``,
  so the image spans ``u in [-0.5, W - 0.5]`` and its centre is ``((W-1)/2, (H-1)/2)``.
* Object frame: +y is up.
* Viewpoint angles, radians: azimuth ``a``, elevation ``e``, in-plane rotation ``theta``,
  distance ``d``. The camera centre is ``c + d * (cos e sin a, sin e, cos e cos a)``
  (``c`` the object centre, default the origin), the camera looks at ``c``, and
  ``R = Rz(theta) @ R_lookat(a, e)`` where ``Rz`` is the rotation about the camera z axis
  (:func:`rotation_z`) and ``R_lookat`` has rows::

      x = (cos a, 0, -sin a)                      # image right
      y = (sin e sin a, -cos e, sin e cos a)      # image down  (= z cross x)
      z = -(cos e sin a, sin e, cos e cos a)      # viewing direction

  Away from the poles this is exactly :func:`look_at` with ``up = +y`` (object +y points
  up in the image at ``theta = 0``); at ``e = +-pi/2``, where look-at is undefined, it is
  the analytic limit, so the map is smooth in all angles. Consequences, all tested:
  at ``a = e = theta = 0`` the camera sits on the object's +z axis, object +x appears to
  the right and object +y up; ``a = +pi/2`` puts the camera on +x; ``e > 0`` puts it
  above the object (looking down). ``t = (0, 0, d) - R @ c`` exactly.
* ``theta`` sense: the camera-frame rotation ``Rz(theta)`` maps camera +x towards +y, so a
  **positive theta rotates the image content clockwise as displayed** (from +u towards
  +v, i.e. from "right" towards "down") about the principal point; with ``fx = fy`` and no
  skew the pixel offset from ``(cx, cy)`` is rotated by exactly ``theta``.

Batching: rotation functions take any leading batch dimensions (``(..., 3, 3)``), which
broadcast against each other; scalar angles and Python floats broadcast too.
:func:`project_points` follows the renderer's contract (``points (B, N, 3)``). Outputs
take the dtype and device of the (promoted) tensor inputs; with Python numbers only, the
default dtype on the CPU. Everything is differentiable (float32 and float64, CPU and
CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .checks import check_finite, check_floating, check_image_size, check_shape

__all__ = [
    "angles_to_pose",
    "pose_to_angles",
    "look_at",
    "rotation_z",
    "camera_center",
    "project_points",
    "intrinsics",
    "intrinsics_from_fov",
    "default_intrinsics",
    "DEFAULT_FOCAL_FACTOR",
    "geodesic_distance",
    "mean_rotation",
    "opencv_to_pytorch3d",
    "pytorch3d_to_opencv",
    "opencv_to_pytorch3d_view",
    "pytorch3d_to_opencv_view",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "opengl_projection",
    "intrinsics_from_opengl_projection",
]

#: Focal length (pixels) that :func:`default_intrinsics` assumes when none is given,
#: as a multiple of ``max(H, W)`` (the prior COLMAP uses for unknown cameras): a
#: horizontal field of view of ``2 * atan(1 / 2.4)``, about 45 degrees, along the longer
#: side, typical of photographs.
DEFAULT_FOCAL_FACTOR = 1.2


# --------------------------------------------------------------------------------------
# Private helpers
# --------------------------------------------------------------------------------------


def _check_trailing(name: str, x: torch.Tensor, trailing: Sequence[int]) -> None:
    """Check ``x`` has shape ``(..., *trailing)``, is floating and finite."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    n = len(trailing)
    if x.dim() < n or tuple(x.shape[x.dim() - n :]) != tuple(trailing):
        expected = "(..., " + ", ".join(str(d) for d in trailing) + ")"
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(x.shape)}")
    check_floating(name, x)
    check_finite(name, x)


def _as_tensors(names: Sequence[str], values: Sequence) -> list[torch.Tensor]:
    """Convert numbers/tensors to tensors of one floating dtype and device (not broadcast)."""
    tensors = []
    for name, v in zip(names, values):
        if isinstance(v, torch.Tensor):
            check_floating(name, v)
            tensors.append(v)
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name}: expected a float or a torch.Tensor, got {type(v).__name__}")
    if tensors:
        dtype = tensors[0].dtype
        for x in tensors[1:]:
            dtype = torch.promote_types(dtype, x.dtype)
        device = tensors[0].device
    else:
        dtype, device = torch.get_default_dtype(), torch.device("cpu")
    out = [torch.as_tensor(v, dtype=dtype, device=device) for v in values]
    for name, x in zip(names, out):
        check_finite(name, x)
    return out


def _broadcast(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    try:
        return list(torch.broadcast_tensors(*tensors))
    except RuntimeError:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, tensors))
        raise ValueError(f"expected broadcastable shapes, got {shapes}") from None


def _broadcast_shapes(names: Sequence[str], shapes: Sequence[torch.Size]) -> torch.Size:
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError:
        desc = ", ".join(f"{n} {tuple(s)}" for n, s in zip(names, shapes))
        raise ValueError(f"expected broadcastable batch shapes, got {desc}") from None


def _wrap_angle(x: torch.Tensor) -> torch.Tensor:
    """Map angles in [-pi, pi] (atan2's range) to (-pi, pi]."""
    return torch.where(x <= -math.pi, x + 2.0 * math.pi, x)


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dim with a zero (not NaN) gradient at zero."""
    n2 = (v * v).sum(-1)
    pos = n2 > 0
    return torch.where(
        pos, torch.sqrt(torch.where(pos, n2, torch.ones_like(n2))), torch.zeros_like(n2)
    )


def _check_rotation(name: str, R: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every ``R`` is orthonormal with determinant +1."""
    tol = 10.0 * math.sqrt(torch.finfo(R.dtype).eps)
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    err = (R @ R.transpose(-1, -2) - eye).abs().amax(dim=(-1, -2)) if R.numel() else R.new_zeros(0)
    if bool((err > tol).any()):
        raise ValueError(
            f"{name}: expected rotation matrices (R @ R^T = I), got max |R R^T - I| = "
            f"{float(err.max()):.3g}"
        )
    if R.numel() and bool((torch.linalg.det(R) <= 0).any()):
        raise ValueError(f"{name}: expected rotation matrices with det +1, got a reflection")


def _check_K(name: str, K: torch.Tensor, allow_skew: bool = True) -> None:
    """Check ``K`` is ``(..., 3, 3)`` upper triangular with last row (0, 0, 1), fx, fy > 0."""
    _check_trailing(name, K, (3, 3))
    last = K[..., 2, :]
    expected_last = torch.tensor([0.0, 0.0, 1.0], dtype=K.dtype, device=K.device)
    if bool(((last - expected_last).abs() > 1e-5).any()):
        raise ValueError(
            f"{name}: expected last row (0, 0, 1), got {last.reshape(-1, 3)[0].tolist()}"
        )
    fx, fy = K[..., 0, 0], K[..., 1, 1]
    scale = 1e-6 * (1.0 + fx.abs() + fy.abs())
    if bool((K[..., 1, 0].abs() > scale).any()):
        raise ValueError(f"{name}: expected K[1, 0] = 0 (upper triangular), got nonzero entries")
    if bool((fx <= 0).any()) or bool((fy <= 0).any()):
        raise ValueError(
            f"{name}: expected positive focal lengths fx, fy (a singular K has none), got "
            f"fx min {float(fx.min()):.4g}, fy min {float(fy.min()):.4g}"
        )
    if not allow_skew and bool((K[..., 0, 1].abs() > scale).any()):
        raise ValueError(
            f"{name}: expected zero skew K[0, 1] (PyTorch3D cameras have none), got "
            f"{float(K[..., 0, 1].abs().max()):.4g}"
        )


def _check_maybe_batched(name: str, x: torch.Tensor, b: int, dims: list[int]) -> None:
    """Check ``x`` has shape ``dims`` or ``(b, *dims)``."""
    if isinstance(x, torch.Tensor) and x.dim() in (len(dims), len(dims) + 1):
        try:
            check_shape(name, x, dims if x.dim() == len(dims) else [b, *dims])
            return
        except ValueError:
            pass
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    plain = str(tuple(dims))
    batched = str((b, *dims))
    raise ValueError(f"{name}: expected shape {plain} or {batched}, got {tuple(x.shape)}")


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = torch.broadcast_tensors(a, b)
    return torch.linalg.cross(a, b, dim=-1)


# --------------------------------------------------------------------------------------
# Angles, look-at, rotations
# --------------------------------------------------------------------------------------


def rotation_z(theta: torch.Tensor | float) -> torch.Tensor:
    """Rotation by ``theta`` (radians) about the z axis: ``[[c, -s, 0], [s, c, 0], [0, 0, 1]]``.

    Args:
        theta: ``(...)`` tensor or float.

    Returns:
        ``(..., 3, 3)``; maps +x towards +y. Applied to the camera frame
        (``R = rotation_z(theta) @ R_lookat``), positive theta turns the image content
        clockwise as displayed (see the module docstring).

    >>> (rotation_z(math.pi / 2).round() + 0.0).tolist()
    [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    (theta,) = _as_tensors(["theta"], [theta])
    c, s = torch.cos(theta), torch.sin(theta)
    o, z = torch.ones_like(theta), torch.zeros_like(theta)
    return torch.stack(
        [torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2
    )


def angles_to_pose(
    azimuth: torch.Tensor | float,
    elevation: torch.Tensor | float,
    theta: torch.Tensor | float,
    distance: torch.Tensor | float,
    center: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Viewpoint angles (radians) to the object-to-camera pose ``(R, t)``.

    The camera centre is ``center + distance * (cos e sin a, sin e, cos e cos a)``, it
    looks at ``center`` with object +y up in the image, and ``R = Rz(theta) @ R_lookat``
    (rows of ``R_lookat`` in the module docstring; smooth everywhere, poles included).
    ``t = (0, 0, distance) - R @ center``.

    Args:
        azimuth, elevation, theta, distance: ``(...)`` tensors or floats, broadcast
            together; ``distance > 0``.
        center: ``(..., 3)`` object centre in the object frame (default the origin).

    Returns:
        ``R (..., 3, 3)`` and ``t (..., 3)``: ``X_cam = R @ X_obj + t`` (OpenCV camera).

    Raises:
        ValueError: non-positive distance, non-finite input, unbroadcastable shapes.

    >>> R, t = angles_to_pose(0.0, 0.0, 0.0, 5.0)
    >>> (R + 0.0).tolist(), (t + 0.0).tolist()
    ([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]], [0.0, 0.0, 5.0])
    >>> R, t = angles_to_pose(torch.tensor([0.0, 0.5]), 0.2, 0.0, 5.0)
    >>> R.shape, t.shape
    (torch.Size([2, 3, 3]), torch.Size([2, 3]))
    """
    names = ["azimuth", "elevation", "theta", "distance"]
    values = [azimuth, elevation, theta, distance]
    if center is not None:
        _check_trailing("center", center, (3,))
        # center takes part in the dtype/device choice; it is broadcast separately below.
        *values, center = _as_tensors(names + ["center"], values + [center])
    a, e, th, d = _broadcast(names, _as_tensors(names, values))
    if bool((d <= 0).any()):
        raise ValueError(f"distance: expected positive values, got min {float(d.min()):.4g}")
    ca, sa, ce, se = torch.cos(a), torch.sin(a), torch.cos(e), torch.sin(e)
    zero = torch.zeros_like(a)
    x = torch.stack([ca, zero, -sa], -1)
    y = torch.stack([se * sa, -ce, se * ca], -1)
    z = torch.stack([-ce * sa, -se, -ce * ca], -1)
    cth, sth = torch.cos(th)[..., None], torch.sin(th)[..., None]
    # R = Rz(theta) @ [x; y; z], written out row by row.
    R = torch.stack([cth * x - sth * y, sth * x + cth * y, z], -2)
    t = torch.stack([zero, zero, d], -1)
    if center is not None:
        batch = _broadcast_shapes(["angles", "center"], [R.shape[:-2], center.shape[:-1]])
        R = R.expand(*batch, 3, 3)
        t = t.expand(*batch, 3) - (R @ center.expand(*batch, 3)[..., None])[..., 0]
    return R, t


def pose_to_angles(
    R: torch.Tensor, t: torch.Tensor, center: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`angles_to_pose`: ``(R, t)`` to ``(azimuth, elevation, theta, distance)``.

    The three angles are read from ``R`` alone (``R = Rz(theta) @ R_lookat(a, e)`` is a
    one-to-one parameterisation of rotations away from the poles):
    ``(cos e sin a, sin e, cos e cos a) = -R[2]`` and ``theta = atan2(R[1] . x, R[0] . x)``
    with ``x = (cos a, 0, -sin a)``. ``distance = |R @ center + t|``, the distance from
    the camera centre to ``center``. When the camera looks exactly at ``center`` (e.g. any
    output of :func:`angles_to_pose`), ``angles_to_pose`` of the result reproduces
    ``(R, t)``; otherwise it reproduces ``R`` and a ``t`` that puts ``center`` on the
    optical axis at the same distance.

    Ranges: azimuth and theta in ``(-pi, pi]``, elevation in ``[-pi/2, pi/2]``.
    At the poles (``cos e`` below ``8 * eps`` of the dtype) only ``a + theta``
    (``e = pi/2``) or ``a - theta`` (``e = -pi/2``) is defined: there ``theta = 0`` is
    returned and the azimuth carries the whole rotation (``x`` is then ``R[0]``), so the
    round trip still reproduces ``R``. Near (not at) the poles azimuth and theta are
    individually ill-conditioned but their combination, hence ``R``, is accurate.

    Args:
        R: ``(..., 3, 3)`` rotations (checked: orthonormal, det +1).
        t: ``(..., 3)``; broadcast with ``R``.
        center: ``(..., 3)`` object centre (default the origin).

    Returns:
        ``azimuth, elevation, theta, distance``, each ``(...)``.

    Raises:
        ValueError: bad shapes, non-rotation ``R``, camera centre at ``center``.

    >>> R, t = angles_to_pose(0.3, -0.2, 0.1, 4.0)
    >>> [round(float(v), 6) for v in pose_to_angles(R, t)]
    [0.3, -0.2, 0.1, 4.0]
    """
    _check_trailing("R", R, (3, 3))
    _check_trailing("t", t, (3,))
    _check_rotation("R", R)
    dtype = torch.promote_types(R.dtype, t.dtype)
    R, t = R.to(dtype), t.to(dtype=dtype, device=R.device)
    pc = t
    if center is not None:
        _check_trailing("center", center, (3,))
        center = center.to(dtype=dtype, device=R.device)
        pc = (R @ center[..., None])[..., 0] + t
    batch = _broadcast_shapes(["R", "t"], [R.shape[:-2], pc.shape[:-1]])
    R = R.expand(*batch, 3, 3)
    pc = pc.expand(*batch, 3)

    n = -R[..., 2, :]  # (cos e sin a, sin e, cos e cos a)
    nx, ny, nz = n[..., 0], n[..., 1], n[..., 2]
    h2 = nx * nx + nz * nz
    thr = 8.0 * torch.finfo(dtype).eps
    pole = h2 <= thr * thr
    h = torch.where(
        pole, torch.zeros_like(h2), torch.sqrt(torch.where(pole, torch.ones_like(h2), h2))
    )
    elevation = torch.atan2(ny, h)
    # Away from the poles a = atan2(nx, nz); at the poles take theta = 0, so R[0] = x.
    sa_ = torch.where(pole, -R[..., 0, 2], nx)
    ca_ = torch.where(pole, R[..., 0, 0], nz)
    azimuth = torch.atan2(sa_, ca_)
    ca, sa = torch.cos(azimuth), torch.sin(azimuth)
    x = torch.stack([ca, torch.zeros_like(ca), -sa], -1)
    cth = (R[..., 0, :] * x).sum(-1)
    sth = (R[..., 1, :] * x).sum(-1)
    theta = torch.atan2(sth, cth)
    distance = _safe_norm(pc)
    if bool((distance <= 0).any()):
        raise ValueError("t: expected the camera centre away from center, got distance 0")
    return _wrap_angle(azimuth), elevation, _wrap_angle(theta), distance


def look_at(
    eye: torch.Tensor,
    target: torch.Tensor,
    up: torch.Tensor | Sequence[float] = (0.0, 1.0, 0.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV camera at ``eye`` looking at ``target`` with ``up`` pointing up in the image.

    ``z = (target - eye) / |target - eye|``, ``x = (z cross up) / |z cross up|`` (image
    right), ``y = z cross x`` (image down, so ``up`` projects upwards); ``R`` has rows
    ``x, y, z`` (the camera axes in world/object coordinates) and ``t = -R @ eye``. With
    the default ``up = +y`` this equals :func:`angles_to_pose` with ``theta = 0`` away
    from the poles.

    Args:
        eye, target: ``(..., 3)`` in the object frame, broadcast together.
        up: ``(3,)`` or ``(..., 3)``; need not be unit length or orthogonal to ``z``.

    Returns:
        ``R (..., 3, 3)``, ``t (..., 3)``.

    Raises:
        ValueError: ``eye == target``, or ``up`` zero or parallel to the viewing direction
            (within ``10 * sqrt(eps)`` in the sine of their angle).

    >>> R, t = look_at(torch.tensor([0.0, 0.0, 5.0]), torch.zeros(3))
    >>> (R + 0.0).tolist(), (t + 0.0).tolist()
    ([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]], [0.0, 0.0, 5.0])
    """
    _check_trailing("eye", eye, (3,))
    _check_trailing("target", target, (3,))
    if not isinstance(up, torch.Tensor):
        up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device)
    _check_trailing("up", up, (3,))
    dtype = torch.promote_types(torch.promote_types(eye.dtype, target.dtype), up.dtype)
    eye, target, up = (v.to(dtype=dtype, device=eye.device) for v in (eye, target, up))
    eye, target, up = _broadcast(["eye", "target", "up"], [eye, target, up])
    f = target - eye
    nf = torch.linalg.vector_norm(f, dim=-1)
    eps = torch.finfo(dtype).eps
    scale = torch.linalg.vector_norm(eye, dim=-1) + torch.linalg.vector_norm(target, dim=-1)
    if bool((nf <= eps * scale).any()) or bool((nf == 0).any()):
        raise ValueError("look_at: expected eye != target, got coincident points")
    z = f / nf[..., None]
    xr = _cross(z, up)
    nx = torch.linalg.vector_norm(xr, dim=-1)
    nu = torch.linalg.vector_norm(up, dim=-1)
    if bool((nx <= 10.0 * math.sqrt(eps) * nu).any()) or bool((nu == 0).any()):
        raise ValueError("look_at: expected a nonzero up not parallel to the viewing direction")
    x = xr / nx[..., None]
    y = _cross(z, x)
    R = torch.stack([x, y, z], -2)
    t = -(R @ eye[..., None])[..., 0]
    return R, t


def camera_center(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Camera centre in the object frame, ``-R^T @ t``.

    Args:
        R: ``(..., 3, 3)``; t: ``(..., 3)`` (broadcast).

    Returns:
        ``(..., 3)``.

    >>> R, t = angles_to_pose(math.pi / 2, 0.0, 0.0, 5.0)
    >>> [round(v, 6) + 0.0 for v in camera_center(R, t).tolist()]
    [5.0, 0.0, 0.0]
    """
    _check_trailing("R", R, (3, 3))
    _check_trailing("t", t, (3,))
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def geodesic_distance(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Rotation angle (radians, in ``[0, pi]``) of ``R1^T @ R2``.

    Equal to ``arccos((trace(R1^T R2) - 1) / 2)`` (DESIGN.md's rotation error), computed
    as ``atan2(|v|, trace - 1)`` with ``v = (M21 - M12, M02 - M20, M10 - M01)`` for
    ``M = R1^T R2`` (``|v| = 2 sin(angle)``, ``trace - 1 = 2 cos(angle)``). This needs
    no clamping, is accurate at small angles, and its gradient is finite everywhere
    (zero at ``R1 == R2`` and at angle ``pi``, where the angle is not differentiable).

    Args:
        R1, R2: ``(..., 3, 3)`` rotations, broadcast.

    Returns:
        ``(...)`` angles.

    >>> from math import isclose
    >>> isclose(float(geodesic_distance(torch.eye(3), rotation_z(0.5))), 0.5, rel_tol=1e-6)
    True
    """
    _check_trailing("R1", R1, (3, 3))
    _check_trailing("R2", R2, (3, 3))
    M = R1.transpose(-1, -2) @ R2
    tr = M[..., 0, 0] + M[..., 1, 1] + M[..., 2, 2]
    v = torch.stack(
        [M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], -1
    )
    return torch.atan2(_safe_norm(v), tr - 1.0)


def mean_rotation(R: torch.Tensor) -> torch.Tensor:
    """The chordal L2 mean of rotations: the rotation nearest (Frobenius norm) to their
    arithmetic mean, i.e. the ``argmin`` over rotations ``M`` of ``sum_i ||M - R_i||_F^2``.

    It is the SVD projection ``U diag(1, 1, det(U V^T)) V^T`` of the mean matrix
    ``U S V^T`` (the rotation ``scipy.spatial.transform.Rotation.mean`` returns, batched
    and in torch). It is not unique where the mean matrix is degenerate (e.g. two
    rotations pi apart).

    Args:
        R: ``(..., N, 3, 3)`` rotations; the mean is over ``N``.

    Returns:
        ``(..., 3, 3)``.

    >>> import math
    >>> M = mean_rotation(rotation_z(torch.tensor([0.1, 0.3])))
    >>> math.isclose(float(geodesic_distance(M, rotation_z(0.2))), 0.0, abs_tol=1e-6)
    True
    """
    _check_trailing("R", R, (3, 3))
    if R.dim() < 3 or R.shape[-3] < 1:
        raise ValueError(f"R: expected (..., N, 3, 3) with N >= 1, got shape {tuple(R.shape)}")
    U, _, Vh = torch.linalg.svd(R.mean(dim=-3))
    d = torch.det(U @ Vh)
    ones = torch.ones_like(d)
    return U @ torch.diag_embed(torch.stack([ones, ones, d], dim=-1)) @ Vh


# --------------------------------------------------------------------------------------
# Intrinsics and projection
# --------------------------------------------------------------------------------------


def intrinsics(
    fx: torch.Tensor | float,
    fy: torch.Tensor | float,
    cx: torch.Tensor | float,
    cy: torch.Tensor | float,
    skew: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Pinhole intrinsics ``[[fx, skew, cx], [0, fy, cy], [0, 0, 1]]`` in pixels.

    Args:
        fx, fy: focal lengths (pixels, ``> 0``); cx, cy: principal point (pixels, our
            integer-centre convention); skew: ``K[0, 1]``. Each ``(...)`` or float,
            broadcast together.

    Returns:
        ``(..., 3, 3)``.

    >>> intrinsics(100.0, 100.0, 31.5, 31.5).tolist()
    [[100.0, 0.0, 31.5], [0.0, 100.0, 31.5], [0.0, 0.0, 1.0]]
    """
    names = ["fx", "fy", "cx", "cy", "skew"]
    fx, fy, cx, cy, skew = _broadcast(names, _as_tensors(names, [fx, fy, cx, cy, skew]))
    if bool((fx <= 0).any()) or bool((fy <= 0).any()):
        raise ValueError(
            "fx, fy: expected positive focal lengths, got min "
            f"{float(torch.minimum(fx, fy).min()):.4g}"
        )
    o, z = torch.ones_like(fx), torch.zeros_like(fx)
    return torch.stack(
        [torch.stack([fx, skew, cx], -1), torch.stack([z, fy, cy], -1), torch.stack([z, z, o], -1)],
        -2,
    )


def intrinsics_from_fov(fov: torch.Tensor | float, image_size: Sequence[int]) -> torch.Tensor:
    """Intrinsics with horizontal field of view ``fov`` (radians) across the image width.

    The field of view spans the full width, from the left edge ``u = -0.5`` to the right
    edge ``u = W - 0.5``: ``fx = fy = W / (2 tan(fov / 2))`` (square pixels), principal
    point at the image centre ``((W - 1) / 2, (H - 1) / 2)``. Matches a symmetric OpenGL
    frustum (``gluPerspective``) with this horizontal angle (see :func:`opengl_projection`).

    Args:
        fov: ``(...)`` or float in ``(0, pi)``.
        image_size: ``(H, W)``.

    Returns:
        ``(..., 3, 3)``.

    >>> K = intrinsics_from_fov(math.pi / 2, (48, 64))
    >>> [round(v, 4) for v in K[0].tolist()], K[1, 2].item()
    ([32.0, 0.0, 31.5], 23.5)
    """
    h, w = check_image_size(image_size)
    (fov,) = _as_tensors(["fov"], [fov])
    if bool(((fov <= 0) | (fov >= math.pi)).any()):
        raise ValueError(f"fov: expected radians in (0, pi), got {fov.flatten()[0].item():.4g}")
    f = w / (2.0 * torch.tan(fov / 2.0))
    return intrinsics(f, f, (w - 1) / 2.0, (h - 1) / 2.0)


def default_intrinsics(
    image_size: Sequence[int],
    focal: float | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Intrinsics to assume when none are known (what the command line uses).

    Principal point at the image centre ``((W - 1) / 2, (H - 1) / 2)``, square pixels,
    no skew, and ``fx = fy = focal`` if given, else
    ``DEFAULT_FOCAL_FACTOR * max(H, W) = 1.2 * max(H, W)`` pixels (COLMAP's prior for an
    unknown camera: about 45 degrees of field of view along the longer side). For
    render-and-compare fitting a wrong focal mostly trades off against the distance.

    Args:
        image_size: ``(H, W)``.
        focal: focal length in pixels (``> 0``), or ``None`` for the default.
        dtype, device: of the result (default dtype, CPU).

    Returns:
        ``(3, 3)``.

    >>> default_intrinsics((480, 640)).tolist()
    [[768.0, 0.0, 319.5], [0.0, 768.0, 239.5], [0.0, 0.0, 1.0]]
    """
    h, w = check_image_size(image_size)
    f = DEFAULT_FOCAL_FACTOR * max(h, w) if focal is None else float(focal)
    if not math.isfinite(f) or f <= 0:
        raise ValueError(f"focal: expected a positive focal length in pixels, got {focal!r}")
    dtype = dtype or torch.get_default_dtype()
    K = torch.tensor(
        [[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]], dtype=dtype
    )
    return K.to(device) if device is not None else K


def project_points(
    points: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project points to pixels: ``X_cam = R @ X + t``, ``(u, v) = K`` applied to ``X_cam / z``.

    ``u = fx x/z + skew y/z + cx``, ``v = fy y/z + cy`` (pixel centres at integers, see
    the module docstring). No clamping: points with ``z <= 0`` (behind or on the camera
    plane) give meaningless or infinite ``uv``; mask them with ``z > 0``.

    Args:
        points: ``(B, N, 3)``, in the object frame when ``R``/``t`` are given, else in the
            camera frame.
        K: ``(3, 3)`` or ``(B, 3, 3)``, skew allowed.
        R: ``(3, 3)`` or ``(B, 3, 3)`` (default identity).
        t: ``(3,)`` or ``(B, 3)`` (default zero).

    Returns:
        ``uv (B, N, 2)`` pixel coordinates and ``z (B, N)`` camera depth.

    >>> K = intrinsics(100.0, 100.0, 32.0, 32.0)
    >>> R, t = angles_to_pose(0.0, 0.0, 0.0, 5.0)
    >>> pts = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    >>> uv, z = project_points(pts, K, R, t)
    >>> uv.tolist(), z.tolist()
    ([[[32.0, 32.0], [32.0, 12.0], [52.0, 32.0]]], [[5.0, 5.0, 5.0]])
    """
    b = check_shape("points", points, ["B", "N", 3])["B"]
    check_floating("points", points)
    check_finite("points", points)
    _check_maybe_batched("K", K, b, [3, 3])
    _check_K("K", K)
    X = points
    if R is not None:
        _check_maybe_batched("R", R, b, [3, 3])
        _check_trailing("R", R, (3, 3))
        Rb = R if R.dim() == 3 else R[None]
        X = X @ Rb.transpose(-1, -2)
    if t is not None:
        _check_maybe_batched("t", t, b, [3])
        _check_trailing("t", t, (3,))
        X = X + (t if t.dim() == 2 else t[None])[:, None, :]
    z = X[..., 2]
    xn = X[..., :2] / z[..., None]
    Kb = K if K.dim() == 3 else K[None]
    uv = xn @ Kb[:, :2, :2].transpose(-1, -2) + Kb[:, None, :2, 2]
    return uv, z


# --------------------------------------------------------------------------------------
# PyTorch3D
# --------------------------------------------------------------------------------------

_FLIP_XY = (-1.0, -1.0, 1.0)
_FLIP_YZ = (1.0, -1.0, -1.0)


def _flip(v: torch.Tensor, signs: Sequence[float], dim: int) -> torch.Tensor:
    s = torch.tensor(signs, dtype=v.dtype, device=v.device)
    return v * (s if dim == -1 else s[:, None])


def _ndc_frame(image_size: Sequence[int], match_rasterizer: bool) -> tuple[float, float, float]:
    h, w = check_image_size(image_size)
    s = min(h, w) / 2.0
    if match_rasterizer:
        return s, (w - 1) / 2.0, (h - 1) / 2.0
    return s, w / 2.0, h / 2.0


def opencv_to_pytorch3d(
    R: torch.Tensor,
    t: torch.Tensor,
    K: torch.Tensor,
    image_size: Sequence[int],
    *,
    match_rasterizer: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV pose and intrinsics to PyTorch3D ``PerspectiveCameras`` (NDC, ``in_ndc=True``).

    PyTorch3D uses row vectors, ``X_view = X_world @ R_p3d + T_p3d``, view axes +X left,
    +Y up, +Z forward, and projects ``ndc = focal_length * (X, Y) / Z + principal_point``
    with NDC scaled by ``s = min(H, W) / 2`` pixels per unit. With
    ``F = diag(-1, -1, 1)`` and ``(c0x, c0y)`` below::

        R_p3d = R^T @ F            T_p3d = F @ t            (X_view = F @ X_cam)
        focal_length = (fx, fy) / s
        principal_point = -((cx, cy) - (c0x, c0y)) / s

    With ``match_rasterizer=False`` (default), ``(c0x, c0y) = (W / 2, H / 2)``, exactly
    what ``pytorch3d.utils.cameras_from_opencv_projection`` does; that function treats
    pixel centres as half-integers, so a mesh rendered by PyTorch3D's rasterizer with
    these cameras appears half a pixel up and to the left of where our convention
    (and :func:`project_points`) puts it. With ``match_rasterizer=True``,
    ``(c0x, c0y) = ((W - 1) / 2, (H - 1) / 2)``: PyTorch3D's rasterizer samples column
    ``j`` at NDC ``x = ((W - 1) / 2 - j) / s`` (row ``i`` at ``((H - 1) / 2 - i) / s``),
    so its pixel ``(i, j)`` then sees exactly our pixel centre ``(u, v) = (j, i)``.

    Args:
        R: ``(..., 3, 3)``; t: ``(..., 3)``; K: ``(..., 3, 3)`` without skew (broadcast).
        image_size: ``(H, W)``.
        match_rasterizer: see above.

    Returns:
        ``R_p3d (..., 3, 3)``, ``T_p3d (..., 3)``, ``focal_length (..., 2)``,
        ``principal_point (..., 2)``; PyTorch3D wants a leading batch dim ``N``.

    Raises:
        ValueError: bad shapes, skewed or singular ``K``, bad ``image_size``.

    >>> R, t = angles_to_pose(0.0, 0.0, 0.0, 5.0)
    >>> K = intrinsics(100.0, 100.0, 32.0, 32.0)
    >>> R_p3d, T_p3d, f, p = opencv_to_pytorch3d(R, t, K, (64, 64))
    >>> (T_p3d + 0.0).tolist(), f.tolist(), (p + 0.0).tolist()
    ([0.0, 0.0, 5.0], [3.125, 3.125], [0.0, 0.0])
    """
    _check_trailing("R", R, (3, 3))
    _check_trailing("t", t, (3,))
    _check_K("K", K, allow_skew=False)
    s, c0x, c0y = _ndc_frame(image_size, match_rasterizer)
    R_p3d = _flip(R.transpose(-1, -2), _FLIP_XY, -1)  # R^T @ F: negate columns 0, 1
    T_p3d = _flip(t, _FLIP_XY, -1)
    focal = torch.stack([K[..., 0, 0], K[..., 1, 1]], -1) / s
    c0 = torch.tensor([c0x, c0y], dtype=K.dtype, device=K.device)
    principal = -(K[..., :2, 2] - c0) / s
    return R_p3d, T_p3d, focal, principal


def pytorch3d_to_opencv(
    R_p3d: torch.Tensor,
    T_p3d: torch.Tensor,
    focal_length: torch.Tensor,
    principal_point: torch.Tensor,
    image_size: Sequence[int],
    *,
    match_rasterizer: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`opencv_to_pytorch3d` (formulas there), like PyTorch3D's
    ``opencv_from_cameras_projection`` for ``match_rasterizer=False``.

    ``R = F @ R_p3d^T``, ``t = F @ T_p3d``, ``(fx, fy) = s * focal_length``,
    ``(cx, cy) = (c0x, c0y) - s * principal_point``.

    Args:
        R_p3d: ``(..., 3, 3)``; T_p3d: ``(..., 3)``; focal_length: ``(..., 2)`` (NDC,
            ``> 0``; a scalar focal should be repeated); principal_point: ``(..., 2)`` (NDC).
        image_size: ``(H, W)``.
        match_rasterizer: as in :func:`opencv_to_pytorch3d`.

    Returns:
        ``R (..., 3, 3)``, ``t (..., 3)``, ``K (..., 3, 3)``.

    >>> R, t, K = pytorch3d_to_opencv(torch.diag(torch.tensor([-1.0, -1.0, 1.0])),
    ...     torch.tensor([0.0, 0.0, 5.0]), torch.tensor([3.125, 3.125]), torch.zeros(2), (64, 64))
    >>> (R + 0.0).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    >>> K.tolist()
    [[100.0, 0.0, 32.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]]
    """
    _check_trailing("R_p3d", R_p3d, (3, 3))
    _check_trailing("T_p3d", T_p3d, (3,))
    _check_trailing("focal_length", focal_length, (2,))
    _check_trailing("principal_point", principal_point, (2,))
    if bool((focal_length <= 0).any()):
        raise ValueError(
            "focal_length: expected positive NDC focal lengths, got min "
            f"{float(focal_length.min()):.4g}"
        )
    s, c0x, c0y = _ndc_frame(image_size, match_rasterizer)
    R = _flip(R_p3d, _FLIP_XY, -1).transpose(-1, -2)
    t = _flip(T_p3d, _FLIP_XY, -1)
    c0 = torch.tensor([c0x, c0y], dtype=principal_point.dtype, device=principal_point.device)
    f = focal_length * s
    c = c0 - s * principal_point
    f, c = _broadcast(["focal_length", "principal_point"], [f, c])
    K = intrinsics(f[..., 0], f[..., 1], c[..., 0], c[..., 1])
    return R, t, K


def opencv_to_pytorch3d_view(points: torch.Tensor) -> torch.Tensor:
    """Camera-frame points from OpenCV (x right, y down) to PyTorch3D view space
    (x left, y up): ``(x, y, z) -> (-x, -y, z)``. Its own inverse.

    Args:
        points: ``(..., 3)``.

    Returns:
        ``(..., 3)``.

    >>> opencv_to_pytorch3d_view(torch.tensor([1.0, 2.0, 3.0])).tolist()
    [-1.0, -2.0, 3.0]
    """
    _check_trailing("points", points, (3,))
    return _flip(points, _FLIP_XY, -1)


def pytorch3d_to_opencv_view(points: torch.Tensor) -> torch.Tensor:
    """PyTorch3D view-space points to the OpenCV camera frame: ``(x, y, z) -> (-x, -y, z)``.

    Args:
        points: ``(..., 3)``.

    Returns:
        ``(..., 3)``.

    >>> pytorch3d_to_opencv_view(torch.tensor([-1.0, -2.0, 3.0])).tolist()
    [1.0, 2.0, 3.0]
    """
    return opencv_to_pytorch3d_view(points)


# --------------------------------------------------------------------------------------
# OpenGL
# --------------------------------------------------------------------------------------


def opencv_to_opengl(R: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV pose to OpenGL eye coordinates (x right, y up, z backward).

    ``R_gl = G @ R``, ``t_gl = G @ t`` with ``G = diag(1, -1, -1)`` (rows y and z of
    ``R`` negated), so ``X_eye = R_gl @ X_obj + t_gl = G @ X_cam`` and visible points
    have ``z_eye < 0``. The OpenGL view matrix is ``[[R_gl, t_gl], [0, 0, 0, 1]]``.

    Args:
        R: ``(..., 3, 3)``; t: ``(..., 3)``.

    Returns:
        ``R_gl (..., 3, 3)``, ``t_gl (..., 3)``.

    >>> R_gl, t_gl = opencv_to_opengl(torch.eye(3), torch.tensor([0.0, 0.0, 5.0]))
    >>> torch.diagonal(R_gl).tolist(), (t_gl + 0.0).tolist()
    ([1.0, -1.0, -1.0], [0.0, 0.0, -5.0])
    """
    _check_trailing("R", R, (3, 3))
    _check_trailing("t", t, (3,))
    return _flip(R, _FLIP_YZ, -2), _flip(t, _FLIP_YZ, -1)


def opengl_to_opencv(R_gl: torch.Tensor, t_gl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`opencv_to_opengl` (the same flip): ``R = G @ R_gl``, ``t = G @ t_gl``.

    Args:
        R_gl: ``(..., 3, 3)``; t_gl: ``(..., 3)``.

    Returns:
        ``R (..., 3, 3)``, ``t (..., 3)``.

    >>> R, t = opengl_to_opencv(*opencv_to_opengl(torch.eye(3), torch.ones(3)))
    >>> R.tolist() == torch.eye(3).tolist(), t.tolist()
    (True, [1.0, 1.0, 1.0])
    """
    _check_trailing("R_gl", R_gl, (3, 3))
    _check_trailing("t_gl", t_gl, (3,))
    return _flip(R_gl, _FLIP_YZ, -2), _flip(t_gl, _FLIP_YZ, -1)


def opengl_projection(
    K: torch.Tensor, image_size: Sequence[int], near: float, far: float
) -> torch.Tensor:
    """OpenGL projection matrix (eye -> clip coordinates) equivalent to ``K``.

    Convention: eye coordinates as in :func:`opencv_to_opengl` (``z_eye = -z_cam``); NDC
    ``x, y, z`` in ``[-1, 1]`` with x right, **y up** and ``z = -1`` at ``near``, ``+1`` at
    ``far``; ``glViewport(0, 0, W, H)`` over the full image, so window coordinates
    ``x_w = (x_ndc + 1) W / 2``, ``y_w = (y_ndc + 1) H / 2`` with the origin at the
    bottom-left corner and pixel centres at ``integer + 0.5``. Our pixel ``(u, v)`` (centres
    at integers, origin at the top-left pixel's centre) is then
    ``u = x_w - 0.5``, ``v = H - 0.5 - y_w``. The matrix making this agree with ``K``
    (``fx, fy, skew s, cx, cy``) is::

        [[2 fx / W, -2 s / W, (W - 1 - 2 cx) / W,                        0],
         [0,         2 fy / H, (2 cy + 1 - H) / H,                        0],
         [0,         0,        -(far + near) / (far - near), -2 far near / (far - near)],
         [0,         0,        -1,                                        0]]

    (e.g. ``cx = (W - 1) / 2`` gives a symmetric frustum). Flip the image rows when
    reading back a framebuffer whose first row is the bottom one.

    Args:
        K: ``(..., 3, 3)``, skew allowed.
        image_size: ``(H, W)``.
        near, far: clipping distances, ``0 < near < far``.

    Returns:
        ``(..., 4, 4)``; multiply column vectors ``P @ (x_eye, y_eye, z_eye, 1)``.

    >>> P = opengl_projection(intrinsics(32.0, 32.0, 31.5, 31.5), (64, 64), 1.0, 3.0)
    >>> (P + 0.0).tolist()
    [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, -2.0, -3.0], [0.0, 0.0, -1.0, 0.0]]
    """
    _check_K("K", K)
    h, w = check_image_size(image_size)
    near, far = float(near), float(far)
    if not (math.isfinite(near) and math.isfinite(far) and 0 < near < far):
        raise ValueError(f"near, far: expected 0 < near < far, got near={near}, far={far}")
    P = K.new_zeros(*K.shape[:-2], 4, 4)
    P[..., 0, 0] = 2.0 * K[..., 0, 0] / w
    P[..., 0, 1] = -2.0 * K[..., 0, 1] / w
    P[..., 0, 2] = (w - 1.0 - 2.0 * K[..., 0, 2]) / w
    P[..., 1, 1] = 2.0 * K[..., 1, 1] / h
    P[..., 1, 2] = (2.0 * K[..., 1, 2] + 1.0 - h) / h
    P[..., 2, 2] = -(far + near) / (far - near)
    P[..., 2, 3] = -2.0 * far * near / (far - near)
    P[..., 3, 2] = -1.0
    return P


def intrinsics_from_opengl_projection(P: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`opengl_projection` (same convention): the ``K`` it was built from.

    ``fx = P00 W / 2``, ``skew = -P01 W / 2``, ``cx = (W - 1 - P02 W) / 2``,
    ``fy = P11 H / 2``, ``cy = (P12 H + H - 1) / 2``. ``near`` and ``far`` are not needed.

    Args:
        P: ``(..., 4, 4)`` perspective projection: last row ``(0, 0, -1, 0)``,
            ``P[1, 0] = P[0, 3] = P[1, 3] = P[2, 0] = P[2, 1] = 0``, ``P00, P11 > 0``.
        image_size: ``(H, W)``.

    Returns:
        ``K (..., 3, 3)``.

    Raises:
        ValueError: ``P`` is not of that form.

    >>> K = intrinsics(50.0, 60.0, 30.0, 20.0, skew=1.0)
    >>> P = opengl_projection(K, (40, 64), 0.1, 10.0)
    >>> torch.allclose(intrinsics_from_opengl_projection(P, (40, 64)), K)
    True
    """
    _check_trailing("P", P, (4, 4))
    h, w = check_image_size(image_size)
    expected_zero = torch.stack(
        [
            P[..., 3, 0],
            P[..., 3, 1],
            P[..., 3, 3],
            P[..., 3, 2] + 1.0,
            P[..., 1, 0],
            P[..., 0, 3],
            P[..., 1, 3],
            P[..., 2, 0],
            P[..., 2, 1],
        ],
        -1,
    )
    if bool((expected_zero.abs() > 1e-5).any()):
        raise ValueError(
            "P: expected an OpenGL perspective projection (last row (0, 0, -1, 0), "
            "P[1,0] = P[0,3] = P[1,3] = P[2,0] = P[2,1] = 0)"
        )
    if bool((P[..., 0, 0] <= 0).any()) or bool((P[..., 1, 1] <= 0).any()):
        raise ValueError("P: expected positive P[0,0] and P[1,1] (a singular projection has none)")
    fx = P[..., 0, 0] * w / 2.0
    skew = -P[..., 0, 1] * w / 2.0
    cx = (w - 1.0 - P[..., 0, 2] * w) / 2.0
    fy = P[..., 1, 1] * h / 2.0
    cy = (P[..., 1, 2] * h + h - 1.0) / 2.0
    return intrinsics(fx, fy, cx, cy, skew)
