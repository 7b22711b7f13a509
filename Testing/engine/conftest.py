"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest
import torch
from nanodrr_engine import DRR, Subject, make_rt_inv
from nanodrr_engine.data.phantom import make_chest_phantom, rotation_matrix


@pytest.fixture(scope="module")
def labelled_phantom():
    """The labelled chest phantom on an oblique grid, a 20×23 detector and two oblique float64 poses."""
    vol, labels, v2w, _ = make_chest_phantom(spacing=(3.0, 3.5, 4.0), direction=rotation_matrix(rz=20.0))
    subject = Subject.from_array(vol, v2w, label=labels)
    drr = DRR.from_carm_intrinsics(1020.0, 12.0, 12.0, 0.0, 0.0, 20, 23)
    rot = torch.tensor([[35.0, 20.0, 10.0], [-50.0, 5.0, 0.0]], dtype=torch.float64)
    rt = make_rt_inv(
        rot, torch.tensor([[0.0, 850.0, 0.0]], dtype=torch.float64).expand(2, 3), "AP", subject.isocenter
    )
    return subject, drr, rt
