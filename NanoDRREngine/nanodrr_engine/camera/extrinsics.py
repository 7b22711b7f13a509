"""Camera-to-world poses from ZXY Euler angles about an isocenter (nanodrr's convention)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float

from .._validation import as_matrix

#: Fixed reorientations O (camera axes → world axes), see geometry.md.
ORIENTATIONS: dict[str | None, list[list[float]]] = {
    "AP": [[-1, 0, 0, 0], [0, 0, -1, 0], [0, -1, 0, 0], [0, 0, 0, 1]],
    "PA": [[-1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]],
    None: [[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
}


def real_matrix(value, name: str, shape: tuple[int, ...], dtype=None, device=None) -> torch.Tensor:
    """:func:`as_matrix` that also refuses booleans and complex numbers (TypeError naming ``name``).

    ``torch.as_tensor`` would turn ``True`` into 1 and drop an imaginary part with only a warning.
    """
    kind = value.dtype if isinstance(value, torch.Tensor) else None
    if kind is None:
        try:
            kind = torch.as_tensor(value).dtype
        except (TypeError, ValueError, RuntimeError, OverflowError):
            kind = None  # not numeric: as_matrix names it
    if kind is torch.bool or (kind is not None and kind.is_complex):
        what = "booleans" if kind is torch.bool else "complex numbers"
        raise TypeError(f"{name}: expected real numbers, got {what}")
    try:
        return as_matrix(value, name, shape, dtype=dtype, device=device)
    except OverflowError as e:  # an int too large for the dtype
        raise ValueError(f"{name}: value out of range ({e})") from None


def orientation_matrix(orientation: str | None, dtype=None, device=None) -> torch.Tensor:
    """The ``[4, 4]`` reorientation O for ``"AP"``, ``"PA"`` or ``None``."""
    if not (orientation is None or isinstance(orientation, str)) or orientation not in ORIENTATIONS:
        raise ValueError(f"orientation: expected 'AP', 'PA' or None, got {orientation!r}")
    return torch.tensor(ORIENTATIONS[orientation], dtype=dtype, device=device)


def euler_zxy_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """R = Rz(α)·Rx(β)·Ry(γ) from intrinsic ZXY angles in radians ``[..., 3]`` → ``[..., 3, 3]``."""
    a, b, c = angles.unbind(-1)
    ca, sa, cb, sb, cc, sc = a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin()
    rows = [
        ca * cc - sa * sb * sc, -sa * cb, ca * sc + sa * sb * cc,
        sa * cc + ca * sb * sc, ca * cb, sa * sc - ca * sb * cc,
        -cb * sc, sb, cb * cc,
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*angles.shape[:-1], 3, 3)


def matrix_to_euler_zxy(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`euler_zxy_to_matrix` (radians); at gimbal lock (β = ±90°) γ is set to 0."""
    b = R[..., 2, 1].clamp(-1.0, 1.0).asin()
    locked = R[..., 2, 1].abs() > 1.0 - 1e-7
    a = torch.where(locked, torch.atan2(R[..., 1, 0], R[..., 0, 0]), torch.atan2(-R[..., 0, 1], R[..., 1, 1]))
    c = torch.where(locked, torch.zeros_like(b), torch.atan2(-R[..., 2, 0], R[..., 2, 2]))
    return torch.stack([a, b, c], dim=-1)


def make_rt_inv(
    rotation: Float[torch.Tensor, "*#batch 3"] | Sequence[float],
    translation: Float[torch.Tensor, "*#batch 3"] | Sequence[float],
    orientation: str | None = "AP",
    isocenter: Float[torch.Tensor, "3"] | Sequence[float] | None = None,
) -> Float[torch.Tensor, "*batch 4 4"]:
    """Camera-to-world matrices rt_inv = [R | R·t + c] · O.

    Args:
        rotation: ``[B, 3]`` (or ``[3]``) intrinsic ZXY Euler angles in degrees.
        translation: ``[B, 3]`` (or ``[3]``) camera position relative to the isocenter, before rotation (mm).
        orientation: ``"AP"``, ``"PA"`` or ``None`` (see geometry.md).
        isocenter: optional ``[3]`` world point the camera orbits (e.g. ``subject.isocenter``).

    Returns:
        ``[B, 4, 4]`` (or ``[4, 4]``) rigid camera-to-world matrices, differentiable in all inputs.
    """
    rot = real_matrix(rotation, "rotation", (3,))
    trans = real_matrix(translation, "translation", (3,), dtype=rot.dtype, device=rot.device)
    rot, trans = torch.broadcast_tensors(rot, trans)
    R = euler_zxy_to_matrix(rot * (math.pi / 180.0))
    t = (R @ trans.unsqueeze(-1)).squeeze(-1)
    if isocenter is not None:
        t = t + real_matrix(isocenter, "isocenter", (3,), dtype=rot.dtype, device=rot.device)
    pose = torch.cat([R, t.unsqueeze(-1)], dim=-1)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=rot.dtype, device=rot.device).expand(
        *pose.shape[:-2], 1, 4
    )
    pose = torch.cat([pose, bottom], dim=-2)
    return pose @ orientation_matrix(orientation, rot.dtype, rot.device)


def invert_rt_inv(
    rt_inv: Float[torch.Tensor, "*batch 4 4"],
    orientation: str | None = "AP",
    isocenter: Float[torch.Tensor, "3"] | Sequence[float] | None = None,
) -> tuple[Float[torch.Tensor, "*batch 3"], Float[torch.Tensor, "*batch 3"]]:
    """Recover ``(rotation [B, 3] degrees, translation [B, 3] mm)`` from :func:`make_rt_inv`'s output.

    ``orientation`` and ``isocenter`` must be those used to build the matrices.
    """
    m = real_matrix(rt_inv, "rt_inv", (4, 4))
    O = orientation_matrix(orientation, m.dtype, m.device)[:3, :3]
    R = m[..., :3, :3] @ O.T  # O is a signed permutation: O⁻¹ = Oᵀ
    t = m[..., :3, 3]
    if isocenter is not None:
        t = t - real_matrix(isocenter, "isocenter", (3,), dtype=m.dtype, device=m.device)
    translation = (R.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)
    rotation = matrix_to_euler_zxy(R) * (180.0 / math.pi)
    return rotation, translation
