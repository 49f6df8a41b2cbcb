"""The wake buffer: what the model read (and was asked) while awake, until a sleep consolidates it."""

from __future__ import annotations

from dataclasses import dataclass, field

from sleepcore.validation import texts


@dataclass
class WakeBuffer:
    """``documents[i]`` and the questions asked about it while awake, ``questions[i]``; ``earlier``:
    the student prompts (texts, no answers) that earlier sleeps replayed, kept across sleeps for the
    ``rehearsal`` replay builder."""

    documents: list[str] = field(default_factory=list)
    questions: list[list[str]] = field(default_factory=list)
    earlier: list[str] = field(default_factory=list)

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

    def __len__(self) -> int:
        return len(self.documents)

    def state(self) -> dict:
        return {"documents": list(self.documents), "questions": [list(q) for q in self.questions],
                "earlier": list(self.earlier)}

    @classmethod
    def from_state(cls, state: dict) -> "WakeBuffer":
        return cls(list(state["documents"]), [list(q) for q in state["questions"]], list(state.get("earlier", [])))
