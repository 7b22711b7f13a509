"""Per-ray sample counts in the numba ray march (``numba_march.raymarch(count=)``), which carries Joseph's
CPU renders with volume gradients and labelmaps with gradients: values and all four gradients against
the contract's float64 reading restricted to each ray's first ``count`` samples, and ``render``'s
routing against Joseph's torch reference."""

from __future__ import annotations

import pytest
import torch
from contract_reference import torch_raymarch
from nanodrr_engine import Subject
from nanodrr_engine.drr.backends import available_backends
from test_backend_numba import _assert_close, make_labels, make_rays, make_volume

pytestmark = pytest.mark.skipif("numba" not in available_backends("cpu"), reason="numba is not installed")


@pytest.fixture(scope="module")
def numba_march():
    from nanodrr_engine.drr.backends.numba import march as numba_march

    return numba_march


def _counts(step: torch.Tensor, n_samples: int, seed: int) -> torch.Tensor:
    """Random counts in [0, n], with whole rays (n) and empty ones (0) among them."""
    g = torch.Generator().manual_seed(seed)
    count = torch.randint(0, n_samples + 1, step.shape, generator=g, dtype=torch.int32)
    count[:, 4:12] = n_samples
    count[:, 12:16] = 0
    return count


def _grads(fn, vol, lab, C, start, delta, step, n, go, count):
    leaves = [t.detach().clone().requires_grad_(True) for t in (vol, start, delta, step)]
    out = fn(leaves[0], lab, C, *leaves[1:], n, count=count)
    return (out.detach(), *torch.autograd.grad((out * go.to(out.dtype)).sum(), leaves))


# 300 samples: pairs marched in several segments, with the counts ending them anywhere
@pytest.mark.parametrize(("n_classes", "n_samples"), [(1, 48), (1, 300), (5, 48), (5, 300)])
def test_counts_match_the_contract_values_and_gradients(numba_march, n_classes, n_samples):
    vol = make_volume(40)
    lab = make_labels(41, 0, 7, torch.uint8) if n_classes > 1 else None  # 5 and 6 are dropped
    start, delta, step = make_rays(42, n_samples)
    count = _counts(step, n_samples, seed=43)
    go = torch.randn(2, n_classes, step.shape[1], generator=torch.Generator().manual_seed(44))
    got = _grads(numba_march.raymarch, vol, lab, n_classes, start, delta, step, n_samples, go, count)
    ref = _grads(torch_raymarch, vol.double(), lab, n_classes, start.double(), delta.double(), step.double(),
                 n_samples, go.double(), count)  # fmt: skip
    for name, g, r in zip(("out", "vol", "start", "delta", "step"), got, ref, strict=True):
        assert g.dtype == torch.float32, name
        _assert_close(g, r)
    # the counts matter: without them most rays would see more samples
    whole = numba_march.raymarch(vol, lab, n_classes, start, delta, step, n_samples)
    assert ((whole - got[0]).abs() > 1e-3).float().mean() > 0.3


def test_counts_are_checked_and_named(numba_march):
    vol = make_volume(45)
    start, delta, step = make_rays(46, 8)
    for bad, match in (
        (torch.zeros(3, dtype=torch.int32), r"count: expected an integer \[2, \d+\]"),
        (torch.zeros(step.shape), "count: expected an integer tensor"),
        (torch.full(step.shape, 9), r"count: values must lie in \[0, n_samples=8\]"),
        (torch.full(step.shape, -1), r"count: values must lie in \[0, n_samples=8\]"),
    ):
        with pytest.raises(ValueError, match=match):
            numba_march.raymarch(vol, None, 1, start, delta, step, 8, count=bad)


def _spy(monkeypatch, numba_march):
    calls = []
    fused = numba_march.raymarch

    def spy(*args, **kwargs):
        calls.append(kwargs.get("count") is not None)
        return fused(*args, **kwargs)

    monkeypatch.setattr(numba_march, "raymarch", spy)
    return calls


def test_joseph_labelmap_pose_gradients_take_the_counted_march(labelled_phantom, numba_march, monkeypatch):
    """Registration against per-structure DRRs: the fused march, the same channels and pose gradient
    as Joseph's torch reference (autograd through the same samples)."""
    subject, drr, rt = labelled_phantom
    calls = _spy(monkeypatch, numba_march)
    go = torch.rand(2, subject.n_classes, 20, 23, generator=torch.Generator().manual_seed(47))
    results = []
    for backend in ("auto", "torch"):
        pose = rt.clone().requires_grad_(True)
        out = drr(subject, pose, method="joseph", backend=backend)
        (out * go).sum().backward()
        results.append((out.detach(), pose.grad))
    assert calls == [True]  # auto took it, with counts; the torch reference did not
    (fast, g_fast), (ref, g_ref) = results
    assert ref.amax() > 1.0 and g_ref.abs().amax() > 0
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * ref.amax().item())
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-3, atol=1e-3 * g_ref.abs().amax().item())


def test_joseph_volume_gradients_take_the_counted_march(labelled_phantom, numba_march, monkeypatch):
    subject, drr, rt = labelled_phantom
    plain = Subject.from_array(
        subject.image[0, 0].numpy(), subject.voxel_to_world.numpy(), convert_to_mu=False
    )
    calls = _spy(monkeypatch, numba_march)
    go = torch.rand(2, 1, 20, 23, generator=torch.Generator().manual_seed(48))
    grads = []
    for backend in ("numba", "torch"):
        plain.image.requires_grad_(True)
        plain.image.grad = None
        (drr(plain, rt, method="joseph", backend=backend) * go).sum().backward()
        grads.append(plain.image.grad.clone())
        plain.image.requires_grad_(False)
    assert calls == [True]
    fast, ref = grads
    assert (ref != 0).sum() > 1000
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5 * ref.abs().amax().item())
    # nothing outside the reference's support (which is wider by ~1e-6-weight corners: grid_sample's
    # normalised coordinates put samples on voxel planes up to a rounding off them)
    assert not ((fast != 0) & (ref == 0)).any()


def test_the_op_with_counts_passes_opcheck(numba_march):
    """Schema, fake kernel and autograd registration stay consistent with the optional counts."""
    vol = make_volume(49).requires_grad_()
    start, delta, step = make_rays(50, 16, n_random=12)
    start.requires_grad_()
    count = _counts(step, 16, seed=51).to(torch.int64)
    torch.library.opcheck(
        numba_march._raymarch_op,
        (vol, None, 1, start, delta, step, 16, count),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
