"""``Sleeper``: wake (collect documents), then sleep (compute, consolidate, update; METHOD.md §2).

A sleep runs ``SleepConfig.stages`` in order through :func:`~sleepcore.sleep.stage.run_stage`,
each stage training the sleep's new expert of ``receiver_level``: ``seeding`` (Knowledge Seeding)
or ``sft`` (next-token training on the documents, the baseline), then ``dreaming`` (the model's
own restatements of the documents, selected by gradient importance: :mod:`sleepcore.sleep.dreaming`).

With the in-context teacher (``SleepConfig.teacher = "context"``) the wake buffer is the zeroth
memory level: a sleep seeds its documents into the new expert, then activates that expert for
good and empties the buffer. With ``wake_updates`` the fast level also learns online during wake
(:mod:`sleepcore.sleep.wake`). With the memory teacher (``teacher = "memory"``) the fast level is
the sender: a sleep first trains it on the window still pending, then seeds from the model with the
fast experts on and no document in context (replay prompts are the student's), and finally resets
the fast level (experts, window, count). The running state is checkpointed atomically per stage to
``<output_dir>/sleep-<n>/<stage>/`` (safetensors + JSON); an interrupted sleep resumes where its
last checkpoint left it and draws the same batches an uninterrupted run would. Each optimisation
step appends one JSON line to the stage's ``metrics.jsonl``.
"""

from __future__ import annotations

import random
from pathlib import Path

from sleepcore.rollout import Engine
from sleepcore.sleep.buffer import WakeBuffer
from sleepcore.sleep.config import SleepConfig
from sleepcore.sleep.dreaming import DreamingStage
from sleepcore.sleep.knowledge_seeding import KnowledgeSeeding
from sleepcore.sleep.sft import NextTokenStage
from sleepcore.sleep.stage import StageContext, resume_point, run_stage
from sleepcore.sleep.wake import FastLevelLearner

#: Stage name -> class; a stage's config is the ``SleepConfig`` field of the same name.
STAGES = {"seeding": KnowledgeSeeding, "sft": NextTokenStage, "dreaming": DreamingStage}


class Sleeper:
    """Wake/sleep cycle of a model wrapped with Continuum Memory.

    Args:
        model, tokenizer: a Hugging Face causal LM (already wrapped by ``memory``) and its tokenizer.
        memory: its :class:`~sleepcore.memory.ContinuumMemory`.
        config: :class:`SleepConfig`.
        engine: a rollout engine on ``model`` (default: a new one).

    Attributes:
        buffer: the :class:`~sleepcore.sleep.buffer.WakeBuffer` since the last sleep.
        fast: the :class:`~sleepcore.sleep.wake.FastLevelLearner` (None without ``wake_updates``).
        sleeps: sleeps completed.

    Raises ``ValueError`` for a ``receiver_level`` or ``wake_level`` that ``memory`` does not have.
    """

    def __init__(self, model, tokenizer, memory, config: SleepConfig | None = None, *, engine: Engine | None = None):
        self.config = config or SleepConfig()
        for name in ("receiver_level", "wake_level"):
            if getattr(self.config, name) >= len(memory.config.levels):
                raise ValueError(f"{name} must be < {len(memory.config.levels)} (the memory's levels), "
                                 f"got {getattr(self.config, name)}")
        self.model, self.tokenizer, self.memory = model, tokenizer, memory
        self.engine = engine or Engine(model, tokenizer)
        self.fast = FastLevelLearner(model, tokenizer, memory, self.config) if self.config.wake_updates else None
        self.buffer = WakeBuffer()
        self.sleeps = 0

    def wake(self, documents, *, questions=None, progress: bool = False) -> int:
        """Appends documents (strings) to the wake buffer; they stay there (the in-context teacher's
        context, the question writer's material) until the next sleep consolidates them.
        ``questions[i]`` (optional) lists the questions asked about ``documents[i]`` while awake; the
        ``wake_questions`` builder replays them. With ``wake_updates`` the fast level trains on the
        documents every ``C_1`` tokens. Returns the number of fast-level updates run (0 without
        ``wake_updates``)."""
        documents = self.buffer.add(documents, questions)
        return self.fast.observe(documents, progress=progress) if self.fast else 0

    def sleep(self, *, progress: bool = True) -> dict:
        """Runs the configured stages on the wake buffer, each training the sleep's new expert;
        returns ``{"sleep", "level", "slot", "documents", "fast_updates", "stages": {name: summary}}``
        where a stage's summary holds ``steps``, ``tokens``, ``history`` and its own figures."""
        if not self.buffer:
            raise ValueError("the wake buffer is empty: call wake(documents) before sleep()")
        c = self.config
        seed = c.seed + self.sleeps  # the sleep's expert and its stages
        root = Path(c.output_dir) / f"sleep-{self.sleeps:03d}" if c.output_dir else None
        first = resume_point(root / c.stages[0], self.memory) if root else None
        if first is not None:
            owner = first[1]["owner"]
            self.buffer = WakeBuffer.from_state(owner["buffer"])
            if self.fast:
                self.fast.load_state_dict(owner["wake"])
            slot = owner["slot"]
        else:
            if c.teacher == "memory" and self.fast.window:
                self.fast.update(progress=progress)  # the sender's pending update: the teacher holds every document
            slot = self.memory.new_expert(c.receiver_level, seed=seed)
        fast_slot = self.fast.slot if self.fast else None
        context = StageContext(
            self.model, self.tokenizer, self.memory, self.engine, c.receiver_level, slot, seed=seed,
            teacher_experts=[(c.wake_level, fast_slot)] if c.teacher == "memory" and fast_slot is not None else [],
            teacher_reads_documents=c.teacher == "context")

        def owner_state():
            return {"slot": slot, "buffer": self.buffer.state(), "wake": self.fast.state_dict() if self.fast else None}

        stages, earlier_items, learnt_questions = {}, [], []
        for index, name in enumerate(c.stages):
            stage_root = root / name if root else None
            resumed = first if index == 0 else (resume_point(stage_root, self.memory) if root else None)
            stage = STAGES[name](context, getattr(c, name))
            if hasattr(stage, "rehearsal"):
                stage.rehearsal = list(earlier_items)
            stages[name] = run_stage(stage, self.buffer, memory=self.memory, root=stage_root, resumed=resumed,
                                     seed=c.seed, checkpoint_every=c.checkpoint_every, owner_state=owner_state,
                                     progress=progress, desc=f"sleep {self.sleeps} {name}",
                                     log_fields={"sleep": self.sleeps})
            earlier_items += stage.items
            learnt_questions += getattr(stage, "learnt_questions", [])
            if c.dreaming.rehearse_earlier_seeding and hasattr(stage, "fixed_questions"):
                learnt_questions += stage.fixed_questions()
        replayed = [text for summary in stages.values() for text in summary.pop("student_prompts", [])]
        summary = {"sleep": self.sleeps, "level": c.receiver_level, "slot": slot, "documents": len(self.buffer),
                   "fast_updates": self.fast.updates if self.fast else 0, "stages": stages}
        # consolidated: the documents leave the context; the replayed prompts and the questions Dreaming
        # (with rehearse_earlier_seeding, Knowledge Seeding too) learnt stay for later rehearsal
        self.buffer = self.buffer.consolidated(replayed, c.seeding.rehearsal_capacity,
                                               random.Random(c.seed + self.sleeps), dreams=learnt_questions,
                                               dreams_capacity=c.dreaming.earlier_dreams_capacity)
        if c.teacher == "memory":
            self.fast.reset()  # the sender's update: its knowledge now lives in the receiver's expert
        self.sleeps += 1
        return summary
