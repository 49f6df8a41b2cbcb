"""The paged KV cache: per layer, K and V of ``[num_blocks, block_size, H_kv, D]``, sized from a
byte budget."""

from __future__ import annotations

import os

import torch

_CPU_DEFAULT_CAP = 4 << 30       # as vLLM's CPU backend: 4 GiB unless told otherwise
_CPU_DEFAULT_FRACTION = 0.2      # ... and at most this share of the machine's memory
_CUDA_DEFAULT_FRACTION = 0.5     # of the device's free memory when the engine starts


def default_kv_memory_bytes(device: torch.device) -> int:
    """The budget used when ``kv_memory_bytes`` is None: half the free GPU memory, or on CPU
    ``min(4 GiB, 20% of RAM)``. CPU pages are touched only when a block is first written, so
    the resident size grows with the blocks in use, not with the budget."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * _CUDA_DEFAULT_FRACTION)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(_CPU_DEFAULT_CAP, ram * _CPU_DEFAULT_FRACTION))


class PagedKVCache:
    """K/V block pools for ``num_layers`` layers.

    Args:
        num_layers, num_kv_heads, head_dim: from the model config.
        block_size: token slots per block.
        kv_memory_bytes: budget for all layers' K and V together.
        dtype, device: the model's compute dtype and device.

    Raises ValueError when the budget holds no block.
    """

    def __init__(self, *, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, kv_memory_bytes: int,
                 dtype: torch.dtype, device: torch.device):
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.bytes_per_block = 2 * num_layers * block_size * num_kv_heads * head_dim * itemsize
        self.num_blocks = kv_memory_bytes // self.bytes_per_block
        if self.num_blocks < 1:
            raise ValueError(f"kv_memory_bytes={kv_memory_bytes} holds no KV block: one block of {block_size} tokens "
                             f"takes {self.bytes_per_block} bytes for {num_layers} layers")
        shape = (self.num_blocks, block_size, num_kv_heads, head_dim)
        self.layers = [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
                       for _ in range(num_layers)]

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers[layer]

    @property
    def nbytes(self) -> int:
        return self.num_blocks * self.bytes_per_block
