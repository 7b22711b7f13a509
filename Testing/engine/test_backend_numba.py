"""Tests of the fused numba CPU ray-march backend (``nanodrr_engine.drr.backends.numba.march``).

The kernels are checked against independent implementations of the ``raymarch`` contract: a
brute-force float64 NumPy reading (forward), torch autograd of an explicit-trilinear float64 torch
implementation (backward), hand-computed values on constant and linear volumes, and exact finite
differences where the output is linear in the input (vol, step, start on a linear volume).

Ray coordinates are multiples of 2**-10 with few significant bits, so every sample position
``start + s·delta`` is exact in float32 and float64 alike: the kernel and the references then see
the same points, and ties of the nearest-label rounding (half to even) are exercised exactly.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

from contract_reference import numpy_raymarch, torch_raymarch
from nanodrr_engine.drr.backends.numba import march as numba_march

SHAPE = (20, 24, 28)  # [D, H, W] = [K, J, I]


@pytest.fixture(autouse=True)
def _available():
    if not numba_march.is_available():
        pytest.skip("numba backend unavailable")


# ---------------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------------


def _q(t: torch.Tensor) -> torch.Tensor:
    """Round to a multiple of 2**-10 (exact sample positions, see the module docstring)."""
    return (t * 1024).round() / 1024


def make_rays(seed: int, n_samples: int, batch: int = 2, n_random: int = 120, exact: bool = True):
    """``start, delta, step`` ``[B, N, 3], [B, N, 3], [B, N]``: oblique, axis-aligned and degenerate rays.

    Random segments between points up to 30% beyond the volume on each side (so rays start and
    end outside, graze faces or miss entirely), axis-aligned rays on integer, half-integer and
    boundary coordinates (-1, -0.5, 0, S-1, S-0.5), a ray with ``delta == 0``, and ``step == 0`` rays.
    ``exact=False``: only random rays, not rounded, so that no sample sits on a voxel boundary
    (where the one-sided derivative of the interpolant is a matter of convention).
    """
    g = torch.Generator().manual_seed(seed)
    D, H, W = SHAPE
    size = torch.tensor([W, H, D], dtype=torch.float64)
    a = (torch.rand(batch, n_random, 3, generator=g, dtype=torch.float64) * 1.6 - 0.3) * size
    b = (torch.rand(batch, n_random, 3, generator=g, dtype=torch.float64) * 1.6 - 0.3) * size
    if not exact:
        step = torch.rand(batch, n_random, generator=g) + 0.5
        return a.float(), ((b - a) / n_samples).float(), step
    start, delta = _q(a), _q((b - a) / n_samples)
    special_s, special_d = [], []
    for axis in range(3):
        o1, o2 = [ax for ax in range(3) if ax != axis]
        length = float(size[axis]) + 2
        for u, v in [
            (3, 4),
            (3.5, 4.5),
            (-1, 2),
            (-0.5, 5),
            (0, 0),
            (size[o1] - 1, 3),
            (size[o1] - 0.5, 2.25),
        ]:
            p = torch.zeros(3, dtype=torch.float64)
            d = torch.zeros(3, dtype=torch.float64)
            p[axis], p[o1], p[o2] = -1.25, u, v
            d[axis] = length / n_samples
            special_s.append(_q(p))
            special_d.append(_q(d))
    special_s.append(_q(size / 2.3))  # "rays" that stay on one point inside, the last with step == 0
    special_d.append(torch.zeros(3, dtype=torch.float64))
    special_s.append(_q(size / 1.7))
    special_d.append(torch.zeros(3, dtype=torch.float64))
    n_special = len(special_s)
    start = torch.cat([start, torch.stack(special_s)[None].expand(batch, -1, -1)], 1)
    delta = torch.cat([delta, torch.stack(special_d)[None].expand(batch, -1, -1)], 1)
    step = torch.rand(batch, n_random + n_special, generator=g, dtype=torch.float64) + 0.5
    step[:, :4] = 0.0  # skipped rays (some of them inside the volume)
    step[:, -1] = 0.0  # (its dstep = n·g·μ(start) is still nonzero)
    return start.float(), delta.float(), step.float()


def make_volume(seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vol = torch.rand(SHAPE, generator=g)
    vol[vol < 0.2] = 0.0  # air pockets
    return vol.to(dtype)


def make_labels(seed: int, low: int, high: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, SHAPE, generator=g).to(dtype)


def _assert_close(actual: torch.Tensor, expected, rtol: float = 1e-4):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [1, 17, 48, 300])  # 300: rays marched in several segments
def test_plain_matches_numpy_reference(n_samples):
    vol = make_volume(0)
    start, delta, step = make_rays(1, n_samples)
    out = numba_march.raymarch(vol, None, 1, start, delta, step, n_samples)
    assert out.shape == (2, 1, step.shape[1]) and out.dtype == torch.float32
    _assert_close(out, numpy_raymarch(vol, None, 1, start, delta, step, n_samples))
    assert torch.all(out[:, 0, :4] == 0) and torch.all(out[:, 0, -1] == 0), "rays with step == 0 are skipped"
    assert torch.all(out[:, 0, 4:].abs().sum() > 0)


def test_constant_and_linear_volumes_hand_computed():
    """Zero padding and interpolation checked against values worked out by hand."""
    H = SHAPE[1]
    n = 8
    vol = torch.full(SHAPE, 2.0)
    # Rays along i (samples at i = 3..10) at (j, k) inside, halfway to the row before the first one,
    # three quarters of the way past the last row, and on the row -1 (whose voxels are all padding).
    start = torch.tensor([[[3.0, 5.0, 7.0], [3.0, -0.5, 7.0], [3.0, H - 0.25, 7.0], [3.0, -1.0, 7.0]]])
    delta = torch.tensor([[[1.0, 0.0, 0.0]] * 4])
    step = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    out = numba_march.raymarch(vol, None, 1, start, delta, step, n)[0, 0]
    expected = torch.tensor([2.0, 1.0, 0.5, 0.0]) * n * 0.5  # μ = 2, 2·(1 - 0.5), 2·(1 - 0.75), 0
    torch.testing.assert_close(out, expected)
    # μ = 1 + 0.5·i + 0.25·j + 0.125·k is reproduced exactly by trilinear interpolation inside.
    k, j, i = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in SHAPE), indexing="ij")
    lin = 1 + 0.5 * i + 0.25 * j + 0.125 * k
    start = torch.tensor([[[2.25, 3.5, 1.75]]])
    delta = torch.tensor([[[0.5, 0.75, 1.25]]])
    out = numba_march.raymarch(lin, None, 1, start, delta, torch.tensor([[1.0]]), 12)
    p = start[0, 0] + torch.arange(12.0)[:, None] * delta[0, 0]
    expected = (1 + 0.5 * p[:, 0] + 0.25 * p[:, 1] + 0.125 * p[:, 2]).sum()
    torch.testing.assert_close(out[0, 0, 0], expected)


@pytest.mark.parametrize(
    ("dtype", "low", "high"), [(torch.uint8, 0, 9), (torch.int16, -3, 9), (torch.int64, -1, 9)]
)
def test_labels_match_numpy_reference(dtype, low, high):
    """Labels of 8/16/64-bit, signed and unsigned dtypes (each one compiles a kernel, so int8 and
    int32 are left out); labels >= C and negative ones are dropped, outside -> channel 0."""
    n_classes, n_samples = 6, 40
    vol = make_volume(2)
    lab = make_labels(3, low, high, dtype)
    start, delta, step = make_rays(4, n_samples)
    out = numba_march.raymarch(vol, lab, n_classes, start, delta, step, n_samples)
    assert out.shape == (2, n_classes, step.shape[1])
    _assert_close(out, numpy_raymarch(vol, lab.numpy(), n_classes, start, delta, step, n_samples))


def test_labels_channels_sum_to_plain_render():
    n_samples = 33
    vol = make_volume(5)
    lab = make_labels(6, 0, 4, torch.uint8)  # every label is kept
    start, delta, step = make_rays(7, n_samples)
    plain = numba_march.raymarch(vol, None, 1, start, delta, step, n_samples)
    split = numba_march.raymarch(vol, lab, 4, start, delta, step, n_samples)
    torch.testing.assert_close(split.sum(1, keepdim=True), plain, rtol=1e-5, atol=1e-5)
    # With one class the labels are ignored: every sample goes to channel 0.
    torch.testing.assert_close(numba_march.raymarch(vol, lab, 1, start, delta, step, n_samples), plain)


def test_long_label_runs_match_reference():
    """Few, large label regions: runs span many vectorised label-search chunks."""
    n_samples, n_classes = 200, 3
    vol = make_volume(8)
    _, j, i = torch.meshgrid(*(torch.arange(s) for s in SHAPE), indexing="ij")
    lab = ((i // 10 + j // 12) % n_classes).to(torch.int16)
    start, delta, step = make_rays(9, n_samples)
    out = numba_march.raymarch(vol, lab, n_classes, start, delta, step, n_samples)
    _assert_close(out, numpy_raymarch(vol, lab.numpy(), n_classes, start, delta, step, n_samples))


@pytest.mark.parametrize(("dtype", "low", "high"), [(torch.uint8, 0, 9), (torch.int16, -3, 9)])
def test_many_label_changes_across_run_chunks_match_reference(dtype, low, high):
    """Random labels (changes every few samples, dropped ones included) on rays of 300 samples:
    run detection crosses 64-sample mask words and 128-sample buffers, ending in a partial one."""
    n_samples, n_classes = 300, 6
    vol = make_volume(30)
    lab = make_labels(31, low, high, dtype)
    start, delta, step = make_rays(32, n_samples)
    out = numba_march.raymarch(vol, lab, n_classes, start, delta, step, n_samples)
    _assert_close(out, numpy_raymarch(vol, lab.numpy(), n_classes, start, delta, step, n_samples))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_volume_read_natively(dtype):
    """16-bit volumes give exactly the render of their float32 promotion."""
    n_samples = 24
    vol = make_volume(10, dtype)
    lab = make_labels(11, 0, 5, torch.uint8)
    start, delta, step = make_rays(12, n_samples)
    cases = ((None, 1), (lab, 5)) if dtype == torch.float16 else ((None, 1),)  # fewer kernels to compile
    for labels, n_classes in cases:
        out = numba_march.raymarch(vol, labels, n_classes, start, delta, step, n_samples)
        ref = numba_march.raymarch(vol.float(), labels, n_classes, start, delta, step, n_samples)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        _assert_close(out, numpy_raymarch(vol.float(), labels, n_classes, start, delta, step, n_samples))


def test_noncontiguous_and_float64_inputs():
    n_samples = 20
    vol = make_volume(13)
    lab = make_labels(14, 0, 4, torch.int16)
    start, delta, step = make_rays(15, n_samples)
    expected = numba_march.raymarch(vol, lab, 4, start, delta, step, n_samples)
    out = numba_march.raymarch(
        vol.double().transpose(0, 2).contiguous().transpose(0, 2),
        lab.transpose(0, 1).contiguous().transpose(0, 1),
        4,
        start.transpose(0, 1).contiguous().transpose(0, 1),
        delta.double(),
        step[:, :, None].expand(-1, -1, 2)[..., 0],
        n_samples,
    )
    torch.testing.assert_close(out, expected)


def test_nonfinite_and_far_away_rays_are_safe():
    """NaN geometry gives NaN (never a crash); huge coordinates read zero padding."""
    vol = make_volume(16)
    start = torch.tensor([[[float("nan"), 1.0, 1.0], [1e30, -1e30, 5.0], [-4e9, 3.0, 3.0], [3.0, 3.0, 3.0]]])
    delta = torch.tensor([[[0.1, 0.1, 0.1], [1.0, 1.0, 1.0], [1e8, 0.0, 0.0], [float("inf"), 0.0, 0.0]]])
    step = torch.ones(1, 4)
    out = numba_march.raymarch(vol, None, 1, start, delta, step, 64)[0, 0]
    assert torch.isnan(out[0]) and torch.isnan(out[3])
    assert out[1] == 0
    # -4e9 + 40·1e8 is exactly 0 in float32: sample 40 sits on voxel (i, j, k) = (0, 3, 3), the rest far out.
    assert out[2] == vol[3, 3, 0]
    lab = make_labels(17, 0, 3, torch.uint8)
    out = numba_march.raymarch(vol, lab, 3, start, delta, step, 64)[0]
    assert torch.isnan(out[:, 0]).all() and torch.isfinite(out[:, 1:3]).all()


# ---------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------


def _grads(fn, vol, lab, n_classes, start, delta, step, n_samples, go, wrt=(0, 1, 2, 3)):
    inputs = [t.detach().clone().requires_grad_(k in wrt) for k, t in enumerate((vol, start, delta, step))]
    out = fn(inputs[0], lab, n_classes, *inputs[1:], n_samples)
    wanted = [inputs[k] for k in wrt]
    return torch.autograd.grad((out * go.to(out.dtype)).sum(), wanted)


@pytest.mark.parametrize(
    ("n_classes", "with_labels", "n_samples"), [(1, False, 32), (5, True, 32), (1, False, 300)]
)
def test_gradients_match_float64_autograd_reference(n_classes, with_labels, n_samples):
    """300 samples: ray pairs marched in several segments."""
    vol = make_volume(20)
    lab = make_labels(21, 0, 7, torch.uint8) if with_labels else None  # 5 and 6 are dropped
    start, delta, step = make_rays(22, n_samples)
    go = torch.randn(2, n_classes, step.shape[1], generator=torch.Generator().manual_seed(23))
    got = _grads(numba_march.raymarch, vol, lab, n_classes, start, delta, step, n_samples, go)
    ref = _grads(torch_raymarch, vol.double(), lab, n_classes, start.double(), delta.double(), step.double(),
                 n_samples, go.double())  # fmt: skip
    for name, g, r in zip(("vol", "start", "delta", "step"), got, ref, strict=True):
        assert g.dtype == torch.float32, name
        _assert_close(g, r)


@pytest.mark.parametrize("n_classes", [1, 4])
def test_gradient_subsets_agree_with_full_backward(n_classes):
    """Only the requested gradients are computed; each equals the one from a full backward."""
    n_samples = 24
    vol = make_volume(24)
    lab = make_labels(25, 0, 4, torch.uint8) if n_classes > 1 else None
    start, delta, step = make_rays(26, n_samples)
    go = torch.randn(2, n_classes, step.shape[1], generator=torch.Generator().manual_seed(27))
    full = _grads(numba_march.raymarch, vol, lab, n_classes, start, delta, step, n_samples, go)
    for wrt in [(0,), (1,), (2,), (3,), (1, 3), (0, 2)]:
        part = _grads(numba_march.raymarch, vol, lab, n_classes, start, delta, step, n_samples, go, wrt)
        for k, g in zip(wrt, part, strict=True):
            torch.testing.assert_close(g, full[k], rtol=1e-6, atol=1e-6)


def test_gradients_are_exact_finite_differences_where_linear():
    """The output is linear in vol and step, and in start/delta on a linear volume (inside)."""
    n_samples = 16
    vol = make_volume(28)
    start, delta, step = make_rays(29, n_samples, batch=1, n_random=40)
    f = lambda v, s, d, p: numba_march.raymarch(v, None, 1, s, d, p, n_samples)  # noqa: E731
    go = torch.randn(1, 1, step.shape[1], generator=torch.Generator().manual_seed(30))
    dvol, _, _, dstep = _grads(numba_march.raymarch, vol, None, 1, start, delta, step, n_samples, go)
    base = (f(vol, start, delta, step) * go).sum().double()
    hot = torch.nonzero(dvol.abs() > 0.1)[:6]
    assert len(hot) >= 3
    for idx in hot.tolist():
        bumped = vol.clone()
        bumped[tuple(idx)] += 1.0
        fd = (f(bumped, start, delta, step) * go).sum().double() - base
        torch.testing.assert_close(fd, dvol[tuple(idx)].double(), rtol=1e-3, atol=1e-3)
    bumped = step + 1.0
    fd = (f(vol, start, delta, bumped) * go).sum().double() - base
    torch.testing.assert_close(fd, dstep.sum().double(), rtol=1e-4, atol=1e-3)
    # Linear μ: rays well inside the volume, perturbed by exact steps of 1/4 voxel.
    k, j, i = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in SHAPE), indexing="ij")
    lin = 1 + 0.05 * i + 0.03 * j + 0.02 * k
    g = torch.Generator().manual_seed(31)
    s0 = _q(torch.rand(1, 10, 3, generator=g) * 6 + 4)
    d0 = _q(torch.rand(1, 10, 3, generator=g) * 0.5 / n_samples * 8)
    p0 = torch.rand(1, 10, generator=g) + 0.5
    w = torch.randn(1, 1, 10, generator=g)
    _, dstart, ddelta, _ = _grads(numba_march.raymarch, lin, None, 1, s0, d0, p0, n_samples, w)
    lin_f = lambda s, d: (f(lin, s, d, p0) * w).sum().double()  # noqa: E731
    for axis in range(3):
        e = torch.zeros(3)
        e[axis] = 0.25
        fd_start = (lin_f(s0 + e, d0) - lin_f(s0, d0)) / 0.25
        torch.testing.assert_close(fd_start, dstart[..., axis].sum().double(), rtol=1e-3, atol=1e-3)
        e[axis] = 1 / 64
        fd_delta = (lin_f(s0, d0 + e) - lin_f(s0, d0)) * 64
        torch.testing.assert_close(fd_delta, ddelta[..., axis].sum().double(), rtol=1e-3, atol=1e-3)


def test_volume_gradient_half_precision_and_thread_count_independent():
    """dvol has the volume's dtype, and the slab-partitioned scatter is bitwise reproducible."""
    import numba

    n_samples = 24
    vol = make_volume(32)
    lab = make_labels(33, 0, 4, torch.uint8)
    start, delta, step = make_rays(34, n_samples)
    go = torch.randn(2, 3, step.shape[1], generator=torch.Generator().manual_seed(35))
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _grads(numba_march.raymarch, vol, lab, 3, start, delta, step, n_samples, go, wrt=(0, 1))
    finally:
        numba.set_num_threads(threads)
    many = _grads(numba_march.raymarch, vol, lab, 3, start, delta, step, n_samples, go, wrt=(0, 1))
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a, b)
    (dvol_half,) = _grads(
        numba_march.raymarch, vol.half(), lab, 3, start, delta, step, n_samples, go, wrt=(0,)
    )
    assert dvol_half.dtype == torch.float16
    torch.testing.assert_close(dvol_half.float(), many[0], rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------------------------------------------
# Integration
# ---------------------------------------------------------------------------------------------------


def test_agrees_with_torch_reference_backend():
    """Same values and gradients as the grid_sample reference backend.

    torch_ref goes through grid coordinates in float32, so a sample within ~1e-6 voxel of a voxel
    boundary may take the other one-sided derivative there: start/delta gradients are compared on
    the rays whose samples all stay clear of boundaries.
    """
    torch_ref = pytest.importorskip("nanodrr_engine.drr.backends.torch_ref")
    n_samples = 32
    vol = make_volume(40)
    lab = make_labels(41, 0, 6, torch.uint8)
    start, delta, step = make_rays(42, n_samples, exact=False)
    p = start[:, :, None, :] + torch.arange(n_samples)[:, None] * delta[:, :, None, :]
    clear = ((p - p.round()).abs() > 1e-3).all(-1).all(-1)  # [B, N]
    assert clear.float().mean() > 0.7
    go = torch.randn(2, 5, step.shape[1], generator=torch.Generator().manual_seed(43))
    for labels, n_classes in ((None, 1), (lab, 5)):
        g = go[:, :n_classes]
        got = _grads(numba_march.raymarch, vol, labels, n_classes, start, delta, step, n_samples, g)
        ref = _grads(torch_ref.raymarch, vol, labels, n_classes, start, delta, step, n_samples, g)
        _assert_close(got[0], ref[0])
        _assert_close(got[1][clear], ref[1][clear])
        _assert_close(got[2][clear], ref[2][clear])
        _assert_close(got[3], ref[3])
        out = numba_march.raymarch(vol, labels, n_classes, start, delta, step, n_samples)
        _assert_close(out, torch_ref.raymarch(vol, labels, n_classes, start, delta, step, n_samples))


def test_opaque_to_torch_compile():
    """The op traces as one opaque custom op (fake kernels), forward and backward."""
    n_samples = 16
    vol = make_volume(44)
    start, delta, step = make_rays(45, n_samples, batch=1, n_random=20)
    s = start.clone().requires_grad_()

    def f(v, s_, d, p):
        return numba_march.raymarch(v, None, 1, s_, d, p, n_samples).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    (g_compiled,) = torch.autograd.grad(compiled(vol, s, delta, step), s)
    (g_eager,) = torch.autograd.grad(f(vol, s, delta, step), s)
    torch.testing.assert_close(g_compiled, g_eager)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vol": torch.zeros(3, 4)}, "vol"),
        ({"vol": torch.zeros(3, 4, 5, dtype=torch.int32)}, "vol"),
        ({"start": torch.zeros(1, 2, 2)}, "start"),
        ({"delta": torch.zeros(1, 3, 3)}, "delta"),
        ({"step": torch.zeros(2, 2)}, "step"),
        ({"n_samples": 0}, "n_samples"),
        ({"n_classes": 0}, "n_classes"),
        ({"n_classes": 3}, "lab"),
        ({"n_classes": 3, "lab": torch.zeros(3, 4, 5)}, "lab"),
        ({"n_classes": 3, "lab": torch.zeros(3, 4, 6, dtype=torch.uint8)}, "lab"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    args = {
        "vol": torch.zeros(3, 4, 5),
        "lab": None,
        "n_classes": 1,
        "start": torch.zeros(1, 2, 3),
        "delta": torch.zeros(1, 2, 3),
        "step": torch.zeros(1, 2),
        "n_samples": 4,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        numba_march.raymarch(**args)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16])
def test_labels_read_up_to_the_last_voxel(dtype):
    """Narrow labels are read as 32-bit words: the words must stop at the end of the array."""
    D, H, W = SHAPE
    n_samples = 40
    vol = make_volume(50)
    lab = torch.zeros(SHAPE, dtype=dtype)
    lab[-1, -1, :] = (torch.arange(W) % 3 + 1).to(dtype)  # the last row of the array: labels 1, 2, 3
    # Along i through the cells next to the last row, within a quarter voxel of it (nearest voxel: the row).
    start = torch.tensor([[[0.5, H - 1.25, D - 1.25], [-1.0, H - 1.25, D - 1.25]]])
    delta = torch.tensor([[[(W - 1.75) / 64, 0.0, 0.0], [(W + 1.0) / n_samples, 0.0, 0.0]]])
    start, delta = _q(start), _q(delta)
    step = torch.ones(1, 2)
    out = numba_march.raymarch(vol, lab, 4, start, delta, step, n_samples)
    expected = numpy_raymarch(vol, lab.numpy(), 4, start, delta, step, n_samples)
    assert (expected[0, 1:].sum(0) > 0).all()
    _assert_close(out, expected)
