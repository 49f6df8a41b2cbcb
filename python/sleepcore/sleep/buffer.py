"""The wake buffer: what the model read (and was asked) while awake, until a sleep consolidates it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sleepcore.validation import texts


@dataclass
class WakeBuffer:
    """``documents[i]`` and the questions asked about it while awake, ``questions[i]``; ``earlier``:
    the student prompts (texts, no answers) that earlier sleeps replayed, kept across sleeps for the
    ``rehearsal`` replay builder (a bounded uniform sample of them: :meth:`consolidated`);
    ``earlier_seen``: how many distinct prompts that sample was drawn from."""

    documents: list[str] = field(default_factory=list)
    questions: list[list[str]] = field(default_factory=list)
    earlier: list[str] = field(default_factory=list)
    earlier_seen: int = 0

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

    def consolidated(self, replayed: list[str], capacity: int, rng: random.Random) -> "WakeBuffer":
        """The buffer after a sleep: no documents or questions, and ``earlier`` with this sleep's
        ``replayed`` prompts added (texts already kept are skipped), at most ``capacity`` of them.
        Past the capacity it is a reservoir sample (Vitter's algorithm R): every distinct prompt
        remembered so far is kept with the same probability, so each sleep's share of later
        rehearsal stays in proportion to the prompts it replayed, however many sleeps come after."""
        earlier, seen = list(self.earlier), self.earlier_seen
        kept = set(earlier)
        for text in dict.fromkeys(replayed):
            if text in kept:
                continue
            seen += 1
            if len(earlier) < capacity:
                earlier.append(text)
                kept.add(text)
                continue
            index = rng.randrange(seen)
            if index < capacity:
                kept.discard(earlier[index])
                earlier[index] = text
                kept.add(text)
        return WakeBuffer(earlier=earlier, earlier_seen=seen)

    def __len__(self) -> int:
        return len(self.documents)

    def state(self) -> dict:
        return {"documents": list(self.documents), "questions": [list(q) for q in self.questions],
                "earlier": list(self.earlier), "earlier_seen": self.earlier_seen}

    @classmethod
    def from_state(cls, state: dict) -> "WakeBuffer":
        earlier = list(state.get("earlier", []))
        return cls(list(state["documents"]), [list(q) for q in state["questions"]], earlier,
                   state.get("earlier_seen", len(earlier)))
