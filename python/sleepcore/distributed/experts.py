"""FSDP2 over the memory experts of a wrapped model (the parameters a sleep trains).

``fully_shard`` is applied once per model, to its body (``model.base_model``: the module every
training forward, the rollout engine and ``generate`` go through), with one explicit 1-D mesh and
every parameter outside :class:`~sleepcore.memory.layer.ExpertSlots` in ``ignored_params``: the
frozen base (embeddings, attention, MLPs, norms and ``lm_head``) stays an ordinary, replicated
tensor on every rank, and FSDP shards every expert slot of every level (``Shard(0)`` DTensors).

Between optimiser steps the experts are kept *unsharded* (``reshard_after_forward=False``,
``reshard_after_backward=False``, :meth:`unshard` after every step): a forward then never
communicates, so each rank may run its own number of forwards (rollouts on its own prompts, its
own share of the replay set) without the ranks having to agree on them. The registered (full)
values are the truth between steps, for everything that reads or writes the memory (save, load,
``new_expert``, ``reset``); :func:`write_shards` copies them into FSDP's shards whenever a runtime
takes over. Gradient reduction is off (``set_requires_gradient_sync(False)``) except inside a
runtime's backward, so a backward of someone else (the dream selection's adapters) never starts a
collective; the reduction is a SUM (``set_gradient_divide_factor(1.0)``, with sum-only
collectives: gloo has no ``PREMUL_SUM``), since each rank's loss is already divided by the global
token count.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import distribute_tensor

from sleepcore.memory.layer import ExpertSlots


def shard_experts(model, mesh) -> FSDPModule:
    """``model.base_model`` with FSDP2 on its memory experts (applied on the first call; later
    calls return it unchanged), unsharded. Raises ``ValueError`` when the model has no expert."""
    body = model.base_model
    if isinstance(body, FSDPModule):
        return body
    experts = {id(p) for module in body.modules() if isinstance(module, ExpertSlots) for p in module.parameters()}
    if not experts:
        raise ValueError("model has no memory experts to train: wrap it with ContinuumMemory.wrap first")
    ignored = {p for p in model.parameters() if id(p) not in experts}
    fully_shard(body, mesh=mesh, ignored_params=ignored, reshard_after_forward=False)
    body.set_reshard_after_backward(False)
    body.set_gradient_divide_factor(1.0)
    body.set_force_sum_reduction_for_comms(True)
    body.set_requires_gradient_sync(False)
    body.unshard()
    return body


def registered_experts(body: nn.Module) -> dict[str, nn.Parameter]:
    """Name (in ``body``) to the expert parameter registered now: full tensors between steps,
    DTensor shards inside :func:`resharded`."""
    return {f"{name}.{local}": parameter for name, module in body.named_modules()
            if isinstance(module, ExpertSlots) for local, parameter in module.named_parameters()}


@contextmanager
def resharded(body: FSDPModule):
    """Inside: the registered expert parameters are FSDP's sharded DTensors (yielded by name); on
    exit they are all-gathered back to full tensors (a collective)."""
    body.reshard()
    try:
        yield registered_experts(body)
    finally:
        body.unshard()


def write_shards(shards: dict[str, nn.Parameter], values: dict[str, torch.Tensor]) -> None:
    """Copies each full tensor of ``values`` into the shard of the same name, taking rank 0's
    values (a scatter), so the ranks agree even where their copies had drifted."""
    with torch.no_grad():
        for name, value in values.items():
            shard = shards[name]
            shard.copy_(distribute_tensor(value.to(shard.dtype), shard.device_mesh, shard.placements))
