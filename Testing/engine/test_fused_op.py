"""``backends.fused_op``: the one factory every fused kernel registers through (custom op, fake kernel,
backward op, autograd). A toy op checks the wiring against hand-computed gradients; the numba ops it
registers pass torch's ``opcheck`` and run under ``torch.compile`` with the gradients of eager mode."""

from __future__ import annotations

import itertools

import pytest
import torch
from nanodrr_engine.drr.backends import available_backends
from nanodrr_engine.drr.backends.fused_op import fused_op

_names = itertools.count()


def _toy(seen: list):
    """``out = a * b + k`` (k an int), differentiable w.r.t. ``a`` only; records the ``needs`` it is given."""

    def forward(a, b, k, mask):
        return a * b + k

    def fake(a, b, k, mask):
        return torch.empty_like(a)

    def backward(grad, a, b, k, mask, needs):
        seen.append(list(needs))
        return [grad * b]

    return fused_op(
        f"test_toy_{next(_names)}",
        "Tensor a, Tensor b, int k, Tensor? mask",
        forward,
        fake,
        backward,
        differentiable=("a",),
    )


def test_toy_op_gives_the_hand_computed_gradient():
    seen: list = []
    op = _toy(seen)
    a = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    b = torch.tensor([4.0, 5.0, -6.0])
    out = op(a, b, 2, None)
    torch.testing.assert_close(out, torch.tensor([6.0, -8.0, -16.0]), rtol=0, atol=0)
    (out * torch.tensor([1.0, 10.0, 100.0])).sum().backward()
    torch.testing.assert_close(a.grad, torch.tensor([4.0, 50.0, -600.0]), rtol=0, atol=0)
    assert seen == [[True]]


def test_a_gradient_to_a_non_differentiable_input_is_refused_by_name():
    op = _toy([])
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"gradients flow to a only, not to b"):
        op(a, b, 0, None).sum().backward()


def test_no_gradient_wanted_runs_no_backward():
    seen: list = []
    op = _toy(seen)
    out = op(torch.ones(3), torch.ones(3), 1, None)
    assert not out.requires_grad and seen == []


def test_toy_op_passes_opcheck():
    op = _toy([])
    a = torch.randn(5, requires_grad=True)
    torch.library.opcheck(op, (a, torch.randn(5), 3, None))


def test_differentiable_inputs_must_be_tensor_arguments():
    with pytest.raises(ValueError, match=r"not \['k'\]"):
        fused_op(
            f"test_bad_{next(_names)}",
            "Tensor a, int k",
            lambda a, k: a.clone(),
            lambda a, k: torch.empty_like(a),
            lambda grad, a, k, needs: [grad],
            differentiable=("k",),
        )


numba_only = pytest.mark.skipif("numba" not in available_backends("cpu"), reason="numba is not installed")
_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


def _camera_problem(seed: int, batch: int = 2, side: int = 6):
    """A 12³ volume seen by ``batch`` cameras of ``side²`` rays that cross it (camera mm = voxels)."""
    g = torch.Generator().manual_seed(seed)
    vol = torch.rand(12, 12, 12, generator=g)
    lab = torch.randint(0, 3, (12, 12, 12), generator=g, dtype=torch.int64)
    u = torch.linspace(1.0, 10.0, side)
    jj, ii = torch.meshgrid(u, u, indexing="ij")
    tgt = torch.stack([ii, jj, torch.full_like(ii, 30.0)], -1).reshape(1, -1, 3).expand(batch, -1, -1)
    src = torch.tensor([[[5.5, 5.5, -20.0]]]).expand(batch, 1, 3)
    M = torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)
    M[:, :3, 3] = 0.01 * torch.randn(batch, 3, generator=g, dtype=torch.float64)
    return vol, lab, M, src.contiguous(), tgt.contiguous()


@numba_only
def test_numba_fused_ops_pass_opcheck():
    from nanodrr_engine.drr.backends.numba import camera as numba_camera
    from nanodrr_engine.drr.backends.numba import joseph as numba_joseph

    vol, lab, M, src, tgt = _camera_problem(3)
    M = M.requires_grad_()
    for lab_, C in ((None, 1), (lab, 3)):
        torch.library.opcheck(numba_camera._rays_op, (vol, lab_, C, M, src, tgt, 16), test_utils=_UTILS)
    torch.library.opcheck(numba_joseph._pose_op, (vol, M, src, tgt, True), test_utils=_UTILS)


@numba_only
@pytest.mark.parametrize("method", ["raymarch", "joseph"])
def test_compiled_pose_gradient_equals_eager(method):
    """Under ``torch.compile`` the fused ops stay opaque and give eager mode's values and pose gradient."""
    from nanodrr_engine.drr.backends import BACKENDS

    numba = BACKENDS["numba"]
    fast = numba.fast_path(method, labels=False, pose_grad=True, other_grad=False)
    vol, _, M, src, tgt = _camera_problem(5)

    def loss(m):
        return fast(vol, None, 1, m, src, tgt, 16).square().sum()

    m0 = M.clone().requires_grad_()
    eager = loss(m0)
    (g_eager,) = torch.autograd.grad(eager, m0)
    m1 = M.clone().requires_grad_()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)(m1)
    (g_compiled,) = torch.autograd.grad(compiled, m1)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch.testing.assert_close(g_compiled, g_eager, rtol=0, atol=0)
    assert bool((g_eager != 0).any())


@numba_only
def test_the_camera_op_refuses_a_volume_gradient_by_name():
    from nanodrr_engine.drr.backends.numba import camera as numba_camera

    vol, _, M, src, tgt = _camera_problem(7)
    vol = vol.requires_grad_()
    out = numba_camera._rays_op(vol, None, 1, M.requires_grad_(), src, tgt, 8)
    with pytest.raises(
        RuntimeError, match=r"numba_raymarch_rays: gradients flow to cam_to_voxel only, not to vol"
    ):
        out.sum().backward()
