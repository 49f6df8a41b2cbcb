"""The Stage protocol and the one loop that runs any stage (METHOD.md §2: a sleep is a sequence of
stages, consolidation then dreaming).

A stage owns its objective and its training runtime; :func:`run_stage` owns everything around
it, once: the progress bar, ``metrics.jsonl`` (one JSON line per step), the step and token budget,
shuffled epochs over the stage's items (:class:`~sleepcore.train.EpochBatches`), atomic
checkpoints every ``checkpoint_every`` steps and at the end, and resume: an interrupted stage
restarts from its last checkpoint and draws the same batches an uninterrupted run would. A
finished stage's final checkpoint holds its summary, so a sleep interrupted in a later stage skips
it on resume.

Under torchrun every rank runs this loop in step (the same global batches; the stage's runtime
takes each rank's block of them), only rank 0 shows progress and writes ``metrics.jsonl``, and
checkpoints are sharded (:mod:`sleepcore.distributed.checkpoint`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from sleepcore.distributed import world
from sleepcore.distributed.checkpoint import load_checkpoint, save_checkpoint
from sleepcore.train import EpochBatches, atomic_write_text, latest_checkpoint
from sleepcore.train.checkpoint import random_state, restore_random_state


@dataclass
class StageContext:
    """What a stage is built from: the wrapped model, its tokenizer, memory and rollout engine, the
    new expert ``(level, slot)`` it trains, its seed, the experts that are on in the teacher only,
    and whether the teacher reads the wake documents (the in-context teacher)."""

    model: object
    tokenizer: object
    memory: object
    engine: object
    level: int
    slot: int
    seed: int = 0
    teacher_experts: list = field(default_factory=list)
    teacher_reads_documents: bool = True


class Stage(Protocol):
    """What :func:`run_stage` needs of a stage.

    Attributes:
        name: the stage's registry name (``"seeding"``, ``"sft"``, ...).
        config: has ``steps`` (an upper bound), ``batch_size`` and ``token_budget`` (None or an int:
            the stage stops at the first step that reaches it), and may have ``max_epochs`` (None or
            an int: the stage stops after that many passes over its items).
        items: the training items, available after ``prepare`` or ``load_state_dict``.
        skipped: optional; a stage that leaves ``items`` empty on purpose sets it to the reason, and
            :func:`run_stage` then returns its summary with no step (else no items is an error).
        rehearsal: optional; a stage that has it is given, before ``prepare``, the items of the
            sleep's earlier stages (:class:`~sleepcore.sleep.sleeper.Sleeper`) to learn beside its own.
    """

    name: str
    config: object
    items: list

    def prepare(self, buffer, *, progress: bool) -> None:
        """Builds ``items`` from the wake buffer (e.g. the replay set)."""

    def step(self, batch: list) -> dict:
        """One optimisation step on ``batch`` (a list of items); metrics with ``"tokens"`` (tokens
        that received a gradient) and ``"loss"``."""

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, json_state)``: everything needed to resume, runtime included."""

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict) -> None: ...

    def summary(self) -> dict:
        """The stage's own summary, after its last step (JSON-serialisable)."""


def resume_point(root: Path | None, memory) -> tuple[dict, dict] | None:
    """The latest checkpoint under ``root`` as ``(tensors, state)`` (its memory loaded into
    ``memory``), or None."""
    directory = latest_checkpoint(root) if root is not None else None
    return load_checkpoint(directory, memory) if directory is not None else None


def run_stage(stage: Stage, buffer=None, *, memory=None, root: Path | None = None, resumed=None, seed: int = 0,
              checkpoint_every: int = 10, owner_state=dict, progress: bool = True, desc: str | None = None,
              log_fields: dict | None = None) -> dict:
    """Runs ``stage`` to its budget; returns ``{"steps", "tokens", "history", **stage.summary()}``.

    Args:
        stage: a :class:`Stage`.
        buffer: passed to ``stage.prepare`` on a fresh start.
        memory: saved with (and restored from) each checkpoint.
        root: the stage's checkpoint folder (None: no checkpoints, no metrics file).
        resumed: ``resume_point(root, memory)`` when the caller already loaded it (it needs its own
            ``owner`` state first), else None to start afresh or look it up here.
        seed: the batch order's seed.
        owner_state: a callable returning the caller's JSON state, stored as ``state["owner"]``.
        log_fields: extra fields written into every metrics line (e.g. the sleep's index).
    """
    c = stage.config
    root = Path(root) if root is not None else None
    main, progress = world.is_main(), progress and world.is_main()
    if resumed is None and root is not None:
        resumed = resume_point(root, memory)
    history = []
    if resumed is not None:
        tensors, state = resumed
        stage.load_state_dict({k[len("stage."):]: v for k, v in tensors.items() if k.startswith("stage.")},
                              state["stage"])  # a finished stage too: a later stage may rehearse its items
        if state.get("finished"):
            return state["summary"]
        history = state["history"]
        restore_random_state(state["python_rng"])
        torch.set_rng_state(tensors["rng.torch"])
        if main:
            atomic_write_text(root / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
    else:
        stage.prepare(buffer, progress=progress)
    if not stage.items:
        if getattr(stage, "skipped", None) is None:
            raise RuntimeError(f"stage {stage.name!r} has nothing to train on (no items after prepare)")
        summary = {"steps": 0, "tokens": 0, "history": [], **stage.summary()}
        if root is not None:
            _save(root, stage, memory, [], None, owner_state, summary=summary)
        return summary
    batches = EpochBatches(len(stage.items), c.batch_size, seed)
    if resumed is not None:
        batches.load_state_dict(resumed[1]["batches"])
    budget, trained = c.token_budget, sum(m["tokens"] for m in history)
    bar = tqdm(desc=desc or stage.name, unit="tok" if budget else "step", disable=not progress,
               initial=trained if budget else len(history), total=budget or c.steps)
    epochs = getattr(c, "max_epochs", None)
    for step in range(len(history), c.steps):
        if (budget is not None and trained >= budget) or (epochs is not None and batches.completed_epochs >= epochs):
            break
        batch = [stage.items[i] for i in batches.next()]
        metrics = {**(log_fields or {}), "stage": stage.name, "step": step + 1, "epoch": batches.epoch,
                   **stage.step(batch)}
        history.append(metrics)
        trained += metrics["tokens"]
        bar.update(metrics["tokens"] if budget else 1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        done = step + 1 == c.steps or (budget is not None and trained >= budget)
        if root is not None:
            if main:
                _append_line(root / "metrics.jsonl", metrics)
            if (step + 1) % checkpoint_every == 0 and not done:
                _save(root, stage, memory, history, batches, owner_state)
    bar.close()
    summary = {"steps": len(history), "tokens": trained, "history": history, **stage.summary()}
    if root is not None:
        _save(root, stage, memory, history, batches, owner_state, summary=summary)
    return summary


def _save(root: Path, stage: Stage, memory, history: list, batches: EpochBatches | None, owner_state, *,
          summary=None):
    tensors, state = stage.state_dict()
    tensors = {f"stage.{name}": tensor for name, tensor in tensors.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    save_checkpoint(root, len(history), tensors=tensors, memory=memory, state={
        "stage": state, "history": history, "batches": batches and batches.state_dict(), "python_rng": random_state(),
        "owner": owner_state(), "finished": summary is not None, "summary": summary})


def _append_line(path: Path, metrics: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(metrics) + "\n")
