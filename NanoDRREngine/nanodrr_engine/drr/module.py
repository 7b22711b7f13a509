"""``DRR``: a renderer module whose detector geometry travels with its device."""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float

from .. import budget
from .._validation import as_device, as_matrix, check_bool, check_k_inv, check_length, check_pixels
from ..camera.intrinsics import make_k_inv
from ..data.subject import Subject
from .rays import make_src, make_tgt
from .render import render


class DRR(torch.nn.Module):
    """Renders a :class:`Subject` from camera-to-world poses with fixed intrinsics.

    Args:
        k_inv: ``[B, 3, 3]`` inverse intrinsics (B = 1 shared, or one per image, e.g. biplane).
        sdd: ``[B]`` source-to-detector distances (mm).
        height, width: detector size in pixels.
        orthographic: parallel-beam instead of cone-beam rays.
    """

    _intrinsic_params = frozenset({"k_inv", "sdd", "height", "width", "orthographic"})

    def __init__(
        self,
        k_inv: Float[torch.Tensor, "*#batch 3 3"],
        sdd: float | Float[torch.Tensor, "*#batch"],
        height: int,
        width: int,
        orthographic: bool = False,
    ):
        super().__init__()
        k_inv = as_matrix(k_inv, "k_inv", (3, 3))
        check_length(sdd, "sdd", k_inv.dtype)
        self.register_buffer("k_inv", k_inv.reshape(-1, 3, 3))
        self.register_buffer("sdd", torch.as_tensor(sdd, dtype=self.k_inv.dtype).reshape(-1))
        self.height = check_pixels(height, "height")
        self.width = check_pixels(width, "width")
        self.orthographic = check_bool(orthographic, "orthographic")
        self._update_rays()

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in self._intrinsic_params and all(hasattr(self, p) for p in self._intrinsic_params):
            self._update_rays()

    def _update_rays(self) -> None:
        # also on assignment (drr.width = ...): on Python scalars and the 3×3 on the host, no GPU work
        check_pixels(self.height, "height")
        check_pixels(self.width, "width")
        check_bool(self.orthographic, "orthographic")
        check_k_inv(self.k_inv)  # an all-zero or singular k_inv would render a zero image
        check_length(self.sdd, "sdd", self.k_inv.dtype)
        B = max(self.k_inv.shape[0], self.sdd.shape[0])
        cost = budget.estimate(B, self.height, self.width, 0, geometry_bytes=self.k_inv.element_size())
        budget.check(cost, "DRR")  # the ray buffers of a 100000×100000 detector would take 240 GB
        tgt = make_tgt(self.k_inv, self.sdd, self.height, self.width)
        self.register_buffer("tgt", tgt, persistent=False)
        self.register_buffer("src", make_src(self.orthographic, tgt, self.sdd), persistent=False)

    @classmethod
    def from_carm_intrinsics(
        cls,
        sdd: float,
        delx: float,
        dely: float,
        x0: float,
        y0: float,
        height: int,
        width: int,
        orthographic: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> DRR:
        """A DRR for a C-arm with these detector parameters (see :func:`make_k_inv`)."""
        device = as_device(device)
        orthographic = check_bool(orthographic, "orthographic")
        k_inv = make_k_inv(sdd, delx, dely, x0, y0, height, width, dtype=dtype, device=device)
        return cls(
            k_inv, torch.tensor([float(sdd)], dtype=k_inv.dtype, device=device), height, width, orthographic
        )

    def forward(
        self,
        subject: Subject,
        rt_inv: Float[torch.Tensor, "*#batch 4 4"],
        n_samples: int = 500,
        soft_labels: bool = False,
        backend: str = "auto",
        method: str = "raymarch",
        progress: Callable[[float], object] | None = None,
    ) -> Float[torch.Tensor, "batch channels height width"]:
        """``[B, C, H, W]`` DRRs of ``subject`` from poses ``rt_inv [B, 4, 4]`` (arguments as :func:`render`;
        ``progress(fraction)`` runs after each chunk of rays and may raise to cancel)."""
        return render(
            subject,
            self.k_inv,
            rt_inv,
            self.sdd,
            self.height,
            self.width,
            n_samples,
            soft_labels,
            self.orthographic,
            self.src,
            self.tgt,
            backend,
            method,
            progress,
        )
