"""``DistributedRuntime``: :class:`~sleepcore.train.LocalRuntime` on ``torch.distributed`` (data
parallel, FSDP2 on the trained experts), and :func:`training_runtime`, which picks one.

Everything a runtime owns is inherited: the AdamW on fp32 masters (here over FSDP's ``Shard(0)``
DTensors, so the moments and masters are sharded too), the schedule, clipping (the norm of the
whole gradient, all-reduced by DTensor), the forwards, and the state dict (DTensors, written by
:mod:`sleepcore.distributed.checkpoint`). What changes is what crosses ranks:

* **the data**: :meth:`local_batch` gives each rank its contiguous block of a step's global batch;
  the blocks, gathered in rank order, are the batch a single process would run;
* **exact loss normalisation**: a stage divides its summed per-token (or per-sequence) loss by
  :meth:`token_count` of its local count, which is the count summed over ranks (an all-reduce of
  a plain number: it carries no gradient, and ``all_reduce`` is not autograd-aware anyway). The
  ranks' gradients are then SUM-reduced by FSDP's reduce-scatter, so the result is the gradient
  of the single-process loss on the whole batch, whatever the ranks' token counts;
* **metrics**: :meth:`reduce_metrics` sums the extensive ones (:data:`SUMMED`: the losses, already
  divided by the global count, and the token counts), takes the slowest rank's ``seconds`` and
  recomputes ``tokens_per_s``; the rest (``lr``, ``grad_norm``, figures a stage computed from
  :meth:`gather`-ed values) are equal on every rank and are rank 0's;
* **a rank without data**: when a step's batch has fewer items than there are ranks, a rank whose
  block is empty runs the batch's first item as a placeholder that weighs nothing (its loss is
  multiplied by zero, its counts, gathered items and summed metrics are left out), so every rank
  still joins the step's collectives in the same order.

Only the experts train. The frozen base is replicated rather than sharded (see
:mod:`sleepcore.distributed.experts`), because that is both correct and simplest here: it never
changes, so replicas need no communication; the colocated rollout engine needs the whole model
on every rank at every step anyway; and the fused losses receive ``lm_head.weight`` as the plain,
full tensor it is on every rank (it is frozen: no gradient to reduce). An 8B model in bf16 is
16 GB per GPU (see ``bench/bench_scale.py`` for the whole budget). Sharding the base is the path
for models whose weights do not fit one device; it would need ``lm_head`` gathered for the fused
ops (``register_fsdp_forward_method``) and the model gathered around each rollout.
"""

from __future__ import annotations

from torch.distributed.tensor import distribute_tensor

from sleepcore.distributed import world
from sleepcore.distributed.experts import registered_experts, resharded, shard_experts, write_shards
from sleepcore.train.config import OptimizerConfig
from sleepcore.train.runtime import LocalRuntime

#: Metrics that are sums over ranks (a loss divided by the global count is a rank's share of it).
SUMMED = ("loss", "gkd", "lti", "kl_teacher", "tokens", "forward_tokens")


class DistributedRuntime(LocalRuntime):
    """The training runtime of one rank of a torchrun launch (same interface as LocalRuntime).

    Args:
        model: the wrapped causal LM (FSDP2 is applied to its body's experts on first use).
        parameters: the expert tensors to train (``ContinuumMemory.trainable``; at least one).
        config, total_steps, token_budget: as for :class:`LocalRuntime`.

    Raises ``RuntimeError`` outside a process group of two or more ranks, ``ValueError`` when a
    parameter is not a memory expert's (FSDP shards only those) or none requires a gradient.
    """

    def __init__(self, model, parameters, config: OptimizerConfig | None = None, *, total_steps: int | None = None,
                 token_budget: int | None = None):
        if not world.active():
            raise RuntimeError("DistributedRuntime needs an initialised process group of 2 or more ranks "
                               "(launch with torchrun; see sleepcore.distributed)")
        parameters = [p for p in parameters if p.requires_grad]
        if not parameters:
            raise ValueError("parameters must hold at least one tensor that requires a gradient")
        names = {id(p): name for name, p in registered_experts(model.base_model).items()}
        others = [tuple(p.shape) for p in parameters if id(p) not in names]
        if others:
            raise ValueError(f"parameters must be memory expert parameters (ContinuumMemory.trainable); got "
                             f"{len(others)} other tensor(s) of shapes {others[:3]}: only the experts train")
        self.body = shard_experts(model, world.mesh(parameters[0].device.type))
        shards = self._take_over()
        super().__init__(model, [shards[names[id(p)]] for p in parameters], config, total_steps=total_steps,
                         token_budget=token_budget)
        self.idle = False

    def _take_over(self) -> dict:
        """Writes the registered (full) expert values and ``requires_grad`` flags into FSDP's shards
        and drops stale full gradients (another backward's); returns the shards by name."""
        registered = registered_experts(self.body)
        values = {name: p.detach().clone() for name, p in registered.items()}
        flags = {name: p.requires_grad for name, p in registered.items()}
        for parameter in registered.values():
            parameter.grad = None
        with resharded(self.body) as shards:
            write_shards(shards, values)
            for name, shard in shards.items():
                shard.requires_grad_(flags[name])
        return shards

    # ------------------------------------------------------------------ data and counts
    def local_batch(self, batch: list) -> list:
        """This rank's contiguous block of ``batch``, or ``batch[:1]`` as a weightless placeholder
        when the block is empty (see the module docstring)."""
        mine = world.block(batch)
        self.idle = not mine
        return mine or list(batch[:1])

    def gather(self, items: list) -> list:
        """Every rank's ``items`` of this step, concatenated in rank order (a placeholder's are left out)."""
        return world.gather([] if self.idle else items)

    def token_count(self, local: int) -> int:
        """The global normaliser: ``local`` summed over ranks (0 from a placeholder)."""
        return int(world.all_sum([0 if self.idle else local])[0])

    def reduce_metrics(self, metrics: dict) -> dict:
        """The step's metrics over all ranks (see the module docstring)."""
        parts = world.all_gather_objects((self.idle, metrics))
        reduced = dict(parts[0][1])
        for key in SUMMED:
            if reduced.get(key) is not None:
                reduced[key] = sum(own[key] for idle, own in parts if not idle)
        if "seconds" in reduced:
            reduced["seconds"] = max(own["seconds"] for _, own in parts)
            if "tokens_per_s" in reduced:
                reduced["tokens_per_s"] = reduced["tokens"] / reduced["seconds"]
        return reduced

    # ------------------------------------------------------------------ updates
    def backward(self, loss) -> None:
        """``loss.backward()`` with FSDP's gradient reduce-scatter (SUM) on for this backward only."""
        self.body.set_requires_gradient_sync(True)
        try:
            (loss * 0.0 if self.idle else loss).backward()
        finally:
            self.body.set_requires_gradient_sync(False)

    def step(self, tokens: int = 0) -> dict:
        """:meth:`LocalRuntime.step` on the shards, then the updated experts all-gathered."""
        with resharded(self.body):
            return super().step(tokens)

    # ------------------------------------------------------------------ state
    def load_state_dict(self, tensors, state: dict) -> None:
        """Restores a state whose sharded tensors arrive whole (as the checkpoint reader gives them):
        the experts are re-read from the model (just loaded by the memory), then each rank keeps
        its shard of the optimiser moments and masters."""
        self._take_over()
        super().load_state_dict({name: self._shard_like_parameter(name, value) for name, value in tensors.items()},
                                state)

    def _shard_like_parameter(self, name: str, value):
        kind, index = name.split(".")[:2]
        like = self.parameters[int(index)]
        if kind in ("optimizer", "master") and value.dim() and value.shape == like.shape:
            return distribute_tensor(value.to(like.device), like.device_mesh, like.placements)
        return value


def training_runtime(model, parameters, config: OptimizerConfig | None = None, *,
                     total_steps: int | None = None, token_budget: int | None = None) -> LocalRuntime:
    """A :class:`DistributedRuntime` inside a process group of two or more ranks, else a
    :class:`LocalRuntime` (same arguments): the one place the stages choose their runtime."""
    kind = DistributedRuntime if world.active() else LocalRuntime
    return kind(model, parameters, config, total_steps=total_steps, token_budget=token_budget)
