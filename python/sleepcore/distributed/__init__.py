"""The sleep cycle on ``torch.distributed``: torchrun launches, FSDP2 on the trained experts, exact
loss normalisation across ranks, and sharded checkpoints through ``torch.distributed.checkpoint``.

Nothing here is a process manager: torchrun starts the ranks, and ``sleepcore run`` (like any
code that builds a :class:`~sleepcore.sleep.sleeper.Sleeper`) runs unchanged under it::

    # one machine, 8 GPUs (NCCL; on CPU the same command runs gloo)
    torchrun --nproc-per-node 8 -m sleepcore.cli run --config run.toml

    # two machines of 8 GPUs: the same command on each, with its own --node-rank
    torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 \\
        --rdzv-backend c10d --rdzv-endpoint HOST0:29500 --rdzv-id sleep-1 -m sleepcore.cli run --config run.toml

(``--node-rank`` is 0 and 1; ``HOST0`` is a host every node reaches; ``output_dir`` must be on a
file system that every node sees, since the ranks write their checkpoint shards there.)

What a rank does:

* :func:`world.init_from_environment` starts the process group from torchrun's variables
  (NCCL with ``cuda:LOCAL_RANK``, or gloo on CPU); a single process starts nothing;
* every stage asks :func:`training_runtime` for its runtime: a :class:`DistributedRuntime` under
  torchrun (the same interface as :class:`~sleepcore.train.LocalRuntime`: forwards, backward,
  step, ``token_count``, ``reduce_metrics``), else a ``LocalRuntime``;
* the work is split into contiguous blocks over the ranks and gathered back in order: the replay
  prompts' questions and the teacher samples with their hidden states (each rank's rollout engine
  runs colocated on its own prompts, on the training weights themselves: nothing to sync), the
  dreams of the documents, and every step's batch. Sampling seeds are per prompt and the stages
  draw their random choices for the whole batch on every rank, so a run on N ranks trains on
  exactly the data of a single-process run (up to floating-point rounding);
* only rank 0 shows progress and writes ``metrics.jsonl``, reports and checkpoint metadata;
  checkpoints are written by every rank (:mod:`sleepcore.distributed.checkpoint`).

Modules: :mod:`~sleepcore.distributed.world` (the process group and its object collectives),
:mod:`~sleepcore.distributed.experts` (FSDP2 on the memory experts), :mod:`~sleepcore.distributed.runtime`
(the runtime), :mod:`~sleepcore.distributed.checkpoint` (DCP checkpoints).
"""

from sleepcore.distributed import world
from sleepcore.distributed.runtime import SUMMED, DistributedRuntime, training_runtime

__all__ = ["SUMMED", "DistributedRuntime", "training_runtime", "world"]
