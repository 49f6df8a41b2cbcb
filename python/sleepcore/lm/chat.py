"""Chat formatting: one user turn through the tokenizer's chat template (instruct models answer
far better that way), and the one question format that sleep's replay and the evaluations share."""

from __future__ import annotations

SHORT_ANSWER = "Answer with a short phrase only."
#: The greedy answer's length cap (it also ends at the first line break). SmolLM2-135M answers in
#: sentences that repeat the question's invented name (7-10 tokens) before the fact: at 16 tokens
#: "The company where Pahis Stoumavrir works is Baid" was cut one token before the answer, and the
#: in-context row scored 0.329 contains on the 10-person set against 0.471 at 32 (0.486 at 48 tokens
#: ending at the end of turn).
ANSWER_TOKENS = 32


def chat_turn(tokenizer, content: str) -> str | None:
    """``content`` as one user turn with the assistant's turn opened, through the tokenizer's chat
    template; None without a template."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def end_of_turn(tokenizer) -> list[int]:
    """The token ids that close an answer, as the model writes them right after its last word:
    what the chat template puts after an assistant message (``<|im_end|>`` for ChatML; cut at the
    first special token so a following newline is left out), else one line break, where
    :func:`qa_prompt`'s plain ``Answer:`` format stops."""
    marker = "\u2063answer\u2063"
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}],
                                             tokenize=False)
        suffix = text.split(marker, 1)[1] if marker in text else ""
        ids = list(tokenizer(suffix, add_special_tokens=False)["input_ids"])
        special = set(getattr(tokenizer, "all_special_ids", ()))
        first_special = next((i for i, token in enumerate(ids) if token in special), None)
        if first_special is not None:
            return ids[:first_special + 1]
        if ids:
            return ids
    return list(tokenizer("\n", add_special_tokens=False)["input_ids"])


def qa_prompt(tokenizer, question: str, context: str | None = None) -> str:
    """A question (closed-book, or after ``context``): a chat turn asking for a short answer, or
    without a chat template ``[context]\\n\\nQuestion: ...\\nAnswer:``."""
    question = question.strip()
    prefix = f"{context}\n\n" if context else ""
    chat = chat_turn(tokenizer, f"{prefix}{SHORT_ANSWER}\nQuestion: {question}")
    return chat if chat is not None else f"{prefix}Question: {question}\nAnswer:"
