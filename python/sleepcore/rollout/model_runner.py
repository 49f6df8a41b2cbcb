"""Runs a Hugging Face causal LM over a paged KV cache, replacing only its attention.

The model's own modules run: embeddings, rotary embeddings, norms, MLPs (and anything wrapping
them, such as memory experts), and every forward hook. Only the attention *function* is swapped,
through transformers' ``AttentionInterface``: while :meth:`ModelRunner.forward` runs, the
config's ``_attn_implementation`` is ``"sleepcore_paged"``, whose function writes the step's new
K/V into the paged cache (``ops.write_kv``) and attends over it (``ops.paged_attention``). The
step's tokens of all sequences are packed into one row (``[1, total]``) with their own positions,
so no padding is computed. The final hidden states of the rows that sample go through the
model's output embedding module (hooks apply there too) to give logits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from sleepcore.rollout.flash_decode import flash_decode, flash_decode_available
from sleepcore.rollout.kv_cache import PagedKVCache
from sleepcore.rollout.scheduler import ScheduledChunk

#: The model families the runner drives (``config.model_type``); loading checks this list too.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "gemma3_text")

ATTENTION_NAME = "sleepcore_paged"


@contextlib.contextmanager
def attention_implementation(model, name: str | None):
    """A context in which ``model``'s attention layers call transformers' attention function
    ``name`` (``"eager"``, ``"sdpa"`` or a name registered with ``AttentionInterface``) instead of
    the config's own; None leaves the model as it is. A prepared mask (:mod:`sleepcore.lm.tree`)
    must be built inside the context, as its form follows the implementation."""
    if name is None:
        yield
        return
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


@dataclass
class ForwardBatch:
    """The packed tokens of one step. ``input_ids``, ``positions``, ``slot_mapping``: ``[total]``
    int64; ``block_tables`` ``[B, max_blocks]`` int32; ``context_lens`` ``[B]`` and
    ``query_start`` ``[B + 1]`` int64; ``sample_rows``: ``[S]`` int64 indices of the packed rows
    whose logits are sampled (the last token of each chunk that ends a prefill or decodes).
    ``flash_decode``: attention goes through flash-attn (see :mod:`flash_decode`)."""

    input_ids: Tensor
    positions: Tensor
    slot_mapping: Tensor
    block_tables: Tensor
    context_lens: Tensor
    query_start: Tensor
    sample_rows: Tensor
    kv_cache: PagedKVCache
    flash_decode: bool = False  # every sequence decodes one token and flash-attn can read the cache


def _paged_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling=None,
                             dropout: float = 0.0, sliding_window=None, softcap=None, **kwargs):
    """transformers attention function: ``query`` ``[1, H_q, total, D]``, ``key``/``value``
    ``[1, H_kv, total, D]`` (after rotary embeddings); returns ``([1, total, H_q, D], None)``."""
    batch: ForwardBatch | None = kwargs.get("sleepcore_batch")
    if batch is None:
        raise RuntimeError(f"attention implementation {ATTENTION_NAME!r} only runs inside sleepcore.rollout.Engine")
    k_cache, v_cache = batch.kv_cache[module.layer_idx]
    k = key[0].transpose(0, 1).contiguous()
    v = value[0].transpose(0, 1).contiguous()
    torch.ops.sleepcore.write_kv(k, v, k_cache, v_cache, batch.slot_mapping, "auto")
    q = query[0].transpose(0, 1).contiguous()
    if scaling is None:
        scaling = q.shape[-1] ** -0.5
    softcap = float(softcap or getattr(module, "attn_logit_softcapping", None) or 0.0)
    if batch.flash_decode:
        out = flash_decode(q, k_cache, v_cache, batch.block_tables, batch.context_lens, scale=float(scaling),
                           sliding_window=int(sliding_window or 0), softcap=softcap)
        return out.unsqueeze(0), None
    out = torch.ops.sleepcore.paged_attention(q, k_cache, v_cache, batch.block_tables, batch.context_lens,
                                              batch.query_start, float(scaling), int(sliding_window or 0),
                                              softcap, "auto")
    return out.unsqueeze(0), None


ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, _paged_attention_forward)


def model_geometry(model) -> tuple[int, int, int]:
    """``(num_layers, num_kv_heads, head_dim)`` of a supported model; ValueError otherwise."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        hint = " (load the text-only Gemma3ForCausalLM)" if model_type == "gemma3" else ""
        raise ValueError(f"model of type {model_type!r} is not supported by the rollout engine{hint}; supported: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim


class ModelRunner:
    """Packs scheduled chunks into a :class:`ForwardBatch` and runs the model on it."""

    def __init__(self, model, kv_cache: PagedKVCache, block_size: int):
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = block_size
        self.device = next(model.parameters()).device
        self.final_logit_softcap = getattr(model.config, "final_logit_softcapping", None)
        self.flash_decode = flash_decode_available(self.device, block_size, kv_cache[0][0].dtype)

    def build_batch(self, chunks: list[ScheduledChunk], block_tables: list[list[int]]) -> ForwardBatch:
        input_ids, positions, slots, lens, starts, sample_rows = [], [], [], [], [0], []
        for chunk in chunks:
            stop = chunk.start + chunk.num_tokens
            input_ids += chunk.sequence.token_ids[chunk.start:stop]
            positions += range(chunk.start, stop)
            slots += chunk.slots
            lens.append(stop)
            starts.append(starts[-1] + chunk.num_tokens)
            if chunk.samples:
                sample_rows.append(starts[-1] - 1)
        width = max(len(table) for table in block_tables)
        tables = [table + [0] * (width - len(table)) for table in block_tables]

        def as_tensor(values, dtype=torch.int64):
            return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

        return ForwardBatch(as_tensor(input_ids), as_tensor(positions), as_tensor(slots),
                            as_tensor(tables, torch.int32), as_tensor(lens), as_tensor(starts),
                            as_tensor(sample_rows), self.kv_cache,
                            self.flash_decode and len(input_ids) == len(chunks))

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Applies copy-on-write copies in order: all at once when no block is written twice or
        both written and read, else one pair at a time."""
        if not pairs:
            return
        sources, targets = {src for src, _ in pairs}, [dst for _, dst in pairs]
        independent = len(set(targets)) == len(targets) and sources.isdisjoint(targets)
        groups = [pairs] if independent else [[pair] for pair in pairs]
        for group in groups:
            group_tensor = torch.tensor(group, dtype=torch.int64).to(self.device)
            for k_cache, v_cache in self.kv_cache.layers:
                torch.ops.sleepcore.copy_blocks(k_cache, v_cache, group_tensor, "auto")

    def forward(self, batch: ForwardBatch) -> tuple[Tensor, Tensor]:
        """``(logits [S, V], hidden [S, H])`` of the ``sample_rows``: the logits (fp32 if the model
        computes in fp32, else the model's dtype) and the final hidden states they come from (after
        the final norm, before the head)."""
        with attention_implementation(self.model, ATTENTION_NAME):
            hidden = self.model.base_model(input_ids=batch.input_ids[None], position_ids=batch.positions[None],
                                           use_cache=False, sleepcore_batch=batch).last_hidden_state
        hidden = hidden[0].index_select(0, batch.sample_rows)
        logits = self.model.get_output_embeddings()(hidden)
        if self.final_logit_softcap:
            logits = torch.tanh(logits / self.final_logit_softcap) * self.final_logit_softcap
        return logits, hidden
