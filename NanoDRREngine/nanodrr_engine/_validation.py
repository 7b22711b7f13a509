"""Input checks shared by the public functions: each error names the argument and what is wrong."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

_F32 = torch.finfo(torch.float32)
#: Positive values float32 holds as normal numbers (a float64 1e300 becomes inf, 1e-300 becomes 0).
FLOAT32_RANGE = (_F32.tiny, _F32.max)
#: Largest whole count accepted (pixels per side, labels): what an int32 index holds.
MAX_COUNT = 2**31 - 1


def refuse_non_real(value, name: str, what: str = "a number") -> None:
    """TypeError naming ``name`` for what ``float()`` or ``torch.as_tensor`` would coerce silently:
    booleans (Python, NumPy, bool arrays/tensors), strings and bytes, complex numbers."""
    if isinstance(value, (bool, np.bool_, str, bytes, np.str_, np.bytes_)):
        raise TypeError(f"{name}: expected {what}, got {value!r}")
    if isinstance(value, complex) or (isinstance(value, torch.Tensor) and value.is_complex()):
        raise TypeError(f"{name}: expected {what}, got complex numbers")
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
        raise TypeError(f"{name}: expected {what}, got booleans")
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "bcUSO":
        kind = {"b": "booleans", "c": "complex numbers", "U": "strings", "S": "bytes", "O": "objects"}
        raise TypeError(f"{name}: expected {what}, got {kind[value.dtype.kind]}")


def as_number(value, name: str) -> float:
    """A real scalar (Python or NumPy number, 0-d array or tensor) as a float, else TypeError naming
    ``name``: ``[1.0]``, ``True`` and ``"1"`` are not numbers. Range checks are the caller's."""
    refuse_non_real(value, name)
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
        value = value.item()
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} ({_show(value)})")
    try:
        return float(value)
    except OverflowError:  # an int beyond float64
        raise ValueError(f"{name}: {value!r} is out of range") from None


def check_bool(value, name: str) -> bool:
    """``True`` or ``False`` (NumPy bools too); a string such as ``"no"`` would otherwise be truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {_show(value)}")
    return bool(value)


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    """One of the strings ``choices`` (TypeError for a non-string, so unhashable values are named too)."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {tuple(choices)}, got {type(value).__name__} ({value!r})")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def as_device(device, name: str = "device") -> torch.device | None:
    """``None`` (torch's default) or a device this machine has, else ValueError/TypeError naming ``name``
    (``torch.device("tpu")`` raises a bare RuntimeError, a CUDA tensor on a CPU-only build an AssertionError)."""
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name}: expected a torch.device, a string such as 'cpu' or None, got {device!r}")
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{name}: {device!r} is not a device ({e})") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: {device!r} was requested but no CUDA GPU is available")
    if d.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{name}: {device!r} was requested but Apple MPS is not available")
    return d


def check_dtype(dtype, name: str = "dtype") -> torch.dtype | None:
    """``None`` (torch's default) or a floating torch dtype: an integer K⁻¹ would truncate to zero."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(
            f"{name}: expected a floating torch.dtype (e.g. torch.float32) or None, got {dtype!r}"
        )
    return dtype


def length_range(dtype: torch.dtype | None = None) -> tuple[float, float]:
    """Lengths (mm) the ray geometry can square in ``dtype``: ``[√tiny, √max]`` (float32: 1.1e-19 to 1.8e19)."""
    info = torch.finfo(dtype if dtype is not None and dtype.is_floating_point else torch.get_default_dtype())
    return math.sqrt(info.tiny), math.sqrt(info.max)


def as_matrix(value, name: str, shape: tuple[int, ...], dtype=None, device=None) -> torch.Tensor:
    """``value`` as a floating tensor whose trailing dimensions are ``shape``.

    Finiteness is checked in the precision given, before the cast to ``dtype``: a value that is finite
    there but overflows ``dtype`` (1e300 → float32) is reported as out of range, not as infinite.
    """
    refuse_non_real(value, name, "real numbers")  # True would be 1, an imaginary part dropped
    try:
        t = value if isinstance(value, torch.Tensor) else _python_tensor(value)
        t = t.to(device=device) if device is not None else t
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise TypeError(
            f"{name}: expected a tensor or array of shape [..., {_fmt(shape)}], got {type(value)}"
        ) from e
    if t.ndim < len(shape) or tuple(t.shape[t.ndim - len(shape) :]) != shape:
        raise ValueError(f"{name}: expected shape [..., {_fmt(shape)}], got {list(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():  # lists of bools or complex numbers
        raise TypeError(f"{name}: expected real numbers, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype() if dtype is None else dtype)
    check_finite(t, name)
    if dtype is None and t.dtype == torch.float64 and not isinstance(value, (torch.Tensor, np.ndarray)):
        dtype = torch.get_default_dtype()  # Python numbers: the dtype torch.as_tensor gives them
    if dtype is not None and t.dtype != dtype:
        cast = t.to(dtype)
        if cast.is_floating_point() and not bool(torch.isfinite(cast).all()):
            big = t.detach().abs().max().item()
            raise ValueError(
                f"{name}: {big:g} is out of range: {str(dtype).replace('torch.', '')} holds magnitudes up to "
                f"{torch.finfo(dtype).max:.3g}"
            )
        t = cast
    return t


def _python_tensor(value) -> torch.Tensor:
    """Python numbers and lists in float64 (torch.as_tensor would round floats to float32 first)."""
    try:
        a = np.asarray(value)
    except (TypeError, ValueError, RuntimeError):  # e.g. a list of tensors that require grad
        return torch.as_tensor(value)
    return (
        torch.as_tensor(value)
        if a.dtype == object
        else torch.from_numpy(a.copy() if not a.flags.writeable else a)
    )


def check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")


def check_positive(
    value: float | torch.Tensor,
    name: str,
    limits: tuple[float, float] = FLOAT32_RANGE,
    why: str = "the positive numbers float32 holds",
) -> None:
    """Positive, finite and within ``limits`` (default: what float32 holds), checked in float64 so that
    1e300 or 1e-300 is reported as out of range (with ``why``) rather than as infinite or zero."""
    refuse_non_real(value, name)
    try:
        v = (
            value.detach().to(torch.float64)
            if isinstance(value, torch.Tensor)
            else torch.as_tensor(np.asarray(value, dtype=np.float64))
        )
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}") from e
    if not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
        raise ValueError(f"{name}: must be positive and finite, got {_show(value)}")
    lo, hi = limits
    if not bool(((v >= lo) & (v <= hi)).all()):
        raise ValueError(
            f"{name}: {_show(value)} is out of range: it must lie in [{lo:.3g}, {hi:.3g}] ({why})"
        )


def check_length(value, name: str, dtype: torch.dtype | None = None, positive: bool = True) -> None:
    """A length in mm that ray geometry in ``dtype`` can square (:func:`length_range`); ``positive=False``
    allows 0 and negative values (offsets)."""
    lo, hi = length_range(dtype)
    what = (
        f"lengths in mm whose squares {str(dtype or torch.get_default_dtype()).replace('torch.', '')} holds"
    )
    if positive:
        check_positive(value, name, (lo, hi), what)
        return
    refuse_non_real(value, name)
    try:
        v = (
            value.detach().double()
            if isinstance(value, torch.Tensor)
            else torch.as_tensor(np.asarray(value, np.float64))
        )
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}") from e
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name}: must be finite, got {_show(value)}")
    if bool((v.abs() > hi).any()):
        raise ValueError(
            f"{name}: {_show(value)} is out of range: |{name}| must be at most {hi:.3g} ({what})"
        )


def check_pixels(value, name: str) -> int:
    """A positive whole number of pixels (ints, integral floats and numpy integers are accepted)."""
    return check_whole(value, name, "a positive whole number of pixels", minimum=1)


def check_whole(value, name: str, what: str, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
    """A whole number in ``[minimum, maximum]`` as an int (integral floats too; bools and strings are
    refused: ``True`` is not one pixel); ValueError naming ``name`` and saying ``what`` is expected."""
    try:
        refuse_non_real(value, name, what)
        v = float(value)
        ok = v.is_integer() and minimum <= v <= maximum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        limit = f", at most {maximum}" if isinstance(value, (int, float, np.number)) else ""
        raise ValueError(f"{name}: must be {what}{limit}, got {_show(value)}")
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


def check_k_inv(k_inv: torch.Tensor, name: str = "k_inv") -> None:
    """Refuse inverse intrinsics ``[..., 3, 3]`` that are not finite, singular, or too ill-conditioned for
    rays in their dtype (Frobenius condition number above 1/eps): their pixels' rays coincide, and an
    all-zero ``k_inv`` would render a zero image."""
    dtype = k_inv.dtype if k_inv.is_floating_point() else torch.get_default_dtype()
    limit = 1.0 / torch.finfo(dtype).eps
    kind = str(dtype).replace("torch.", "")
    for b, m in enumerate(k_inv.detach().to(torch.float64).reshape(-1, 3, 3).tolist()):
        cond = _condition3(m)
        if not cond <= limit:  # NaN (non-finite entries) too
            which = f"{name}[{b}]" if k_inv.reshape(-1, 3, 3).shape[0] > 1 else name
            raise ValueError(
                f"{which}: the inverse intrinsics {m} are singular or too ill-conditioned for {kind} rays "
                f"(condition number {cond:.3g}, at most {limit:.3g}): every pixel's ray would (nearly) coincide"
            )


def _condition3(m: list[list[float]]) -> float:
    """‖M‖_F · ‖M⁻¹‖_F of a 3×3 (inf when singular), by cofactors: no torch ops on the render path."""
    (a, b, c), (d, e, f), (g, h, i) = m
    cof = (e * i - f * h, f * g - d * i, d * h - e * g)
    det = a * cof[0] + b * cof[1] + c * cof[2]
    if not math.isfinite(det) or det == 0.0:
        return math.inf if math.isfinite(det) else math.nan
    adj = (*cof, c * h - b * i, a * i - c * g, b * g - a * h, b * f - c * e, c * d - a * f, a * e - b * d)
    norm = math.sqrt(sum(x * x for row in m for x in row))
    return norm * math.sqrt(sum(x * x for x in adj)) / abs(det)
