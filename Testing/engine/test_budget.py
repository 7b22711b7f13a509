"""Work budget (``nanodrr_engine.budget``) and chunked renders with progress and cancellation.

The estimate is checked against numbers worked out by hand from its documented formula; absurd
requests are refused before any ray is made (the ray builders are replaced by ones that fail); chunked
renders are compared with one-call renders of the same request (forward and gradients), and
cancellation is counted in chunks, not seconds.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from nanodrr_engine import DRR, Subject, budget, make_k_inv, render
from nanodrr_engine.budget import WorkBudgetError
from nanodrr_engine.drr.backends import available_backends

R = importlib.import_module("nanodrr_engine.drr.render")  # the module (``drr.render`` is the function)
M = importlib.import_module("nanodrr_engine.drr.module")
BACKENDS = [b for b in ("numba", "torch") if b in available_backends("cpu")]


# --- the estimate -----------------------------------------------------------------------------


def test_estimate_plain_render_by_hand():
    c = budget.estimate(1, 100, 100, 500)
    assert c.rays == 10_000 and c.samples_per_ray == 500 and c.samples == 5_000_000
    assert c.output_bytes == 40_000  # 10⁴ float32
    assert c.working_bytes == 10_000 * (3 + 8) * 4  # ray ends + samples' geometry, float32
    assert c.total_bytes == 40_000 + 440_000


def test_estimate_with_gradients_labels_and_orthographic_rays_by_hand():
    c = budget.estimate(
        2, 3, 5, 7, "raymarch", (4, 6, 8), n_classes=3, geometry_bytes=8, orthographic=True,
        gradients=True, volume_gradient=True,
    )  # fmt: skip
    assert c.rays == 30 and c.samples == 210
    assert c.output_bytes == 4 * 3 * 30
    # ends 2 × 3 floats, geometry 2 × 8 floats (autograd's copy), 8 bytes each; output gradient; μ gradient
    assert c.working_bytes == (6 + 16) * 8 * 30 + 360 + 4 * 4 * 6 * 8


def test_estimate_joseph_bounds_samples_by_the_longest_axis():
    c = budget.estimate(1, 10, 10, 500, "joseph", (133, 512, 300))
    assert c.samples_per_ray == 512 and c.samples == 51_200


# --- refusals before any allocation -------------------------------------------------------------


@pytest.fixture
def small():
    vol = torch.linspace(0.0, 1000.0, 6 * 7 * 8).reshape(6, 7, 8)
    subject = Subject.from_array(vol, torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    rt = torch.eye(4, dtype=torch.float64)
    rt[:3, 3] = torch.tensor([7.0, 6.0, -500.0], dtype=torch.float64)  # beam along +z through the centre
    return subject, rt


@pytest.fixture
def no_rays(monkeypatch):
    """Making rays or marching them fails the test: a refusal must come before either."""

    def boom(*args, **kwargs):
        raise AssertionError("rays were made or marched before the budget check")

    for name in ("make_tgt", "make_src", "_render_rays", "_render_chunks"):
        monkeypatch.setattr(R, name, boom)
    monkeypatch.setattr(M, "make_tgt", boom)


def test_a_billion_samples_per_ray_is_refused_naming_the_request(small, no_rays):
    subject, rt = small
    k_inv = make_k_inv(1000.0, 1.0, 1.0, 0.0, 0.0, 256, 256)
    with pytest.raises(WorkBudgetError, match=r"256×256 pixels, n_samples=1,000,000,000 per ray = 6\.55e\+13 "
                       r"volume samples exceed the work budget of 1e\+12 samples") as e:  # fmt: skip
        render(subject, k_inv, rt, 1000.0, 256, 256, n_samples=10**9)
    assert isinstance(e.value, ValueError) and e.value.cost.samples == 256 * 256 * 10**9


def test_a_huge_detector_is_refused_before_its_rays_are_made(small, no_rays):
    subject, rt = small
    k_inv = make_k_inv(1000.0, 1.0, 1.0, 0.0, 0.0, 100_000, 100_000)
    with pytest.raises(WorkBudgetError, match=r"100000×100000 pixels.*over the memory budget of 16 GiB"):
        render(subject, k_inv, rt, 1000.0, 100_000, 100_000, n_samples=1)
    with pytest.raises(WorkBudgetError, match=r"DRR: 1 image of 100000×100000 pixels"):
        DRR.from_carm_intrinsics(1000.0, 1.0, 1.0, 0.0, 0.0, 100_000, 100_000)


def test_the_huge_render_is_refused_through_a_drr_too(small, monkeypatch):
    subject, rt = small
    drr = DRR.from_carm_intrinsics(1000.0, 1.0, 1.0, 0.0, 0.0, 64, 64)
    monkeypatch.setattr(R, "_render_rays", lambda *a: pytest.fail("marched"))
    with pytest.raises(WorkBudgetError, match="n_samples=1,000,000,000"):
        drr(subject, rt, n_samples=10**9)


def test_limits_per_block_and_for_the_process(small):
    subject, rt = small
    drr = DRR.from_carm_intrinsics(1000.0, 1.0, 1.0, 0.0, 0.0, 8, 8)
    drr(subject, rt, n_samples=100)  # 6400 samples
    with budget.limits(max_samples=6399):
        with pytest.raises(
            WorkBudgetError, match=r"6.4e\+03 volume samples exceed the work budget of 6.4e\+03"
        ):
            drr(subject, rt, n_samples=100)
        with budget.limits(max_samples=math.inf):  # nested, and inf disables
            drr(subject, rt, n_samples=100)
    drr(subject, rt, n_samples=100)
    previous = budget.set_limits(max_bytes=1000)
    try:
        with pytest.raises(WorkBudgetError, match="over the memory budget of 1,000 bytes"):
            drr(subject, rt, n_samples=1)
    finally:
        budget.set_limits(previous.max_samples, previous.max_bytes)
    assert budget.get_limits() == budget.Limits()


def test_gradients_count_in_the_memory_estimate(small):
    """At a byte budget between the plain and the volume-gradient estimates (worked out by hand), only
    the render with a volume gradient is refused: render passes its gradient flags to the estimate."""
    subject, rt = small
    mu = subject.image[0, 0].detach().clone()
    plain = 64 * 4 + 64 * (3 + 8) * 8  # output; ends + geometry in float64 (the pose is float64)
    grad = 64 * 4 * 2 + 64 * (3 + 16) * 8 + 4 * mu.numel()
    drr = DRR.from_carm_intrinsics(1000.0, 1.0, 1.0, 0.0, 0.0, 8, 8)
    with budget.limits(max_bytes=(plain + grad) // 2):
        drr(subject, rt, n_samples=10)
        s = Subject.from_array(mu.requires_grad_(True), subject.voxel_to_world, convert_to_mu=False)
        with pytest.raises(WorkBudgetError, match="memory budget"):
            drr(s, rt, n_samples=10)
        with torch.no_grad():
            drr(s, rt, n_samples=10)


@pytest.mark.parametrize(
    "env,match",
    [({"NANODRR_MAX_SAMPLES": "1e6"}, None), ({"NANODRR_MAX_BYTES": "2048"}, None),
     ({"NANODRR_MAX_SAMPLES": "lots"}, "NANODRR_MAX_SAMPLES"), ({"NANODRR_MAX_BYTES": "-1"}, "NANODRR_MAX_BYTES")],
)  # fmt: skip
def test_environment_variables(monkeypatch, env, match):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if match:
        with pytest.raises(ValueError, match=match):
            budget._from_environment()
        return
    lim = budget._from_environment()
    assert lim == budget.Limits(
        **{"max_samples" if "SAMPLES" in k else "max_bytes": float(v) for k, v in env.items()}
    )


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), True, "many"])
def test_bad_limits_name_the_limit(value):
    with pytest.raises(ValueError, match="max_samples"), budget.limits(max_samples=value):
        pass
    with pytest.raises(ValueError, match="max_bytes"):
        budget.set_limits(max_bytes=value)


# --- chunked renders -----------------------------------------------------------------------------


@pytest.fixture
def chunked(monkeypatch):
    """Chunks of ``samples`` volume samples on every backend; counts the chunks marched."""
    marched = []
    original = R._render_rays

    def counting(*args):
        marched.append(args[-1].shape[1])  # pixels in this call
        return original(*args)

    monkeypatch.setattr(R, "_render_rays", counting)

    def set_samples(samples):
        monkeypatch.setattr(R, "CHUNK_SAMPLES", dict.fromkeys(("numba", "torch", "triton"), samples))

    return set_samples, marched


def _compare(a, b, exact):
    if exact:
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    else:  # float32 rounding (see test_joseph_quads_are_the_only_inexact_forward)
        np.testing.assert_allclose(
            a.detach().numpy(), b.detach().numpy(), rtol=0, atol=1e-6 * b.abs().max().item()
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["raymarch", "joseph"])
@pytest.mark.parametrize("labels", [False, True], ids=["plain", "labelmap"])
def test_chunked_forward_equals_one_call(labelled_phantom, chunked, backend, method, labels):
    subject, drr, rt = labelled_phantom  # 2 poses, 20×23 detector (460 pixels each)
    subject = subject if labels else subject.with_labels(None)
    set_samples, marched = chunked
    with torch.no_grad():
        whole = drr(subject, rt, n_samples=50, backend=backend, method=method)
        assert marched == [460]
        per_ray = 50 if method == "raymarch" else max(subject.shape)
        set_samples(per_ray * 92)  # 92 rays: four detector rows
        fractions = []
        parts = drr(subject, rt, n_samples=50, backend=backend, method=method, progress=fractions.append)
    assert marched[1:] == [92] * 10  # 5 blocks of 4 rows per image
    assert fractions == pytest.approx([k / 10 for k in range(1, 11)])
    exact = not (backend == "numba" and method == "joseph" and not labels)
    _compare(parts, whole, exact)


def test_joseph_quads_are_the_only_inexact_forward(labelled_phantom):
    """Joseph's plain CPU kernel marches quads of neighbouring rays in lockstep from where its work
    chunks start, which depends on the ray and thread counts: its one-call render already changes in
    the last bit with the thread count, as much as chunking changes it."""
    numba = pytest.importorskip("numba")
    subject, drr, rt = labelled_phantom
    plain = subject.with_labels(None)
    threads = numba.get_num_threads()
    with torch.no_grad():
        a = drr(plain, rt, method="joseph", backend="numba")
        numba.set_num_threads(1)
        try:
            b = drr(plain, rt, method="joseph", backend="numba")
        finally:
            numba.set_num_threads(threads)
    _compare(a, b, exact=False)


@pytest.mark.parametrize(
    "samples,blocks", [(50 * 460, [460, 460]), (50 * 919, [460, 460]), (50 * 920, [460])]
)
def test_blocks_of_whole_images(labelled_phantom, chunked, samples, blocks):
    """Chunks of at least one image's rays hold whole images: 919 rays one image, 920 both."""
    subject, drr, rt = labelled_phantom
    set_samples, marched = chunked
    with torch.no_grad():
        whole = drr(subject, rt, n_samples=50, backend="torch")
        set_samples(samples)
        marched.clear()
        parts = drr(subject, rt, n_samples=50, backend="torch", progress=lambda f: None)
    assert marched == blocks
    _compare(parts, whole, exact=True)


@pytest.mark.parametrize("rows,marched_rows", [(1, 4), (2, 4), (5, 4), (8, 8), (9, 8)])
def test_row_blocks_hold_a_multiple_of_4_rays(labelled_phantom, chunked, rows, marched_rows):
    """Width 23: blocks of whole rows hold a multiple of 4 rays, so they start where the CPU kernels'
    ray pairs and quads start (4 rows at least)."""
    subject, drr, rt = labelled_phantom
    set_samples, marched = chunked
    set_samples(10 * 23 * rows)
    with torch.no_grad():
        drr(subject, rt, n_samples=10, backend="torch", progress=lambda f: None)
    per_image = [23 * marched_rows] * (20 // marched_rows) + (
        [23 * (20 % marched_rows)] if 20 % marched_rows else []
    )
    assert marched == per_image * 2


def test_blocks_split_a_long_row_at_aligned_pixels(small, chunked):
    subject, rt = small
    set_samples, marched = chunked
    drr = DRR.from_carm_intrinsics(1000.0, 0.1, 0.1, 0.0, 0.0, 2, 300)
    with torch.no_grad():
        whole = drr(subject, rt, n_samples=20, backend="torch")
        marched.clear()
        set_samples(20 * 130)  # 130 rays < a row of 300: pieces of 128 (multiples of 64)
        parts = drr(subject, rt, n_samples=20, backend="torch", progress=lambda f: None)
    assert marched == [128, 128, 128, 128, 88]  # 600 pixels: 4 × 128 + 88
    _compare(parts, whole, exact=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["raymarch", "joseph"])
@pytest.mark.parametrize("labels", [False, True], ids=["plain", "labelmap"])
def test_chunked_pose_gradient_equals_one_call(labelled_phantom, chunked, backend, method, labels):
    subject, drr, rt = labelled_phantom
    subject = subject if labels else subject.with_labels(None)
    set_samples, _ = chunked

    def grad(progress):
        r = rt.clone().requires_grad_(True)
        out = drr(subject, r, n_samples=40, backend=backend, method=method, progress=progress)
        weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
        (out * weights).sum().backward()
        return out, r.grad

    out1, g1 = grad(None)
    set_samples((40 if method == "raymarch" else max(subject.shape)) * 69)  # 3 rows: 4 (92 rays, see below)
    out2, g2 = grad(lambda f: None)
    _compare(out2, out1, exact=not (backend == "numba" and method == "joseph" and not labels))
    assert g1.abs().max() > 0
    np.testing.assert_allclose(g2.numpy(), g1.numpy(), rtol=0, atol=1e-7 * g1.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["raymarch", "joseph"])
def test_chunked_volume_gradient_equals_one_call(labelled_phantom, chunked, backend, method):
    subject, drr, rt = labelled_phantom
    set_samples, _ = chunked

    def grad(progress):
        mu = subject.image[0, 0].detach().clone().requires_grad_(True)
        s = Subject.from_array(mu, subject.voxel_to_world, convert_to_mu=False)
        out = drr(s, rt, n_samples=40, backend=backend, method=method, progress=progress)
        out.square().sum().backward()
        return mu.grad

    g1 = grad(None)
    set_samples((40 if method == "raymarch" else max(subject.shape)) * 115)  # 5 rows: 4
    g2 = grad(lambda f: None)
    assert g1.abs().max() > 0
    np.testing.assert_allclose(g2.numpy(), g1.numpy(), rtol=0, atol=1e-5 * g1.abs().max().item())


class Cancel(Exception):
    pass


@pytest.mark.parametrize("method", ["raymarch", "joseph"])
def test_an_exception_from_progress_cancels_within_one_chunk(labelled_phantom, chunked, method):
    subject, drr, rt = labelled_phantom
    set_samples, marched = chunked
    set_samples((30 if method == "raymarch" else max(subject.shape)) * 92)  # 4 rows per chunk: 10 chunks
    calls = []
    error = Cancel()

    def progress(fraction):
        calls.append(fraction)
        if len(calls) == 3:
            raise error

    with pytest.raises(Cancel) as e, torch.no_grad():
        drr(subject, rt, n_samples=30, method=method, progress=progress)
    assert e.value is error and len(marched) == 3 and calls == pytest.approx([0.1, 0.2, 0.3])


def test_large_work_is_chunked_without_a_callback(labelled_phantom, chunked):
    subject, drr, rt = labelled_phantom
    set_samples, marched = chunked
    with torch.no_grad():
        whole = drr(subject, rt, n_samples=50)
        set_samples(math.ceil(50 * 920 / R.AUTO_CHUNKS))  # at most AUTO_CHUNKS chunks of work: one call
        marched.clear()
        drr(subject, rt, n_samples=50)
        assert marched == [460]
        set_samples(math.ceil(50 * 920 / R.AUTO_CHUNKS) - 1)
        marched.clear()
        parts = drr(subject, rt, n_samples=50)
    assert marched == [92] * 10  # 28 rays a chunk: blocks of 4 rows (see the row-block test)
    _compare(parts, whole, exact=True)


def test_progress_must_be_callable(small):
    subject, rt = small
    drr = DRR.from_carm_intrinsics(1000.0, 1.0, 1.0, 0.0, 0.0, 4, 4)
    with pytest.raises(TypeError, match="progress"):
        drr(subject, rt, progress=0.5)
