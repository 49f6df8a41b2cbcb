"""``Sleeper``: wake (collect documents), then sleep (compute, consolidate, update; METHOD.md §2).

With the in-context teacher (``SleepConfig.teacher = "context"``) the wake buffer is the zeroth
memory level: a sleep seeds its documents into a new expert of ``receiver_level`` by Knowledge
Seeding, then activates that expert for good and empties the buffer. With ``wake_updates`` the
fast level also learns online during wake (:mod:`sleepcore.sleep.wake`). With the memory teacher
(``teacher = "memory"``) the fast level is the sender: a sleep first trains it on the window
still pending, then seeds from the model with the fast experts on and no document in context
(replay prompts are the student's), and finally resets the fast level (experts, window, count).
The documents stay in the question-writing prompts of ``self_question``: the wake buffer the
model may still read while asleep. The running state (step, RNG states, optimiser, replay set,
memory, buffer, fast-level window) is checkpointed atomically to ``SleepConfig.output_dir``; an
interrupted sleep resumes where its last checkpoint left it and draws the same batches an
uninterrupted run would. Each optimisation step appends one JSON line to ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from tqdm.auto import tqdm

from sleepcore.rollout import Engine, SamplingParams
from sleepcore.sleep import checkpoint
from sleepcore.sleep.config import SleepConfig
from sleepcore.sleep.knowledge_seeding import KnowledgeSeeding
from sleepcore.sleep.prompts import (continuation_prompts, question_requests, self_question_prompts)
from sleepcore.sleep.wake import FastLevelLearner

_BUILDERS = ("continuation", "self_question", "wake_questions")


class Sleeper:
    """Wake/sleep cycle of a model wrapped with Continuum Memory.

    Args:
        model, tokenizer: a Hugging Face causal LM (already wrapped by ``memory``) and its tokenizer.
        memory: its :class:`~sleepcore.memory.ContinuumMemory`.
        config: :class:`SleepConfig`.
        engine: a rollout engine on ``model`` (default: a new one).

    Attributes:
        buffer: the documents woken on since the last sleep.
        asked: per buffered document, the questions asked about it while awake.
        fast: the :class:`~sleepcore.sleep.wake.FastLevelLearner` (None without ``wake_updates``).
        sleeps: sleeps completed.

    Raises ``ValueError`` for an unknown prompt builder, or a ``receiver_level`` or ``wake_level``
    that ``memory`` does not have.
    """

    def __init__(self, model, tokenizer, memory, config: SleepConfig | None = None, *, engine: Engine | None = None):
        self.config = config or SleepConfig()
        unknown = sorted(set(self.config.prompt_builders) - set(_BUILDERS))
        if unknown:
            raise ValueError(f"prompt_builders {unknown} unknown; choose from {_BUILDERS}")
        for name in ("receiver_level", "wake_level"):
            if getattr(self.config, name) >= len(memory.config.levels):
                raise ValueError(f"{name} must be < {len(memory.config.levels)} (the memory's levels), "
                                 f"got {getattr(self.config, name)}")
        self.model, self.tokenizer, self.memory = model, tokenizer, memory
        self.engine = engine or Engine(model, tokenizer)
        self.fast = FastLevelLearner(model, tokenizer, memory, self.config) if self.config.wake_updates else None
        self.buffer: list[str] = []
        self.asked: list[list[str]] = []
        self.sleeps = 0

    def wake(self, documents, *, questions=None, progress: bool = False) -> int:
        """Appends documents (strings) to the wake buffer; they stay there (the in-context teacher's
        context, the question writer's material) until the next sleep consolidates them.
        ``questions[i]`` (optional) lists the questions asked about ``documents[i]`` while awake; the
        ``wake_questions`` builder replays them. With ``wake_updates`` the fast level trains on the
        documents every ``C_1`` tokens. Returns the number of fast-level updates run (0 without
        ``wake_updates``)."""
        if isinstance(documents, str):
            documents = [documents]
        documents = list(documents)
        if not documents or not all(isinstance(d, str) and d.strip() for d in documents):
            raise ValueError("documents must be a non-empty list of non-empty strings")
        questions = [[] for _ in documents] if questions is None else [list(asked) for asked in questions]
        if len(questions) != len(documents) or not all(isinstance(q, str) for asked in questions for q in asked):
            raise ValueError(f"questions must be one list of strings per document ({len(documents)}), "
                             f"got {len(questions)} lists")
        self.buffer.extend(documents)
        self.asked.extend(questions)
        return self.fast.observe(documents, progress=progress) if self.fast else 0

    def sleep(self, *, progress: bool = True) -> dict:
        """Consolidates the wake buffer into a new expert; returns a summary of the sleep."""
        if not self.buffer:
            raise ValueError("the wake buffer is empty: call wake(documents) before sleep()")
        c = self.config
        root = Path(c.output_dir) / f"sleep-{self.sleeps:03d}" if c.output_dir else None
        resumed = checkpoint.latest_checkpoint(root) if root else None
        state = checkpoint.load_checkpoint(resumed, self.memory) if resumed else None
        if state:
            self.buffer, self.asked = state["buffer"], state["asked"]
            if self.fast:
                self.fast.load_state_dict(state["wake"])
        elif c.teacher == "memory" and self.fast.window:
            self.fast.update(progress=progress)  # the sender's pending update: the teacher holds every document
        slot = state["slot"] if state else self.memory.new_expert(c.receiver_level)
        fast_slot = self.fast.slot if self.fast else None
        teacher_experts = [(c.wake_level, fast_slot)] if c.teacher == "memory" and fast_slot is not None else []
        seeding = KnowledgeSeeding(self.model, self.tokenizer, self.memory, self.engine, c.seeding,
                                   level=c.receiver_level, slot=slot, seed=c.seed + self.sleeps,
                                   teacher_experts=teacher_experts)
        if state:
            seeding.optimizer.load_state_dict(state["optimizer"])
            replay, start, history = state["replay"], state["step"], state["history"]
            seeding.rng.setstate(state["seeding_rng"])
            checkpoint.restore_rng_state(state["rng"])
            # steps logged after that checkpoint are redone: the log restarts from its history
            checkpoint.atomic_write_text(root / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
        else:
            replay = seeding.sample_replay(self._prompts(seeding), progress=progress)
            start, history = 0, []
        if not replay:
            raise RuntimeError("the teacher produced no usable replay samples (all shorter than 2 tokens)")
        rng = random.Random(c.seed)
        batches = [rng.sample(replay, min(len(replay), c.seeding.batch_size)) for _ in range(c.seeding.steps)]
        kl_before = state["kl_before"] if state else seeding.replay_kl(replay)
        budget = c.seeding.token_budget
        trained = sum(m["tokens"] for m in history)
        # with a token budget the bar counts tokens (the budget ends the sleep), else steps
        bar = tqdm(desc=f"sleep {self.sleeps}", unit="tok" if budget else "step", disable=not progress,
                   initial=trained if budget else start, total=budget or c.seeding.steps)
        for step in range(start, c.seeding.steps):
            if budget is not None and trained >= budget:
                break
            metrics = {"sleep": self.sleeps, "step": step + 1, **seeding.step(batches[step])}
            history.append(metrics)
            trained += metrics["tokens"]
            bar.update(metrics["tokens"] if budget else 1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", kl=f"{metrics['kl_teacher']:.3f}")
            done = step + 1 == c.seeding.steps or (budget is not None and trained >= budget)
            if root:
                self._log(root, metrics)
                if (step + 1) % c.checkpoint_every == 0 or done:
                    checkpoint.save_checkpoint(root, step + 1, {
                        "slot": slot, "buffer": self.buffer, "asked": self.asked, "replay": replay, "history": history,
                        "kl_before": kl_before,
                        "optimizer": seeding.optimizer.state_dict(), "seeding_rng": seeding.rng.getstate(),
                        "rng": checkpoint.rng_state(), "wake": self.fast.state_dict() if self.fast else None},
                        self.memory)
        bar.close()
        summary = {"sleep": self.sleeps, "level": c.receiver_level, "slot": slot, "documents": len(self.buffer),
                   "replay_samples": len(replay), "steps": len(history), "kl_before": kl_before,
                   "kl_after": seeding.replay_kl(replay), "history": history,
                   "fast_updates": self.fast.updates if self.fast else 0}
        self.buffer, self.asked = [], []  # consolidated: the documents leave the context
        if c.teacher == "memory":
            self.fast.reset()  # the sender's update: its knowledge now lives in the receiver's expert
        self.sleeps += 1
        return summary

    # ------------------------------------------------------------------ internals
    def _prompts(self, seeding: KnowledgeSeeding):
        c = self.config
        rng = random.Random(c.seed)
        prompts = []
        if "continuation" in c.prompt_builders:
            prompts += continuation_prompts(self.buffer, rng, per_document=2)
        if "self_question" in c.prompt_builders:
            params = SamplingParams(n=2, temperature=0.7, max_tokens=32, seed=c.seed)
            with seeding.teacher():
                outputs = self.engine.generate(question_requests(self.buffer, self.tokenizer), params,
                                               progress=False)
            asked = [[completion.text or "" for completion in output.completions] for output in outputs]
            prompts += self_question_prompts(self.buffer, asked, self.tokenizer)
        if "wake_questions" in c.prompt_builders:
            prompts += self_question_prompts(self.buffer, self.asked, self.tokenizer, builder="wake_questions")
        rng.shuffle(prompts)
        if c.teacher == "memory":  # the knowledge is in the fast level: no document in the teacher's prompt
            prompts = [dataclasses.replace(prompt, teacher=prompt.student) for prompt in prompts]
        return prompts[:c.max_prompts]

    @staticmethod
    def _log(root: Path, metrics: dict) -> None:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
