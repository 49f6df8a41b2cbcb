"""Configuration of the Continuum Memory System: the memory levels and the layers they sit on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sleepcore import validation

#: Models with at least this many parameters get the paper's rank (64); smaller ones get 16.
LARGE_MODEL_PARAMETERS = 1_000_000_000
LARGE_MODEL_RANK = 64
SMALL_MODEL_RANK = 16
#: ``LevelConfig.router`` choices.
ROUTERS = ("sum", "gate")


@dataclass(frozen=True)
class LevelConfig:
    """One memory level: ``slots`` pre-allocated low-rank experts of rank ``rank`` per wrapped layer.

    Args:
        rank: expert rank ``r``, or None for automatic (64 for models of 1e9 parameters and up, else 16).
        slots: number of pre-allocated experts per layer (the most that can be active at once).
        period: ``C_l``, the number of tokens between this level's scheduled updates.
        alpha: LoRA-style scale numerator: an expert's output is scaled by ``alpha / rank``.
            None means ``2 * rank`` (the paper's r=64, alpha=128).
        router: ``g_e(x)`` of METHOD.md §1, how much of each expert a token gets: ``"sum"`` (1 for
            every token: a plain sum) or ``"gate"`` (a learnt per-token gate ``2 * sigmoid(w_e . x /
            sqrt(d) + b_e)`` per expert, ``w_e`` and ``b_e`` zero when the expert is created, so the
            gate starts at exactly 1 and a new expert is the plain sum's until it trains; the gate
            trains with ``A`` and ``B``, so it can learn to switch the expert off on inputs it should
            not change).
    """

    rank: int | None = None
    slots: int = 4
    period: int = 1024
    alpha: float | None = None
    router: str = "sum"

    def __post_init__(self):
        set_field = object.__setattr__
        set_field(self, "rank", validation.integer("rank", self.rank, minimum=1, optional=True))
        set_field(self, "slots", validation.integer("slots", self.slots, minimum=1))
        set_field(self, "period", validation.integer("period", self.period, minimum=1))
        set_field(self, "alpha", validation.positive("alpha", self.alpha, optional=True))
        validation.choice("router", self.router, ROUTERS)

    def resolved(self, num_parameters: int) -> "LevelConfig":
        """This level with ``rank`` and ``alpha`` made concrete for a model of ``num_parameters``."""
        rank = self.rank
        if rank is None:
            rank = LARGE_MODEL_RANK if num_parameters >= LARGE_MODEL_PARAMETERS else SMALL_MODEL_RANK
        alpha = 2.0 * rank if self.alpha is None else self.alpha
        return dataclasses.replace(self, rank=rank, alpha=alpha)

    @property
    def scale(self) -> float:
        """``alpha / rank`` of a resolved level."""
        if self.rank is None or self.alpha is None:
            raise ValueError("scale needs a resolved level (rank and alpha set); call resolved() first")
        return self.alpha / self.rank


@dataclass(frozen=True)
class MemoryConfig:
    """The memory levels (fastest first, so periods strictly increase) and the layers they wrap.

    Args:
        levels: the memory levels, fastest first; a list is accepted and stored as a tuple.
        layers: ``"all"`` to wrap every decoder layer's MLP, or the indices of the layers to wrap.
        init_std: standard deviation of a new expert's ``A`` (its ``B`` starts at zero).
    """

    levels: tuple[LevelConfig, ...] = (LevelConfig(period=1024), LevelConfig(period=8192))
    layers: str | tuple[int, ...] = "all"
    init_std: float = 0.02

    def __post_init__(self):
        if not isinstance(self.levels, (tuple, list)):
            raise TypeError(f"levels must be a tuple of LevelConfig, got {type(self.levels).__name__}")
        validation.non_empty("levels", self.levels)
        for index, level in enumerate(self.levels):
            validation.instance(f"levels[{index}]", level, LevelConfig)
        object.__setattr__(self, "levels", tuple(self.levels))
        periods = [level.period for level in self.levels]
        if any(slow <= fast for fast, slow in zip(periods, periods[1:])):
            raise ValueError(f"levels must be ordered fastest first (strictly increasing period), got {periods}")
        if isinstance(self.layers, str):
            if self.layers != "all":
                raise ValueError(f"layers must be 'all' or a tuple of layer indices, got {self.layers!r}")
        else:
            if not isinstance(self.layers, (tuple, list)):
                raise TypeError(f"layers must be 'all' or a tuple of layer indices, got {type(self.layers).__name__}")
            validation.non_empty("layers", self.layers)
            layers = tuple(validation.integer(f"layers[{i}]", layer, minimum=0) for i, layer in enumerate(self.layers))
            if len(set(layers)) != len(layers):
                raise ValueError(f"layers must not repeat an index, got {layers!r}")
            object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "init_std", validation.positive("init_std", self.init_std))

    def resolved(self, num_parameters: int, num_layers: int) -> "MemoryConfig":
        """This config with every level's rank/alpha concrete and ``layers`` an explicit sorted tuple.

        Raises ``ValueError`` if a layer index is not below ``num_layers``.
        """
        if self.layers == "all":
            layers = tuple(range(num_layers))
        else:
            bad = [index for index in self.layers if index >= num_layers]
            if bad:
                raise ValueError(f"layers {bad} out of range: the model has {num_layers} decoder layers")
            layers = tuple(sorted(self.layers))
        levels = tuple(level.resolved(num_parameters) for level in self.levels)
        return dataclasses.replace(self, levels=levels, layers=layers)

    def to_json_dict(self) -> dict:
        """A JSON-serialisable dict of this config (tuples become lists)."""
        return dataclasses.asdict(self)
