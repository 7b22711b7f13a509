"""Pose gradients of Joseph's fused CPU render (``numba_joseph.slicemarch_pose_differentiable``):
against autograd through the torch reference (``slice_geometry`` + ``grid_sample``, itself checked
against finite differences in ``test_joseph.py``), batching, routing and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nanodrr_engine import DRR, Subject, make_rt_inv
from nanodrr_engine.data.phantom import make_chest_phantom, rotation_matrix
from nanodrr_engine.drr.backends import available_backends

pytestmark = pytest.mark.skipif("numba" not in available_backends("cpu"), reason="numba is not installed")

#: AP, lateral, cranio-caudal and two obliques (rays entering through side faces).
ROTATIONS = [[0.0, 0.0, 0.0], [90.0, 0.0, 0.0], [0.0, 85.0, 0.0], [35.0, 20.0, 10.0], [-50.0, 5.0, 0.0]]


@pytest.fixture(scope="module")
def subject():
    vol, _labels, v2w, _ = make_chest_phantom(spacing=(3.0, 3.5, 4.0), direction=rotation_matrix(rz=20.0))
    return Subject.from_array(vol, v2w)


def _pose_grads(subject, drr, backend, weights=None):
    """Render every pose of ROTATIONS (float64), L = Σ w·image; returns (image, ∂L/∂rotation, ∂L/∂translation)."""
    rot = torch.tensor(ROTATIONS, dtype=torch.float64, requires_grad=True)
    trans = torch.tensor([[3.0, 850.0, -4.0]], dtype=torch.float64).expand(len(ROTATIONS), 3).clone()
    trans.requires_grad_(True)
    img = drr(subject, make_rt_inv(rot, trans, "AP", subject.isocenter), method="joseph", backend=backend)
    if weights is None:
        weights = torch.linspace(0.5, 1.5, img.numel(), dtype=img.dtype).reshape(img.shape)
    (img * weights).sum().backward()
    return img.detach(), rot.grad, trans.grad


@pytest.mark.parametrize("orthographic", [False, True])
def test_pose_gradients_match_autograd_through_the_torch_reference(subject, orthographic):
    drr = DRR.from_carm_intrinsics(1020.0, 12.0, 12.0, 0.0, 0.0, 24, 28, orthographic=orthographic)
    img, g_rot, g_trans = _pose_grads(subject, drr, "numba")
    ref, r_rot, r_trans = _pose_grads(subject, drr, "torch")
    assert (img == 0).any() and img.amax() > 10.0  # some rays miss the volume
    torch.testing.assert_close(img, ref, rtol=1e-4, atol=1e-4 * ref.amax().item())
    for got, expected in ((g_rot, r_rot), (g_trans, r_trans)):
        scale = expected.abs().amax().item()
        assert scale > 1e-3
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)


def test_one_pose_over_a_batch_of_detectors_sums_their_gradients(subject):
    """``cam_to_voxel [1]`` broadcast over ``tgt [2, N]``: ∂L/∂M is the sum over both images."""
    from nanodrr_engine.drr.backends.numba.joseph import slicemarch_pose_differentiable

    near = DRR.from_carm_intrinsics(1020.0, 12.0, 12.0, 0.0, 0.0, 16, 18)
    far = DRR.from_carm_intrinsics(1200.0, 10.0, 11.0, 3.0, -2.0, 16, 18)
    rt = make_rt_inv(
        torch.tensor([[30.0, 10.0, 5.0]]), torch.tensor([[0.0, 850.0, 0.0]]), "AP", subject.isocenter
    )
    M = (subject.world_to_voxel.double() @ rt.double()).requires_grad_(True)
    vol = subject.image[0, 0]
    src = torch.cat([near.src.double(), far.src.double()])
    tgt = torch.cat([near.tgt.double(), far.tgt.double()])
    slicemarch_pose_differentiable(vol, M, src, tgt).sum().backward()
    both = M.grad.clone()
    parts = []
    for k in range(2):
        Mk = M.detach().clone().requires_grad_(True)
        slicemarch_pose_differentiable(vol, Mk, src[k : k + 1], tgt[k : k + 1]).sum().backward()
        parts.append(Mk.grad)
    assert parts[0].abs().amax() > 1e-3 and parts[1].abs().amax() > 1e-3
    torch.testing.assert_close(both, parts[0] + parts[1], rtol=1e-10, atol=1e-12)
    assert (both[:, 3] == 0).all()  # the homogeneous row gets no gradient


def test_gradients_are_reproducible_bit_for_bit(subject):
    drr = DRR.from_carm_intrinsics(1020.0, 12.0, 12.0, 0.0, 0.0, 20, 22)
    first = _pose_grads(subject, drr, "numba")
    again = _pose_grads(subject, drr, "numba")
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)


def test_render_routes_pose_gradients_to_the_fused_kernel_and_other_gradients_to_the_reference(
    subject, monkeypatch
):
    from nanodrr_engine.drr.backends.numba import joseph as numba_joseph

    calls = []
    fused = numba_joseph.slicemarch_pose_differentiable

    def spy(*args, **kwargs):
        calls.append(True)
        return fused(*args, **kwargs)

    monkeypatch.setattr(numba_joseph, "slicemarch_pose_differentiable", spy)
    drr = DRR.from_carm_intrinsics(1020.0, 12.0, 12.0, 0.0, 0.0, 12, 14)
    _pose_grads(subject, drr, "auto")
    assert calls == [True]

    labelled = subject.with_labels(np.ones(subject.shape, np.int64))  # labelmaps with gradients: reference
    rot = torch.tensor([[10.0, 5.0, 0.0]], requires_grad=True)
    rt = make_rt_inv(rot, torch.tensor([[0.0, 850.0, 0.0]]), "AP", subject.isocenter)
    drr(labelled, rt, method="joseph").sum().backward()
    assert calls == [True] and rot.grad.abs().sum() > 0

    mu_subject = Subject.from_array(
        subject.image[0, 0].detach().clone().requires_grad_(True), torch.eye(4), convert_to_mu=False
    )
    rt = make_rt_inv(torch.zeros(1, 3), torch.tensor([[0.0, 850.0, 0.0]]), "AP", mu_subject.isocenter)
    out = drr(mu_subject, rt, method="joseph")  # a volume that requires grad: reference
    assert calls == [True] and out.requires_grad


def test_inputs_other_than_the_pose_that_require_grad_are_named():
    from nanodrr_engine.drr.backends.numba.joseph import slicemarch_pose_differentiable

    vol = torch.rand(5, 6, 7)
    M = torch.eye(4, dtype=torch.float64)[None].requires_grad_(True)
    src, tgt = torch.zeros(1, 1, 3), torch.ones(1, 2, 3)
    with pytest.raises(ValueError, match="vol: requires grad"):
        slicemarch_pose_differentiable(vol.requires_grad_(True), M, src, tgt)
    with pytest.raises(ValueError, match="tgt: requires grad"):
        slicemarch_pose_differentiable(vol.detach(), M, src, tgt.requires_grad_(True))


def test_compiled_renders_run_the_fused_kernels_eagerly(subject):
    """torch.compile cannot trace numba: the fused entry points are excluded from the graph (a graph
    break), so compiled renders, forward and pose gradient, plain and labelmap, equal the eager ones."""
    drr = DRR.from_carm_intrinsics(1020.0, 12.0, 12.0, 0.0, 0.0, 10, 12)
    labelled = subject.with_labels(np.ones(subject.shape, np.int64) + (np.arange(subject.shape[2]) > 20))

    def f(subj, rot):
        rt = make_rt_inv(rot, torch.tensor([[0.0, 850.0, 0.0]]), "AP", subject.isocenter)
        return drr(subj, rt, method="joseph") * 2.0

    compiled = torch.compile(f, backend="aot_eager")
    rot = torch.tensor([[20.0, 10.0, 0.0]])
    with torch.no_grad():
        torch.testing.assert_close(compiled(subject, rot), f(subject, rot))
        torch.testing.assert_close(compiled(labelled, rot), f(labelled, rot))
    for subj in (subject, labelled):  # labelled: the ray march on Joseph's samples with per-ray counts
        r_c, r_e = rot.clone().requires_grad_(True), rot.clone().requires_grad_(True)
        compiled(subj, r_c).sum().backward()
        f(subj, r_e).sum().backward()
        assert r_e.grad.abs().amax() > 1e-3
        torch.testing.assert_close(r_c.grad, r_e.grad)


def test_rays_in_lockstep_pairs_with_plane_offsets_get_their_own_gradients():
    """A volume that is not zero at its faces (so every sample's gradient counts, the checked ends'
    too), seen by a detector whose neighbouring rays start on different planes: the pairs marched in
    lockstep (``_pose_rays_chunk``) against autograd through the torch reference, in float64."""
    from nanodrr_engine.drr.backends.numba import joseph as numba_joseph
    from nanodrr_engine.drr.backends.torch_ref import raymarch as torch_raymarch
    from nanodrr_engine.drr.rays import slice_geometry
    from test_joseph_fast_path import _camera_case

    vol, subject, drr, _ = _camera_case(shape=(29, 33, 37), height=9, width=26)
    # oblique poses only: at axis-aligned ones rays run along voxel boundaries, the kinks of the
    # trilinear interpolant, where float32 and float64 sample positions take different one-sided slopes
    rot = torch.tensor([[40.0, 15.0, 0.0], [25.0, -30.0, 10.0], [-35.0, 10.0, 5.0], [70.0, 5.0, -8.0]])
    rt = make_rt_inv(rot, torch.tensor([[0.0, 200.0, 0.0]]).expand(4, 3), "AP", subject.isocenter)
    M = (subject.world_to_voxel.double() @ rt.double()).detach()
    src, tgt = drr.src.double(), drr.tgt.double()
    D, H, W = vol.shape
    offsets = 0
    for b in range(4):
        for n in range(0, tgt.shape[1] - 1, 2):
            (p, _, c0), (q, _, c1) = (
                numba_joseph._camera_ray(D, H, W, M[b].numpy(), src[0, 0].numpy(), tgt[0, n + j].numpy())
                for j in (0, 1)
            )
            axis = numba_joseph._plane_axis(p)
            offsets += (
                c0 > 0 and c1 > 0 and axis >= 0 and numba_joseph._plane_axis(q) == axis and p[axis] != q[axis]
            )
    assert offsets > 10
    weights = torch.linspace(0.5, 1.5, 4 * tgt.shape[1], dtype=torch.float64).reshape(4, 1, -1)
    fused = M.clone().requires_grad_(True)
    (
        numba_joseph.slicemarch_pose_differentiable(subject.image[0, 0], fused, src, tgt) * weights
    ).sum().backward()
    ref = M.clone().requires_grad_(True)
    start, delta, step, count = slice_geometry(ref, src, tgt, subject.shape)
    out = torch_raymarch(
        torch.from_numpy(vol).double(), None, 1, start, delta, step, int(count.max()), count=count
    )
    (out * weights).sum().backward()
    scale = ref.grad.abs().amax().item()
    assert scale > 1.0
    torch.testing.assert_close(fused.grad, ref.grad, rtol=1e-4, atol=1e-4 * scale)
