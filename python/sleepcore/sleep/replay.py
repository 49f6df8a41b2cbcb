"""The replay set of Knowledge Seeding: teacher samples drawn from the wake buffer (METHOD.md §3:
no external data during sleep), with the teacher's final hidden states cached on them.

The teacher never changes during a sleep, so its hidden states on its own samples are kept as the
rollout engine sampled them (``return_hidden``) and reused by every step: no second forward over
the teacher's prompts, which hold the documents (a batched re-forward of them took 118 s of a
50-person sleep's preparation on 2 cores). Replay sets are checkpointed as
token ids (JSON) and hidden states (safetensors). Under torchrun the question writing is split
over the ranks (:func:`shared_generate`), and so is the sampling (the stage gives each rank its
block of the prompts).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from dataclasses import dataclass

import torch

from sleepcore.distributed import world
from sleepcore.lm import end_of_turn, encode, response_hidden
from sleepcore.lm.answers import answer_ids
from sleepcore.rollout import SamplingParams
from sleepcore.sleep.config import KnowledgeSeedingConfig
from sleepcore.sleep.paraphrases import paraphrase_prompts, paraphrase_requests
from sleepcore.sleep.prompts import (ReplayPrompt, continuation_prompts, entity_prompts, instruction_opening,
                                     question_openings, question_requests, reader_confirmed, rehearsal_prompts,
                                     self_instruction_prompts, self_question_prompts, round_trip_confirmed,
                                     round_trip_requests, sentence_question_prompts, sentence_question_requests)
from sleepcore.sleep.sentence_reader import model_reader



@dataclass
class ReplaySample:
    """A teacher sample: token ids of both prompts and of the response (teacher-sampled), the
    teacher's final hidden states ``[len(response), H]`` (fp32, CPU) predicting the response, and
    ``trained``: which response tokens are trained (bool ``[len(response)]``; None: all of them,
    ``KnowledgeSeedingConfig.token_selection``); ``fixed``: the response was given (an answer taken
    from the document), not sampled (``KnowledgeSeedingConfig.hard_label_items``)."""

    student_prompt: list[int]
    teacher_prompt: list[int]
    response: list[int]
    teacher_hidden: torch.Tensor | None = None
    trained: torch.Tensor | None = None
    fixed: bool = False


def shared_generate(engine, prompts: list, params: SamplingParams) -> list:
    """``engine.generate(prompts, params)`` with each rank sampling its block of the prompts (the
    outputs gathered in order; a prompt's samples depend on its seed alone, not on its batch)."""
    mine = world.block(prompts)
    return world.gather(engine.generate(mine, params, progress=False) if mine else [])


def teacher_texts(engine, teacher, requests: list[str], params: SamplingParams) -> list[list[str]]:
    """The teacher's sampled texts for each request (``params.n`` each; :func:`shared_generate`
    under the ``teacher`` context)."""
    with teacher():
        outputs = shared_generate(engine, requests, params)
    return [[completion.text or "" for completion in output.completions] for output in outputs]


def replay_prompts(buffer, config: KnowledgeSeedingConfig, tokenizer, engine, teacher, *, seed: int,
                   teacher_reads_documents: bool = True) -> list[ReplayPrompt]:
    """Prompts from ``config.prompt_builders`` over the buffer: at most ``prompts_per_document``
    generated prompts (continuation, self_question, entity_questions, sentence_questions) per
    document, plus every wake question and every kept rewrite of one (``wake_paraphrases``), plus
    ``rehearsal_share`` times as many of the earlier sleeps' prompts (``rehearsal``), plus
    ``self_instruction_share`` times as many generic requests the teacher writes, at least
    ``self_instruction_minimum`` (``self_instructions``), shuffled,
    then at most ``max_prompts`` in all when that is set. ``teacher`` is a context
    manager factory under which the engine samples as the teacher (the questions of
    ``self_question``, ``sentence_questions`` and ``wake_paraphrases``). Without
    ``teacher_reads_documents`` (the memory teacher) the teacher's prompt is the student's."""
    rng, builders, documents = random.Random(seed), config.prompt_builders, buffer.documents
    quota = config.prompts_per_document
    generated = []
    if "continuation" in builders:
        generated += continuation_prompts(documents, rng, per_document=quota)
    if "self_question" in builders:
        asked = teacher_texts(engine, teacher, question_requests(documents, tokenizer),
                              SamplingParams(n=2, temperature=0.7, max_tokens=32, seed=seed))
        generated += self_question_prompts(documents, asked, tokenizer)
    if "entity_questions" in builders:
        generated += entity_prompts(documents, tokenizer, per_document=quota)
    if "sentence_questions" in builders:
        requests = sentence_question_requests(documents, context=config.question_writer_context)
        asked = teacher_texts(engine, teacher, [request for _, _, request in requests],
                              SamplingParams(n=config.questions_per_sentence, temperature=0.5, max_tokens=24,
                                             seed=seed))
        written = sentence_question_prompts(documents, requests, asked, tokenizer, context=config.sentence_context,
                                            answers=config.sentence_answers, name_subject=config.questions_name_subject,
                                            say_relation=config.questions_say_relation)
        if config.round_trip_questions:
            read = teacher_texts(engine, teacher, round_trip_requests(documents, written, tokenizer),
                                 SamplingParams(n=1, temperature=0.0, max_tokens=32, seed=seed))
            written = round_trip_confirmed(documents, written, [texts[0] for texts in read])
        if config.reader_confirms_questions:
            written = reader_confirmed(documents, written, model_reader(engine.model, tokenizer, teacher))
        generated += written
    rng.shuffle(generated)
    taken, prompts = Counter(), []
    for prompt in generated:
        if taken[prompt.document] < quota:
            taken[prompt.document] += 1
            prompts.append(prompt)
    if "wake_questions" in builders:
        prompts += self_question_prompts(documents, buffer.questions, tokenizer, builder="wake_questions")
    if "wake_paraphrases" in builders:
        requests = paraphrase_requests(buffer.questions)
        rewritten = teacher_texts(engine, teacher, [request for _, _, request in requests],
                                  SamplingParams(n=config.paraphrases_per_question, temperature=0.7, max_tokens=32,
                                                 seed=seed))
        prompts += paraphrase_prompts(documents, requests, rewritten, tokenizer)
    own = len(prompts)
    if "rehearsal" in builders:
        prompts += rehearsal_prompts(buffer.earlier, math.ceil(config.rehearsal_share * own), rng)
    if "self_instructions" in builders and own:
        prompts += self_instructions(prompts, config, tokenizer, engine, teacher, own=own, seed=seed)
    rng.shuffle(prompts)
    if not teacher_reads_documents:
        prompts = [dataclasses.replace(prompt, teacher=prompt.student) for prompt in prompts]
    return prompts[:config.max_prompts] if config.max_prompts is not None else prompts


def self_instructions(prompts: list[ReplayPrompt], config: KnowledgeSeedingConfig, tokenizer, engine, teacher, *,
                      own: int, seed: int) -> list[ReplayPrompt]:
    """The ``self_instructions`` builder's generic prompts: ``self_instruction_share * own`` (at
    least ``self_instruction_minimum``) requests or questions the teacher writes after
    :func:`~sleepcore.sleep.prompts.instruction_opening` (``"both"``: half requests, half
    questions), or, for ``"openings"``, after that opening and the first words of the questions in
    ``prompts`` (the sleep's own and the rehearsed earlier sleeps':
    :func:`~sleepcore.sleep.prompts.question_openings`), as many
    continuations of each, taken in turn. Twice the count is sampled, since some samples are no
    request."""
    kind = config.self_instruction_kind
    kinds = ("requests", "questions") if kind == "both" else (kind,)
    count = math.ceil(max(config.self_instruction_share * own, config.self_instruction_minimum) / len(kinds))
    if kind != "openings":
        written = teacher_texts(engine, teacher, [instruction_opening(tokenizer, k) for k in kinds],
                                SamplingParams(n=2 * count, temperature=1.0, max_tokens=48, seed=seed))
        return [prompt for k, texts in zip(kinds, written)
                for prompt in self_instruction_prompts(texts, tokenizer, count, k)]
    openings = question_openings(tokenizer, prompts)
    if not openings:
        return []
    opening = instruction_opening(tokenizer, kind)
    written = teacher_texts(engine, teacher, [f"{opening} {words}" for words in openings],
                            SamplingParams(n=math.ceil(2 * count / len(openings)), temperature=1.0, max_tokens=32,
                                           seed=seed))
    texts = [f"{words} {text.lstrip()}" for column in zip(*written) for words, text in zip(openings, column)]
    return self_instruction_prompts(texts, tokenizer, count, kind)


def sample_replay(tokenizer, engine, prompts: list[ReplayPrompt], config: KnowledgeSeedingConfig, teacher,
                  rng: random.Random, *, progress: bool = True) -> list[ReplaySample]:
    """Teacher samples of every prompt (``samples_per_prompt`` each, 2 tokens or longer), with the
    teacher's final hidden states on them as the engine sampled them (``return_hidden``: no second
    forward over the teacher's prompts, which hold the documents; in the engine's dtype, fp32 for an
    fp32 model). ``rng`` gives the sampling seed, drawn even for no prompt (which gives no sample),
    so that ranks sampling blocks of one list stay in step."""
    temperature = config.sample_temperature if config.replay_temperature is None else config.replay_temperature
    params = SamplingParams(n=config.samples_per_prompt, temperature=temperature,
                            max_tokens=config.max_new_tokens, seed=rng.randrange(1 << 62))
    if not prompts:
        return []
    teacher_ids = [encode(tokenizer, p.teacher) for p in prompts]
    with teacher():
        outputs = engine.generate(teacher_ids, params, progress=progress, return_hidden=True)
    samples = []
    for prompt, ids, output in zip(prompts, teacher_ids, outputs):
        student_ids = encode(tokenizer, prompt.student)
        for completion in output.completions:
            if len(completion.token_ids) >= 2:
                samples.append(ReplaySample(student_ids, ids, list(completion.token_ids), completion.hidden))
    return samples


def scored_replay(model, tokenizer, prompts: list[ReplayPrompt], teacher, pad: int, *,
                  batch_size: int = 16) -> list[ReplaySample]:
    """One replay sample per prompt with a fixed ``response`` (its text, then the end-of-turn ids:
    :func:`~sleepcore.lm.end_of_turn`), with the teacher's final hidden states on it from a plain
    forward of ``model`` under ``teacher`` (``batch_size`` prompts at a time; the precision of
    :func:`sample_replay`'s states; nothing is sampled)."""
    closing, samples = end_of_turn(tokenizer), []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        teacher_ids = [encode(tokenizer, p.teacher) for p in chunk]
        responses = [answer_ids(tokenizer, p.student, p.response) + closing for p in chunk]
        with torch.no_grad(), teacher():
            hidden = response_hidden(model, teacher_ids, responses, pad).cpu()
        rows = hidden.split([len(r) for r in responses])
        samples += [ReplaySample(encode(tokenizer, prompt.student), ids, response, states, fixed=True)
                    for prompt, ids, response, states in zip(chunk, teacher_ids, responses, rows)]
    return samples


def replay_state(samples: list[ReplaySample]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """``(tensors, json)`` of a replay set."""
    tensors = {f"replay.{i}": sample.teacher_hidden for i, sample in enumerate(samples)}
    tensors.update({f"replay_trained.{i}": sample.trained for i, sample in enumerate(samples)
                    if sample.trained is not None})
    return tensors, [{"student_prompt": s.student_prompt, "teacher_prompt": s.teacher_prompt, "response": s.response,
                      "fixed": s.fixed} for s in samples]


def replay_from_state(tensors: dict[str, torch.Tensor], state: list[dict]) -> list[ReplaySample]:
    return [ReplaySample(item["student_prompt"], item["teacher_prompt"], item["response"], tensors[f"replay.{i}"],
                         tensors.get(f"replay_trained.{i}"), item.get("fixed", False)) for i, item in enumerate(state)]


def select_tokens(samples: list[ReplaySample], token_kl: list[torch.Tensor], fraction: float) -> list[ReplaySample]:
    """``samples`` with ``trained`` set to their tokens among the ``fraction`` of all tokens with the
    largest ``token_kl`` (ties at the threshold kept); samples left with no trained token are dropped."""
    flat = torch.cat(token_kl)
    keep = max(1, math.ceil(fraction * flat.numel()))
    threshold = flat.topk(keep).values[-1]
    selected = [dataclasses.replace(sample, trained=kl >= threshold) for sample, kl in zip(samples, token_kl)]
    return [sample for sample in selected if bool(sample.trained.any())]
