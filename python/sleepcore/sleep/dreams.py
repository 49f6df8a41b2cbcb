"""Writing dreams (METHOD.md §4, step 1): the model, through the rollout engine, writes ``m`` dreams
per document from the dream prompts, with random-expert noise as an engine step hook; a dream is
split into lines, each its own training example, with the document last (SEAL's sequence builder);
with ``answers = "teacher"`` its questions are asked closed-book and answered by the teacher
reading the document (:func:`answered_examples`).

Also the dream generator's file: the generator is one low-rank expert (``A``, ``B`` per wrapped
layer) that :class:`~sleepcore.sleep.dreamer.Dreamer` trains; :func:`save_generator` writes it
atomically to safetensors, and :func:`generator_expert` puts it into a free slot of a memory level
only while it writes (the slot is released afterwards, so consolidation never sees it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sleepcore.lm import as_examples, chat_turn, encode, end_of_turn, qa_prompt
from sleepcore.lm.answers import answer_ids
from sleepcore.rollout import SamplingParams
from sleepcore.sleep.dream_config import DOCUMENT, DOCUMENT_ANSWERS, SENTENCE, DreamingConfig
from sleepcore.sleep.extractive import (answer_span, document_subject, repaired_names, restates_question,
                                        split_sentences)
from sleepcore.sleep.prompts import named_entities, names_entity
from sleepcore.sleep.sentence_reader import SentenceReader, answering_sentences

_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
#: A dream line that answers the question line before it ("Answer: ...", "A: ...").
_ANSWER_LINE = re.compile(r"^(?:answer|a)\s*:", re.IGNORECASE)


@dataclass
class Dream:
    """One dream of document ``document`` from prompt variant ``prompt``: the prompt's token ids,
    the sampled ``token_ids`` (stop token included) and their ``text``."""

    document: int
    prompt: int
    prompt_ids: list[int]
    token_ids: list[int]
    text: str

    def to_json(self) -> dict:
        return asdict(self)


def dream_prompt(tokenizer, template: str, document: str, sentence: str | None = None) -> str:
    """``template`` with the document in place of ``{document}`` (and ``sentence`` in place of
    ``{sentence}``), as one chat turn when the tokenizer has a template (else the plain text followed
    by a blank line)."""
    if SENTENCE in template and sentence is None:
        raise ValueError(f"the dream prompt holds {SENTENCE}, so dream_prompt needs a sentence")
    fills = {DOCUMENT: document.strip(), SENTENCE: (sentence or "").strip()}
    content = re.sub("|".join(map(re.escape, fills)), lambda match: fills[match.group()], template)
    return chat_turn(tokenizer, content) or content + "\n\n"


def prompt_counts(template: str, document: str, count: int) -> list[tuple[str | None, int]]:
    """How ``count`` dreams of ``document`` from ``template`` are asked: ``[(sentence, dreams)]``, one
    item (sentence None) for a prompt without ``{sentence}``, else the j-th dream on the document's
    sentence ``j % sentences`` (items with no dream left out, so ``count = 0`` gives none; a document
    without a sentence break is one sentence)."""
    if SENTENCE not in template:
        return [(None, count)] if count else []
    sentences = split_sentences(document) or [document.strip()]
    return [(sentence, len(range(position, count, len(sentences)))) for position, sentence in enumerate(sentences)
            if position < count]


def dream_lines(text: str) -> list[str]:
    """The dream's non-empty lines, stripped of list markers ("- ", "3. ")."""
    return [line for line in (_LIST_MARKER.sub("", raw).strip() for raw in text.splitlines()) if line]


def without_repeated_lines(texts: list[str]) -> list[str | None]:
    """Each of one document's dream ``texts``, in order, without the lines an earlier text or an
    earlier line of its own already wrote (lines compared as :func:`dream_lines` reads them, case
    ignored). A text that repeats no line comes back as it is (the same object); one that does comes
    back as its new lines, blank lines dropped, or None when none is new."""
    seen: set[str] = set()
    kept: list[str | None] = []
    for text in texts:
        lines, repeated = [], False
        for raw in text.splitlines():
            key = _LIST_MARKER.sub("", raw).strip().casefold()
            if key and key in seen:
                repeated = True
                continue
            seen.add(key)
            if key:
                lines.append(raw)
        kept.append(text if not repeated else "\n".join(lines) if lines else None)
    return kept


def with_answers_joined(lines: list[str]) -> list[str]:
    """``lines`` with each line that answers a question ("Answer: ...", "A: ...") joined, after a
    newline, to the question line (ending in "?") just before it. SmolLM2-135M-Instruct writes a
    question-answer dream as "Question: ...?" and "Answer: ..." on two lines (session 48), and split
    line by line an answer would be learnt without its question."""
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith("?") and _ANSWER_LINE.match(line):
            joined[-1] += "\n" + line
        else:
            joined.append(line)
    return joined


def dream_examples(tokenizer, text: str, document: str | None = None) -> list[tuple[list[int], list[int]]]:
    """Next-token examples of a dream: each line its own example (a question and the line that
    answers it one: :func:`with_answers_joined`), then ``document`` (when given). Lines of fewer
    than 2 tokens are dropped; an empty list when nothing is left."""
    texts = with_answers_joined(dream_lines(text)) + ([document] if document else [])
    texts = [t for t in texts if len(encode(tokenizer, t)) >= 2]
    return as_examples(tokenizer, texts) if texts else []


def dream_questions(text: str, entities: list[str] | None = None) -> list[str]:
    """A dream's questions: each line holding a question mark, cut after the first one, without
    repeats; shorter than 8 characters is no question. With ``entities`` (its document's
    :func:`~sleepcore.sleep.prompts.named_entities`), only the questions that name one of them
    (:func:`~sleepcore.sleep.prompts.names_entity`)."""
    questions = [line[:line.index("?") + 1].strip() for line in dream_lines(text) if "?" in line]
    questions = [question for question in questions
                 if len(question) >= 8 and (entities is None or names_entity(question, entities))]
    return list(dict.fromkeys(questions))


def asked_questions(tokenizer, dreams: list[list[Dream]], documents: list[str],
                    config: DreamingConfig) -> list[list[list[tuple[tuple[int, ...], str]]]]:
    """``asked[i][k]``: the questions dream k of document i asks (:func:`dream_questions`; with
    ``config.questions_name_entity`` only those naming an entity of ``documents[i]``, with
    ``config.questions_name_subject`` only those naming its subject,
    :func:`~sleepcore.sleep.extractive.document_subject`, where it has one; with
    ``config.repair_names`` their misspelt names put right), each as ``(closed-book prompt ids,
    question text)``."""
    asked = []
    for own, document in zip(dreams, documents):
        names = named_entities(document)
        subject = document_subject(document) if config.questions_name_subject else None
        entities = [subject] if subject is not None else (names if config.questions_name_entity else None)
        per_dream = []
        for dream in own:
            texts = dream_questions(dream.text, entities)
            if config.repair_names:
                texts = list(dict.fromkeys(repaired_names(question, names) for question in texts))
            per_dream.append([(tuple(encode(tokenizer, qa_prompt(tokenizer, question))), question)
                              for question in texts])
        asked.append(per_dream)
    return asked


def document_answer_ids(tokenizer, question: str, sentence: str | None, answers: str) -> list[int] | None:
    """The response ids a question learns from the document's ``sentence`` that answers it (None:
    none does): the sentence (``answers = "sentence"``) or the words of it that answer the question
    (``"span"``, :func:`~sleepcore.sleep.extractive.answer_span`; None when there are none), then
    the end-of-turn ids."""
    answer = answer_span(question, sentence) if sentence is not None and answers == "span" else sentence
    if answer is None:
        return None
    return answer_ids(tokenizer, qa_prompt(tokenizer, question), answer) + end_of_turn(tokenizer)


def answered_examples(engine, tokenizer, dreams: list[list[Dream]], documents: list[str], config: DreamingConfig,
                      *, teacher, seed: int, progress: bool = False,
                      reader: SentenceReader | None = None) -> tuple[list[list[list]], list[dict]]:
    """Every dream's training examples and, per document, its questions' teacher prompts.

    Returns ``(examples, questions)``: ``examples[i][k]`` is dream k of document i as ``(prompt ids,
    response ids)`` pairs, ``questions[i]`` maps a question's student prompt ids (a tuple) to its
    teacher prompt ids (for :func:`~sleepcore.sleep.prompts.document_reader`). With
    ``config.answers = "dream"``: :func:`dream_examples` of each text, no questions. With
    ``"teacher"``: each of a dream's questions (:func:`dream_questions`; with
    ``config.questions_name_entity`` only those naming an entity of the document; with
    ``config.repair_names`` their misspelt names put right, :func:`repaired_names`) asked closed-book
    (:func:`~sleepcore.lm.qa_prompt`) with the answer the teacher samples reading the same question
    with ``documents[i]`` in its turn (one engine call under the ``teacher`` context manager factory,
    seeded by ``seed``; answers of fewer than 2 tokens are dropped, and with
    ``config.answers_restate_question`` those that do not
    :func:`~sleepcore.sleep.extractive.restates_question`; the stop token is kept), then (with
    ``config.statement_lines``) the dream's lines without a question as written. With
    ``"sentence"``: the same questions, each answered by the document's
    :func:`~sleepcore.sleep.extractive.answering_sentence` (or, where its words find none, the
    ``reader``'s choice: :func:`~sleepcore.sleep.sentence_reader.answering_sentences`) and the
    end-of-turn ids (dropped when none answers it; ``teacher`` is not called); with ``"span"`` by
    the words of that sentence that answer it (:func:`~sleepcore.sleep.extractive.answer_span`)."""
    if config.answers == "dream":
        return [[dream_examples(tokenizer, dream.text) for dream in own] for own in dreams], [{} for _ in dreams]
    questions: list[dict] = [{} for _ in dreams]
    owners = []
    for index, (asked, document) in enumerate(zip(asked_questions(tokenizer, dreams, documents, config), documents)):
        for k, own in enumerate(asked):
            for prompt, question in own:
                questions[index].setdefault(prompt, encode(tokenizer, qa_prompt(tokenizer, question, document)))
                owners.append((index, k, prompt, question))
    examples = [[[] for _ in own] for own in dreams]
    if config.answers in DOCUMENT_ANSWERS:
        sentences = answering_sentences([question for *_, question in owners],
                                        [documents[index] for index, *_ in owners], reader)
        for (index, k, prompt, question), sentence in zip(owners, sentences):
            response = document_answer_ids(tokenizer, question, sentence, config.answers)
            if response is not None:
                examples[index][k].append((list(prompt), response))
    else:
        params = SamplingParams(n=1, temperature=config.answer_temperature, max_tokens=config.answer_max_tokens,
                                seed=seed)
        with teacher():
            outputs = engine.generate([questions[index][prompt] for index, _, prompt, _ in owners], params,
                                      progress=progress) if owners else []
        for (index, k, prompt, question), output in zip(owners, outputs):
            answer = list(output.completions[0].token_ids)
            if len(answer) >= 2 and (not config.answers_restate_question or restates_question(
                    question, tokenizer.decode(answer, skip_special_tokens=True))):
                examples[index][k].append((list(prompt), answer))
    for index, own in enumerate(dreams):
        for k, dream in enumerate(own):
            statements = "\n".join(line for line in dream_lines(dream.text) if "?" not in line)
            examples[index][k] += dream_examples(tokenizer, statements) if config.statement_lines else []
    return examples, questions


@contextlib.contextmanager
def dreaming_noise(memory, engine, config: DreamingConfig, *, seed: int) -> Iterator[None]:
    """Random-expert noise for the context when ``config.noise``: every wrapped MLP applies one random
    expert (:meth:`ContinuumMemory.random_expert_noise`), redrawn before every engine forward (an
    engine step hook) or once (``noise_resample = "call"``), from a generator seeded by ``seed``."""
    if not config.noise:
        yield
        return
    generator = torch.Generator().manual_seed(seed)
    with memory.random_expert_noise(config.noise_scale, generator):
        handle = None
        if config.noise_resample == "step":
            handle = engine.add_step_hook(lambda engine, batch: memory.resample_noise())
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()


def write_dreams(engine, tokenizer, memory, documents: list[str], config: DreamingConfig, *, seed: int,
                 progress: bool = False) -> list[list[Dream]]:
    """``config.dreams_per_document`` dreams of every document (dream ``i`` from prompt
    ``i % len(config.prompts)``; a prompt with ``{sentence}`` spread over the document's sentences,
    :func:`prompt_counts`), in one engine call under :func:`dreaming_noise`. Returns one list per
    document, ordered by prompt, then sentence, then sample. Deterministic given ``seed`` and the
    weights."""
    prompts, params, owners = [], [], []
    variants = len(config.prompts)
    for index, document in enumerate(documents):
        for variant, template in enumerate(config.prompts):
            for sentence, count in prompt_counts(template, document,
                                                 len(range(variant, config.dreams_per_document, variants))):
                prompts.append(encode(tokenizer, dream_prompt(tokenizer, template, document, sentence)))
                params.append(SamplingParams(n=count, temperature=config.temperature, max_tokens=config.max_new_tokens,
                                             seed=seed))
                owners.append((index, variant))
    with dreaming_noise(memory, engine, config, seed=seed):
        outputs = engine.generate(prompts, params, progress=progress)
    dreams: list[list[Dream]] = [[] for _ in documents]
    for (index, variant), ids, output in zip(owners, prompts, outputs):
        for completion in output.completions:
            text = completion.text if completion.text is not None else tokenizer.decode(completion.token_ids,
                                                                                        skip_special_tokens=True)
            dreams[index].append(Dream(index, variant, list(ids), list(completion.token_ids), text))
    return dreams


# ---------------------------------------------------------------------- the generator's expert
def expert_weights(memory, level: int, slot: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Expert ``(level, slot)``'s ``(A, B)`` per wrapped layer (detached copies)."""
    return {layer: (mlp.levels[level].A[slot].detach().clone(), mlp.levels[level].B[slot].detach().clone())
            for layer, mlp in memory.layers.items()}


def save_generator(path, weights: dict[int, tuple[torch.Tensor, torch.Tensor]], info: dict | None = None) -> None:
    """Writes a generator's weights (``{layer: (A [r, d], B [d, r])}``) and ``info`` (JSON) to one
    safetensors file, atomically (a temporary sibling, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer, (down, up) in weights.items():
        tensors[f"layer.{layer}.A"], tensors[f"layer.{layer}.B"] = down.contiguous(), up.contiguous()
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(temporary),
              metadata={"sleepcore": "dream-generator", "info": json.dumps(info or {})})
    os.replace(temporary, path)


def load_generator(path) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The weights :func:`save_generator` wrote. ``FileNotFoundError`` when ``path`` is missing,
    ``ValueError`` when it is not a generator file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generator_path {str(path)!r} does not exist (train one: sleepcore dream train)")
    with safe_open(str(path), framework="pt") as handle:
        if (handle.metadata() or {}).get("sleepcore") != "dream-generator":
            raise ValueError(f"generator_path {str(path)!r} is not a dream generator file")
        names = list(handle.keys())
        tensors = {name: handle.get_tensor(name) for name in names}
    layers = sorted({int(name.split(".")[1]) for name in names})
    return {layer: (tensors[f"layer.{layer}.A"], tensors[f"layer.{layer}.B"]) for layer in layers}


def set_expert(memory, level: int, slot: int, weights: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copies ``weights`` into expert ``(level, slot)``; ``ValueError`` when the layers or shapes differ."""
    if set(weights) != set(memory.layers):
        raise ValueError(f"the generator has layers {sorted(weights)}, the memory wraps {sorted(memory.layers)}")
    with torch.no_grad():
        for layer, (down, up) in weights.items():
            slots = memory.layers[layer].levels[level]
            if down.shape != slots.A[slot].shape or up.shape != slots.B[slot].shape:
                raise ValueError(f"generator rank/width {tuple(down.shape)} does not fit level {level}'s experts "
                                 f"{tuple(slots.A[slot].shape)}: set generator_level to a level of the generator's rank")
            slots.A[slot].copy_(down)
            slots.B[slot].copy_(up)


@contextlib.contextmanager
def generator_expert(memory, level: int, weights) -> Iterator[int | None]:
    """Inside the context the generator ``weights`` (None: no generator, the model as it is) are an
    active expert in a free slot of ``level``; on exit that slot is zeroed and released. Yields the
    slot (or None)."""
    if weights is None:
        yield None
        return
    slot = memory.new_expert(level)
    try:
        set_expert(memory, level, slot, weights)
        yield slot
    finally:
        with torch.no_grad():
            for mlp in memory.layers.values():
                mlp.levels[level].A[slot].zero_()
                mlp.levels[level].B[slot].zero_()
        memory.deactivate(level, slot)
