"""Batched multi-adapter mode of the memory layers: ``K`` independent adapters in one forward/backward.

Inside :func:`batched_adapters` every wrapped :class:`~sleepcore.memory.layer.MemoryMLP` adds

    y[b, t] += (alpha / r) * B[k] @ A[k] @ x[b, t],    k = adapter_index[b]  (-1: nothing),

with ``A: [K, r, d]`` and ``B: [K, d, r]`` per layer (``B = 0`` at start, so the model's function is
unchanged), through :func:`sleepcore.ops.batched_lora`. Each sequence of a batch picks its
adapter, so ``K`` small trainings (Dreaming's inner loop: one fresh adapter per dream) run as one
forward and one backward; :class:`sleepcore.train.batched.BatchedRuntime` keeps their losses,
clipping and AdamW states apart. Example::

    with batched_adapters(memory, 8) as adapters:
        adapters.set_index(torch.tensor([0, 0, 1, 5]))    # one adapter per sequence of the batch
        hidden = model.base_model(input_ids=ids).last_hidden_state
        ...
        weights = adapters.weights(5)                     # {layer: (A [r, d], B [d, r])}

The adapters are not module parameters of the model (its ``state_dict`` and ``parameters()`` are
unchanged); :meth:`BatchedAdapters.parameters` lists them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from sleepcore import validation
from sleepcore.memory.continuum import ContinuumMemory
from sleepcore.memory.discovery import hidden_size
from sleepcore.ops import batched_lora


class BatchedAdapters:
    """``K`` low-rank adapters per wrapped layer (built by :func:`batched_adapters`).

    Attributes:
        adapters: K. rank: r. scale: ``alpha / r``.
        A, B: ``{layer index: Parameter}`` of shapes ``[K, r, d]`` and ``[K, d, r]`` (the expert
            dtype and device of each layer).
        index: the current adapter index (see :meth:`set_index`), or None.
    """

    def __init__(self, memory: ContinuumMemory, adapters: int, rank: int, alpha: float,
                 generator: torch.Generator | None):
        self.adapters, self.rank, self.scale = adapters, rank, alpha / rank
        self.init_std = memory.config.init_std
        d = hidden_size(memory.model)
        self.A: dict[int, nn.Parameter] = {}
        self.B: dict[int, nn.Parameter] = {}
        for layer, mlp in memory.layers.items():
            reference = mlp.levels[0].A[0]
            make = lambda *shape: nn.Parameter(reference.new_zeros(shape))  # noqa: E731
            self.A[layer], self.B[layer] = make(adapters, rank, d), make(adapters, d, rank)
        self._generator = generator
        for k in range(adapters):
            self.reset(k)
        self.index: Tensor | None = None

    def parameters(self) -> list[nn.Parameter]:
        """``[A, B]`` per layer, layers ascending (each stacked over the K adapters)."""
        return [p for layer in sorted(self.A) for p in (self.A[layer], self.B[layer])]

    def set_index(self, adapter_index: Tensor | None) -> None:
        """The adapter of each sequence of the next forwards: an integer tensor ``[B]`` (one per
        sequence; the layers expand it over positions) or of the MLP input's leading shape ``[B, T]``
        (one per token); values in ``[-1, K)``, -1: no adapter. None: unset (a forward then fails)."""
        if adapter_index is not None:
            validation.instance("adapter_index", adapter_index, Tensor, what="a torch.Tensor or None")
            if adapter_index.dtype.is_floating_point or adapter_index.dtype == torch.bool:
                raise TypeError(f"adapter_index must be an integer tensor, got {adapter_index.dtype}")
        self.index = adapter_index

    def reset(self, k: int) -> None:
        """Adapter ``k`` starts afresh in every layer: ``A ~ N(0, init_std)``, ``B = 0``."""
        validation.integer("k", k, minimum=0, maximum=self.adapters - 1)
        with torch.no_grad():
            for layer in sorted(self.A):
                draw = torch.randn(self.A[layer].shape[1:], generator=self._generator)
                self.A[layer][k].copy_(draw.mul_(self.init_std))
                self.B[layer][k].zero_()

    def weights(self, k: int) -> dict[int, tuple[Tensor, Tensor]]:
        """Adapter ``k``'s ``(A [r, d], B [d, r])`` per layer (detached copies)."""
        validation.integer("k", k, minimum=0, maximum=self.adapters - 1)
        return {layer: (self.A[layer][k].detach().clone(), self.B[layer][k].detach().clone()) for layer in self.A}

    def rows(self, x: Tensor) -> Tensor:
        """The adapter index of each row of ``x.reshape(-1, d)``."""
        index = self.index
        if index is None:
            raise RuntimeError("batched adapters need set_index(adapter_index) before the forward")
        if index.shape == x.shape[:-1]:
            return index.reshape(-1)
        if x.dim() == 3 and index.shape == x.shape[:1]:
            return index[:, None].expand(x.shape[:2]).reshape(-1)
        raise ValueError(f"adapter_index has shape {tuple(index.shape)}; the MLP input {tuple(x.shape)} needs "
                         f"one per sequence [{x.shape[0]}] or one per token {list(x.shape[:-1])}")

    def term(self, layer: int):
        """The function ``x [..., d] -> [..., d]`` that layer ``layer``'s MLP adds to its output."""
        A, B = self.A[layer], self.B[layer]

        def add(x: Tensor) -> Tensor:
            rows = self.rows(x).to(x.device)
            flat = x.reshape(-1, x.shape[-1])
            with torch.autocast(x.device.type, enabled=False):  # adapters compute in their own dtype
                out = batched_lora(flat.to(A.dtype), A, B, rows, self.scale)
            return out.reshape(x.shape)

        return add


@contextlib.contextmanager
def batched_adapters(memory: ContinuumMemory, adapters: int, *, rank: int | None = None, alpha: float | None = None,
                     generator: torch.Generator | None = None) -> Iterator[BatchedAdapters]:
    """Give every wrapped layer of ``memory`` ``adapters`` trainable low-rank adapters for the context.

    Args:
        memory: a wrapped :class:`ContinuumMemory`.
        adapters: K >= 1.
        rank: the adapters' rank; default level 0's (so an adapter's weights fit one of its slots).
        alpha: the scale numerator (``scale = alpha / rank``); default level 0's scale times ``rank``.
        generator: draws the initial ``A`` (``N(0, config.init_std)``); default the global RNG.

    Yields the :class:`BatchedAdapters`; on exit the layers no longer apply them. Raises
    ``TypeError``/``ValueError`` naming a bad argument and ``RuntimeError`` if the context is
    already open on this memory or the memory was unwrapped.
    """
    validation.instance("memory", memory, ContinuumMemory)
    if not memory.layers:
        raise RuntimeError("this ContinuumMemory was unwrapped; wrap the model again")
    level = memory.config.levels[0]
    rank = validation.integer("rank", rank, minimum=1, optional=True) or level.rank
    alpha = validation.positive("alpha", alpha, optional=True) or level.scale * rank
    batched = BatchedAdapters(memory, validation.integer("adapters", adapters, minimum=1), rank, alpha, generator)
    if any(mlp.batched is not None for mlp in memory.layers.values()):
        raise RuntimeError("batched_adapters is already open on this memory (contexts do not nest)")
    try:
        for layer, mlp in memory.layers.items():
            mlp.batched = batched.term(layer)
        yield batched
    finally:
        for mlp in memory.layers.values():
            mlp.batched = None
