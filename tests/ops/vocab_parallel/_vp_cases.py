"""One run per op, shared by the test process (one device, the full ``lm_head``) and the ranks
(each its shard), and the comparison of the two.

A run takes the inputs (plain tensors, the same on every rank), ``place`` (how this process holds
a vocab-sharded tensor: all of it, its slice, or a DTensor) and the op's options, backpropagates
fixed gradient outputs, and returns the outputs and the gradients: ``hidden`` (replicated) and
the sharded ``weight``/``bias`` ones (this process's part).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from sleepcore import ops
from _tolerance import assert_close_fp32

SHARDED = ("weight", "bias")


def parts(sizes, order=None):
    """Each rank's ``(start, stop)`` when rank ``order[i]`` holds the i-th slice of sizes ``sizes[order[i]]``."""
    order = list(range(len(sizes))) if order is None else order
    bounds, start = [None] * len(sizes), 0
    for rank in order:
        bounds[rank] = (start, start + sizes[rank])
        start += sizes[rank]
    return bounds


def whole(tensor, grad=True):
    return None if tensor is None else tensor.detach().clone().requires_grad_(grad)


def _grads(total, **tensors):
    wanted = {name: t for name, t in tensors.items() if t is not None and t.requires_grad}
    grads = torch.autograd.grad(total, list(wanted.values()))
    local = lambda g: g.to_local() if hasattr(g, "to_local") else g  # noqa: E731 - a DTensor's shard
    return {name: local(g).detach() for name, g in zip(wanted, grads)}


def _scaled(loss, inputs):
    """The loss times a gradient output != 1: random per token for ``"none"``, 1.7 otherwise."""
    return (loss * inputs["grad_rows"].reshape(loss.shape)).sum() if loss.dim() else 1.7 * loss


def run_logprobs(inputs, place, options, **vocab_parallel):
    hidden = whole(inputs["hidden"])
    weight, bias = place(inputs["weight"]), place(inputs.get("bias"))
    logp, entropy = ops.fused_linear_logprobs(hidden, weight, inputs["token_ids"], bias=bias, **options,
                                              **vocab_parallel)
    total = (logp * inputs["grad_logp"]).sum()
    if entropy is not None:
        total = total + (entropy * inputs["grad_entropy"]).sum()
    out = dict(logp=logp.detach(), **_grads(total, hidden=hidden, weight=weight, bias=bias))
    return out if entropy is None else dict(out, entropy=entropy.detach())


def run_jsd(inputs, place, options, **vocab_parallel):
    hidden = whole(inputs["hidden"])
    weight, bias = place(inputs["weight"]), place(inputs.get("bias"))
    teacher_weight, teacher_bias = place(inputs["teacher_weight"], False), place(inputs.get("teacher_bias"), False)
    loss = ops.fused_linear_jsd(hidden, weight, inputs["teacher_hidden"], teacher_weight, inputs.get("labels"),
                                student_bias=bias, teacher_bias=teacher_bias, **options, **vocab_parallel)
    return dict(loss=loss.detach(), **_grads(_scaled(loss, inputs), hidden=hidden, weight=weight, bias=bias))


def run_topk_jsd(inputs, place, options, **vocab_parallel):
    hidden = whole(inputs["hidden"])
    weight, bias = place(inputs["weight"]), place(inputs.get("bias"))
    loss = ops.fused_linear_topk_jsd(hidden, weight, inputs["topk_ids"], inputs["topk_logprobs"],
                                     inputs.get("labels"), student_bias=bias, **options, **vocab_parallel)
    return dict(loss=loss.detach(), **_grads(_scaled(loss, inputs), hidden=hidden, weight=weight, bias=bias))


def run_policy(inputs, place, options, **vocab_parallel):
    hidden = whole(inputs["hidden"])
    weight, bias = place(inputs["weight"]), place(inputs.get("bias"))
    extra = {name: inputs[name] for name in ("ref_logp", "rollout_logp") if name in inputs}
    loss, metrics = ops.fused_linear_policy_loss(hidden, weight, inputs["token_ids"], inputs["old_logp"],
                                                 inputs["advantages"], inputs["mask"], bias=bias, **extra, **options,
                                                 **vocab_parallel)
    return dict(loss=loss.detach(), **metrics, **_grads(1.7 * loss, hidden=hidden, weight=weight, bias=bias))


_MESH = []


def _mesh(world):
    if not _MESH:
        from torch.distributed.device_mesh import init_device_mesh

        _MESH.append(init_device_mesh("cpu", (world,)))
    return _MESH[0]


def sharded_job(rank, world, *, run, inputs, parts, how="group", options=None):
    """On a rank: ``run`` with this rank's part of the sharded inputs.

    ``how``: ``"group"`` (process_group, shards in rank order), ``"vocab_start"`` (also this rank's
    first id) or ``"dtensor"`` (the full tensor distributed as a DTensor placed ``(Shard(0),)``).
    """
    start, stop = parts[rank]
    if how == "dtensor":
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = _mesh(world)
        place = lambda t, grad=True: None if t is None else distribute_tensor(  # noqa: E731
            t.detach(), mesh, [Shard(0)]).requires_grad_(grad)
        return run(inputs, place, options or {})
    place = lambda t, grad=True: None if t is None else whole(t[start:stop], grad)  # noqa: E731
    vocab_parallel = dict(process_group=dist.group.WORLD)
    if how == "vocab_start":
        vocab_parallel["vocab_start"] = start
    return run(inputs, place, options or {}, **vocab_parallel)


def check_against_single(ranks, run, inputs, sizes, *, order=None, how="group", options=None):
    """Run ``run`` on the ranks (weights split by ``sizes``) and in this process; compare (fp32 rule).

    Every compared value is a sum over the vocabulary that the ranks add in another order (their
    shards, then an all-reduce), so the tolerance is the accumulated one: atol scales with the
    largest |expected| (a hidden-gradient element of 0.09 among elements of several units was
    2.1e-5 off on one seed). Returns the single-process results.
    """
    bounds = parts(sizes, order)
    results = ranks.run(sharded_job, run=run, inputs=inputs, parts=bounds, how=how, options=options)
    single = run(inputs, whole, options or {})
    for rank, (result, (start, stop)) in enumerate(zip(results, bounds)):
        assert result.keys() == single.keys(), (rank, sorted(result), sorted(single))
        for name, expected in single.items():
            own = expected[start:stop] if name in SHARDED else expected
            assert_close_fp32(result[name], own, f"rank {rank} {name}", accumulated=True)
    return single
