"""Shapes of real models' heads, the only source of benchmark shapes (no numbers buried in code)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeadShape:
    """An ``lm_head``: hidden size H and vocabulary V."""

    model: str
    hidden: int
    vocab: int


HEADS = {
    "smollm2-135m": HeadShape("SmolLM2-135M", 576, 49152),
    "qwen2.5-0.5b": HeadShape("Qwen2.5-0.5B", 896, 151936),
    "qwen3-8b": HeadShape("Qwen3-8B", 4096, 151936),
    "llama3-8b": HeadShape("Llama-3-8B", 4096, 128256),
    "llama3-8b-131k": HeadShape("Llama-3-8B, vocab padded to 131072 (Liger's CuTe benchmark)", 4096, 131072),
    "gemma3-270m": HeadShape("Gemma-3-270M", 640, 262144),
}


@dataclass(frozen=True)
class DistillCase:
    """A distillation benchmark case: tokens N, a head, a dtype and where it is meant to run."""

    name: str
    tokens: int
    head: str
    dtype: str
    device: str


DISTILL_CASES = {
    "small": DistillCase("small", 512, "smollm2-135m", "float32", "cpu"),
    "cpu": DistillCase("cpu", 2048, "smollm2-135m", "float32", "cpu"),
    "h100": DistillCase("h100", 8192, "llama3-8b", "bfloat16", "cuda"),
    "gemma": DistillCase("gemma", 8192, "gemma3-270m", "bfloat16", "cuda"),
}


@dataclass(frozen=True)
class PolicyCase:
    """A policy-loss benchmark case: ``sequences x seq_len`` tokens through a head."""

    name: str
    sequences: int
    seq_len: int
    head: str
    dtype: str
    device: str

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len


POLICY_CASES = {
    "tiny": PolicyCase("tiny", 2, 8, "smollm2-135m", "float32", "cpu"),  # a smoke test of the driver
    "small": PolicyCase("small", 4, 128, "smollm2-135m", "float32", "cpu"),
    "cpu": PolicyCase("cpu", 8, 256, "smollm2-135m", "float32", "cpu"),
    "h100": PolicyCase("h100", 8, 1024, "llama3-8b-131k", "bfloat16", "cuda"),
}


@dataclass(frozen=True)
class GKDCase:
    """A GKD step: ``sequences x seq_len`` tokens, the first ``prompt_len`` of each a prompt (label
    -100), through a head; the whole-step providers load ``model`` as student and teacher."""

    name: str
    sequences: int
    seq_len: int
    prompt_len: int
    head: str
    model: str
    dtype: str
    device: str

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len


GKD_CASES = {
    "tiny": GKDCase("tiny", 2, 16, 4, "smollm2-135m", "smollm2-135m-instruct", "float32", "cpu"),
    "cpu": GKDCase("cpu", 8, 256, 64, "smollm2-135m", "smollm2-135m-instruct", "float32", "cpu"),
}


@dataclass(frozen=True)
class BodyShape:
    """A decoder's size for memory projections: layers, hidden H, MLP width, KV heads and their
    dimension, and the whole model's parameter count (its head is ``HEADS[head]``)."""

    model: str
    layers: int
    hidden: int
    intermediate: int
    kv_heads: int
    head_dim: int
    parameters: float
    head: str


BODIES = {
    "llama3-8b": BodyShape("Llama-3-8B", 32, 4096, 14336, 8, 128, 8.03e9, "llama3-8b"),
}
