"""The fast memory level learning online during wake: test-time training (METHOD.md §1).

Arriving documents are one token stream. Every ``C_1`` tokens (``SleepConfig.wake_period``, or the
level's own ``LevelConfig.period``) the fast level's expert, one slot of ``wake_level`` created on
first use and kept active, takes ``wake_steps`` steps of the SFT stage
(:class:`~sleepcore.sleep.sft.NextTokenStage`, shuffled epochs of ``wake_batch_size``) on the window: the
last ``C_1`` tokens, one sequence per document they came from (a document crossing a multiple of
``C_1`` is cut there; its rest opens the next window). Each update uses a fresh runtime, like an
inner loop of test-time training: only the expert's weights carry over, so the memory and the
window are the whole state to checkpoint.
"""

from __future__ import annotations

from sleepcore.lm import encode
from sleepcore.sleep.config import NextTokenConfig, SleepConfig
from sleepcore.sleep.sft import NextTokenStage
from sleepcore.sleep.stage import StageContext, run_stage
from sleepcore.train import OptimizerConfig


class FastLevelLearner:
    """Online next-token training of one expert of the fast level ``config.wake_level``.

    Args:
        model, tokenizer, memory: the wrapped causal LM, its tokenizer and its
            :class:`~sleepcore.memory.ContinuumMemory`.
        config: the :class:`SleepConfig` (its ``wake_*`` fields).

    Attributes:
        level, period: the fast level and ``C_1`` in tokens.
        slot: the fast expert's slot, None until the first update.
        window: token id lists that arrived since the last update (fewer than ``period`` tokens).
        updates: updates run since the fast level was last reset.
    """

    def __init__(self, model, tokenizer, memory, config: SleepConfig):
        self.model, self.tokenizer, self.memory, self.config = model, tokenizer, memory, config
        self.stage_config = NextTokenConfig(steps=config.wake_steps, batch_size=config.wake_batch_size,
                                            optimizer=OptimizerConfig(learning_rate=config.wake_learning_rate))
        self.level = config.wake_level
        self.period = config.wake_period or memory.config.levels[self.level].period
        self.slot: int | None = None
        self.window: list[list[int]] = []
        self.updates = 0

    @property
    def pending_tokens(self) -> int:
        """Tokens since the last update (the counter, below ``period``)."""
        return sum(map(len, self.window))

    def observe(self, documents: list[str], *, progress: bool = False) -> int:
        """Adds ``documents`` (strings) to the stream; runs one update each time the token count
        reaches a multiple of ``period``. Returns the number of updates run."""
        before = self.updates
        for document in documents:
            ids = encode(self.tokenizer, document)
            while ids:
                room = self.period - self.pending_tokens
                self.window.append(ids[:room])
                ids = ids[room:]
                if self.pending_tokens == self.period:
                    self.update(progress=progress)
        return self.updates - before

    def update(self, *, progress: bool = False) -> None:
        """Trains the fast expert on the window (skipped when no part of it has 2 tokens), then empties it."""
        window, self.window = [ids for ids in self.window if len(ids) >= 2], []
        if not window:
            return
        seed = self.config.seed + self.updates
        if self.slot is None:
            self.slot = self.memory.new_expert(self.level, seed=seed)
        context = StageContext(self.model, self.tokenizer, self.memory, None, self.level, self.slot, seed=seed)
        run_stage(NextTokenStage(context, self.stage_config), window, progress=progress,
                  desc=f"wake update {self.updates + 1}")
        self.updates += 1

    def reset(self) -> None:
        """Resets the fast level (every expert zeroed and off), the window and the update count."""
        self.memory.reset(self.level)
        self.slot, self.window, self.updates = None, [], 0

    def state_dict(self) -> dict:
        return {"slot": self.slot, "window": [list(ids) for ids in self.window], "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.slot, self.window, self.updates = state["slot"], [list(ids) for ids in state["window"]], state["updates"]
