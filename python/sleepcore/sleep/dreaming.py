"""The Dreaming stage (METHOD.md §4, "Dreaming during sleep"): after consolidation, for each
buffered document the dream generator (with random-expert noise; on the model as it is, or on
the base model with ``writer = "base"``) writes ``m`` dreams
(:mod:`sleepcore.sleep.dreams`), gradient importance keeps ``k + b`` of them
(:mod:`sleepcore.sleep.dream_selection`; with ``answers = "teacher"`` a dream's questions are
first answered by the teacher reading the document), and an expert learns them: the sleep's
consolidated expert, or a new expert of the same level (``DreamingConfig.expert``). No gold
answer is used.
With ``rehearse_earlier_dreams`` the stage also relearns a share of the questions (with their taught
answers) that earlier sleeps' Dreaming learnt (drawn at random, or spread over their answers:
:func:`spread_by_answer`); it leaves its own in ``learnt_questions``, which the
:class:`~sleepcore.sleep.sleeper.Sleeper` keeps in the wake buffer for later sleeps.
With ``question_rewrites`` each kept question is also learnt in the base model's other wordings
(:mod:`sleepcore.sleep.question_rewrites`).
With ``distinct_questions`` a document's question asked by several kept dreams is learnt once
(:func:`distinct_questions`).
With ``balance_answers`` each document's question items are resampled so that every distinct
answer is asked about equally often (:func:`balanced_questions`).
With ``objective = "sft"`` the training is :class:`~sleepcore.sleep.sft.NextTokenStage`'s step on
the kept dreams' lines and the documents; with ``"distill"`` it is Knowledge Seeding's step
(forward KL, off-policy, no LTI) on the same token sequences, the teacher being the model without
the trained expert with the line's document in its context. Either runs under
:func:`~sleepcore.sleep.stage.run_stage` like any stage (progress, metrics, budget, checkpoints,
resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import warnings

import torch

from sleepcore.distributed import world
from sleepcore.lm import as_examples, pad_id
from sleepcore.sleep.config import KnowledgeSeedingConfig, NextTokenConfig
from sleepcore.sleep.dream_config import DOCUMENT_ANSWERS, DreamingConfig
from sleepcore.sleep.dream_selection import select_dreams
from sleepcore.sleep.dreams import answered_examples, generator_expert, load_generator, write_dreams
from sleepcore.sleep.knowledge_seeding import KnowledgeSeeding
from sleepcore.sleep.prompts import document_reader
from sleepcore.sleep.question_rewrites import rewritten_questions
from sleepcore.sleep.replay import ReplaySample
from sleepcore.sleep.sentence_reader import reader_for
from sleepcore.sleep.sft import NextTokenStage
from sleepcore.sleep.stage import StageContext

SAMPLES = 3  # dream texts kept in the summary (per sleep) as quality samples


class DreamingStage:
    """Writes, selects and learns dreams of the wake buffer's documents.

    Args:
        context: the sleep's model, tokenizer, memory, engine, its expert ``(level, slot)`` and seed.
        config: :class:`DreamingConfig`; ``generator_path`` (None: the model itself writes, SEAL's
            round 0) is loaded into a free slot of ``generator_level`` while it writes.
    """

    name = "dreaming"

    def __init__(self, context: StageContext, config: DreamingConfig):
        self.context, self.config = context, config
        self.items: list = []  # (prompt ids, response ids) pairs ("sft") or ReplaySamples ("distill")
        self.slot: int | None = None
        self.trainer: NextTokenStage | KnowledgeSeeding | None = None
        self.report: dict = {}
        self.skipped: str | None = None  # why the stage trains nothing (min_questions), or None
        self.rehearsal: list = []  # the sleep's earlier stages' items (the Sleeper sets them)
        self.learnt_questions: list = []  # [prompt ids, response ids] of the questions it learns (for later sleeps)

    def _train(self, slot: int) -> None:
        c = self.config
        self.slot = slot
        context = dataclasses.replace(self.context, slot=slot)
        if c.objective == "distill":
            self.trainer = KnowledgeSeeding(context, KnowledgeSeedingConfig(
                alpha=1.0, beta=0.0, on_policy=0.0, hard_label_weight=c.hard_label_weight,
                hard_label_items=c.hard_label_items, steps=c.steps, batch_size=c.batch_size,
                token_budget=c.token_budget, optimizer=c.optimizer))
        else:
            self.trainer = NextTokenStage(context, NextTokenConfig(steps=c.steps, batch_size=c.batch_size,
                                                                   token_budget=c.token_budget, optimizer=c.optimizer))

    def _distillation_items(self, records: list[dict], documents: list[str]) -> list:
        """Replay samples of the records' items, each read by the teacher with its document
        (:func:`~sleepcore.sleep.prompts.document_reader`, the record's questions with their own
        teacher prompts), with the teacher's states cached. With ``answers`` "sentence" or "span" a
        question's item has a fixed response (``ReplaySample.fixed``: taken from the document)."""
        samples, given = [], self.config.answers in DOCUMENT_ANSWERS
        for record in records:
            questions = {tuple(prompt): teacher for prompt, teacher in record["questions"]}
            read = document_reader(self.context.tokenizer, documents[record["document"]], questions)
            samples += [ReplaySample(prompt, read(prompt), response, fixed=given and tuple(prompt) in questions)
                        for prompt, response in record["items"]]
        return self.trainer.cache_teacher(samples)

    # ------------------------------------------------------------------ the stage protocol
    def prepare(self, buffer, *, progress: bool = True) -> None:
        """Dreams of every document of ``buffer`` (a wake buffer or a list of texts), the kept ones'
        lines and the documents as items, and the expert that learns them. Under torchrun each rank
        dreams and selects for its block of the documents, and the items are gathered in order."""
        c, context = self.config, self.context
        documents = list(buffer.documents if hasattr(buffer, "documents") else buffer)
        if not documents:
            raise ValueError("dreaming needs documents: the wake buffer is empty")
        mine = world.block(list(enumerate(documents)))
        fresh = c.expert != "consolidated"
        self._train(context.memory.new_expert(context.level, seed=context.seed) if fresh else context.slot)
        weights = load_generator(c.generator_path) if c.generator_path else None
        with generator_expert(context.memory, c.generator_level, weights) as generator:  # a free slot, first
            own = [] if generator is None else [(c.generator_level, generator)]
            with context.memory.switched_off(keep=own) if c.writer == "base" else contextlib.nullcontext():
                dreams = write_dreams(context.engine, context.tokenizer, context.memory, [d for _, d in mine], c,
                                      seed=context.seed, progress=progress) if mine else []
        answered, asked = answered_examples(context.engine, context.tokenizer, dreams, [d for _, d in mine], c,
                                            teacher=self.trainer.teacher if c.answers == "teacher" else None,
                                            seed=context.seed, progress=progress,
                                            reader=reader_for(c.sentence_finder, context.model, context.tokenizer,
                                                              context.memory.switched_off))
        records = [self._select(index, document, own, examples, questions) for (index, document), own, examples,
                   questions in zip(mine, dreams, answered, asked)]
        rewrites = 0
        if c.question_rewrites and records:
            records, rewrites = rewritten_questions(context.engine, context.tokenizer, context.memory, records, dreams,
                                                    [d for _, d in mine], c, seed=context.seed, progress=progress)
        records = world.gather(records)
        rewrites = sum(world.gather([rewrites]))
        asked = sum(len(record["questions"]) for record in records) - rewrites  # as selected: what min_questions counts
        if c.distinct_questions:
            records = [distinct_questions(record) for record in records]
        if c.balance_answers:
            records = [balanced_questions(record, context.tokenizer, random.Random(context.seed * 100_003 + index))
                       for index, record in enumerate(records)]
        scores = [score for record in records for score in record["scores"]]
        examples = [item for record in records for item in record["items"]]
        self.report = {"dreams": sum(record["dreams"] for record in records), "kept": len(scores),
                       "documents": len(documents), "kept_score_mean": sum(scores) / len(scores) if scores else 0.0,
                       "questions": sum(len(record["questions"]) for record in records), "kept_questions": asked,
                       "question_rewrites": rewrites,
                       "samples": [text for record in records for text in record["samples"]][:SAMPLES]}
        hint = "; a consolidated expert can stop the writer asking: try writer = 'base'" if c.writer == "model" else ""
        if c.answers != "dream" and asked < c.min_questions:
            self.skipped = (f"{asked} answered questions in the kept dreams, fewer than "
                            f"min_questions = {c.min_questions}: so few would teach their answers to every question")
            warnings.warn(f"dreaming trains nothing: {self.skipped}{hint}", RuntimeWarning, stacklevel=2)
            if fresh:
                context.memory.deactivate(context.level, self.slot)
            self.items = self.trainer.items = []
            return
        if c.rehearse_earlier_dreams > 0:
            self.learnt_questions = [pair for record in records for pair in _question_items(record)]
        if c.answers != "dream" and not self.report["questions"]:
            warnings.warn(f"dreaming: no kept dream holds a question answered by {c.answers!r}, so only the dreams' "
                          f"statements and the documents are learnt{hint}", RuntimeWarning, stacklevel=2)
        if c.objective == "distill":
            examples = self._distillation_items(records, documents)
            self.report["dream_kl_before"] = self.trainer.replay_kl(examples)
            self.report["prepare_forward_tokens"] = sum(len(item.teacher_prompt) + len(item.student_prompt)
                                                        + 2 * len(item.response) for item in examples)
        earlier = self._earlier_dream_items(buffer, len(examples))
        rehearsed = self._rehearsed_items() if c.rehearse_consolidation else []
        self.report.update(rehearsed=len(rehearsed), rehearsed_dreams=len(earlier))
        self.items = self.trainer.items = examples + earlier + rehearsed

    def _earlier_dream_items(self, buffer, count: int) -> list:
        """``rehearse_earlier_dreams * count`` (rounded up; at most all) of the questions that earlier
        sleeps' Dreaming learnt (``buffer.earlier_dreams``), drawn as ``rehearse_draw`` says, in the trainer's item
        form: replay samples whose teacher reads no document (so it keeps the earlier experts on),
        their answers fixed when this stage's are, or (prompt, response) pairs."""
        c = self.config
        earlier = list(getattr(buffer, "earlier_dreams", []))
        if c.rehearse_earlier_dreams <= 0 or not earlier:
            return []
        wanted = min(len(earlier), math.ceil(c.rehearse_earlier_dreams * count))
        rng = random.Random(self.context.seed)
        drawn = spread_by_answer(earlier, wanted, rng) if c.rehearse_draw == "answers" else rng.sample(earlier, wanted)
        if c.objective != "distill":
            return [(list(prompt), list(response)) for prompt, response in drawn]
        fixed = c.answers in DOCUMENT_ANSWERS
        return self.trainer.cache_teacher([ReplaySample(list(prompt), list(prompt), list(response), fixed=fixed)
                                           for prompt, response in drawn])

    def _rehearsed_items(self) -> list:
        """The earlier stages' replay samples (Knowledge Seeding's, teacher states cached) in the
        trainer's item form: as they are to distil, as (prompt, response) pairs to train on."""
        samples = [item for item in self.rehearsal if isinstance(item, ReplaySample)]
        if self.config.objective == "distill":
            return samples
        return [(sample.student_prompt, sample.response) for sample in samples]

    def _select(self, index: int, document: str, own: list, examples: list, questions: dict) -> dict:
        """Document ``index``'s kept dreams (``own``, with their training ``examples``; ``questions``:
        their questions' teacher prompts): the kept ones' examples then the document as items, the
        items' questions with their teacher prompts, their scores and texts, and how many dreams it had."""
        context, tokenizer = self.context, self.context.tokenizer
        selection = select_dreams(context.model, context.memory, examples, as_examples(tokenizer, [document]),
                                  pad_id(tokenizer), self.config, seed=context.seed * 100_003 + index)
        items = [item for k in selection.kept for item in examples[k]] + as_examples(tokenizer, [document])
        return {"items": items, "scores": [selection.scores[k] for k in selection.kept], "dreams": len(own),
                "samples": [own[k].text for k in selection.kept], "document": index,
                "questions": [[prompt, questions[tuple(prompt)]] for prompt, _ in items if tuple(prompt) in questions]}

    def step(self, batch) -> dict:
        return self.trainer.step(batch)

    def summary(self) -> dict:
        """The dreams' report (written, kept, mean kept score, the kept dreams' questions that the
        teacher answered, samples), the examples trained and the
        expert; with ``objective = "distill"`` also the KL to the teacher on them before and after
        (``dream_kl_before``, ``dream_kl_after``) and ``prepare_forward_tokens`` (the teacher's
        forward and the student's for the KL before)."""
        if self.skipped is not None:
            return {**self.report, "skipped": self.skipped, "examples": 0, "expert": None}
        rehearsed = self.report.get("rehearsed", 0) + self.report.get("rehearsed_dreams", 0)
        dreamt = self.items[:len(self.items) - rehearsed]
        after = {"dream_kl_after": self.trainer.replay_kl(dreamt)} if self.config.objective == "distill" else {}
        return {**self.report, **after, "examples": len(dreamt), "expert": [self.context.level, self.slot]}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, state = self.trainer.state_dict()
        return tensors, {**state, "slot": self.slot, "report": self.report, "skipped": self.skipped,
                         "learnt_questions": self.learnt_questions}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self.report, self.skipped = state["report"], state.get("skipped")
        self.learnt_questions = state.get("learnt_questions", [])
        self._train(int(state["slot"]))
        self.trainer.load_state_dict(tensors, state)
        self.items = self.trainer.items


def _question_items(record: dict) -> list[list[list[int]]]:
    """A document record's items that are its kept dreams' answered questions, as
    ``[prompt ids, response ids]``."""
    asked = {tuple(prompt) for prompt, _ in record["questions"]}
    return [[list(prompt), list(response)] for prompt, response in record["items"] if tuple(prompt) in asked]


def spread_by_answer(pool: list, count: int, rng: random.Random) -> list:
    """``count`` of ``pool``'s ``[prompt ids, response ids]`` pairs (at most all of them), drawn so
    that the answers spread: the pairs grouped by their response ids, the groups and each group's
    pairs in ``rng``'s random order, then the first pair of every group, the second of every group
    that has one, and so on, until ``count`` are drawn. So no answer is drawn twice before every
    answer is drawn once.

    Why: a uniform draw of a share of the earlier questions covers the facts unevenly (a fact asked
    many times is drawn many times), and the facts that no drawn question rehearsed were mostly lost
    in the next sleep (README, Dreaming, sessions 31 and 36)."""
    groups: dict[tuple, list] = {}
    for pair in pool:
        groups.setdefault(tuple(pair[1]), []).append(pair)
    order = list(groups.values())
    rng.shuffle(order)
    for group in order:
        rng.shuffle(group)
    deepest = max((len(group) for group in order), default=0)
    spread = [group[depth] for depth in range(deepest) for group in order if depth < len(group)]
    return spread[:count]


def distinct_questions(record: dict) -> dict:
    """A document record whose question items each ask a different question: of the items with the
    same closed-book prompt ids (the same question in several kept dreams), the first stays; the
    record's other items (statement lines, the document) stay where they are.

    Why: a ReST-EM-trained generator asks the same questions in many of a document's dreams, so the
    kept dreams overlap and the stage spent its budget on repeats (README, Dreaming, session 34)."""
    teacher = {tuple(prompt): prompt_of_teacher for prompt, prompt_of_teacher in record["questions"]}
    seen, items = set(), []
    for item in record["items"]:
        key = tuple(item[0])
        if key in teacher:
            if key in seen:
                continue
            seen.add(key)
        items.append(item)
    return _with_items(record, items, teacher)


def _with_items(record: dict, items: list, teacher: dict) -> dict:
    """``record`` with ``items`` in place of its own and its question list rebuilt from them
    (``teacher``: a question's student prompt ids, as a tuple, to its teacher prompt ids)."""
    return {**record, "items": items,
            "questions": [[prompt, teacher[tuple(prompt)]] for prompt, _ in items if tuple(prompt) in teacher]}


def balanced_questions(record: dict, tokenizer, rng: random.Random) -> dict:
    """A document record with its question items resampled so that each distinct answer (its decoded
    response, case and surrounding spaces ignored) is asked about the same number of times: the mean
    count over the document's answers, rounded up. An answer asked about more often keeps a random
    subset of its items, one asked about less often repeats its items in turn; the record's other
    items (statement lines, the document) stay, after the questions.

    Why: read fact by fact (``bench/taught_facts.py``, README, Dreaming, session 24), the facts that
    eight or more items taught were answered right closed-book 24 times of 26, those that two or three
    taught 16 of 58, and the dreams ask about some facts far more often than others. End to end it
    did not help (``DreamingConfig.balance_answers``)."""
    teacher = {tuple(prompt): prompt_of_teacher for prompt, prompt_of_teacher in record["questions"]}
    by_answer, others = {}, []
    for item in record["items"]:
        prompt, response = item
        if tuple(prompt) in teacher:
            by_answer.setdefault(tokenizer.decode(response, skip_special_tokens=True).strip().lower(), []).append(item)
        else:
            others.append(item)
    if not by_answer:
        return record
    target = math.ceil(sum(len(group) for group in by_answer.values()) / len(by_answer))
    questions = []
    for group in by_answer.values():
        questions += rng.sample(group, target) if len(group) >= target else \
            [group[index % len(group)] for index in range(target)]
    return _with_items(record, questions + others, teacher)
