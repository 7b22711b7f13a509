"""One way to hand a fused kernel to torch: a custom op, its fake kernel, a backward op and the autograd
that joins them. Every fused backend (numba's ray march, camera rays and Joseph's pose path; Triton's ray
march) registers through :func:`fused_op`, so all of them are opaque to ``torch.compile`` in the same way
and refuse gradients they cannot give in the same words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def _parse(args: str) -> tuple[list[str], list[str]]:
    """``(types, names)`` of a schema's argument list such as ``"Tensor vol, Tensor? lab, int n"``."""
    types, names = [], []
    for arg in args.split(","):
        kind, name = arg.strip().rsplit(" ", 1)
        types.append(kind)
        names.append(name)
    return types, names


def _custom_op(name: str, impl, fake, schema: str, device_types: str | None):
    op = torch.library.custom_op(
        f"nanodrr_engine::{name}", impl, mutates_args=(), device_types=device_types, schema=schema
    )
    op.register_fake(fake)
    return op


def fused_op(
    name: str,
    args: str,
    forward: Callable[..., torch.Tensor],
    fake: Callable[..., torch.Tensor],
    backward: Callable[..., Sequence[torch.Tensor]],
    differentiable: Sequence[str],
    device_types: str | None = None,
):
    """Register ``nanodrr_engine::<name>`` and ``nanodrr_engine::<name>_backward``; return the forward op.

    Args:
        name: the op's name in the ``nanodrr_engine`` namespace.
        args: the forward's schema arguments, e.g. ``"Tensor vol, Tensor? lab, int n_classes"``.
        forward: ``forward(*args) -> Tensor``, the kernel call (its result must be a new tensor).
        fake: ``fake(*args) -> Tensor``, an empty tensor of the forward's shape and dtype.
        backward: ``backward(grad, *args, needs) -> [Tensor per differentiable input]`` where ``needs[i]``
            says whether ``differentiable[i]``'s gradient is wanted; the others may be anything (they are
            replaced by empty tensors). Each gradient has its input's shape and dtype.
        differentiable: the tensor arguments gradients flow to; a gradient wanted for another one raises.
        device_types: where the kernels run (``"cpu"``, ``"cuda"``), or ``None`` for any device.
    """
    types, names = _parse(args)
    unknown = set(differentiable) - {n for n, t in zip(names, types, strict=True) if t == "Tensor"}
    if unknown:
        raise ValueError(f"{name}: differentiable inputs must be Tensor arguments, not {sorted(unknown)}")
    grad_at = [names.index(n) for n in differentiable]
    tensor_at = [i for i, t in enumerate(types) if t.startswith("Tensor")]
    other_at = [i for i in range(len(names)) if i not in tensor_at]

    op = _custom_op(name, forward, fake, f"({args}) -> Tensor", device_types)

    def backward_impl(grad, *inputs_and_needs):
        *inputs, needs = inputs_and_needs
        grads = backward(grad, *inputs, needs=needs)
        # outputs of a custom op must be new tensors that alias nothing, the unwanted ones included
        return [g if need else grad.new_empty(0) for g, need in zip(grads, needs, strict=True)]

    def backward_fake(grad, *inputs_and_needs):
        *inputs, needs = inputs_and_needs
        return [
            inputs[i].new_empty(inputs[i].shape) if need else grad.new_empty(0)
            for i, need in zip(grad_at, needs, strict=True)
        ]

    backward_op = _custom_op(
        f"{name}_backward",
        backward_impl,
        backward_fake,
        f"(Tensor grad, {args}, bool[] needs) -> Tensor[]",
        device_types,
    )

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*(inputs[i] for i in tensor_at))
        ctx.others = [inputs[i] for i in other_at]

    def autograd_backward(ctx, grad):
        inputs = [None] * len(names)
        for i, t in zip(tensor_at, ctx.saved_tensors, strict=True):
            inputs[i] = t
        for i, v in zip(other_at, ctx.others, strict=True):
            inputs[i] = v
        for i in tensor_at:
            if ctx.needs_input_grad[i] and i not in grad_at:
                raise RuntimeError(
                    f"{name}: gradients flow to {', '.join(differentiable)} only, not to {names[i]}"
                )
        needs = [bool(ctx.needs_input_grad[i]) for i in grad_at]
        grads = backward_op(grad, *inputs, needs)
        out = [None] * len(names)
        for i, g, need in zip(grad_at, grads, needs, strict=True):
            out[i] = g if need else None
        return tuple(out)

    op.register_autograd(autograd_backward, setup_context=setup_context)
    op.backward_op = backward_op
    return op
