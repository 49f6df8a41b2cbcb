"""Thin adapters that put sleepcore's fused ops inside other trainers.

``sleepcore.integrations.trl`` (optional extra ``trl``): TRL 1.16's GKD and GRPO trainers with
sleepcore's fused losses. Nothing here is imported by the rest of the package.
"""
