"""``nanodrr_engine.metrics``: the NCC family and the double geodesic against nanodrr 0.1.7 (values and
gradients on the same random inputs, float64 where nanodrr keeps it), against hand computations and a
brute-force window loop, and the target registration / projection errors of known motions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nanodrr_engine.geometry import convert
from nanodrr_engine.metrics import (
    DoubleGeodesicSE3,
    GradientNormalizedCrossCorrelation2d,
    MultiscaleNormalizedCrossCorrelation2d,
    NormalizedCrossCorrelation2d,
    projection_error,
    target_registration_error,
)

F64 = torch.float64


def images(b=2, h=24, w=28, seed=0, dtype=F64):
    """A smooth pair of images (a shifted blob plus noise), like a DRR and a slightly moved target."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(
        torch.linspace(-1, 1, h, dtype=F64), torch.linspace(-1, 1, w, dtype=F64), indexing="ij"
    )
    base = torch.exp(-((x - 0.1) ** 2 + y**2) * 3)
    moved = torch.exp(-((x + 0.05) ** 2 + (y - 0.1) ** 2) * 3)
    x1 = 2.0 * base + 0.1 * torch.rand(b, 1, h, w, generator=g, dtype=F64)
    x2 = 1.5 * moved + 0.1 * torch.rand(b, 1, h, w, generator=g, dtype=F64)
    return x1.to(dtype), x2.to(dtype)


def value_and_grads(metric, x1, x2, weights=None):
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = metric(a, b)
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype) if weights is None else weights
    (out * w).sum().backward()
    return out.detach(), a.grad, b.grad


def peer_metrics():
    return pytest.importorskip("nanodrr.metrics")


@pytest.mark.parametrize(
    ("ours", "name", "kwargs"),
    [
        (NormalizedCrossCorrelation2d, "NormalizedCrossCorrelation2d", {}),
        (NormalizedCrossCorrelation2d, "NormalizedCrossCorrelation2d", {"patch_size": 5}),
        (NormalizedCrossCorrelation2d, "NormalizedCrossCorrelation2d", {"patch_size": 13, "eps": 1e-4}),
        (MultiscaleNormalizedCrossCorrelation2d, "MultiscaleNormalizedCrossCorrelation2d", {}),
        (
            MultiscaleNormalizedCrossCorrelation2d,
            "MultiscaleNormalizedCrossCorrelation2d",
            {"patch_sizes": [None, 9], "patch_weights": [0.5, 0.5]},
        ),
    ],
)
def test_ncc_matches_nanodrr_in_float64(ours, name, kwargs):
    peer = getattr(peer_metrics(), name)(**kwargs)
    x1, x2 = images()
    got = value_and_grads(ours(**kwargs), x1, x2)
    want = value_and_grads(peer, x1, x2)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == F64
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"patch_size": 7}, {"sigma": 0.0}, {"sigma": 1.7, "patch_size": 9}])
def test_gradient_ncc_matches_nanodrr(kwargs):
    # nanodrr filters in float32 whatever the input; ours keeps float64, so compare at float32's precision
    peer = peer_metrics().GradientNormalizedCrossCorrelation2d(**kwargs)
    x1, x2 = images()
    got = value_and_grads(GradientNormalizedCrossCorrelation2d(**kwargs), x1, x2)
    want = value_and_grads(peer, x1.float(), x2.float())
    assert got[0].dtype == F64
    scale = [max(float(w.abs().max()), 1e-30) for w in want]
    for g, w, s in zip(got, want, scale, strict=True):
        torch.testing.assert_close(g.float(), w, rtol=1e-4, atol=2e-5 * s)


@pytest.mark.parametrize("patch_size", [None, 11])
def test_ncc_matches_nanodrr_in_float32(patch_size):
    peer = peer_metrics().MultiscaleNormalizedCrossCorrelation2d([patch_size], [1.0])
    x1, x2 = images(dtype=torch.float32)
    got = value_and_grads(MultiscaleNormalizedCrossCorrelation2d([patch_size], [1.0]), x1, x2)
    want = value_and_grads(peer, x1, x2)
    assert got[0].dtype == torch.float32
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * float(w.abs().max()))


def test_ncc_by_hand():
    # x1 = 0..3, x2 = 0,1,0,1: cov 1/4, var 5/4 and 1/4 → 1/√5
    x1 = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]], dtype=F64)
    x2 = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]], dtype=F64)
    got = NormalizedCrossCorrelation2d(eps=0.0)(x1, x2)
    torch.testing.assert_close(got, torch.tensor([1 / math.sqrt(5)], dtype=F64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("p", [2, 4, 7])
def test_patch_ncc_equals_a_loop_over_windows(p):
    x1, x2 = images(b=1, h=9, w=11, seed=3)
    a, b = x1[0, 0].numpy(), x2[0, 0].numpy()
    eps = 1e-3
    scores = []
    for i in range(a.shape[0] - p + 1):
        for j in range(a.shape[1] - p + 1):
            u, v = a[i : i + p, j : j + p], b[i : i + p, j : j + p]
            cov = ((u - u.mean()) * (v - v.mean())).mean()
            scores.append(cov / np.sqrt((u.var() + eps) * (v.var() + eps)))
    got = NormalizedCrossCorrelation2d(patch_size=p, eps=eps)(x1, x2)
    np.testing.assert_allclose(got.numpy(), [np.mean(scores)], rtol=1e-12)


def test_patch_ncc_of_raw_intensities_does_not_cancel():
    # detector counts: a large offset, small contrast (variances × 2500, hence eps × 2500); E[x²] − E[x]²
    # of such windows would cancel to noise without the centring and the float64 sums
    x1, x2 = images(b=1, h=12, w=12, seed=6)
    want = NormalizedCrossCorrelation2d(patch_size=5, eps=1e-4)(x1, x2)
    got = NormalizedCrossCorrelation2d(patch_size=5, eps=0.25)(30000.0 + 50.0 * x1, 42000.0 + 50.0 * x2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_float32_window_path_matches_nanodrr(monkeypatch):
    # the path taken where the device has no float64 (MPS), forced here on the CPU
    from nanodrr_engine.metrics import ncc

    monkeypatch.setattr(ncc, "_accumulation_dtype", lambda x: torch.float32)
    peer = peer_metrics().NormalizedCrossCorrelation2d(patch_size=9, eps=1e-4)
    x1, x2 = images(dtype=torch.float32)
    got = value_and_grads(NormalizedCrossCorrelation2d(patch_size=9, eps=1e-4), x1, x2)
    want = value_and_grads(peer, x1, x2)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * float(w.abs().max()))


@pytest.mark.parametrize(
    "metric",
    [
        NormalizedCrossCorrelation2d(eps=0.0),
        NormalizedCrossCorrelation2d(patch_size=6, eps=0.0),
        MultiscaleNormalizedCrossCorrelation2d([None, 5], [0.3, 0.7], eps=0.0),
    ],
)
def test_ncc_of_itself_is_one_of_its_negative_minus_one_and_affine_invariant(metric):
    x, y = images(seed=4)
    one = torch.ones(2, dtype=F64)
    torch.testing.assert_close(metric(x, x), one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(metric(x, -x), -one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(metric(x, 3.7 * x - 12.0), one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(metric(2.5 * x + 1.0, 0.2 * y + 40.0), metric(x, y), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(metric(x, -y), -metric(x, y), rtol=1e-10, atol=1e-12)
    assert bool((metric(x, y) < 0.99).all())


def test_gradient_ncc_of_itself_is_one_and_scale_invariant():
    # not offset-invariant: the Sobel filters' zero padding (nanodrr's) sees an offset at the border
    metric = GradientNormalizedCrossCorrelation2d(patch_size=8, eps=0.0)
    x, y = images(seed=5)
    one = torch.ones(2, dtype=F64)
    torch.testing.assert_close(metric(x, x), one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(metric(x, -x), -one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(metric(4.0 * x, 0.3 * y), metric(x, y), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(metric(x, y + 5.0), metric(x, y))
    assert bool((metric(x, y) < 0.99).all())


def test_flat_images_score_zero_not_nan():
    flat = torch.full((1, 1, 8, 8), 3.0, dtype=F64)
    x, _ = images(b=1, h=8, w=8)
    for metric in (NormalizedCrossCorrelation2d(), NormalizedCrossCorrelation2d(4)):
        torch.testing.assert_close(metric(flat, x), torch.zeros(1, dtype=F64))


def test_ncc_bad_input_is_named():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="x1, x2"):
        NormalizedCrossCorrelation2d()(x, torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="x1"):
        NormalizedCrossCorrelation2d()(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="patch_size"):
        NormalizedCrossCorrelation2d(patch_size=9)(x, x)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="patch_size"):
            NormalizedCrossCorrelation2d(patch_size=bad)
    with pytest.raises(ValueError, match="eps"):
        NormalizedCrossCorrelation2d(eps=-1.0)
    with pytest.raises(ValueError, match="patch_weights"):
        MultiscaleNormalizedCrossCorrelation2d([None, 9], [1.0])
    with pytest.raises(ValueError, match="sigma"):
        GradientNormalizedCrossCorrelation2d(sigma=-1.0)
    with pytest.raises(ValueError, match="sigma"):
        GradientNormalizedCrossCorrelation2d(sigma=2.0)(torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 5, 5))


# --- poses ------------------------------------------------------------------------------------------


def poses(n, seed):
    g = torch.Generator().manual_seed(seed)
    rot = torch.randn(n, 3, generator=g, dtype=F64)
    return convert(rot, torch.randn(n, 3, generator=g, dtype=F64) * 100, "so3_log")


def test_double_geodesic_matches_nanodrr():
    peer = peer_metrics().DoubleGeodesicSE3(1020.0)
    p1, p2 = poses(5, 0), poses(5, 1)
    p2[0] = p1[0]  # identical poses: the clamps keep everything finite
    outs = []
    for metric in (DoubleGeodesicSE3(1020.0), peer):
        a, b = p1.clone().requires_grad_(), p2.clone().requires_grad_()
        rot, xyz, dou = metric(a, b)
        (rot.sum() + 2 * xyz.sum() + 3 * dou.sum()).backward()
        outs.append((rot.detach(), xyz.detach(), dou.detach(), a.grad, b.grad))
    for g, w in zip(*outs, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_double_geodesic_of_known_motions():
    sdd = 1000.0
    base = poses(1, 2)
    for deg in (1.0, 30.0, 120.0):
        turn = convert(
            torch.tensor([[0.0, 0.0, deg]], dtype=F64), torch.zeros(1, 3, dtype=F64), "euler", "ZXY"
        )
        moved = base.clone()
        moved[:, :3, :3] = base[:, :3, :3] @ turn[:, :3, :3]  # R₁ᵀR₂ turns by deg about z
        moved[:, :3, 3] = moved[:, :3, :3] @ (base[0, :3, :3].T @ base[0, :3, 3])  # the same Rᵀt
        rot, xyz, dou = DoubleGeodesicSE3(sdd, eps=0.0)(base, moved)
        torch.testing.assert_close(
            rot, torch.tensor([sdd / 2 * math.radians(deg)], dtype=F64), rtol=1e-12, atol=1e-12
        )
        assert float(xyz) < 1e-5
    shifted = base.clone()
    shifted[:, :3, 3] += base[:, :3, :3] @ torch.tensor([3.0, -4.0, 12.0], dtype=F64)  # Rᵀt moves by 13 mm
    rot, xyz, dou = DoubleGeodesicSE3(sdd, eps=0.0)(base, shifted)
    torch.testing.assert_close(xyz, torch.tensor([13.0], dtype=F64), rtol=1e-12, atol=0)
    assert float(rot) < 1e-5
    torch.testing.assert_close(dou, xyz)


def test_target_registration_error_of_a_known_translation_is_its_length():
    a = poses(3, 3)
    b = a.clone()
    b[:, :3, 3] += torch.tensor([6.0, 0.0, -8.0], dtype=F64)  # the camera moves 10 mm in the world
    pts = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 80
    torch.testing.assert_close(target_registration_error(a, b, pts), torch.full((3,), 10.0, dtype=F64))
    torch.testing.assert_close(target_registration_error(a, a, pts), torch.zeros(3, dtype=F64))
    one = target_registration_error(a[0], b[0], pts[None].expand(2, 50, 3))
    assert one.shape == (2,)


def test_target_registration_error_of_a_rotation_about_the_centroid_by_hand():
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(40, 3, generator=g, dtype=F64) * 50 + torch.tensor([10.0, -20.0, 30.0], dtype=F64)
    c = pts.mean(0)
    a = poses(1, 4)
    theta = math.radians(7.0)
    axis = torch.tensor([2.0, -1.0, 2.0], dtype=F64) / 3.0
    R = convert((axis * theta)[None], torch.zeros(1, 3, dtype=F64), "so3_log")[0, :3, :3]
    # the patient turns by R about its centroid: seen from a camera that turned by Rᵀ about c
    motion = torch.eye(4, dtype=F64)
    motion[:3, :3] = R.T
    motion[:3, 3] = c - R.T @ c
    b = motion @ a
    # each point moves on a circle about the axis through c: 2·r⊥·sin(θ/2)
    d = (pts - c).numpy()
    r_perp = np.linalg.norm(d - np.outer(d @ axis.numpy(), axis.numpy()), axis=1)
    expected = np.mean(2 * r_perp * math.sin(theta / 2))
    np.testing.assert_allclose(target_registration_error(a, b, pts).numpy(), [expected], rtol=1e-12)


def test_projection_error_by_hand():
    a = torch.eye(4, dtype=F64)  # source at the origin, beam along +z
    b = a.clone()
    b[0, 3] = 5.0  # the source moves 5 mm along x
    z = torch.tensor([400.0, 500.0, 800.0], dtype=F64)
    pts = torch.stack([torch.full((3,), 10.0, dtype=F64), torch.full((3,), -3.0, dtype=F64), z], -1)
    expected = (5.0 * 1000.0 / z).mean()
    torch.testing.assert_close(projection_error(a, b, pts, 1000.0), expected)
    torch.testing.assert_close(projection_error(a, a, pts, 1000.0), torch.zeros((), dtype=F64))
    # the source moves 50 mm toward the points: each projection scales by z/(z − 50) about the centre
    c = a.clone()
    c[2, 3] = 50.0
    expected_z = (1000.0 * math.hypot(10.0, 3.0) * (1 / (z - 50.0) - 1 / z)).mean()
    torch.testing.assert_close(projection_error(a, c, pts, 1000.0), expected_z)
    # one sdd per view
    both = projection_error(
        torch.stack([a, a]), torch.stack([b, b]), pts, torch.tensor([1000.0, 500.0], dtype=F64)
    )
    torch.testing.assert_close(both, torch.stack([expected, expected / 2]))


def test_pose_error_bad_input_is_named():
    a = torch.eye(4, dtype=F64)
    pts = torch.tensor([[0.0, 0.0, 100.0]], dtype=F64)
    with pytest.raises(ValueError, match="points"):
        projection_error(a, a, torch.tensor([[0.0, 0.0, -5.0]], dtype=F64), 1000.0)
    with pytest.raises(ValueError, match="rt_inv_b"):
        target_registration_error(a, 2 * a, pts)
    with pytest.raises(ValueError, match="points"):
        target_registration_error(a, a, torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="sdd"):
        projection_error(a, a, pts, -1.0)
    with pytest.raises(ValueError, match="sdd"):
        DoubleGeodesicSE3(0.0)
