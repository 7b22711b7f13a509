"""Image similarities for 2D/3D registration (nanodrr 0.1.7's ``metrics.ncc``): global, patch-wise,
multiscale and gradient normalized cross-correlation, each returning one score per batch element.

Patch-wise NCC is the mean over every ``patch_size × patch_size`` window (stride 1) of the window's
NCC. nanodrr materialises the windows (``patch_size²`` copies of the image); here the window means,
variances and covariances are box filters of the (centred) images, in float64 where the device has
it so that E[x²] − E[x]² does not cancel: memory stays a few images and time O(H·W) whatever the
patch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "GradientNormalizedCrossCorrelation2d",
    "MultiscaleNormalizedCrossCorrelation2d",
    "NormalizedCrossCorrelation2d",
]


def _check_patch_size(patch_size) -> int | None:
    if patch_size is None:
        return None
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size: expected None or an integer >= 1, got {patch_size!r}")
    return patch_size


def _check_nonnegative(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    return v


def _check_pair(x1: torch.Tensor, x2: torch.Tensor) -> None:
    for name, x in (("x1", x1), ("x2", x2)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor [B, C, H, W], got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{name}: expected shape [B, C, H, W], got {list(x.shape)}")
    if x1.shape != x2.shape:
        raise ValueError(
            f"x1, x2: the images must have the same shape, got {list(x1.shape)} and {list(x2.shape)}"
        )


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64


class NormalizedCrossCorrelation2d(torch.nn.Module):
    """NCC of two batches of images ``[B, C, H, W]`` → ``[B]``, in [−1, 1].

    Each channel (or each window, with ``patch_size``) is standardised as (x − mean)/sqrt(var + eps)
    (population variance) and the score is the mean over channels, windows and pixels of the product:
    for one channel and no patches, cov(x1, x2)/sqrt((var1 + eps)(var2 + eps)).

    Args:
        patch_size: None (global NCC) or the side of the square windows (stride 1).
        eps: added to each variance, so flat images or windows score 0 instead of NaN.
    """

    def __init__(self, patch_size: int | None = None, eps: float = 1e-7):
        super().__init__()
        self.patch_size = _check_patch_size(patch_size)
        self.eps = _check_nonnegative(eps, "eps")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        _check_pair(x1, x2)
        dtype = torch.promote_types(x1.dtype, x2.dtype)
        x1, x2 = x1.to(dtype), x2.to(dtype)
        if self.patch_size is None:
            return _global_ncc(x1, x2, self.eps)
        p = self.patch_size
        if p > x1.shape[-2] or p > x1.shape[-1]:
            raise ValueError(f"patch_size: {p} is larger than the images ({x1.shape[-2]}×{x1.shape[-1]})")
        return _patch_ncc(x1, x2, p, self.eps)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, eps={self.eps}"


def _global_ncc(x1: torch.Tensor, x2: torch.Tensor, eps: float) -> torch.Tensor:
    d1 = x1 - x1.mean(dim=(-2, -1), keepdim=True)
    d2 = x2 - x2.mean(dim=(-2, -1), keepdim=True)
    var1 = (d1 * d1).mean(dim=(-2, -1))
    var2 = (d2 * d2).mean(dim=(-2, -1))
    cov = (d1 * d2).mean(dim=(-2, -1))
    return (cov / ((var1 + eps) * (var2 + eps)).sqrt()).mean(-1)


def _patch_ncc(x1: torch.Tensor, x2: torch.Tensor, p: int, eps: float) -> torch.Tensor:
    acc = _accumulation_dtype(x1)
    # centred first (a constant shift changes no window's statistics): smaller sums, less cancellation
    a = x1.to(acc) - x1.detach().to(acc).mean(dim=(-2, -1), keepdim=True)
    b = x2.to(acc) - x2.detach().to(acc).mean(dim=(-2, -1), keepdim=True)
    m1, m2, s11, s22, s12 = _window_means(torch.stack([a, b, a * a, b * b, a * b]), p).unbind(0)
    var1 = (s11 - m1 * m1).clamp(min=0.0)
    var2 = (s22 - m2 * m2).clamp(min=0.0)
    cov = s12 - m1 * m2
    ncc = cov / ((var1 + eps) * (var2 + eps)).sqrt()
    return ncc.mean(dim=(-3, -2, -1)).to(x1.dtype)


def _window_means(x: torch.Tensor, p: int) -> torch.Tensor:
    """Means over every p × p window (stride 1) of the last two dimensions. float64: differences of
    an integral image (O(1) per window); float32: two separable running means (no long sums)."""
    if x.dtype == torch.float64:
        s = F.pad(x.cumsum(-1).cumsum(-2), (1, 0, 1, 0))
        return (s[..., p:, p:] - s[..., :-p, p:] - s[..., p:, :-p] + s[..., :-p, :-p]) / (p * p)
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    y = F.avg_pool2d(F.avg_pool2d(x.reshape(-1, 1, h, w), (1, p), stride=1), (p, 1), stride=1)
    return y.reshape(*lead, *y.shape[-2:])


class MultiscaleNormalizedCrossCorrelation2d(torch.nn.Module):
    """Weighted sum of NCCs at several patch sizes ``[B, C, H, W]`` → ``[B]``.

    Args:
        patch_sizes: one entry per scale, None for the global NCC (e.g. ``(None, 13)``).
        patch_weights: the weight of each scale (same length).
        eps: every scale's ``eps``.
    """

    def __init__(
        self,
        patch_sizes: Sequence[int | None] = (None,),
        patch_weights: Sequence[float] = (1.0,),
        eps: float = 1e-4,
    ):
        super().__init__()
        patch_sizes, patch_weights = list(patch_sizes), list(patch_weights)
        if len(patch_sizes) != len(patch_weights) or not patch_sizes:
            raise ValueError(
                f"patch_sizes, patch_weights: expected one weight per scale (at least one), got "
                f"{len(patch_sizes)} sizes and {len(patch_weights)} weights"
            )
        self.patch_weights = [_check_weight(w) for w in patch_weights]
        self.nccs = torch.nn.ModuleList([NormalizedCrossCorrelation2d(p, eps) for p in patch_sizes])

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        scores = [w * ncc(x1, x2) for w, ncc in zip(self.patch_weights, self.nccs, strict=True)]
        return torch.stack(scores).sum(0)


def _check_weight(w) -> float:
    try:
        v = float(w)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v):
        raise ValueError(f"patch_weights: must be finite numbers, got {w!r}")
    return v


class GradientNormalizedCrossCorrelation2d(NormalizedCrossCorrelation2d):
    """NCC of the images' Sobel gradients (x and y responses as two channels per input channel),
    after a Gaussian blur of standard deviation ``sigma`` pixels (none when ``sigma == 0``).

    The blur kernel has int(6σ + 1) | 1 taps and reflect padding; the Sobel filters zero padding;
    half-precision inputs are filtered in float32 (as nanodrr), float64 stays float64.
    """

    def __init__(self, patch_size: int | None = None, sigma: float = 1.0, eps: float = 1e-7):
        super().__init__(patch_size, eps)
        self.sigma = _check_nonnegative(sigma, "sigma")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        _check_pair(x1, x2)
        return super().forward(sobel_gradients(x1, self.sigma), sobel_gradients(x2, self.sigma))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma={self.sigma}"


def sobel_gradients(img: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, 2C, H, W]``: per channel the responses to (left − right) and
    (top − bottom) Sobel kernels of the image blurred by a Gaussian of ``sigma`` pixels."""
    x = img if img.dtype in (torch.float32, torch.float64) else img.float()
    B, C, H, W = x.shape
    x = x.reshape(B * C, 1, H, W)
    if sigma > 0:
        size = int(6 * sigma + 1) | 1
        pad = size // 2
        if pad >= H or pad >= W:
            raise ValueError(f"sigma: a blur of {sigma} px needs images larger than {pad} px, got {H}×{W}")
        taps = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
        g = torch.exp(-0.5 * (taps / sigma) ** 2)
        g = g / g.sum()
        x = F.pad(x, [pad] * 4, mode="reflect")
        x = F.conv2d(F.conv2d(x, g.reshape(1, 1, 1, size)), g.reshape(1, 1, size, 1))
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    diff = torch.tensor([1.0, 0.0, -1.0], dtype=x.dtype, device=x.device)
    kernels = torch.stack([torch.outer(smooth, diff), torch.outer(diff, smooth)])[:, None]  # [2, 1, 3, 3]
    return F.conv2d(x, kernels, padding=1).reshape(B, 2 * C, H, W)
