"""Rotation parameterizations ↔ SE(3) matrices (nanodrr 0.1.7's ``geometry.se3``), and their inverses.

Conventions (as nanodrr): quaternions are XYZW (the adjugate's 10 entries are the upper triangle, row
by row, of q·qᵀ with q in WXYZ order), Euler conventions are three axes, upper case intrinsic and
lower case extrinsic, ``ROTATION_9D`` is a row-major 3×3 matrix projected onto SO(3), and the log maps
are rotation vectors (radians). Written without roma: the exp/log maps use Taylor series near zero so
that values and gradients stay exact there.
"""

from __future__ import annotations

import math
from enum import Enum

import torch

from .._validation import check_finite

__all__ = [
    "Parameterization",
    "convert",
    "make_se3",
    "matrix_to_rotation",
    "quaternion_adjugate_to_quaternion",
    "rotation_to_matrix",
    "se3_exp_map",
    "se3_log_map",
    "to_parameters",
]


class Parameterization(str, Enum):
    """Rotation parameterizations accepted by :func:`convert`; ``.dim`` is the number of parameters."""

    EULER = "euler"
    QUATERNION = "quaternion"
    QUATERNION_ADJUGATE = "quaternion_adjugate"
    ROTATION_9D = "rotation_9d"
    SO3_LOG = "so3_log"
    SE3_LOG = "se3_log"

    @property
    def dim(self) -> int:
        return _DIMS[self]


_DIMS = {
    Parameterization.EULER: 3,
    Parameterization.QUATERNION: 4,
    Parameterization.QUATERNION_ADJUGATE: 10,
    Parameterization.ROTATION_9D: 9,
    Parameterization.SO3_LOG: 3,
    Parameterization.SE3_LOG: 3,
}

#: The upper triangle of a 4×4 matrix, row by row (``torch.triu_indices(4, 4)``'s order).
_TRIU = [(i, j) for i in range(4) for j in range(i, 4)]


def _as_parameterization(parameterization) -> Parameterization:
    try:
        return Parameterization(parameterization)
    except ValueError:
        names = ", ".join(repr(p.value) for p in Parameterization)
        raise ValueError(f"parameterization: expected one of {names}, got {parameterization!r}") from None


def _check_last(t: torch.Tensor, size: int, name: str) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {type(t).__name__}")
    if t.ndim < 1 or t.shape[-1] != size:
        raise ValueError(f"{name}: expected shape [..., {size}], got {list(t.shape)}")


# --- small-angle-safe coefficients -----------------------------------------------------------------


def _coefficients(theta_sq: torch.Tensor):
    """``sin θ/θ``, ``(1 − cos θ)/θ²`` and ``(θ − sin θ)/θ³`` from θ², by Taylor series below a
    dtype-dependent threshold (where the closed forms lose digits) and closed forms above it."""
    thr = 3.0 * torch.finfo(theta_sq.dtype).eps ** 0.125
    small = theta_sq < thr * thr
    t2 = theta_sq
    t4 = t2 * t2
    a_s = 1.0 - t2 / 6.0 + t4 / 120.0
    b_s = 0.5 - t2 / 24.0 + t4 / 720.0
    c_s = 1.0 / 6.0 - t2 / 120.0 + t4 / 5040.0
    theta = torch.where(small, torch.ones_like(t2), t2).sqrt()  # no sqrt(0) in the unused branch
    sin = theta.sin()
    half = (0.5 * theta).sin()
    a = torch.where(small, a_s, sin / theta)
    b = torch.where(small, b_s, 2.0 * half * half / (theta * theta))
    c = torch.where(small, c_s, (theta - sin) / (theta * theta * theta))
    return a, b, c


def _hat(v: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` → skew-symmetric ``[..., 3, 3]`` with hat(v)·w = v × w."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))


def _eye(like: torch.Tensor) -> torch.Tensor:
    return torch.eye(3, dtype=like.dtype, device=like.device)


def _so3_exp(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues: R = I + (sin θ/θ)·K + ((1 − cos θ)/θ²)·K², K = hat(ω), θ = |ω|."""
    a, b, _ = _coefficients((rotvec * rotvec).sum(-1))
    K = _hat(rotvec)
    return _eye(rotvec) + a[..., None, None] * K + b[..., None, None] * (K @ K)


def _se3_v(rotvec: torch.Tensor) -> torch.Tensor:
    """The left Jacobian V = I + ((1 − cos θ)/θ²)·K + ((θ − sin θ)/θ³)·K² (t = V·ρ in the SE(3) exp)."""
    _, b, c = _coefficients((rotvec * rotvec).sum(-1))
    K = _hat(rotvec)
    return _eye(rotvec) + b[..., None, None] * K + c[..., None, None] * (K @ K)


# --- quaternions -----------------------------------------------------------------------------------


def _quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """XYZW quaternion → rotation matrix, the homogeneous form (as roma: not normalised, so a
    non-unit q scales the matrix by |q|²)."""
    x, y, z, w = q.unbind(-1)
    xx, yy, zz, ww = x * x, y * y, z * z, w * w
    xy, xz, yz, wx, wy, wz = x * y, x * z, y * z, w * x, w * y, w * z
    rows = [
        ww + xx - yy - zz, 2 * (xy - wz), 2 * (xz + wy),
        2 * (xy + wz), ww - xx + yy - zz, 2 * (yz - wx),
        2 * (xz - wy), 2 * (yz + wx), ww - xx - yy + zz,
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def _matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix → unit XYZW quaternion with w ≥ 0 (Shepperd's method: of the four vectors
    4·q_i·q readable from R, normalise the one with the largest q_i², which is never small)."""
    r = R.unbind(-2)
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = (row.unbind(-1) for row in r)
    candidates = torch.stack(
        [
            torch.stack([1 + r00 - r11 - r22, r01 + r10, r02 + r20, r21 - r12], -1),  # 4x·q
            torch.stack([r01 + r10, 1 - r00 + r11 - r22, r12 + r21, r02 - r20], -1),  # 4y·q
            torch.stack([r02 + r20, r12 + r21, 1 - r00 - r11 + r22, r10 - r01], -1),  # 4z·q
            torch.stack([r21 - r12, r02 - r20, r10 - r01, 1 + r00 + r11 + r22], -1),  # 4w·q
        ],
        dim=-2,
    )
    best = candidates.diagonal(dim1=-2, dim2=-1).argmax(-1)
    q = torch.take_along_dim(candidates, best[..., None, None], dim=-2).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., 3:] < 0, -q, q)


def _quaternion_to_rotvec(q: torch.Tensor) -> torch.Tensor:
    """Unit XYZW quaternion with w ≥ 0 → rotation vector (angle in [0, π])."""
    v, w = q[..., :3], q[..., 3]
    s2 = (v * v).sum(-1)
    thr = torch.finfo(q.dtype).eps ** 0.25
    small = s2 < thr * thr
    # θ/2 = atan2(|v|, w); rotvec = 2·v·(θ/2)/|v|. Near zero: atan(x)/x = 1 − x²/3 + x⁴/5, x = |v|/w.
    x2 = s2 / torch.where(small, w * w, torch.ones_like(w))
    ratio_s = (1.0 - x2 / 3.0 + x2 * x2 / 5.0) / torch.where(small, w, torch.ones_like(w))
    s = torch.where(small, torch.ones_like(s2), s2).sqrt()
    ratio = torch.where(small, ratio_s, torch.atan2(s, w) / s)
    return 2.0 * ratio[..., None] * v


def quaternion_adjugate_to_quaternion(rotation: torch.Tensor) -> torch.Tensor:
    """``[..., 10]`` upper triangle of a symmetric 4×4 A (≈ q·qᵀ) → the WXYZ quaternion read from
    A's largest-norm column, divided by that norm (arXiv:2205.09116, as nanodrr)."""
    _check_last(rotation, 10, "rotation")
    A = _vec10_to_symmetric(rotation)
    norms = torch.linalg.vector_norm(A, dim=-2)  # column norms
    best = norms.argmax(-1)
    col = torch.take_along_dim(A, best[..., None, None], dim=-1).squeeze(-1)
    return col / torch.take_along_dim(norms, best[..., None], dim=-1)


def _vec10_to_symmetric(vec: torch.Tensor) -> torch.Tensor:
    entries = dict(zip(_TRIU, vec.unbind(-1), strict=True))
    rows = [entries[(min(i, j), max(i, j))] for i in range(4) for j in range(4)]
    return torch.stack(rows, dim=-1).unflatten(-1, (4, 4))


def _quaternion_to_adjugate(q_xyzw: torch.Tensor) -> torch.Tensor:
    q = torch.cat([q_xyzw[..., 3:], q_xyzw[..., :3]], dim=-1)  # WXYZ
    return torch.stack([q[..., i] * q[..., j] for i, j in _TRIU], dim=-1)


# --- Euler angles ----------------------------------------------------------------------------------

_AXES = {"X": 0, "Y": 1, "Z": 2}


def _parse_convention(convention) -> tuple[list[int], bool]:
    """Axis indices in intrinsic order and whether the convention was extrinsic (lower case)."""
    if convention is None:
        raise ValueError("convention: must be specified for Euler angles (e.g. 'ZXY', 'xyz')")
    ok = (
        isinstance(convention, str)
        and len(convention) == 3
        and (convention.isupper() or convention.islower())
    )
    ok = ok and set(convention.upper()) <= set(_AXES)
    if (
        not ok
        or convention[0].upper() == convention[1].upper()
        or convention[1].upper() == convention[2].upper()
    ):
        raise ValueError(
            "convention: expected three axes from X, Y, Z (upper case intrinsic, lower case extrinsic) "
            f"with no two consecutive axes equal, got {convention!r}"
        )
    extrinsic = convention.islower()
    axes = [_AXES[c] for c in convention.upper()]
    return (axes[::-1] if extrinsic else axes), extrinsic


def _axis_rotation(axis: int, angle: torch.Tensor) -> torch.Tensor:
    """Right-handed rotation by ``angle`` (radians) about coordinate axis 0, 1 or 2."""
    c, s = angle.cos(), angle.sin()
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    i1, i2 = (axis + 1) % 3, (axis + 2) % 3
    m = [[zero] * 3 for _ in range(3)]
    m[axis][axis] = one
    m[i1][i1], m[i1][i2], m[i2][i1], m[i2][i2] = c, -s, s, c
    return torch.stack([e for row in m for e in row], dim=-1).unflatten(-1, (3, 3))


def _euler_to_matrix(angles: torch.Tensor, convention: str) -> torch.Tensor:
    """Intrinsic ``ABC``: R = R_A(a)·R_B(b)·R_C(c); extrinsic ``abc`` = intrinsic ``CBA`` with (c, b, a)."""
    axes, extrinsic = _parse_convention(convention)
    parts = angles.unbind(-1)
    if extrinsic:
        parts = parts[::-1]
    R = _axis_rotation(axes[0], parts[0])
    for axis, angle in zip(axes[1:], parts[1:], strict=True):
        R = R @ _axis_rotation(axis, angle)
    return R


def _matrix_to_euler(R: torch.Tensor, convention: str) -> torch.Tensor:
    """Inverse of :func:`_euler_to_matrix` (radians): the middle angle in [−π/2, π/2] (Tait–Bryan) or
    [0, π] (proper Euler); at gimbal lock the last angle is set to 0."""
    (i, j, k), extrinsic = _parse_convention(convention)
    proper = i == k
    other = 3 - i - j  # the axis not among i, j
    sign = 1.0 if (j - i) % 3 == 1 else -1.0  # parity of (i, j, other)
    if proper:
        b = torch.atan2(torch.hypot(R[..., i, j], R[..., i, other]), R[..., i, i])
        a = torch.atan2(R[..., j, i], -sign * R[..., other, i])
        c = torch.atan2(R[..., i, j], sign * R[..., i, other])
        locked = torch.hypot(R[..., i, j], R[..., i, other]) < 1e-7
    else:
        b = torch.atan2(sign * R[..., i, k], torch.hypot(R[..., i, i], R[..., i, j]))
        a = torch.atan2(-sign * R[..., j, k], R[..., k, k])
        c = torch.atan2(-sign * R[..., i, j], R[..., i, i])
        locked = torch.hypot(R[..., i, i], R[..., i, j]) < 1e-7
    if bool(locked.any()):  # c = 0: R·R_j(b)ᵀ = R_i(a)
        M = R @ _axis_rotation(j, b).transpose(-1, -2)
        i1, i2 = (i + 1) % 3, (i + 2) % 3
        a = torch.where(locked, torch.atan2(M[..., i2, i1], M[..., i1, i1]), a)
        c = torch.where(locked, torch.zeros_like(c), c)
    out = torch.stack([a, b, c], dim=-1)
    return out.flip(-1) if extrinsic else out


# --- special Procrustes (ROTATION_9D) --------------------------------------------------------------


class _SpecialProcrustes(torch.autograd.Function):
    """The rotation nearest to M (Frobenius): R = U·diag(1, 1, det(UVᵀ))·Vᵀ.

    Its derivative only involves sums of (signed) singular values, dR = U·((A − Aᵀ) ⊘ (s_k + s_l))·Vᵀ
    with A = Uᵀ·dM·V, so it is defined when M is already a rotation (where autograd through the SVD,
    which divides by differences of singular values, is not). ``1/t`` is damped as t/(t² + ε²),
    ε = 1e-5, where the nearest rotation is not unique.
    """

    @staticmethod
    def forward(ctx, M):
        U, S, Vh = torch.linalg.svd(M)
        flip = torch.linalg.det(U) * torch.linalg.det(Vh) < 0
        sign = torch.ones_like(S)
        sign[..., 2] = torch.where(flip, -1.0, 1.0).to(S.dtype)
        U = U * sign[..., None, :]
        S = S * sign
        ctx.save_for_backward(U, S, Vh)
        return U @ Vh

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        U, S, Vh = ctx.saved_tensors
        V = Vh.transpose(-1, -2)
        B = U.transpose(-1, -2) @ grad @ V
        t = S[..., :, None] + S[..., None, :]
        return U @ ((B - B.transpose(-1, -2)) * (t / (t * t + 1e-10))) @ Vh


def _special_procrustes(M: torch.Tensor) -> torch.Tensor:
    flat = M.reshape(-1, 3, 3)
    return _SpecialProcrustes.apply(flat).reshape(M.shape)


# --- public API ------------------------------------------------------------------------------------


def rotation_to_matrix(
    rotation: torch.Tensor,
    parameterization: Parameterization | str,
    convention: str | None = None,
    degrees: bool = False,
) -> torch.Tensor:
    """Rotation parameters ``[..., D]`` → rotation matrices ``[..., 3, 3]``.

    ``degrees`` applies to Euler angles only; ``convention`` is required for them. Quaternions are
    used as given (unit XYZW expected; not normalised, as nanodrr).
    """
    p = _as_parameterization(parameterization)
    _check_last(rotation, p.dim, "rotation")
    if p is Parameterization.EULER:
        if degrees:
            rotation = rotation * (math.pi / 180.0)
        return _euler_to_matrix(rotation, convention)
    if p is Parameterization.QUATERNION:
        return _quaternion_to_matrix(rotation)
    if p is Parameterization.QUATERNION_ADJUGATE:
        q = quaternion_adjugate_to_quaternion(rotation)
        return _quaternion_to_matrix(torch.cat([q[..., 1:], q[..., :1]], dim=-1))
    if p is Parameterization.ROTATION_9D:
        return _special_procrustes(rotation.unflatten(-1, (3, 3)))
    return _so3_exp(rotation)  # SO3_LOG and SE3_LOG's rotation part


def matrix_to_rotation(
    R: torch.Tensor,
    parameterization: Parameterization | str,
    convention: str | None = None,
    degrees: bool = False,
) -> torch.Tensor:
    """Inverse of :func:`rotation_to_matrix` for rotation matrices ``[..., 3, 3]``: Euler angles (middle
    angle in its principal range), unit quaternions with w ≥ 0, the adjugate of that quaternion, the
    flattened matrix, or rotation vectors of angle ≤ π."""
    p = _as_parameterization(parameterization)
    if not isinstance(R, torch.Tensor) or R.ndim < 2 or tuple(R.shape[-2:]) != (3, 3):
        raise ValueError(f"R: expected shape [..., 3, 3], got {list(getattr(R, 'shape', []))}")
    if p is Parameterization.EULER:
        angles = _matrix_to_euler(R, convention)
        return angles * (180.0 / math.pi) if degrees else angles
    if p is Parameterization.ROTATION_9D:
        return R.flatten(-2)
    q = _matrix_to_quaternion(R)
    if p is Parameterization.QUATERNION:
        return q
    if p is Parameterization.QUATERNION_ADJUGATE:
        return _quaternion_to_adjugate(q)
    return _quaternion_to_rotvec(q)


def make_se3(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``[..., 4, 4]`` homogeneous matrices from rotations ``[..., 3, 3]`` and translations ``[..., 3]``."""
    shape = torch.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    top = torch.cat([R.expand(*shape, 3, 3), t.expand(*shape, 3)[..., None]], dim=-1)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=top.dtype, device=top.device).expand(*shape, 1, 4)
    return torch.cat([top, bottom], dim=-2)


def se3_exp_map(log_rotation: torch.Tensor, log_translation: torch.Tensor) -> torch.Tensor:
    """SE(3) exponential of (ω, ρ) ``[..., 3]`` each: [exp(ω) | V(ω)·ρ] ``[..., 4, 4]``."""
    R = _so3_exp(log_rotation)
    t = (_se3_v(log_rotation) @ log_translation[..., None])[..., 0]
    return make_se3(R, t)


def se3_log_map(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SE(3) logarithm of ``[..., 4, 4]``: (ω, ρ) with ``se3_exp_map(ω, ρ) == matrix``, |ω| ≤ π."""
    if not isinstance(matrix, torch.Tensor) or matrix.ndim < 2 or tuple(matrix.shape[-2:]) != (4, 4):
        raise ValueError(f"matrix: expected shape [..., 4, 4], got {list(getattr(matrix, 'shape', []))}")
    omega = _quaternion_to_rotvec(_matrix_to_quaternion(matrix[..., :3, :3]))
    rho = torch.linalg.solve(_se3_v(omega), matrix[..., :3, 3:])[..., 0]
    return omega, rho


def convert(
    rotation: torch.Tensor,
    translation: torch.Tensor,
    parameterization: Parameterization | str,
    convention: str | None = None,
    degrees: bool = True,
    isocenter: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotation parameters and a camera centre → SE(3) poses ``[..., 4, 4]`` (nanodrr's ``convert``).

    The pose stores t = R·translation (+ isocenter): ``translation`` is the camera position in the
    rotated frame, so the camera orbits the world origin (or ``isocenter``) as the rotation changes.

    Args:
        rotation: ``[..., D]``, D = ``Parameterization(parameterization).dim``: Euler angles (3),
            an XYZW unit quaternion (4), a quaternion adjugate (10), a row-major 3×3 matrix projected
            onto SO(3) (9), or a rotation vector in radians (so3_log / se3_log, 3).
        translation: ``[..., 3]`` (mm); for ``"se3_log"`` the translation part ρ of the se(3)
            logarithm (t = V(ω)·ρ).
        parameterization: a :class:`Parameterization` or its value.
        convention: Euler axes, e.g. ``"ZXY"`` (intrinsic) or ``"xyz"`` (extrinsic); Euler only.
        degrees: Euler angles in degrees (the default, as nanodrr); ignored otherwise.
        isocenter: ``[3]`` point to orbit instead of the origin. Ignored by ``"se3_log"`` (as nanodrr).

    Raises:
        ValueError: unknown parameterization, wrong trailing sizes, a missing or invalid convention.
    """
    p = _as_parameterization(parameterization)
    _check_last(rotation, p.dim, "rotation")
    _check_last(translation, 3, "translation")
    if p is Parameterization.SE3_LOG:
        return se3_exp_map(rotation, translation)
    R = rotation_to_matrix(rotation, p, convention, degrees)
    t = (R @ translation[..., None])[..., 0]
    if isocenter is not None:
        iso = torch.as_tensor(isocenter, dtype=t.dtype, device=t.device)
        _check_last(iso, 3, "isocenter")
        check_finite(iso, "isocenter")
        t = t + iso
    return make_se3(R, t)


def to_parameters(
    pose: torch.Tensor,
    parameterization: Parameterization | str,
    convention: str | None = None,
    degrees: bool = True,
    isocenter: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`convert` (not in nanodrr): ``(rotation [..., D], translation [..., 3])`` of
    rigid poses ``[..., 4, 4]``, with the same arguments, so ``convert(*to_parameters(T, ...), ...) == T``."""
    p = _as_parameterization(parameterization)
    if not isinstance(pose, torch.Tensor) or pose.ndim < 2 or tuple(pose.shape[-2:]) != (4, 4):
        raise ValueError(f"pose: expected shape [..., 4, 4], got {list(getattr(pose, 'shape', []))}")
    check_finite(pose, "pose")
    if p is Parameterization.SE3_LOG:
        return se3_log_map(pose)
    R, t = pose[..., :3, :3], pose[..., :3, 3]
    if isocenter is not None:
        iso = torch.as_tensor(isocenter, dtype=t.dtype, device=t.device)
        _check_last(iso, 3, "isocenter")
        t = t - iso
    translation = (R.transpose(-1, -2) @ t[..., None])[..., 0]
    return matrix_to_rotation(R, p, convention, degrees), translation
