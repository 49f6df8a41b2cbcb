"""Public tensor ops (``torch.library`` custom ops in the ``sleepcore::`` namespace).

Each op checks its arguments (raising ``TypeError``/``ValueError`` that name the argument),
dispatches by device (CPU: the ``_C`` kernels; CUDA: Triton) and passes
``torch.library.opcheck`` and ``torch.compile(fullgraph=True)``.
"""

from sleepcore.ops.batched_lora import batched_lora
from sleepcore.ops.fused_linear_jsd import fused_linear_jsd
from sleepcore.ops.fused_linear_logprobs import fused_linear_logprobs
from sleepcore.ops.fused_linear_policy_loss import fused_linear_policy_loss
from sleepcore.ops.fused_linear_topk_jsd import fused_linear_topk_jsd
from sleepcore.ops.generalized_jsd import generalized_jsd
from sleepcore.ops.paged_attention import copy_blocks, paged_attention, write_kv
from sleepcore.ops.policy_loss import group_advantages, policy_loss
from sleepcore.ops.sampling import sample_tokens

__all__ = ["generalized_jsd", "fused_linear_jsd", "fused_linear_topk_jsd", "fused_linear_logprobs",
           "fused_linear_policy_loss", "policy_loss", "group_advantages", "write_kv", "copy_blocks", "paged_attention",
           "sample_tokens", "batched_lora"]
