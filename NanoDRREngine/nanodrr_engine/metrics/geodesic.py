"""Pose distance (nanodrr 0.1.7's ``metrics.DoubleGeodesicSE3``)."""

from __future__ import annotations

import math

import torch

__all__ = ["DoubleGeodesicSE3"]


class DoubleGeodesicSE3(torch.nn.Module):
    """Angular and translational geodesics between poses ``[B, 4, 4]``, both in mm.

    For poses [R₁ | t₁] and [R₂ | t₂]:

    - ``rot`` = (sdd/2) · θ, θ = the angle of R₁ᵀR₂, from |R₂ − R₁|_F = 2√2 · sin(θ/2), with the
      sine clamped at 1 − eps (finite gradients at θ = π): an arc length at half the source-to-detector
      distance, so that angles and millimetres weigh alike;
    - ``xyz`` = |R₁ᵀt₁ − R₂ᵀt₂|, clamped below at sqrt(eps) (the translations of :func:`convert`'s
      parameterization, ``translation = Rᵀt``);
    - ``dou`` = sqrt(rot² + xyz² + eps).

    Returns ``(rot, xyz, dou)``, each ``[B]``.
    """

    def __init__(self, sdd: float, eps: float = 1e-7):
        super().__init__()
        try:
            ok = math.isfinite(float(sdd)) and float(sdd) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"sdd: must be a positive finite distance (mm), got {sdd!r}")
        if not (isinstance(eps, (int, float)) and 0 <= eps < 1):
            raise ValueError(f"eps: must be in [0, 1), got {eps!r}")
        self.sdr = float(sdd) / 2
        self.eps = float(eps)

    def forward(
        self, pose_1: torch.Tensor, pose_2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for name, p in (("pose_1", pose_1), ("pose_2", pose_2)):
            if not isinstance(p, torch.Tensor) or p.ndim < 2 or tuple(p.shape[-2:]) != (4, 4):
                raise ValueError(f"{name}: expected shape [B, 4, 4], got {list(getattr(p, 'shape', []))}")
        r1, r2 = pose_1[..., :3, :3], pose_2[..., :3, :3]
        c1 = (r1.transpose(-1, -2) @ pose_1[..., :3, 3:])[..., 0]
        c2 = (r2.transpose(-1, -2) @ pose_2[..., :3, 3:])[..., 0]
        half_sine = torch.linalg.matrix_norm(r2 - r1) / (2.0 * math.sqrt(2.0))
        rot = self.sdr * 2.0 * torch.asin(half_sine.clamp(max=1.0 - self.eps))
        xyz = ((c1 - c2) ** 2).sum(-1).clamp(min=self.eps).sqrt()
        dou = (rot * rot + xyz * xyz + self.eps).sqrt()
        return rot, xyz, dou

    def extra_repr(self) -> str:
        return f"sdr={self.sdr}, eps={self.eps}"
