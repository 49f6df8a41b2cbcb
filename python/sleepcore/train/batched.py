"""``BatchedRuntime``: trains the ``K`` adapters of :func:`sleepcore.memory.batched.batched_adapters`
in shared forwards and backwards, so that each ends with the weights of a separate run.

Three things would mix the adapters if one optimiser took the stacked ``[K, ...]`` tensors:

* the loss: one mean over all tokens weights an adapter by its share of the batch. Here the loss
  is the sum over adapters of each adapter's own response-token mean; since a row's output depends
  on its adapter's weights only, adapter k's gradient is exactly that of its own mean;
* clipping: a global norm couples the adapters. Each is clipped by the norm of its own slices;
* AdamW's step count (bias correction) and the schedule, once adapters have taken different numbers
  of steps (an adapter without tokens in a batch, or one reset for a new dream). AdamW's moments
  are per element, but the count is per tensor.

So each adapter gets its own :class:`~sleepcore.train.runtime.LocalRuntime` over views of its
slices of the stacked tensors: its own clipping, AdamW moments, step count, schedule and fp32
masters, with no logic copied. An adapter without tokens in a batch is not stepped (a separate
run would not have seen the batch).

:meth:`BatchedRuntime.train_step` is the whole step: the adapters' examples sorted by length and
cut into chunks (several adapters per forward, little padding), backward per chunk, then the step.
The loss is next-token NLL, or forward KL to a teacher (the model without adapters reading another
prompt, e.g. the adapter's document first): Dreaming's inner loop learns a dream either way.
"""

from __future__ import annotations

from typing import Callable

import torch

from sleepcore.lm import head_weight, response_hidden
from sleepcore.memory.batched import BatchedAdapters
from sleepcore.ops import fused_linear_jsd, fused_linear_logprobs
from sleepcore.train.config import OptimizerConfig
from sleepcore.train.runtime import LocalRuntime
from sleepcore.validation import instance, integer

#: ``teacher_prompt(adapter, prompt ids) -> teacher prompt ids``: what the teacher reads instead of the prompt.
TeacherPrompt = Callable[[int, list[int]], list[int]]


class BatchedRuntime:
    """One :class:`LocalRuntime` per adapter of ``adapters``, stepping together.

    Args:
        model: the wrapped causal LM the adapters live in.
        adapters: the open :class:`BatchedAdapters`.
        config: :class:`OptimizerConfig`, shared by the adapters (each applies it alone).
        total_steps: each adapter's step count for the cosine schedule; None: no decay.

    The loss methods raise ``ValueError`` when ``examples`` does not hold one list per adapter or
    holds no response token, and ``TypeError`` when it is not a list.
    """

    def __init__(self, model, adapters: BatchedAdapters, config: OptimizerConfig | None = None, *,
                 total_steps: int | None = None):
        self.model, self.adapters = model, instance("adapters", adapters, BatchedAdapters)
        self.config, self.total_steps = config or OptimizerConfig(), total_steps
        self.stacked = adapters.parameters()
        self.runtimes = [self._runtime(k) for k in range(adapters.adapters)]
        self.stepping: list[int] = []  # adapters with tokens in the last loss

    def _runtime(self, k: int) -> LocalRuntime:
        views = [parameter.detach()[k].requires_grad_() for parameter in self.stacked]
        return LocalRuntime(self.model, views, self.config, total_steps=self.total_steps)

    def reset(self, k: int) -> None:
        """A fresh adapter ``k``: new initial weights (:meth:`BatchedAdapters.reset`), optimiser state and step count."""
        self.adapters.reset(k)
        self.runtimes[k] = self._runtime(k)

    def train_step(self, examples: list[list[tuple[list[int], list[int]]]], pad_id: int, *,
                   max_tokens: int | None = None, teacher_prompt: TeacherPrompt | None = None
                   ) -> tuple[torch.Tensor, list[dict | None]]:
        """One optimiser step of every adapter with tokens in ``examples`` (as in :meth:`next_token_loss`,
        which ``teacher_prompt`` is passed to).

        The examples of all adapters are sorted by length and cut into chunks of at most
        ``max_tokens`` padded tokens (None: one chunk), each one forward and backward over several
        adapters, so sequences of unlike length are not padded to one width; every chunk is
        normalised by the adapters' token counts over all of ``examples``, so the gradients are
        those of one forward. Returns ``(per_adapter, metrics)``: the K mean losses and :meth:`step`'s list.
        """
        integer("max_tokens", max_tokens, minimum=1, optional=True)
        counts = self._counts(examples)
        per_adapter = 0
        for chunk in _length_chunks(examples, max_tokens):
            loss, part = self.next_token_loss(chunk, pad_id, counts=counts, teacher_prompt=teacher_prompt)
            self.backward(loss)
            per_adapter = per_adapter + part
        self.stepping = [k for k, count in enumerate(counts) if count]
        return per_adapter, self.step()

    def _counts(self, examples) -> list[int]:
        instance("examples", examples, (list, tuple))
        if len(examples) != self.adapters.adapters:
            raise ValueError(f"examples must hold one list per adapter ({self.adapters.adapters}), got {len(examples)}")
        counts = [sum(len(response) for _, response in batch) for batch in examples]
        if not any(counts):
            raise ValueError("examples hold no response token")
        return counts

    def next_token_loss(self, examples: list[list[tuple[list[int], list[int]]]], pad_id: int, *,
                        counts: list[int] | None = None, teacher_prompt: TeacherPrompt | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over every adapter's ``(prompt ids, response ids)`` examples (``examples[k]``,
        possibly empty). Returns ``(loss, per_adapter)``: the differentiable sum over adapters of each
        adapter's summed response-token loss over its token count (``counts[k]``, default its own
        count: the mean), and those K terms (float32 ``[K]``, detached; 0 where an adapter has no
        token). Adapters with tokens are the ones :meth:`step` steps next.

        A token's loss is its NLL, or with ``teacher_prompt`` the forward KL(teacher || student) of
        the next-token distributions, the teacher being the model without any adapter reading
        ``teacher_prompt(k, prompt ids)`` instead of the prompt (e.g. a document before it; one
        no-grad forward more per call)."""
        own = self._counts(examples)
        counts = own if counts is None else counts
        if teacher_prompt is not None and not callable(teacher_prompt):
            raise TypeError(f"teacher_prompt must be callable (adapter, prompt ids) -> ids or None, got "
                            f"{type(teacher_prompt).__name__}")
        pairs = [(example, k) for k, batch in enumerate(examples) for example in batch]
        device, forward, head = self.runtimes[0].device, self.runtimes[0].forward, head_weight(self.model)
        prompts, responses = [p for (p, _), _ in pairs], [r for (_, r), _ in pairs]
        teacher = None
        if teacher_prompt is not None:
            with torch.no_grad():
                self.adapters.set_index(torch.full((len(pairs),), -1, device=device))
                teacher = response_hidden(self.model, [teacher_prompt(k, p) for (p, _), k in pairs], responses,
                                          pad_id, forward=forward)
        self.adapters.set_index(torch.tensor([k for _, k in pairs], device=device))
        hidden = response_hidden(self.model, prompts, responses, pad_id, forward=forward)
        token_adapter = torch.tensor([k for (_, r), k in pairs for _ in r], device=device)
        if teacher is None:
            targets = torch.tensor([t for r in responses for t in r], device=device)
            logp, _ = fused_linear_logprobs(hidden, head, targets, return_entropy=False)
            token_loss = -logp
        else:
            token_loss = fused_linear_jsd(hidden, head, teacher, head, beta=0.0, reduction="none")
        inverse = torch.tensor([1.0 / c if c else 0.0 for c in counts], device=device)
        loss = token_loss * inverse[token_adapter]
        self.stepping = [k for k, count in enumerate(own) if count]
        per_adapter = torch.zeros(len(counts), device=device).index_add_(0, token_adapter, loss.detach().float())
        return loss.sum(), per_adapter

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> list[dict | None]:
        """Steps every adapter that had tokens in the last :meth:`next_token_loss` (its own clipping,
        schedule and AdamW) and clears the gradients. Returns per adapter ``{"lr", "grad_norm"}``, or
        None for an adapter not stepped."""
        metrics: list[dict | None] = [None] * len(self.runtimes)
        for k in self.stepping:
            runtime = self.runtimes[k]
            for view, parameter in zip(runtime.parameters, self.stacked):
                view.grad = None if parameter.grad is None else parameter.grad[k]
            metrics[k] = runtime.step()
        for parameter in self.stacked:
            parameter.grad = None
        self.stepping = []
        return metrics

    def steps(self) -> list[int]:
        """Each adapter's step count."""
        return [runtime.steps for runtime in self.runtimes]

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, json_state)`` of every adapter's runtime (tensor names prefixed ``adapter.<k>.``)."""
        tensors, states = {}, []
        for k, runtime in enumerate(self.runtimes):
            own, state = runtime.state_dict()
            tensors.update({f"adapter.{k}.{name}": value for name, value in own.items()})
            states.append(state)
        return tensors, {"adapters": states}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        integer("adapters in state", len(state["adapters"]), minimum=len(self.runtimes), maximum=len(self.runtimes))
        for k, (runtime, own) in enumerate(zip(self.runtimes, state["adapters"])):
            prefix = f"adapter.{k}."
            runtime.load_state_dict({name[len(prefix):]: value for name, value in tensors.items()
                                     if name.startswith(prefix)}, own)


def _length_chunks(examples, max_tokens: int | None):
    """``examples`` (one list per adapter) in chunks of the same form: all examples sorted by length,
    longest first, cut so that a chunk's count times its longest length is at most ``max_tokens``."""
    ordered = sorted(((len(p) + len(r), k, (p, r)) for k, batch in enumerate(examples) for p, r in batch),
                     key=lambda item: -item[0])
    chunks: list[list] = []
    for length, k, example in ordered:
        if not chunks or max_tokens is not None and (len(chunks[-1]) + 1) * chunks[-1][0][0] > max_tokens:
            chunks.append([])
        chunks[-1].append((length, k, example))
    for chunk in chunks:
        split = [[] for _ in examples]
        for _, k, example in chunk:
            split[k].append(example)
        yield split
