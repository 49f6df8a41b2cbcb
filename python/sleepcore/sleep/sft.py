"""The SFT stage: next-token training of the new expert on the wake documents (the baseline a
sleep is compared with; also how the fast level learns while awake). The loss is
:func:`sleepcore.lm.next_token_sum` (every token of a document but the first; response tokens only
for ``(prompt, response)`` items) over the runtime's token count."""

from __future__ import annotations

import time

import torch

from sleepcore.distributed import training_runtime
from sleepcore.lm import as_examples, pad_id
from sleepcore.lm.next_token import next_token_sum
from sleepcore.sleep.config import NextTokenConfig
from sleepcore.sleep.stage import StageContext


class NextTokenStage:
    """Next-token loss on the documents of the wake buffer (or on given items), training the expert
    ``(context.level, context.slot)``. Items are ``(prompt ids, response ids)`` pairs."""

    name = "sft"

    def __init__(self, context: StageContext, config: NextTokenConfig):
        self.context, self.config = context, config
        self.model, self.pad_id = context.model, pad_id(context.tokenizer)
        self.runtime = training_runtime(self.model, context.memory.trainable(context.level, context.slot),
                                        config.optimizer, total_steps=config.steps,
                                        token_budget=config.token_budget)
        self.items: list[tuple[list[int], list[int]]] = []

    def prepare(self, buffer, *, progress: bool = True) -> None:
        """The buffer's documents (a :class:`~sleepcore.sleep.buffer.WakeBuffer`, or a list of texts,
        token id lists or ``(prompt, response)`` pairs) as training examples."""
        texts = buffer.documents if hasattr(buffer, "documents") else buffer
        self.items = as_examples(self.context.tokenizer, texts)

    def step(self, batch) -> dict:
        """One optimiser step (each rank on its block of ``batch``); metrics ``loss``, ``tokens``
        (response tokens, all with a gradient), ``forward_tokens`` (0: nothing runs without one),
        seconds, tokens/s, ``lr``, ``grad_norm``."""
        started = time.perf_counter()
        batch = self.runtime.local_batch(batch)
        total, count = next_token_sum(self.model, batch, self.pad_id, forward=self.runtime.forward)
        loss = total / self.runtime.token_count(count)
        self.runtime.backward(loss)
        update = self.runtime.step(count)
        seconds = time.perf_counter() - started
        return self.runtime.reduce_metrics({"loss": loss.item(), "tokens": count, "forward_tokens": 0,
                                            "tokens_per_s": count / seconds, "seconds": seconds, **update})

    def summary(self) -> dict:
        return {"examples": len(self.items)}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, state = self.runtime.state_dict()
        return tensors, {"runtime": state, "items": [[list(p), list(r)] for p, r in self.items]}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self.runtime.load_state_dict(tensors, state["runtime"])
        self.items = [(list(p), list(r)) for p, r in state["items"]]
