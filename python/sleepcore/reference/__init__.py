"""Plain-PyTorch fp32 references of every op: readable maths for tests and benchmark baselines."""

from sleepcore.reference.distill import fused_linear_jsd, fused_linear_topk_jsd, generalized_jsd
from sleepcore.reference.lora import batched_lora
from sleepcore.reference.logprobs import fused_linear_logprobs, logprobs_from_logits
from sleepcore.reference.policy import group_advantages, policy_loss

__all__ = ["generalized_jsd", "fused_linear_jsd", "fused_linear_topk_jsd", "fused_linear_logprobs",
           "logprobs_from_logits", "policy_loss", "group_advantages", "batched_lora"]
