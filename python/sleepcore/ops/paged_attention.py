"""Paged KV cache ops: ``write_kv``, ``copy_blocks`` and varlen causal ``paged_attention``.

Cache layout (as flash-attn's ``flash_attn_with_kvcache`` and vLLM): per layer ``k_cache`` and
``v_cache`` ``[num_blocks, block_size, H_kv, D]`` (fp32/bf16/fp16, contiguous); slot
``s = block * block_size + offset``. A sequence's position ``p`` lives in block
``block_tables[b, p // block_size]`` at offset ``p % block_size``.

CPU runs the ``_C`` kernels (``csrc/cpu/paged_attention.h``: OpenMP, 8-wide vector loops), CUDA
the Triton kernels (``kernels/paged_attention.py``). Checks here read metadata only; index
values (slots, block ids, lengths) are checked by the CPU kernels (``ValueError``) and not at all
on CUDA (that would need a host sync).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sleepcore import validation
from sleepcore._core import _C, address, cpu_threads, dtype_code
from sleepcore.ops import _checks
from sleepcore.ops.divergence_rows import use_triton

_INDEX_DTYPES = (torch.int32, torch.int64)


def _cache_args(k_cache: Tensor) -> tuple[int, int, int, int]:
    return tuple(k_cache.shape)


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("sleepcore::write_kv", mutates_args=("k_cache", "v_cache"))
def _write_kv(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor, backend: str) -> None:
    if use_triton(k.device, backend):
        from sleepcore.kernels import paged_attention as triton_paged

        triton_paged.write_kv(k, v, k_cache, v_cache, slot_mapping)
        return
    _C.write_kv(address(k), address(v), address(k_cache), address(v_cache), dtype_code(k_cache),
                *_cache_args(k_cache), address(slot_mapping), k.shape[0], cpu_threads())


@_write_kv.register_fake
def _(k, v, k_cache, v_cache, slot_mapping, backend):
    return None


@torch.library.custom_op("sleepcore::copy_blocks", mutates_args=("k_cache", "v_cache"))
def _copy_blocks(k_cache: Tensor, v_cache: Tensor, pairs: Tensor, backend: str) -> None:
    if use_triton(k_cache.device, backend):
        from sleepcore.kernels import paged_attention as triton_paged

        triton_paged.copy_blocks(k_cache, v_cache, pairs)
        return
    _C.copy_blocks(address(k_cache), address(v_cache), dtype_code(k_cache), *_cache_args(k_cache), address(pairs),
                   pairs.shape[0])


@_copy_blocks.register_fake
def _(k_cache, v_cache, pairs, backend):
    return None


@torch.library.custom_op("sleepcore::paged_attention", mutates_args=())
def _paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor,
                     query_start: Tensor, scale: float, sliding_window: int, softcap: float, backend: str) -> Tensor:
    out = torch.empty_like(q)
    if use_triton(q.device, backend):
        from sleepcore.kernels import paged_attention as triton_paged

        triton_paged.paged_attention(q, k_cache, v_cache, block_tables, context_lens, query_start, out,
                                     scale=scale, sliding_window=sliding_window, softcap=softcap)
        return out
    total_q, heads_q, _ = q.shape
    _C.paged_attention(address(q), address(k_cache), address(v_cache), address(out), dtype_code(q),
                       *_cache_args(k_cache), heads_q, address(block_tables), block_tables.shape[1],
                       address(context_lens), address(query_start), context_lens.shape[0], total_q, scale,
                       sliding_window, softcap, cpu_threads())
    return out


@_paged_attention.register_fake
def _(q, k_cache, v_cache, block_tables, context_lens, query_start, scale, sliding_window, softcap, backend):
    return torch.empty_like(q)


# ----------------------------------------------------------------------------- argument checks


def _caches(k_cache, v_cache) -> None:
    _checks.tensor("k_cache", k_cache, ndims=(4,))
    _checks.tensor("v_cache", v_cache, ndims=(4,))
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must have the same "
                         "shape [num_blocks, block_size, H_kv, D]")
    _checks.same_dtype(k_cache=k_cache, v_cache=v_cache)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not cache.is_contiguous():
            raise ValueError(f"{name} must be contiguous (the kernels write it in place), got strides "
                             f"{cache.stride()}")


def _index(name: str, value, shape: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An int32/int64 tensor of ``shape`` (None: any size) on ``device``, as contiguous ``dtype``."""
    _checks.tensor(name, value, ndims=(len(shape),), dtypes=_INDEX_DTYPES)
    if any(want is not None and got != want for got, want in zip(value.shape, shape)):
        want = ", ".join("*" if w is None else str(w) for w in shape)
        raise ValueError(f"{name} must have shape [{want}], got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} must be on {device}, got {value.device}")
    return value.to(dtype).contiguous()



# ----------------------------------------------------------------------------- public API


def write_kv(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor, *,
             backend: str = "auto") -> None:
    """Write new K/V rows into the paged caches, in place.

    Args:
        k, v: ``[N, H_kv, D]`` in the caches' dtype.
        k_cache, v_cache: ``[num_blocks, block_size, H_kv, D]`` contiguous, fp32/bf16/fp16.
        slot_mapping: int32/int64 ``[N]``; token n goes to slot ``slot_mapping[n]``
            (``block * block_size + offset``); a negative slot skips the token.
        backend: "auto" (CPU: ``_C``, CUDA: Triton), "cpu" or "triton".

    Raises ValueError/TypeError naming the argument (on CPU also for a slot past the cache).
    """
    _caches(k_cache, v_cache)
    _checks.tensor("k", k, ndims=(3,))
    _checks.tensor("v", v, ndims=(3,))
    if k.shape != v.shape or k.shape[1:] != k_cache.shape[2:]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be [N, H_kv, D] with "
                         f"[H_kv, D] = {list(k_cache.shape[2:])} from k_cache")
    _checks.same_dtype(k=k, v=v, k_cache=k_cache)
    device = _checks.same_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache)
    slots = _index("slot_mapping", slot_mapping, (k.shape[0],), torch.int64, device)
    torch.ops.sleepcore.write_kv(k.contiguous(), v.contiguous(), k_cache, v_cache, slots, _checks.backend(backend))


def copy_blocks(k_cache: Tensor, v_cache: Tensor, pairs: Tensor, *, backend: str = "auto") -> None:
    """Copy whole cache blocks (copy-on-write), in place: block ``pairs[i, 1]`` := block ``pairs[i, 0]``.

    ``pairs`` is int32/int64 ``[M, 2]``. A destination must not also be a source of another pair
    (the CUDA kernel copies all pairs at once). Raises ValueError/TypeError naming the argument
    (on CPU also for a block id out of range).
    """
    _caches(k_cache, v_cache)
    device = _checks.same_device(k_cache=k_cache, v_cache=v_cache)
    pairs = _index("pairs", pairs, (None, 2), torch.int64, device)
    torch.ops.sleepcore.copy_blocks(k_cache, v_cache, pairs, _checks.backend(backend))


def paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor,
                    query_start: Tensor, *, scale: float, sliding_window: int = 0, softcap: float = 0.0,
                    backend: str = "auto") -> Tensor:
    """Variable-length causal attention of new query tokens over a paged KV cache (prefill and decode).

    Args:
        q: ``[total_q, H_q, D]`` fp32/bf16/fp16, the new tokens of B sequences back to back.
        k_cache, v_cache: ``[num_blocks, block_size, H_kv, D]`` contiguous, q's dtype; the new
            tokens' K/V must already be written (``write_kv``). H_q must be a multiple of H_kv
            (query head h reads kv head ``h // (H_q // H_kv)``).
        block_tables: int32/int64 ``[B, max_blocks]``.
        context_lens: int32/int64 ``[B]``, cached tokens per sequence including the new ones;
            the i-th of its n_b new tokens sits at position ``context_lens[b] - n_b + i``.
        query_start: int32/int64 ``[B + 1]``, cumulative offsets into q (``n_b`` = differences).
        scale: logits are ``scale * q.k``.
        sliding_window: > 0 keeps only positions ``> position - sliding_window``; 0: no window.
        softcap: > 0 maps logits to ``softcap * tanh(logits / softcap)`` (Gemma); 0: off.
        backend: "auto" (CPU: ``_C``, CUDA: Triton), "cpu" or "triton".

    Returns:
        ``[total_q, H_q, D]`` in q's dtype; softmax and accumulation in fp32.

    Raises ValueError/TypeError naming the argument; on CPU also for inconsistent index values.
    """
    _checks.tensor("q", q, ndims=(3,))
    _caches(k_cache, v_cache)
    _checks.same_dtype(q=q, k_cache=k_cache)
    if q.shape[2] != k_cache.shape[3]:
        raise ValueError(f"q's head dim {q.shape[2]} must match k_cache's {k_cache.shape[3]}")
    if q.shape[1] % k_cache.shape[2] != 0:
        raise ValueError(f"q's head count {q.shape[1]} must be a multiple of k_cache's H_kv {k_cache.shape[2]}")
    device = _checks.same_device(q=q, k_cache=k_cache, v_cache=v_cache)
    _checks.tensor("block_tables", block_tables, ndims=(2,), dtypes=_INDEX_DTYPES)
    batch = block_tables.shape[0]
    tables = _index("block_tables", block_tables, (batch, None), torch.int32, device)
    lens = _index("context_lens", context_lens, (batch,), torch.int64, device)
    starts = _index("query_start", query_start, (batch + 1,), torch.int64, device)
    return torch.ops.sleepcore.paged_attention(
        q.contiguous(), k_cache, v_cache, tables, lens, starts, validation.number("scale", scale, minimum=0.0),
        validation.integer("sliding_window", sliding_window, minimum=0),
        validation.number("softcap", softcap, minimum=0.0), _checks.backend(backend))


__all__ = ["write_kv", "copy_blocks", "paged_attention"]
