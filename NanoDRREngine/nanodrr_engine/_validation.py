"""Input checks shared by the public functions: each error names the argument and what is wrong."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def as_matrix(value, name: str, shape: tuple[int, ...], dtype=None, device=None) -> torch.Tensor:
    """``value`` as a floating tensor whose trailing dimensions are ``shape``."""
    try:
        t = torch.as_tensor(value, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(
            f"{name}: expected a tensor or array of shape [..., {_fmt(shape)}], got {type(value)}"
        ) from e
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype() if dtype is None else dtype)
    if t.ndim < len(shape) or tuple(t.shape[t.ndim - len(shape) :]) != shape:
        raise ValueError(f"{name}: expected shape [..., {_fmt(shape)}], got {list(t.shape)}")
    check_finite(t, name)
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")


def check_positive(value: float | torch.Tensor, name: str) -> None:
    v = torch.as_tensor(value)
    if not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
        raise ValueError(f"{name}: must be positive and finite, got {_show(value)}")


def check_pixels(value, name: str) -> int:
    """A positive whole number of pixels (ints, integral floats and numpy integers are accepted)."""
    try:
        ok = not isinstance(value, bool) and float(value).is_integer() and value >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}: must be a positive whole number of pixels, got {_show(value)}")
    return int(value)


def check_rigid(m: torch.Tensor, name: str, atol: float = 1e-3) -> None:
    """Camera-to-world matrices must be rigid (orthonormal rotation, or a mirror, and [0 0 0 1] last row)."""
    m64 = m.detach().to(torch.float64)
    R = m64[..., :3, :3]
    eye = torch.eye(3, dtype=torch.float64, device=m.device)
    err = (R.transpose(-1, -2) @ R - eye).abs().amax().item() if R.numel() else 0.0
    if err > atol:
        raise ValueError(
            f"{name}: the 3×3 part must be orthonormal (a rigid camera-to-world transform); "
            f"max |RᵀR − I| = {err:.3g}. Scaling or shear is not a valid C-arm pose."
        )
    last = m64[..., 3, :]
    want = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64, device=m.device)
    if (last - want).abs().amax().item() > 1e-6:
        raise ValueError(f"{name}: last row must be [0, 0, 0, 1], got {last.reshape(-1, 4)[0].tolist()}")


def _fmt(shape: Sequence[int]) -> str:
    return ", ".join(str(s) for s in shape)


def _show(value) -> str:
    if isinstance(value, torch.Tensor) and value.numel() > 1:
        return f"tensor with values in [{value.min().item():g}, {value.max().item():g}]"
    if isinstance(value, torch.Tensor):
        return f"{value.item():g}"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return repr(value)
