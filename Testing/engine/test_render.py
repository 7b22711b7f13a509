"""Rendering semantics: analytic boxes, labelmap channels, batching, gradients, peers and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nanodrr_engine import DRR, Subject, available_backends, make_k_inv, make_rt_inv, render

BACKENDS = available_backends("cpu")


def box_subject(shape=(10, 12, 14), spacing=(2.0, 2.0, 2.0), mu=0.02, label=None, **kw):
    v2w = np.diag([*spacing, 1.0])
    v2w[:3, 3] = -(np.array(shape[::-1]) - 1) / 2 * np.array(spacing)  # centred on the origin
    return Subject.from_array(np.full(shape, mu, np.float32), v2w, label=label, convert_to_mu=False, **kw)


def blob_subject(shape=(12, 14, 16), label=None, seed=0, dtype=np.float32):
    """A smooth random volume on an oblique, anisotropic grid."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    vol = np.exp(-(i**2 + j**2 + k**2) * 2.0) * 0.05 + rng.random(shape) * 0.002
    a = np.radians(25.0)
    v2w = np.eye(4)
    v2w[:3, :3] = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) @ np.diag(
        [3.0, 2.5, 4.0]
    )
    v2w[:3, 3] = [-20.0, -18.0, -25.0]
    return Subject.from_array(vol.astype(dtype), v2w, label=label, convert_to_mu=False)


def labels_for(shape, n=4, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    lab[2:-2, 3:-3, 2:-2] = rng.integers(0, n, size=lab[2:-2, 3:-3, 2:-2].shape)
    return lab


def pose(
    subject, rotation=(0.0, 0.0, 0.0), translation=(0.0, 400.0, 0.0), orientation="AP", dtype=torch.float32
):
    return make_rt_inv(
        torch.tensor([rotation], dtype=dtype),
        torch.tensor([translation], dtype=dtype),
        orientation,
        subject.isocenter.to(dtype),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_orthographic_rays_through_a_uniform_box_measure_its_thickness(backend):
    # The trilinear support of a box of S voxels of size h is (S + 1)·h long, and the linear ramps at
    # both ends integrate to half a voxel each: ∫μ ds = μ · S · h exactly (up to midpoint-rule error).
    s = box_subject(shape=(10, 12, 14), spacing=(2.0, 3.0, 1.5), mu=0.02)
    drr = DRR.from_carm_intrinsics(800.0, 1.0, 1.0, 0.0, 0.0, 4, 4, orthographic=True)
    out = drr(s, pose(s), n_samples=2000, backend=backend)  # AP: beam along −y through J = 12 voxels of 3 mm
    np.testing.assert_allclose(out.numpy(), 0.02 * 12 * 3.0, rtol=2e-4)
    lat = drr(s, pose(s, rotation=(90.0, 0.0, 0.0)), n_samples=2000, backend=backend)  # along x: 14 × 2 mm
    np.testing.assert_allclose(lat.numpy(), 0.02 * 14 * 2.0, rtol=2e-4)


def test_rays_that_miss_give_zero():
    s = box_subject()
    drr = DRR.from_carm_intrinsics(800.0, 5.0, 5.0, 0.0, 0.0, 16, 16)
    out = drr(s, pose(s, translation=(0.0, 400.0, 300.0)), n_samples=32)  # detector far above the box
    assert out.abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_labelmap_channels_sum_to_the_plain_render(backend):
    shape = (12, 14, 16)
    lab = labels_for(shape, n=5)
    plain = blob_subject(shape)
    labelled = blob_subject(shape, label=lab)
    drr = DRR.from_carm_intrinsics(700.0, 1.5, 1.5, 0.0, 0.0, 12, 10)
    rt = pose(plain, rotation=(30.0, 10.0, -5.0))
    a = drr(plain, rt, n_samples=64, backend=backend)
    b = drr(labelled, rt, n_samples=64, backend=backend)
    assert a.shape == (1, 1, 12, 10) and b.shape == (1, 5, 12, 10)
    torch.testing.assert_close(b.sum(1, keepdim=True), a, rtol=1e-5, atol=1e-7)
    assert (b[:, 1:].sum() > 0) and (b >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_labels_are_dropped(backend):
    shape = (12, 14, 16)
    lab = labels_for(shape, n=5)
    full = blob_subject(shape, label=lab)
    clipped = Subject.from_array(
        full._image_hu[0, 0], full.voxel_to_world, label=lab, max_label=2, convert_to_mu=False
    )
    drr = DRR.from_carm_intrinsics(700.0, 1.5, 1.5, 0.0, 0.0, 8, 8)
    rt = pose(full, rotation=(-20.0, 5.0, 0.0))
    a = drr(full, rt, n_samples=48, backend=backend)
    b = drr(clipped, rt, n_samples=48, backend=backend)
    assert b.shape[1] == 3
    torch.testing.assert_close(b, a[:, :3], rtol=1e-5, atol=1e-7)  # labels 3, 4 contribute nowhere


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_poses_and_biplane_intrinsics_match_single_renders(backend):
    s = blob_subject()
    rt = torch.cat([pose(s, rotation=(0.0, 0.0, 0.0)), pose(s, rotation=(90.0, 0.0, 0.0))])
    k_inv = torch.cat(
        [make_k_inv(700.0, 1.5, 1.5, 0.0, 0.0, 8, 10), make_k_inv(900.0, 2.0, 1.0, 3.0, -2.0, 8, 10)]
    )
    sdd = torch.tensor([700.0, 900.0])
    both = render(s, k_inv, rt, sdd, 8, 10, n_samples=32, backend=backend)
    one = render(s, k_inv[:1], rt[:1], 700.0, 8, 10, n_samples=32, backend=backend)
    two = render(s, k_inv[1:], rt[1:], 900.0, 8, 10, n_samples=32, backend=backend)
    torch.testing.assert_close(both, torch.cat([one, two]))


def test_numbers_match_nanodrr():
    nanodrr = pytest.importorskip("nanodrr.drr")
    from nanodrr.data import Subject as PeerSubject

    shape = (12, 14, 16)
    lab = labels_for(shape, n=4)
    ours = blob_subject(shape, label=lab)
    theirs = PeerSubject(
        ours._image_hu.clone(),
        torch.as_tensor(lab, dtype=torch.float32)[None, None],
        ours.voxel_to_world,
        ours.world_to_voxel,
        ours.voxel_to_grid,
        ours.isocenter,
        convert_to_mu=False,
    )
    rt = torch.cat(
        [pose(ours, rotation=(15.0, -10.0, 5.0)), pose(ours, rotation=(100.0, 0.0, 0.0), orientation="PA")]
    )
    for ortho in (False, True):
        a = DRR.from_carm_intrinsics(700.0, 1.5, 1.5, 1.0, -2.0, 10, 12, orthographic=ortho)
        b = nanodrr.DRR.from_carm_intrinsics(700.0, 1.5, 1.5, 1.0, -2.0, 10, 12, orthographic=ortho)
        expected = b(theirs, rt, n_samples=50, backend="torch")
        for backend in BACKENDS:
            got = a(ours, rt, n_samples=50, backend=backend)
            torch.testing.assert_close(got.sum(1), expected.sum(1), rtol=1e-4, atol=1e-6)
            # nearest-label ties can flip a few samples; most pixels agree channel by channel
            agree = torch.isclose(got, expected, rtol=1e-4, atol=1e-6).float().mean()
            assert agree > 0.98, (backend, agree)


def test_soft_labels_sum_to_the_plain_render():
    shape = (12, 14, 16)
    s = blob_subject(shape, label=labels_for(shape))
    drr = DRR.from_carm_intrinsics(700.0, 1.5, 1.5, 0.0, 0.0, 6, 6)
    rt = pose(s, rotation=(10.0, 0.0, 0.0))
    soft = drr(s, rt, n_samples=32, soft_labels=True)
    hard = drr(s, rt, n_samples=32)
    torch.testing.assert_close(soft.sum(1), hard.sum(1), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(soft, hard)


def test_pose_gradients_agree_with_finite_differences():
    s = blob_subject()
    drr = DRR.from_carm_intrinsics(600.0, 3.0, 3.0, 0.0, 0.0, 5, 6, dtype=torch.float64)
    iso = s.isocenter.double()

    def f(rot, trans):
        rt = make_rt_inv(rot, trans, "AP", iso)
        return drr(s, rt, n_samples=24, backend="torch")

    rot = torch.tensor([[12.0, -7.0, 4.0]], dtype=torch.float64, requires_grad=True)
    trans = torch.tensor([[3.0, 300.0, -2.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (rot, trans), eps=1e-4, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_fused_backends_give_the_reference_gradients(backend):
    shape = (12, 14, 16)
    s = blob_subject(shape, label=labels_for(shape))
    drr = DRR.from_carm_intrinsics(600.0, 3.0, 3.0, 0.0, 0.0, 7, 6)

    def grads(name):
        vol = s._image_hu.detach().clone().requires_grad_(True)
        s._image_hu = vol
        rot = torch.tensor([[12.0, -7.0, 4.0]], requires_grad=True)
        trans = torch.tensor([[3.0, 300.0, -2.0]], requires_grad=True)
        out = drr(s, make_rt_inv(rot, trans, "AP", s.isocenter), n_samples=40, backend=name)
        weights = torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape)
        (out * weights).sum().backward()
        return out.detach(), rot.grad, trans.grad, vol.grad

    ref, got = grads("torch"), grads(backend)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-6)


def test_mu_parameter_and_volume_gradients():
    hu = np.linspace(-500, 1500, 6 * 7 * 8).reshape(6, 7, 8).astype(np.float32)
    s = Subject.from_array(hu, np.diag([3.0, 3.0, 3.0, 1.0]))
    drr = DRR.from_carm_intrinsics(500.0, 4.0, 4.0, 0.0, 0.0, 4, 4)
    rt = pose(s, translation=(0.0, 250.0, 0.0))
    mu_bone = torch.tensor(0.0573, requires_grad=True)
    s.set_mu(mu_bone=mu_bone)
    out = drr(s, rt, n_samples=32, backend="torch").sum()
    (g,) = torch.autograd.grad(out, mu_bone)
    with torch.no_grad():
        s.set_mu(mu_bone=0.0573 + 1e-3)
        hi = drr(s, rt, n_samples=32, backend="torch").sum()
        s.set_mu(mu_bone=0.0573 - 1e-3)
        lo = drr(s, rt, n_samples=32, backend="torch").sum()
    assert g.item() == pytest.approx(((hi - lo) / 2e-3).item(), rel=1e-3)
    assert g.item() > 0


def test_half_precision_volume_renders_close_to_float32():
    s = blob_subject()
    drr = DRR.from_carm_intrinsics(700.0, 1.5, 1.5, 0.0, 0.0, 8, 8)
    rt = pose(s)
    ref = drr(s, rt, n_samples=64)
    half = s.to(dtype=torch.float16)
    for backend in BACKENDS:
        out = drr(half, rt, n_samples=64, backend=backend)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=2e-3, atol=1e-5)


def test_works_under_torch_compile():
    s = blob_subject()
    drr = DRR.from_carm_intrinsics(700.0, 1.5, 1.5, 0.0, 0.0, 8, 8)
    rt = pose(s)
    compiled = torch.compile(drr, backend="aot_eager")
    for backend in BACKENDS:
        torch.testing.assert_close(
            compiled(s, rt, n_samples=32, backend=backend), drr(s, rt, n_samples=32, backend=backend)
        )


@pytest.mark.parametrize(
    "change,match",
    [
        ({"rt_inv": torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))[None]}, "rt_inv"),
        ({"rt_inv": torch.full((1, 4, 4), float("nan"))}, "rt_inv"),
        ({"rt_inv": torch.eye(3)[None]}, "rt_inv"),
        ({"sdd": -1.0}, "sdd"),
        ({"sdd": 0.0}, "sdd"),
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"height": 0}, "height"),
        ({"k_inv": torch.eye(4)[None]}, "k_inv"),
        ({"backend": "cuda-magic"}, "backend"),
        ({"subject": "ct.nii.gz"}, "subject"),
    ],
)
def test_bad_render_input_names_the_argument(change, match):
    s = box_subject()
    args = {
        "subject": s,
        "k_inv": make_k_inv(800.0, 2.0, 2.0, 0.0, 0.0, 4, 4),
        "rt_inv": pose(s),
        "sdd": 800.0,
        "height": 4,
        "width": 4,
        "n_samples": 8,
        "backend": "auto",
    } | change
    with pytest.raises((ValueError, TypeError), match=match):
        render(**args)


def test_nan_volume_is_rejected():
    with pytest.raises(ValueError, match="volume"):
        Subject.from_array(np.full((3, 3, 3), np.nan, np.float32), np.eye(4))
