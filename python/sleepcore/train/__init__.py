"""The training runtime: the one place that owns the optimiser (AdamW on fp32 master weights), the
warm-up + constant/cosine schedule, gradient clipping, shuffled epochs of batches, exact loss
normalisation by token counts, metric reduction and checkpoint I/O (safetensors + JSON, atomic).

Stages and the wake learner call a runtime; nobody else calls ``optimizer.step()``. The model
forward used for losses goes through :meth:`LocalRuntime.response_hidden`, so a distributed runtime
(torchrun + FSDP2) can replace :class:`LocalRuntime` without touching the stages.
"""

from sleepcore.train.batches import EpochBatches
from sleepcore.train.checkpoint import (atomic_write_text, latest_checkpoint, load_checkpoint, save_checkpoint)
from sleepcore.train.config import OptimizerConfig
from sleepcore.train.runtime import LocalRuntime

__all__ = ["EpochBatches", "OptimizerConfig", "LocalRuntime", "atomic_write_text", "latest_checkpoint",
           "load_checkpoint", "save_checkpoint"]
