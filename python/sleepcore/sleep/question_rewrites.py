"""Rewrites of the kept dreams' questions (``DreamingConfig.question_rewrites``, sleep time only).

Why: read fact by fact on the biographies task (README, Dreaming, session 28), a fact the sleep's
Dreaming taught was answered right closed-book about half the time when one or two question items
taught it and almost always when eight or more did, and more often when an item happened to use
the evaluation's wording (0.88 against 0.60). A fact stored under one phrasing is not recalled
under another (Physics of Language Models 3.1). So after selection each kept question is asked
again in other words: the base model (every memory expert off) rewrites it ``question_rewrites``
times from a few-shot request (:data:`~sleepcore.sleep.paraphrases.QUESTION_REWRITE_EXAMPLES`,
whose examples share no phrasing with the task's questions); a rewrite's misspelt names of the document
are put right (:func:`~sleepcore.sleep.extractive.repaired_names`: the 135M model misspells about
a third of them), and it is kept when it names every named entity of the question, is new
(:func:`~sleepcore.sleep.paraphrases.kept_rewrites`) and the document's words answer it as they
answer the question (the same sentence, and the same span with ``answers = "span"``): that drops
a rewrite asking for another kind of answer (a date for a place) but not one that asks something
else of the same sentence ("How does X's employer die?" -> the employer). Each becomes an item with its
question's answer, right after it. The training budget is unchanged: the stage cycles over more
differently worded items instead of repeating the same ones.

Measured (README, Dreaming, session 29): it lowers closed-book "contains" on both seeds tried, so
``question_rewrites`` is off by default.
"""

from __future__ import annotations

from sleepcore.lm import encode, qa_prompt
from sleepcore.rollout import SamplingParams
from sleepcore.sleep.dream_config import DreamingConfig
from sleepcore.sleep.dreams import Dream, asked_questions, document_answer_ids
from sleepcore.sleep.extractive import named_entities, repaired_names
from sleepcore.sleep.paraphrases import QUESTION_REWRITE_EXAMPLES, kept_rewrites
from sleepcore.sleep.sentence_reader import answering_sentences

REWRITE_TEMPERATURE = 0.7
REWRITE_MAX_TOKENS = 32


def rewritten_questions(engine, tokenizer, memory, records: list[dict], dreams: list[list[Dream]],
                        documents: list[str], config: DreamingConfig, *, seed: int,
                        progress: bool = False) -> tuple[list[dict], int]:
    """``records`` (one per document, as :class:`~sleepcore.sleep.dreaming.DreamingStage` selects
    them: ``items`` as ``(prompt ids, response ids)``, ``questions`` as ``[prompt ids, teacher prompt
    ids]``, answers taken from the document: ``config.answers`` "sentence" or "span") with each
    question item followed by its kept rewrites, same response; ``dreams[i]`` and
    ``documents[i]`` are record i's. Every distinct question of a document is rewritten once, in one
    engine call over all documents (``config.question_rewrites`` samples each, seeded by ``seed``).
    Returns the new records and how many rewrite items were added."""
    requests, owners = [], []
    for index, (record, asked) in enumerate(zip(records, asked_questions(tokenizer, dreams, documents, config))):
        texts = {prompt: question for own in asked for prompt, question in own}
        for prompt in dict.fromkeys(tuple(prompt) for prompt, _ in record["questions"]):
            requests.append(QUESTION_REWRITE_EXAMPLES.replace("{question}", texts[prompt]))
            owners.append((index, prompt, texts[prompt]))
    if not requests:
        return records, 0
    params = SamplingParams(n=config.question_rewrites, temperature=REWRITE_TEMPERATURE,
                            max_tokens=REWRITE_MAX_TOKENS, seed=seed)
    with memory.switched_off():
        outputs = engine.generate(requests, params, progress=progress)
    responses = [{tuple(prompt): list(response) for prompt, response in record["items"]} for record in records]
    names = [named_entities(document) for document in documents]
    rewrites: list[dict] = [{} for _ in records]
    seen: list[set] = [set() for _ in records]
    for (index, prompt, question), output in zip(owners, outputs):
        samples = [repaired_names(completion.text or "", names[index]) for completion in output.completions]
        kept = kept_rewrites(question, samples, seen[index])
        sentences = answering_sentences(kept, [documents[index]] * len(kept))
        rewrites[index][prompt] = [
            (encode(tokenizer, qa_prompt(tokenizer, text)), encode(tokenizer, qa_prompt(tokenizer, text, documents[index])))
            for text, sentence in zip(kept, sentences)
            if document_answer_ids(tokenizer, text, sentence, config.answers) == responses[index][prompt]]
    added, result = 0, []
    for record, own in zip(records, rewrites):
        items, questions = [], list(record["questions"])
        for prompt, response in record["items"]:
            items.append((prompt, response))
            for student, teacher in own.get(tuple(prompt), []):
                items.append((student, list(response)))
                questions.append([student, teacher])
                added += 1
        result.append({**record, "items": items, "questions": questions})
    return result, added
