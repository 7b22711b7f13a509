"""Issue 13, defect 9 in the engine: DICOM angle ranges, carm_to_rt_inv ↔ rt_inv_to_carm, real inputs only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nanodrr_engine import carm_to_rt_inv, make_rt_inv, rt_inv_to_carm

ISO = np.array([10.0, -20.0, 30.0])


def source_direction(p, s):
    """docs/geometry.md: source − isocenter in units of SOD for DICOM angles (degrees)."""
    p, s = math.radians(p), math.radians(s)
    return np.array([math.sin(p) * math.cos(s), -math.cos(p) * math.cos(s), -math.sin(s)])


@pytest.mark.parametrize(
    ("primary", "secondary", "name"),
    [
        (0.0, 95.0, "secondary"),
        (0.0, 180.0, "secondary"),
        (0.0, -90.5, "secondary"),
        (180.01, 0.0, "primary"),
        (-181.0, 0.0, "primary"),
        (1e300, 0.0, "primary"),
        (torch.tensor([0.0, 200.0]), torch.tensor([0.0, 0.0]), "primary"),
        (torch.tensor([0.0, 10.0]), torch.tensor([0.0, -91.0]), "secondary"),
    ],
)
def test_angles_outside_the_dicom_ranges_are_refused(primary, secondary, name):
    with pytest.raises(ValueError, match=rf"{name}: must be in \[-?\d+, \d+\] degrees"):
        carm_to_rt_inv(primary, secondary, 850.0, ISO)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: carm_to_rt_inv(True, 0.0, 850.0), "primary"),
        (lambda: carm_to_rt_inv(0.0, 1j, 850.0), "secondary"),
        (lambda: carm_to_rt_inv("10", 0.0, 850.0), "primary"),
        (lambda: carm_to_rt_inv(0.0, 0.0, True), "sod"),
        (lambda: carm_to_rt_inv(0.0, float("nan"), 850.0), "secondary"),
        (lambda: make_rt_inv([True, False, True], [0.0, 850.0, 0.0]), "rotation"),
        (lambda: make_rt_inv(np.zeros(3, np.complex64), [0.0, 850.0, 0.0]), "rotation"),
        (lambda: make_rt_inv([0.0, 0.0, 0.0], [0.0, 850.0, 0.0], "AP", [True, True, True]), "isocenter"),
        (lambda: rt_inv_to_carm(np.diag([2.0, 1.0, 1.0, 1.0])), "rt_inv"),
        (lambda: rt_inv_to_carm(np.eye(4, dtype=bool)), "rt_inv"),
    ],
)
def test_non_real_or_non_rigid_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


GRID = [
    (p, s)
    for p in (-180.0, -179.9999, -91.0, -45.0, 0.0, 1e-7, 33.0, 90.0, 179.9999, 180.0)
    for s in (-90.0, -89.99999, -45.0, 0.0, 12.0, 89.99999, 90.0)
]


def test_rt_inv_to_carm_inverts_carm_to_rt_inv_on_the_whole_range():
    p = torch.tensor([a for a, _ in GRID], dtype=torch.float64)
    s = torch.tensor([b for _, b in GRID], dtype=torch.float64)
    poses = carm_to_rt_inv(p, s, 640.0, ISO)  # batched
    for (pi, si), rt in zip(GRID, poses, strict=True):
        np.testing.assert_allclose((rt[:3, 3].numpy() - ISO) / 640.0, source_direction(pi, si), atol=1e-12)
        gp, gs, gd = rt_inv_to_carm(rt, ISO)
        assert (gp, gs, gd) == pytest.approx((180.0 if pi == -180.0 else pi, si, 640.0), abs=1e-9), (pi, si)
        torch.testing.assert_close(carm_to_rt_inv(gp, gs, gd, ISO), rt, atol=1e-9, rtol=0)  # same pose again


def test_the_poles_keep_the_in_plane_orientation():
    """At secondary ±90 every primary has the same source; the primary read back is the image's orientation."""
    for s in (90.0, -90.0):
        for p in (-150.0, -10.0, 0.0, 75.0, 180.0):
            rt = carm_to_rt_inv(p, s, 850.0, ISO)
            assert rt_inv_to_carm(rt, ISO)[:2] == pytest.approx((p, s), abs=1e-9)


def test_a_mirrored_pose_reports_the_proper_pose_with_its_source_and_beam():
    for p, s in ((0.0, 0.0), (30.0, -25.0), (-120.0, 70.0)):
        pa = make_rt_inv(
            torch.tensor([p, s, 0.0], dtype=torch.float64), torch.tensor([0.0, -850.0, 0.0]), "PA", ISO
        )
        assert torch.linalg.det(pa[:3, :3]).item() == pytest.approx(-1.0)
        got = rt_inv_to_carm(pa, ISO)
        assert got == pytest.approx((p, s, 850.0), abs=1e-9)
        flipped = carm_to_rt_inv(*got, ISO) @ torch.diag(
            torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
        )
        torch.testing.assert_close(flipped, pa, atol=1e-9, rtol=0)


def test_gradients_still_flow_through_the_angles():
    p = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    carm_to_rt_inv(p, 10.0, 850.0, ISO)[0, 3].backward()
    # source x = iso_x + sod · sin P · cos S → d/dP (degrees)
    expected = 850.0 * math.cos(math.radians(20.0)) * math.cos(math.radians(10.0)) * math.pi / 180.0
    assert p.grad.item() == pytest.approx(expected, rel=1e-12)
