"""Triangle rasterization as exact ray casting through pixel centres.

Conventions are those of DESIGN.md ("Conventions"): vertices are given in the OpenCV
camera frame (x right, y down, z forward), ``K`` is in pixels and pixel (row i, column j)
has its centre at ``(u, v) = (j, i)``.

Every pixel centre ``(u, v)`` defines a ray ``X = s * K^-1 (u, v, 1)`` from the camera
centre; a face covers the pixel when the ray meets the triangle at a camera depth
``z >= z_near``. The hit's barycentric coordinates are the weights of the 3D hit point,
i.e. they are *perspective-correct*, and ``zbuf`` is the camera z of the hit. Because
hits are computed in 3D, faces crossing the camera plane or lying partly behind it are
handled exactly (the part with ``z < z_near`` is clipped away), with no special case.

Two implementations share these semantics:

* :func:`rasterize` — the fast path: per face, only the pixels inside the bounding box of
  its (near-clipped) projection are tested, all faces at once, vectorized, in chunks
  whose size bounds memory; the depth test is a scatter-min (``faces_per_pixel=1``) or a
  sort (``faces_per_pixel > 1``).
* :func:`rasterize_reference` — a plain loop over images, rows and columns testing every
  face; not optimised, kept for comparison in tests (outputs and gradients).

Which face covers a pixel is not differentiable (as in PyTorch3D with ``blur_radius=0``);
barycentrics and depth are, w.r.t. ``verts`` (and ``K``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_image_size, check_intrinsics, check_mesh

__all__ = ["Fragments", "rasterize", "rasterize_reference", "DEFAULT_MAX_CANDIDATES"]

#: Default number of (face, pixel) pairs tested at once by :func:`rasterize`. Each pair
#: costs roughly 100 bytes of temporary memory, so the default bounds the search's
#: working set to a few hundred MB whatever the mesh size.
DEFAULT_MAX_CANDIDATES = 1 << 22


@dataclass(frozen=True)
class Fragments:
    """The output of rasterization, PyTorch3D-like.

    Attributes:
        pix_to_face: ``(B, H, W, k)`` int64, index into ``faces`` (the shared ``(F, 3)``
            topology, *not* a packed index), ``-1`` where fewer than ``k`` faces cover
            the pixel. Sorted nearest first along ``k``.
        bary: ``(B, H, W, k, 3)`` perspective-correct barycentric coordinates of the hit
            with respect to the face's three vertices (they sum to 1); ``-1`` on
            background.
        zbuf: ``(B, H, W, k)`` camera-frame z of the hit (same units as ``verts``);
            ``-1`` on background.
    """

    pix_to_face: torch.Tensor
    bary: torch.Tensor
    zbuf: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """``(B, H, W)`` bool, True where at least one face covers the pixel."""
        return self.pix_to_face[..., 0] >= 0


def _check_inputs(verts, faces, K, image_size, faces_per_pixel):
    b = check_mesh("verts", verts, faces)
    K = check_intrinsics(K, b, verts)
    h, w = check_image_size(image_size)
    if int(faces_per_pixel) < 1:
        raise ValueError(f"faces_per_pixel: expected >= 1, got {faces_per_pixel}")
    return K, h, w


def _intrinsics_table(K: torch.Tensor) -> torch.Tensor:
    """``(B, 5)`` float64 table ``[fx, s, cx, fy, cy]`` of a ``(B, 3, 3)`` intrinsics tensor."""
    return torch.stack([K[:, 0, 0], K[:, 0, 1], K[:, 0, 2], K[:, 1, 1], K[:, 1, 2]], dim=1).to(torch.float64)


def _face_bounds(tri: torch.Tensor, kp: torch.Tensor, h: int, w: int, z_near: float, clip: bool):
    """Integer pixel bounding boxes of the faces' projections after clipping at ``z_near``.

    ``tri (N, 3, 3)`` camera-frame vertices and ``kp (N, 5)`` their image's intrinsics
    (see :func:`_intrinsics_table`), float64. ``clip`` says whether any face has a vertex
    closer than ``z_near``; if not, the clipping step is skipped. Returns ``x0, x1, y0,
    y1`` (N,) int64, inclusive; empty boxes have ``x1 < x0`` or ``y1 < y0``.
    """
    fx, s, cx, fy, cy = (c[:, None] for c in kp.unbind(1))
    if clip:
        # Points of the clipped polygon: the 3 vertices (valid if in front of z_near) and
        # the 3 edge / near-plane intersections (valid if the edge crosses the plane).
        z = tri[..., 2]
        nxt = tri.roll(-1, dims=1)
        zn = nxt[..., 2]
        crosses = (z - z_near) * (zn - z_near) < 0
        tcross = ((z_near - z) / torch.where(crosses, zn - z, torch.ones_like(z))).unsqueeze(-1)
        pts = torch.cat([tri, tri + tcross * (nxt - tri)], dim=1)  # (N, 6, 3)
        valid = torch.cat([z >= z_near, crosses], dim=1)
        pz = pts[..., 2].clamp_min(z_near * 0.5)
        xn, yn = pts[..., 0] / pz, pts[..., 1] / pz
    else:
        xn, yn = tri[..., 0] / tri[..., 2], tri[..., 1] / tri[..., 2]
    u = torch.addcmul(torch.addcmul(cx, fx, xn), s, yn)
    v = torch.addcmul(cy, fy, yn)
    if clip:
        inf = torch.tensor(float("inf"), dtype=u.dtype, device=u.device)
        umin, umax = torch.where(valid, u, inf).amin(1), torch.where(valid, u, -inf).amax(1)
        vmin, vmax = torch.where(valid, v, inf).amin(1), torch.where(valid, v, -inf).amax(1)
    else:
        umin, umax = u.amin(1), u.amax(1)
        vmin, vmax = v.amin(1), v.amax(1)
    # Clamp in float first (values may be huge or infinite), then round to pixel centres.
    eps = 1e-6
    x0 = (umin - eps).clamp(-1, w).ceil().long().clamp_min(0)
    x1 = (umax + eps).clamp(-1, w).floor().long().clamp_max(w - 1)
    y0 = (vmin - eps).clamp(-1, h).ceil().long().clamp_min(0)
    y1 = (vmax + eps).clamp(-1, h).floor().long().clamp_max(h - 1)
    return x0, x1, y0, y1


def _face_forms(tri: torch.Tensor, kp: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor):
    """Per-face linear forms in pixel offsets from the face's box corner ``(x0, y0)``.

    The ray through pixel ``(x0 + lx, y0 + ly)`` is ``d = K^-1 (u, v, 1)``. With
    ``e1 = v1 - v0``, ``e2 = v2 - v0`` and ``n = e1 x e2`` (camera frame), the hit has
    barycentrics ``b1 = d.(e2 x v0) / d.n``, ``b2 = d.(v0 x e1) / d.n`` and depth
    ``z = v0.n / d.n``. Each ``q.d`` is linear in ``(lx, ly)``: ``a*lx + b*ly + c``.
    Working in offsets from the box corner keeps every term small, so evaluating the
    forms per pixel loses no precision.

    Args:
        tri: ``(N, 3, 3)`` camera-frame vertices (may require grad).
        kp: ``(N, 5)`` intrinsics ``[fx, s, cx, fy, cy]`` of each face's image.
        x0, y0: ``(N,)`` int64 box corners.

    Returns:
        ``forms (N, 3, 3)`` (rows ``d.n``, ``d.(e2 x v0)``, ``d.(v0 x e1)``; columns
        ``a, b, c``) and ``w (N,)`` ``= v0.n`` so that ``z = w / (d.n)``.
    """
    v0 = tri[:, 0]
    # rows of A: e1, e2, v0; rows of q = A x roll(A): n = e1 x e2, e2 x v0, v0 x e1
    A = torch.cat([tri[:, 1:] - v0[:, None], v0[:, None]], dim=1)
    q = torch.linalg.cross(A, A.roll(-1, dims=1), dim=-1)  # (N, 3, 3): rows n, m1, m2
    # (a, b, c) = q @ M with d = (xn, yn, 1), xn = (u - cx - s * yn) / fx, yn = (v - cy) / fy
    # and (u, v) = (x0 + lx, y0 + ly).
    kp = kp.to(tri.dtype)
    fx, s, cx, fy, cy = kp.unbind(1)
    yc = (y0.to(tri.dtype) - cy) / fy
    xc = (x0.to(tri.dtype) - cx - s * yc) / fx
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    M = torch.stack([1 / fx, -s / (fx * fy), xc, zero, 1 / fy, yc, zero, zero, one], dim=1).view(-1, 3, 3)
    return torch.bmm(q, M), (v0 * q[:, 0]).sum(-1)


def _chunks(sizes: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Split consecutive items into ranges whose ``sizes`` sum to at most ``budget``.

    An item larger than the budget forms a range of its own.
    """
    if sizes.numel() == 0:
        return []
    ends = torch.cumsum(sizes, 0)
    if int(ends[-1]) <= budget:
        return [(0, sizes.numel())]
    out, start = [], 0
    while start < sizes.numel():
        offset = int(ends[start - 1]) if start > 0 else 0
        stop = max(int(torch.searchsorted(ends, offset + budget, right=True)), start + 1)
        out.append((start, stop))
        start = stop
    return out


def _span_bounds(forms, w_num, bh, z_near, clip):
    """Per-face linear bounds on ``lx`` along each row, and the rows that can be covered.

    A pixel is covered when ``b0, b1, b2 >= 0`` and ``z >= z_near``. A hit has
    ``sign(d.n) = sign(w)`` (since ``z = w / d.n > 0``), so with ``sgn = sign(w)`` these
    are the half-planes ``sgn * num_i >= 0`` (``num_0 = d.n - num_1 - num_2``) and, when
    faces cross the near plane (``clip``), ``|w| - z_near * sgn * d.n >= 0``. Each
    ``a * lx + b * ly + c >= 0`` bounds ``lx`` from below (``a > 0``) or above
    (``a < 0``) by ``p * ly + q``, or, when ``a == 0``, restricts the rows.

    Returns ``lower (N, 2, M)`` and ``upper (N, 2, M)`` (``[p, q]`` per constraint, unused
    slots ``(0, -1e300)`` / ``(0, 1e300)``), and the row range ``ly_lo, ly_hi`` (N,) int64.
    """
    sgn = torch.sign(w_num)[:, None, None]
    den, n1, n2 = forms.unbind(1)
    rows = [den - n1 - n2, n1, n2]
    if clip:
        near = -z_near * den
        near[:, 2] += w_num.abs() * sgn[:, 0, 0]  # sgn is applied below: |w| = sgn * w
        rows.append(near)
    half = torch.stack(rows, dim=1) * sgn  # (N, M, 3): a, b, c
    a, b, c = half.unbind(-1)
    flat = a == 0
    safe_a = a + flat.to(a.dtype)  # 1 where a == 0 (those slots are made inactive below)
    p, q = -b / safe_a, -c / safe_a
    # Arithmetic selection (faster than where() on the CPU): pos = 1 if a > 0 else 0.
    pos = a.clamp_min(0) / safe_a
    neg = (-a).clamp_min(0) / safe_a.abs()
    big = 1e300
    lower = torch.stack([p * pos, q * pos - (1 - pos) * big], dim=1)
    upper = torch.stack([p * neg, q * neg + (1 - neg) * big], dim=1)
    ly_lo = torch.zeros_like(bh)
    ly_hi = bh - 1
    some = flat.any(1).nonzero().squeeze(1)
    if some.numel():  # a == 0: the constraint b * ly + c >= 0 only selects rows
        fa, fb, fc = flat[some], b[some], c[some]
        inf = torch.full_like(fb, float("inf"))
        r = -fc / torch.where(fb == 0, torch.ones_like(fb), fb)
        eps = 1e-7
        lo_rows = torch.where(fa & (fb > 0), (r - eps).ceil(), -inf).amax(1)
        hi_rows = torch.where(fa & (fb < 0), (r + eps).floor(), inf).amin(1)
        impossible = (fa & (fb == 0) & (fc < 0)).any(1)
        ly_lo = ly_lo.index_copy(0, some, lo_rows.clamp(0, 2**40).long())
        hi = torch.minimum(hi_rows.clamp(-1, 2**40).long(), ly_hi.index_select(0, some))
        ly_hi = ly_hi.index_copy(0, some, torch.where(impossible, torch.full_like(hi, -1), hi))
    return lower, upper, ly_lo, ly_hi


def _search(verts, faces, K, h, w, k, cull_backfaces, z_near, max_candidates):
    """Find, per pixel, the ``k`` nearest covering faces. No gradients.

    Returns ``(kept, hits)``: ``kept`` holds the visible faces' data (``kp`` intrinsics,
    box corners ``x0``, ``y0``, linear ``forms`` and ``w`` of :func:`_face_forms`, ``face``
    index into ``faces``, ``b`` image index); ``hits = (pix, slot, fi)`` has one entry
    per covered (pixel, slot): flat pixel index into ``B*H*W``, slot in ``[0, k)`` and the
    index of the face in ``kept``.

    Depth order uses ``z`` rounded to float32 (ties broken by face index), packed with the
    row index into one int64 key so that one scatter-min resolves visibility.
    """
    bsz, nf = verts.shape[0], faces.shape[0]
    device = verts.device
    tri = verts.detach().to(torch.float64)[:, faces].reshape(bsz * nf, 3, 3)
    kp_img = _intrinsics_table(K)
    b_of_face = torch.arange(bsz, device=device).repeat_interleave(nf)
    # Drop faces that cannot be seen: degenerate or edge-on (w == 0), back-facing when
    # culling (w > 0: the camera is on the inner side), or entirely behind z_near.
    v0 = tri[:, 0]
    wdot = (v0 * torch.linalg.cross(tri[:, 1] - v0, tri[:, 2] - v0, dim=-1)).sum(-1)
    keep = (wdot < 0) if cull_backfaces else (wdot != 0)
    keep &= tri[..., 2].amax(1) >= z_near
    idx = keep.nonzero().squeeze(1)
    tri, b_of_face = tri.index_select(0, idx), b_of_face.index_select(0, idx)
    kp = kp_img.index_select(0, b_of_face)
    clip = bool((tri[..., 2].amin(1) < z_near).any())
    x0, x1, y0, y1 = _face_bounds(tri, kp, h, w, z_near, clip)
    bw, bh = (x1 - x0 + 1).clamp_min(0), (y1 - y0 + 1).clamp_min(0)
    nonempty = ((bw > 0) & (bh > 0)).nonzero().squeeze(1)
    idx = idx.index_select(0, nonempty)
    tri, b_of_face, kp = (x.index_select(0, nonempty) for x in (tri, b_of_face, kp))
    x0, y0, bw, bh = (x.index_select(0, nonempty) for x in (x0, y0, bw, bh))
    forms, w_num = _face_forms(tri, kp, x0, y0)
    kept = dict(kp=kp, x0=x0, y0=y0, forms=forms, w=w_num, b=b_of_face, face=idx % nf)
    lower, upper, ly_lo, ly_hi = _span_bounds(forms, w_num, bh, z_near, clip)
    nrows = (ly_hi - ly_lo + 1).clamp_min(0)
    if int(nrows.sum()) >= 1 << 32:
        raise ValueError("rasterize: too many (face, row) pairs in one call (over 2**32); split the batch")
    corner = b_of_face * (h * w) + y0 * w + x0  # flat index of each box's corner pixel

    npix = bsz * h * w
    low_bits = 32  # key = float32 bits of z (positive) << 32 | global row index
    best_key = None  # k == 1: running min key per pixel
    best = None  # k > 1: running (pix, key) candidates
    row_face = []  # global row index -> kept face index
    row_offset = 0
    for lo, hi in _chunks(bw * nrows, max_candidates):
        # Rows of the chunk's faces.
        nr = nrows[lo:hi]
        rface = torch.repeat_interleave(torch.arange(lo, hi, device=device), nr)
        rstart = torch.cumsum(nr, 0) - nr
        ly = torch.arange(rface.numel(), device=device) - rstart.repeat_interleave(nr) + ly_lo[rface]
        lyf = ly.to(torch.float64)
        lo_pq = lower.index_select(0, rface)  # (R, 2, M)
        up_pq = upper.index_select(0, rface)
        lx_lo = torch.addcmul(lo_pq[:, 1], lo_pq[:, 0], lyf[:, None]).amax(1)
        lx_hi = torch.addcmul(up_pq[:, 1], up_pq[:, 0], lyf[:, None]).amin(1)
        eps = 1e-7
        xl = (lx_lo - eps).clamp(0, float(w)).ceil()
        xr = torch.minimum((lx_hi + eps).clamp(-1, float(w)).floor(), (bw.index_select(0, rface) - 1).to(xl.dtype))
        count = (xr - xl + 1).clamp_min(0).long()
        # Per-row affine maps from the pixel's running index j: lx = j - s, pix = j + pbase,
        # d.n = a * j + r (float64: j < 2**31, so a * j + r keeps ~1e-7 relative accuracy).
        s = (torch.cumsum(count, 0) - count) - xl.long()
        den = forms.index_select(0, rface)[:, 0]  # (R, 3): a, b, c of d.n
        table = torch.stack(
            [den[:, 0], torch.addcmul(den[:, 2], den[:, 1], lyf) - den[:, 0] * s.to(torch.float64),
             w_num.index_select(0, rface)],
            dim=0,
        )  # (3, R)
        pbase = corner.index_select(0, rface) + ly * w - s
        row = torch.repeat_interleave(torch.arange(rface.numel(), device=device), count)
        j = torch.arange(row.numel(), device=device)
        tab = table.index_select(1, row)
        z = tab[2] / torch.addcmul(tab[1], tab[0], j.to(torch.float64))
        pix = pbase.index_select(0, row) + j
        key = (z.to(torch.float32).view(torch.int32).to(torch.int64) << low_bits) + (row + row_offset)
        row_face.append(rface)
        row_offset += rface.numel()
        if k == 1:
            chunk_key = torch.full((npix,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
            chunk_key.scatter_reduce_(0, pix, key, reduce="amin")
            best_key = chunk_key if best_key is None else torch.minimum(best_key, chunk_key)
        else:
            if best is not None:
                pix, key = torch.cat([best[0], pix]), torch.cat([best[1], key])
            best = _top_k(pix, key, k)

    empty = torch.empty(0, dtype=torch.int64, device=device)
    if best_key is None and best is None:
        return kept, (empty, empty, empty)
    row_face = torch.cat(row_face)
    mask = (1 << low_bits) - 1
    if k == 1:
        pix = (best_key != torch.iinfo(torch.int64).max).nonzero().squeeze(1)
        rows = best_key.index_select(0, pix) & mask
        return kept, (pix, torch.zeros_like(pix), row_face.index_select(0, rows))
    pix, key = best
    return kept, (pix, _rank_in_group(pix), row_face.index_select(0, key & mask))


def _rank_in_group(sorted_keys: torch.Tensor) -> torch.Tensor:
    """Position of each element within its run of equal values in a sorted 1D tensor."""
    n = sorted_keys.numel()
    pos = torch.arange(n, device=sorted_keys.device)
    new_group = torch.ones(n, dtype=torch.bool, device=sorted_keys.device)
    new_group[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_start = torch.where(new_group, pos, torch.zeros_like(pos)).cummax(0).values
    return pos - group_start


def _top_k(pix, key, k):
    """Keep the ``k`` smallest keys per pixel, sorted by (pixel, key)."""
    order = torch.sort(key).indices
    order = order[torch.sort(pix[order], stable=True).indices]
    pix, key = pix[order], key[order]
    keep = _rank_in_group(pix) < k
    return pix[keep], key[keep]


def _assemble(verts, faces, K, h, w, k, kept, hits):
    """Barycentrics and depth of the hits, scattered into Fragments.

    The per-face forms found by the search are evaluated at the hit pixels. When ``verts``
    or ``K`` require grad, the forms of the kept faces are recomputed with autograd (same
    arithmetic, so the same values) and gradients flow through ``bary`` and ``zbuf``.
    """
    pix, slot, fi = hits
    bsz, dtype, device = verts.shape[0], verts.dtype, verts.device
    forms, w_num = kept["forms"], kept["w"]
    if torch.is_grad_enabled() and (verts.requires_grad or K.requires_grad):
        vid = (kept["b"] * verts.shape[1])[:, None] + faces.index_select(0, kept["face"])
        tri = verts.to(torch.float64).reshape(-1, 3).index_select(0, vid.reshape(-1)).view(-1, 3, 3)
        kp = _intrinsics_table(K).index_select(0, kept["b"]) if K.requires_grad else kept["kp"]
        forms, w_num = _face_forms(tri, kp, kept["x0"], kept["y0"])
    rem = pix % (h * w)
    row = torch.div(rem, w, rounding_mode="floor")
    ly = (row - kept["y0"].index_select(0, fi)).to(torch.float64)
    lx = (rem - row * w - kept["x0"].index_select(0, fi)).to(torch.float64)
    f = forms.reshape(-1, 9).index_select(0, fi).T  # (9, N): rows (den, n1, n2) x (a, b, c)
    den = torch.addcmul(torch.addcmul(f[2], f[0], lx), f[1], ly)
    n1 = torch.addcmul(torch.addcmul(f[5], f[3], lx), f[4], ly)
    n2 = torch.addcmul(torch.addcmul(f[8], f[6], lx), f[7], ly)
    b1, b2 = n1 / den, n2 / den
    bary = torch.stack([1.0 - b1 - b2, b1, b2], dim=-1).to(dtype)
    z = (w_num.index_select(0, fi) / den).to(dtype)
    flat = pix * k + slot if k > 1 else pix
    size = bsz * h * w * k
    pix_to_face = torch.full((size,), -1, dtype=torch.int64, device=device)
    pix_to_face.index_copy_(0, flat, kept["face"].index_select(0, fi))
    zbuf = torch.full((size,), -1.0, dtype=dtype, device=device).index_copy(0, flat, z)
    bary_out = torch.full((size, 3), -1.0, dtype=dtype, device=device).index_copy(0, flat, bary)
    return Fragments(
        pix_to_face=pix_to_face.view(bsz, h, w, k),
        bary=bary_out.view(bsz, h, w, k, 3),
        zbuf=zbuf.view(bsz, h, w, k),
    )


def rasterize(
    verts: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    image_size: tuple[int, int],
    *,
    faces_per_pixel: int = 1,
    cull_backfaces: bool = False,
    z_near: float = 1e-4,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> Fragments:
    """Rasterize a batch of meshes sharing one topology (fast, vectorized).

    Args:
        verts: ``(B, V, 3)`` float32/float64 vertex positions in the **camera frame**
            (OpenCV axes; transform object-frame vertices with ``R @ X + t`` first).
        faces: ``(F, 3)`` int64 vertex indices, shared by the batch; counter-clockwise
            seen from outside.
        K: ``(3, 3)`` or ``(B, 3, 3)`` intrinsics in pixels, ``[[fx, s, cx], [0, fy, cy],
            [0, 0, 1]]`` with ``fx, fy > 0``.
        image_size: ``(H, W)``.
        faces_per_pixel: ``k``, how many nearest faces to keep per pixel.
        cull_backfaces: drop faces whose outer side points away from the camera.
        z_near: hits closer than this camera depth are discarded (faces are clipped
            there); faces crossing the camera plane render only their visible part.
        max_candidates: upper bound on the (face, pixel) pairs tested at once, which
            bounds temporary memory for large meshes, images and batches.

    Returns:
        :class:`Fragments` with ``pix_to_face (B, H, W, k)``, ``bary (B, H, W, k, 3)``,
        ``zbuf (B, H, W, k)``; differentiable w.r.t. ``verts`` (and ``K``) through
        ``bary`` and ``zbuf``.

    Example:
        >>> import torch
        >>> from render import rasterize
        >>> verts = torch.tensor([[[-1.0, -1.0, 5.0], [1.0, -1.0, 5.0], [0.0, 1.0, 5.0]]])
        >>> faces = torch.tensor([[0, 1, 2]])
        >>> K = torch.tensor([[10.0, 0.0, 4.0], [0.0, 10.0, 4.0], [0.0, 0.0, 1.0]])
        >>> frags = rasterize(verts, faces, K, (9, 9))
        >>> frags.pix_to_face.shape, int(frags.pix_to_face[0, 4, 4, 0]), float(frags.zbuf[0, 4, 4, 0])
        (torch.Size([1, 9, 9, 1]), 0, 5.0)
        >>> int(frags.pix_to_face[0, 0, 0, 0])  # background
        -1
    """
    K, h, w = _check_inputs(verts, faces, K, image_size, faces_per_pixel)
    k = int(faces_per_pixel)
    with torch.no_grad():
        kept, hits = _search(verts, faces, K, h, w, k, cull_backfaces, float(z_near), int(max_candidates))
    return _assemble(verts, faces, K, h, w, k, kept, hits)


def rasterize_reference(
    verts: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    image_size: tuple[int, int],
    *,
    faces_per_pixel: int = 1,
    cull_backfaces: bool = False,
    z_near: float = 1e-4,
) -> Fragments:
    """Slow reference rasterizer with the semantics of :func:`rasterize`.

    Not optimised, for comparison in tests only: a plain loop over images, rows and
    columns, casting the pixel's ray against every face with the Moller-Trumbore
    formulation (a different derivation from the fast path's per-face linear forms).
    Same arguments and outputs as :func:`rasterize`; differentiable in the same way.
    """
    K, h, w = _check_inputs(verts, faces, K, image_size, faces_per_pixel)
    k = int(faces_per_pixel)
    bsz, nf = verts.shape[0], faces.shape[0]
    dtype, device = verts.dtype, verts.device
    pix_to_face = torch.full((bsz, h, w, k), -1, dtype=torch.int64, device=device)
    zbuf = [[[None] * w for _ in range(h)] for _ in range(bsz)]
    bary = [[[None] * w for _ in range(h)] for _ in range(bsz)]
    face_ids = torch.arange(nf, device=device)
    for b in range(bsz):
        Kinv = torch.linalg.inv(K[b])
        tri = verts[b][faces]  # (F, 3, 3)
        v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        normal = torch.linalg.cross(e1, e2, dim=-1)
        facing = (v0 * normal).sum(-1)
        for i in range(h):
            for j in range(w):
                d = Kinv @ torch.tensor([float(j), float(i), 1.0], dtype=dtype, device=device)
                d = d / d[2]
                p = torch.linalg.cross(d.expand_as(e2), e2, dim=-1)
                det = (e1 * p).sum(-1)
                tvec = -v0
                b1 = (tvec * p).sum(-1) / det
                qv = torch.linalg.cross(tvec, e1, dim=-1)
                b2 = (d * qv).sum(-1) / det
                z = (e2 * qv).sum(-1) / det
                hit = (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (z >= z_near)
                hit &= (facing < 0) if cull_backfaces else (facing != 0)
                ids = face_ids[hit]
                if ids.numel() == 0:
                    continue
                zs = z[ids]
                # nearest first; ties by face index (ids ascending + stable sort)
                order = torch.sort(zs.detach(), stable=True).indices[:k]
                sel = ids[order]
                pix_to_face[b, i, j, : sel.numel()] = sel
                zbuf[b][i][j] = z[sel]
                bary[b][i][j] = torch.stack([1 - b1[sel] - b2[sel], b1[sel], b2[sel]], dim=-1)

    def stack(cells, tail, fill):
        out = []
        for b in range(bsz):
            for i in range(h):
                for j in range(w):
                    c = cells[b][i][j]
                    pad = torch.full((k,) + tail, fill, dtype=dtype, device=device)
                    if c is None:
                        out.append(pad)
                    else:
                        out.append(torch.cat([c, pad[c.shape[0]:]], dim=0))
        return torch.stack(out).view(bsz, h, w, k, *tail)

    return Fragments(pix_to_face=pix_to_face, bary=stack(bary, (3,), -1.0), zbuf=stack(zbuf, (), -1.0))
