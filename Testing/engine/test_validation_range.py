"""Values beyond float32 are out of range (not "not finite"), and singular inverse intrinsics are refused.

Before: sdd/delx/μ at 1e300 became inf in float32 and were reported as "must be positive and finite",
1e-300 became 0 ("must be positive", though it is), and an all-zero ``k_inv`` rendered a zero image.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from nanodrr_engine import DRR, Subject, make_k_inv, render

F32 = np.finfo(np.float32)
LENGTHS = f"[{math.sqrt(F32.tiny):.3g}, {math.sqrt(F32.max):.3g}]"  # [1.08e-19, 1.84e+19] mm: squares fit
POSITIVE = f"[{F32.tiny:.3g}, {F32.max:.3g}]"  # [1.18e-38, 3.4e+38]
GOOD = dict(sdd=1020.0, delx=2.0, dely=2.0, x0=0.0, y0=0.0, height=20, width=20)


@pytest.mark.parametrize("name", ["sdd", "delx", "dely"])
@pytest.mark.parametrize("value", [1e300, 1e-300, 1e20])
def test_distances_beyond_float32_are_out_of_range(name, value):
    with pytest.raises(
        ValueError,
        match=rf"^{name}: {re.escape(f'{value:g}')} is out of range: it must lie in {re.escape(LENGTHS)}",
    ):
        make_k_inv(**{**GOOD, name: value})
    with pytest.raises(ValueError, match=rf"^{name}: .*out of range"):
        DRR.from_carm_intrinsics(**{**GOOD, name: value})


@pytest.mark.parametrize("name", ["x0", "y0"])
def test_offsets_beyond_float32_are_out_of_range(name):
    with pytest.raises(
        ValueError, match=rf"^{name}: -1e\+300 is out of range: \|{name}\| must be at most 1.84e\+19"
    ):
        make_k_inv(**{**GOOD, name: -1e300})
    make_k_inv(**{**GOOD, name: -35.0})  # negative offsets are fine
    with pytest.raises(ValueError, match=f"{name}: must be finite"):
        make_k_inv(**{**GOOD, name: math.nan})


def test_float64_intrinsics_take_the_float64_range():
    k = make_k_inv(**{**GOOD, "sdd": 1e5, "delx": 1e-4, "dely": 1e-4}, dtype=torch.float64)  # fx = 1e9
    assert torch.isfinite(k).all()
    with pytest.raises(ValueError, match=r"k_inv of sdd=100000, delx=0.0001.*ill-conditioned for float32"):
        make_k_inv(**{**GOOD, "sdd": 1e5, "delx": 1e-4, "dely": 1e-4})  # float32 cannot tell its rays apart


@pytest.mark.parametrize("name", ["mu_water", "mu_bone", "hu_bone"])
@pytest.mark.parametrize("value", [1e300, 1e-300])
def test_mu_parameters_beyond_float32_are_out_of_range(name, value):
    msg = rf"^{name}: {re.escape(f'{value:g}')} is out of range: it must lie in {re.escape(POSITIVE)}"
    with pytest.raises(ValueError, match=msg):
        Subject.from_array(np.zeros((2, 2, 2)), np.eye(4), **{name: value})
    s = Subject.from_array(np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(ValueError, match=msg):
        setattr(s, name, value)
    with pytest.raises(ValueError, match=msg):
        s.set_mu(**{name: value})
    with pytest.raises(ValueError, match=f"{name}: must be positive and finite"):
        setattr(s, name, math.inf)
    s.set_mu(**{name: torch.tensor(1.0, requires_grad=True)})  # tensors (fits) are not synchronised on


@pytest.fixture
def small():
    subject = Subject.from_array(np.full((6, 7, 8), 100.0, np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    rt = torch.eye(4)
    rt[:3, 3] = torch.tensor([7.0, 6.0, -500.0])
    return subject, rt


@pytest.mark.parametrize(
    "k_inv",
    [torch.zeros(3, 3), torch.tensor([[1e-3, 0, -0.5], [2e-3, 0, -1.0], [0, 0, 1.0]]), torch.zeros(2, 3, 3)],
    ids=["zero", "rank-2", "batch"],
)
def test_singular_k_inv_is_refused(small, k_inv):
    subject, rt = small
    with pytest.raises(
        ValueError, match=r"^k_inv(\[0\])?: the inverse intrinsics .* are singular or too ill-conditioned"
    ):
        render(subject, k_inv, rt, 1000.0, 8, 8)
    with pytest.raises(ValueError, match=r"^k_inv(\[0\])?: .*singular"):
        DRR(k_inv, torch.tensor([1000.0]), 8, 8)


def test_k_inv_conditioning_follows_the_geometry_dtype(small):
    """K⁻¹ = diag(1e-8, 1e-8, 1): condition number 1e8, beyond float32's 1/eps (8.4e6), within float64's."""
    subject, rt = small
    k = torch.diag(torch.tensor([1e-8, 1e-8, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"condition number 1\.41e\+08, at most 8\.39e\+06"):
        render(subject, k, rt, 1000.0, 4, 4)
    render(subject, k, rt.double(), 1000.0, 4, 4)  # float64 pose: float64 geometry
    k[0, 0] = k[1, 1] = 1e-3  # an ordinary detector (fx = 1000 pixels)
    assert render(subject, k, rt, 1000.0, 4, 4).abs().sum() > 0


def test_a_later_singular_k_inv_on_a_drr_is_refused():
    drr = DRR.from_carm_intrinsics(**GOOD)
    with pytest.raises(ValueError, match=r"k_inv: .*singular"):
        drr.k_inv = torch.zeros(1, 3, 3)


def test_render_sdd_and_matrices_beyond_float32(small):
    subject, rt = small
    k = make_k_inv(**GOOD)
    with pytest.raises(
        ValueError, match=rf"^sdd: 1e\+300 is out of range: it must lie in {re.escape(LENGTHS)}"
    ):
        render(subject, k, rt, 1e300, 20, 20)
    with pytest.raises(
        ValueError, match=r"^k_inv: 1e\+300 is out of range: float32 holds magnitudes up to 3.4e\+38"
    ):
        render(
            subject,
            torch.tensor([[1e300, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=torch.float64),
            rt,
            1000.0,
            4,
            4,
        )
    bad_pose = rt.tolist()
    bad_pose[0][3] = 1e300  # a Python float: float32 by default, as torch.as_tensor would make it
    with pytest.raises(ValueError, match=r"^rt_inv: 1e\+300 is out of range"):
        render(subject, k, bad_pose, 1000.0, 20, 20)
    with pytest.raises(ValueError, match="rt_inv: contains NaN or infinite values"):
        render(subject, k, torch.full((4, 4), math.inf), 1000.0, 20, 20)
