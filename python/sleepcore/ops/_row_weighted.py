"""Autograd and fake (meta) registration for row-weighted loss ops.

A *row-weighted* op family is a pair of ``torch.library`` custom ops with the same leading
inputs, one of which is a float32 ``row_scale [N]``:

* ``main(*inputs, *grad_flags) -> (loss, row_loss, *grads)``: ``loss = sum_r row_scale[r] *
  row_loss[r]``, and the gradients of ``loss`` w.r.t. the inputs at ``grad_inputs`` are computed
  in the same pass (one flag per input says whether it is wanted; an unwanted one is an empty
  tensor). Backward only scales the saved gradients by ``grad_loss``.
* ``rows(*inputs) -> row_loss``: per-row losses (``reduction="none"``). Its backward calls
  ``main`` again with ``row_scale = grad_rows * row_scale``, recomputing what it needs.

``row_loss`` returned by ``main`` is not differentiable; use ``rows`` for per-row gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowWeightedSpec:
    """Where things sit in the ops' inputs.

    Attributes:
        grad_inputs: input positions that can get gradients, in the order of ``main``'s grad
            outputs and grad flags.
        row_scale_input: position of ``row_scale``.
        rows_input: position of a tensor whose leading size is the row count.
    """

    grad_inputs: tuple[int, ...]
    row_scale_input: int
    rows_input: int = 0


def _fake_main(spec: RowWeightedSpec):
    def fake(*args):
        inputs, flags = args[: -len(spec.grad_inputs)], args[-len(spec.grad_inputs):]
        anchor = inputs[spec.rows_input]
        rows = inputs[spec.row_scale_input].shape[0]
        grads = [
            inputs[p].new_empty(inputs[p].shape) if wanted else anchor.new_empty(0)
            for p, wanted in zip(spec.grad_inputs, flags)
        ]
        scale = inputs[spec.row_scale_input]
        return (scale.new_empty(()), scale.new_empty(rows), *grads)

    return fake


def _fake_rows(spec: RowWeightedSpec):
    def fake(*inputs):
        scale = inputs[spec.row_scale_input]
        return scale.new_empty(scale.shape[0])

    return fake


def _main_autograd(spec: RowWeightedSpec):
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the non-differentiable outputs
        ctx.save_for_backward(output[1], *output[2:])

    def backward(ctx, grad_loss, *_unused):
        row_loss, *grads = ctx.saved_tensors
        result = [None] * len(ctx.needs_input_grad)
        for position, grad in zip(spec.grad_inputs, grads):
            if ctx.needs_input_grad[position]:
                result[position] = grad * grad_loss
        if ctx.needs_input_grad[spec.row_scale_input]:
            result[spec.row_scale_input] = row_loss * grad_loss
        return tuple(result)

    return setup_context, backward


def _rows_autograd(spec: RowWeightedSpec, main_op):
    def setup_context(ctx, inputs, output):
        ctx.tensor_positions = [i for i, value in enumerate(inputs) if isinstance(value, torch.Tensor)]
        ctx.constants = [None if isinstance(value, torch.Tensor) else value for value in inputs]
        ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_positions))

    def backward(ctx, grad_rows):
        inputs = list(ctx.constants)
        for position, value in zip(ctx.tensor_positions, ctx.saved_tensors):
            inputs[position] = value
        inputs[spec.row_scale_input] = grad_rows.to(torch.float32) * inputs[spec.row_scale_input]
        flags = [bool(ctx.needs_input_grad[p]) for p in spec.grad_inputs]
        _, _, *grads = main_op(*inputs, *flags)
        result = [None] * len(ctx.needs_input_grad)
        for position, grad, wanted in zip(spec.grad_inputs, grads, flags):
            if wanted:
                result[position] = grad
        return tuple(result)

    return setup_context, backward


def register_row_weighted(main_op, rows_op, spec: RowWeightedSpec) -> None:
    """Register fake impls and autograd for a (main, rows) op pair; see the module docstring."""
    main_op.register_fake(_fake_main(spec))
    rows_op.register_fake(_fake_rows(spec))
    setup, backward = _main_autograd(spec)
    main_op.register_autograd(backward, setup_context=setup)
    setup, backward = _rows_autograd(spec, main_op)
    rows_op.register_autograd(backward, setup_context=setup)
