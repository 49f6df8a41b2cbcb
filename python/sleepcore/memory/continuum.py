"""``ContinuumMemory``: wraps a causal LM's MLPs with memory levels and manages their expert slots.

Example::

    memory = ContinuumMemory.wrap(model, MemoryConfig())
    slot = memory.new_expert(0)                      # B = 0: the model's function is unchanged
    optimizer = torch.optim.Adam(memory.trainable(0, slot), lr=1e-3)
    ...
    with memory.random_expert_noise(scale=1.0):      # dreaming
        model.generate(...)
    memory.save("memory.safetensors")
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from sleepcore import validation
from sleepcore.memory import checkpoint
from sleepcore.memory.config import MemoryConfig
from sleepcore.memory.discovery import find_decoder_layers, find_mlp, hidden_size
from sleepcore.memory.layer import MemoryMLP


class ContinuumMemory:
    """Memory levels beside the frozen MLPs of a Hugging Face causal LM (built by :meth:`wrap`).

    Attributes:
        model: the wrapped model (its chosen MLPs are replaced in place by :class:`MemoryMLP`).
        config: the resolved config (every level's rank and alpha concrete, ``layers`` explicit).
        layers: ``{decoder layer index: MemoryMLP}``.
        state: a JSON-serialisable dict saved with the memory (e.g. ``state["step"]``, the caller's
            step counters); starts as ``{"step": 0}``.
    """

    def __init__(self, model: nn.Module, config: MemoryConfig, layers: dict[int, MemoryMLP],
                 replaced: list[tuple[nn.Module, str, nn.Module]], requires_grad: list[tuple[nn.Parameter, bool]]):
        self.model = model
        self.config = config
        self.layers = layers
        self.state: dict = {"step": 0}
        self._replaced = replaced  # (decoder layer, child name, original MLP)
        self._requires_grad = requires_grad  # base parameters' flags before wrapping
        self._noise_generator: torch.Generator | None = None
        self._noise_scale: float | None = None

    @classmethod
    def wrap(cls, model: nn.Module, config: MemoryConfig) -> "ContinuumMemory":
        """Replace the chosen decoder layers' MLPs by :class:`MemoryMLP` and freeze the base model.

        The model's outputs are unchanged (no expert is active). Raises ``ValueError`` if the
        model has no decoder layers or MLPs (see :mod:`sleepcore.memory.discovery`), if it is
        already wrapped, or if ``config.layers`` holds an index out of range.
        """
        validation.instance("config", config, MemoryConfig)
        if any(isinstance(module, MemoryMLP) for module in model.modules()):
            raise ValueError("model is already wrapped by a ContinuumMemory; unwrap() it first")
        d = hidden_size(model)
        decoder_layers = find_decoder_layers(model, d)
        num_parameters = sum(parameter.numel() for parameter in model.parameters())
        config = config.resolved(num_parameters, len(decoder_layers))
        found = {index: find_mlp(decoder_layers[index], d) for index in config.layers}
        requires_grad = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        for parameter, _ in requires_grad:
            parameter.requires_grad_(False)
        layers, replaced = {}, []
        for index, (name, mlp) in found.items():
            reference = next(mlp.parameters())
            wrapper = MemoryMLP(mlp, d, config.levels, reference.dtype, reference.device)
            setattr(decoder_layers[index], name, wrapper)
            layers[index] = wrapper
            replaced.append((decoder_layers[index], name, mlp))
        return cls(model, config, layers, replaced, requires_grad)

    def unwrap(self) -> nn.Module:
        """Put the original MLPs back, restore the base parameters' ``requires_grad``, return the model."""
        self._check_wrapped()
        for layer, name, mlp in self._replaced:
            setattr(layer, name, mlp)
        for parameter, flag in self._requires_grad:
            parameter.requires_grad_(flag)
        self._replaced = []
        self.layers = {}
        return self.model

    # --- slots -----------------------------------------------------------------------------------

    def new_expert(self, level: int, *, seed: int | None = None) -> int:
        """Initialise the lowest inactive slot of ``level`` in every wrapped layer (``A ~ N(0, init_std)``,
        ``B = 0``, a gated level's router weights and bias 0, so the function is unchanged), activate it
        and return its index.

        ``seed`` draws every layer's ``A`` (in layer order) from a CPU generator seeded with it, so the
        new expert, and whatever is trained from it, is the same on every run and every rank; None
        draws from torch's global RNG (then two runs of one config start from different experts).

        Raises ``RuntimeError`` if every slot of the level is active.
        """
        self._check_level(level)
        validation.integer("seed", seed, optional=True)
        free = [slot for slot, active in enumerate(self._slots(level).active) if not active]
        if not free:
            raise RuntimeError(f"level {level} has no free slot: all {self.config.levels[level].slots} "
                               "slots are active (reset() or deactivate() one first)")
        slot = free[0]
        draws = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in sorted(self.layers):
                down, *rest = self.layers[layer].levels[level].parameters_of(slot)
                if draws is None:
                    down.normal_(0.0, self.config.init_std)
                else:
                    down.copy_(torch.randn(down.shape, generator=draws).mul_(self.config.init_std))
                for parameter in rest:  # B, then a gated level's router weights and bias
                    parameter.zero_()
        self.activate(level, slot)
        return slot

    def reset(self, level: int) -> None:
        """Deactivate and zero every expert of ``level`` (router weights included)."""
        self._check_level(level)
        with torch.no_grad():
            for mlp in self.layers.values():
                for slot in range(len(mlp.levels[level].active)):
                    for parameter in mlp.levels[level].parameters_of(slot):
                        parameter.zero_()
                    mlp.set_active(level, slot, False)

    def activate(self, level: int, slot: int) -> None:
        """Turn expert ``(level, slot)`` on in every wrapped layer (a mask flip)."""
        self._set_active(level, slot, True)

    def deactivate(self, level: int, slot: int) -> None:
        """Turn expert ``(level, slot)`` off in every wrapped layer; its weights are kept."""
        self._set_active(level, slot, False)

    def active_slots(self, level: int) -> list[int]:
        """Indices of the active slots of ``level``, ascending."""
        self._check_level(level)
        return [slot for slot, active in enumerate(self._slots(level).active) if active]

    def trainable(self, level: int, slot: int) -> list[nn.Parameter]:
        """Expert ``(level, slot)``'s parameters across layers (``[A, B]`` per layer, then the router's
        ``[gate_weight, gate_bias]`` for a gated level; layers ascending).

        They become the only memory parameters with ``requires_grad=True`` (every other slot of every
        level is set to False; base parameters stay frozen), so a backward pass or an optimizer over
        the returned list touches this expert alone.
        """
        self._check_slot(level, slot)
        for mlp in self.layers.values():
            for parameter in mlp.levels.parameters():
                parameter.requires_grad_(False)
        chosen = []
        for mlp in self.layers.values():
            chosen += mlp.levels[level].parameters_of(slot)
        for parameter in chosen:
            parameter.requires_grad_(True)
        return chosen

    def parameter_count(self) -> dict[int, dict[str, int]]:
        """Per level: ``{"active_experts", "active_parameters", "allocated_parameters"}`` over all wrapped layers."""
        self._check_wrapped()
        counts = {}
        for index, level in enumerate(self.config.levels):
            per_expert = sum(p.numel() for mlp in self.layers.values() for p in mlp.levels[index].parameters_of(0))
            active = len(self.active_slots(index))
            counts[index] = {"active_experts": active, "active_parameters": active * per_expert,
                             "allocated_parameters": level.slots * per_expert}
        return counts

    @contextlib.contextmanager
    def switched_off(self, keep: Iterable[tuple[int, int]] = ()) -> Iterator[None]:
        """Inside the context no expert of any level is active (the original model) but those in
        ``keep`` (``(level, slot)`` pairs); on exit the experts that were active are active again.
        A switched-off slot is not free: :meth:`new_expert` inside the context would overwrite it."""
        self._check_wrapped()
        keep = set(keep)
        active = [(level, slot) for level in range(len(self.config.levels)) for slot in self.active_slots(level)
                  if (level, slot) not in keep]
        for expert in active:
            self.deactivate(*expert)
        try:
            yield
        finally:
            for expert in active:
                self.activate(*expert)

    # --- dreaming noise --------------------------------------------------------------------------

    @contextlib.contextmanager
    def random_expert_noise(self, scale: float = 1.0, generator: torch.Generator | None = None) -> Iterator[None]:
        """Inside the context every wrapped layer also applies one random expert of level 0's rank and
        ``alpha / rank``, with ``A`` and ``B`` drawn from ``N(0, (init_std * scale)^2)`` on entry (and by
        :meth:`resample_noise`) from ``generator`` (or the global RNG). On exit the noise is removed.

        Raises ``ValueError`` for ``scale <= 0``, ``TypeError`` for a non-number and ``RuntimeError`` if
        the context is already open.
        """
        self._check_wrapped()
        scale = validation.positive("scale", scale)
        if self._noise_scale is not None:
            raise RuntimeError("random_expert_noise is already active (contexts do not nest)")
        self._noise_scale, self._noise_generator = scale, generator
        try:
            self.resample_noise()
            yield
        finally:
            for mlp in self.layers.values():
                mlp.set_noise(None)
            self._noise_scale = self._noise_generator = None

    def resample_noise(self) -> None:
        """Redraw every layer's noise expert. Raises ``RuntimeError`` outside :meth:`random_expert_noise`."""
        if self._noise_scale is None:
            raise RuntimeError("resample_noise() needs an open random_expert_noise() context")
        level = self.config.levels[0]
        std = self.config.init_std * self._noise_scale
        d = hidden_size(self.model)
        device = self._noise_generator.device if self._noise_generator is not None else None
        for mlp in self.layers.values():
            reference = mlp.levels[0].A[0]
            draws = [torch.randn(shape, generator=self._noise_generator, device=device or reference.device)
                     for shape in ((level.rank, d), (d, level.rank))]
            down, up = (draw.mul_(std).to(reference.device, reference.dtype) for draw in draws)
            mlp.set_noise((down, up, level.scale))

    # --- persistence -----------------------------------------------------------------------------

    def save(self, path) -> None:
        """Write every slot's ``A``/``B``, the masks, the config and :attr:`state` to one safetensors
        file, atomically (``<path>.tmp-<pid>`` then ``os.replace``)."""
        self._check_wrapped()
        checkpoint.save(self, path)

    def load(self, path) -> None:
        """Restore a :meth:`save` file into this memory. Raises ``ValueError`` on a config or shape mismatch."""
        self._check_wrapped()
        checkpoint.load(self, path)

    # --- checks and helpers ----------------------------------------------------------------------

    def _slots(self, level: int):
        return next(iter(self.layers.values())).levels[level]

    def _set_active(self, level: int, slot: int, active: bool) -> None:
        self._check_slot(level, slot)
        for mlp in self.layers.values():
            mlp.set_active(level, slot, active)

    def _check_wrapped(self) -> None:
        if not self.layers:
            raise RuntimeError("this ContinuumMemory was unwrapped; wrap the model again")

    def _check_level(self, level: int) -> None:
        self._check_wrapped()
        validation.integer("level", level, minimum=0, maximum=len(self.config.levels) - 1)

    def _check_slot(self, level: int, slot: int) -> None:
        self._check_level(level)
        validation.integer(f"slot of level {level}", slot, minimum=0, maximum=self.config.levels[level].slots - 1)
