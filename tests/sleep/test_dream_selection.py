"""Dreaming's writing and selection on tiny models: noise is an engine step hook, batched gradient
scores equal per-dream separate gradients, and selection keeps k + b."""

from __future__ import annotations

import random

import pytest
import torch

from sleepcore.lm import as_examples, encode, pad_id
from sleepcore.memory.batched import batched_adapters
from sleepcore.sleep.dream_selection import dream_gradient_scores, keep, select_dreams
from sleepcore.sleep.dreams import dream_prompt, prompt_counts, write_dreams
from sleepcore.sleep.extractive import split_sentences
from sleepcore.train.batched import BatchedRuntime

from _dreamers import FP32, tiny_dreaming
from _sleepers import DATASET


def test_noise_is_an_engine_step_hook_and_is_removed(wrapped):
    model, tokenizer, memory, engine = wrapped
    calls = []
    real = memory.resample_noise
    memory.resample_noise = lambda: calls.append(1) or real()
    documents = DATASET.passages[:2]
    noisy = write_dreams(engine, tokenizer, memory, documents, tiny_dreaming(noise_scale=200.0), seed=3)
    quiet = write_dreams(engine, tokenizer, memory, documents, tiny_dreaming(noise=False), seed=3)
    assert len(calls) > 2 and not engine._step_hooks
    assert all(mlp.noise is None for mlp in memory.layers.values())
    assert [len(own) for own in noisy] == [4, 4] and [d.prompt for d in noisy[0]] == [0, 0, 1, 2]
    assert [d.token_ids for own in noisy for d in own] != [d.token_ids for own in quiet for d in own]
    again = write_dreams(engine, tokenizer, memory, documents, tiny_dreaming(noise_scale=200.0), seed=3)
    assert [d.token_ids for own in again for d in own] == [d.token_ids for own in noisy for d in own]


def test_a_sentence_prompt_spreads_a_documents_dreams_over_its_sentences(wrapped):
    _, tokenizer, memory, engine = wrapped
    template = "About {document} ask of {sentence}:"
    document = "Ann was born in Oslo. She works at Acme. Her dog is Rex."
    assert prompt_counts(template, document, 7) == [("Ann was born in Oslo.", 3), ("She works at Acme.", 2),
                                                    ("Her dog is Rex.", 2)]
    assert prompt_counts(template, document, 2) == [("Ann was born in Oslo.", 1), ("She works at Acme.", 1)]
    assert prompt_counts("About {document}", document, 7) == [(None, 7)]
    assert prompt_counts("About {document}", document, 0) == prompt_counts(template, document, 0) == []
    assert prompt_counts(template, "no break", 2) == [("no break", 2)]
    text = dream_prompt(tokenizer, "{document}|{sentence}", "A {sentence} B.", "C {document}.")
    assert "A {sentence} B.|C {document}." in text
    with pytest.raises(ValueError, match="sentence"):
        dream_prompt(tokenizer, template, document)
    documents = DATASET.passages[:2]
    config = tiny_dreaming(prompts=("Passage: {document}\nSentence: {sentence}\nQuestions:", "Passage: {document}"),
                           dreams_per_document=6)
    dreams = write_dreams(engine, tokenizer, memory, documents, config, seed=3)
    assert [len(own) for own in dreams] == [6, 6]
    for document, own in zip(documents, dreams):
        focused = [dream for dream in own if dream.prompt == 0]
        sentences = split_sentences(document)
        expected = [sentence for sentence, count in prompt_counts(config.prompts[0], document, 3) for _ in range(count)]
        assert len(focused) == 3 and len(sentences) >= 3
        assert [dream.prompt_ids for dream in focused] == [
            encode(tokenizer, dream_prompt(tokenizer, config.prompts[0], document, sentence)) for sentence in expected]


def _dream_sets(tokenizer):
    rng = random.Random(0)
    words = " ".join(DATASET.passages).split()
    return [[as_examples(tokenizer, [" ".join(rng.sample(words, rng.randint(3, 9)))])[0]
             for _ in range(rng.randint(1, 3))] for _ in range(5)]


def test_batched_gradient_scores_equal_separate_per_dream_gradients(wrapped):
    model, tokenizer, memory, _ = wrapped
    dreams, pad = _dream_sets(tokenizer), pad_id(tokenizer)
    document = as_examples(tokenizer, [DATASET.passages[0]])
    batched = dream_gradient_scores(model, memory, dreams, pad, score="norm", rank=4, optimizer=FP32, seed=5)
    cosine = dream_gradient_scores(model, memory, dreams, pad, score="cosine", document=document, rank=4,
                                   optimizer=FP32, seed=5)

    def gradient(examples):
        with batched_adapters(memory, 1, rank=4, generator=torch.Generator().manual_seed(5)) as adapters:
            loss, _ = BatchedRuntime(model, adapters, FP32).next_token_loss([examples], pad)
            loss.backward()
            return torch.cat([p.grad.reshape(-1) for p in adapters.parameters()]).double()

    separate = [gradient(examples) for examples in dreams]
    norms = [g.norm().item() for g in separate]
    assert batched == pytest.approx(norms, rel=1e-5)
    assert sorted(range(5), key=lambda i: -batched[i]) == sorted(range(5), key=lambda i: -norms[i])
    reference = gradient(document)
    cosines = [(g @ reference / (g.norm() * reference.norm())).item() for g in separate]
    assert cosine == pytest.approx(cosines, rel=1e-5, abs=1e-7)


def test_selection_keeps_top_k_plus_b_random(wrapped):
    model, tokenizer, memory, _ = wrapped
    scores = [0.1, 0.9, 0.5, 0.9, 0.2, 0.3]
    kept = keep(scores, 2, 2, random.Random(0))
    assert kept[:2] == [1, 3] and len(set(kept)) == 4 and set(kept[2:]) <= {0, 2, 4, 5}
    with pytest.raises(ValueError, match="exceeds"):
        keep(scores, 5, 2, random.Random(0))
    dreams = _dream_sets(tokenizer)
    document = as_examples(tokenizer, [DATASET.passages[0]])
    for selection in ("norm", "cosine", "random"):
        config = tiny_dreaming(dreams_per_document=5, top_k=2, random_kept=1, selection=selection)
        chosen = select_dreams(model, memory, dreams, document, pad_id(tokenizer), config, seed=1)
        assert len(chosen.kept) == 3 and len(set(chosen.kept)) == 3 and len(chosen.scores) == 5
        if selection != "random":
            best = sorted(range(5), key=lambda i: (-chosen.scores[i], i))[:2]
            assert chosen.kept[:2] == best
