"""Decode steps through flash-attn's ``flash_attn_with_kvcache`` when it can serve them.

flash-attn reads the same ``[num_blocks, block_size, H_kv, D]`` paged cache with an int32
``block_table``, but FA2 requires ``block_size % 256 == 0`` and fp16/bf16 on CUDA. When every
sequence in a step decodes one token, the step's queries are ``[B, 1, H_q, D]`` and the cache
already holds the new K/V (written by ``ops.write_kv``), so ``cache_seqlens`` is the context
length including the new token. Window semantics: ours keeps key positions ``> p - W``, flash's
``window_size=(left, right)`` keeps ``[p - left, p + right]``, so ``left = W - 1``. Prefill and
mixed steps always use ``ops.paged_attention``.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
from torch import Tensor

FLASH_BLOCK_MULTIPLE = 256


def flash_decode_available(device: torch.device, block_size: int, dtype: torch.dtype) -> bool:
    """Whether flash-attn is installed and can read this cache."""
    return (device.type == "cuda" and block_size % FLASH_BLOCK_MULTIPLE == 0
            and dtype in (torch.float16, torch.bfloat16) and importlib.util.find_spec("flash_attn") is not None)


def flash_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, *,
                 scale: float, sliding_window: int, softcap: float) -> Tensor:
    """One query token per sequence: ``q`` ``[B, H_q, D]`` -> ``[B, H_q, D]``.

    ``block_tables`` ``[B, max_blocks]`` int32 and ``context_lens`` ``[B]`` (tokens in the cache,
    the new one included) as for ``ops.paged_attention``.
    """
    flash_attn = importlib.import_module("flash_attn")
    window = (sliding_window - 1, 0) if sliding_window > 0 else (-1, -1)
    out = flash_attn.flash_attn_with_kvcache(
        q.unsqueeze(1), k_cache, v_cache, cache_seqlens=context_lens.to(torch.int32), block_table=block_tables,
        softmax_scale=scale, causal=True, window_size=window, softcap=softcap)
    return out.squeeze(1)
