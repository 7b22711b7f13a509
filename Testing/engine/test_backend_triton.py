"""Tests of the fused Triton ray-march backend (``nanodrr_engine.drr.backends.triton_gpu``).

Without a GPU the kernels run in Triton's interpreter, which must be switched on (``TRITON_INTERPRET=1``)
before ``triton`` is first imported. ``test_interpreter_suite`` therefore reruns this file in a
subprocess with that variable set; the tests marked ``interp`` only run there, on tiny problems.
They check the kernels against an independent float64 NumPy implementation of the contract (forward)
and against torch autograd of an explicit-trilinear torch implementation (backward).
The ``cuda`` tests need a real GPU and skip otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from contract_reference import numpy_raymarch, torch_raymarch

_CHILD = os.environ.get("NANODRR_TRITON_INTERP_CHILD") == "1"
_HAS_TRITON = importlib.util.find_spec("triton") is not None

interp = pytest.mark.skipif(
    not _CHILD, reason="runs in the TRITON_INTERPRET=1 subprocess started by test_interpreter_suite"
)
_needs_cuda = pytest.mark.skipif(
    _CHILD or not torch.cuda.is_available() or not _HAS_TRITON,
    reason="needs a CUDA GPU and triton (real-kernel test)",
)


def cuda(fn):
    """Real-GPU test: marked ``gpu`` and skipped without CUDA."""
    return pytest.mark.gpu(_needs_cuda(fn))


def _tg():
    from nanodrr_engine.drr.backends import triton_gpu

    return triton_gpu


def _problem(seed=0, B=2, N=64, shape=(8, 9, 10), n_labels=5, vol_dtype=torch.float32, lab_dtype=torch.int64):
    """Random rays through a small volume; a few rays miss (step 0, samples far outside or NaN)."""
    g = torch.Generator().manual_seed(seed)
    D, H, W = shape
    vol = torch.rand(shape, generator=g).to(vol_dtype)
    lab = torch.randint(-1, n_labels + 2, shape, generator=g).to(lab_dtype)  # includes -1 and >= C
    size = torch.tensor([W, H, D], dtype=torch.float32)
    start = torch.rand(B, N, 3, generator=g) * (size + 2) - 1.5  # some samples in the padding
    delta = torch.randn(B, N, 3, generator=g) * 0.9
    step = torch.rand(B, N, generator=g) + 0.1
    step[0, :4] = 0.0  # missed rays: far outside, as render would place them
    start[0, :4] = -50.0
    return vol, lab, start, delta, step


# ---------------------------------------------------------------------------------------------------
# Tests that need no kernel launch (run everywhere)
# ---------------------------------------------------------------------------------------------------


def test_is_available_returns_bool():
    tg = _tg()
    assert isinstance(tg.is_available(), bool)
    if not _HAS_TRITON:
        assert tg.is_available() is False


@pytest.mark.skipif(not _HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"vol": torch.zeros(4, 4)}, "vol"),
        ({"vol": torch.zeros(4, 4, 4, dtype=torch.float64)}, "vol"),
        ({"n_classes": 0}, "n_classes"),
        ({"n_classes": 3, "lab": None}, "lab"),
        ({"n_classes": 3, "lab": torch.zeros(4, 4, 4)}, "lab"),
        ({"n_classes": 3, "lab": torch.zeros(4, 4, 5, dtype=torch.int32)}, "lab"),
        ({"start": torch.zeros(1, 5, 2)}, "start"),
        ({"delta": torch.zeros(1, 4, 3)}, "delta"),
        ({"step": torch.zeros(1, 5, 1)}, "step"),
        ({"n_samples": 0}, "n_samples"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    args = {
        "vol": torch.zeros(4, 4, 4),
        "lab": None,
        "n_classes": 1,
        "start": torch.zeros(1, 5, 3),
        "delta": torch.zeros(1, 5, 3),
        "step": torch.zeros(1, 5),
        "n_samples": 4,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        _tg().raymarch(**args)


@pytest.mark.slow
@pytest.mark.skipif(_CHILD or not _HAS_TRITON, reason="parent process only; needs triton")
def test_interpreter_suite():
    """Rerun this file's ``interp`` tests with TRITON_INTERPRET=1 (fresh process: the variable is read
    when triton first compiles a kernel decorator)."""
    env = dict(os.environ, TRITON_INTERPRET="1", NANODRR_TRITON_INTERP_CHILD="1")
    engine = str(Path(__file__).resolve().parents[2] / "NanoDRREngine")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (engine, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"interpreter-mode tests failed:\n{report}"
    assert " passed" in proc.stdout, report


# ---------------------------------------------------------------------------------------------------
# Interpreter-mode tests (tiny problems)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def small_launch(monkeypatch):
    """Force several programs (block of 16 rays), sample-range splitting and small chunks."""
    tg = _tg()
    monkeypatch.setattr(tg, "_BLOCK", 16)
    monkeypatch.setattr(tg, "_TILE_W", 4)
    monkeypatch.setattr(tg, "_MIN_CHUNK", 2)
    tg._target_programs.cache_clear()
    yield tg
    tg._target_programs.cache_clear()


@interp
def test_child_runs_in_interpreter_mode():
    tg = _tg()
    assert tg._interpreting() and tg.is_available()


@interp
@pytest.mark.parametrize("vol_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_plain_matches_numpy(vol_dtype):
    tg = _tg()
    vol, _, start, delta, step = _problem(seed=1, vol_dtype=vol_dtype)
    out = tg.raymarch(vol, None, 1, start, delta, step, 8)
    ref = numpy_raymarch(vol.float().numpy(), None, 1, start.numpy(), delta.numpy(), step.numpy(), 8)
    assert out.dtype == torch.float32 and out.shape == (2, 1, 64)
    np.testing.assert_allclose(out.numpy(), ref, rtol=2e-5, atol=2e-6)
    assert np.all(out[0, 0, :4].numpy() == 0.0)
    assert ref[:, 0].std() > 0.1  # the rays see different amounts of the volume: a real test


@interp
@pytest.mark.parametrize("lab_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_forward_labelmap_matches_numpy(lab_dtype):
    tg = _tg()
    C = 4
    vol, lab, start, delta, step = _problem(seed=2, n_labels=C, lab_dtype=lab_dtype)
    out = tg.raymarch(vol, lab, C, start, delta, step, 8)
    ref = numpy_raymarch(vol.numpy(), lab.numpy(), C, start.numpy(), delta.numpy(), step.numpy(), 8)
    assert out.shape == (2, C, 64)
    np.testing.assert_allclose(out.numpy(), ref, rtol=2e-5, atol=2e-6)
    # Labels >= C (and negative ones) are dropped, so the channels sum to less than the plain render
    plain = numpy_raymarch(vol.numpy(), None, 1, start.numpy(), delta.numpy(), step.numpy(), 8)
    assert np.all(ref.sum(1) <= plain[:, 0] + 1e-9) and np.any(ref.sum(1) < plain[:, 0] - 1e-3)
    assert np.count_nonzero(ref) > 0.5 * ref.size / C


@interp
def test_forward_label_ties_round_half_to_even():
    """Samples exactly half-way between voxel centres take the label of the even index."""
    tg = _tg()
    D, H, W = 4, 4, 8
    vol = torch.ones(D, H, W)
    lab = torch.arange(W).repeat(D, H, 1)  # label = i
    # One sample per ray at i = 0.5, 1.5, ..., 6.5 (j = k = 1): even neighbour wins
    start = torch.tensor([[[i + 0.5, 1.0, 1.0] for i in range(7)]])
    delta = torch.zeros(1, 7, 3)
    step = torch.ones(1, 7)
    out = tg.raymarch(vol, lab, W, start, delta, step, 1)[0]
    expected = [0, 2, 2, 4, 4, 6, 6]  # round-half-even of 0.5 … 6.5
    for n, k in enumerate(expected):
        assert out[k, n] == pytest.approx(1.0), (n, out[:, n])
        assert out.sum(0)[n] == pytest.approx(1.0)


@interp
def test_forward_missing_rays_are_zero_even_if_nan():
    tg = _tg()
    vol, lab, start, delta, step = _problem(seed=3)
    start[1, 10:20] = float("nan")
    delta[1, 10:20] = float("inf")
    step[1, 10:20] = 0.0
    for C, lb in ((1, None), (4, lab)):
        out = tg.raymarch(vol, lb, C, start, delta, step, 8)
        assert torch.isfinite(out).all()
        assert (out[1, :, 10:20] == 0).all()


@interp
@pytest.mark.parametrize("C", [1, 5])
def test_forward_split_and_tiles_match_numpy(small_launch, C):
    tg = small_launch
    vol, lab, start, delta, step = _problem(seed=4, N=60, n_labels=C)
    S = 6
    assert tg._split(start.device, 2 * 4, S, 2 * C * 60) == 3  # the split path is really taken
    ref = numpy_raymarch(vol.numpy(), lab.numpy(), C, start.numpy(), delta.numpy(), step.numpy(), S)
    for width in (0, 12):  # consecutive rays; 4×4 pixel tiles of a 12×5 image
        out = tg.raymarch(vol, lab if C > 1 else None, C, start, delta, step, S, width=width)
        np.testing.assert_allclose(out.numpy(), ref, rtol=2e-5, atol=2e-6, err_msg=f"width={width}")


def _grads(fn, vol, lab, C, start, delta, step, S, go, dtype):
    """Output and gradients w.r.t. (vol, start, delta, step); the rays in ``dtype``, and the volume
    too for the float64 reference (the kernel reads its native dtype)."""
    vol = vol.detach().to(torch.float64) if dtype == torch.float64 else vol.detach()
    leaves = [vol.requires_grad_()] + [t.detach().to(dtype).requires_grad_() for t in (start, delta, step)]
    out = fn(leaves[0], lab, C, leaves[1], leaves[2], leaves[3], S)
    out.backward(go.to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


@interp
@pytest.mark.parametrize("C", [1, 4])
@pytest.mark.parametrize("split", [False, True])
def test_backward_matches_torch_autograd(request, C, split):
    tg = request.getfixturevalue("small_launch") if split else _tg()
    N = 32 if split else 64
    vol, lab, start, delta, step = _problem(seed=5 + C, N=N, n_labels=C)
    S = 8
    go = torch.randn(2, C, N, generator=torch.Generator().manual_seed(9))
    lb = lab if C > 1 else None
    out, got = _grads(tg.raymarch, vol, lb, C, start, delta, step, S, go, torch.float32)
    ref_out, want = _grads(torch_raymarch, vol, lb, C, start, delta, step, S, go, torch.float64)
    np.testing.assert_allclose(out.numpy(), ref_out.numpy(), rtol=2e-5, atol=2e-6)
    for name, g, w in zip(("vol", "start", "delta", "step"), got, want, strict=True):
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        assert w.abs().max() > 0.1, name  # non-trivial reference gradient
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


@interp
@pytest.mark.parametrize("C", [1, 4])
@pytest.mark.parametrize("split", [False, True])
def test_sample_counts_match_torch_autograd(request, C, split):
    """Per-ray sample counts (Joseph's slices): each ray keeps its samples ``s < count``, forward and
    backward, also when the sample range is split across programs."""
    tg = request.getfixturevalue("small_launch") if split else _tg()
    N = 32 if split else 64
    vol, lab, start, delta, step = _problem(seed=30 + C, N=N, n_labels=C)
    S = 8
    count = torch.randint(0, S + 1, step.shape, generator=torch.Generator().manual_seed(31))
    count[:, 4:8] = S
    count[:, 8:12] = 0
    go = torch.randn(2, C, N, generator=torch.Generator().manual_seed(32))
    lb = lab if C > 1 else None
    out, got = _grads(
        lambda *a: tg.raymarch(*a, count=count), vol, lb, C, start, delta, step, S, go, torch.float32
    )
    ref_out, want = _grads(
        lambda *a: torch_raymarch(*a, count=count), vol, lb, C, start, delta, step, S, go, torch.float64
    )
    np.testing.assert_allclose(out.numpy(), ref_out.numpy(), rtol=2e-5, atol=2e-6)
    for name, g, w in zip(("vol", "start", "delta", "step"), got, want, strict=True):
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    whole = tg.raymarch(vol, lb, C, start, delta, step, S)  # the counts matter
    assert (whole - out).abs().amax() > 0.1
    with pytest.raises(ValueError, match=r"^count:"):
        tg.raymarch(vol, lb, C, start, delta, step, S, count=count + S)


@interp
def test_backward_partial_needs_and_half_volume():
    tg = _tg()
    C = 3
    vol, lab, start, delta, step = _problem(seed=11, n_labels=C, vol_dtype=torch.float16)
    go = torch.randn(2, C, 64, generator=torch.Generator().manual_seed(1))
    _, want = _grads(torch_raymarch, vol, lab, C, start, delta, step, 8, go, torch.float64)

    v = vol.clone().requires_grad_()
    tg.raymarch(v, lab, C, start, delta, step, 8).backward(go)
    assert v.grad.dtype == torch.float16
    np.testing.assert_allclose(v.grad.float().numpy(), want[0].numpy(), rtol=2e-3, atol=2e-3)

    d = delta.clone().requires_grad_()
    tg.raymarch(vol, lab, C, start, d, step, 8).backward(go)
    np.testing.assert_allclose(d.grad.numpy(), want[2].numpy(), rtol=1e-4, atol=1e-5)


@interp
def test_backward_missing_rays_have_zero_gradient():
    """Documented choice: rays with step 0 are skipped, so even d/dstep is 0 there."""
    tg = _tg()
    vol, _, start, delta, step = _problem(seed=12)
    step[1, :8] = 0.0  # inside the volume, yet skipped
    s = step.clone().requires_grad_()
    st = start.clone().requires_grad_()
    tg.raymarch(vol, None, 1, st, delta, s, 8).sum().backward()
    assert (s.grad[1, :8] == 0).all() and (st.grad[1, :8] == 0).all()
    assert (s.grad[1, 8:] != 0).any()


@interp
def test_matches_torch_reference_backend():
    """Same numbers as the grid_sample reference backend, forward and backward, with a labelmap."""
    from nanodrr_engine.drr.backends.torch_ref import raymarch as torch_ref

    tg = _tg()
    C = 4
    vol, lab, start, delta, step = _problem(seed=14, n_labels=C)
    lab = lab.clamp(min=0)  # labels >= C only: torch_ref's scatter rejects negative labels
    go = torch.randn(2, C, 64, generator=torch.Generator().manual_seed(2))
    out, got = _grads(tg.raymarch, vol, lab, C, start, delta, step, 8, go, torch.float32)
    ref_out, want = _grads(torch_ref, vol, lab, C, start, delta, step, 8, go, torch.float64)
    np.testing.assert_allclose(out.numpy(), ref_out.numpy(), rtol=2e-5, atol=2e-6)
    for name, g, w in zip(("vol", "start", "delta", "step"), got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


@interp
def test_empty_ray_set():
    tg = _tg()
    vol, lab, *_ = _problem()
    e3, e2 = torch.zeros(2, 0, 3), torch.zeros(2, 0)
    assert tg.raymarch(vol, lab, 3, e3, e3, e2, 4).shape == (2, 3, 0)


@interp
def test_opcheck_and_compile():
    """Schema, fake kernel and autograd registration are consistent; torch.compile sees an opaque op."""
    tg = _tg()
    vol, lab, start, delta, step = _problem(seed=13, N=16, n_labels=3)
    vol.requires_grad_()
    start.requires_grad_()
    for count in (None, torch.randint(0, 5, step.shape, dtype=torch.int32)):
        torch.library.opcheck(
            tg._raymarch_op,
            (vol, lab, 3, start, delta, step, 4, 0, count),
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
        )

    def f(v, s):
        return tg.raymarch(v, lab, 3, s, delta, step, 4).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(vol, start)
    gv, gs = torch.autograd.grad(loss, (vol, start))
    ref = f(vol, start)
    rv, rs = torch.autograd.grad(ref, (vol, start))
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gv, rv)
    torch.testing.assert_close(gs, rs)


# ---------------------------------------------------------------------------------------------------
# Real-GPU tests
# ---------------------------------------------------------------------------------------------------


def _gpu_problem(C=1, vol_dtype=torch.float32, B=2, N=4096, shape=(64, 80, 96)):
    g = torch.Generator().manual_seed(21)
    D, H, W = shape
    vol = torch.rand(shape, generator=g)
    lab = (torch.arange(D)[:, None, None] // 8 + torch.arange(W)[None, None, :] // 16).expand(shape) % (C + 1)
    size = torch.tensor([W, H, D], dtype=torch.float32)
    start = torch.rand(B, N, 3, generator=g) * size * torch.tensor([1.0, 1.0, 0.0])
    start[..., 2] = -1.0
    delta = torch.randn(B, N, 3, generator=g) * 0.2
    delta[..., 2] = (D + 1) / 128  # march through the volume along k
    step = torch.rand(B, N, generator=g) + 0.5
    step[:, :100] = 0.0
    dev = torch.device("cuda")
    return (
        vol.to(dev, vol_dtype),
        lab.contiguous().to(dev, torch.int16),
        start.to(dev),
        delta.to(dev),
        step.to(dev),
    )


@cuda
def test_cuda_backend_is_registered():
    from nanodrr_engine.drr.backends import available_backends

    assert _tg().is_available()
    assert available_backends("cuda")[0] == "triton"


@cuda
@pytest.mark.parametrize("C", [1, 6])
@pytest.mark.parametrize("vol_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [0, 64])
def test_cuda_forward_backward_match_torch(C, vol_dtype, width):
    tg = _tg()
    vol, lab, start, delta, step = _gpu_problem(C, vol_dtype)
    lb = lab if C > 1 else None
    S = 128
    go = torch.randn(2, C, start.shape[1], device="cuda")
    out, got = _grads(
        lambda *a: tg.raymarch(*a, width=width), vol, lb, C, start, delta, step, S, go, torch.float32
    )
    ref_out, want = _grads(torch_raymarch, vol.float(), lb, C, start, delta, step, S, go, torch.float64)
    torch.testing.assert_close(out, ref_out.float(), rtol=1e-4, atol=1e-4)
    tol = 2e-2 if vol_dtype != torch.float32 else 1e-4
    for name, g, w in zip(("vol", "start", "delta", "step"), got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol, msg=name)


@cuda
def test_cuda_joseph_renders_take_the_triton_march_with_counts():
    """``method="joseph"`` on CUDA: labelmap channels, pose and volume gradients as the torch reference."""
    from nanodrr_engine import DRR, Subject, make_rt_inv
    from nanodrr_engine.data.phantom import make_chest_phantom

    vol, labels, v2w, _ = make_chest_phantom(spacing=(3.0, 3.5, 4.0))
    drr = DRR.from_carm_intrinsics(1020.0, 6.0, 6.0, 0.0, 0.0, 40, 48).cuda()
    results = {}
    for backend in ("auto", "torch"):
        subject = Subject.from_array(vol, v2w, label=labels).cuda()
        rot = torch.tensor([[30.0, 15.0, 5.0]], device="cuda", requires_grad=True)
        trans = torch.tensor([[0.0, 850.0, 0.0]], device="cuda")
        out = drr(subject, make_rt_inv(rot, trans, "AP", subject.isocenter), method="joseph", backend=backend)
        out.sum().backward()
        results[backend] = (out.detach(), rot.grad)
    (fast, g_fast), (ref, g_ref) = results["auto"], results["torch"]
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * ref.amax().item())
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-3, atol=1e-3 * g_ref.abs().amax().item())


@cuda
def test_cuda_throughput_sanity():
    """A 200×200 render of a 512×512×133 volume with 500 samples runs in well under 20 ms (forward)."""
    tg = _tg()
    vol = torch.rand(133, 512, 512, device="cuda")
    n = 200 * 200
    start = torch.rand(1, n, 3, device="cuda") * torch.tensor([511.0, 0.0, 132.0], device="cuda")
    delta = torch.zeros(1, n, 3, device="cuda")
    delta[..., 1] = 512 / 500
    step = torch.ones(1, n, device="cuda")
    tg.raymarch(vol, None, 1, start, delta, step, 500, width=200)
    torch.cuda.synchronize()
    start_evt, end_evt = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start_evt.record()
    for _ in range(10):
        tg.raymarch(vol, None, 1, start, delta, step, 500, width=200)
    end_evt.record()
    torch.cuda.synchronize()
    ms = start_evt.elapsed_time(end_evt) / 10
    assert ms < 20.0, f"forward took {ms:.2f} ms"
