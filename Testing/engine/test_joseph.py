"""Joseph's slice-wise sampling (``method="joseph"``): geometry by hand, kernels against an
independent float64 numpy reference, accuracy against exact phantom integrals, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nanodrr_engine import DRR, Subject, make_rt_inv, render
from nanodrr_engine.data.phantom import make_chest_phantom, rotation_matrix
from nanodrr_engine.drr.backends import available_backends
from nanodrr_engine.drr.backends.torch_ref import raymarch as torch_raymarch
from nanodrr_engine.drr.rays import slice_geometry

HAS_NUMBA = "numba" in available_backends("cpu")
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")


# --- an independent reference: planes found one by one, trilinear μ in float64 -------------------


def _trilinear(vol: np.ndarray, p: np.ndarray) -> float:
    K, J, I = vol.shape
    f = np.floor(p)
    t = p - f
    i0, j0, k0 = (int(v) for v in f)
    val = 0.0
    for dk in (0, 1):
        for dj in (0, 1):
            for di in (0, 1):
                i, j, k = i0 + di, j0 + dj, k0 + dk
                if 0 <= i < I and 0 <= j < J and 0 <= k < K:
                    w = (t[0] if di else 1 - t[0]) * (t[1] if dj else 1 - t[1]) * (t[2] if dk else 1 - t[2])
                    val += w * float(vol[k, j, i])
    return val


def joseph_reference(vol: np.ndarray, a: np.ndarray, b: np.ndarray, mm_per_voxel: float = 1.0) -> float:
    """∫μ along a → b (voxel coordinates, isotropic ``mm_per_voxel``) by Joseph's rule."""
    K, J, I = vol.shape
    sizes = np.array([I, J, K], float)
    r = b - a
    t0, t1 = 0.0, 1.0
    for q in range(3):
        if r[q] == 0:
            if not -1 <= a[q] <= sizes[q]:
                return 0.0
            continue
        ta, tb = (-1 - a[q]) / r[q], (sizes[q] - a[q]) / r[q]
        t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
    if t1 < t0:
        return 0.0
    m = int(np.argmax(np.abs(r)))
    total = 0.0
    for c in range(int(sizes[m])):
        t = (c - a[m]) / r[m]
        if t0 <= t <= t1:
            total += _trilinear(vol, a + t * r)
    # a physical end (source a, detector b) inside the support cuts a plane interval: integrate the
    # piecewise-linear model exactly there (d²/2 of the plane beyond, −(1−d)²/2 of the plane inside)
    direction = 1.0 if r[m] > 0 else -1.0
    for end, sign in ((a, 1.0), (b, -1.0)):
        if not np.all((end > -1) & (end < sizes)):
            continue
        travel = direction * sign  # from this end into the segment
        inner = np.ceil(end[m]) if travel > 0 else np.floor(end[m])
        d = abs(inner - end[m])
        outer = inner - travel
        for plane, weight in ((outer, d * d / 2), (inner, -((1 - d) ** 2) / 2)):
            total += weight * _trilinear(vol, a + (plane - a[m]) / r[m] * r)
    return total * np.linalg.norm(r) * mm_per_voxel / abs(r[m])


def smooth_volume(shape=(9, 11, 13), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    K, J, I = shape
    k, j, i = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), indexing="ij")
    vol = 1.0 + 0.5 * np.sin(0.7 * i + 0.3) * np.cos(0.5 * j) + 0.3 * np.sin(0.4 * k + 0.2 * i)
    return (vol + 0.05 * rng.random(shape)).astype(np.float32)


def random_rays(n: int, shape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rays through (and past, and beside) the volume from all directions, some starting inside."""
    rng = np.random.default_rng(seed)
    K, J, I = shape
    centre = np.array([(I - 1) / 2, (J - 1) / 2, (K - 1) / 2])
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    through = centre + rng.uniform(-0.7, 0.7, size=(n, 3)) * np.array([I, J, K])
    back = rng.uniform(10, 30, size=(n, 1))
    back[: n // 8] = rng.uniform(0, 3, size=(n // 8, 1))  # sources inside or at the edge
    a = through - back * d
    b = through + rng.uniform(10, 30, size=(n, 1)) * d
    # exact axis-aligned rays and 45° ties
    a[-4:] = [[6.3, -20, 4.2], [-20, 5.5, 3.0], [6.0, 5.0, -20], [-10, -10.0, 4.4]]
    b[-4:] = [[6.3, 30, 4.2], [30, 5.5, 3.0], [6.0, 5.0, 30], [20, 20.0, 4.4]]
    return a, b


def identity_subject(vol: np.ndarray) -> Subject:
    """World = voxel coordinates (1 mm voxels), μ = the given values."""
    return Subject.from_array(vol, np.eye(4), convert_to_mu=False)


# --- geometry by hand --------------------------------------------------------------------------


def _geometry(a, b, shape=(4, 5, 6)):
    src = torch.tensor([[a]], dtype=torch.float64)
    tgt = torch.tensor([[b]], dtype=torch.float64)
    return [t[0, 0] for t in slice_geometry(torch.eye(4, dtype=torch.float64)[None], src, tgt, shape)]


def test_axis_aligned_ray_samples_every_plane_once():
    start, delta, step, count = _geometry([2.3, -10.0, 1.7], [2.3, 20.0, 1.7])  # along +j, J = 5
    assert count.item() == 5
    torch.testing.assert_close(start, torch.tensor([2.3, 0.0, 1.7], dtype=torch.float64))
    torch.testing.assert_close(delta, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert step.item() == pytest.approx(1.0)


def test_oblique_ray_hand_computed():
    # direction (0.5, 1, 0.25) per unit j: planes j = 0..4, mm per plane = |(0.5, 1, 0.25)|
    start, delta, step, count = _geometry([1.0, -2.0, 0.5], [1.0 + 5.0, -2.0 + 10.0, 0.5 + 2.5])
    assert count.item() == 5
    torch.testing.assert_close(start, torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(delta, torch.tensor([0.5, 1.0, 0.25], dtype=torch.float64))
    assert step.item() == pytest.approx(math.sqrt(1 + 0.25 + 0.0625))


def test_reversed_ray_starts_at_the_far_plane_and_source_inside_counts_only_planes_ahead():
    start, delta, _step, count = _geometry([3.0, 20.0, 2.0], [3.0, -20.0, 2.0])
    assert count.item() == 5 and start[1].item() == 4.0 and delta[1].item() == -1.0
    start, delta, _step, count = _geometry([3.0, 2.5, 2.0], [3.0, 20.0, 2.0])  # source inside
    assert count.item() == 2 and start[1].item() == 3.0


def test_dominant_axis_is_the_one_crossing_most_planes():
    start, delta, _step, count = _geometry([-10.0, 1.0, 1.0], [30.0, 3.0, 2.0])  # mostly along i (I = 6)
    assert count.item() == 6 and delta[0].item() == 1.0 and start[0].item() == 0.0


def test_rays_that_miss_have_no_samples():
    _start, _delta, step, count = _geometry([-10.0, -10.0, 50.0], [30.0, 20.0, 50.0])
    assert count.item() == 0 and step.item() == 0.0


# --- kernels against the independent reference --------------------------------------------------


def _render_rays(subject, a, b, backend):
    """Render rays given in world (= voxel) coordinates through ``render``'s src/tgt inputs."""
    src = torch.tensor(a, dtype=torch.float64)[None]
    tgt = torch.tensor(b, dtype=torch.float64)[None]
    n = src.shape[1]
    with torch.no_grad():
        out = render(
            subject, None, torch.eye(4, dtype=torch.float64), 1.0, 1, n, src=src, tgt=tgt,
            backend=backend, method="joseph",
        )  # fmt: skip
    return out.reshape(-1).double().numpy()


@pytest.mark.parametrize("backend", ["torch", pytest.param("numba", marks=needs_numba)])
def test_matches_independent_reference_on_random_rays(backend):
    vol = smooth_volume()
    a, b = random_rays(200, vol.shape, seed=1)
    expected = np.array([joseph_reference(vol, a[r], b[r]) for r in range(len(a))])
    got = _render_rays(identity_subject(vol), a, b, backend)
    assert (expected > 0).sum() > 150
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.max())


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_volumes_read_natively(dtype):
    vol = smooth_volume(seed=2)
    half = torch.from_numpy(vol).to(dtype)
    a, b = random_rays(100, vol.shape, seed=3)
    expected = np.array([joseph_reference(half.float().numpy(), a[r], b[r]) for r in range(len(a))])
    subject = Subject.from_array(half, np.eye(4), convert_to_mu=False)
    assert subject.image.dtype == dtype
    got = _render_rays(subject, a, b, "numba")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.max())


@needs_numba
@pytest.mark.parametrize("orthographic", [False, True])
def test_numba_and_torch_paths_agree_on_batched_anisotropic_poses(orthographic):
    vol, _labels, v2w, _ = make_chest_phantom(spacing=(3.0, 3.5, 4.0), direction=rotation_matrix(rz=20.0))
    subject = Subject.from_array(vol, v2w)
    drr = DRR.from_carm_intrinsics(1020.0, 12.0, 12.0, 0.0, 0.0, 24, 28, orthographic=orthographic)
    # AP (j planes), lateral (i planes), cranio-caudal (k planes), oblique
    rot = torch.tensor([[0.0, 0.0, 0.0], [90.0, 0.0, 0.0], [0.0, 85.0, 0.0], [35.0, 20.0, 10.0]])
    rt = make_rt_inv(rot, torch.tensor([[0.0, 850.0, 0.0]]).expand(4, 3), "AP", subject.isocenter)
    with torch.no_grad():
        fast = drr(subject, rt, method="joseph", backend="numba")
        ref = drr(subject, rt, method="joseph", backend="torch")
    assert fast.shape == (4, 1, 24, 28) and ref.amax() > 1.0
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * ref.amax().item())


# --- accuracy and consistency --------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_case():
    # the oblique, anisotropic ~1 mm grid of test_accuracy.py
    vol, labels, v2w, phantom = make_chest_phantom(
        spacing=(0.8, 0.9, 1.1), direction=rotation_matrix(rz=25.0, rx=8.0), supersample=1
    )
    return vol, labels, v2w, phantom


@pytest.mark.slow
@pytest.mark.parametrize(
    "rotation", [(0.0, 0.0, 0.0), (90.0, 0.0, 0.0), (30.0, 20.0, 10.0), (-60.0, -15.0, 0.0)]
)
def test_mean_relative_error_against_exact_integrals(phantom_case, rotation):
    vol, labels, v2w, phantom = phantom_case
    subject = Subject.from_array(vol, v2w, label=labels)
    drr = DRR.from_carm_intrinsics(1020.0, 8.0, 8.0, 0.0, 0.0, 40, 40)
    rt = make_rt_inv(torch.tensor([rotation]), torch.tensor([[0.0, 850.0, 0.0]]), "AP", subject.isocenter)
    R, t = rt[0, :3, :3].double(), rt[0, :3, 3].double()
    src = (drr.src[0].double().expand_as(drr.tgt[0]) @ R.T + t).numpy()
    tgt = (drr.tgt[0].double() @ R.T + t).numpy()
    exact = phantom.line_integral(src, tgt)
    long_chords = phantom.chord_length(src, tgt) > 40.0
    plain = Subject.from_array(vol, v2w)
    with torch.no_grad():
        img = drr(plain, rt, method="joseph")[0, 0].double().numpy().ravel()
        channels = drr(subject, rt, method="joseph")[0].double().numpy().reshape(phantom.num_labels, -1)
    rel = np.abs(img - exact)[long_chords] / exact[long_chords]
    assert rel.mean() < 5e-3, rel.mean()
    # labelmap renders (the fused labelmap kernel) split the same integral into channels
    np.testing.assert_allclose(channels.sum(0), img, rtol=1e-4, atol=1e-4 * img.max())
    by_label = phantom.line_integrals_by_label(src, tgt)
    assert np.abs(channels.T - by_label)[long_chords].sum() / exact[long_chords].sum() < 0.05


@pytest.mark.parametrize("backend", ["torch", pytest.param("numba", marks=needs_numba)])
def test_pose_gradient_matches_finite_differences(backend):
    """The torch reference (autograd through ``slice_geometry``) and the fused kernel's hand-written
    chain rule (``numba_joseph._pose_chain``), each against central differences of its own render."""
    vol = smooth_volume(shape=(10, 12, 14), seed=4)
    subject = Subject.from_array(vol, np.diag([2.0, 2.0, 2.5, 1.0]), convert_to_mu=False)
    drr = DRR.from_carm_intrinsics(400.0, 4.0, 4.0, 0.0, 0.0, 6, 6)

    def loss(params: torch.Tensor) -> torch.Tensor:
        rt = make_rt_inv(params[:3][None], params[3:][None], "AP", subject.isocenter)
        return drr(subject, rt, method="joseph", backend=backend).square().mean()

    params = torch.tensor([12.0, -7.0, 5.0, 3.0, 300.0, -2.0], dtype=torch.float64, requires_grad=True)
    loss(params).backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()
    with torch.no_grad():
        for q, h in ((0, 0.05), (3, 0.05), (5, 0.05)):
            e = torch.zeros(6, dtype=torch.float64)
            e[q] = h
            fd = (loss(params + e) - loss(params - e)) / (2 * h)
            assert params.grad[q].item() == pytest.approx(
                fd.item(), rel=0.05, abs=1e-3 * abs(fd.item()) + 1e-9
            )


def test_bad_method_and_unsupported_combinations_name_the_argument():
    subject = identity_subject(smooth_volume())
    drr = DRR.from_carm_intrinsics(100.0, 1.0, 1.0, 0.0, 0.0, 4, 4)
    rt = make_rt_inv(torch.zeros(1, 3), torch.tensor([[0.0, 50.0, 0.0]]), "AP", subject.isocenter)
    with pytest.raises(ValueError, match="method"):
        drr(subject, rt, method="siddon")
    labelled = subject.with_labels(np.ones(subject.shape, np.int64))
    with pytest.raises(ValueError, match="soft_labels"):
        drr(labelled, rt, method="joseph", soft_labels=True)
    with pytest.raises(ValueError, match="backend"):
        drr(subject, rt, method="joseph", backend="triton")


def test_count_contract_of_the_reference_keeps_only_the_first_samples():
    vol = torch.ones(3, 3, 3)
    start = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])
    delta = torch.zeros(1, 2, 3)
    step = torch.tensor([[2.0, 2.0]])
    out = torch_raymarch(vol, None, 1, start, delta, step, 5, count=torch.tensor([[5, 2]]))
    torch.testing.assert_close(out[0, 0], torch.tensor([10.0, 4.0]))
