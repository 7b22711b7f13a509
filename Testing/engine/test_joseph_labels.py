"""Joseph's labelmap renders on the fused CPU kernel (``numba_joseph._fwd_slice_labels``): channels
against an independent float64 reference that finds each ray's planes one by one, rays in lockstep
pairs, label dtypes, non-finite rays, and ``render``'s routing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nanodrr_engine.drr.backends import available_backends
from test_joseph import _trilinear, random_rays, smooth_volume
from test_joseph_fast_path import _camera_case, _rays

pytestmark = pytest.mark.skipif("numba" not in available_backends("cpu"), reason="numba is not installed")


@pytest.fixture(scope="module")
def ns():
    from nanodrr_engine.drr.backends.numba import joseph as numba_joseph

    return numba_joseph


def _nearest_label(lab: np.ndarray, p: np.ndarray) -> int:
    """The contract's label of a point: its nearest voxel's (round half to even), 0 outside."""
    i, j, k = (int(v) for v in np.rint(p))
    K, J, I = lab.shape
    return int(lab[k, j, i]) if 0 <= i < I and 0 <= j < J and 0 <= k < K else 0


def joseph_reference_labels(vol, lab, a, b, n_classes) -> np.ndarray:
    """Per channel: ∫μ along a → b (voxel coordinates, 1 mm voxels) by Joseph's rule, each sample
    going to its nearest voxel's label (labels outside ``[0, n_classes)`` dropped)."""
    K, J, I = vol.shape
    sizes = np.array([I, J, K], float)
    r = b - a
    out = np.zeros(n_classes)
    t0, t1 = 0.0, 1.0
    for q in range(3):
        if r[q] == 0:
            if not -1 <= a[q] <= sizes[q]:
                return out
            continue
        ta, tb = (-1 - a[q]) / r[q], (sizes[q] - a[q]) / r[q]
        t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
    if t1 < t0:
        return out
    m = int(np.argmax(np.abs(r)))
    for c in range(int(sizes[m])):
        t = (c - a[m]) / r[m]
        if t0 <= t <= t1:
            p = a + t * r
            label = _nearest_label(lab, p)
            if 0 <= label < n_classes:
                out[label] += _trilinear(vol, p)
    return out * np.linalg.norm(r) / abs(r[m])


def _labels_like(vol: np.ndarray, seed: int, high: int) -> np.ndarray:
    """Blocky labels (runs of a few samples, like organs) with single-voxel speckle (runs of one)."""
    rng = np.random.default_rng(seed)
    K, J, I = vol.shape
    coarse = rng.integers(0, high, size=(K // 3 + 1, J // 3 + 1, I // 3 + 1))
    lab = coarse.repeat(3, 0).repeat(3, 1).repeat(3, 2)[:K, :J, :I]
    speckle = rng.random(vol.shape) < 0.1
    lab[speckle] = rng.integers(0, high, size=int(speckle.sum()))
    return lab


def _march(ns, vol, lab, n_classes, src, tgt, M=None, fixed_point=True):
    B = src.shape[0]
    M = torch.eye(4, dtype=torch.float64)[None].expand(B, 4, 4) if M is None else M
    return ns.slicemarch_rays(
        torch.from_numpy(vol), M, torch.as_tensor(src), torch.as_tensor(tgt), fixed_point,
        lab=torch.from_numpy(lab), n_classes=n_classes,
    )  # fmt: skip


def test_random_rays_match_the_independent_reference_per_channel(ns):
    vol = smooth_volume(seed=5)
    lab = _labels_like(vol, seed=6, high=8)  # labels 6 and 7 are dropped (C = 6)
    a, b = random_rays(200, vol.shape, seed=7)
    got = _march(ns, vol, lab, 6, a[None], b[None])[0].double().numpy()  # [C, N]
    expected = np.stack([joseph_reference_labels(vol, lab, a[r], b[r], 6) for r in range(len(a))], axis=1)
    assert ((expected > 0).sum(0) >= 2).sum() > 100  # many rays cross several labels
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.max())


@pytest.mark.parametrize("fixed_point", [True, False], ids=["codes", "float"])
def test_rays_in_lockstep_pairs_match_the_independent_reference(ns, fixed_point):
    """Four poses (AP, lateral, cranio-caudal, oblique with plane offsets between neighbours) of an
    image whose rows are odd (pairs straddle rows and images; chunk tails are single rays), with the
    pairs' planes read as 16-bit codes or as floats. Odd volume sizes put the isocentre on a voxel
    centre: with a half-voxel centre, the axis-aligned rays would sample exactly halfway between two
    labels (a rounding-sensitive tie)."""
    vol, subject, drr, rt = _camera_case(shape=(29, 33, 37), height=7, width=15)
    lab = _labels_like(vol, seed=8, high=5)
    src, tgt, _ = _rays(subject, drr, rt)
    eye = np.eye(4)
    D, H, W = vol.shape
    offsets = 0
    for r in range(0, src.shape[1] - 1, 2):  # the oblique pose's pairs restarted at another plane
        (p, _, n), (q, _, m) = (ns._camera_ray(D, H, W, eye, src[3, r + j], tgt[3, r + j]) for j in (0, 1))
        axis = ns._plane_axis(p)
        offsets += n > 0 and m > 0 and axis >= 0 and ns._plane_axis(q) == axis and p[axis] != q[axis]
    assert offsets > 3
    got = _march(ns, vol, lab, 5, src, tgt, fixed_point=fixed_point).double().numpy()  # [4, C, N]
    expected = np.stack(
        [
            np.stack(
                [joseph_reference_labels(vol, lab, src[b, n], tgt[b, n], 5) for n in range(src.shape[1])], 1
            )
            for b in range(4)
        ]
    )
    assert (expected.sum(1) > 0).mean() > 0.9
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5 * expected.max())


def test_channels_sum_to_the_plain_render(ns):
    vol, subject, drr, rt = _camera_case()
    lab = _labels_like(vol, seed=9, high=4)
    src, tgt, _ = _rays(subject, drr, rt)
    channels = _march(ns, vol, lab, 4, src, tgt)
    eye = torch.eye(4, dtype=torch.float64)[None].expand(4, 4, 4)
    plain = ns.slicemarch_rays(
        torch.from_numpy(vol), eye, torch.from_numpy(src), torch.from_numpy(tgt), False
    )
    assert plain.amax() > 10.0
    torch.testing.assert_close(
        channels.sum(1, keepdim=True), plain, rtol=1e-5, atol=1e-5 * plain.amax().item()
    )


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.uint16, torch.bool])
def test_label_dtypes_give_the_same_channels(ns, dtype):
    vol = smooth_volume(seed=10)
    lab = _labels_like(vol, seed=11, high=2 if dtype == torch.bool else 5)
    a, b = random_rays(64, vol.shape, seed=12)
    C = 2 if dtype == torch.bool else 5
    ref = _march(ns, vol, lab.astype(np.int64), C, a[None], b[None])
    got = ns.slicemarch_rays(
        torch.from_numpy(vol), torch.eye(4, dtype=torch.float64)[None], torch.from_numpy(a)[None],
        torch.from_numpy(b)[None], lab=torch.from_numpy(lab).to(dtype), n_classes=C,
    )  # fmt: skip
    assert ref.amax() > 1.0
    assert torch.equal(got, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_volumes_are_read_natively(ns, dtype):
    vol = smooth_volume(seed=16)
    lab = _labels_like(vol, seed=17, high=4)
    a, b = random_rays(64, vol.shape, seed=18)
    half = torch.from_numpy(vol).to(dtype)
    M, src, tgt = (
        torch.eye(4, dtype=torch.float64)[None],
        torch.from_numpy(a)[None],
        torch.from_numpy(b)[None],
    )
    lab_t = torch.from_numpy(lab)
    got = ns.slicemarch_rays(half, M, src, tgt, lab=lab_t, n_classes=4)
    ref = ns.slicemarch_rays(half.float(), M, src, tgt, lab=lab_t, n_classes=4)  # the same values
    assert ref.amax() > 1.0
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6 * ref.amax().item())


def test_non_finite_rays_are_nan_in_every_channel_and_misses_zero(ns):
    vol = smooth_volume(seed=13)
    lab = _labels_like(vol, seed=14, high=3)
    a, b = random_rays(16, vol.shape, seed=15)
    good = _march(ns, vol, lab, 3, a[None], b[None])[0]
    a[3] = [np.nan, 1.0, 1.0]
    b[5] = [2.0, np.nan, 2.0]
    a[7], b[7] = [-50.0, -50.0, -50.0], [-40.0, -60.0, -50.0]  # misses the volume
    got = _march(ns, vol, lab, 3, a[None], b[None])[0]
    assert torch.isnan(got[:, [3, 5]]).all()
    assert (got[:, 7] == 0).all()
    keep = [r for r in range(16) if r not in (3, 5, 7)]
    assert good[:, keep].amax() > 1.0
    torch.testing.assert_close(got[:, keep], good[:, keep], rtol=0, atol=0)


def test_a_labelmap_of_the_wrong_shape_is_named(ns):
    vol = torch.from_numpy(smooth_volume())
    with pytest.raises(ValueError, match="lab: n_classes=3 needs a label tensor of shape"):
        ns.slicemarch_rays(
            vol, torch.eye(4)[None], torch.zeros(1, 1, 3), torch.ones(1, 2, 3),
            lab=torch.zeros(2, 3, 4, dtype=torch.int64), n_classes=3,
        )  # fmt: skip


# --- render's routing ------------------------------------------------------------------------------


def test_render_sends_labelmaps_without_gradients_to_the_fused_kernel(labelled_phantom, monkeypatch):
    from nanodrr_engine.drr.backends.numba import joseph as numba_joseph

    subject, drr, rt = labelled_phantom
    calls = []
    fused = numba_joseph.slicemarch_rays

    def spy(*args, **kwargs):
        calls.append(kwargs.get("n_classes"))
        return fused(*args, **kwargs)

    monkeypatch.setattr(numba_joseph, "slicemarch_rays", spy)
    with torch.no_grad():
        fast = drr(subject, rt, method="joseph")
    assert calls == [subject.n_classes]
    ref = drr(subject, rt, method="joseph", backend="torch")
    assert fast.shape == ref.shape == (2, subject.n_classes, 20, 23) and ref.amax() > 1.0
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * ref.amax().item())

    pose = rt.clone().requires_grad_(True)  # gradients: the ray march on Joseph's samples (counts)
    out = drr(subject, pose, method="joseph")
    out.sum().backward()
    assert calls == [subject.n_classes] and pose.grad is not None and pose.grad.abs().sum() > 0
