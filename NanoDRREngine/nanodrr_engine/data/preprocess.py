"""Hounsfield units → linear attenuation coefficients (μ, 1/mm)."""

from __future__ import annotations

import torch

#: μ of water at ~70 keV (1/mm).
MU_WATER = 0.0192
#: μ of cortical bone at ~70 keV (1/mm).
MU_BONE = 0.0573
#: HU value taken as pure cortical bone.
HU_BONE = 1000.0


def hu_to_mu(
    data: torch.Tensor,
    mu_water: float | torch.Tensor = MU_WATER,
    mu_bone: float | torch.Tensor = MU_BONE,
    hu_bone: float | torch.Tensor = HU_BONE,
) -> torch.Tensor:
    """Bilinear HU → μ model: air–water below 0 HU, water–bone above.

    Args:
        data: HU volume of any shape (``[1, 1, K, J, I]`` in a Subject).
        mu_water, mu_bone, hu_bone: scalars or tensors (differentiable: useful for contrast fitting).

    Returns:
        μ in 1/mm, same shape; never negative.
    """
    h = data.clamp(min=-1000.0)
    low = mu_water * (1.0 + h / 1000.0)
    high = mu_water + (mu_bone - mu_water) * (h / hu_bone)
    return torch.where(h <= 0, low, high).clamp(min=0.0)
