"""The fast path of ``method="joseph"`` (``backends/numba/joseph.py``): rays marched four in lockstep
(with per-ray plane offsets) and 16-bit fixed-point voxel codes, each checked against an independent
reference or a bound derived by hand."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from nanodrr_engine import DRR, Subject, make_rt_inv
from nanodrr_engine.data.phantom import make_chest_phantom
from nanodrr_engine.drr.backends import available_backends
from nanodrr_engine.drr.rays import slice_geometry
from test_joseph import joseph_reference, smooth_volume

pytestmark = pytest.mark.skipif("numba" not in available_backends("cpu"), reason="numba is not installed")


@pytest.fixture(scope="module")
def ns():
    from nanodrr_engine.drr.backends.numba import joseph as numba_joseph

    return numba_joseph


# --- fixed-point codes ---------------------------------------------------------------------------


def test_codes_round_to_nearest_on_a_scale_of_max_over_65535(ns):
    rng = np.random.default_rng(0)
    vol = torch.from_numpy(rng.uniform(0.0, 0.3, size=(7, 9, 11)).astype(np.float32))
    vol[0, 0, 0] = 0.0
    codes, scale = ns.fixed_point_codes(vol)
    assert codes.dtype == np.uint16 and codes.shape == (vol.numel(),)
    assert scale == pytest.approx(float(vol.max()) / 65535, rel=1e-12)
    assert codes.max() == 65535 and codes[0] == 0
    decoded = codes.astype(np.float64) * scale
    err = np.abs(decoded - vol.numpy().reshape(-1).astype(np.float64))
    assert err.max() <= 0.5 * scale * (1 + 1e-3)


@pytest.mark.parametrize("case", ["negative", "nan", "inf", "all zero", "float16", "bfloat16", "float64"])
def test_codes_are_declined_where_they_would_not_be_exact_enough_or_valid(ns, case):
    vol = torch.rand(4, 5, 6) + 0.1
    if case == "negative":
        vol[1, 2, 3] = -0.01
    elif case == "nan":
        vol[1, 2, 3] = float("nan")
    elif case == "inf":
        vol[1, 2, 3] = float("inf")
    elif case == "all zero":
        vol.zero_()
    else:
        vol = vol.to(getattr(torch, case))
    assert ns.fixed_point_codes(vol) is None


def test_codes_are_cached_per_volume_and_redone_after_an_in_place_edit(ns):
    base = torch.rand(1, 1, 6, 7, 8) + 0.5
    first = ns.fixed_point_codes(base[0, 0])
    again = ns.fixed_point_codes(base[0, 0])  # another view object of the same voxels
    assert again[0] is first[0]
    base.mul_(2.0)
    edited = ns.fixed_point_codes(base[0, 0])
    assert edited[0] is not first[0]
    assert edited[1] == pytest.approx(2.0 * first[1], rel=1e-6)
    other = ns.fixed_point_codes(base[0, 0, 1:])  # a different view: its own codes
    assert other[0].size == 5 * 7 * 8
    n_cached = len(ns._codes_cache)
    del base
    gc.collect()
    assert len(ns._codes_cache) == n_cached - 2  # a freed volume's codes are dropped with it


# --- lockstep quads -----------------------------------------------------------------------------


def _camera_case(shape=(40, 44, 48), height=9, width=26):
    """A smooth identity-geometry subject and a detector whose rays cover it from four poses."""
    vol = smooth_volume(shape, seed=4)
    subject = Subject.from_array(vol, np.eye(4), convert_to_mu=False)
    drr = DRR.from_carm_intrinsics(400.0, 4.0, 4.0, 0.0, 0.0, height, width)
    # AP (j-planes), lateral (i-planes), cranio-caudal (k-planes), and a 40° oblique whose rays
    # enter through side faces, so that neighbouring rays start on different planes
    rot = torch.tensor([[0.0, 0.0, 0.0], [90.0, 0.0, 0.0], [0.0, 88.0, 0.0], [40.0, 15.0, 0.0]])
    rt = make_rt_inv(rot, torch.tensor([[0.0, 200.0, 0.0]]).expand(4, 3), "AP", subject.isocenter)
    return vol, subject, drr, rt


def _rays(subject, drr, rt):
    """Source and target of every pixel in voxel (= world) coordinates, ``[B, N, 3]`` float64."""
    src, tgt = drr.src.double(), drr.tgt.double()
    rt = rt.double()
    src = (rt[:, None, :3, :3] @ src[..., None]).squeeze(-1) + rt[:, None, :3, 3]
    tgt = (rt[:, None, :3, :3] @ tgt[..., None]).squeeze(-1) + rt[:, None, :3, 3]
    return src.expand_as(tgt).numpy(), tgt.numpy(), subject


def _lockstep_offsets(ns, vol_shape, src, tgt):
    """Per pose: how many quads march in lockstep, and how many of them with a plane offset."""
    D, H, W = vol_shape
    eye = np.eye(4)
    counts = []
    for b in range(src.shape[0]):
        n_lock = n_off = 0
        for r in range(0, src.shape[1] - 3, 4):
            rays = [ns._camera_ray(D, H, W, eye, src[b, r + j], tgt[b, r + j]) for j in range(4)]
            axes = {ns._plane_axis(p) for p, _, _ in rays}
            if len(axes) != 1 or axes == {-1} or any(n <= 0 for _, _, n in rays):
                continue
            (a,) = axes
            if len({p[a + 3] for p, _, _ in rays}) != 1:
                continue
            n_lock += 1
            n_off += len({p[a] for p, _, _ in rays}) > 1
        counts.append((n_lock, n_off))
    return counts


def test_lockstep_quads_match_the_independent_reference(ns):
    vol, subject, drr, rt = _camera_case()
    src, tgt, _ = _rays(subject, drr, rt)
    counts = _lockstep_offsets(ns, vol.shape, src, tgt)
    assert all(n_lock > 20 for n_lock, _ in counts), counts  # every pose exercises the lockstep
    assert counts[3][1] > 5, counts  # and the oblique one its plane offsets
    got = ns.slicemarch_rays(
        torch.from_numpy(vol), torch.eye(4, dtype=torch.float64)[None].expand(4, 4, 4),
        torch.from_numpy(src), torch.from_numpy(tgt), fixed_point=False,
    )[:, 0].double().numpy()  # fmt: skip
    expected = np.array(
        [[joseph_reference(vol, src[b, n], tgt[b, n]) for n in range(src.shape[1])] for b in range(4)]
    )
    assert (expected > 0).mean() > 0.9
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5 * expected.max())


def test_images_whose_rows_do_not_split_into_quads_match_the_torch_path():
    """Odd widths: quads straddle image rows and batch images, and the chunk tails are single rays."""
    _vol, subject, _, rt = _camera_case()
    drr = DRR.from_carm_intrinsics(400.0, 4.0, 4.0, 0.0, 0.0, 7, 13)
    with torch.no_grad():
        fast = drr(subject, rt, method="joseph", backend="numba")
        ref = drr(subject, rt, method="joseph", backend="torch")
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * ref.amax().item())


# --- accuracy of the fixed-point reads -------------------------------------------------------------


def test_fixed_point_error_stays_within_its_bound_on_the_chest_phantom(ns):
    """|fixed − float| ≤ mm per sample · samples · scale / 2 per ray (each voxel is off by at most
    half a code step, and interpolation weights sum to 1), plus float32 rounding."""
    vol, _labels, v2w, _ = make_chest_phantom(spacing=(2.0, 2.0, 2.5))
    subject = Subject.from_array(vol, v2w)
    mu = subject.image[0, 0]
    drr = DRR.from_carm_intrinsics(1020.0, 8.0, 8.0, 0.0, 0.0, 32, 36)
    rot = torch.tensor([[0.0, 0.0, 0.0], [90.0, 0.0, 0.0], [30.0, 10.0, 0.0]])
    rt = make_rt_inv(rot, torch.tensor([[0.0, 850.0, 0.0]]).expand(3, 3), "AP", subject.isocenter)
    cam_to_voxel = subject.world_to_voxel.double() @ rt.double()
    src, tgt = drr.src.double(), drr.tgt.double()
    fixed = ns.slicemarch_rays(mu, cam_to_voxel, src, tgt)
    exact = ns.slicemarch_rays(mu, cam_to_voxel, src, tgt, fixed_point=False)
    _, scale = ns.fixed_point_codes(mu)
    _start, _delta, step, count = slice_geometry(cam_to_voxel, src, tgt, subject.shape)
    bound = step.reshape(fixed.shape) * count.reshape(fixed.shape) * (scale / 2)
    diff = (fixed - exact).abs().double()
    assert exact.amax() > 1.0 and (diff > 0).any()
    assert (diff <= bound + 1e-6 * exact.abs()).all()
    assert diff.max() < 1e-4 * exact.amax()  # the documented agreement, with margin
