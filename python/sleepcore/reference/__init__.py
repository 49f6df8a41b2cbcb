"""Plain-PyTorch fp32 references of every op: readable maths for tests and benchmark baselines."""

from sleepcore.reference.distill import fused_linear_jsd, fused_linear_topk_jsd, generalized_jsd

__all__ = ["generalized_jsd", "fused_linear_jsd", "fused_linear_topk_jsd"]
