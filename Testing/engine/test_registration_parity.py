"""``nanodrr_engine.registration.Registration`` against nanodrr 0.1.7's: the same poses, renders and pose
gradients on the same subject, intrinsics and parameters; the fused CPU kernels do the work (no fallback
to the torch reference path); the perturbation's semantics by hand; ``rescale_``; bad input."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from nanodrr_engine import DRR, Subject, make_k_inv, make_rt_inv
from nanodrr_engine.registration import Registration

F64 = torch.float64
ROT = [[0.03, -0.05, 0.02]]  # rad
XYZ = [[2.0, -3.0, 4.0]]  # mm
SDD, SPACING, X0, Y0 = 500.0, 3.0, 1.0, -2.0


@pytest.fixture(scope="module")
def subject():
    """A smooth blob with noise on an anisotropic grid (no labelmap), in μ directly."""
    shape = (20, 22, 24)
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    vol = np.exp(-((i - 0.2) ** 2 + 1.5 * j**2 + (k + 0.1) ** 2) * 2.5) * 0.05 + rng.random(shape) * 0.003
    v2w = np.diag([2.0, 2.2, 2.5, 1.0])
    v2w[:3, 3] = [-20.0, -25.0, -30.0]
    return Subject.from_array(vol.astype(np.float32), v2w, convert_to_mu=False)


def peer_subject(s: Subject, dtype=torch.float32):
    from nanodrr.data import Subject as PeerSubject

    return PeerSubject(
        s._image_hu.to(dtype),
        torch.zeros(1),  # unused without a labelmap
        s.voxel_to_world.to(dtype),
        s.world_to_voxel.to(dtype),
        s.voxel_to_grid.to(dtype),
        s.isocenter.to(dtype),
        max_label=0,
        convert_to_mu=False,
    )


def views(s: Subject, dtype=torch.float32):
    """Two views (oblique AP and near-lateral), 300 mm from the isocenter."""
    rot = torch.tensor([[20.0, -10.0, 5.0], [95.0, 5.0, 0.0]], dtype=dtype)
    return make_rt_inv(rot, torch.tensor([[0.0, 300.0, 0.0]] * 2, dtype=dtype), "AP", s.isocenter.to(dtype))


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def pair(s, size, dtype):
    """Ours and nanodrr's Registration, same geometry and parameters (nanodrr's built under a float64
    default dtype when asked: it draws its parameters in the default dtype)."""
    peer = pytest.importorskip("nanodrr.registration")
    rt, k = views(s, dtype), make_k_inv(SDD, SPACING, SPACING, X0, Y0, size, size, dtype=dtype)
    sdd = torch.tensor([SDD], dtype=dtype)
    ours = Registration(s, rt, k, sdd, size, size)
    with default_dtype(dtype):
        theirs = peer.Registration(peer_subject(s, dtype), rt.clone(), k.clone(), sdd.clone(), size, size)
    with torch.no_grad():
        for m in (ours, theirs):
            m._rot.copy_(torch.tensor(ROT, dtype=dtype))
            m._xyz.copy_(torch.tensor(XYZ, dtype=dtype))
    return ours, theirs


def render_and_grads(reg, weights, **kw):
    reg.zero_grad()
    img = reg(n_samples=200, **kw)
    (img * weights.to(img.dtype)).sum().backward()
    return img.detach(), reg._rot.grad.clone(), reg._xyz.grad.clone()


def weights_for(size):
    return torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_pose_matches_nanodrr(subject):
    ours, theirs = pair(subject, 16, F64)
    torch.testing.assert_close(ours.pose, theirs.pose, rtol=0, atol=1e-12)
    for name in ("rt_inv", "k_inv", "sdd", "pivot", "pivot_inv"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=1e-12)
    assert ours._rot.shape == theirs._rot.shape == (1, 3)


def test_render_and_pose_gradients_match_nanodrr_in_float64(subject):
    # ours: fused numba kernels (float64 rays, float32 sample positions and μ); nanodrr: autograd
    # through grid_sample, all float64. Measured: gradients within 8e-5 of their size (the float32
    # positions), far below the render's own non-smoothness (central differences move by ~1 %)
    ours, theirs = pair(subject, 32, F64)
    w = weights_for(32)
    img, g_rot, g_xyz = render_and_grads(ours, w, backend="numba")
    ref, r_rot, r_xyz = render_and_grads(theirs, w, backend="torch")
    torch.testing.assert_close(img.double(), ref, rtol=1e-5, atol=1e-6)
    for g, r in ((g_rot, r_rot), (g_xyz, r_xyz)):
        torch.testing.assert_close(g, r, rtol=0, atol=2e-4 * float(r.abs().max()))


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_render_and_pose_gradients_match_nanodrr_in_float32(subject, backend):
    # float32 poses: both sides' rotation gradients carry ~4e-4 (of their size) of float32 rounding
    # from the 4×4 products, hence the looser bound than in float64
    ours, theirs = pair(subject, 32, torch.float32)
    w = weights_for(32)
    img, g_rot, g_xyz = render_and_grads(ours, w, backend=backend)
    ref, r_rot, r_xyz = render_and_grads(theirs, w, backend="torch")
    torch.testing.assert_close(img, ref, rtol=1e-4, atol=1e-5)
    for g, r in ((g_rot, r_rot), (g_xyz, r_xyz)):
        torch.testing.assert_close(g, r, rtol=0, atol=2e-3 * float(r.abs().max()))


def test_forward_and_backward_run_the_fused_kernels_at_64(subject, monkeypatch):
    numba_camera = pytest.importorskip("nanodrr_engine.drr.backends.numba.camera")
    if not numba_camera.is_available():
        pytest.skip("numba backend unavailable")
    import importlib

    render_module = importlib.import_module("nanodrr_engine.drr.render")
    from nanodrr_engine.drr.backends import torch_ref
    from nanodrr_engine.drr.backends.numba import joseph as numba_joseph

    calls = {"forward": 0, "pose_grad": 0, "joseph": 0}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    def refuse(*args, **kwargs):
        raise AssertionError("fell back to the per-ray torch geometry / reference ray march")

    monkeypatch.setattr(numba_camera, "raymarch_rays", spy("forward", numba_camera.raymarch_rays))
    monkeypatch.setattr(numba_camera, "_bwd_camera", spy("pose_grad", numba_camera._bwd_camera))
    monkeypatch.setattr(
        numba_joseph,
        "slicemarch_pose_differentiable",
        spy("joseph", numba_joseph.slicemarch_pose_differentiable),
    )
    monkeypatch.setattr(render_module, "sample_geometry", refuse)
    monkeypatch.setattr(render_module, "slice_geometry", refuse)
    monkeypatch.setattr(torch_ref, "raymarch", refuse)

    rt = views(subject)
    reg = Registration(subject, rt, make_k_inv(SDD, 1.5, 1.5, 0.0, 0.0, 64, 64), SDD, 64, 64)
    for method, key in (("raymarch", "forward"), ("joseph", "joseph")):
        reg.zero_grad()
        img = reg(n_samples=100, backend="numba", method=method)
        assert img.shape == (2, 1, 64, 64)
        img.square().mean().backward()
        assert calls[key] == 1
        for p in (reg._rot, reg._xyz):
            assert p.grad is not None and torch.isfinite(p.grad).all() and bool((p.grad != 0).any())
    assert calls["pose_grad"] == 1  # the ray march's backward kernel (Joseph's has its own)


def test_zero_parameters_give_the_initial_pose(subject):
    rt = views(subject, F64)
    reg = Registration(subject, rt, make_k_inv(SDD, 3.0, 3.0, 0.0, 0.0, 8, 8, dtype=F64), SDD, 8, 8, eps=0.0)
    torch.testing.assert_close(reg.pose, rt, rtol=0, atol=1e-12)


def test_the_perturbation_turns_about_the_isocenter_and_moves_in_the_camera_frame(subject):
    rt = views(subject, F64)
    iso = torch.cat([subject.isocenter.double(), torch.ones(1, dtype=F64)])
    iso_cam = (torch.linalg.inv(rt) @ iso)[:, :3]
    reg = Registration(subject, rt, make_k_inv(SDD, 3.0, 3.0, 0.0, 0.0, 8, 8, dtype=F64), SDD, 8, 8, eps=0.0)
    with torch.no_grad():
        reg._rot.copy_(torch.tensor([[0.2, -0.4, 0.3]], dtype=F64))
    # a rotation keeps the isocenter where it was in the camera frame, and the source 300 mm from it
    torch.testing.assert_close((torch.linalg.inv(reg.pose) @ iso)[:, :3], iso_cam, rtol=0, atol=1e-10)
    assert not torch.allclose(reg.pose, rt)
    with torch.no_grad():
        reg._rot.zero_()
        reg._xyz.copy_(torch.tensor([[5.0, -6.0, 7.0]], dtype=F64))
    # a translation moves the camera by xyz along its own axes: the isocenter moves by −xyz in its frame
    moved = (torch.linalg.inv(reg.pose) @ iso)[:, :3]
    torch.testing.assert_close(moved, iso_cam - torch.tensor([5.0, -6.0, 7.0], dtype=F64), rtol=0, atol=1e-10)


def test_rescale_matches_nanodrr_and_the_intrinsics_of_the_coarser_detector(subject):
    peer = pytest.importorskip("nanodrr.registration")
    rt = views(subject)
    k = make_k_inv(SDD, 1.5, 1.5, X0, Y0, 64, 64)
    k_copy = k.clone()
    ours = Registration(subject, rt, k, SDD, 64, 64)
    theirs = peer.Registration(peer_subject(subject), rt.clone(), k.clone(), torch.tensor([SDD]), 64, 64)
    ours.rescale_(0.25)
    theirs.rescale_(0.25)
    torch.testing.assert_close(ours.k_inv, theirs.k_inv, rtol=0, atol=0)
    assert (ours.height, ours.width) == (theirs.height, theirs.width) == (16, 16)
    torch.testing.assert_close(ours.k_inv, make_k_inv(SDD, 6.0, 6.0, X0, Y0, 16, 16), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(k, k_copy, rtol=0, atol=0)  # the caller's intrinsics are not touched
    drr = DRR.from_carm_intrinsics(SDD, 6.0, 6.0, X0, Y0, 16, 16)
    torch.testing.assert_close(
        ours(n_samples=100), drr(subject, ours.pose.detach(), n_samples=100), rtol=1e-5, atol=1e-6
    )


def test_bad_input_is_named_and_changes_nothing(subject):
    rt = views(subject)
    k = make_k_inv(SDD, 3.0, 3.0, 0.0, 0.0, 8, 8)
    with pytest.raises(TypeError, match="subject"):
        Registration("ct.nii", rt, k, SDD, 8, 8)
    with pytest.raises(ValueError, match="rt_inv"):
        Registration(subject, rt * 2, k, SDD, 8, 8)
    with pytest.raises(ValueError, match="k_inv"):
        Registration(subject, rt, k.expand(3, 3, 3), SDD, 8, 8)
    with pytest.raises(ValueError, match="sdd"):
        Registration(subject, rt, k, -1.0, 8, 8)
    with pytest.raises(ValueError, match="height"):
        Registration(subject, rt, k, SDD, 0, 8)
    reg = Registration(subject, rt, k, SDD, 8, 8)
    before = reg.k_inv.clone()
    for bad in (0.0, -2.0, float("nan"), 0.01):
        with pytest.raises(ValueError, match="scale"):
            reg.rescale_(bad)
        assert (reg.height, reg.width) == (8, 8)
        torch.testing.assert_close(reg.k_inv, before, rtol=0, atol=0)
