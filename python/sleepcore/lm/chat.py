"""Chat formatting: one user turn through the tokenizer's chat template (instruct models answer
far better that way), and the one question format that sleep's replay and the evaluations share."""

from __future__ import annotations

SHORT_ANSWER = "Answer with a short phrase only."


def chat_turn(tokenizer, content: str) -> str | None:
    """``content`` as one user turn with the assistant's turn opened, through the tokenizer's chat
    template; None without a template."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def qa_prompt(tokenizer, question: str, context: str | None = None) -> str:
    """A question (closed-book, or after ``context``): a chat turn asking for a short answer, or
    without a chat template ``[context]\\n\\nQuestion: ...\\nAnswer:``."""
    question = question.strip()
    prefix = f"{context}\n\n" if context else ""
    chat = chat_turn(tokenizer, f"{prefix}{SHORT_ANSWER}\nQuestion: {question}")
    return chat if chat is not None else f"{prefix}Question: {question}\nAnswer:"
