"""plot_drr: channel sum shown, structure outlines drawn where the labelmap channels are non-zero."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from nanodrr_engine.plot import plot_drr

matplotlib.use("Agg")


def test_labelmap_render_shows_the_sum_and_outlines_structures():
    img = torch.zeros(2, 3, 12, 12)
    img[:, 0] = 0.5
    img[:, 1, 3:9, 3:9] = 1.0  # a 6×6 square structure
    axs = plot_drr(img, title=["a", "b"])
    assert len(axs) == 2 and axs[0].get_xlabel() == "a"
    shown, overlay = (im.get_array() for im in axs[0].get_images())
    np.testing.assert_allclose(np.asarray(shown), img[0].sum(0).numpy())
    alpha = np.asarray(overlay)[..., 3]
    assert alpha[3, 5] == pytest.approx(1.0) and alpha[5, 5] == pytest.approx(0.3)  # edge, interior
    assert alpha[0, 0] == 0 and alpha[10, 10] == 0  # outside the structure


def test_bad_plot_input():
    with pytest.raises(ValueError, match="img"):
        plot_drr(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="mask"):
        plot_drr(torch.zeros(1, 2, 4, 4), mask=torch.zeros(1, 2, 4, 4, dtype=torch.bool))
