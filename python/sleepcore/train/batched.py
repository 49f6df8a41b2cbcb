"""``BatchedRuntime``: trains the ``K`` adapters of :func:`sleepcore.memory.batched.batched_adapters`
in one forward and backward per step, so that each ends with the weights of a separate run.

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
"""

from __future__ import annotations

import torch

from sleepcore.lm import head_weight, response_hidden
from sleepcore.memory.batched import BatchedAdapters
from sleepcore.ops import fused_linear_logprobs
from sleepcore.train.config import OptimizerConfig
from sleepcore.train.runtime import LocalRuntime
from sleepcore.validation import instance, integer


class BatchedRuntime:
    """One :class:`LocalRuntime` per adapter of ``adapters``, stepping together.

    Args:
        model: the wrapped causal LM the adapters live in.
        adapters: the open :class:`BatchedAdapters`.
        config: :class:`OptimizerConfig`, shared by the adapters (each applies it alone).
        total_steps: each adapter's step count for the cosine schedule; None: no decay.
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

    def next_token_loss(self, examples: list[list[tuple[list[int], list[int]]]], pad_id: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over every adapter's ``(prompt ids, response ids)`` examples (``examples[k]``,
        possibly empty). Returns ``(loss, per_adapter)``: the differentiable sum over adapters of each
        adapter's mean response-token NLL, and those K means (float32 ``[K]``, detached; 0 where an
        adapter has no token). Adapters with tokens are the ones :meth:`step` steps next."""
        instance("examples", examples, (list, tuple))
        if len(examples) != self.adapters.adapters:
            raise ValueError(f"examples must hold one list per adapter ({self.adapters.adapters}), got {len(examples)}")
        pairs = [(example, k) for k, batch in enumerate(examples) for example in batch]
        counts = [sum(len(response) for _, response in batch) for batch in examples]
        if not any(counts):
            raise ValueError("examples hold no response token")
        device = self.runtimes[0].device
        self.adapters.set_index(torch.tensor([k for _, k in pairs], device=device))
        prompts, responses = [p for (p, _), _ in pairs], [r for (_, r), _ in pairs]
        hidden = response_hidden(self.model, prompts, responses, pad_id, forward=self.runtimes[0].forward)
        targets = torch.tensor([t for r in responses for t in r], device=device)
        token_adapter = torch.tensor([k for (_, r), k in pairs for _ in r], device=device)
        logp, _ = fused_linear_logprobs(hidden, head_weight(self.model), targets, return_entropy=False)
        inverse = torch.tensor([1.0 / c if c else 0.0 for c in counts], device=device)
        nll = -logp * inverse[token_adapter]
        self.stepping = [k for k, count in enumerate(counts) if count]
        per_adapter = torch.zeros(len(counts), device=device).index_add_(0, token_adapter, nll.detach())
        return nll.sum(), per_adapter

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
