"""The wake buffer: what the model read (and was asked) while awake, until a sleep consolidates it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sleepcore.validation import texts


def reservoir(kept: list, seen: int, new, capacity: int, rng: random.Random, key=lambda item: item) -> tuple[list, int]:
    """``kept`` (a uniform sample of ``seen`` distinct items) with the distinct items of ``new`` not
    already kept (``key``: an item's identity, hashable) added, at most ``capacity`` of them: past
    the capacity a reservoir sample (Vitter's algorithm R), so every distinct item so far is kept with
    the same probability. Returns the new sample and count; ``kept`` is left as it was."""
    kept, keys = list(kept), {key(item) for item in kept}
    for item in {key(item): item for item in new}.values():
        if key(item) in keys:
            continue
        seen += 1
        if len(kept) < capacity:
            kept.append(item)
            keys.add(key(item))
            continue
        index = rng.randrange(seen)
        if index < capacity:
            keys.discard(key(kept[index]))
            kept[index] = item
            keys.add(key(item))
    return kept, seen


def dream_key(item) -> tuple:
    """A kept dream question's identity: its prompt and response token ids."""
    return tuple(item[0]), tuple(item[1])


@dataclass
class WakeBuffer:
    """``documents[i]`` and the questions asked about it while awake, ``questions[i]``; ``earlier``:
    the student prompts (texts, no answers) that earlier sleeps replayed, kept across sleeps for the
    ``rehearsal`` replay builder (a bounded uniform sample of them: :meth:`consolidated`);
    ``earlier_seen``: how many distinct prompts that sample was drawn from. ``earlier_dreams``: the
    questions that earlier sleeps' Dreaming stages learnt (with ``rehearse_earlier_seeding``, also
    Knowledge Seeding's fixed-answer questions), each ``[prompt ids, response ids]`` (the answer it
    was taught), for ``DreamingConfig.rehearse_earlier_dreams``, and ``earlier_dreams_seen``
    the same count for them."""

    documents: list[str] = field(default_factory=list)
    questions: list[list[str]] = field(default_factory=list)
    earlier: list[str] = field(default_factory=list)
    earlier_seen: int = 0
    earlier_dreams: list[list[list[int]]] = field(default_factory=list)
    earlier_dreams_seen: int = 0

    def add(self, documents, questions=None) -> list[str]:
        """Appends documents (a string or a non-empty list of non-empty strings) and, optionally, one
        list of question strings per document. Returns the documents added."""
        documents = texts("documents", [documents] if isinstance(documents, str) else documents)
        questions = [[] for _ in documents] if questions is None else [list(asked) for asked in questions]
        if len(questions) != len(documents):
            raise ValueError(f"questions must be one list of strings per document ({len(documents)}), "
                             f"got {len(questions)} lists")
        for index, asked in enumerate(questions):
            for question in asked:
                if not isinstance(question, str):
                    raise TypeError(f"questions[{index}] must hold strings, got {type(question).__name__}")
        self.documents.extend(documents)
        self.questions.extend(questions)
        return documents

    def consolidated(self, replayed: list[str], capacity: int, rng: random.Random, *,
                     dreams: list | None = None, dreams_capacity: int | None = None) -> "WakeBuffer":
        """The buffer after a sleep: no documents or questions, and ``earlier`` with this sleep's
        ``replayed`` prompts added (texts already kept are skipped), at most ``capacity`` of them.
        Past the capacity it is a reservoir sample (:func:`reservoir`): every distinct prompt
        remembered so far is kept with the same probability, so each sleep's share of later
        rehearsal stays in proportion to the prompts it replayed, however many sleeps come after.
        ``dreams`` (``[prompt ids, response ids]`` pairs: the questions this sleep learnt with
        fixed answers) join ``earlier_dreams`` the same way, at most ``dreams_capacity`` (default
        ``capacity``) of them."""
        earlier, seen = reservoir(self.earlier, self.earlier_seen, replayed, capacity, rng)
        dreamt, dreamt_seen = reservoir(self.earlier_dreams, self.earlier_dreams_seen,
                                        [[list(prompt), list(response)] for prompt, response in dreams or ()],
                                        capacity if dreams_capacity is None else dreams_capacity, rng, key=dream_key)
        return WakeBuffer(earlier=earlier, earlier_seen=seen, earlier_dreams=dreamt, earlier_dreams_seen=dreamt_seen)

    def __len__(self) -> int:
        return len(self.documents)

    def state(self) -> dict:
        return {"documents": list(self.documents), "questions": [list(q) for q in self.questions],
                "earlier": list(self.earlier), "earlier_seen": self.earlier_seen,
                "earlier_dreams": [[list(p), list(r)] for p, r in self.earlier_dreams],
                "earlier_dreams_seen": self.earlier_dreams_seen}

    @classmethod
    def from_state(cls, state: dict) -> "WakeBuffer":
        earlier = list(state.get("earlier", []))
        dreams = [[list(p), list(r)] for p, r in state.get("earlier_dreams", [])]
        return cls(list(state["documents"]), [list(q) for q in state["questions"]], earlier,
                   state.get("earlier_seen", len(earlier)), dreams, state.get("earlier_dreams_seen", len(dreams)))
