"""The fused camera-ray forward (``backends.numba.camera``): geometry computed inside the kernel.

Checked against the brute-force float64 NumPy reading of the contract (``contract_reference``) on
the torch geometry of :func:`~nanodrr_engine.drr.rays.sample_geometry`, which ``render`` uses when
gradients are needed: the fused path must give the same images, including the rays that miss the
volume or are not finite, batches of images and per-pixel sources, and chunks that straddle images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from contract_reference import numpy_raymarch
from nanodrr_engine import DRR, Subject, make_rt_inv
from nanodrr_engine.drr.backends.numba import march as numba_march
from nanodrr_engine.drr.rays import make_src, make_tgt, sample_geometry
from nanodrr_engine.drr.render import render

numba_camera = pytest.importorskip("nanodrr_engine.drr.backends.numba.camera")
if not numba_camera.is_available():
    pytest.skip("numba backend unavailable", allow_module_level=True)

SHAPE = (18, 21, 25)  # [D, H, W]


def volume(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth blob with noise, and 5 labels in slabs along i (so runs change along most rays)."""
    g = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, s) for s in SHAPE), indexing="ij")
    vol = np.exp(-(i**2 + j**2 + k**2) * 2.0) + 0.1 * g.random(SHAPE)
    lab = np.minimum((i + 1) * 2.5, 4).astype(np.uint8)
    lab[g.random(SHAPE) < 0.05] = 7  # labels >= C are dropped
    return torch.from_numpy(vol.astype(np.float32)), torch.from_numpy(lab)


def camera(angles, height: int, width: int, orthographic: bool = False):
    """``cam_to_voxel [B, 4, 4]``, ``src``, ``tgt`` (float64) of C-arm poses around the volume's centre."""
    D, H, W = SHAPE
    world_to_voxel = torch.eye(4, dtype=torch.float64)
    world_to_voxel[:3, :3] = torch.diag(torch.tensor([1 / 1.5, 1 / 1.2, 1 / 2.0], dtype=torch.float64))
    centre = torch.tensor([(W - 1) * 1.5 / 2, (H - 1) * 1.2 / 2, (D - 1) * 2.0 / 2], dtype=torch.float64)
    rot = torch.tensor(angles, dtype=torch.float64)
    # off-centre by odd amounts: no sample sits exactly on a nearest-label tie, where float32 and
    # float64 positions may round to different voxels
    trans = torch.tensor([[0.0123, 150.0, -0.0317]] * len(angles), dtype=torch.float64)
    rt_inv = make_rt_inv(rot, trans, "AP", centre)
    drr = DRR.from_carm_intrinsics(
        300.0, 120.0 / width, 120.0 / height, 0.0, 0.0, height, width, orthographic, dtype=torch.float64
    )
    return world_to_voxel @ rt_inv, drr.src, drr.tgt


def reference(vol, lab, C, cam_to_voxel, src, tgt, n_samples):
    B = max(cam_to_voxel.shape[0], src.shape[0], tgt.shape[0])
    start, delta, step = sample_geometry(cam_to_voxel.expand(B, 4, 4), src, tgt, SHAPE, n_samples)
    return numpy_raymarch(vol.numpy(), None if lab is None else lab.numpy(), C, start, delta, step, n_samples)


def assert_close(out: torch.Tensor, ref: np.ndarray, rtol: float = 2e-5) -> None:
    """Within ``rtol`` of the largest value (float32 sample positions against float64 ones)."""
    assert out.shape == ref.shape
    scale = float(np.abs(ref).max())
    err = float(np.abs(out.double().numpy() - ref).max())
    assert err <= rtol * scale, f"max error {err:.3g} against max value {scale:.3g}"


@pytest.mark.parametrize("orthographic", [False, True])
@pytest.mark.parametrize("labels", [False, True])
def test_batch_of_poses_matches_the_contract_on_sample_geometry(labels, orthographic):
    """Three poses (AP, oblique, lateral-ish), 9×13 pixels: 351 rays in chunks of 64, so chunks
    straddle images and hold odd numbers of rays; some rays miss or graze the volume."""
    vol, lab = volume()
    C = 6 if labels else 1
    m, src, tgt = camera([[0.0, 0.0, 0.0], [33.0, 21.0, -7.0], [88.0, 3.0, 0.0]], 9, 13, orthographic)
    out = numba_camera.raymarch_rays(vol, lab if labels else None, C, m, src, tgt, 97)
    ref = reference(vol, lab if labels else None, C, m, src, tgt, 97)
    assert (ref == 0).any() and (ref > 0).any()  # the image is not all hits or all misses
    assert_close(out, ref)
    if labels:  # the channels really split the ray: several labels on one pixel
        assert ((ref > 0).sum(axis=1) >= 3).any()


def test_broadcasts_one_pose_over_a_batch_of_detectors():
    vol, _ = volume(1)
    m, src, tgt = camera([[10.0, -5.0, 0.0]], 7, 11)
    tgt = torch.cat([tgt, tgt * 1.1])  # two detectors, one pose
    out = numba_camera.raymarch_rays(vol, None, 1, m, src, tgt, 64)
    assert out.shape == (2, 1, 77)
    assert_close(out, reference(vol, None, 1, m, src, tgt, 64))


def test_float32_ray_ends_are_read_without_a_copy_and_promoted_exactly():
    """A float32 detector (``DRR``'s default) is read as is and computed in float64 per ray: the same
    image, bit for bit, as the float64 copy of the same ray ends."""
    vol, lab = volume(4)
    m, src, tgt = camera([[25.0, -12.0, 3.0]], 8, 9)
    src32, tgt32 = src.float(), tgt.float()
    for lab_, C in ((None, 1), (lab, 6)):
        out32 = numba_camera.raymarch_rays(vol, lab_, C, m, src32, tgt32, 70)
        out64 = numba_camera.raymarch_rays(vol, lab_, C, m, src32.double(), tgt32.double(), 70)
        assert torch.equal(out32, out64)
    arrays = numba_camera.camera_arrays(m, src32, tgt32)
    assert arrays[2].dtype == np.float32 and np.shares_memory(arrays[2], tgt32.numpy())


def test_rays_that_miss_give_zero_and_non_finite_rays_give_nan():
    vol, _ = volume(2)
    m, src, tgt = camera([[0.0, 0.0, 0.0]], 5, 6)
    before = numba_camera.raymarch_rays(vol, None, 1, m, src, tgt, 50)[0, 0]
    hits = (before > 0).nonzero()[:, 0]
    assert len(hits) >= 5
    moved = tgt.clone()
    off, nan = hits[:3], hits[3:5]
    moved[0, off, :2] *= 40.0  # the same pixels, pointed far off the side of the volume
    moved[0, nan[0]] = float("nan")
    moved[0, nan[1], 0] = float("inf")
    out = numba_camera.raymarch_rays(vol, None, 1, m, src, moved, 50)[0, 0]
    assert (out[off] == 0).all()
    assert out[nan].isnan().all()
    rest = torch.ones(30, dtype=torch.bool)
    rest[hits[:5]] = False
    torch.testing.assert_close(out[rest], before[rest], rtol=0, atol=0)


@pytest.mark.parametrize("orthographic", [False, True])
@pytest.mark.parametrize("labels", [False, True])
def test_pose_gradient_matches_autograd_through_the_torch_geometry(labels, orthographic):
    """The backward kernel's hand-written chain rule (samples → clipping → camera → voxel matrix)
    against torch autograd through ``sample_geometry`` into the numba march (itself tested against
    independent references): two poses, rays that enter through different faces, a weighted loss."""
    vol, lab = volume(5)
    C = 6 if labels else 1
    lab_ = lab if labels else None
    m, src, tgt = camera([[5.0, 3.0, 0.0], [33.0, 21.0, -7.0]], 9, 13, orthographic)
    w = torch.randn(2, C, 117, generator=torch.Generator().manual_seed(0))
    fused = m.clone().requires_grad_(True)
    (numba_camera.raymarch_rays(vol, lab_, C, fused, src, tgt, 97) * w).sum().backward()
    traced = m.clone().requires_grad_(True)
    start, delta, step = sample_geometry(traced, src, tgt, SHAPE, 97)
    (numba_march.raymarch(vol, lab_, C, start.float(), delta.float(), step.float(), 97) * w).sum().backward()
    assert traced.grad[:, :3].abs().min() > 0  # every entry of the 3×4 part has a gradient to check
    torch.testing.assert_close(fused.grad, traced.grad, rtol=1e-6, atol=1e-6 * float(traced.grad.abs().max()))


def test_pose_gradient_of_one_pose_sums_over_a_batch_of_detectors():
    vol, _ = volume(6)
    m, src, tgt = camera([[12.0, -4.0, 2.0]], 7, 8)
    tgt = torch.cat([tgt, tgt * 0.9])
    parts = []
    for t in (tgt[:1], tgt[1:], tgt):
        mm = m.clone().requires_grad_(True)
        numba_camera.raymarch_rays(vol, None, 1, mm, src, t, 60).sum().backward()
        parts.append(mm.grad)
    assert parts[2].shape == (1, 4, 4)
    torch.testing.assert_close(parts[2], parts[0] + parts[1])


def test_render_routes_forwards_and_pose_gradients_fused_and_volume_gradients_through_torch(monkeypatch):
    """All three give the same image; the volume gradient needs the torch geometry (and gets it)."""
    vol, _ = volume(3)
    subject = Subject.from_array(vol.numpy(), np.diag([1.5, 1.2, 2.0, 1.0]), convert_to_mu=False)
    k_inv = torch.linalg.inv(torch.tensor([[400.0, 0, 8], [0, 400.0, 6], [0, 0, 1]], dtype=torch.float64))
    rt = make_rt_inv(
        torch.tensor([[20.0, 10.0, 0.0]]), torch.tensor([[0.0, 150.0, 0.0]]), "AP", subject.isocenter
    ).double()
    calls = []
    original = numba_camera.raymarch_rays
    monkeypatch.setattr(numba_camera, "raymarch_rays", lambda *a: calls.append(1) or original(*a))
    fused = render(subject, k_inv, rt, 300.0, 12, 16, n_samples=80, backend="numba")
    assert len(calls) == 1 and not fused.requires_grad
    rt_grad = rt.clone().requires_grad_(True)
    posed = render(subject, k_inv, rt_grad, 300.0, 12, 16, n_samples=80, backend="numba")
    assert len(calls) == 2 and posed.requires_grad
    posed.sum().backward()
    assert rt_grad.grad.abs().sum() > 0
    subject._image_hu = subject._image_hu.detach().clone().requires_grad_(True)  # a volume gradient
    traced = render(subject, k_inv, rt, 300.0, 12, 16, n_samples=80, backend="numba")
    assert len(calls) == 2 and traced.requires_grad
    traced.sum().backward()
    assert subject._image_hu.grad.abs().sum() > 0
    for img in (posed, traced):
        torch.testing.assert_close(fused, img.detach(), rtol=1e-5, atol=1e-6)
    tgt = make_tgt(k_inv[None], torch.tensor([300.0], dtype=torch.float64), 12, 16)
    src = make_src(False, tgt, torch.tensor([300.0]))
    ref = reference(vol, None, 1, subject.world_to_voxel.double() @ rt, src, tgt, 80)
    assert_close(fused.reshape(1, 1, -1), ref)


def test_only_pose_gradients_are_fused():
    vol, _ = volume()
    m, src, tgt = camera([[0.0, 0.0, 0.0]], 4, 4)
    with pytest.raises(ValueError, match=r"vol: requires grad.*cam_to_voxel only"):
        numba_camera.raymarch_rays(vol.clone().requires_grad_(True), None, 1, m, src, tgt, 10)
    with pytest.raises(ValueError, match="tgt: requires grad"):
        numba_camera.raymarch_rays(vol, None, 1, m, src, tgt.clone().requires_grad_(True), 10)
    with torch.no_grad():  # no autograd: nothing to refuse
        numba_camera.raymarch_rays(vol.clone().requires_grad_(True), None, 1, m, src, tgt, 10)


def test_bad_arguments_name_the_parameter():
    vol, lab = volume()
    m, src, tgt = camera([[0.0, 0.0, 0.0]], 4, 4)
    with pytest.raises(ValueError, match="n_samples"):
        numba_camera.raymarch_rays(vol, None, 1, m, src, tgt, 0)
    with pytest.raises(ValueError, match="lab"):
        numba_camera.raymarch_rays(vol, None, 3, m, src, tgt, 10)
    with pytest.raises(ValueError, match="lab"):
        numba_camera.raymarch_rays(vol, lab.float(), 3, m, src, tgt, 10)
    with pytest.raises(ValueError, match="vol"):
        numba_camera.raymarch_rays(vol[0], None, 1, m, src, tgt, 10)


def test_opaque_to_torch_compile_without_graph_breaks():
    vol, lab = volume()
    m, src, tgt = camera([[15.0, 0.0, 0.0]], 6, 6)

    def f(vol, m):
        return numba_camera.raymarch_rays(vol, lab, 6, m, src, tgt, 40) * 2.0

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(vol, m), f(vol, m))
    m_c, m_e = m.clone().requires_grad_(True), m.clone().requires_grad_(True)
    compiled(vol, m_c).sum().backward()
    f(vol, m_e).sum().backward()
    torch.testing.assert_close(m_c.grad, m_e.grad)
