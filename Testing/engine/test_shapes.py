"""The public API's jaxtyping shapes are true: each annotated call is checked, arguments and result in one
jaxtyping memo (so ``batch`` must mean the same number everywhere), on real calls with shared and batched
cameras. The annotations are documentation; this keeps them honest."""

from __future__ import annotations

import inspect
import types
import typing

import pytest
import torch
from jaxtyping import AbstractArray, jaxtyped
from nanodrr_engine import DRR, Subject, carm_to_rt_inv, make_k_inv, make_rt_inv, render
from nanodrr_engine.camera.carm import rt_inv_to_carm
from nanodrr_engine.camera.extrinsics import invert_rt_inv
from nanodrr_engine.data.phantom import make_chest_phantom
from nanodrr_engine.registration import Registration, register

SDD, H, W = 1020.0, 12, 10


def _array_types(hint) -> list:
    """The jaxtyping array types in ``hint`` (itself, or the members of a union)."""
    if isinstance(hint, type) and issubclass(hint, AbstractArray):
        return [hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(hint) for t in _array_types(a)]
    return []


def checked(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, every tensor argument and result checked against ``fn``'s shape hints."""
    hints = typing.get_type_hints(fn, include_extras=True)
    bound = inspect.signature(fn).bind(*args, **kwargs)

    def check(value, hint, what):
        kinds = _array_types(hint)
        if kinds and isinstance(value, torch.Tensor):
            assert any(isinstance(value, k) for k in kinds), f"{what}: {list(value.shape)} is not {hint}"

    @jaxtyped(typechecker=None)
    def run():
        for name, value in bound.arguments.items():
            check(value, hints.get(name), name)
        out = fn(*args, **kwargs)
        ret = hints.get("return")
        if typing.get_origin(ret) is tuple:
            for i, (v, h) in enumerate(zip(out, typing.get_args(ret), strict=True)):
                check(v, h, f"return[{i}]")
        else:
            check(out, ret, "return")
        return out

    return run()


def _annotated(fn, *names):
    hints = typing.get_type_hints(fn, include_extras=True)
    missing = [n for n in names if not _array_types(hints.get(n))]
    assert not missing, f"{fn.__qualname__}: no jaxtyping shape on {missing}"


@pytest.fixture(scope="module")
def subject():
    vol, _, v2w, _ = make_chest_phantom(spacing=(12.0, 12.0, 12.0), supersample=1)
    lab = (torch.as_tensor(vol) > 300).to(torch.uint8)
    return checked(Subject.from_array, vol, v2w, label=lab)


def test_the_public_api_is_annotated():
    _annotated(render, "k_inv", "rt_inv", "sdd", "src", "tgt", "return")
    _annotated(DRR.__init__, "k_inv", "sdd")
    _annotated(DRR.forward, "rt_inv", "return")
    _annotated(Subject.__init__, "imagedata", "labeldata", "voxel_to_world", "world_to_voxel", "isocenter")
    _annotated(Subject.from_array, "volume", "voxel_to_world", "label")
    _annotated(make_k_inv, "return")
    _annotated(make_rt_inv, "rotation", "translation", "return")
    _annotated(invert_rt_inv, "rt_inv")
    _annotated(carm_to_rt_inv, "primary", "secondary", "return")
    _annotated(rt_inv_to_carm, "rt_inv")
    _annotated(Registration.__init__, "rt_inv", "k_inv", "sdd")
    _annotated(Registration.forward, "return")
    _annotated(register, "target", "k_inv", "rt_inv", "mask")


def test_camera_helpers_have_their_shapes():
    k = checked(make_k_inv, SDD, 2.0, 2.0, 0.0, 0.0, H, W)
    rt = checked(make_rt_inv, torch.tensor([[0.0, 10.0, 0.0], [5.0, 0.0, 2.0]]), torch.zeros(2, 3))
    assert rt.shape == (2, 4, 4) and k.shape == (1, 3, 3)
    rot, trans = checked(invert_rt_inv, rt)
    assert rot.shape == trans.shape == (2, 3)
    batch = checked(carm_to_rt_inv, torch.tensor([10.0, -20.0, 30.0]), torch.tensor([0.0, 5.0, -5.0]), 850.0)
    assert batch.shape == (3, 4, 4)
    one = checked(carm_to_rt_inv, 15.0, -10.0, 850.0)
    assert one.shape == (4, 4)
    assert len(checked(rt_inv_to_carm, one)) == 3


def test_render_and_drr_have_their_shapes(subject):
    k = make_k_inv(SDD, 2.0, 2.0, 0.0, 0.0, H, W)
    rt = carm_to_rt_inv(torch.tensor([0.0, 90.0]), torch.tensor([0.0, 10.0]), 850.0, subject.isocenter)
    shared = checked(render, subject, k, rt, SDD, H, W, n_samples=8)
    assert shared.shape == (2, 2, H, W)
    per_view = checked(render, subject, k.expand(2, 3, 3), rt, torch.tensor([SDD, SDD]), H, W, n_samples=8)
    torch.testing.assert_close(per_view, shared)
    drr = DRR(k, torch.tensor(SDD), H, W)
    checked(DRR.__init__, DRR.__new__(DRR), k, SDD, H, W)
    out = checked(drr.forward, subject, rt, n_samples=8)
    torch.testing.assert_close(out, shared)
    checked(render, subject, None, rt, SDD, H, W, n_samples=8, src=drr.src, tgt=drr.tgt)


def test_subject_and_registration_have_their_shapes(subject):
    again = checked(
        Subject,
        subject._image_hu,
        subject.label,
        subject.voxel_to_world,
        subject.world_to_voxel,
        subject.voxel_to_grid,
        subject.isocenter,
    )
    assert again.shape == subject.shape
    k = make_k_inv(SDD, 2.0, 2.0, 0.0, 0.0, H, W)
    rt = carm_to_rt_inv(torch.tensor([0.0, 90.0]), torch.tensor([0.0, 10.0]), 850.0, subject.isocenter)
    reg = checked(Registration, subject, rt, k, SDD, H, W)
    assert checked(reg.forward, n_samples=8).shape == (2, 2, H, W)
    target = render(subject, k, rt, SDD, H, W, n_samples=8).sum(1, keepdim=True)
    result = checked(
        register,
        subject,
        target,
        k,
        SDD,
        rt,
        H,
        W,
        mask=torch.ones(1, 1, H, W),
        max_iterations=1,
        factors=[1],
    )
    assert result is not None


def test_a_wrong_shape_is_caught():
    """The checker itself fails on a call whose tensors disagree with the annotation."""
    with pytest.raises(AssertionError, match="rotation"):
        checked(make_rt_inv, torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(AssertionError, match="translation"):  # batch 2 against batch 3
        checked(make_rt_inv, torch.zeros(2, 3), torch.zeros(3, 3))
