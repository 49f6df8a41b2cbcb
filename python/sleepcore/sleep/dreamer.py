"""Learning to dream (METHOD.md §4): ``Dreamer.fit(tasks)`` meta-trains the dream generator by ReST-EM.

A task is a training document with its questions and gold answers
(:class:`~sleepcore.sleep.dream_tasks.DreamTask`). Each round:

1. **generate**: the generator (its own expert, active only while it writes) with random-expert
   noise writes ``m`` dreams per document (:func:`~sleepcore.sleep.dreams.write_dreams`);
2. **select**: gradient importance keeps ``k + b`` per document (:mod:`~sleepcore.sleep.dream_selection`);
3. **inner loop**: one fresh adapter per kept dream, all trained at once on the dream's lines plus
   the document (:mod:`~sleepcore.sleep.inner_loop`, :class:`~sleepcore.train.batched.BatchedRuntime`)
   the way the sleep learns dreams (``objective``): next-token training (SEAL's), or forward KL to
   the model reading the document first;
4. **reward**: the closed-book score of each adapted model on its document's questions (the
   greedy answers by ``metric(prediction, gold)``, e.g. the tasks' "contains", passed in so that
   ``sleep`` does not import ``tasks``; or the gold answers' log-probability per token) against
   the baseline's (the unadapted model, or an adapter trained on the document alone):
   ``"improves"`` or ``"best_of_m"``;
5. **ReST-EM**: next-token training of the generator's expert on (dream prompt, rewarded dream),
   through :class:`~sleepcore.sleep.sft.NextTokenStage` and :func:`~sleepcore.sleep.stage.run_stage`
   (with ``generator_distinct_lines``, each rewarded dream without the lines an earlier rewarded
   dream of its document wrote: :mod:`~sleepcore.sleep.rest_em`).

The generator keeps training from round to round (SEAL continues from the previous round's model).
Resumable: a round's dreams, selection and rewards are written atomically to
``round-<r>/dreams.json`` before its generator update (whose steps are checkpointed by
``run_stage``); ``generator.safetensors`` is then rewritten atomically and a checkpoint (memory
with the generator, history, base scores) closes the round. ``metrics.jsonl`` has one line per round.

Under torchrun (:mod:`sleepcore.distributed`) every rank computes the base scores, writes and
selects the dreams of its block of the documents (with noise redrawn at every engine step, which
every sequence of a step shares, one engine call per document, in a single process too, so that
a document's dreams do not depend on the others), and trains its block of the inner-loop chunks
(``inner_adapters`` kept dreams each, cut from the whole round's kept list, so a chunk and its
seed are those of a single process: with ``W`` ranks keep ``inner_adapters <= kept dreams / W``
for every rank to have one). The dreams and scores are gathered, so every rank holds the same
records and rewards; every seed is a task's or a chunk's, never a rank's. ReST-EM trains through
the stage's :func:`~sleepcore.distributed.training_runtime` (each rank on its block of every
global batch, the loss divided by the token count summed over ranks), so the generator's update
is the single-process one. Only rank 0 shows progress and writes ``dreams.json``,
``metrics.jsonl`` and the generator; the round checkpoints are sharded
(:mod:`sleepcore.distributed.checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from sleepcore.distributed import world
from sleepcore.distributed.checkpoint import load_checkpoint, save_checkpoint
from sleepcore.lm import as_examples, pad_id, qa_examples, qa_prompt
from sleepcore.memory.batched import batched_adapters
from sleepcore.rollout import Engine
from sleepcore.sleep.dream_config import DreamingConfig
from sleepcore.sleep.dream_selection import select_dreams
from sleepcore.sleep.dream_tasks import DreamTask, assign_rewards, check_tasks
from sleepcore.sleep.dreams import Dream, answered_examples, expert_weights, save_generator, write_dreams
from sleepcore.sleep.inner_loop import answer_with_adapters, gold_logprobs_with_adapters, train_adapters
from sleepcore.sleep.prompts import document_reader
from sleepcore.sleep.sentence_reader import reader_for
from sleepcore.sleep.rest_em import update_generator
from sleepcore.sleep.stage import StageContext
from sleepcore.train import OptimizerConfig, atomic_write_text, latest_checkpoint
from sleepcore.train.batched import BatchedRuntime
from sleepcore.validation import instance, integer

GENERATOR_FILE = "generator.safetensors"


class Dreamer:
    """Meta-trains a dream generator (see the module docstring).

    Args:
        model, tokenizer, memory: a wrapped causal LM; the generator is an expert of
            ``config.generator_level`` (a free slot is taken on a fresh start).
        config: :class:`DreamingConfig`.
        metric: ``metric(prediction, gold) -> float`` in [0, 1] (the tasks' "contains").
        output_dir: checkpoints, ``metrics.jsonl``, ``round-<r>/`` and ``generator.safetensors``.
        engine: a rollout engine on ``model`` (default: a new one). seed: every draw of the run.
    """

    def __init__(self, model, tokenizer, memory, config: DreamingConfig, *, metric: Callable[[str, str], float],
                 output_dir, engine: Engine | None = None, seed: int = 0):
        self.config = instance("config", config, DreamingConfig)
        integer("generator_level", config.generator_level, maximum=len(memory.config.levels) - 1)
        if not callable(metric):
            raise TypeError(f"metric must be callable (prediction, gold) -> float, got {type(metric).__name__}")
        self.model, self.tokenizer, self.memory, self.metric = model, tokenizer, memory, metric
        self.engine = engine or Engine(model, tokenizer)
        self.root, self.seed = Path(output_dir), integer("seed", seed)
        self.level, self.slot = config.generator_level, None
        self.pad = pad_id(tokenizer)

    @contextlib.contextmanager
    def generator_on(self):
        self.memory.activate(self.level, self.slot)
        try:
            yield
        finally:
            self.memory.deactivate(self.level, self.slot)

    def fit(self, tasks, *, progress: bool = True) -> dict:
        """Runs (or resumes) ``config.rounds`` ReST-EM rounds; returns ``{"rounds": [per-round metrics],
        "base_scores", "base_question_scores", "generator": path}`` (the baseline's score per task,
        and per question of each task)."""
        tasks = check_tasks(tasks)
        checkpoint = latest_checkpoint(self.root / "rounds")
        if checkpoint is not None:
            tensors, state = load_checkpoint(checkpoint, self.memory)
            torch.set_rng_state(tensors["rng.torch"])  # a resumed run draws what an unbroken one would
            self.slot, history, base = state["slot"], state["history"], state["base_scores"]
            base_questions = state.get("base_question_scores")  # None in a run checkpointed before it was kept
            if base_questions is None and self.config.reward == "covers":
                raise ValueError(f"the run in {self.root} kept no per-question baseline, which reward = 'covers' "
                                 f"needs: start it in a new output_dir")
        else:
            # B = 0: round 0's generator is the model itself; a seeded A, so a restarted round 0 is the same
            self.slot = self.memory.new_expert(self.level, seed=self.seed)
            self.memory.deactivate(self.level, self.slot)
            history, (base, base_questions) = [], self.base_scores(tasks, progress=progress)
        if len(base) != len(tasks):
            raise ValueError(f"the run in {self.root} has {len(base)} tasks, got {len(tasks)}")
        main = world.is_main()
        if main:
            atomic_write_text(self._metrics_path(), "".join(json.dumps(record) + "\n" for record in history))
        for index in range(len(history), self.config.rounds):
            started = time.perf_counter()
            measured = self.measured(tasks, base, index, base_questions=base_questions, progress=progress)
            update = self._rest_em(self.root / f"round-{index:02d}", measured, index, progress)
            record = {"round": index, **measured["summary"], **update, "seconds": time.perf_counter() - started}
            history.append(record)
            if main:  # before the checkpoint: a crash between the two reruns the round to the same weights
                save_generator(self.root / GENERATOR_FILE, expert_weights(self.memory, self.level, self.slot),
                               info={"rounds": index + 1, "level": self.level})
            save_checkpoint(self.root / "rounds", index + 1, tensors={"rng.torch": torch.get_rng_state()},
                            memory=self.memory, state={"slot": self.slot, "history": history, "base_scores": base,
                                                       "base_question_scores": base_questions})
            if main:
                with open(self._metrics_path(), "a") as handle:
                    handle.write(json.dumps(record) + "\n")
        return {"rounds": history, "base_scores": base, "base_question_scores": base_questions,
                "generator": str(self.root / GENERATOR_FILE)}

    def _metrics_path(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / "metrics.jsonl"

    def measured(self, tasks, base: list[float], index: int, *, base_questions: list[list[float]] | None = None,
                 progress: bool = False) -> dict:
        """Round ``index``'s :meth:`measure` (seed ``seed * 1000 + index``) with the generator as it is,
        cached in ``round-<index>/dreams.json``: a round already measured is read back, not redone.
        ``index = config.rounds`` (after :meth:`fit`) measures the trained generator the same way."""
        saved = self.root / f"round-{index:02d}" / "dreams.json"
        if world.all_gather_objects(saved.is_file())[0]:  # rank 0's view: every rank takes the same branch
            return json.loads(saved.read_text())
        measured = self.measure(tasks, base, seed=self.seed * 1000 + index, base_questions=base_questions,
                                progress=progress, desc=f"round {index}")
        if world.is_main():
            saved.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved, json.dumps(measured))
        return measured

    # ------------------------------------------------------------------ one round's measurement
    def base_scores(self, tasks, *, progress: bool = False) -> tuple[list[float], list[list[float]]]:
        """The reward's baseline (``config.reward_baseline``, generator off): the model as it is
        (``"unadapted"``) or a fresh adapter trained on the document alone (``"document"``, one
        inner loop per chunk of ``inner_adapters`` tasks), scored as :meth:`_scores` does: per task,
        and per question of each task."""
        tasks = check_tasks(tasks)
        if self.config.reward_baseline == "unadapted":
            with batched_adapters(self.memory, 1, rank=self.config.inner_rank) as adapters:
                return self._scores(adapters, tasks, [-1] * len(tasks))
        size, scores, questions = self.config.inner_adapters, [], []
        for start in tqdm(range(0, len(tasks), size), desc="document baselines", unit="chunk",
                          disable=not (progress and world.is_main())):
            chunk = tasks[start:start + size]
            examples = [as_examples(self.tokenizer, [task.document]) for task in chunk]
            # a negative seed: apart from every round's chunk seeds (seed * 7919 + start, seed >= 0)
            own, per_question = self._inner_loop(examples, chunk, seed=-(self.seed * 7919 + start + 1))
            scores, questions = scores + own, questions + per_question
        return scores, questions

    def _scores(self, adapters, tasks, index: list[int]) -> tuple[list[float], list[list[float]]]:
        """The closed-book scores through adapter ``index[t]`` (-1: none) of each task: the mean of
        the metric over its questions, or the mean log-probability per gold answer token of all its
        questions; and per question (the metric, or that answer's mean log-probability per token)."""
        prompts, rows = [], []
        for row, (task, k) in enumerate(zip(tasks, index)):
            for question, gold in task.questions:
                prompts.append(qa_prompt(self.tokenizer, question))
                rows.append((row, k, gold))
        adapter_index = [k for _, k, _ in rows]
        totals, counts, questions = [0.0] * len(tasks), [0] * len(tasks), [[] for _ in tasks]
        if self.config.reward_score == "gold_log_prob":
            examples = qa_examples(self.tokenizer, prompts, [gold for _, _, gold in rows])
            logprobs = gold_logprobs_with_adapters(self.model, self.tokenizer, adapters, examples, adapter_index)
            for (row, _, _), values in zip(rows, logprobs):
                totals[row], counts[row] = totals[row] + sum(values), counts[row] + len(values)
                questions[row].append(sum(values) / len(values))
        else:
            answers = answer_with_adapters(self.model, self.tokenizer, adapters, prompts, adapter_index)
            for (row, _, gold), prediction in zip(rows, answers):
                questions[row].append(float(self.metric(prediction, gold)))
                totals[row], counts[row] = totals[row] + questions[row][-1], counts[row] + 1
        return [total / count for total, count in zip(totals, counts)], questions

    def measure(self, tasks, base: list[float], *, seed: int, base_questions: list[list[float]] | None = None,
                progress: bool = False, desc: str = "dreams") -> dict:
        """Generate, select, inner loop and reward with the current generator (no update): per task
        its dreams with ``selection_score``, ``kept``, ``score`` (adapted), ``question_scores`` (per
        question; ``base_questions`` are the baseline's, which ``reward = "covers"`` needs) and ``reward``, and a
        ``summary`` (means over kept dreams; ``reward`` is the fraction rewarded). Under torchrun a
        collective: each rank works on its blocks and every rank returns the whole result."""
        if self.slot is None:
            raise RuntimeError("measure() needs the generator: call fit() first (rounds = 0 is not allowed; "
                               "an untrained generator is fit's round 0)")
        c, tasks = self.config, check_tasks(tasks)
        selected = world.gather(self._select(tasks, world.block(list(range(len(tasks)))), seed=seed,
                                             progress=progress, desc=desc))
        records = [own for own, _ in selected]
        kept = [(t, k) for t, (_, order) in enumerate(selected) for k in order]  # (task, dream), selection order
        chunks = [(start, kept[start:start + c.inner_adapters]) for start in range(0, len(kept), c.inner_adapters)]
        mine, scores, done = world.block(chunks), [], []
        reward_options = {"margin": c.reward_margin, "base_questions": base_questions}
        bar = tqdm(total=sum(len(chunk) for _, chunk in mine), desc=f"{desc} inner loops", unit="dream",
                   disable=not (progress and world.is_main()))
        for start, chunk in mine:
            examples = [[tuple(example) for example in records[t][k]["examples"]]
                        + as_examples(self.tokenizer, [tasks[t].document]) for t, k in chunk]
            questions = [{tuple(p): teacher for p, teacher in records[t][k]["questions"]} for t, k in chunk]
            scores.append(self._inner_loop(examples, [tasks[t] for t, _ in chunk], seed=seed * 7919 + start,
                                           questions=questions))
            for (t, k), score, per_question in zip(chunk, *scores[-1]):
                records[t][k].update(score=score, question_scores=per_question)
            done += [records[t][k] for t, k in chunk]
            bar.update(len(chunk))
            bar.set_postfix(reward=f"{assign_rewards(records, base, c.reward, done, **reward_options):.2f}")
        bar.close()
        for (_, chunk), own in zip(chunks, world.gather(scores)):
            for (t, k), score, per_question in zip(chunk, *own):
                records[t][k].update(score=score, question_scores=per_question)
        assign_rewards(records, base, c.reward, **reward_options)
        scored = [records[t][k] for t, k in kept]
        best = [max(r["score"] for r in own if r["kept"]) for own in records]
        summary = {"documents": len(tasks), "dreams": sum(map(len, records)), "kept": len(kept),
                   "base_score": sum(base) / len(base), "adapted_score": sum(r["score"] for r in scored) / len(scored),
                   "best_score": sum(best) / len(best), "rewarded": sum(r["reward"] for r in scored),
                   "reward": sum(r["reward"] for r in scored) / len(scored)}
        return {"dreams": records, "summary": summary}

    def _select(self, tasks: list[DreamTask], indices: list[int], *, seed: int, progress: bool,
                desc: str) -> list[tuple[list[dict], list[int]]]:
        """Per task of ``indices``: its dreams' records (``kept``, ``selection_score``, ``score`` None,
        ``reward`` 0) and the kept dreams' indices in selection order."""
        documents = [tasks[t].document for t in indices]
        dreams = self._write(documents, seed=seed, progress=progress, desc=desc)
        answered, asked = answered_examples(self.engine, self.tokenizer, dreams, documents, self.config,
                                            teacher=contextlib.nullcontext, seed=seed,
                                            reader=reader_for(self.config.sentence_finder, self.model,
                                                              self.tokenizer, self.memory.switched_off))
        selected = []
        for t, own, examples, questions in zip(indices, dreams, answered, asked):
            document = as_examples(self.tokenizer, [tasks[t].document])
            selection = select_dreams(self.model, self.memory, examples, document, self.pad, self.config,
                                      seed=seed * 100_003 + t)
            records = [{**dream.to_json(), "document": t, "kept": k in selection.kept, "selection_score": value,
                        "examples": mine,
                        "questions": [[p, questions[tuple(p)]] for p, _ in mine if tuple(p) in questions],
                        "score": None, "reward": 0}
                       for k, (dream, value, mine) in enumerate(zip(own, selection.scores, examples))]
            selected.append((records, selection.kept))
        return selected

    def _write(self, documents: list[str], *, seed: int, progress: bool, desc: str) -> list[list[Dream]]:
        """The generator's dreams of ``documents`` (:func:`write_dreams`). Sampling streams are per
        prompt, but noise redrawn at every engine step (``noise_resample = "step"``) is shared by the
        sequences of a step, so a dream would depend on which documents share its engine call (and
        so on the number of ranks): with that noise each document gets its own call, else one call
        writes them all."""
        c = self.config
        alone = c.noise and c.noise_resample == "step"
        groups = [[document] for document in documents] if alone else [documents] if documents else []
        progress, dreams = progress and world.is_main(), []
        with self.generator_on():
            for group in tqdm(groups, desc=f"{desc} dreams", unit="document", disable=not (progress and alone)):
                dreams += write_dreams(self.engine, self.tokenizer, self.memory, group, c, seed=seed,
                                       progress=progress and not alone)
        return dreams

    def _inner_loop(self, examples, tasks, *, seed: int, questions: list[dict] | None = None
                    ) -> tuple[list[float], list[list[float]]]:
        """Adapter k trained on ``examples[k]`` as the sleep will learn a dream (``config.objective``:
        next-token training, or forward KL to the model reading ``tasks[k]``'s document,
        :func:`~sleepcore.sleep.prompts.document_reader` with ``questions[k]``), then scored on
        ``tasks[k]``."""
        c = self.config
        optimizer = OptimizerConfig(learning_rate=c.inner_learning_rate, compute_dtype=c.optimizer.compute_dtype)
        teacher_prompt = None
        if c.objective == "distill":
            questions = questions or [{} for _ in tasks]
            readers = [document_reader(self.tokenizer, task.document, own) for task, own in zip(tasks, questions)]
            teacher_prompt = lambda k, prompt: readers[k](prompt)  # noqa: E731
        with batched_adapters(self.memory, len(examples), rank=c.inner_rank, alpha=c.inner_alpha,
                              generator=torch.Generator().manual_seed(seed)) as adapters:
            runtime = BatchedRuntime(self.model, adapters, optimizer)
            train_adapters(runtime, examples, self.pad, epochs=c.inner_epochs, batch_size=c.inner_batch_size,
                           max_steps=c.inner_steps, max_tokens=c.inner_max_tokens, seed=seed,
                           teacher_prompt=teacher_prompt)
            return self._scores(adapters, tasks, list(range(len(tasks))))

    # ------------------------------------------------------------------ ReST-EM
    def _rest_em(self, round_dir: Path, measured: dict, index: int, progress: bool) -> dict:
        """Round ``index``'s generator update on its rewarded dreams (:func:`~sleepcore.sleep.rest_em.update_generator`)."""
        context = StageContext(self.model, self.tokenizer, self.memory, self.engine, self.level, self.slot,
                               seed=self.seed * 1000 + index)
        with self.generator_on():
            return update_generator(context, self.config, measured["dreams"], round_dir / "generator", index=index,
                                    progress=progress)
