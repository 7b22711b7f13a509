"""Matplotlib display of DRRs with structure outlines (optional dependency: ``pip install nanodrr-engine[plot]``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def plot_drr(
    img: torch.Tensor,
    mask: torch.Tensor | None = None,
    title: list[str] | None = None,
    ticks: bool = True,
    axs=None,
    cmap: str = "gray",
    mask_cmap: str = "Set2",
    mask_n_colors: int = 7,
    interior_alpha: float = 0.3,
    edge_alpha: float = 1.0,
    edge_width: int = 1,
    **imshow_kwargs,
):
    """Show a batch of DRRs, summing channels, with outlined structures.

    Args:
        img: ``[B, C, H, W]``. With C > 1 (a labelmap render) channels 1… become the mask (``img > 0``).
        mask: explicit ``[B, C, H, W]`` boolean mask (channel 0 = background); not with a multi-channel ``img``.
        title: one label per image. ticks: show 1-based pixel ticks.
        axs: existing axes (one per image), else a new figure.
        cmap, mask_cmap, mask_n_colors, interior_alpha, edge_alpha, edge_width: styling.
        **imshow_kwargs: passed to ``imshow`` for the DRR.

    Returns:
        The list of axes.
    """
    import matplotlib.pyplot as plt

    if img.ndim != 4:
        raise ValueError(f"img: expected [B, C, H, W], got shape {list(img.shape)}")
    if img.shape[1] > 1 and mask is not None:
        raise ValueError("mask: pass either a multi-channel img or an explicit mask, not both")
    img = img.detach().float().cpu()
    if img.shape[1] > 1:
        mask = img > 0
    B = img.shape[0]
    if axs is None:
        _, axs = plt.subplots(1, B, figsize=(4 * B, 4), squeeze=False)
        axs = list(axs[0])
    if len(axs) != B:
        raise ValueError(f"axs: expected {B} axes, got {len(axs)}")
    total = img.sum(dim=1)
    for b, ax in enumerate(axs):
        ax.imshow(total[b].numpy(), cmap=cmap, **imshow_kwargs)
        if title is not None:
            ax.set_xlabel(title[b])
        if ticks:
            H, W = total.shape[-2:]
            ax.set_xticks([0, W - 1], [1, W])
            ax.set_yticks([0, H - 1], [1, H])
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    if mask is not None:
        _overlay(
            axs, mask.detach().cpu().bool(), mask_cmap, mask_n_colors, interior_alpha, edge_alpha, edge_width
        )
    return axs


def _overlay(axs, mask, cmap_name, n_colors, interior_alpha, edge_alpha, edge_width) -> None:
    import matplotlib

    colors = matplotlib.colormaps[cmap_name].resampled(n_colors)
    m = mask[:, 1:].float()  # channel 0 is background
    k = 2 * edge_width + 1
    eroded = -F.max_pool2d(-m, k, stride=1, padding=edge_width)
    edge = (m - eroded) > 0
    for b, ax in enumerate(axs):
        H, W = m.shape[-2:]
        rgba = torch.zeros(H, W, 4)
        for c in range(m.shape[1]):
            if not m[b, c].any():
                continue
            color = torch.tensor(colors(c % n_colors), dtype=torch.float32)
            inside = m[b, c].bool()
            rgba[inside] = torch.cat([color[:3], torch.tensor([interior_alpha])])
            rgba[edge[b, c]] = torch.cat([color[:3], torch.tensor([edge_alpha])])
        ax.imshow(rgba.numpy())
