"""``Registration``: a pose to optimise, rendered through :func:`render` (nanodrr 0.1.7's semantics)."""

from __future__ import annotations

import math

import torch
from jaxtyping import Float

from .._validation import as_matrix, check_pixels, check_rigid
from ..data.subject import Subject
from ..drr.render import render
from ..geometry import convert, transform_point

__all__ = ["Registration"]


class Registration(torch.nn.Module):
    """A differentiable DRR whose pose is a small rigid perturbation of a fixed initial pose.

    The parameters ``_rot`` (a rotation vector, radians) and ``_xyz`` (mm), ``[1, 3]`` each, make
    T = ``convert(_rot, _xyz, "so3_log")`` = [R | R·xyz], applied in the initial camera frame about
    the volume's isocenter c (in that frame):

        pose = rt_inv · Tr(c) · T · Tr(−c)

    so zero parameters give the initial pose, and rotations turn the camera about the isocenter
    instead of the source (as nanodrr). With B views, the one perturbation is applied in each view's
    own camera frame (as nanodrr). ``forward`` renders through :func:`render`, so on CPU the fused
    numba pose gradients run (no per-sample tensors); the parameters take ``rt_inv``'s dtype (float32
    unless it is float64), where nanodrr draws them in the default dtype (float64 poses then fail).

    Args:
        subject: the volume.
        rt_inv: ``[B, 4, 4]`` (or ``[4, 4]``) rigid initial camera-to-world poses.
        k_inv: ``[B | 1, 3, 3]`` (or ``[3, 3]``) inverse intrinsics.
        sdd: source-to-detector distance (mm), a number or ``[B | 1]``.
        height, width: detector size in pixels.
        eps: standard deviation of the parameters' random start (as nanodrr: tiny, not zero).

    ``rt_inv``, ``k_inv`` and ``sdd`` are copied into buffers (:meth:`rescale_` changes its own copy).
    """

    def __init__(
        self,
        subject: Subject,
        rt_inv: Float[torch.Tensor, "*#batch 4 4"],
        k_inv: Float[torch.Tensor, "*#batch 3 3"],
        sdd: float | Float[torch.Tensor, "*#batch"],
        height: int,
        width: int,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if not isinstance(subject, Subject):
            raise TypeError(f"subject: expected a nanodrr_engine Subject, got {type(subject).__name__}")
        device = subject.world_to_voxel.device
        rt = as_matrix(rt_inv, "rt_inv", (4, 4), device=device)
        dtype = torch.float64 if rt.dtype == torch.float64 else torch.float32
        rt = rt.detach().to(dtype).reshape(-1, 4, 4).clone()
        check_rigid(rt, "rt_inv")
        k = as_matrix(k_inv, "k_inv", (3, 3), dtype=dtype, device=device).detach().reshape(-1, 3, 3).clone()
        s = torch.as_tensor(sdd, dtype=dtype, device=device).detach().reshape(-1).clone()
        if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
            raise ValueError(f"sdd: must be positive and finite, got {s.tolist()}")
        B = rt.shape[0]
        for name, t in (("k_inv", k), ("sdd", s)):
            if t.shape[0] not in (1, B):
                raise ValueError(f"{name}: batch size {t.shape[0]} does not match rt_inv's ({B})")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps: must be a finite number >= 0, got {eps!r}")

        self.subject = subject
        self.register_buffer("rt_inv", rt)
        self.register_buffer("k_inv", k)
        self.register_buffer("sdd", s)
        self.height = check_pixels(height, "height")
        self.width = check_pixels(width, "width")

        # the isocenter in each initial camera frame: the pivot of the perturbation
        c = transform_point(torch.linalg.inv(rt), subject.isocenter.to(dtype)[None])
        self.register_buffer("pivot", _translation(c))
        self.register_buffer("pivot_inv", _translation(-c))
        self._rot = torch.nn.Parameter(eps * torch.randn(1, 3, dtype=dtype, device=device))
        self._xyz = torch.nn.Parameter(eps * torch.randn(1, 3, dtype=dtype, device=device))

    def forward(
        self, n_samples: int = 500, soft_labels: bool = False, backend: str = "auto", method: str = "raymarch"
    ) -> Float[torch.Tensor, "batch channels height width"]:
        """``[B, C, H, W]`` DRRs at :attr:`pose` (arguments as :func:`render`; ``method`` is ours)."""
        return render(
            self.subject,
            self.k_inv,
            self.pose,
            self.sdd,
            self.height,
            self.width,
            n_samples,
            soft_labels,
            backend=backend,
            method=method,
        )

    @property
    def pose(self) -> Float[torch.Tensor, "batch 4 4"]:
        """The current camera-to-world poses ``[B, 4, 4]``, differentiable w.r.t. the parameters."""
        T = convert(self._rot, self._xyz, "so3_log")
        return self.rt_inv @ self.pivot @ T @ self.pivot_inv

    @torch.no_grad()
    def rescale_(self, scale: float) -> None:
        """Render at ``scale`` × the resolution over the same field of view (pixel spacing / scale):
        divides the focal terms of K⁻¹ by ``scale`` and rounds the detector size."""
        try:
            ok = math.isfinite(float(scale)) and float(scale) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"scale: must be a positive finite number, got {scale!r}")
        scale = float(scale)
        height, width = round(self.height * scale), round(self.width * scale)
        if height < 1 or width < 1:
            raise ValueError(f"scale: {scale} would leave a {height}×{width} detector")
        self.k_inv[..., 0, 0] /= scale
        self.k_inv[..., 1, 1] /= scale
        self.height, self.width = height, width

    def extra_repr(self) -> str:
        return f"views={self.rt_inv.shape[0]}, height={self.height}, width={self.width}"


def _translation(t: torch.Tensor) -> torch.Tensor:
    """``[B, 3]`` → pure translations ``[B, 4, 4]``."""
    out = torch.eye(4, dtype=t.dtype, device=t.device).repeat(t.shape[0], 1, 1)
    out[:, :3, 3] = t
    return out
