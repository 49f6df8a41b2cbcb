"""``MemoryMLP``: a frozen MLP plus pre-allocated low-rank expert slots, one group per memory level.

Every active expert ``e`` adds ``s_e * B_e @ A_e @ x`` with ``A_e: [r_e, d]``, ``B_e: [d, r_e]`` and
``s_e = alpha_e / r_e``. The sum over experts is one product of concatenations:

    sum_e s_e B_e A_e x = [B_1 | ... | B_E] @ (diag(s) @ [A_1; ...; A_E] @ x),

so all active experts of all levels (whatever their ranks) cost two matmuls per layer.

A level with ``router = "gate"`` scales each of its experts per token by ``g_e(x) = 2 * sigmoid(w_e
. x / sqrt(d) + b_e)`` (``w_e: [d]``, ``b_e: [1]``, zero for a new expert, so ``g_e = 1``): the gates
of all gated active experts are one more ``[E_g, d]`` matmul, broadcast over each expert's ``r``
rows of the product above (``diag(s) -> diag(s * g(x))``). The ``1 / sqrt(d)`` keeps an Adam step of
``lr`` on every entry of ``w_e`` from moving the logit by ``lr * d``.
Under autocast (bf16 training forwards of an fp32 model) the experts still compute in their own
dtype: the low-rank terms cost little, and their gradients, the only ones a sleep keeps, stay fp32.

Each slot's ``A`` and ``B`` are separate parameters: the concatenation routes gradients only
into the slots that took part, and an optimizer over one slot's parameters touches nothing else.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sleepcore.memory.config import LevelConfig


class ExpertSlots(nn.Module):
    """The ``slots`` experts of one level in one layer: ``A[s]: [r, d]``, ``B[s]: [d, r]``, zero at start.

    ``active`` is a Python list of flags (the mask), so forward decisions need no tensor op.
    """

    def __init__(self, level: LevelConfig, d: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.rank = level.rank
        self.scale = level.scale
        self.A = nn.ParameterList(nn.Parameter(torch.zeros(level.rank, d, dtype=dtype, device=device))
                                  for _ in range(level.slots))
        self.B = nn.ParameterList(nn.Parameter(torch.zeros(d, level.rank, dtype=dtype, device=device))
                                  for _ in range(level.slots))
        self.gated = level.router == "gate"
        if self.gated:  # router weights w_e [d] and bias b_e [1] per slot
            self.gate_weight = nn.ParameterList(nn.Parameter(torch.zeros(d, dtype=dtype, device=device))
                                                for _ in range(level.slots))
            self.gate_bias = nn.ParameterList(nn.Parameter(torch.zeros(1, dtype=dtype, device=device))
                                              for _ in range(level.slots))
        self.active = [False] * level.slots

    def parameters_of(self, slot: int) -> list[nn.Parameter]:
        """Slot ``slot``'s parameters: ``[A, B]``, then ``[gate_weight, gate_bias]`` when gated."""
        gate = [self.gate_weight[slot], self.gate_bias[slot]] if self.gated else []
        return [self.A[slot], self.B[slot], *gate]

    def extra_repr(self) -> str:
        return (f"slots={len(self.active)}, rank={self.rank}, scale={self.scale}, gated={self.gated}, "
                f"active={self.active}")


class MemoryMLP(nn.Module):
    """``y = base(x) + sum over active experts e of (alpha_e / r_e) * B_e(A_e(x))``.

    ``x``: ``[..., d]`` in the parameters' dtype; ``y`` has the same shape. With no active
    expert, no noise and no batched adapters (:mod:`sleepcore.memory.batched`) the forward is
    exactly ``base(x)`` (a Python-side check, no tensor op).

    Args:
        base: the original MLP (kept as ``.base``, called with every forward argument).
        d: hidden size.
        levels: resolved level configs (rank and alpha set), fastest first.
        dtype, device: of the expert parameters (those of the base MLP).
    """

    def __init__(self, base: nn.Module, d: int, levels: tuple[LevelConfig, ...], dtype: torch.dtype,
                 device: torch.device):
        super().__init__()
        self.base = base
        self.levels = nn.ModuleList(ExpertSlots(level, d, dtype, device) for level in levels)
        self.noise: tuple[Tensor, Tensor, float] | None = None  # (A [r, d], B [d, r], scale) while dreaming
        self.batched: Callable[[Tensor], Tensor] | None = None  # x -> K adapters' term (memory.batched)
        self._num_terms = 0
        self._scales: Tensor | None = None  # [R] per-rank-row scales, rebuilt when the active set changes
        self._gate_rows: Tensor | None = None  # [R] each rank row's gate column (0: ungated), likewise

    def set_active(self, level: int, slot: int, active: bool) -> None:
        """Flip one slot's mask entry (no allocation)."""
        self.levels[level].active[slot] = active
        self._changed()

    def set_noise(self, noise: tuple[Tensor, Tensor, float] | None) -> None:
        """Add (or with None remove) one extra expert ``(A [r, d], B [d, r], scale)`` that is not a parameter."""
        self.noise = noise
        self._changed()

    def _changed(self) -> None:
        self._num_terms = sum(sum(level.active) for level in self.levels) + (self.noise is not None)
        self._scales = self._gate_rows = None

    def _terms(self) -> tuple[list[Tensor], list[Tensor], list[tuple[float, int]],
                              list[tuple[Tensor, Tensor] | None]]:
        """The active experts' ``A``s, ``B``s, ``(scale, rank)``s and ``(w, b)`` gates (None: ungated),
        the noise expert last."""
        downs, ups, scales, gates = [], [], [], []
        for level in self.levels:
            for slot, active in enumerate(level.active):
                if active:
                    downs.append(level.A[slot])
                    ups.append(level.B[slot])
                    scales.append((level.scale, level.rank))
                    gates.append((level.gate_weight[slot], level.gate_bias[slot]) if level.gated else None)
        if self.noise is not None:
            down, up, scale = self.noise
            downs.append(down)
            ups.append(up)
            scales.append((scale, down.shape[0]))
            gates.append(None)
        return downs, ups, scales, gates

    def _gates(self, x: Tensor, gates: list, scales: list[tuple[float, int]]) -> Tensor | None:
        """``[..., R]``: each rank row's gate ``g_e(x)`` (1 for ungated experts), or None when no
        active expert is gated."""
        gated = [gate for gate in gates if gate is not None]
        if not gated:
            return None
        weight = torch.stack([w for w, _ in gated])  # [E_g, d]
        bias = torch.cat([b for _, b in gated])  # [E_g]
        logits = F.linear(x, weight) / math.sqrt(x.shape[-1]) + bias
        values = 2.0 * torch.sigmoid(logits)  # [..., E_g]
        if self._gate_rows is None or self._gate_rows.device != x.device:
            columns, column = [], 0
            for gate, (_, rank) in zip(gates, scales):
                column += gate is not None
                columns += [column if gate is not None else 0] * rank
            self._gate_rows = torch.tensor(columns, device=x.device)
        values = torch.cat([values.new_ones(*values.shape[:-1], 1), values], dim=-1)
        return values.index_select(-1, self._gate_rows)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        out = self.base(x, *args, **kwargs)
        if self.batched is not None:
            out = out + self.batched(x)
        if self._num_terms == 0:
            return out
        downs, ups, scales, gates = self._terms()
        down = downs[0] if len(downs) == 1 else torch.cat(downs, dim=0)  # [R, d]
        up = ups[0] if len(ups) == 1 else torch.cat(ups, dim=1)  # [d, R]
        if self._scales is None or self._scales.device != down.device or self._scales.dtype != down.dtype:
            values = [scale for scale, rank in scales for _ in range(rank)]
            self._scales = torch.tensor(values, dtype=down.dtype, device=down.device)
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return out + self._expert_sum(x.to(down.dtype), down, up, gates, scales)
        return out + self._expert_sum(x, down, up, gates, scales)

    def _expert_sum(self, x: Tensor, down: Tensor, up: Tensor, gates: list, scales: list) -> Tensor:
        hidden = F.linear(x, down) * self._scales  # [..., R]
        row_gates = self._gates(x, gates, scales)
        if row_gates is not None:
            hidden = hidden * row_gates
        return F.linear(hidden, up)
